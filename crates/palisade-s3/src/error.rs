//! The S3 side's error type: one sentence on what is wrong and which command or setting fixes it.

use std::time::Duration;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to S3 or setting a bucket up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository location that cannot be an S3 location.
    #[error("`{location}` is not an S3 location: {reason}")]
    BadLocation { location: String, reason: String },
    /// A setting that cannot work.
    #[error("S3 setting `{setting}`: {reason}")]
    BadSetting { setting: String, reason: String },
    /// S3 refused the credentials.
    #[error(
        "S3 refused the credentials for bucket `{bucket}` ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance role"
    )]
    Credentials { bucket: String, code: String },
    /// No credentials could be found at all.
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token, or run on a host with an instance role"
    )]
    NoCredentials,
    /// The credentials are valid but lack a permission.
    #[error(
        "S3 denied `{operation}` on `{what}` (AccessDenied): the credentials lack that permission (`palisade bucket policy --role ROLE` prints the policy each role needs), or a bucket policy denies the request (with `palisade bucket setup`: plain-http endpoints need require_tls = false in [bucket], and the encryption in [repository.s3] must match require_encryption's)"
    )]
    AccessDenied { operation: String, what: String },
    /// The bucket does not exist.
    #[error("bucket `{bucket}` does not exist: create it with `palisade bucket setup`")]
    NoSuchBucket { bucket: String },
    /// The bucket lives in another region than the one configured.
    #[error(
        "bucket `{bucket}` is not in region `{configured}`{actual}: set `region` in [repository.s3] (or AWS_REGION) to the bucket's region"
    )]
    WrongRegion {
        bucket: String,
        configured: String,
        actual: String,
    },
    /// The object does not exist.
    #[error("`{key}` does not exist in bucket `{bucket}`")]
    NoSuchKey { bucket: String, key: String },
    /// The object is protected by object lock.
    #[error("`{key}` is protected by object lock{until} and cannot be deleted or overwritten yet")]
    Locked { key: String, until: String },
    /// The service could not be reached or kept failing.
    #[error("S3 request `{operation}` on `{what}` failed after retries: {reason}")]
    Service {
        operation: String,
        what: String,
        reason: String,
    },
    /// A read returned another length than asked for.
    #[error("`{key}`: S3 returned {got} bytes where {wanted} were expected")]
    ShortRead { key: String, got: u64, wanted: u64 },
    /// A request took longer than allowed.
    #[error("S3 request `{operation}` on `{what}` timed out after {after:?}")]
    Timeout {
        operation: String,
        what: String,
        after: Duration,
    },
    /// A role name that is not one of the three.
    #[error(
        "`{role}` is not a role: `palisade bucket policy --role` takes writer, pruner or admin"
    )]
    UnknownRole { role: String },
    /// The bucket name is taken by another AWS account.
    #[error(
        "bucket `{bucket}` already exists and belongs to another account: choose another bucket name in the repository location"
    )]
    BucketTaken { bucket: String },
    /// Object lock is wanted on a bucket that was created without it, and S3 would not add it.
    #[error(
        "bucket `{bucket}` was created without object lock and S3 would not turn it on ({reason}): set up a new bucket with `palisade bucket setup`, which creates it with object lock, or remove [bucket.object_lock]"
    )]
    ObjectLockUnavailable { bucket: String, reason: String },
    /// The bucket's policy is not a document Palisade can merge its statements into.
    #[error(
        "the bucket policy of `{bucket}` is not a valid policy document ({reason}): fix or delete it (`aws s3api delete-bucket-policy --bucket {bucket}`), then run `palisade bucket setup` again"
    )]
    BadPolicy { bucket: String, reason: String },
}
