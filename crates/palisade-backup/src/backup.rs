//! Running one backup: prepare the sources, archive them, then the catalog, and make the
//! snapshot visible only when both are stored.

use std::{
    cmp::Ordering,
    io::Read,
    path::{Path, PathBuf},
};

use rustic_core::{
    BackupOptions, ParentOptions, SnapshotOptions,
    repofile::{SnapshotFile, SnapshotSummary},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::os::unix::fs::OpenOptionsExt;

use crate::{
    ChunkerOptions, Error, Repo, Result,
    catalog::{CATALOG_VERSION, Catalog, CatalogItem, ItemKind, manifest_line},
    hashing::Collector,
    source::{CatalogSource, DataSource, Part, ReadyFile, SourceSpec, WalkedDir, absolute},
    sqlite::{self, SqliteCopy},
};

/// What to back up and how to label the snapshot.
pub struct BackupRequest {
    /// The sources, in any order.
    pub sources: Vec<SourceSpec>,
    /// Where a [`SourceSpec::Stream`] reads from.
    pub stream: Option<Stream>,
    /// The config job this run belongs to; becomes the snapshot label and a `job:` tag.
    pub job: Option<String>,
    /// Extra snapshot tags.
    pub tags: Vec<String>,
    /// Where database copies and spooled streams are kept while they are archived.
    pub temp_dir: PathBuf,
    /// The snapshot's time, which retention goes by; `None` for the moment the backup starts.
    pub time: Option<rustic_core::jiff::Timestamp>,
}

impl std::fmt::Debug for BackupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupRequest")
            .field("sources", &self.sources)
            .field("job", &self.job)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// The input of a stream item.
pub enum Stream {
    /// The process's standard input: spooled by the kernel (splice), never through user space.
    Stdin,
    /// Any reader.
    Reader(Box<dyn Read + Send>),
}

/// The result of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The new snapshot's id.
    pub snapshot: String,
    /// The snapshot's time (RFC 3339).
    pub time: String,
    /// Bytes read from all sources.
    pub bytes_read: u64,
    /// Bytes added to the repository (after compression and encryption overhead).
    pub bytes_added: u64,
    /// Regular files read.
    pub files: u64,
    /// Entries that could not be read and were left out.
    pub skipped: usize,
    /// The catalog stored in the snapshot.
    pub catalog: Catalog,
}

impl BackupReport {
    /// Whether some entries were left out (the command exits with 3).
    pub fn is_partial(&self) -> bool {
        self.skipped > 0
    }
}

/// Files that must outlive the archive: database copies and spooled streams.
#[derive(Default)]
struct Scratch {
    copies: Vec<SqliteCopy>,
    spools: Vec<tempfile::TempDir>,
}

/// Backs up `request` into `repo` as one snapshot.
pub fn backup(repo: &Repo, mut request: BackupRequest) -> Result<BackupReport> {
    let specs = ordered(&request.sources)?;
    let collector = Collector::default();
    let mut scratch = Scratch::default();
    let mut items = Vec::with_capacity(specs.len());
    let mut parts = Vec::with_capacity(specs.len());
    for (index, (spec, name)) in specs.iter().enumerate() {
        let (item, part) = prepare(index, spec, name, &mut request, &mut scratch)?;
        items.push(item);
        parts.push(part);
    }

    // Pass 1: the data items, directories with the repository's chunker and databases and
    // dumps with the small one (see `ChunkerOptions::dumps`). Snapshot files are held back;
    // only packs and index files are written.
    let hold = HoldSnapshots::new(repo);
    let snap = SnapshotFile::from_options(&snapshot_options(&request)?)
        .map_err(|err| Error::repo("preparing the snapshot", err))?;
    let paths: Vec<PathBuf> = specs.iter().map(|(spec, _)| display_path(spec)).collect();
    let (dirs, files): (Vec<Part>, Vec<Part>) =
        parts.into_iter().partition(|p| matches!(p, Part::Walk(_)));
    let plain = repo.indexed_ids()?;
    let mut passes = Vec::new();
    for (parts, chunker) in [(dirs, None), (files, Some(ChunkerOptions::dumps()))] {
        if parts.is_empty() {
            continue;
        }
        let source = DataSource {
            parts,
            collector: collector.clone(),
        };
        let pass = match chunker {
            None => plain.archive(&archive_options(), &source, snap.clone(), &paths),
            Some(chunker) => repo.indexed_ids_chunked(chunker)?.archive(
                &archive_options(),
                &source,
                snap.clone(),
                &paths,
            ),
        };
        passes.push(pass.map_err(|err| Error::repo("backing up", err))?);
    }
    drop(scratch);

    // Pass 2: the catalog, built from what pass 1 actually read.
    let catalog = build_catalog(items, &collector, request.job.clone())?;
    let bytes = serde_json::to_vec_pretty(&catalog).expect("the catalog serialises");
    let catalog_pass = plain
        .archive(&archive_options(), &CatalogSource { bytes }, snap, &paths)
        .map_err(|err| Error::repo("storing the catalog", err))?;
    passes.push(catalog_pass);
    drop(plain);

    // Join the trees (a fresh index sees the trees just written) and write the one snapshot
    // that points at them.
    let indexed = repo.indexed_ids()?;
    let mut summary = SnapshotSummary::default();
    for pass in &passes {
        add_summary(&mut summary, pass.summary.as_ref());
    }
    if let (Some(Some(first)), Some(Some(last))) = (
        passes.first().map(|p| p.summary.as_ref()),
        passes.last().map(|p| p.summary.as_ref()),
    ) {
        summary.backup_start = first.backup_start.clone();
        summary.command = first.command.clone();
        summary.backup_end = last.backup_end.clone();
    }
    let trees: Vec<_> = passes.iter().map(|pass| pass.tree).collect();
    let mut merged = SnapshotSummary::default();
    let tree = indexed
        .merge_trees(&trees, &|_, _| Ordering::Equal, &mut merged)
        .map_err(|err| Error::repo("joining the snapshot tree", err))?;
    add_tree_blobs(&mut summary, &merged);
    let mut final_snap = passes.swap_remove(0);
    final_snap.tree = tree;
    final_snap.summary = Some(summary.clone());
    let time = final_snap.time.timestamp().to_string();
    drop(hold);
    indexed
        .save_snapshots(vec![final_snap])
        .map_err(|err| Error::repo("saving the snapshot", err))?;
    let snapshot = repo
        .backend
        .last_snapshot()
        .map(|id| id.to_hex().to_string())
        .unwrap_or_default();

    let skipped = catalog.skipped();
    Ok(BackupReport {
        snapshot,
        time,
        bytes_read: catalog.items.iter().map(|i| i.size).sum(),
        bytes_added: summary.data_added_packed,
        files: catalog.items.iter().map(|i| i.files).sum(),
        skipped,
        catalog,
    })
}

/// Releases the snapshot hold even when a pass fails.
struct HoldSnapshots<'a>(&'a Repo);

impl<'a> HoldSnapshots<'a> {
    fn new(repo: &'a Repo) -> Self {
        repo.backend.hold_snapshots(true);
        Self(repo)
    }
}

impl Drop for HoldSnapshots<'_> {
    fn drop(&mut self) {
        self.0.backend.hold_snapshots(false);
    }
}

/// Names every source and sorts them into snapshot order; refuses two items with one path.
fn ordered(sources: &[SourceSpec]) -> Result<Vec<(SourceSpec, String)>> {
    if sources.is_empty() {
        return Err(Error::BadSource {
            path: PathBuf::new(),
            reason: "nothing to back up: pass --sqlite FILE, --dir DIR or --stdin --name NAME, \
                     or define [[jobs]] in the config file"
                .into(),
        });
    }
    let mut named = sources
        .iter()
        .map(|spec| Ok((spec.clone(), spec.name()?)))
        .collect::<Result<Vec<_>>>()?;
    named.sort_by(|a, b| (a.0.kind().folder(), &a.1).cmp(&(b.0.kind().folder(), &b.1)));
    for pair in named.windows(2) {
        if pair[0].0.kind().folder() == pair[1].0.kind().folder() && pair[0].1 == pair[1].1 {
            return Err(Error::DuplicateItem {
                name: format!("{}/{}", pair[0].0.kind().folder(), pair[0].1),
            });
        }
    }
    if named
        .iter()
        .filter(|(s, _)| s.kind() == ItemKind::Stream)
        .count()
        > 1
    {
        return Err(Error::BadSource {
            path: PathBuf::from("stdin"),
            reason: "only one stream can be read from standard input per backup".into(),
        });
    }
    Ok(named)
}

/// Copies, spools or opens one source and describes its catalog item.
fn prepare(
    index: usize,
    spec: &SourceSpec,
    name: &str,
    request: &mut BackupRequest,
    scratch: &mut Scratch,
) -> Result<(CatalogItem, Part)> {
    let kind = spec.kind();
    let snapshot_path = Path::new(kind.folder()).join(name);
    let mut item = CatalogItem {
        name: name.to_string(),
        kind,
        source: display_path(spec).to_string_lossy().into_owned(),
        path: snapshot_path.to_string_lossy().into_owned(),
        size: 0,
        sha256: String::new(),
        files: 0,
        tables: None,
        sqlite_version: None,
        skipped: Vec::new(),
    };
    let part = match spec {
        SourceSpec::Sqlite { path, .. } => {
            let copy = sqlite::copy_online(path, name, &request.temp_dir)?;
            item.tables = Some(copy.tables.clone());
            item.sqlite_version = Some(copy.sqlite_version.clone());
            let mtime = std::fs::metadata(path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| rustic_core::jiff::Timestamp::try_from(t).ok());
            let ready = ready_file(index, snapshot_path, copy.path(), mtime)?;
            scratch.copies.push(copy);
            Part::Ready(ready)
        }
        SourceSpec::Stream { .. } => {
            let input = request.stream.take().ok_or_else(|| Error::BadSource {
                path: PathBuf::from("stdin"),
                reason: "no input stream was given".into(),
            })?;
            let (dir, file) = spool(input, name, &request.temp_dir)?;
            let now = Some(rustic_core::jiff::Timestamp::now());
            let ready = ready_file(index, snapshot_path, &file, now)?;
            scratch.spools.push(dir);
            Part::Ready(ready)
        }
        SourceSpec::Directory { path, exclude, .. } => {
            let root = directory_root(path)?;
            Part::Walk(Box::new(WalkedDir::new(index, name, root, exclude)?))
        }
    };
    Ok((item, part))
}

fn ready_file(
    item: usize,
    snapshot_path: PathBuf,
    file: &Path,
    mtime: Option<rustic_core::jiff::Timestamp>,
) -> Result<ReadyFile> {
    let size = std::fs::metadata(file)
        .map_err(|err| Error::io(file, err))?
        .len();
    Ok(ReadyFile {
        item,
        snapshot_path,
        file: file.to_path_buf(),
        size,
        mtime,
    })
}

/// The directory to walk: it must exist and be a directory (a symlink to one is followed).
fn directory_root(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|err| Error::BadSource {
        path: path.into(),
        reason: format!("cannot read it: {err}"),
    })?;
    if !meta.is_dir() {
        return Err(Error::BadSource {
            path: path.into(),
            reason: "not a directory; pass a directory to --dir (a database file goes to --sqlite)"
                .into(),
        });
    }
    std::fs::canonicalize(path).map_err(|err| Error::io(path, err))
}

/// Writes a stream to a private temporary file, so that its size is known before it is
/// archived: restic's tree format records each file's size up front, and restic restores a file
/// recorded with size 0 as empty.
fn spool(input: Stream, name: &str, temp_root: &Path) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = crate::sqlite::private_tempdir("palisade-stream-", temp_root)?;
    let file = dir.path().join(name);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|err| Error::io(&file, err))?;
    // std::io::copy between a pipe and a file lets the kernel move the bytes (splice).
    let copied = match input {
        Stream::Stdin => std::io::copy(&mut std::io::stdin().lock(), &mut out),
        Stream::Reader(mut reader) => std::io::copy(&mut reader, &mut out),
    };
    copied.map_err(|err| Error::Read {
        what: "standard input".into(),
        source: err,
    })?;
    Ok((dir, file))
}

/// The source path recorded in the snapshot: resolved (no `..`, no links) when it exists.
fn display_path(spec: &SourceSpec) -> PathBuf {
    match spec {
        SourceSpec::Sqlite { path, .. } | SourceSpec::Directory { path, .. } => {
            std::fs::canonicalize(path)
                .or_else(|_| absolute(path))
                .unwrap_or_else(|_| path.clone())
        }
        SourceSpec::Stream { .. } => PathBuf::from("stdin"),
    }
}

fn snapshot_options(request: &BackupRequest) -> Result<SnapshotOptions> {
    let mut options = SnapshotOptions::default();
    if let Some(time) = request.time {
        options = options.time(time.to_zoned(rustic_core::jiff::tz::TimeZone::UTC));
    }
    if let Some(job) = &request.job {
        options = options.label(job.clone());
        options = add_tag(options, &format!("job:{job}"))?;
    }
    for tag in &request.tags {
        options = add_tag(options, tag)?;
    }
    Ok(options)
}

fn add_tag(options: SnapshotOptions, tag: &str) -> Result<SnapshotOptions> {
    options.add_tags(tag).map_err(|err| Error::BadItemName {
        name: tag.into(),
        reason: format!("not a valid tag: {}", err.display_log()),
    })
}

/// No parent: every source is read in full, so the catalog hashes what was really read and a
/// stream is never taken for unchanged. Unchanged data still deduplicates against the index.
/// rustic_core sizes the source up front (for the progress bar's total) only when a bar shows.
fn archive_options() -> BackupOptions {
    BackupOptions::default()
        .parent_opts(ParentOptions::default().force(true))
        .no_scan(false)
}

/// Fills sizes and hashes into the catalog items from what the readers recorded.
fn build_catalog(
    mut items: Vec<CatalogItem>,
    collector: &Collector,
    job: Option<String>,
) -> Result<Catalog> {
    let (digests, skipped) = collector.take();
    let mut manifests: Vec<Sha256> = items.iter().map(|_| Sha256::new()).collect();
    for digest in &digests {
        let item = &mut items[digest.item];
        item.size += digest.size;
        item.files += 1;
        match item.kind {
            ItemKind::Directory => manifests[digest.item].update(manifest_line(
                &digest.relative,
                digest.size,
                &digest.sha256,
            )),
            ItemKind::Sqlite | ItemKind::Stream => item.sha256 = digest.sha256.clone(),
        }
    }
    for (index, skip) in skipped {
        items[index].skipped.push(skip);
    }
    for (item, manifest) in items.iter_mut().zip(manifests) {
        if item.kind == ItemKind::Directory {
            item.sha256 = hex::encode(manifest.finalize());
        } else if item.files != 1 {
            let reason = item
                .skipped
                .first()
                .map_or("it was not read".to_string(), |s| s.reason.clone());
            return Err(Error::Read {
                what: item.source.clone(),
                source: std::io::Error::other(reason),
            });
        }
    }
    Ok(Catalog {
        version: CATALOG_VERSION,
        palisade: env!("CARGO_PKG_VERSION").to_string(),
        job,
        items,
    })
}

/// Adds one pass's counts to the total.
fn add_summary(total: &mut SnapshotSummary, other: Option<&SnapshotSummary>) {
    let Some(other) = other else { return };
    total.backup_duration += other.backup_duration;
    total.total_duration += other.total_duration;
    total.files_new += other.files_new;
    total.total_dirs_processed += other.total_dirs_processed;
    total.total_dirsize_processed += other.total_dirsize_processed;
    total.dirs_new += other.dirs_new;
    total.total_files_processed += other.total_files_processed;
    total.total_bytes_processed += other.total_bytes_processed;
    add_tree_blobs(total, other);
    total.data_blobs += other.data_blobs;
    total.data_added_files += other.data_added_files;
    total.data_added_files_packed += other.data_added_files_packed;
}

/// Adds what a pass wrote; the merge pass writes only trees (its file counts repeat pass 1's).
fn add_tree_blobs(total: &mut SnapshotSummary, other: &SnapshotSummary) {
    total.tree_blobs += other.tree_blobs;
    total.data_added += other.data_added;
    total.data_added_packed += other.data_added_packed;
    total.data_added_trees += other.data_added_trees;
    total.data_added_trees_packed += other.data_added_trees_packed;
}
