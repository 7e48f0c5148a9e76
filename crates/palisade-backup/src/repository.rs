//! Opening, creating and re-keying repositories, and the backend wrapper Palisade writes through.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;

use palisade_s3::{S3Backend, S3Location, S3Options};
use rustic_backend::LocalBackend;
use rustic_core::{
    BytesList, ConfigOptions, Credentials, FileType, Id, IndexedIdsStatus, KeyOptions, OpenStatus,
    Progress, ProgressBars, ProgressType, ReadBackend, Repository, RepositoryBackends,
    RepositoryOptions, RusticResult, WriteBackend, repofile::KeyFile,
};
use serde::Serialize;

use crate::{Error, Result};

/// How content is cut into chunks and compressed.
///
/// A repository stores one setting, used for directories: restic's own sizes by default (512 KiB
/// to 8 MiB, 1 MiB on average), which keep the number of chunks low. Databases and dumps are cut
/// with [`ChunkerOptions::dumps`] instead: a day's changes touch a few rows, each changed row
/// costs one whole chunk, and small chunks make the second day cheap. `docs/defaults.md` gives
/// the measurements. restic reads chunks of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerOptions {
    /// Average chunk size in bytes; a power of two.
    pub average: u64,
    /// Smallest chunk in bytes.
    pub min: u64,
    /// Largest chunk in bytes.
    pub max: u64,
    /// zstd compression level (restic's `auto` is 3).
    pub compression: i32,
}

impl Default for ChunkerOptions {
    fn default() -> Self {
        Self {
            average: 1024 * 1024,
            min: 512 * 1024,
            max: 8 * 1024 * 1024,
            compression: 3,
        }
    }
}

impl ChunkerOptions {
    /// The chunking for database copies and dump streams.
    pub fn dumps() -> Self {
        Self {
            average: 32 * 1024,
            min: 8 * 1024,
            max: 256 * 1024,
            compression: 3,
        }
    }

    fn config_options(self) -> ConfigOptions {
        ConfigOptions::default()
            .set_chunker(rustic_core::repofile::Chunker::Rabin)
            .set_chunk_size(bytesize::ByteSize(self.average))
            .set_chunk_min_size(bytesize::ByteSize(self.min))
            .set_chunk_max_size(bytesize::ByteSize(self.max))
            .set_compression(self.compression)
    }
}

/// Where a repository lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on a local file system.
    Local(PathBuf),
    /// A bucket and prefix on S3-compatible storage, with the settings to reach it.
    S3(Box<S3Repository>),
}

/// An S3 repository: where it is and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Repository {
    /// Endpoint, bucket and prefix.
    pub location: S3Location,
    /// Region, encryption, storage class, concurrency, timeouts and retries.
    pub options: S3Options,
}

impl Location {
    /// Parses a `--repo` value.
    pub fn parse(text: &str) -> Result<Self> {
        if S3Location::is_s3(text) {
            return Ok(Self::S3(Box::new(S3Repository {
                location: S3Location::parse(text)?,
                options: S3Options::default(),
            })));
        }
        let text = text.strip_prefix("local:").unwrap_or(text);
        if text.is_empty() {
            return Err(Error::BadSource {
                path: PathBuf::new(),
                reason: "the repository location is empty; pass --repo DIR".into(),
            });
        }
        Ok(Self::Local(PathBuf::from(text)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3(s3) => write!(f, "{}", s3.location),
        }
    }
}

/// A repository password, wiped from memory when dropped.
pub struct Password(String);

impl Password {
    /// Wraps a password given in the environment; refuses an empty one.
    pub fn new(text: String) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::EmptyPassword {
                origin: "the password variable".into(),
            });
        }
        Ok(Self(text))
    }

    /// Reads a password file as restic does: the whole file, without leading and trailing
    /// white space (so that restic opens every repository Palisade creates). An empty password
    /// is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::io(path, err))?;
        let trimmed = text.trim().to_string();
        let mut bytes = text.into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
        if trimmed.is_empty() {
            return Err(Error::EmptyPassword {
                origin: path.display().to_string(),
            });
        }
        Ok(Self(trimmed))
    }

    fn credentials(&self) -> Credentials {
        Credentials::password(&self.0)
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Overwrite the bytes in place before the allocation is released.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// The backend every Palisade repository is used through.
///
/// It forwards to the real backend, and can hold back the writing of snapshot files (so that a
/// backup made of several archive passes becomes visible only once, when it is complete) and of
/// the config file (so that a handle can use another chunker than the stored one).
#[derive(Debug)]
pub(crate) struct PalisadeBackend {
    inner: Arc<dyn WriteBackend>,
    /// The same backend when it is S3, for what only S3 knows (object lock).
    s3: Option<Arc<S3Backend>>,
    /// The repository's folder when it is local: files are then written whole or not at all.
    local_root: Option<PathBuf>,
    snapshots: Mutex<SnapshotWrites>,
    /// Index files written while recording (see [`PalisadeBackend::record_index`]).
    recorded_index: Mutex<Option<Vec<Id>>>,
    /// Index files that listings leave out.
    hidden_index: Mutex<Vec<Id>>,
    hold_config: AtomicBool,
    last_snapshot: Mutex<Option<Id>>,
}

/// What happens to snapshot files written through the wrapper.
#[derive(Debug, Default)]
pub(crate) enum SnapshotWrites {
    /// Written to the repository.
    #[default]
    Store,
    /// Discarded: a pass of a multi-pass backup saves a snapshot nobody must see.
    Discard,
    /// Kept in memory, invisible to listings but readable by id through this wrapper.
    Capture(HashMap<Id, Bytes>),
}

impl PalisadeBackend {
    fn new(
        inner: Arc<dyn WriteBackend>,
        s3: Option<Arc<S3Backend>>,
        local_root: Option<PathBuf>,
    ) -> Self {
        Self {
            inner,
            s3,
            local_root,
            snapshots: Mutex::new(SnapshotWrites::Store),
            recorded_index: Mutex::new(None),
            hidden_index: Mutex::new(Vec::new()),
            hold_config: AtomicBool::new(false),
            last_snapshot: Mutex::new(None),
        }
    }

    /// Writes a file to the repository. rustic_backend's local backend writes in place (it
    /// sizes the file, then fills it), so a process killed mid-write would leave an index or
    /// snapshot file of zeros that makes the whole repository unreadable; local files are
    /// therefore written to a temporary name in the same folder, synced, and renamed. (S3 puts
    /// are atomic already.)
    fn write(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let Some(root) = &self.local_root else {
            return self.inner.write_bytes(tpe, id, cacheable, content);
        };
        let hex = id.to_hex();
        let path = match tpe {
            FileType::Config => root.join("config"),
            FileType::Pack => root.join("data").join(&hex[0..2]).join(&*hex),
            _ => root.join(tpe.dirname()).join(&*hex),
        };
        let io_error = |err: std::io::Error| {
            rustic_core::RusticError::with_source(
                rustic_core::ErrorKind::InputOutput,
                "Failed to write `{path}`.",
                err,
            )
            .attach_context("path", path.display().to_string())
        };
        let folder = path.parent().unwrap_or(root);
        std::fs::create_dir_all(folder).map_err(io_error)?;
        let mut file = tempfile::Builder::new()
            .prefix(".palisade-write-")
            .tempfile_in(folder)
            .map_err(io_error)?;
        for part in content.slice() {
            std::io::Write::write_all(&mut file, part).map_err(io_error)?;
        }
        file.as_file().sync_data().map_err(io_error)?;
        file.persist(&path).map_err(|err| io_error(err.error))?;
        Ok(())
    }

    /// The S3 backend underneath, if the repository is on S3.
    pub(crate) fn s3(&self) -> Option<&S3Backend> {
        self.s3.as_deref()
    }

    /// While `hold` is true, the config file is not written: a handle can then change its
    /// in-memory settings (the chunker) without changing the repository's.
    pub(crate) fn hold_config(&self, hold: bool) {
        self.hold_config.store(hold, Ordering::SeqCst);
    }

    /// The id of the last snapshot file written through this backend.
    pub(crate) fn last_snapshot(&self) -> Option<Id> {
        *lock(&self.last_snapshot)
    }

    /// Starts (`true`) or ends (`false`) recording which index files are written; the end
    /// returns them.
    pub(crate) fn record_index(&self, on: bool) -> Vec<Id> {
        let mut recorded = lock(&self.recorded_index);
        let before = recorded.take().unwrap_or_default();
        if on {
            *recorded = Some(Vec::new());
        }
        before
    }

    /// Makes listings of index files leave `ids` out (an empty list shows all again).
    pub(crate) fn hide_index(&self, ids: Vec<Id>) {
        *lock(&self.hidden_index) = ids;
    }

    /// The ids of the snapshot files captured since [`SnapshotWrites::Capture`] was set.
    pub(crate) fn captured_snapshots(&self) -> Vec<Id> {
        match &*lock(&self.snapshots) {
            SnapshotWrites::Capture(captured) => captured.keys().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// Sets what happens to snapshot files from now on; returns what was captured before.
    pub(crate) fn snapshot_writes(&self, mode: SnapshotWrites) -> SnapshotWrites {
        std::mem::replace(&mut *lock(&self.snapshots), mode)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked; the value stays usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReadBackend for PalisadeBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        let mut listed = self.inner.list_with_size(tpe)?;
        if tpe == FileType::Index {
            let hidden = lock(&self.hidden_index);
            listed.retain(|(id, _)| !hidden.contains(id));
        }
        Ok(listed)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<bytes::Bytes> {
        if tpe == FileType::Snapshot
            && let SnapshotWrites::Capture(captured) = &*lock(&self.snapshots)
            && let Some(bytes) = captured.get(id)
        {
            return Ok(bytes.clone());
        }
        self.inner.read_full(tpe, id)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<bytes::Bytes> {
        self.inner.read_partial(tpe, id, cacheable, offset, length)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }

    fn needs_warm_up(&self) -> bool {
        self.inner.needs_warm_up()
    }

    fn warm_up(&self, tpe: FileType, id: &Id) -> RusticResult<()> {
        self.inner.warm_up(tpe, id)
    }
}

impl WriteBackend for PalisadeBackend {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        if tpe == FileType::Config && self.hold_config.load(Ordering::SeqCst) {
            return Ok(());
        }
        if tpe == FileType::Snapshot {
            match &mut *lock(&self.snapshots) {
                SnapshotWrites::Store => {}
                SnapshotWrites::Discard => return Ok(()),
                SnapshotWrites::Capture(captured) => {
                    let mut bytes = Vec::new();
                    for part in content.slice() {
                        bytes.extend_from_slice(part);
                    }
                    captured.insert(*id, Bytes::from(bytes));
                    return Ok(());
                }
            }
            self.write(tpe, id, cacheable, content)?;
            *lock(&self.last_snapshot) = Some(*id);
            return Ok(());
        }
        if tpe == FileType::Index
            && let Some(recorded) = lock(&self.recorded_index).as_mut()
        {
            recorded.push(*id);
        }
        self.write(tpe, id, cacheable, content)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}

/// An opened repository plus the backend handle Palisade controls.
pub struct Repo {
    pub(crate) inner: Repository<OpenStatus>,
    pub(crate) backend: Arc<PalisadeBackend>,
    pub(crate) location: Location,
    backends: RepositoryBackends,
    bars: SharedBars,
    /// rustic_core's local cache of snapshot and index files, when one is used.
    cache_dir: Option<PathBuf>,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.location)
            .finish()
    }
}

/// One key of a repository, as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// The key file's id.
    pub id: String,
    /// Whether this is the key the repository was opened with.
    pub current: bool,
    /// The user name recorded when the key was made.
    pub username: String,
    /// The host name recorded when the key was made.
    pub hostname: String,
    /// When the key was made.
    pub created: String,
}

fn backends(location: &Location) -> Result<(RepositoryBackends, Arc<PalisadeBackend>)> {
    let mut s3_backend = None;
    let inner: Arc<dyn WriteBackend> = match location {
        Location::Local(path) if path.exists() && !path.is_dir() => {
            return Err(Error::BadSource {
                path: path.clone(),
                reason: "this is a file; a local repository is a directory (pass --repo DIR)"
                    .into(),
            });
        }
        Location::Local(path) => {
            let text = path.to_string_lossy();
            Arc::new(
                LocalBackend::new(text, std::iter::empty())
                    .map_err(|err| Error::repo("opening the local repository", err))?,
            )
        }
        Location::S3(s3) => {
            let s3 = Arc::new(S3Backend::new(&s3.location, &s3.options)?);
            s3_backend = Some(s3.clone());
            s3
        }
    };
    let local_root = match location {
        Location::Local(path) => Some(path.clone()),
        Location::S3(_) => None,
    };
    let backend = Arc::new(PalisadeBackend::new(inner, s3_backend, local_root));
    let dyn_backend: Arc<dyn WriteBackend> = backend.clone();
    Ok((RepositoryBackends::new(dyn_backend, None), backend))
}

/// Key metadata as restic records it: who made the key, where and when.
fn key_options() -> KeyOptions {
    let mut options = KeyOptions::default().with_created(true);
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        options = options.hostname(host.trim().to_string());
    }
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        options = options.username(user);
    }
    options
}

/// Progress bars shared by every handle on one repository.
#[derive(Debug, Clone)]
struct SharedBars(Arc<dyn ProgressBars>);

impl ProgressBars for SharedBars {
    fn progress(&self, progress_type: ProgressType, prefix: &str) -> Progress {
        self.0.progress(progress_type, prefix)
    }
}

fn repository(
    backends: &RepositoryBackends,
    bars: &SharedBars,
    cache_dir: Option<&Path>,
) -> Result<Repository<()>> {
    // Palisade keeps no local cache (every read goes to the repository, which keeps `check`
    // honest and leaves nothing behind on the host), except for the WAL archive's commands,
    // which run once per segment: docs/pitr.md.
    let options = match cache_dir {
        None => RepositoryOptions::default().no_cache(true),
        Some(dir) => RepositoryOptions::default().cache_dir(dir.to_path_buf()),
    };
    Repository::new_with_progress(&options, backends, bars.clone())
        .map_err(|err| Error::repo("opening the repository", err))
}

impl Repo {
    /// Creates a new repository at `location`, protected by `password`.
    pub fn init(
        location: Location,
        password: Password,
        chunker: ChunkerOptions,
        bars: Arc<dyn ProgressBars>,
    ) -> Result<Self> {
        let bars = SharedBars(bars);
        let (backends, backend) = backends(&location)?;
        let existing = backend
            .list(FileType::Config)
            .map_err(|err| Error::repo("looking for an existing repository", err))?;
        if !existing.is_empty() {
            return Err(Error::AlreadyInitialised {
                repo: location.to_string(),
            });
        }
        let config = chunker.config_options();
        let inner = repository(&backends, &bars, None)?
            .init(&password.credentials(), &key_options(), &config)
            .map_err(|err| Error::repo("creating the repository", err))?;
        Ok(Self {
            inner,
            backend,
            location,
            backends,
            bars,
            cache_dir: None,
        })
    }

    /// Opens the repository at `location` with `password`; `bars` shows progress (pass
    /// `Arc::new(rustic_core::NoProgressBars)` for none).
    pub fn open(
        location: Location,
        password: Password,
        bars: Arc<dyn ProgressBars>,
    ) -> Result<Self> {
        Self::open_with_cache(location, password, bars, None)
    }

    /// Like [`Repo::open`], keeping copies of snapshot and index files (encrypted, as stored)
    /// in `cache_dir` when one is given, so that each later command reads only what is new.
    pub fn open_with_cache(
        location: Location,
        password: Password,
        bars: Arc<dyn ProgressBars>,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let bars = SharedBars(bars);
        let (backends, backend) = backends(&location)?;
        let repo = repository(&backends, &bars, cache_dir)?;
        let has_config = repo
            .config_id()
            .map_err(|err| Error::repo("reading the repository", err))?
            .is_some();
        if !has_config {
            return Err(Error::NotARepository {
                repo: location.to_string(),
            });
        }
        let inner = repo.open(&password.credentials()).map_err(|err| {
            if err.is_incorrect_password() {
                Error::WrongPassword {
                    repo: location.to_string(),
                }
            } else {
                Error::repo("opening the repository", err)
            }
        })?;
        Ok(Self {
            inner,
            backend,
            location,
            backends,
            bars,
            cache_dir: cache_dir.map(Path::to_path_buf),
        })
    }

    /// Where this repository lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The repository's id.
    pub fn id(&self) -> String {
        self.inner.config().id.to_hex().to_string()
    }

    /// Loads the index of blob ids: enough to back up.
    pub(crate) fn indexed_ids(&self) -> Result<Repository<IndexedIdsStatus>> {
        self.reopen()?
            .to_indexed_ids()
            .map_err(|err| Error::repo("reading the repository index", err))
    }

    /// Like [`Self::indexed_ids`], but the handle cuts chunks as `chunker` says. The setting
    /// lives only in this handle's memory: the config file in the repository is not changed.
    pub(crate) fn indexed_ids_chunked(
        &self,
        chunker: ChunkerOptions,
    ) -> Result<Repository<IndexedIdsStatus>> {
        let mut handle = self.reopen()?;
        self.backend.hold_config(true);
        let applied = handle.apply_config(&chunker.config_options());
        self.backend.hold_config(false);
        applied.map_err(|err| Error::repo("choosing the chunker", err))?;
        handle
            .to_indexed_ids()
            .map_err(|err| Error::repo("reading the repository index", err))
    }

    /// Opens a fresh handle, so that files written since this one was opened are seen.
    ///
    /// It opens with the master key already unlocked, so the password's key derivation (scrypt,
    /// a noticeable fraction of a second) runs once per command, not once per handle.
    pub(crate) fn reopen(&self) -> Result<Repository<OpenStatus>> {
        repository(&self.backends, &self.bars, self.cache_dir.as_deref())?
            .open(&Credentials::Masterkey(self.inner.key()))
            .map_err(|err| Error::repo("opening the repository", err))
    }

    /// Lists the repository's keys.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let current = self.inner.key_id().map(|id| id.to_hex().to_string());
        let ids: Vec<rustic_core::repofile::KeyId> = self
            .inner
            .list()
            .map_err(|err| Error::repo("listing keys", err))?
            .collect();
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let file: KeyFile = self
                .inner
                .get_file(&id)
                .map_err(|err| Error::repo("reading a key", err))?;
            keys.push(KeyInfo {
                id: id.to_hex().to_string(),
                current: current.as_deref() == Some(&*id.to_hex()),
                username: file.username.unwrap_or_default(),
                hostname: file.hostname.unwrap_or_default(),
                created: file
                    .created
                    .map(|t| t.timestamp().to_string())
                    .unwrap_or_default(),
            });
        }
        keys.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(keys)
    }

    /// Adds a key that opens the repository with `password`; returns its id.
    pub fn add_key(&self, password: &Password) -> Result<String> {
        let id = self
            .inner
            .add_key(password.as_str(), &key_options())
            .map_err(|err| Error::repo("adding a key", err))?;
        Ok(id.to_hex().to_string())
    }

    /// Removes the key whose id starts with `prefix`; never the key in use.
    pub fn remove_key(&self, prefix: &str) -> Result<String> {
        let key = self.find_key(prefix)?;
        if key.current {
            return Err(Error::Repository {
                context: "removing a key".into(),
                message: "that is the key this command was opened with; open the repository \
                          with another key to remove it"
                    .into(),
            });
        }
        let id = self
            .inner
            .find_ids::<rustic_core::repofile::KeyId, _>(&[key.id.as_str()])
            .map_err(|err| Error::repo("finding the key", err))?
            .next()
            .ok_or_else(|| Error::NoSuchKey { id: prefix.into() })?;
        self.inner
            .delete_key(&id)
            .map_err(|err| Error::repo("removing the key", err))?;
        Ok(key.id)
    }

    /// Replaces the key in use by one for `password`; returns the new key's id.
    pub fn change_password(&self, password: &Password) -> Result<String> {
        let old = self.inner.key_id().ok_or_else(|| Error::Repository {
            context: "changing the password".into(),
            message: "the repository was not opened with a password".into(),
        })?;
        let new = self.add_key(password)?;
        // rustic_core refuses to remove the key a handle was opened with, so the old key is
        // removed through a handle opened with the new password.
        repository(&self.backends, &self.bars, None)?
            .open(&password.credentials())
            .map_err(|err| Error::repo("opening the repository with the new key", err))?
            .delete_key(&old)
            .map_err(|err| Error::repo("removing the old key", err))?;
        Ok(new)
    }

    fn find_key(&self, prefix: &str) -> Result<KeyInfo> {
        let matches: Vec<_> = self
            .keys()?
            .into_iter()
            .filter(|k| !prefix.is_empty() && k.id.starts_with(prefix))
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(Error::NoSuchKey { id: prefix.into() }),
            _ => Err(Error::Repository {
                context: "finding the key".into(),
                message: format!("`{prefix}` matches several keys; give more of the id"),
            }),
        }
    }
}
