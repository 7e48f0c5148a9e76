//! `pg restore`: choose the base backup for a recovery target, prove the archived WAL reaches
//! it, lay out the data directory and write the recovery settings PostgreSQL replays with.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};

use rustic_core::{IndexedFull, Repository, jiff::Timestamp, repofile::SnapshotFile};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    CATALOG_PATH, Catalog, CatalogItem, Error, Repo, Result,
    pg::{
        PgBaseBackup, PgError,
        archive::{ArchivedWal, list_archived, read_archived},
        base::BASE_TAG,
        wal::{self, Lsn, TimelineSwitch, WalFile},
    },
    snapshot::read_node,
};

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The last commit at or before this time.
    Time(Timestamp),
    /// This WAL position.
    Lsn(Lsn),
    /// The end of the archived WAL.
    Latest,
}

impl RecoveryTarget {
    /// Parses `--target-time`: RFC 3339 with an offset (`T` or a space between date and time;
    /// PostgreSQL's own `+00` offsets too).
    pub fn time(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let mut candidates = vec![trimmed.to_string()];
        // PostgreSQL prints offsets as +HH; RFC 3339 wants +HH:MM.
        let bytes = trimmed.as_bytes();
        if bytes.len() > 3 && matches!(bytes[bytes.len() - 3], b'+' | b'-') {
            candidates.push(format!("{trimmed}:00"));
        }
        candidates
            .iter()
            .find_map(|c| c.parse::<Timestamp>().ok())
            .map(Self::Time)
            .ok_or_else(|| PgError::BadTargetTime { value: text.into() }.into())
    }

    /// Parses `--target-lsn`.
    pub fn lsn(text: &str) -> Result<Self> {
        Lsn::parse(text)
            .map(Self::Lsn)
            .ok_or_else(|| PgError::BadTargetLsn { value: text.into() }.into())
    }

    fn describe(self) -> String {
        match self {
            Self::Time(time) => format!("time {time}"),
            Self::Lsn(lsn) => format!("LSN {lsn}"),
            Self::Latest => "the end of the archived WAL".into(),
        }
    }
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline descending from the backup's (PostgreSQL's default).
    Latest,
    /// The backup's own timeline.
    Current,
    /// This timeline.
    Number(u32),
}

impl TimelineChoice {
    /// Parses `latest`, `current` or a number.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "latest" => Ok(Self::Latest),
            "current" => Ok(Self::Current),
            _ => text
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(Self::Number)
                .ok_or_else(|| PgError::BadTimeline { value: text.into() }.into()),
        }
    }
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct PgRestoreRequest {
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Which timeline it follows.
    pub timeline: TimelineChoice,
    /// The new data directory: missing or empty.
    pub data_dir: PathBuf,
    /// A base backup snapshot (id or prefix); the newest one before the target without it.
    pub snapshot: Option<String>,
    /// The `restore_command` PostgreSQL runs for each WAL file (this binary's `archive-get`).
    pub restore_command: String,
    /// Keep the base backup's `archive_mode`; otherwise the restored server archives nothing.
    pub keep_archiving: bool,
}

/// What `pg restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct PgRestoreReport {
    /// The base backup's snapshot.
    pub snapshot: String,
    /// What the catalog says about it.
    pub base_backup: PgBaseBackup,
    /// The data directory written.
    pub data_dir: PathBuf,
    /// The target, as PostgreSQL was told.
    pub target: String,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// WAL segments recovery will read from the archive.
    pub segments: u64,
    /// The last of them.
    pub last_segment: String,
}

/// A base backup in the repository.
#[derive(Debug, Clone)]
pub struct BaseBackupInfo {
    /// Its snapshot id.
    pub snapshot: String,
    /// The stream item holding the tar.
    pub item: CatalogItem,
    /// Its WAL range and server.
    pub base: PgBaseBackup,
}

/// Every base backup of `snaps`, oldest first (reads each one's catalog).
pub(crate) fn base_backups<S: IndexedFull>(
    full: &Repository<S>,
    snaps: &[SnapshotFile],
) -> Result<Vec<BaseBackupInfo>> {
    let mut found = Vec::new();
    for snap in snaps.iter().filter(|s| s.tags.contains(BASE_TAG)) {
        let node = full
            .node_from_snapshot_and_path(snap, CATALOG_PATH)
            .map_err(|err| Error::repo("reading a base backup's catalog", err))?;
        let bytes =
            read_node(full, &node).map_err(|err| Error::repo("reading the catalog", err))?;
        let catalog: Catalog = serde_json::from_slice(&bytes).map_err(|err| Error::BadCatalog {
            id: snap.id.to_hex().to_string(),
            reason: err.to_string(),
        })?;
        for item in catalog.items {
            if let Some(base) = item.pg_base_backup.clone() {
                found.push(BaseBackupInfo {
                    snapshot: snap.id.to_hex().to_string(),
                    item,
                    base,
                });
            }
        }
    }
    found.sort_by_key(|b| b.base.stop());
    Ok(found)
}

/// Restores a base backup into `request.data_dir` and writes the recovery settings that make
/// PostgreSQL replay the archived WAL to the target and promote.
pub fn restore(repo: &Repo, request: &PgRestoreRequest) -> Result<PgRestoreReport> {
    let full = repo
        .reopen()?
        .to_indexed()
        .map_err(|err| Error::repo("reading the repository index", err))?;
    let snaps = full
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    let archive = list_archived(&snaps);
    let bases = base_backups(&full, &snaps)?;
    let chosen = choose_base(&bases, request)?;
    let plan = plan_wal(&full, &archive, &chosen.base, request)?;
    prepare_dir(&request.data_dir)?;
    extract(&full, chosen, &request.data_dir)?;
    write_recovery_settings(&request.data_dir, request, plan.timeline)?;
    Ok(PgRestoreReport {
        snapshot: chosen.snapshot.clone(),
        base_backup: chosen.base.clone(),
        data_dir: request.data_dir.clone(),
        target: request.target.describe(),
        timeline: plan.timeline,
        segments: plan.segments,
        last_segment: plan.last,
    })
}

/// The given base backup, or the newest one whose consistent point lies before the target.
fn choose_base<'a>(
    bases: &'a [BaseBackupInfo],
    request: &PgRestoreRequest,
) -> Result<&'a BaseBackupInfo> {
    let reaches = |b: &BaseBackupInfo| match request.target {
        RecoveryTarget::Time(time) => b.base.stop_timestamp() <= time,
        RecoveryTarget::Lsn(lsn) => b.base.stop() <= lsn,
        RecoveryTarget::Latest => true,
    };
    if let Some(id) = &request.snapshot {
        let base = bases
            .iter()
            .find(|b| b.snapshot.starts_with(id.as_str()))
            .ok_or_else(|| PgError::NotABaseBackup { id: id.clone() })?;
        if !reaches(base) {
            return Err(PgError::NoBaseBackup {
                reason: format!(
                    "the target {} lies before base backup {} is consistent ({}, LSN {}); \
                     choose a later target or an older base backup",
                    request.target.describe(),
                    &base.snapshot[..8],
                    base.base.stop_time,
                    base.base.stop_lsn
                ),
            }
            .into());
        }
        return Ok(base);
    }
    let Some(earliest) = bases.first() else {
        return Err(PgError::NoBaseBackup {
            reason: "the repository holds no PostgreSQL base backup; take one with `palisade pg \
                     base-backup --postgres URL`"
                .into(),
        }
        .into());
    };
    bases.iter().rev().find(|b| reaches(b)).ok_or_else(|| {
        PgError::NoBaseBackup {
            reason: format!(
                "the target {} lies before the earliest base backup, which is consistent from \
                 {} (LSN {}); no base backup can reach it, choose a later target",
                request.target.describe(),
                earliest.base.stop_time,
                earliest.base.stop_lsn
            ),
        }
        .into()
    })
}

/// The WAL recovery will read.
struct WalPlan {
    timeline: u32,
    segments: u64,
    last: String,
}

/// Proves that the archive holds every segment from the backup's start to the target, on the
/// timeline recovery will follow.
fn plan_wal<S: IndexedFull>(
    full: &Repository<S>,
    archive: &[ArchivedWal],
    base: &PgBaseBackup,
    request: &PgRestoreRequest,
) -> Result<WalPlan> {
    let size = base.wal_segment_size;
    let by_name: HashMap<&str, &ArchivedWal> =
        archive.iter().map(|w| (w.name.as_str(), w)).collect();
    let (timeline, history) = follow_timeline(full, &by_name, base, request.timeline)?;
    let name_of = |segment: u64| {
        wal::segment_name(
            wal::timeline_of(segment, timeline, &history, size),
            segment,
            size,
        )
    };
    let last_archived = archive
        .iter()
        .filter_map(|w| match w.file(size) {
            Some(WalFile::Segment { segment, .. }) => Some(segment),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let first = base.start().segment(size);
    let must_reach = base.stop().segment(size);
    let mut segment = first;
    loop {
        let name = name_of(segment);
        let Some(found) = by_name.get(name.as_str()) else {
            return missing(
                segment,
                &name,
                segment <= last_archived,
                must_reach,
                request,
            );
        };
        let done = match request.target {
            RecoveryTarget::Lsn(lsn) => segment >= lsn.segment(size),
            RecoveryTarget::Time(time) => segment >= must_reach && found.time >= time,
            RecoveryTarget::Latest => segment >= must_reach && segment >= last_archived,
        };
        if done {
            return Ok(WalPlan {
                timeline,
                segments: segment - first + 1,
                last: name,
            });
        }
        segment += 1;
    }
    // `missing` explains why the loop ended.
    fn missing(
        segment: u64,
        name: &str,
        later_exist: bool,
        must_reach: u64,
        request: &PgRestoreRequest,
    ) -> Result<WalPlan> {
        let target = request.target.describe();
        let reason = if segment <= must_reach {
            format!(
                "WAL segment {name}, which the base backup itself needs, is not in the archive; \
                 this base backup cannot be recovered: restore from another one \
                 (`palisade pg wal-check` lists the gaps)"
            )
        } else if later_exist {
            format!(
                "WAL segment {name} is missing from the archive, so recovery would stop there \
                 and cannot reach the target {target}; choose a target before that segment or \
                 restore from a later base backup (`palisade pg wal-check` lists the gaps)"
            )
        } else {
            format!(
                "the archived WAL ends before the target {target}: segment {name} has not been \
                 archived yet; switch the server to a new segment (SELECT pg_switch_wal()) and \
                 wait for it to be archived, or choose an earlier target"
            )
        };
        Err(PgError::WalMissing { reason }.into())
    }
}

/// The timeline recovery follows and its ancestry, from the archived history files.
fn follow_timeline<S: IndexedFull>(
    full: &Repository<S>,
    by_name: &HashMap<&str, &ArchivedWal>,
    base: &PgBaseBackup,
    choice: TimelineChoice,
) -> Result<(u32, Vec<TimelineSwitch>)> {
    let timeline = match choice {
        TimelineChoice::Current => base.timeline,
        TimelineChoice::Number(n) => n,
        TimelineChoice::Latest => {
            // As PostgreSQL does: the highest of consecutive history files after the backup's.
            let mut newest = base.timeline;
            while by_name.contains_key(wal::history_name(newest + 1).as_str()) {
                newest += 1;
            }
            newest
        }
    };
    if timeline == base.timeline {
        return Ok((timeline, Vec::new()));
    }
    let name = wal::history_name(timeline);
    let wal = by_name
        .get(name.as_str())
        .ok_or_else(|| PgError::WalMissing {
            reason: format!("timeline {timeline} has no history file {name} in the archive"),
        })?;
    let text = read_archived(full, wal)?;
    let history =
        wal::parse_history(&String::from_utf8_lossy(&text)).ok_or_else(|| PgError::WalMissing {
            reason: format!("the archived {name} is not a timeline history file"),
        })?;
    let branches_after_backup = history
        .iter()
        .any(|s| s.timeline == base.timeline && s.switch >= base.stop());
    if !branches_after_backup {
        return Err(PgError::WalMissing {
            reason: format!(
                "timeline {timeline} does not branch from the base backup's timeline {} after \
                 the backup ({}); restore with --target-timeline current or from another base \
                 backup",
                base.timeline, base.stop_lsn
            ),
        }
        .into());
    }
    Ok((timeline, history))
}

/// The data directory must be missing or empty; it is made with mode 0700.
fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(PgError::DataDirNotEmpty { path: dir.into() }.into());
        }
    } else if dir.exists() {
        return Err(PgError::DataDirNotEmpty { path: dir.into() }.into());
    }
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| Error::io(dir, err))
}

/// Streams the base backup's tar out of the repository into `dir`, checking its hash.
fn extract<S: IndexedFull>(full: &Repository<S>, base: &BaseBackupInfo, dir: &Path) -> Result<()> {
    let snap = crate::snapshot::find(full, &base.snapshot)?;
    let node = full
        .node_from_snapshot_and_path(&snap, &base.item.path)
        .map_err(|err| Error::repo("reading the base backup", err))?;
    let (reader, writer) = std::io::pipe().map_err(|err| Error::io(dir, err))?;
    let target = dir.to_path_buf();
    let unpack = std::thread::spawn(move || {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(false);
        archive.unpack(&target)
    });
    let mut hashing = HashingWriter {
        inner: writer,
        hasher: Sha256::new(),
        size: 0,
    };
    let dumped = full.dump(&node, &mut hashing);
    let HashingWriter {
        inner,
        hasher,
        size,
    } = hashing;
    drop(inner);
    let unpacked = unpack.join().expect("the tar thread does not panic");
    unpacked.map_err(|err| Error::Read {
        what: format!("the base backup's tar into {}", dir.display()),
        source: err,
    })?;
    dumped.map_err(|err| Error::repo("reading the base backup", err))?;
    let got = hex::encode(hasher.finalize());
    if got != base.item.sha256 || size != base.item.size {
        return Err(PgError::DamagedBaseBackup {
            got,
            want: base.item.sha256.clone(),
        }
        .into());
    }
    Ok(())
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// recovery.signal, and the recovery settings appended to postgresql.auto.conf (which
/// PostgreSQL reads after postgresql.conf, so they win).
fn write_recovery_settings(dir: &Path, request: &PgRestoreRequest, timeline: u32) -> Result<()> {
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|err| Error::io(&signal, err))?;
    let wal_dir = dir.join("pg_wal");
    std::fs::create_dir_all(&wal_dir).map_err(|err| Error::io(&wal_dir, err))?;

    let mut lines = vec![
        String::new(),
        "# Written by `palisade pg restore`: replay the archived WAL to the target, then promote."
            .to_string(),
        setting("restore_command", &request.restore_command),
    ];
    match request.target {
        RecoveryTarget::Time(time) => {
            lines.push(setting("recovery_target_time", &postgres_time(time)));
        }
        RecoveryTarget::Lsn(lsn) => lines.push(setting("recovery_target_lsn", &lsn.to_string())),
        RecoveryTarget::Latest => {}
    }
    lines.push(setting("recovery_target_action", "promote"));
    if !request.keep_archiving {
        lines.push(
            "# A restored copy must not push its own timeline into the archive it came from; \
             set archive_mode = on once it is the new primary."
                .to_string(),
        );
        lines.push(setting("archive_mode", "off"));
    }
    lines.push(setting("recovery_target_timeline", &timeline.to_string()));
    let conf = dir.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf)
        .map_err(|err| Error::io(&conf, err))?;
    file.write_all((lines.join("\n") + "\n").as_bytes())
        .map_err(|err| Error::io(&conf, err))
}

/// `time` as PostgreSQL reads it (`2026-01-31 13:05:00.5+00`), cut to its microseconds.
fn postgres_time(time: Timestamp) -> String {
    let micros = Timestamp::from_microsecond(time.as_microsecond()).unwrap_or(time);
    let text = micros.to_string();
    let text = text.strip_suffix('Z').unwrap_or(&text);
    format!("{}+00", text.replacen('T', " ", 1))
}

/// `name = 'value'` with the value quoted as postgresql.conf wants.
fn setting(name: &str, value: &str) -> String {
    format!(
        "{name} = '{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_take_rfc3339_and_postgres_offsets() {
        let want: Timestamp = "2026-01-31T13:05:00.5Z".parse().unwrap();
        for text in [
            "2026-01-31T13:05:00.5Z",
            "2026-01-31 14:05:00.5+01:00",
            "2026-01-31 13:05:00.500000+00",
        ] {
            assert_eq!(
                RecoveryTarget::time(text).unwrap(),
                RecoveryTarget::Time(want),
                "{text}"
            );
        }
        for bad in ["yesterday", "2026-01-31", "2026-01-31 13:05:00", "13:05"] {
            assert!(RecoveryTarget::time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn target_times_are_written_in_utc_to_the_microsecond() {
        let RecoveryTarget::Time(time) =
            RecoveryTarget::time("2026-01-31 14:05:00.1234567+01:00").unwrap()
        else {
            unreachable!()
        };
        assert_eq!(postgres_time(time), "2026-01-31 13:05:00.123456+00");
    }

    #[test]
    fn settings_are_quoted_for_postgresql_conf() {
        assert_eq!(
            setting("restore_command", "'/opt/my palisade' pg archive-get %f %p"),
            "restore_command = '''/opt/my palisade'' pg archive-get %f %p'"
        );
        // A shell-quoted quote ('\'') keeps its backslash for the shell.
        assert_eq!(
            setting("restore_command", r"x --config '/a/it'\''s.toml'"),
            r"restore_command = 'x --config ''/a/it''\\''''s.toml'''"
        );
    }
}
