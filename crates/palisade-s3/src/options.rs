//! The `[repository]` S3 settings: region, addressing, encryption, storage class, concurrency,
//! timeouts and retries, and (only when a user insists) credentials.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Server-side encryption applied to every object Palisade writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Encryption {
    /// SSE-S3: keys held by the storage service (`AES256`).
    #[default]
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS with `kms_key_id`.
    #[serde(rename = "aws:kms")]
    Kms,
}

impl Encryption {
    /// The value S3 uses in `x-amz-server-side-encryption`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256 => "AES256",
            Self::Kms => "aws:kms",
        }
    }
}

/// How Palisade reaches an S3 repository. Every field has a default; credentials come from the
/// standard AWS chain unless `access_key_id` and `secret_access_key` are set together with
/// `credentials_in_config = true`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// AWS region (default: AWS_REGION, the profile's region, or `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`https://HOST/BUCKET/KEY`). Default: on for a custom endpoint,
    /// off for AWS.
    pub path_style: Option<bool>,
    /// Shared-config profile to take credentials and region from (default: AWS_PROFILE).
    pub profile: Option<String>,
    /// `AES256` (default) or `aws:kms`.
    pub encryption: Encryption,
    /// KMS key id or ARN, required with `encryption = "aws:kms"`.
    pub kms_key_id: Option<String>,
    /// Storage class for data packs (metadata always stays in STANDARD, so listing and
    /// opening never wait for a restore from an archive tier).
    pub storage_class: Option<String>,
    /// Requests in flight at once (uploads, parts and reads).
    pub connections: usize,
    /// Objects at least this large go up as multipart uploads, in parts of `part_size`.
    pub multipart_threshold: u64,
    /// Size of each multipart part (S3 requires at least 5 MiB).
    pub part_size: u64,
    /// Attempts per request, the first included (exponential backoff with jitter in between).
    pub max_attempts: u32,
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
    /// Seconds one attempt may take, from request to the end of the response.
    pub request_timeout: u64,
    /// Needed, together with the two keys below, to take credentials from the config file.
    pub credentials_in_config: bool,
    /// Access key id, read only with `credentials_in_config = true`.
    pub access_key_id: Option<String>,
    /// Secret key, read only with `credentials_in_config = true`. Never printed.
    pub secret_access_key: Option<String>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            region: None,
            path_style: None,
            profile: None,
            encryption: Encryption::Aes256,
            kms_key_id: None,
            storage_class: None,
            connections: 4,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            max_attempts: 8,
            connect_timeout: 10,
            request_timeout: 300,
            credentials_in_config: false,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("profile", &self.profile)
            .field("encryption", &self.encryption)
            .field("kms_key_id", &self.kms_key_id)
            .field("storage_class", &self.storage_class)
            .field("connections", &self.connections)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Storage classes S3 accepts on a PUT.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "REDUCED_REDUNDANCY",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

impl S3Options {
    /// Refuses settings that cannot work, naming the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |setting: &str, reason: &str| {
            Err(Error::BadSetting {
                setting: setting.into(),
                reason: reason.into(),
            })
        };
        match (self.encryption, &self.kms_key_id) {
            (Encryption::Kms, None) => {
                return bad(
                    "kms_key_id",
                    "encryption = \"aws:kms\" needs kms_key_id = \"KEY-ID-OR-ARN\"",
                );
            }
            (Encryption::Aes256, Some(_)) => {
                return bad(
                    "kms_key_id",
                    "a KMS key is only used with encryption = \"aws:kms\"; set that or remove kms_key_id",
                );
            }
            _ => {}
        }
        if let Some(class) = &self.storage_class {
            if !STORAGE_CLASSES.contains(&class.as_str()) {
                return bad(
                    "storage_class",
                    &format!("`{class}` is not one of {}", STORAGE_CLASSES.join(", ")),
                );
            }
            if matches!(class.as_str(), "GLACIER" | "DEEP_ARCHIVE") {
                return bad(
                    "storage_class",
                    "GLACIER and DEEP_ARCHIVE objects cannot be read without a restore request, so backups could not be checked or restored; use a lifecycle transition in [bucket] instead",
                );
            }
        }
        if self.connections == 0 || self.connections > 64 {
            return bad("connections", "must be between 1 and 64");
        }
        if self.part_size < 5 * 1024 * 1024 || self.part_size > 5 * 1024 * 1024 * 1024 {
            return bad("part_size", "S3 parts must be between 5 MiB and 5 GiB");
        }
        if self.multipart_threshold < self.part_size {
            return bad("multipart_threshold", "must be at least part_size");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.connect_timeout == 0 || self.request_timeout == 0 {
            return bad("connect_timeout", "timeouts must be at least one second");
        }
        let keys = self.access_key_id.is_some() || self.secret_access_key.is_some();
        if keys && !self.credentials_in_config {
            return bad(
                "secret_access_key",
                "credentials in the config file are refused unless credentials_in_config = true is set too; prefer AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role",
            );
        }
        if self.credentials_in_config
            && (self.access_key_id.is_none() || self.secret_access_key.is_none())
        {
            return bad(
                "credentials_in_config",
                "needs both access_key_id and secret_access_key",
            );
        }
        Ok(())
    }

    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }

    /// Per-attempt timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let options = S3Options {
            credentials_in_config: true,
            access_key_id: Some("AKIAEXAMPLEKEYID".into()),
            secret_access_key: Some("very-secret-value".into()),
            ..S3Options::default()
        };
        let text = format!("{options:?}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!text.contains("AKIAEXAMPLEKEYID"), "{text}");
        options.validate().unwrap();
    }

    #[test]
    fn refusals_name_the_setting() {
        let kms = S3Options {
            encryption: Encryption::Kms,
            ..S3Options::default()
        };
        assert!(
            kms.validate()
                .unwrap_err()
                .to_string()
                .contains("kms_key_id")
        );
        let glacier = S3Options {
            storage_class: Some("DEEP_ARCHIVE".into()),
            ..S3Options::default()
        };
        assert!(
            glacier
                .validate()
                .unwrap_err()
                .to_string()
                .contains("lifecycle")
        );
        let keys = S3Options {
            secret_access_key: Some("x".into()),
            ..S3Options::default()
        };
        assert!(
            keys.validate()
                .unwrap_err()
                .to_string()
                .contains("credentials_in_config")
        );
    }
}
