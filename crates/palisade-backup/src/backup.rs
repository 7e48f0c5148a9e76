//! Running one backup: prepare the sources, archive them, then the catalog, and make the
//! snapshot visible only when both are stored.

use std::{
    cmp::Ordering,
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    sync::Mutex,
};

use rustic_core::{
    BackupOptions, Excludes, ParentOptions, ReadSource, ReadSourceEntry, RepairSnapshotsOptions,
    RewriteOptions, RewriteTreesOptions, SnapshotOptions, TreeId,
    repofile::{Metadata, Node, NodeType, SnapshotFile, SnapshotId, SnapshotSummary},
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    ChunkerOptions, Error, Repo, Result,
    catalog::{CATALOG_VERSION, Catalog, CatalogItem, ItemKind, manifest_line},
    dump::{DumpFacts, DumpItem},
    hashing::Collector,
    mysql, postgres,
    repository::SnapshotWrites,
    source::{
        CatalogSource, DataSource, Part, ReadyFile, SourceSpec, StreamedFile, WalkedDir, absolute,
    },
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
    /// Where database copies are kept while they are archived.
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
    /// The process's standard input.
    Stdin,
    /// Any reader.
    Reader(Box<dyn Read + Send>),
    /// A reader, and what completes its catalog item once it has been read to the end (how
    /// the program that wrote it exited, what it reported).
    Finished(Box<dyn Read + Send>, FinishItem),
}

/// Completes a stream's catalog item once the stream is read, or fails the backup.
pub type FinishItem = Box<dyn FnOnce(&mut CatalogItem) -> Result<()> + Send>;

impl Stream {
    /// The bytes to read, and what to run once they are read.
    fn split(self) -> (Self, Option<FinishItem>) {
        match self {
            Self::Finished(reader, finish) => (Self::Reader(reader), Some(finish)),
            other => (other, None),
        }
    }
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

/// Files that must outlive the archive: database copies.
#[derive(Default)]
struct Scratch {
    copies: Vec<SqliteCopy>,
}

/// What completes an item's catalog entry once its bytes have been read.
#[derive(Default)]
struct Completion {
    /// What a dump's reader learnt (row counts).
    facts: Option<DumpFacts>,
    /// The caller's own completion of a stream's item.
    finish: Option<FinishItem>,
}

/// One item of a backup, named, before it is prepared.
enum Planned {
    /// A source that is one item: an SQLite database, a directory or standard input.
    Single(SourceSpec, String),
    /// One dump of a database server source.
    Dump(DumpItem),
}

impl Planned {
    fn kind(&self) -> ItemKind {
        match self {
            Self::Single(spec, _) => spec.kind(),
            Self::Dump(dump) => dump.kind,
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Single(_, name) => name,
            Self::Dump(dump) => &dump.name,
        }
    }
}

/// Backs up `request` into `repo` as one snapshot.
pub fn backup(repo: &Repo, mut request: BackupRequest) -> Result<BackupReport> {
    let planned = ordered(&request.sources, &request.temp_dir)?;
    let collector = Collector::default();
    let mut scratch = Scratch::default();
    let mut items = Vec::with_capacity(planned.len());
    let mut parts = Vec::with_capacity(planned.len());
    let mut completions = Vec::with_capacity(planned.len());
    let paths: Vec<PathBuf> = planned.iter().map(display_path).collect();
    for (index, plan) in planned.into_iter().enumerate() {
        let (item, part, completion) = prepare(index, plan, &mut request, &mut scratch)?;
        items.push(item);
        parts.push(part);
        completions.push(completion);
    }

    // Pass 1: the data items, directories with the repository's chunker and databases and
    // dumps with the small one (see `ChunkerOptions::dumps`). Snapshot files are held back;
    // only packs and index files are written.
    let hold = HoldSnapshots::new(repo);
    let snap = SnapshotFile::from_options(&snapshot_options(&request)?)
        .map_err(|err| Error::repo("preparing the snapshot", err))?;
    let (dirs, files): (Vec<Part>, Vec<Part>) =
        parts.into_iter().partition(|p| matches!(p, Part::Walk(_)));
    let plain = repo.indexed_ids()?;
    let mut passes = Vec::new();
    for (parts, chunker) in [(dirs, None), (files, Some(ChunkerOptions::dumps()))] {
        if parts.is_empty() {
            continue;
        }
        let mut stream_folders: Vec<PathBuf> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Stream(stream) => stream.snapshot_path.parent().map(Path::to_path_buf),
                _ => None,
            })
            .collect();
        stream_folders.dedup();
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
        let mut pass = pass.map_err(|err| Error::repo("backing up", err))?;
        if !stream_folders.is_empty() {
            pass.tree = correct_stream_sizes(repo, &pass, &stream_folders, &paths)?;
        }
        passes.push(pass);
    }
    drop(scratch);

    // Pass 2: the catalog, built from what pass 1 actually read.
    let catalog = build_catalog(items, completions, &collector, request.job.clone())?;
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
        repo.backend.snapshot_writes(SnapshotWrites::Discard);
        Self(repo)
    }
}

impl Drop for HoldSnapshots<'_> {
    fn drop(&mut self) {
        self.0.backend.snapshot_writes(SnapshotWrites::Store);
    }
}

/// The name of the marker file that makes rustic_core save size corrections (see below).
const MARKER: &str = ".palisade-size-marker";

/// The tree of `pass` with every streamed file's size taken from its stored chunks.
///
/// A stream's node is made before the stream is read, so it records size 0, which restic would
/// restore as an empty file. rustic_core's snapshot repair recomputes each file's size from the
/// index, but saves a tree only when it also found something missing in it. So each folder
/// that holds streams gets a marker file, archived on its own with unique content, whose index
/// files are then hidden from the repair: the marker is "missing", its folder's tree is saved
/// with every size corrected, and a rewrite drops the marker again. Snapshots these steps save
/// are discarded (the backup holds them back); only the trees are kept. `docs/design.md`
/// explains why no simpler way exists with rustic_core 0.13.
fn correct_stream_sizes(
    repo: &Repo,
    pass: &SnapshotFile,
    folders: &[PathBuf],
    paths: &[PathBuf],
) -> Result<TreeId> {
    let context = "recording the sizes of streams";
    let marker = MarkerSource {
        folders: folders.to_vec(),
        bytes: rand_bytes(),
    };
    repo.backend.record_index(true);
    let marked = repo.indexed_ids().and_then(|handle| {
        handle
            .archive(&archive_options(), &marker, pass.clone(), paths)
            .map_err(|err| Error::repo(context, err))
    });
    let marker_index = repo.backend.record_index(false);
    let marked = marked?;
    let mut summary = SnapshotSummary::default();
    let merged = repo
        .indexed_ids()?
        .merge_trees(
            &[pass.tree, marked.tree],
            &|_, _| Ordering::Equal,
            &mut summary,
        )
        .map_err(|err| Error::repo(context, err))?;
    let mut draft = pass.clone();
    draft.tree = merged;

    let quiet = QuietLogs::new();
    repo.backend.hide_index(marker_index);
    let full = repo.reopen()?.to_indexed();
    repo.backend.hide_index(Vec::new());
    let full = full.map_err(|err| Error::repo("reading the repository index", err))?;
    repo.backend
        .snapshot_writes(SnapshotWrites::Capture(HashMap::new()));
    let repaired = full
        .repair_snapshots(
            &RepairSnapshotsOptions::default().delete(false).tag(vec![]),
            vec![draft],
            false,
        )
        .map_err(|err| Error::repo(context, err))
        .and_then(|()| match repo.backend.captured_snapshots().as_slice() {
            [id] => full
                .get_file::<SnapshotFile>(&SnapshotId::from(*id))
                .map_err(|err| Error::repo(context, err)),
            other => Err(Error::Repository {
                context: context.into(),
                message: format!("the repair saved {} snapshots instead of one", other.len()),
            }),
        });
    repo.backend.snapshot_writes(SnapshotWrites::Discard);
    let mut repaired = repaired?;
    repaired.original = None;
    drop(full);

    let excludes = Excludes::default().globs(vec![format!("!{MARKER}*")]);
    let rewritten = repo
        .reopen()?
        .to_indexed()
        .map_err(|err| Error::repo("reading the repository index", err))?
        .rewrite_snapshots_and_trees(
            vec![repaired],
            &RewriteOptions::default(),
            &RewriteTreesOptions::default().excludes(excludes),
        )
        .map_err(|err| Error::repo(context, err))?;
    drop(quiet);
    rewritten
        .first()
        .map(|snap| snap.tree)
        .ok_or_else(|| Error::Repository {
            context: context.into(),
            message: "the rewrite returned no snapshot".into(),
        })
}

fn rand_bytes() -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// One marker file per folder, with the same unique content.
struct MarkerSource {
    folders: Vec<PathBuf>,
    bytes: Vec<u8>,
}

impl ReadSource for MarkerSource {
    type Open = std::io::Cursor<Vec<u8>>;
    type Iter = std::vec::IntoIter<rustic_core::RusticResult<ReadSourceEntry<Self::Open>>>;

    fn size(&self) -> rustic_core::RusticResult<Option<u64>> {
        Ok(Some((self.bytes.len() * self.folders.len()) as u64))
    }

    fn entries(&self) -> Self::Iter {
        let mut entries = Vec::new();
        for folder in &self.folders {
            let meta = Metadata {
                mode: Some(0o755),
                mtime: Some(rustic_core::jiff::Timestamp::now()),
                ..Metadata::default()
            };
            entries.push(Ok(ReadSourceEntry {
                path: folder.clone(),
                node: Node::new_node(folder.as_os_str(), NodeType::Dir, meta),
                open: None,
            }));
            let meta = Metadata {
                mode: Some(0o600),
                size: self.bytes.len() as u64,
                ..Metadata::default()
            };
            entries.push(Ok(ReadSourceEntry {
                path: folder.join(MARKER),
                node: Node::new_node(std::ffi::OsStr::new(MARKER), NodeType::File, meta),
                open: Some(std::io::Cursor::new(self.bytes.clone())),
            }));
        }
        entries.into_iter()
    }
}

/// Lowers the log level while rustic_core repairs and rewrites: its warnings about the marker
/// being "missing" are expected and would only alarm people.
struct QuietLogs(log::LevelFilter);

impl QuietLogs {
    fn new() -> Self {
        let level = log::max_level();
        log::set_max_level(log::LevelFilter::Error.min(level));
        Self(level)
    }
}

impl Drop for QuietLogs {
    fn drop(&mut self) {
        log::set_max_level(self.0);
    }
}

/// Names every source, expands database servers into one item per dump, and sorts the items
/// into snapshot order; refuses two items with one path.
fn ordered(sources: &[SourceSpec], temp_root: &Path) -> Result<Vec<Planned>> {
    if sources.is_empty() {
        return Err(Error::BadSource {
            path: PathBuf::new(),
            reason: "nothing to back up: pass --sqlite FILE, --dir DIR, --postgres URL, --mysql \
                     URL or --stdin --name NAME, or define [[jobs]] in the config file"
                .into(),
        });
    }
    let mut planned = Vec::new();
    for spec in sources {
        match spec {
            SourceSpec::Postgres(source) => {
                planned.extend(postgres::plan(source)?.into_iter().map(Planned::Dump));
            }
            SourceSpec::Mysql(source) => {
                planned.extend(
                    mysql::plan(source, temp_root)?
                        .into_iter()
                        .map(Planned::Dump),
                );
            }
            _ => planned.push(Planned::Single(spec.clone(), spec.name()?)),
        }
    }
    planned.sort_by(|a, b| (a.kind().folder(), a.name()).cmp(&(b.kind().folder(), b.name())));
    for pair in planned.windows(2) {
        if pair[0].kind().folder() == pair[1].kind().folder() && pair[0].name() == pair[1].name() {
            return Err(Error::DuplicateItem {
                name: format!("{}/{}", pair[0].kind().folder(), pair[0].name()),
            });
        }
    }
    if planned
        .iter()
        .filter(|p| matches!(p, Planned::Single(SourceSpec::Stream { .. }, _)))
        .count()
        > 1
    {
        return Err(Error::BadSource {
            path: PathBuf::from("stdin"),
            reason: "only one stream can be read from standard input per backup".into(),
        });
    }
    Ok(planned)
}

/// Copies or opens one source and describes its catalog item.
fn prepare(
    index: usize,
    plan: Planned,
    request: &mut BackupRequest,
    scratch: &mut Scratch,
) -> Result<(CatalogItem, Part, Completion)> {
    let kind = plan.kind();
    let snapshot_path = Path::new(kind.folder()).join(plan.name());
    let mut item = CatalogItem {
        name: plan.name().to_string(),
        kind,
        source: display_path(&plan).to_string_lossy().into_owned(),
        path: snapshot_path.to_string_lossy().into_owned(),
        size: 0,
        sha256: String::new(),
        files: 0,
        tables: None,
        sqlite_version: None,
        database: None,
        server_version: None,
        dumped_by: None,
        skipped: Vec::new(),
        pg_base_backup: None,
    };
    let spec = match plan {
        Planned::Dump(dump) => {
            item.database.clone_from(&dump.facts.database);
            item.server_version.clone_from(&dump.facts.server_version);
            item.dumped_by.clone_from(&dump.facts.dumped_by);
            let part = Part::Stream(StreamedFile {
                item: index,
                snapshot_path,
                start: Mutex::new(Some(dump.start)),
            });
            let completion = Completion {
                facts: Some(dump.facts),
                finish: None,
            };
            return Ok((item, part, completion));
        }
        Planned::Single(spec, _) => spec,
    };
    let mut completion = Completion::default();
    let part = match &spec {
        SourceSpec::Sqlite { path, .. } => {
            let copy = sqlite::copy_online(path, &item.name, &request.temp_dir)?;
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
            let (input, finish) = input.split();
            completion.finish = finish;
            let start: crate::dump::Start = Box::new(move || {
                Ok(match input {
                    Stream::Stdin => Box::new(std::io::BufReader::with_capacity(
                        crate::dump::PIPE_BUFFER,
                        std::io::stdin(),
                    )) as Box<dyn Read + Send>,
                    Stream::Reader(reader) => Box::new(std::io::BufReader::with_capacity(
                        crate::dump::PIPE_BUFFER,
                        reader,
                    )),
                    Stream::Finished(..) => unreachable!("split above"),
                })
            });
            Part::Stream(StreamedFile {
                item: index,
                snapshot_path,
                start: Mutex::new(Some(start)),
            })
        }
        SourceSpec::Directory { path, exclude, .. } => {
            let root = directory_root(path)?;
            Part::Walk(Box::new(WalkedDir::new(index, &item.name, root, exclude)?))
        }
        SourceSpec::Postgres(_) | SourceSpec::Mysql(_) => {
            unreachable!("database servers are expanded into dumps by `ordered`")
        }
    };
    Ok((item, part, completion))
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

/// The source path recorded in the snapshot: resolved (no `..`, no links) when it exists.
fn display_path(plan: &Planned) -> PathBuf {
    match plan {
        Planned::Single(
            SourceSpec::Sqlite { path, .. } | SourceSpec::Directory { path, .. },
            _,
        ) => std::fs::canonicalize(path)
            .or_else(|_| absolute(path))
            .unwrap_or_else(|_| path.clone()),
        Planned::Dump(dump) => PathBuf::from(&dump.source),
        Planned::Single(_, _) => PathBuf::from("stdin"),
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
    completions: Vec<Completion>,
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
            _ => item.sha256 = digest.sha256.clone(),
        }
    }
    for (index, skip) in skipped {
        items[index].skipped.push(skip);
    }
    for (item, completion) in items.iter_mut().zip(completions) {
        if let Some(facts) = completion.facts {
            item.tables = facts
                .tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
        }
        // Only a stream read to its end is completed; a failed read fails below.
        if let (Some(finish), 1) = (completion.finish, item.files) {
            finish(item)?;
        }
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
