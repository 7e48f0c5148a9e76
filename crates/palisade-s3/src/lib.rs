//! S3 repositories for Palisade: the location syntax, the client settings, a restic-format
//! repository backend on S3-compatible storage, object lock queries, and bucket setup, audit and
//! IAM policies.

mod backend;
mod bucket;
mod client;
mod error;
mod location;
mod lock;
mod options;

pub use backend::S3Backend;
pub use bucket::{
    BucketSpec, CheckItem, CheckReport, LifecycleSpec, LockMode, ObjectLockSpec, Role,
    SettingChange, SetupReport, Status, TRANSITION_STORAGE_CLASSES, check, policy, setup,
};
pub use client::{FALLBACK_REGION, S3Client};
pub use error::{Error, Result};
pub use location::{S3Location, validate_bucket};
pub use lock::ObjectLock;
pub use options::{Encryption, S3Options, STORAGE_CLASSES};
