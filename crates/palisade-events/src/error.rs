//! The events crate's errors: one variant per failure, each message saying what to do.

/// Everything that can go wrong in the store, a channel or the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database could not be opened, read or written.
    #[error("state store {path}: {source}; check that the state directory is writable")]
    Store {
        /// The database file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The database was written by a newer Palisade.
    #[error(
        "state store {path} has schema version {found}, newer than this Palisade knows ({known}); \
         upgrade Palisade or point state_dir elsewhere"
    )]
    StoreTooNew {
        /// The database file.
        path: String,
        /// The file's version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A channel could not deliver a message. The text never holds the channel's URL or
    /// password.
    #[error("{channel}: {reason}")]
    Send {
        /// Which channel (`alerts[2] (email)`).
        channel: String,
        /// What went wrong, secrets removed.
        reason: String,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {address}: {reason}; choose another [daemon] metrics address")]
    Metrics {
        /// The address asked for.
        address: String,
        /// What the system said.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
