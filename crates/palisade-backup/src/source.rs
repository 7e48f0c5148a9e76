//! Backup sources, and the one `ReadSource` that lays them all out in a single snapshot tree.
//!
//! A snapshot holds `databases/NAME` (SQLite copies), `dumps/NAME` (streams), `files/NAME/...`
//! (directories) and `palisade/catalog.json`. Entries must reach the archiver in path order, so
//! items are sorted by folder, then by name.

use std::{
    ffi::OsStr,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::Mutex,
};

use rustic_core::{
    Excludes, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource,
    ReadSourceEntry, ReadSourceOpen, RusticResult,
    repofile::{Metadata, Node, NodeType},
};

use crate::{
    Error, Result,
    catalog::ItemKind,
    dump::Start,
    hashing::{Collector, HashingReader},
};

/// A source the user asked to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// An SQLite database file, copied online.
    Sqlite { path: PathBuf, name: Option<String> },
    /// A directory tree, with glob patterns to leave out.
    Directory {
        path: PathBuf,
        name: Option<String>,
        exclude: Vec<String>,
    },
    /// Standard input, stored under `name`.
    Stream { name: String },
    /// Databases of a PostgreSQL server, each dumped while the archive reads it.
    Postgres(crate::postgres::PostgresSource),
    /// Databases of a MariaDB or MySQL server, each dumped while the archive reads it.
    Mysql(crate::mysql::MysqlSource),
}

impl SourceSpec {
    /// The kind of item this source becomes.
    pub fn kind(&self) -> ItemKind {
        match self {
            Self::Sqlite { .. } => ItemKind::Sqlite,
            Self::Directory { .. } => ItemKind::Directory,
            Self::Stream { .. } => ItemKind::Stream,
            Self::Postgres(_) => ItemKind::Postgres,
            Self::Mysql(_) => ItemKind::Mysql,
        }
    }

    /// The item's name: given, or the last component of the source path.
    pub fn name(&self) -> Result<String> {
        let (path, name) = match self {
            Self::Sqlite { path, name } | Self::Directory { path, name, .. } => (path, name),
            Self::Stream { name } => return validate_name(name),
            Self::Postgres(_) | Self::Mysql(_) => {
                return Err(Error::BadItemName {
                    name: String::new(),
                    reason: "a database server is stored as one item per database".into(),
                });
            }
        };
        if let Some(name) = name {
            return validate_name(name);
        }
        let base = absolute(path)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::BadItemName {
                name: path.display().to_string(),
                reason: "the path has no last component to name the item after; give it a name"
                    .into(),
            })?;
        validate_name(&base)
    }
}

/// An item name must be one plain path component.
pub(crate) fn validate_name(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::BadItemName {
        name: name.into(),
        reason: reason.into(),
    };
    match name {
        "" => Err(bad("it is empty")),
        "." | ".." => Err(bad("it is a relative path component")),
        _ if name.contains('/') => Err(bad("it contains `/`; use a plain name")),
        _ if name.chars().any(char::is_control) => Err(bad(
            "it contains a control character (a newline, say); give the item a plain name",
        )),
        _ => Ok(name.to_string()),
    }
}

/// The absolute form of `path`, without resolving symlinks.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|err| Error::io(path, err))
}

/// A file whose bytes are known before the archive starts (an SQLite copy).
#[derive(Debug)]
pub(crate) struct ReadyFile {
    pub(crate) item: usize,
    pub(crate) snapshot_path: PathBuf,
    pub(crate) file: PathBuf,
    pub(crate) size: u64,
    pub(crate) mtime: Option<rustic_core::jiff::Timestamp>,
}

/// A directory to walk during the archive.
pub(crate) struct WalkedDir {
    pub(crate) item: usize,
    pub(crate) snapshot_path: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) source: LocalSource,
}

impl WalkedDir {
    pub(crate) fn new(item: usize, name: &str, root: PathBuf, exclude: &[String]) -> Result<Self> {
        let excludes = Excludes::default().globs(
            exclude
                .iter()
                .map(|glob| format!("!{glob}"))
                .collect::<Vec<_>>(),
        );
        let source = LocalSource::new(
            LocalSourceSaveOptions::default(),
            &excludes,
            &LocalSourceFilterOptions::default(),
            &[&root],
        )
        .map_err(|err| Error::BadSource {
            path: root.clone(),
            reason: format!("cannot walk it: {}", err.display_log()),
        })?;
        Ok(Self {
            item,
            snapshot_path: Path::new(ItemKind::Directory.folder()).join(name),
            root,
            source,
        })
    }
}

/// A stream read once, while the archive runs, with no copy of it on disk.
///
/// Its size is not known when the archiver needs the file's node, so the node first records 0;
/// the backup corrects it from the stored chunks before the snapshot is written.
pub(crate) struct StreamedFile {
    pub(crate) item: usize,
    pub(crate) snapshot_path: PathBuf,
    pub(crate) start: Mutex<Option<Start>>,
}

/// One part of the snapshot tree, in the order it is archived.
pub(crate) enum Part {
    Ready(ReadyFile),
    Stream(StreamedFile),
    Walk(Box<WalkedDir>),
}

/// Where an entry's bytes come from.
enum Opener {
    File(PathBuf),
    Stream(Option<Start>),
}

/// How the archiver opens an entry: through a hashing reader that reports to the collector.
pub(crate) struct TrackedOpen {
    opener: Opener,
    item: usize,
    relative: PathBuf,
    collector: Collector,
}

impl ReadSourceOpen for TrackedOpen {
    type Reader = HashingReader<Box<dyn Read + Send>>;

    fn open(self) -> RusticResult<Self::Reader> {
        let (opened, shown) = match self.opener {
            Opener::File(path) => (
                File::open(&path).map(|file| Box::new(file) as Box<dyn Read + Send>),
                path.display().to_string(),
            ),
            Opener::Stream(start) => (
                start.map_or_else(
                    || Err(std::io::Error::other("the stream was already read")),
                    |start| start(),
                ),
                self.relative.display().to_string(),
            ),
        };
        match opened {
            Ok(reader) => Ok(HashingReader::new(
                reader,
                self.item,
                self.relative,
                self.collector,
            )),
            Err(err) => {
                let relative = self.relative.to_string_lossy().into_owned();
                self.collector
                    .skip(self.item, relative, format!("cannot open: {err}"));
                Err(rustic_core::RusticError::with_source(
                    rustic_core::ErrorKind::InputOutput,
                    "Failed to open `{path}`.",
                    err,
                )
                .attach_context("path", shown))
            }
        }
    }
}

/// The data items of one backup as a single `ReadSource`.
pub(crate) struct DataSource {
    pub(crate) parts: Vec<Part>,
    pub(crate) collector: Collector,
}

type Entry = RusticResult<ReadSourceEntry<TrackedOpen>>;

impl ReadSource for DataSource {
    type Open = TrackedOpen;
    type Iter = Box<dyn Iterator<Item = Entry> + Send>;

    fn size(&self) -> RusticResult<Option<u64>> {
        // A stream's length is known only at its end: the progress then counts bytes without
        // a total.
        let mut total = 0;
        for part in &self.parts {
            total += match part {
                Part::Ready(file) => file.size,
                Part::Stream(_) => return Ok(None),
                Part::Walk(dir) => dir.source.size()?.unwrap_or_default(),
            };
        }
        Ok(Some(total))
    }

    fn entries(&self) -> Self::Iter {
        let mut iter: Self::Iter = Box::new(std::iter::empty());
        let mut folder: Option<&OsStr> = None;
        for part in &self.parts {
            let path = part.snapshot_path();
            let top = path.iter().next();
            if top != folder {
                folder = top;
                let top = Path::new(top.unwrap_or_default());
                iter = Box::new(iter.chain(std::iter::once(Ok(dir_entry(top, None)))));
            }
            let next: Self::Iter = match part {
                Part::Ready(file) => Box::new(std::iter::once(Ok(self.ready_entry(file)))),
                Part::Stream(stream) => Box::new(std::iter::once(Ok(self.stream_entry(stream)))),
                Part::Walk(dir) => {
                    let root = std::fs::metadata(&dir.root).ok();
                    let root = std::iter::once(Ok(dir_entry(&dir.snapshot_path, root)));
                    Box::new(root.chain(self.walk_entries(dir)))
                }
            };
            iter = Box::new(iter.chain(next));
        }
        iter
    }
}

impl Part {
    fn snapshot_path(&self) -> &Path {
        match self {
            Self::Ready(file) => &file.snapshot_path,
            Self::Stream(stream) => &stream.snapshot_path,
            Self::Walk(dir) => &dir.snapshot_path,
        }
    }
}

/// A directory node for a folder Palisade lays out, with the source's permissions and mtime
/// when it mirrors a real directory, else mode 0755 and the current time.
fn dir_entry(path: &Path, source: Option<std::fs::Metadata>) -> ReadSourceEntry<TrackedOpen> {
    use std::os::unix::fs::PermissionsExt;
    let (mode, mtime) = match source {
        Some(meta) => (
            meta.permissions().mode() & 0o7777,
            meta.modified()
                .ok()
                .and_then(|t| rustic_core::jiff::Timestamp::try_from(t).ok()),
        ),
        None => (0o755, Some(rustic_core::jiff::Timestamp::now())),
    };
    let meta = Metadata {
        mode: Some(mode),
        mtime,
        ..Metadata::default()
    };
    let name = path.file_name().unwrap_or_default();
    ReadSourceEntry {
        path: path.to_path_buf(),
        node: Node::new_node(name, NodeType::Dir, meta),
        open: None,
    }
}

impl DataSource {
    fn ready_entry(&self, file: &ReadyFile) -> ReadSourceEntry<TrackedOpen> {
        let name = file.snapshot_path.file_name().unwrap_or(OsStr::new("item"));
        let meta = Metadata {
            mode: Some(0o600),
            mtime: file.mtime,
            size: file.size,
            ..Metadata::default()
        };
        ReadSourceEntry {
            path: file.snapshot_path.clone(),
            node: Node::new_node(name, NodeType::File, meta),
            open: Some(TrackedOpen {
                opener: Opener::File(file.file.clone()),
                item: file.item,
                relative: PathBuf::new(),
                collector: self.collector.clone(),
            }),
        }
    }

    fn stream_entry(&self, stream: &StreamedFile) -> ReadSourceEntry<TrackedOpen> {
        let name = stream
            .snapshot_path
            .file_name()
            .unwrap_or(OsStr::new("item"));
        let meta = Metadata {
            mode: Some(0o600),
            mtime: Some(rustic_core::jiff::Timestamp::now()),
            size: 0,
            ..Metadata::default()
        };
        let start = stream
            .start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        ReadSourceEntry {
            path: stream.snapshot_path.clone(),
            node: Node::new_node(name, NodeType::File, meta),
            open: Some(TrackedOpen {
                opener: Opener::Stream(start),
                item: stream.item,
                relative: PathBuf::new(),
                collector: self.collector.clone(),
            }),
        }
    }

    fn walk_entries(&self, dir: &WalkedDir) -> impl Iterator<Item = Entry> + Send + use<> {
        let collector = self.collector.clone();
        let item = dir.item;
        let root = dir.root.clone();
        let target = dir.snapshot_path.clone();
        dir.source.entries().map(move |entry| {
            let entry = entry.inspect_err(|err| {
                collector.skip(
                    item,
                    String::new(),
                    format!("walk failed: {}", err.display_log()),
                );
            })?;
            let relative = entry
                .path
                .strip_prefix(&root)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| entry.path.clone());
            let open = entry.open.map(|_| TrackedOpen {
                opener: Opener::File(entry.path.clone()),
                item,
                relative: relative.clone(),
                collector: collector.clone(),
            });
            Ok(ReadSourceEntry {
                path: target.join(&relative),
                node: entry.node,
                open,
            })
        })
    }
}

/// The catalog as a one-entry source, archived after the data items.
pub(crate) struct CatalogSource {
    pub(crate) bytes: Vec<u8>,
}

impl ReadSource for CatalogSource {
    type Open = std::io::Cursor<Vec<u8>>;
    type Iter = Box<dyn Iterator<Item = RusticResult<ReadSourceEntry<Self::Open>>> + Send>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(Some(self.bytes.len() as u64))
    }

    fn entries(&self) -> Self::Iter {
        let path = PathBuf::from(crate::catalog::CATALOG_PATH);
        let meta = Metadata {
            mode: Some(0o644),
            mtime: Some(rustic_core::jiff::Timestamp::now()),
            size: self.bytes.len() as u64,
            ..Metadata::default()
        };
        let name = path.file_name().expect("catalog path has a file name");
        let node = Node::new_node(name, NodeType::File, meta);
        let folder = dir_entry(path.parent().expect("catalog path has a folder"), None);
        let folder = ReadSourceEntry {
            path: folder.path,
            node: folder.node,
            open: None,
        };
        let file = ReadSourceEntry {
            path,
            node,
            open: Some(std::io::Cursor::new(self.bytes.clone())),
        };
        Box::new([Ok(folder), Ok(file)].into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_one_plain_component() {
        for bad in ["", ".", "..", "a/b", "nul\0", "new\nline"] {
            assert!(validate_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(validate_name("app.sql").unwrap(), "app.sql");
    }

    #[test]
    fn a_file_that_vanishes_after_the_walk_is_recorded_as_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stays"), "kept").unwrap();
        std::fs::write(dir.path().join("goes"), "gone").unwrap();
        let walked = WalkedDir::new(0, "site", dir.path().to_path_buf(), &[]).unwrap();
        let source = DataSource {
            parts: vec![Part::Walk(Box::new(walked))],
            collector: Collector::default(),
        };
        let entries: Vec<_> = source.entries().collect::<RusticResult<_>>().unwrap();
        std::fs::remove_file(dir.path().join("goes")).unwrap();

        let mut opened = 0;
        for entry in entries {
            let Some(open) = entry.open else { continue };
            if let Ok(mut reader) = open.open() {
                std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
                opened += 1;
            }
        }
        assert_eq!(opened, 1);
        let (digests, skipped) = source.collector.take();
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].relative, Path::new("stays"));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].1.path, "goes");
        assert!(
            skipped[0].1.reason.contains("cannot open"),
            "{:?}",
            skipped[0]
        );
    }

    #[test]
    fn names_default_to_the_last_path_component() {
        let spec = SourceSpec::Directory {
            path: "/srv/app/uploads/".into(),
            name: None,
            exclude: vec![],
        };
        assert_eq!(spec.name().unwrap(), "uploads");
        let spec = SourceSpec::Sqlite {
            path: "/".into(),
            name: None,
        };
        assert!(spec.name().is_err());
    }
}
