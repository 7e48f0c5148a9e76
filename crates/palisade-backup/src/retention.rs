//! Retention: each job's keep rules, and `forget`, which removes what no rule or lock keeps.
//!
//! The rules are rustic_core's, applied to each job's snapshots on their own; object lock is
//! asked only on S3. `docs/retention.md` explains the rules and their reasons.

use std::{fmt, str::FromStr};

use rustic_core::{
    FileType, ForgetGroups, Grouped, Id, KeepOptions, SnapshotGroupCriterion, StringList,
    jiff::{Span, Timestamp, Zoned},
    repofile::{SnapshotFile, SnapshotId},
};
use serde::Serialize;

use crate::{Error, Repo, Result};

/// How far `keep-within` reaches back from a job's newest snapshot, written as restic writes it:
/// numbers with units, `y` years, `m` months, `w` weeks, `d` days, `h` hours (`30d`, `2w`,
/// `1y6m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Within {
    text: String,
    years: i64,
    months: i64,
    weeks: i64,
    days: i64,
    hours: i64,
}

impl Within {
    fn span(&self) -> Span {
        Span::new()
            .years(self.years)
            .months(self.months)
            .weeks(self.weeks)
            .days(self.days)
            .hours(self.hours)
    }
}

impl FromStr for Within {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |fix: &str| Error::BadRetention {
            key: "keep-within".into(),
            value: text.into(),
            fix: fix.into(),
        };
        let not_a_duration = || {
            bad(
                "not a duration; write numbers with units, like 30d, 2w or 1y6m (y years, m \
                 months, w weeks, d days, h hours)",
            )
        };
        let mut within = Self {
            text: text.trim().to_string(),
            years: 0,
            months: 0,
            weeks: 0,
            days: 0,
            hours: 0,
        };
        let mut number = String::new();
        let mut units = String::new();
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let value: i64 = number.parse().map_err(|_| not_a_duration())?;
            number.clear();
            let slot = match c {
                'y' => &mut within.years,
                'm' => &mut within.months,
                'w' => &mut within.weeks,
                'd' => &mut within.days,
                'h' => &mut within.hours,
                _ => return Err(not_a_duration()),
            };
            if units.contains(c) {
                return Err(not_a_duration());
            }
            units.push(c);
            *slot = value;
        }
        if !number.is_empty() || units.is_empty() {
            return Err(not_a_duration());
        }
        if [
            within.years,
            within.months,
            within.weeks,
            within.days,
            within.hours,
        ] == [0; 5]
        {
            return Err(bad(
                "keeps nothing; give a duration longer than zero, like 30d, or leave keep-within \
                 out",
            ));
        }
        let fits = Span::new()
            .try_years(within.years)
            .and_then(|s| s.try_months(within.months))
            .and_then(|s| s.try_weeks(within.weeks))
            .and_then(|s| s.try_days(within.days))
            .and_then(|s| s.try_hours(within.hours));
        if fits.is_err() {
            return Err(bad(
                "is too long; give at most a few thousand years, like 100y",
            ));
        }
        Ok(within)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Within {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Which snapshots of one job to keep, restic's way: a snapshot is kept when any rule keeps it.
/// A job without a policy keeps every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionPolicy {
    /// The newest N snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// The newest snapshot of each of the last N hours that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// The newest snapshot of each of the last N days that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// The newest snapshot of each of the last N ISO weeks that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// The newest snapshot of each of the last N months that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// The newest snapshot of each of the last N years that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Every snapshot this close to the job's newest one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<Within>,
    /// Every snapshot with one of these tags (`a,b` means both `a` and `b`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_tag: Vec<String>,
}

impl RetentionPolicy {
    /// Whether no rule is set (such a policy would keep nothing, and is refused).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Checks the count of a `keep-*` rule: a whole number of snapshots, at least 1.
    pub fn count(key: &str, value: i64) -> Result<u32> {
        u32::try_from(value)
            .ok()
            .filter(|n| (1..=i32::MAX as u32).contains(n))
            .ok_or_else(|| Error::BadRetention {
                key: key.into(),
                value: value.to_string(),
                fix: format!(
                    "give a whole number of snapshots, 1 or more, or leave {key} out to keep none \
                     by that rule"
                ),
            })
    }

    /// Checks a `keep-tag` entry: a tag, or several joined by commas (all of them must match).
    pub fn tag(value: &str) -> Result<String> {
        if value.split(',').any(|tag| tag.trim().is_empty()) {
            return Err(Error::BadRetention {
                key: "keep-tag".into(),
                value: format!("\"{value}\""),
                fix: "give the tag of the snapshots to keep (a,b keeps those with both tags)"
                    .into(),
            });
        }
        Ok(value.to_string())
    }

    fn keep_options(&self) -> Result<KeepOptions> {
        // rustic_core refuses an empty policy too, but without naming the rules to set.
        if self.is_empty() {
            return Err(Error::BadRetention {
                key: "retention".into(),
                value: "{}".into(),
                fix: "sets no rule; set at least one of keep-last, keep-hourly, keep-daily, \
                      keep-weekly, keep-monthly, keep-yearly, keep-within or keep-tag"
                    .into(),
            });
        }
        let count = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let tags = self
            .keep_tag
            .iter()
            .map(|tag| StringList::from_str(tag).expect("splitting on commas cannot fail"))
            .collect::<Vec<_>>();
        let mut keep = KeepOptions::default()
            .keep_last(count(self.keep_last))
            .keep_hourly(count(self.keep_hourly))
            .keep_daily(count(self.keep_daily))
            .keep_weekly(count(self.keep_weekly))
            .keep_monthly(count(self.keep_monthly))
            .keep_yearly(count(self.keep_yearly))
            .keep_tags(tags);
        if let Some(within) = &self.keep_within {
            keep = keep.keep_within(within.span());
        }
        Ok(keep)
    }
}

impl fmt::Display for RetentionPolicy {
    /// `keep-last 2, keep-daily 7, keep-within 30d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ];
        let mut parts: Vec<String> = counts
            .iter()
            .filter_map(|(key, n)| n.map(|n| format!("{key} {n}")))
            .collect();
        parts.extend(self.keep_within.iter().map(|w| format!("keep-within {w}")));
        parts.extend(self.keep_tag.iter().map(|t| format!("keep-tag {t}")));
        f.write_str(&parts.join(", "))
    }
}

/// Whose snapshots one policy decides about.
#[derive(Debug, Clone)]
pub struct ForgetTarget {
    /// The job (snapshot label); `None` for every label in the repository, each on its own.
    pub job: Option<String>,
    /// The rules.
    pub policy: RetentionPolicy,
}

/// What `forget` decided, group by group.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// Whether this was a dry run (nothing removed).
    pub dry_run: bool,
    /// One group per job, in the order asked.
    pub groups: Vec<ForgetGroupReport>,
    /// How many snapshots were removed (in a dry run: would have been).
    pub removed: usize,
}

/// The snapshots of one job and the decision on each.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetGroupReport {
    /// The job (snapshot label; empty for snapshots made without a job).
    pub job: String,
    /// The rules applied.
    pub policy: RetentionPolicy,
    /// Newest first.
    pub snapshots: Vec<ForgetEntry>,
}

impl ForgetReport {
    /// The full ids of the snapshots removed (in a dry run: that would be).
    pub fn removed_ids(&self) -> Vec<String> {
        self.groups
            .iter()
            .flat_map(|group| &group.snapshots)
            .filter(|entry| !entry.keep)
            .map(|entry| entry.id.clone())
            .collect()
    }
}

/// One snapshot and whether it stays.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetEntry {
    /// Full id.
    pub id: String,
    /// First 8 hex digits.
    pub short_id: String,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    /// Whether the snapshot stays.
    pub keep: bool,
    /// Why it stays: the rules that keep it (`last`, `daily`, `within`, `tags`, ...), or
    /// `object lock until DATE` / `legal hold` when only object lock does.
    pub reasons: Vec<String>,
    #[serde(skip)]
    snapshot: SnapshotId,
}

impl ForgetEntry {
    fn new(snapshot: &SnapshotFile, keep: bool, reasons: Vec<String>) -> Self {
        let id = snapshot.id.to_hex().to_string();
        Self {
            short_id: id.chars().take(8).collect(),
            id,
            time: snapshot.time.timestamp().to_string(),
            keep,
            reasons,
            snapshot: snapshot.id,
        }
    }
}

/// Applies each target's policy to its job's snapshots and removes those no rule keeps (unless
/// `dry_run`). On S3, a snapshot whose file object lock still protects is kept, with the lock
/// as its reason: deleting it would only hide it behind a delete marker.
pub fn forget(repo: &Repo, targets: &[ForgetTarget], dry_run: bool) -> Result<ForgetReport> {
    let handle = repo.reopen()?;
    let snapshots = handle
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    let now = Zoned::now();
    let mut groups = Vec::new();
    for target in targets {
        groups.extend(decide(&snapshots, target, &now)?);
    }
    keep_locked(repo, &mut groups)?;

    let doomed: Vec<SnapshotId> = groups
        .iter()
        .flat_map(|group| &group.snapshots)
        .filter(|entry| !entry.keep)
        .map(|entry| entry.snapshot)
        .collect();
    if !dry_run && !doomed.is_empty() {
        handle
            .delete_snapshots(&doomed)
            .map_err(|err| Error::repo("removing snapshots", err))?;
    }
    Ok(ForgetReport {
        dry_run,
        groups,
        removed: doomed.len(),
    })
}

/// rustic_core's decision for one target: its snapshots grouped by label, each group kept by
/// the target's rules alone.
fn decide(
    snapshots: &[SnapshotFile],
    target: &ForgetTarget,
    now: &Zoned,
) -> Result<Vec<ForgetGroupReport>> {
    let chosen: Vec<SnapshotFile> = snapshots
        .iter()
        .filter(|snap| target.job.as_ref().is_none_or(|job| &snap.label == job))
        .cloned()
        .collect();
    let grouped = Grouped::from_items(chosen, SnapshotGroupCriterion::new().label(true));
    let keep = target.policy.keep_options()?;
    let decided = ForgetGroups::from_grouped_snapshots_with_retention(grouped, &keep, now)
        .map_err(|err| Error::repo("applying the retention policy", err))?;
    let mut groups: Vec<ForgetGroupReport> = decided
        .0
        .into_iter()
        .map(|group| ForgetGroupReport {
            job: group.group_key.label.unwrap_or_default(),
            policy: target.policy.clone(),
            snapshots: group
                .items
                .iter()
                .map(|item| ForgetEntry::new(&item.snapshot, item.keep, item.reasons.clone()))
                .collect(),
        })
        .collect();
    // A job without snapshots still gets its line in the report.
    if let (Some(job), true) = (&target.job, groups.is_empty()) {
        groups.push(ForgetGroupReport {
            job: job.clone(),
            policy: target.policy.clone(),
            snapshots: Vec::new(),
        });
    }
    Ok(groups)
}

/// Turns every removal whose snapshot file is still under object lock into a keep, with the
/// lock as the reason. Local repositories and buckets without object lock have no locks.
fn keep_locked(repo: &Repo, groups: &mut [ForgetGroupReport]) -> Result<()> {
    let Some(s3) = repo.backend.s3() else {
        return Ok(());
    };
    let mut doomed: Vec<&mut ForgetEntry> = groups
        .iter_mut()
        .flat_map(|group| group.snapshots.iter_mut())
        .filter(|entry| !entry.keep)
        .collect();
    if doomed.is_empty() || !s3.locks_objects()? {
        return Ok(());
    }
    let ids: Vec<Id> = doomed.iter().map(|entry| *entry.snapshot).collect();
    let locks = s3.object_locks(FileType::Snapshot, &ids)?;
    let now = Timestamp::now();
    for (entry, lock) in doomed.iter_mut().zip(locks) {
        if lock.holds(now) {
            entry.keep = true;
            entry.reasons = vec![lock.to_string()];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_restic_writes_them() {
        let within: Within = "1y6m".parse().unwrap();
        assert_eq!((within.years, within.months), (1, 6));
        let within: Within = "2w3d12h".parse().unwrap();
        assert_eq!((within.weeks, within.days, within.hours), (2, 3, 12));
        assert_eq!("30d".parse::<Within>().unwrap().to_string(), "30d");
        for bad in [
            "", "30", "d", "3x", "1d1d", "-1d", "1.5d", "0d", "99999y", "30 days",
        ] {
            let err = bad.parse::<Within>().unwrap_err().to_string();
            assert!(err.starts_with("keep-within = "), "{bad}: {err}");
        }
        let err = "3x".parse::<Within>().unwrap_err().to_string();
        assert!(err.contains("like 30d, 2w or 1y6m"), "{err}");
    }

    #[test]
    fn counts_are_whole_and_positive() {
        assert_eq!(RetentionPolicy::count("keep-daily", 7).unwrap(), 7);
        for bad in [0, -1, i64::from(u32::MAX)] {
            let err = RetentionPolicy::count("keep-daily", bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("1 or more") && err.contains("keep-daily"),
                "{err}"
            );
        }
        assert!(RetentionPolicy::tag("release,audited").is_ok());
        assert!(RetentionPolicy::tag("").is_err() && RetentionPolicy::tag("a,").is_err());
    }

    #[test]
    fn a_policy_names_its_rules() {
        let policy = RetentionPolicy {
            keep_last: Some(2),
            keep_daily: Some(7),
            keep_within: Some("30d".parse().unwrap()),
            keep_tag: vec!["release".into()],
            ..RetentionPolicy::default()
        };
        assert_eq!(
            policy.to_string(),
            "keep-last 2, keep-daily 7, keep-within 30d, keep-tag release"
        );
        assert!(policy.keep_options().is_ok());
        assert!(RetentionPolicy::default().is_empty());
        assert!(RetentionPolicy::default().keep_options().is_err());
    }
}
