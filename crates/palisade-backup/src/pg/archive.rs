//! The WAL archive: each file PostgreSQL archives is one small snapshot, found again by its
//! tags alone (snapshot files, never trees or packs), so listing the archive is cheap.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use rustic_core::{IndexedFull, Repository, repofile::SnapshotFile};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    BackupRequest, Error, Repo, Result, SourceSpec, Stream,
    catalog::ItemKind,
    pg::{PgError, wal::WalFile},
    snapshot::read_node,
};

/// The tag of every archived WAL file's snapshot.
pub const WAL_TAG: &str = "pg-wal";
/// Prefix of the tag that names the archived file: `pg-wal:000000010000000000000003`.
const NAME_TAG: &str = "pg-wal:";
/// Prefix of the tag that holds the file's SHA-256, so that a second push compares hashes
/// without reading any data.
const HASH_TAG: &str = "pg-wal-sha256:";

/// The smallest segment size PostgreSQL allows: the widest range of valid names.
const SMALLEST_SEGMENT: u64 = 1 << 20;

/// One file in the WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedWal {
    /// The file's name as PostgreSQL gave it.
    pub name: String,
    /// The snapshot holding it.
    pub snapshot: String,
    /// When it was archived (the snapshot's time).
    #[serde(skip)]
    pub time: rustic_core::jiff::Timestamp,
    /// SHA-256 of its content.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ArchivedWal {
    fn from_snapshot(snap: &SnapshotFile) -> Option<Self> {
        if !snap.tags.contains(WAL_TAG) {
            return None;
        }
        let tag = |prefix: &str| {
            snap.tags
                .iter()
                .find_map(|t| t.strip_prefix(prefix).map(str::to_string))
        };
        Some(Self {
            name: tag(NAME_TAG)?,
            snapshot: snap.id.to_hex().to_string(),
            time: snap.time.timestamp(),
            sha256: tag(HASH_TAG)?,
            size: snap.summary.as_ref().map_or(0, |s| s.total_bytes_processed),
        })
    }

    /// What the file is, for a cluster with `segment_size` segments.
    pub fn file(&self, segment_size: u64) -> Option<WalFile> {
        WalFile::parse(&self.name, segment_size)
    }
}

/// What `archive-push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The file's name.
    pub name: String,
    /// The snapshot that holds it.
    pub snapshot: String,
    /// SHA-256 of its content.
    pub sha256: String,
    /// False when the archive already held the same content (nothing was written).
    pub written: bool,
}

/// Every archived WAL file, oldest first; reads snapshot files only.
pub fn archived(repo: &Repo) -> Result<Vec<ArchivedWal>> {
    let snaps = repo
        .reopen()?
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing the WAL archive", err))?;
    Ok(list_archived(&snaps))
}

/// The archived WAL files among `snaps`, oldest first.
pub(crate) fn list_archived(snaps: &[SnapshotFile]) -> Vec<ArchivedWal> {
    let mut files: Vec<_> = snaps
        .iter()
        .filter_map(ArchivedWal::from_snapshot)
        .collect();
    files.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    files
}

/// The file name of `%p`, checked to be a WAL file name.
pub fn wal_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_name(&name)?;
    Ok(name)
}

fn check_name(name: &str) -> Result<()> {
    match WalFile::parse(name, SMALLEST_SEGMENT) {
        Some(_) => Ok(()),
        None => Err(PgError::BadWalName { name: name.into() }.into()),
    }
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`). The same name with the same content
/// succeeds without writing anything (PostgreSQL retries after a crash); the same name with
/// other content is refused.
pub fn push(repo: &Repo, path: &Path, temp_dir: &Path) -> Result<PushReport> {
    let name = wal_name(path)?;
    let (size, sha256) = hash_file(path)?;
    let existing = archived(repo)?;
    if let Some(same) = existing.iter().find(|w| w.name == name) {
        if same.sha256 == sha256 {
            return Ok(PushReport {
                name,
                snapshot: same.snapshot.clone(),
                sha256,
                written: false,
            });
        }
        return Err(PgError::ConflictingWal {
            name,
            archived: same.sha256.clone(),
            offered: sha256,
        }
        .into());
    }

    let file = std::fs::File::open(path).map_err(|err| Error::io(path, err))?;
    let report = crate::backup(
        repo,
        BackupRequest {
            sources: vec![SourceSpec::Stream { name: name.clone() }],
            stream: Some(Stream::Reader(Box::new(file))),
            job: None,
            tags: vec![
                WAL_TAG.into(),
                format!("{NAME_TAG}{name}"),
                format!("{HASH_TAG}{sha256}"),
            ],
            temp_dir: temp_dir.to_path_buf(),
            time: None,
        },
    )?;
    let stored = &report.catalog.items[0];
    if stored.sha256 != sha256 || stored.size != size {
        return Err(Error::Read {
            what: path.display().to_string(),
            source: std::io::Error::other(
                "the file changed while it was archived; PostgreSQL never changes a finished \
                 segment, so something else writes to it",
            ),
        });
    }
    Ok(PushReport {
        name,
        snapshot: report.snapshot,
        sha256,
        written: true,
    })
}

/// Writes the archived file `name` to `dest` (PostgreSQL's `%f` and `%p`): into a temporary
/// file beside it, checked against its hash, then renamed into place.
pub fn get(repo: &Repo, name: &str, dest: &Path) -> Result<()> {
    check_name(name)?;
    let wal = archived(repo)?
        .into_iter()
        .rev()
        .find(|w| w.name == name)
        .ok_or_else(|| PgError::NotArchived { name: name.into() })?;
    let full = repo
        .reopen()?
        .to_indexed()
        .map_err(|err| Error::repo("reading the repository index", err))?;
    let bytes = read_archived(&full, &wal)?;
    write_atomically(dest, &bytes)
}

/// The content of an archived file, checked against its hash.
pub(crate) fn read_archived<S: IndexedFull>(
    full: &Repository<S>,
    wal: &ArchivedWal,
) -> Result<Vec<u8>> {
    let snap = crate::snapshot::find(full, &wal.snapshot)?;
    let path = format!("{}/{}", ItemKind::Stream.folder(), wal.name);
    let node = full
        .node_from_snapshot_and_path(&snap, &path)
        .map_err(|err| Error::repo("reading the WAL archive", err))?;
    let bytes =
        read_node(full, &node).map_err(|err| Error::repo("reading the WAL archive", err))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != wal.sha256 {
        return Err(PgError::DamagedWal {
            name: wal.name.clone(),
            got,
            want: wal.sha256.clone(),
        }
        .into());
    }
    Ok(bytes)
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".palisade-wal-")
        .tempfile_in(&dir)
        .map_err(|err| Error::io(&dir, err))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|err| Error::io(temp.path(), err))?;
    temp.persist(dest)
        .map_err(|err| Error::io(dest, err.error))?;
    Ok(())
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    crate::restore::hash_file(path).map_err(|reason| Error::Read {
        what: path.display().to_string(),
        source: std::io::Error::other(reason),
    })
}
