//! What can go wrong in point-in-time recovery: one variant per failure, each message saying
//! what to do.

use std::path::PathBuf;

/// Failures of the WAL archive, base backups and PostgreSQL restores.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A name that is not a WAL segment, history, backup history or partial segment file.
    #[error(
        "`{name}` is not a WAL file name (a segment such as 000000010000000000000003, a \
         timeline history file, a .backup or a .partial file); give %p or %f as PostgreSQL \
         passes them"
    )]
    BadWalName { name: String },

    /// The archive already holds a file of this name with other content.
    #[error(
        "the archive already holds {name} with other content (archived sha256 {archived}, this \
         file's sha256 {offered}); two clusters may be archiving into one repository, or the \
         file changed: give each cluster its own repository"
    )]
    ConflictingWal {
        name: String,
        archived: String,
        offered: String,
    },

    /// `archive-get` was asked for a file the archive does not hold.
    #[error("{name} is not in the WAL archive")]
    NotArchived { name: String },

    /// A restored WAL file does not match the hash it was archived with.
    #[error(
        "{name} read back from the repository has sha256 {got}, not {want}; run `palisade check --read-data`"
    )]
    DamagedWal {
        name: String,
        got: String,
        want: String,
    },

    /// A PostgreSQL program that is needed was not found.
    #[error(
        "{program} was not found (looked in {looked}); install PostgreSQL's client programs \
         (apt-get install postgresql-client) or set `bin_dir` in the [pitr] section of the config"
    )]
    MissingProgram { program: String, looked: String },

    /// The server could not be reached or refused the connection.
    #[error(
        "cannot connect to PostgreSQL at {url}: {reason}; check --postgres and that the server runs"
    )]
    Connect { url: String, reason: String },

    /// The server is not set up to archive WAL, so a base backup could never be recovered.
    #[error(
        "the server has archive_mode = {mode}, so its WAL is not archived and a base backup \
         could not be recovered; set archive_mode = on and archive_command as docs/pitr.md says, \
         then restart PostgreSQL"
    )]
    NotArchiving { mode: String },

    /// pg_basebackup ran and failed.
    #[error("pg_basebackup failed ({status}): {stderr}")]
    BaseBackupFailed { status: String, stderr: String },

    /// The base backup stream lacked what every pg_basebackup tar holds.
    #[error("the base backup stream has no usable {what}; is the server PostgreSQL 13 or newer?")]
    BadBaseBackup { what: String },

    /// `--target-time` is not a time.
    #[error(
        "`{value}` is not a time; give an RFC 3339 time with its offset, such as \
         2026-01-31T14:05:00Z or '2026-01-31 14:05:00.123+01:00'"
    )]
    BadTargetTime { value: String },

    /// `--target-lsn` is not an LSN.
    #[error("`{value}` is not an LSN; give it as PostgreSQL prints it, such as 0/3000060")]
    BadTargetLsn { value: String },

    /// `--target-timeline` is neither `latest`, `current` nor a number.
    #[error("`{value}` is not a timeline; give latest, current or a timeline number")]
    BadTimeline { value: String },

    /// No base backup can reach the target.
    #[error("{reason}")]
    NoBaseBackup { reason: String },

    /// The archived WAL does not reach the target.
    #[error("{reason}")]
    WalMissing { reason: String },

    /// The snapshot given to `pg restore` is not a base backup.
    #[error(
        "snapshot {id} is not a PostgreSQL base backup; `palisade snapshots` lists them with tag pg-base"
    )]
    NotABaseBackup { id: String },

    /// The data directory for a restore is not empty.
    #[error("{path} is not empty; restore into a new or empty directory")]
    DataDirNotEmpty { path: PathBuf },

    /// The restored base backup does not match its catalog.
    #[error(
        "the restored base backup has sha256 {got}, not {want} as its catalog says; run `palisade check --read-data`"
    )]
    DamagedBaseBackup { got: String, want: String },
}
