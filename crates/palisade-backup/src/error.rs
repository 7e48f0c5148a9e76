//! The engine's error type: one variant per distinct failure, each message saying what to do.

use std::path::PathBuf;

use rustic_core::RusticError;

/// Everything that can go wrong in the backup engine.
///
/// Messages are lower-case sentences for a person: the problem first, then the fix. They never
/// contain a password, a key or file contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The password or key file does not open any key of the repository.
    #[error("wrong password or key file for repository {repo}; nothing was written")]
    WrongPassword { repo: String },

    /// A password file or variable holds nothing but white space.
    #[error("the password in {origin} is empty; put the password (or a long random key) in it")]
    EmptyPassword { origin: String },

    /// The repository location holds no restic/Palisade repository.
    #[error(
        "no repository at {repo}; create one with `palisade init --repo {repo}` or point --repo \
         (or PALISADE_REPOSITORY) at an existing one"
    )]
    NotARepository { repo: String },

    /// S3 storage refused or failed a request; the text says how to fix it.
    #[error(transparent)]
    Storage(#[from] palisade_s3::Error),

    /// `init` was asked to create a repository where one already exists.
    #[error("a repository already exists at {repo}; use it as it is, or choose an empty location")]
    AlreadyInitialised { repo: String },

    /// The file given as an SQLite source is not an SQLite database.
    #[error(
        "{path} is not an SQLite database ({reason}); pass the database file itself to --sqlite"
    )]
    NotSqlite { path: PathBuf, reason: String },

    /// An SQLite database could not be copied or inspected.
    #[error("could not copy the SQLite database {path}: {reason}")]
    Sqlite { path: PathBuf, reason: String },

    /// A source named on the command line or in the config does not exist or has the wrong type.
    #[error("{path}: {reason}")]
    BadSource { path: PathBuf, reason: String },

    /// Two items of one backup would be stored under the same name.
    #[error(
        "two sources would both be stored as `{name}`; give one of them another name \
         (`name = ...` in the job's source, or `--name` for a stream)"
    )]
    DuplicateItem { name: String },

    /// An item name that cannot be stored safely.
    #[error("`{name}` cannot be used as an item name: {reason}")]
    BadItemName { name: String, reason: String },

    /// Reading a stream or a local file failed.
    #[error("could not read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The snapshot named does not exist or is ambiguous.
    #[error("no snapshot matches `{id}`; list them with `palisade snapshots`")]
    NoSuchSnapshot { id: String },

    /// The snapshot holds no Palisade catalog (it was written by plain restic, say).
    #[error("snapshot {id} has no Palisade catalog at {path}; it was not written by Palisade")]
    NoCatalog { id: String, path: String },

    /// The catalog exists but cannot be parsed.
    #[error("the catalog of snapshot {id} is unreadable: {reason}")]
    BadCatalog { id: String, reason: String },

    /// A `--read-data-subset` value in none of restic's forms.
    #[error(
        "`{value}` is not a subset; give a percentage above 0 and at most 100 (10 or 10%), \
         n/m to read the n-th of m parts (1/5), or a size (500M)"
    )]
    BadSubset { value: String },

    /// A retention setting that cannot be used; `fix` says what to write instead.
    #[error("{key} = {value}: {fix}")]
    BadRetention {
        key: String,
        value: String,
        fix: String,
    },

    /// A locked pack that prune could not keep out of its plan.
    #[error(
        "pack {pack} is under {lock} and was indexed without a time (by restic, say), so prune \
         cannot keep it out of its plan; nothing was changed: run prune again once {ends}"
    )]
    LockedPackWithoutTime {
        pack: String,
        lock: String,
        ends: String,
    },

    /// `--include` named more than one item.
    #[error("`{item}` names several items ({paths}); give the item's path instead")]
    AmbiguousItem { item: String, paths: String },

    /// `--include` named nothing in the snapshot.
    #[error("snapshot {id} has no item `{item}`; `palisade ls {id}` lists its items")]
    NoSuchItem { id: String, item: String },

    /// A restore would replace files that differ from the snapshot.
    #[error(
        "restoring would overwrite {count} existing file(s) in {target} that differ from the \
         snapshot (first: {first}); restore into an empty directory or pass --overwrite"
    )]
    WouldOverwrite {
        target: PathBuf,
        count: u64,
        first: String,
    },

    /// A snapshot entry whose name would place it outside the restore target.
    #[error("refusing to restore `{path}`: {reason}")]
    UnsafeEntry { path: String, reason: String },

    /// The restore target already holds a symlink where the snapshot has a file or directory.
    #[error(
        "{path} is a symlink, and restoring there would write wherever it points; remove it, \
         restore into an empty directory, or pass --overwrite to replace the link (only the \
         link) with the snapshot's entry"
    )]
    LinkInTarget { path: PathBuf },

    /// Some files could not be restored because their data is missing or damaged.
    #[error("{failed} of {total} item(s) could not be restored: {first}")]
    RestoreIncomplete {
        failed: usize,
        total: usize,
        first: String,
    },

    /// The restore target exists and is not a directory.
    #[error("restore target {path} exists and is not a directory; choose a directory")]
    BadTarget { path: PathBuf },

    /// A key id given to `key remove` matches no key.
    #[error("no key matches `{id}`; list them with `palisade key list`")]
    NoSuchKey { id: String },

    /// A database server URL that cannot be used.
    #[error("bad database URL: {reason}")]
    BadDatabaseUrl { reason: String },

    /// A database tool (pg_dump, mariadb-dump, ...) is not installed where Palisade looks.
    #[error("{tool} was not found {place}; {install}")]
    MissingTool {
        tool: String,
        place: String,
        install: String,
    },

    /// A database server refused or failed a request; the reason says what to fix.
    #[error("{server}: {reason}")]
    Database { server: String, reason: String },

    /// A restore would replace a database that holds data.
    #[error(
        "database `{database}` on {server} already holds {relations} table(s), routine(s) or \
         other object(s); restore under another name with --as NAME, or pass --clean to \
         replace it"
    )]
    DatabaseNotEmpty {
        server: String,
        database: String,
        relations: u64,
    },

    /// A restored database does not hold the rows the catalog recorded.
    #[error(
        "database `{database}` was restored but its row counts differ from the catalog's: \
         {differences}"
    )]
    RowCountMismatch {
        database: String,
        differences: String,
    },
    /// Point-in-time recovery: the WAL archive, base backups, PostgreSQL restores.
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),

    /// Restore tests, verification and drills: a server that cannot start, no room, no state.
    #[error(transparent)]
    Prove(#[from] crate::prove::ProveError),

    /// An error reported by rustic_core that has no more specific variant here.
    #[error("{context}: {message}")]
    Repository { context: String, message: String },

    /// A local I/O failure with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a rustic_core error with what Palisade was doing when it happened.
    pub(crate) fn repo(context: impl Into<String>, err: impl AsRef<RusticError>) -> Self {
        Self::Repository {
            context: context.into(),
            message: describe(err.as_ref()),
        }
    }

    /// Wraps a local I/O error with its path.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Renders a rustic_core error as one line, without its report-a-bug boilerplate.
fn describe(err: &RusticError) -> String {
    // A storage failure already says what is wrong and how to fix it; rustic's wrapping
    // around it would only hide that sentence.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(storage) = cause.downcast_ref::<palisade_s3::Error>() {
            return storage.to_string();
        }
        source = cause.source();
    }
    let text = err.display_log();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
