//! Proof that backups restore: restore tests in an isolated scratch directory with private
//! database servers, repository verification that re-reads data on a rotating schedule, and the
//! recovery drill that starts from nothing but the repository address and key.
//!
//! Every result is a plain serializable report ([`RestoreTest`], [`VerifyReport`],
//! [`DrillReport`]) so that a run store or an alert can record it as it is; `docs/proof.md`
//! describes the checks and the reports' fields.

mod account;
mod drill;
mod error;
mod mariadb;
mod pgserver;
mod restoretest;
mod space;
mod verify;

pub use account::stop_servers;
pub use drill::{DrillJob, DrillReport, DrillRequest, drill};
pub use error::ProveError;
pub use restoretest::{
    Assertion, Check, RestoreTest, RestoreTestReport, RestoreTestRequest, TestTarget, display_name,
    has_base_backup, pitr_test, restore_test, targets,
};
pub use space::free_space;
pub use verify::{
    DEFAULT_PARTS, DURATION_PARTS, VerifyAmount, VerifyCursor, VerifyReport, VerifyRequest, verify,
};

/// The last lines a program printed, as one short line.
pub(crate) fn tail(text: &str) -> String {
    crate::dump::stderr_tail(text)
}
