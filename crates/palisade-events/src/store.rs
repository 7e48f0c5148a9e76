//! The state store: one SQLite file with every run and every open alert, behind a versioned
//! schema that only ever moves forward (see `docs/alerts.md` for the tables).
//!
//! Times are stored as RFC 3339 text in UTC with milliseconds, so that they sort as text and
//! read well in `sqlite3`. Several processes may use one store at once (the daemon and a
//! `palisade backup` by hand): the file is in WAL mode and waits up to 10 s for a lock.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::{Error, Result};

/// The file name inside the state directory.
pub const STORE_FILE: &str = "state.db";

/// The schema, one migration per version: migration `i` takes the file from version `i` to
/// `i + 1`. Never edit a migration that has shipped; add one.
const MIGRATIONS: &[&str] = &[
    // 1: runs, open alerts, and when the daemon first saw each job.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL,
        bytes_read INTEGER,
        bytes_added INTEGER,
        snapshot TEXT,
        error TEXT
    );
    CREATE INDEX runs_by_job ON runs (job, started_at);
    CREATE TABLE alerts (
        key TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        job TEXT,
        message TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        last_sent_at TEXT NOT NULL
    );
    CREATE TABLE jobs_seen (
        job TEXT PRIMARY KEY,
        first_seen TEXT NOT NULL
    );",
    // 2: maintenance tasks (prune, verify, restore tests) are runs too, told apart by `kind`;
    // `report` keeps the command's JSON report (durations, sizes, what was found).
    "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';
    ALTER TABLE runs ADD COLUMN report TEXT;
    CREATE INDEX runs_by_kind ON runs (kind, job, started_at);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `palisade backup` by hand (or by another scheduler).
    Command,
    /// The daemon, at the job's scheduled time.
    Schedule,
    /// The daemon at start-up, for a slot missed while it was down.
    CatchUp,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// A job's backup.
    Backup,
    /// `palisade prune` of a repository.
    Prune,
    /// `palisade verify`.
    Verify,
    /// `palisade restore-test`.
    RestoreTest,
}

impl RunKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Backup, Self::Prune, Self::Verify, Self::RestoreTest];

    /// The word stored in the `kind` column, and the command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Prune => "prune",
            Self::Verify => "verify",
            Self::RestoreTest => "restore-test",
        }
    }

    /// The kind called `text`. The column holds only the words above (a file a newer
    /// Palisade wrote is refused before it is read), so the fallback never shows.
    fn parse(text: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .unwrap_or(Self::Verify)
    }
}

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Still running, or the process died without saying.
    Running,
    /// A snapshot was saved.
    Success,
    /// A snapshot was saved, but some entries could not be read.
    Partial,
    /// No snapshot: the backup failed.
    Failed,
    /// No snapshot: the job's timeout stopped it.
    Timeout,
    /// No snapshot: the daemon was stopped while it ran.
    Abandoned,
    /// Not run: another run of the job (by hand, or by another daemon) was going on.
    Skipped,
}

impl RunOutcome {
    /// The word stored in the `outcome` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Abandoned => "abandoned",
            Self::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "success" => Self::Success,
            "partial" => Self::Partial,
            "failed" => Self::Failed,
            "timeout" => Self::Timeout,
            "abandoned" => Self::Abandoned,
            "skipped" => Self::Skipped,
            _ => Self::Running,
        }
    }

    /// Whether the run saved a snapshot.
    pub fn saved_snapshot(self) -> bool {
        matches!(self, Self::Success | Self::Partial)
    }
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Schedule => "schedule",
            Self::CatchUp => "catch-up",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "schedule" => Self::Schedule,
            "catch-up" => Self::CatchUp,
            _ => Self::Command,
        }
    }
}

/// One row of the `runs` table.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The row id.
    pub id: i64,
    /// What it did.
    pub kind: RunKind,
    /// The config job; empty for a task over every job (or the default repository).
    pub job: String,
    /// What started it.
    pub trigger: Trigger,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Bytes read from the sources.
    pub bytes_read: Option<u64>,
    /// Bytes added to the repository.
    pub bytes_added: Option<u64>,
    /// The snapshot saved (or tested).
    pub snapshot: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The command's JSON report, when it gave one.
    pub report: Option<serde_json::Value>,
}

/// How a finished run went, for [`Store::finish_run`].
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Bytes read from the sources.
    pub bytes_read: Option<u64>,
    /// Bytes added to the repository.
    pub bytes_added: Option<u64>,
    /// The snapshot saved.
    pub snapshot: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The command's JSON report.
    pub report: Option<serde_json::Value>,
}

/// One open alert, as the `alerts` table holds it.
#[derive(Debug, Clone)]
pub struct OpenAlert {
    /// `rule:subject`.
    pub key: String,
    /// The rule's name.
    pub rule: String,
    /// The job or repository it is about.
    pub subject: String,
    /// The job, when it is about one.
    pub job: Option<String>,
    /// The latest description of the problem.
    pub message: String,
    /// When it was first seen.
    pub opened_at: DateTime<Utc>,
    /// When a message about it was last sent.
    pub last_sent_at: DateTime<Utc>,
}

/// An open state store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it and its directory when missing) `dir/state.db` and brings its schema
    /// up to date.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::StateDir {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open(&dir.join(STORE_FILE))
    }

    /// Opens (creating it when missing) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        let wrap = |source| Error::Store {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn wrap(&self, source: rusqlite::Error) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Applies every migration the file has not had, in one immediate transaction: a second
    /// process opening a new store at the same moment waits, then finds it up to date.
    fn migrate(&mut self) -> Result<()> {
        let path = self.path.display().to_string();
        let wrap = |source| Error::Store {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let found: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(wrap)?;
        if found > SCHEMA_VERSION {
            return Err(Error::StoreTooNew {
                path: path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for sql in MIGRATIONS.iter().skip(found as usize) {
            tx.execute_batch(sql).map_err(wrap)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    /// The file's schema version.
    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.wrap(e))
    }

    /// Records that a backup of `job` started at `at`; gives the run's id.
    pub fn start_run(&self, job: &str, trigger: Trigger, at: DateTime<Utc>) -> Result<i64> {
        self.start(RunKind::Backup, job, trigger, at)
    }

    /// Records that a run of `kind` for `job` (empty: every job) started at `at`; gives the
    /// run's id.
    pub fn start(
        &self,
        kind: RunKind,
        job: &str,
        trigger: Trigger,
        at: DateTime<Utc>,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO runs (kind, job, trigger, started_at, outcome) \
                 VALUES (?5, ?1, ?2, ?3, ?4)",
                params![
                    job,
                    trigger.as_str(),
                    time(at),
                    RunOutcome::Running.as_str(),
                    kind.as_str()
                ],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records how run `id` ended.
    pub fn finish_run(
        &self,
        id: i64,
        at: DateTime<Utc>,
        outcome: RunOutcome,
        result: &RunResult,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, outcome = ?3, bytes_read = ?4, \
                 bytes_added = ?5, snapshot = ?6, error = ?7, report = ?8 WHERE id = ?1",
                params![
                    id,
                    time(at),
                    outcome.as_str(),
                    result.bytes_read.map(|b| b as i64),
                    result.bytes_added.map(|b| b as i64),
                    result.snapshot,
                    result.error,
                    result.report.as_ref().map(|r| r.to_string()),
                ],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Marks runs that never finished (their process died) as abandoned, when `trigger` is one
    /// of the daemon's: called when the daemon starts, so that its own earlier runs do not
    /// stay "running" for ever.
    pub fn abandon_unfinished(&self, at: DateTime<Utc>) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'abandoned', finished_at = ?1, \
                 error = 'the daemon stopped while this run was going on' \
                 WHERE outcome = 'running' AND trigger IN ('schedule', 'catch-up')",
                params![time(at)],
            )
            .map_err(|e| self.wrap(e))
    }

    /// Runs of every kind, newest first: all of them, or `job`'s; at most `limit`.
    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        self.select(None, job, limit)
    }

    /// Runs of `kind` for `job`, newest first; at most `limit`.
    pub fn runs_of(&self, kind: RunKind, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.select(Some(kind), Some(job), limit)
    }

    fn select(
        &self,
        kind: Option<RunKind>,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, kind, job, trigger, started_at, finished_at, outcome, bytes_read, \
                 bytes_added, snapshot, error, report FROM runs \
                 WHERE (?1 IS NULL OR job = ?1) AND (?3 IS NULL OR kind = ?3) \
                 ORDER BY started_at DESC, id DESC LIMIT ?2",
            )
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map(
                params![job, limit as i64, kind.map(RunKind::as_str)],
                |row| {
                    Ok(RunRecord {
                        id: row.get(0)?,
                        kind: RunKind::parse(&row.get::<_, String>(1)?),
                        job: row.get(2)?,
                        trigger: Trigger::parse(&row.get::<_, String>(3)?),
                        started_at: parse_time(&row.get::<_, String>(4)?),
                        finished_at: row.get::<_, Option<String>>(5)?.map(|t| parse_time(&t)),
                        outcome: RunOutcome::parse(&row.get::<_, String>(6)?),
                        bytes_read: row.get::<_, Option<i64>>(7)?.map(|b| b as u64),
                        bytes_added: row.get::<_, Option<i64>>(8)?.map(|b| b as u64),
                        snapshot: row.get(9)?,
                        error: row.get(10)?,
                        report: row
                            .get::<_, Option<String>>(11)?
                            .and_then(|text| serde_json::from_str(&text).ok()),
                    })
                },
            )
            .map_err(|e| self.wrap(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))
    }

    /// The newest backup of `job` that saved a snapshot.
    pub fn last_success(&self, job: &str) -> Result<Option<RunRecord>> {
        let runs = self.runs_of(RunKind::Backup, job, usize::MAX >> 1)?;
        Ok(runs.into_iter().find(|run| run.outcome.saved_snapshot()))
    }

    /// The newest backup of `job`, whatever its outcome.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRecord>> {
        self.last_of(RunKind::Backup, job)
    }

    /// The newest run of `kind` for `job`, whatever its outcome.
    pub fn last_of(&self, kind: RunKind, job: &str) -> Result<Option<RunRecord>> {
        Ok(self.runs_of(kind, job, 1)?.into_iter().next())
    }

    /// Every (kind, job) of the tasks that have runs: prune, verify, restore-test.
    pub fn tasks(&self) -> Result<Vec<(RunKind, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT kind, job FROM runs WHERE kind != 'backup' ORDER BY 1, 2")
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((RunKind::parse(&row.get::<_, String>(0)?), row.get(1)?))
            })
            .map_err(|e| self.wrap(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))
    }

    /// Every job that has backup runs.
    pub fn jobs(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT job FROM runs WHERE kind = 'backup' ORDER BY job")
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([], |row| row.get(0))
            .map_err(|e| self.wrap(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))
    }

    /// When the daemon first saw `job`; records `now` when it never had.
    pub fn first_seen(&self, job: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO jobs_seen (job, first_seen) VALUES (?1, ?2)",
                params![job, time(now)],
            )
            .map_err(|e| self.wrap(e))?;
        let text: String = self
            .conn
            .query_row(
                "SELECT first_seen FROM jobs_seen WHERE job = ?1",
                params![job],
                |row| row.get(0),
            )
            .map_err(|e| self.wrap(e))?;
        Ok(parse_time(&text))
    }

    /// The open alert with `key`.
    pub fn alert(&self, key: &str) -> Result<Option<OpenAlert>> {
        self.conn
            .query_row(
                "SELECT key, rule, subject, job, message, opened_at, last_sent_at FROM alerts \
                 WHERE key = ?1",
                params![key],
                read_alert,
            )
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// Every open alert, oldest first.
    pub fn open_alerts(&self) -> Result<Vec<OpenAlert>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, rule, subject, job, message, opened_at, last_sent_at FROM alerts \
                 ORDER BY opened_at, key",
            )
            .map_err(|e| self.wrap(e))?;
        let rows = stmt.query_map([], read_alert).map_err(|e| self.wrap(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))
    }

    /// Opens an alert, or updates an open one's message and time of the last message sent.
    pub fn put_alert(&self, alert: &OpenAlert) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO alerts (key, rule, subject, job, message, opened_at, last_sent_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (key) DO UPDATE SET \
                 message = excluded.message, last_sent_at = excluded.last_sent_at",
                params![
                    alert.key,
                    alert.rule,
                    alert.subject,
                    alert.job,
                    alert.message,
                    time(alert.opened_at),
                    time(alert.last_sent_at)
                ],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Closes the alert with `key`.
    pub fn remove_alert(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM alerts WHERE key = ?1", params![key])
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }
}

fn read_alert(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpenAlert> {
    Ok(OpenAlert {
        key: row.get(0)?,
        rule: row.get(1)?,
        subject: row.get(2)?,
        job: row.get(3)?,
        message: row.get(4)?,
        opened_at: parse_time(&row.get::<_, String>(5)?),
        last_sent_at: parse_time(&row.get::<_, String>(6)?),
    })
}

/// The stored form of a time.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn runs_are_recorded_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(&dir.path().join("state")).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let first = store.start_run("db", Trigger::Command, at(0)).unwrap();
        store
            .finish_run(
                first,
                at(5),
                RunOutcome::Success,
                &RunResult {
                    bytes_read: Some(10),
                    bytes_added: Some(4),
                    snapshot: Some("abc".into()),
                    ..RunResult::default()
                },
            )
            .unwrap();
        let second = store.start_run("db", Trigger::Schedule, at(60)).unwrap();
        store
            .finish_run(
                second,
                at(61),
                RunOutcome::Failed,
                &RunResult {
                    error: Some("no such file".into()),
                    ..RunResult::default()
                },
            )
            .unwrap();
        let runs = store.runs(Some("db"), 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].outcome, RunOutcome::Failed);
        assert_eq!(runs[1].bytes_added, Some(4));
        assert_eq!(store.last_success("db").unwrap().unwrap().id, first);
        assert!(store.runs(Some("other"), 10).unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused_and_an_old_one_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");

        // A file from before any migration (version 0) is brought up to date.
        let fresh = dir.path().join("fresh.db");
        drop(Connection::open(&fresh).unwrap());
        assert_eq!(
            Store::open(&fresh).unwrap().schema_version().unwrap(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn tasks_are_runs_of_their_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A version-1 file with one backup: it becomes a backup run of version 2.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO runs (job, trigger, started_at, finished_at, outcome) \
             VALUES ('db', 'schedule', ?1, ?1, 'success')",
            params![time(at(0))],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.runs(None, 10).unwrap()[0].kind, RunKind::Backup);

        let verify = store
            .start(RunKind::Verify, "db", Trigger::Schedule, at(10))
            .unwrap();
        let report = serde_json::json!({"passed": false, "errors": ["pack 1234 is damaged"]});
        store
            .finish_run(
                verify,
                at(20),
                RunOutcome::Failed,
                &RunResult {
                    error: Some("pack 1234 is damaged".into()),
                    report: Some(report.clone()),
                    ..RunResult::default()
                },
            )
            .unwrap();
        store
            .start(RunKind::Prune, "", Trigger::Command, at(30))
            .unwrap();
        // Tasks never count as backups.
        assert_eq!(store.last_run("db").unwrap().unwrap().kind, RunKind::Backup);
        assert_eq!(store.jobs().unwrap(), vec!["db".to_string()]);
        let last = store.last_of(RunKind::Verify, "db").unwrap().unwrap();
        assert_eq!(last.report, Some(report));
        assert_eq!(last.outcome, RunOutcome::Failed);
        assert_eq!(
            store.tasks().unwrap(),
            vec![
                (RunKind::Prune, String::new()),
                (RunKind::Verify, "db".into())
            ]
        );
        assert_eq!(store.runs(Some("db"), 10).unwrap().len(), 2);
    }

    #[test]
    fn unfinished_daemon_runs_are_abandoned_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store.start_run("db", Trigger::Schedule, at(0)).unwrap();
        store.start_run("db", Trigger::Command, at(1)).unwrap();
        assert_eq!(store.abandon_unfinished(at(2)).unwrap(), 1);
        let runs = store.runs(None, 10).unwrap();
        assert_eq!(runs[0].outcome, RunOutcome::Running);
        assert_eq!(runs[1].outcome, RunOutcome::Abandoned);
    }
}
