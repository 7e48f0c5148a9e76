//! PostgreSQL point-in-time recovery: a WAL archive in the repository (`archive-push`,
//! `archive-get`), physical base backups, restores to a time or an LSN, and archive checks.
//!
//! Each archived WAL file is its own small snapshot, tagged with its name and hash; a base
//! backup is one snapshot holding pg_basebackup's tar and, in its catalog, where its WAL starts
//! and ends. `docs/pitr.md` explains the layout and its costs.

mod archive;
mod base;
mod check;
mod error;
mod recover;
mod tarscan;
mod tools;
pub mod wal;

pub use archive::{ArchivedWal, PushReport, WAL_TAG, archived, get, push, wal_name};
pub(crate) use archive::{list_archived, read_archived};
pub use base::{BASE_TAG, BaseBackupOptions, PgBaseBackup, base_backup};
pub use check::{TimelineWal, WalCheckReport, wal_check};
pub use error::PgError;
pub(crate) use recover::base_backups;
pub use recover::{PgRestoreReport, PgRestoreRequest, RecoveryTarget, TimelineChoice, restore};
pub use tools::{PgPrograms, redact};
pub use wal::{DEFAULT_SEGMENT_SIZE, Lsn};
