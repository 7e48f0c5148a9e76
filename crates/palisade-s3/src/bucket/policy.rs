//! Least-privilege IAM policies for the three roles that touch a repository: the writer on the
//! application host, the pruner elsewhere, and the admin who runs `bucket setup`.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::error::Error;
use crate::location::S3Location;

/// Who uses a set of credentials. See `docs/s3-buckets.md` for why the writer cannot delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Backs up from the application host: lists, reads and writes, never deletes.
    Writer,
    /// Forgets and prunes from another host: the writer's rights plus deleting current objects
    /// and reading object locks.
    Pruner,
    /// Runs `palisade bucket setup` and `check`: the pruner's rights plus the bucket settings.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 3] = [Role::Writer, Role::Pruner, Role::Admin];

    /// The role's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Pruner => "pruner",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| Error::UnknownRole { role: text.into() })
    }
}

/// What `bucket setup` and `bucket check` read and write on the bucket itself.
const ADMIN_ACTIONS: &[&str] = &[
    "s3:CreateBucket",
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:GetEncryptionConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:GetBucketVersioning",
    "s3:PutBucketVersioning",
    "s3:GetBucketPublicAccessBlock",
    "s3:PutBucketPublicAccessBlock",
    "s3:GetBucketPolicy",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:GetBucketObjectLockConfiguration",
    "s3:PutBucketObjectLockConfiguration",
];

/// The IAM policy document (identity policy) the role needs on this bucket and prefix.
pub fn policy(role: Role, location: &S3Location) -> Value {
    let bucket_arn = format!("arn:aws:s3:::{}", location.bucket);
    let objects_arn = if location.prefix.is_empty() {
        format!("{bucket_arn}/*")
    } else {
        format!("{bucket_arn}/{}/*", location.prefix)
    };
    let mut list = json!({
        "Sid": "PalisadeListRepository",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn,
    });
    if !location.prefix.is_empty() {
        list["Condition"] =
            json!({ "StringLike": { "s3:prefix": [format!("{}/*", location.prefix)] } });
    }
    // PutObject covers the multipart calls that build an object; AbortMultipartUpload only
    // discards the parts of an upload that never became an object, so no stored backup can be
    // removed with it. Overwriting is possible with PutObject, but versioning keeps the
    // overwritten version, and no role below may delete versions.
    let mut statements = vec![
        list,
        json!({
            "Sid": "PalisadeReadWriteObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": objects_arn,
        }),
    ];
    if role != Role::Writer {
        // DeleteObject on a versioned bucket only hides the current version behind a delete
        // marker; the data stays until the noncurrent-version lifecycle rule expires it.
        statements.push(json!({
            "Sid": "PalisadeDeleteObjects",
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": objects_arn,
        }));
        // forget and prune keep what object lock still protects; S3 shows an object's
        // retention and legal hold only to credentials that may read them.
        statements.push(json!({
            "Sid": "PalisadeReadObjectLocks",
            "Effect": "Allow",
            "Action": ["s3:GetObjectRetention", "s3:GetObjectLegalHold"],
            "Resource": objects_arn,
        }));
        statements.push(json!({
            "Sid": "PalisadeReadBucketLock",
            "Effect": "Allow",
            "Action": "s3:GetBucketObjectLockConfiguration",
            "Resource": bucket_arn,
        }));
    }
    if role == Role::Admin {
        statements.push(json!({
            "Sid": "PalisadeBucketSetup",
            "Effect": "Allow",
            "Action": ADMIN_ACTIONS,
            "Resource": bucket_arn,
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("writer, pruner or admin"), "{err}");
    }

    #[test]
    fn a_bucket_without_prefix_lists_without_condition() {
        let location = S3Location::parse("s3:backups").unwrap();
        let writer = policy(Role::Writer, &location);
        assert!(writer["Statement"][0].get("Condition").is_none());
        assert_eq!(writer["Statement"][1]["Resource"], "arn:aws:s3:::backups/*");
    }
}
