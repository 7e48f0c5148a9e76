//! The `[bucket]` section of `palisade.toml`: what `palisade bucket setup` applies, its defaults
//! and the combinations it refuses.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::options::Encryption;

/// Storage classes a lifecycle rule can move objects to.
pub const TRANSITION_STORAGE_CLASSES: &[&str] = &[
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

/// The longest default retention S3 accepts, in days (100 years).
const MAX_LOCK_DAYS: u32 = 36_500;

/// How a bucket holding Palisade repositories should be set up. See `docs/s3-buckets.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketSpec {
    /// Default encryption of the bucket: `AES256` (default) or `aws:kms`.
    pub encryption: Encryption,
    /// KMS key id or ARN, required with `encryption = "aws:kms"` and refused otherwise.
    pub kms_key_id: Option<String>,
    /// Keep every version of every object (default on). Off leaves versioning as it is.
    pub versioning: bool,
    /// Turn on all four public access blocks (default on). Off leaves them as they are.
    pub block_public_access: bool,
    /// Bucket policy statement denying requests not made over TLS (default on).
    pub require_tls: bool,
    /// Bucket policy statement denying uploads that ask for other server-side encryption than
    /// `encryption` (default on).
    pub require_encryption: bool,
    /// Lifecycle rules on the repository prefix.
    pub lifecycle: LifecycleSpec,
    /// Default retention of object lock (off unless set).
    pub object_lock: Option<ObjectLockSpec>,
}

impl Default for BucketSpec {
    fn default() -> Self {
        Self {
            encryption: Encryption::Aes256,
            kms_key_id: None,
            versioning: true,
            block_public_access: true,
            require_tls: true,
            require_encryption: true,
            lifecycle: LifecycleSpec::default(),
            object_lock: None,
        }
    }
}

/// `[bucket.lifecycle]`: what S3 does by itself to objects under the repository prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSpec {
    /// Move data packs (`PREFIX/data/`) to `transition_storage_class` this many days after
    /// they were written (off unless set).
    pub transition_days: Option<u32>,
    /// Where `transition_days` moves data packs (default `STANDARD_IA`).
    pub transition_storage_class: String,
    /// Delete versions this many days after they stopped being current, that is after a
    /// prune deleted or a write replaced them (off unless set: old versions are kept forever).
    pub noncurrent_expire_days: Option<u32>,
    /// Abort multipart uploads left incomplete this many days (default 1).
    pub abort_multipart_days: u32,
}

impl Default for LifecycleSpec {
    fn default() -> Self {
        Self {
            transition_days: None,
            transition_storage_class: "STANDARD_IA".into(),
            noncurrent_expire_days: None,
            abort_multipart_days: 1,
        }
    }
}

/// `[bucket.object_lock]`: the retention every new object version gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockSpec {
    /// `governance` or `compliance`.
    pub mode: LockMode,
    /// Days each version stays locked after it was written.
    pub days: u32,
}

/// Object lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete a locked version.
    Governance,
    /// Nobody, not even the account's root user, can delete a locked version.
    Compliance,
}

impl LockMode {
    /// The name S3 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

impl BucketSpec {
    /// Refuses combinations that cannot work or would not do what they say, naming the setting
    /// and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_encryption()?;
        self.lifecycle.validate()?;
        if let Some(lock) = &self.object_lock {
            self.validate_lock(lock)?;
        }
        Ok(())
    }

    fn validate_encryption(&self) -> Result<()> {
        match (self.encryption, self.kms_key_id.as_deref()) {
            (Encryption::Kms, None) => Err(bad(
                "kms_key_id",
                "encryption = \"aws:kms\" needs kms_key_id = \"KEY-ID-OR-ARN\"",
            )),
            (Encryption::Kms, Some(key)) if key.trim().is_empty() => {
                Err(bad("kms_key_id", "is empty; give the KMS key id or ARN"))
            }
            (Encryption::Aes256, Some(_)) => Err(bad(
                "kms_key_id",
                "a KMS key is only used with encryption = \"aws:kms\"; set that or remove kms_key_id",
            )),
            _ => Ok(()),
        }
    }

    fn validate_lock(&self, lock: &ObjectLockSpec) -> Result<()> {
        if !self.versioning {
            return Err(bad(
                "object_lock",
                "object lock needs versioning = true: S3 locks object versions",
            ));
        }
        if lock.days == 0 || lock.days > MAX_LOCK_DAYS {
            return Err(bad(
                "object_lock.days",
                "must be between 1 and 36500 (remove [bucket.object_lock] to go without a lock)",
            ));
        }
        match self.lifecycle.noncurrent_expire_days {
            Some(expire) if expire < lock.days => Err(bad(
                "lifecycle.noncurrent_expire_days",
                &format!(
                    "is {expire} but object_lock.days is {}: S3 deletes no version while it is locked, so noncurrent versions would live at least {} days anyway; set noncurrent_expire_days to {} or more",
                    lock.days, lock.days, lock.days
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl LifecycleSpec {
    fn validate(&self) -> Result<()> {
        let class = self.transition_storage_class.as_str();
        if !TRANSITION_STORAGE_CLASSES.contains(&class) {
            return Err(bad(
                "lifecycle.transition_storage_class",
                &format!(
                    "`{class}` is not one of {}",
                    TRANSITION_STORAGE_CLASSES.join(", ")
                ),
            ));
        }
        match self.transition_days {
            Some(0) => return Err(bad("lifecycle.transition_days", "must be at least 1")),
            Some(days) if days < 30 && class.ends_with("_IA") => {
                return Err(bad(
                    "lifecycle.transition_days",
                    &format!("S3 moves objects to {class} only after 30 days or more"),
                ));
            }
            _ => {}
        }
        if self.noncurrent_expire_days == Some(0) {
            return Err(bad(
                "lifecycle.noncurrent_expire_days",
                "must be at least 1 (leave it out to keep old versions forever)",
            ));
        }
        if self.abort_multipart_days == 0 {
            return Err(bad(
                "lifecycle.abort_multipart_days",
                "must be at least 1: S3 keeps the parts of an abandoned upload, and bills them, until they are aborted",
            ));
        }
        Ok(())
    }
}

fn bad(setting: &str, reason: &str) -> Error {
    Error::BadSetting {
        setting: format!("bucket.{setting}"),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(spec: &BucketSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    fn lock(days: u32) -> Option<ObjectLockSpec> {
        Some(ObjectLockSpec {
            mode: LockMode::Governance,
            days,
        })
    }

    #[test]
    fn defaults_are_valid_and_protective() {
        let spec = BucketSpec::default();
        spec.validate().unwrap();
        assert!(spec.versioning && spec.block_public_access);
        assert!(spec.require_tls && spec.require_encryption);
        assert_eq!(spec.encryption, Encryption::Aes256);
        assert_eq!(spec.lifecycle.abort_multipart_days, 1);
        assert_eq!(spec.lifecycle.transition_storage_class, "STANDARD_IA");
    }

    #[test]
    fn parses_with_defaults_and_refuses_unknown_fields() {
        let spec: BucketSpec = serde_json::from_value(serde_json::json!({
            "encryption": "aws:kms",
            "kms_key_id": "alias/backups",
            "lifecycle": { "noncurrent_expire_days": 30 },
            "object_lock": { "mode": "compliance", "days": 7 },
        }))
        .unwrap();
        assert_eq!(spec.encryption, Encryption::Kms);
        assert_eq!(spec.lifecycle.noncurrent_expire_days, Some(30));
        assert_eq!(spec.lifecycle.abort_multipart_days, 1);
        assert_eq!(spec.object_lock.unwrap().mode, LockMode::Compliance);
        assert!(spec.versioning);
        spec.validate().unwrap();

        let typo = serde_json::from_value::<BucketSpec>(serde_json::json!({ "versionning": true }));
        assert!(typo.unwrap_err().to_string().contains("versionning"));
        let mode = serde_json::from_value::<BucketSpec>(
            serde_json::json!({ "object_lock": { "mode": "legal-hold", "days": 1 } }),
        );
        assert!(mode.is_err());
    }

    #[test]
    fn kms_key_goes_with_kms_only() {
        let missing = BucketSpec {
            encryption: Encryption::Kms,
            ..BucketSpec::default()
        };
        assert!(refusal(&missing).contains("bucket.kms_key_id"));
        let empty = BucketSpec {
            kms_key_id: Some(" ".into()),
            ..missing.clone()
        };
        assert!(refusal(&empty).contains("empty"));
        let stray = BucketSpec {
            kms_key_id: Some("key".into()),
            ..BucketSpec::default()
        };
        assert!(refusal(&stray).contains("aws:kms"));
    }

    #[test]
    fn object_lock_needs_versioning_and_days() {
        let unversioned = BucketSpec {
            versioning: false,
            object_lock: lock(1),
            ..BucketSpec::default()
        };
        assert!(refusal(&unversioned).contains("versioning = true"));
        let zero = BucketSpec {
            object_lock: lock(0),
            ..BucketSpec::default()
        };
        assert!(refusal(&zero).contains("object_lock.days"));
        let forever = BucketSpec {
            object_lock: lock(36_501),
            ..BucketSpec::default()
        };
        assert!(refusal(&forever).contains("36500"));
    }

    #[test]
    fn noncurrent_expiry_must_outlast_the_lock() {
        let mut spec = BucketSpec {
            object_lock: lock(30),
            ..BucketSpec::default()
        };
        spec.lifecycle.noncurrent_expire_days = Some(7);
        let text = refusal(&spec);
        assert!(text.contains("noncurrent_expire_days"), "{text}");
        assert!(text.contains("locked"), "{text}");
        spec.lifecycle.noncurrent_expire_days = Some(30);
        spec.validate().unwrap();
    }

    #[test]
    fn lifecycle_days_and_classes() {
        let with = |lifecycle: LifecycleSpec| BucketSpec {
            lifecycle,
            ..BucketSpec::default()
        };
        let early_ia = with(LifecycleSpec {
            transition_days: Some(7),
            ..LifecycleSpec::default()
        });
        assert!(refusal(&early_ia).contains("30 days"));
        let glacier_ir = with(LifecycleSpec {
            transition_days: Some(7),
            transition_storage_class: "GLACIER_IR".into(),
            ..LifecycleSpec::default()
        });
        glacier_ir.validate().unwrap();
        let standard = with(LifecycleSpec {
            transition_days: Some(60),
            transition_storage_class: "STANDARD".into(),
            ..LifecycleSpec::default()
        });
        assert!(refusal(&standard).contains("is not one of"));
        let never_abort = with(LifecycleSpec {
            abort_multipart_days: 0,
            ..LifecycleSpec::default()
        });
        assert!(refusal(&never_abort).contains("abort_multipart_days"));
        let zero_noncurrent = with(LifecycleSpec {
            noncurrent_expire_days: Some(0),
            ..LifecycleSpec::default()
        });
        assert!(refusal(&zero_noncurrent).contains("noncurrent_expire_days"));
        let zero_transition = with(LifecycleSpec {
            transition_days: Some(0),
            ..LifecycleSpec::default()
        });
        assert!(refusal(&zero_transition).contains("transition_days"));
    }
}
