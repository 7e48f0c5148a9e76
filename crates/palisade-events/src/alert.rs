//! Alert rules and their life cycle: a problem opens an alert once, repeats at an interval
//! while it lasts, and is resolved once; the state lives in the store, so a restarted daemon
//! neither repeats an alert early nor forgets to resolve it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Result, Store, store::OpenAlert};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A job's latest run failed (or timed out).
    RunFailed,
    /// A job has had no successful backup for longer than its allowance.
    MissedBackup,
    /// Retention (forget) after a job's backup, or a scheduled prune, failed.
    RetentionFailed,
    /// A repository could not be opened.
    RepositoryUnreachable,
    /// A scheduled `verify` found damage (or could not run).
    VerifyFailed,
    /// A scheduled `restore-test` failed.
    RestoreTestFailed,
    /// `palisade alert test`.
    Test,
}

impl Rule {
    /// Every rule a channel can subscribe to.
    pub const ALL: [Self; 6] = [
        Self::RunFailed,
        Self::MissedBackup,
        Self::RetentionFailed,
        Self::RepositoryUnreachable,
        Self::VerifyFailed,
        Self::RestoreTestFailed,
    ];

    /// The rule's name in the config, in messages and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunFailed => "run-failed",
            Self::MissedBackup => "missed-backup",
            Self::RetentionFailed => "retention-failed",
            Self::RepositoryUnreachable => "repository-unreachable",
            Self::VerifyFailed => "verify-failed",
            Self::RestoreTestFailed => "restore-test-failed",
            Self::Test => "test",
        }
    }

    /// The rule called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rule| rule.as_str() == name)
    }
}

/// A problem as a rule sees it now.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The rule.
    pub rule: Rule,
    /// The job or repository it is about.
    pub subject: String,
    /// The job, when the problem is one job's.
    pub job: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

impl Problem {
    /// A problem of one job.
    pub fn job(rule: Rule, job: &str, message: impl Into<String>) -> Self {
        Self {
            rule,
            subject: job.to_string(),
            job: Some(job.to_string()),
            message: message.into(),
        }
    }

    fn key(&self) -> String {
        key(self.rule, &self.subject)
    }
}

/// Which message an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeKind {
    /// The problem was just seen.
    Firing,
    /// The problem still lasts.
    Repeat,
    /// The problem is over.
    Resolved,
    /// A test message.
    Test,
}

/// One message to send.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// Which message.
    pub kind: NoticeKind,
    /// The rule.
    pub rule: Rule,
    /// The job or repository.
    pub subject: String,
    /// The job, when it is one job's problem.
    pub job: Option<String>,
    /// What is (or was) wrong.
    pub message: String,
    /// When the problem was first seen.
    pub since: DateTime<Utc>,
    /// When this message was made.
    pub at: DateTime<Utc>,
}

impl Notice {
    /// A one-line summary: `[palisade] FIRING run-failed: db`.
    pub fn title(&self) -> String {
        let kind = match self.kind {
            NoticeKind::Firing => "FIRING",
            NoticeKind::Repeat => "STILL FIRING",
            NoticeKind::Resolved => "RESOLVED",
            NoticeKind::Test => "TEST",
        };
        format!("[palisade] {kind} {}: {}", self.rule.as_str(), self.subject)
    }

    /// The message's text for people.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\nsince {}",
            self.title(),
            self.message,
            crate::store::time(self.since)
        )
    }

    /// A test message.
    pub fn test(at: DateTime<Utc>) -> Self {
        Self {
            kind: NoticeKind::Test,
            rule: Rule::Test,
            subject: "palisade alert test".into(),
            job: None,
            message: "This is a test message from `palisade alert test`; the channel works.".into(),
            since: at,
            at,
        }
    }
}

/// The alert life cycle over a store.
#[derive(Debug)]
pub struct Alerts<'a> {
    store: &'a Store,
    repeat: chrono::Duration,
}

impl<'a> Alerts<'a> {
    /// Alerts whose open problems are repeated every `repeat`.
    pub fn new(store: &'a Store, repeat: std::time::Duration) -> Self {
        let repeat = chrono::Duration::from_std(repeat).unwrap_or(chrono::Duration::MAX);
        Self { store, repeat }
    }

    /// The problem is there: a notice when it was not open yet, nothing when it was (the
    /// repeat comes from [`Alerts::repeats`]).
    pub fn raise(&self, now: DateTime<Utc>, problem: &Problem) -> Result<Option<Notice>> {
        let key = problem.key();
        if let Some(mut open) = self.store.alert(&key)? {
            open.message.clone_from(&problem.message);
            return self.store.put_alert(&open).map(|()| None);
        }
        self.store.put_alert(&OpenAlert {
            key,
            rule: problem.rule.as_str().into(),
            subject: problem.subject.clone(),
            job: problem.job.clone(),
            message: problem.message.clone(),
            opened_at: now,
            last_sent_at: now,
        })?;
        Ok(Some(Notice {
            kind: NoticeKind::Firing,
            rule: problem.rule,
            subject: problem.subject.clone(),
            job: problem.job.clone(),
            message: problem.message.clone(),
            since: now,
            at: now,
        }))
    }

    /// The problem is gone: a "resolved" notice when it was open, else nothing.
    pub fn clear(&self, now: DateTime<Utc>, rule: Rule, subject: &str) -> Result<Option<Notice>> {
        let Some(open) = self.store.alert(&key(rule, subject))? else {
            return Ok(None);
        };
        self.store.remove_alert(&open.key)?;
        Ok(Some(Notice {
            kind: NoticeKind::Resolved,
            rule,
            subject: open.subject,
            job: open.job,
            message: format!("resolved; it was: {}", open.message),
            since: open.opened_at,
            at: now,
        }))
    }

    /// A "still firing" notice for each open alert whose last message is `repeat` old.
    pub fn repeats(&self, now: DateTime<Utc>) -> Result<Vec<Notice>> {
        let mut notices = Vec::new();
        for mut open in self.store.open_alerts()? {
            if now - open.last_sent_at < self.repeat {
                continue;
            }
            let Some(rule) = Rule::parse(&open.rule) else {
                continue;
            };
            open.last_sent_at = now;
            self.store.put_alert(&open)?;
            notices.push(Notice {
                kind: NoticeKind::Repeat,
                rule,
                subject: open.subject,
                job: open.job,
                message: open.message,
                since: open.opened_at,
                at: now,
            });
        }
        Ok(notices)
    }
}

fn key(rule: Rule, subject: &str) -> String {
    format!("{}:{subject}", rule.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, ManualClock};

    #[test]
    fn a_problem_fires_once_repeats_after_the_interval_and_resolves_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let clock = ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let alerts = Alerts::new(&store, std::time::Duration::from_secs(3600));
        let problem = Problem::job(Rule::RunFailed, "db", "no such file");

        let first = alerts.raise(clock.now(), &problem).unwrap().unwrap();
        assert_eq!(first.kind, NoticeKind::Firing);
        clock.advance(chrono::Duration::minutes(10));
        assert!(alerts.raise(clock.now(), &problem).unwrap().is_none());
        assert!(alerts.repeats(clock.now()).unwrap().is_empty());

        clock.advance(chrono::Duration::minutes(50));
        let repeats = alerts.repeats(clock.now()).unwrap();
        assert_eq!(repeats.len(), 1);
        assert_eq!(repeats[0].kind, NoticeKind::Repeat);
        assert!(alerts.repeats(clock.now()).unwrap().is_empty());

        let resolved = alerts
            .clear(clock.now(), Rule::RunFailed, "db")
            .unwrap()
            .unwrap();
        assert_eq!(resolved.kind, NoticeKind::Resolved);
        assert_eq!(resolved.since, first.since);
        assert!(
            alerts
                .clear(clock.now(), Rule::RunFailed, "db")
                .unwrap()
                .is_none()
        );
    }
}
