//! Palisade's backup engine: database-aware sources, a catalog in every snapshot, safe,
//! verified restores, and retention, on top of restic's repository format through rustic_core.
//!
//! The flow of one backup is `source` → [`backup::backup`] (archive through rustic_core, then
//! the [`catalog`]) → one snapshot. See `docs/design.md` for the snapshot layout and why each
//! step works the way it does.

pub mod backup;
pub mod catalog;
mod dbrestore;
mod dump;
mod error;
mod hashing;
pub mod inspect;
pub mod mysql;
pub mod pg;
pub mod postgres;
pub mod prove;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod source;
pub mod sqlite;

pub use crate::{
    backup::{BackupReport, BackupRequest, FinishItem, Stream, backup},
    catalog::{CATALOG_PATH, Catalog, CatalogItem, ItemKind},
    dbrestore::{DatabaseRestoreReport, DatabaseRestored},
    dump::DbUrl,
    error::{Error, Result},
    inspect::{CheckReport, ReadData, Stats, check, stats},
    mysql::{MysqlRestore, MysqlSource},
    postgres::{PostgresRestore, PostgresSource},
    prune::{KEEP_DELETE, PruneReport, PruneRequest, prune},
    repository::{ChunkerOptions, KeyInfo, Location, Password, Repo, S3Repository},
    restore::{RestoreReport, RestoreRequest, restore},
    retention::{
        ForgetEntry, ForgetGroupReport, ForgetReport, ForgetTarget, RetentionPolicy, Within, forget,
    },
    snapshot::{SnapshotInfo, TreeEntry, catalog, snapshots, tree},
    source::SourceSpec,
};
