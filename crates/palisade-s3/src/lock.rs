//! Object lock as forget and prune read it: the bucket's setting and each object's lock.
//!
//! The lock is that of each repository file's current version: its retention date and whether a
//! legal hold is on.

use std::fmt;

use rustic_core::jiff::Timestamp;
use rustic_core::{FileType, Id};

use crate::backend::S3Backend;
use crate::error::{Error, Result};

/// The object lock on the current version of one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectLock {
    /// The retention date, in either mode; `None` without retention.
    pub retain_until: Option<Timestamp>,
    /// Whether a legal hold is on (it has no end date: it lasts until someone lifts it).
    pub legal_hold: bool,
}

impl ObjectLock {
    /// Whether S3 refuses to delete this version at `now`.
    pub fn holds(&self, now: Timestamp) -> bool {
        self.legal_hold || self.retain_until.is_some_and(|until| until > now)
    }
}

impl ObjectLock {
    /// When the lock ends, for a person: the retention date, or when the legal hold is lifted.
    pub fn ends(&self) -> String {
        match (self.legal_hold, self.retain_until) {
            (true, Some(until)) => format!("the legal hold is lifted and {}", rfc3339(until)),
            (true, None) => "the legal hold is lifted".into(),
            (false, Some(until)) => rfc3339(until),
            (false, None) => "now".into(),
        }
    }
}

impl fmt::Display for ObjectLock {
    /// `object lock until 2025-01-31T10:00:00Z`, `legal hold`, or both.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.legal_hold, self.retain_until) {
            (true, Some(until)) => write!(f, "legal hold, object lock until {}", rfc3339(until)),
            (true, None) => f.write_str("legal hold"),
            (false, Some(until)) => write!(f, "object lock until {}", rfc3339(until)),
            (false, None) => f.write_str("no object lock"),
        }
    }
}

/// A date as S3 writes it, to the second.
fn rfc3339(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl S3Backend {
    /// Whether the bucket has object lock enabled. Without it no object is ever locked, and
    /// forget and prune ask nothing more.
    pub fn locks_objects(&self) -> Result<bool> {
        self.run(self.lock_configuration())
    }

    async fn lock_configuration(&self) -> Result<bool> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let bucket = &self.s3.location.bucket;
        let answer = self
            .s3
            .client
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|config| config.object_lock_enabled())
                .is_some_and(|enabled| enabled.as_str() == "Enabled")),
            Err(err)
                if crate::bucket::code(&err) == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Ok(false)
            }
            // Services without object lock (some S3-compatible ones) cannot lock anything.
            Err(err)
                if crate::bucket::code(&err) == Some("NotImplemented")
                    || err.raw_response().map(|r| r.status().as_u16()) == Some(501) =>
            {
                log::debug!("{bucket}: the service has no object lock");
                Ok(false)
            }
            Err(err) => Err(self.s3.error("GetObjectLockConfiguration", "", &err)),
        }
    }

    /// The lock of each file's current version, in the order of `ids`; a file that no longer
    /// exists has none. S3 shows retention and legal hold only to credentials with
    /// `s3:GetObjectRetention` and `s3:GetObjectLegalHold` (the pruner role has both).
    pub fn object_locks(&self, tpe: FileType, ids: &[Id]) -> Result<Vec<ObjectLock>> {
        let heads = ids.iter().map(|id| self.object_lock(self.key(tpe, id)));
        self.run(futures_util::future::try_join_all(heads))
    }

    async fn object_lock(&self, key: String) -> Result<ObjectLock> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let answer = self
            .s3
            .client
            .head_object()
            .bucket(&self.s3.location.bucket)
            .key(&key)
            .send()
            .await;
        let head = match answer {
            Ok(head) => head,
            Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                return Ok(ObjectLock::default());
            }
            Err(err) => return Err(self.s3.error("HeadObject", &key, &err)),
        };
        let retain_until = head
            .object_lock_retain_until_date()
            .map(|date| {
                Timestamp::new(date.secs(), i32::try_from(date.subsec_nanos()).unwrap_or(0))
            })
            .transpose()
            .map_err(|err| Error::Service {
                operation: "HeadObject".into(),
                what: format!("{}/{key}", self.s3.location.bucket),
                reason: format!("the object lock date is out of range: {err}"),
            })?;
        let legal_hold = head
            .object_lock_legal_hold_status()
            .is_some_and(|status| status.as_str() == "ON");
        Ok(ObjectLock {
            retain_until,
            legal_hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_until_its_date_and_a_legal_hold_always() {
        let until: Timestamp = "2030-01-31T10:00:00Z".parse().unwrap();
        let lock = ObjectLock {
            retain_until: Some(until),
            legal_hold: false,
        };
        assert!(lock.holds("2030-01-31T09:59:59Z".parse().unwrap()));
        assert!(!lock.holds(until));
        assert_eq!(lock.to_string(), "object lock until 2030-01-31T10:00:00Z");
        assert_eq!(lock.ends(), "2030-01-31T10:00:00Z");
        let hold = ObjectLock {
            retain_until: None,
            legal_hold: true,
        };
        assert!(hold.holds("2100-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(hold.to_string(), "legal hold");
        assert_eq!(hold.ends(), "the legal hold is lifted");
        assert!(!ObjectLock::default().holds(until));
    }
}
