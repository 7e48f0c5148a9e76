//! `pg wal-check`: the archived WAL by timeline, with missing segments and timeline history
//! problems.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{
    Error, Repo, Result,
    pg::{
        archive::{ArchivedWal, list_archived, read_archived},
        recover::base_backups,
        wal::{self, DEFAULT_SEGMENT_SIZE, WalFile},
    },
};

/// Missing segment names listed per timeline; beyond that only the count is given.
const LISTED_MISSING: usize = 100;

/// The archive of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineWal {
    /// The timeline.
    pub timeline: u32,
    /// Its first archived segment.
    pub first: String,
    /// Its last archived segment.
    pub last: String,
    /// Segments archived.
    pub segments: u64,
    /// Segments missing between the first and the last (up to 100 names).
    pub missing: Vec<String>,
    /// How many are missing in all.
    pub missing_count: u64,
    /// Whether its history file is archived (timeline 1 has none).
    pub history: bool,
}

/// What `wal-check` found.
#[derive(Debug, Clone, Serialize)]
pub struct WalCheckReport {
    /// The segment size the names were read with.
    pub wal_segment_size: u64,
    /// One entry per timeline with segments.
    pub timelines: Vec<TimelineWal>,
    /// Timeline problems: history files whose parent has no WAL, segments without history.
    pub problems: Vec<String>,
    /// Archived names that are no WAL file names for this segment size.
    pub unknown: Vec<String>,
}

impl WalCheckReport {
    /// Whether the archive is whole.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
            && self.unknown.is_empty()
            && self.timelines.iter().all(|t| t.missing_count == 0)
    }
}

/// Checks the WAL archive. The segment size is `segment_size`, else the newest base backup's,
/// else 16 MiB.
pub fn wal_check(repo: &Repo, segment_size: Option<u64>) -> Result<WalCheckReport> {
    let full = repo
        .reopen()?
        .to_indexed()
        .map_err(|err| Error::repo("reading the repository index", err))?;
    let snaps = full
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    let size = match segment_size {
        Some(size) => size,
        None => base_backups(&full, &snaps)?
            .last()
            .map_or(DEFAULT_SEGMENT_SIZE, |b| b.base.wal_segment_size),
    };
    let archive = list_archived(&snaps);

    let mut segments: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut histories: BTreeMap<u32, &ArchivedWal> = BTreeMap::new();
    let mut unknown = Vec::new();
    for wal in &archive {
        match wal.file(size) {
            Some(WalFile::Segment { timeline, segment }) => {
                segments.entry(timeline).or_default().insert(segment);
            }
            Some(WalFile::History { timeline }) => {
                histories.insert(timeline, wal);
            }
            Some(WalFile::Backup { .. } | WalFile::Partial { .. }) => {}
            None => unknown.push(wal.name.clone()),
        }
    }

    let timelines = segments
        .iter()
        .map(|(&timeline, numbers)| timeline_report(timeline, numbers, size, &histories))
        .collect();
    let mut problems = Vec::new();
    for (&timeline, _) in segments.iter().filter(|(t, _)| **t > 1) {
        if !histories.contains_key(&timeline) {
            problems.push(format!(
                "timeline {timeline} has archived segments but no history file {}",
                wal::history_name(timeline)
            ));
        }
    }
    for (&timeline, wal) in &histories {
        let text = read_archived(&full, wal)?;
        let Some(history) = wal::parse_history(&String::from_utf8_lossy(&text)) else {
            problems.push(format!("{} is not a timeline history file", wal.name));
            continue;
        };
        let Some(parent) = history.last().map(|s| s.timeline) else {
            problems.push(format!("{} names no parent timeline", wal.name));
            continue;
        };
        let parent_known = segments.contains_key(&parent) || histories.contains_key(&parent);
        if !parent_known {
            problems.push(format!(
                "{} says timeline {timeline} branched from timeline {parent}, which has no \
                 archived WAL",
                wal.name
            ));
        }
    }
    Ok(WalCheckReport {
        wal_segment_size: size,
        timelines,
        problems,
        unknown,
    })
}

fn timeline_report(
    timeline: u32,
    numbers: &BTreeSet<u64>,
    size: u64,
    histories: &BTreeMap<u32, &ArchivedWal>,
) -> TimelineWal {
    let first = *numbers.first().expect("a timeline listed has segments");
    let last = *numbers.last().expect("a timeline listed has segments");
    let missing_count = last - first + 1 - numbers.len() as u64;
    let missing = (first..=last)
        .filter(|n| !numbers.contains(n))
        .take(LISTED_MISSING)
        .map(|n| wal::segment_name(timeline, n, size))
        .collect();
    TimelineWal {
        timeline,
        first: wal::segment_name(timeline, first, size),
        last: wal::segment_name(timeline, last, size),
        segments: numbers.len() as u64,
        missing,
        missing_count,
        history: histories.contains_key(&timeline),
    }
}
