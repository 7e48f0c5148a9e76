//! What can stop a restore test, a verification or a drill before it produces its report.

use std::path::PathBuf;

/// Failures of the proof commands' set-up; failures of the checks themselves are findings in
/// the report, not errors.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// A database server program needed for a restore test is not installed.
    #[error(
        "{program} was not found {place}, so the restore test cannot start a private server; {install}"
    )]
    MissingServer {
        program: String,
        place: String,
        install: String,
    },

    /// The service account a server must run as (because Palisade runs as root) is missing.
    #[error(
        "there is no OS user `{account}` to run the private server as (servers refuse to run as \
         root); install the server's Debian package, which creates it, or run as another user"
    )]
    NoAccount { account: String },

    /// The server's account cannot enter the scratch directory.
    #[error(
        "the OS user {account} cannot enter {dir}, where its private server would live; set \
         temp_dir in the config to a folder whose parents it may traverse (such as /tmp)"
    )]
    Unreachable { account: String, dir: PathBuf },

    /// A private server did not initialise or start.
    #[error("the private {server} server did not start: {reason}")]
    ServerFailed { server: String, reason: String },

    /// The free space could not be read.
    #[error("cannot tell how much space is free in {dir}: {reason}")]
    FreeSpace { dir: PathBuf, reason: String },

    /// The state directory for verify's cursor cannot be used.
    #[error("cannot use the state directory {dir}: {reason}; set `state_dir` in the config")]
    State { dir: PathBuf, reason: String },

    /// Nothing to test or drill.
    #[error("{reason}")]
    Nothing { reason: String },
}
