//! Parsing and printing of S3 repository locations (`s3:https://HOST/BUCKET/PREFIX`, `s3:BUCKET/PREFIX`).

use std::fmt;

use crate::error::{Error, Result};

/// Where an S3 repository lives: an optional endpoint (absent means AWS), a bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]` of an S3-compatible service; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Whether `text` names an S3 repository at all (it starts with `s3:`).
    pub fn is_s3(text: &str) -> bool {
        text.starts_with("s3:")
    }

    /// Parses `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` or `s3:BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadLocation {
            location: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix("s3:")
            .ok_or_else(|| bad("an S3 location starts with `s3:`"))?;
        let (endpoint, path) = if let Some((scheme, after)) = rest.split_once("://") {
            if scheme != "http" && scheme != "https" {
                return Err(bad("the endpoint must start with http:// or https://"));
            }
            let (host, path) = after.split_once('/').unwrap_or((after, ""));
            if host.is_empty() {
                return Err(bad("the endpoint has no host name"));
            }
            (Some(format!("{scheme}://{host}")), path)
        } else {
            if rest.starts_with("//") {
                return Err(bad("write s3:https://HOST/BUCKET or s3:BUCKET, not s3://"));
            }
            (None, rest)
        };
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad(
                "no bucket name (write s3:https://HOST/BUCKET/PREFIX or s3:BUCKET/PREFIX)",
            ));
        }
        validate_bucket(bucket).map_err(|reason| bad(&reason))?;
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
            && !prefix.is_empty()
        {
            return Err(bad("the prefix has an empty, `.` or `..` part"));
        }
        Ok(Self {
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The object key of `name` inside the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("s3:")?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, "{endpoint}/")?;
        }
        f.write_str(&self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// S3's bucket naming rules (3 to 63 characters of lower-case letters, digits, `-` and `.`).
pub fn validate_bucket(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len()) || !ok_chars || !ends_ok || name.contains("..") {
        return Err(format!(
            "`{name}` is not a valid bucket name (3 to 63 lower-case letters, digits, `-` or `.`, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_bucket_and_prefix() {
        let loc = S3Location::parse("s3:http://127.0.0.1:9000/backups/app/prod/").unwrap();
        assert_eq!(loc.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(loc.bucket, "backups");
        assert_eq!(loc.prefix, "app/prod");
        assert_eq!(loc.key("config"), "app/prod/config");
        assert_eq!(loc.to_string(), "s3:http://127.0.0.1:9000/backups/app/prod");
    }

    #[test]
    fn aws_form() {
        let loc = S3Location::parse("s3:my-bucket").unwrap();
        assert_eq!(loc.endpoint, None);
        assert_eq!(loc.prefix, "");
        assert_eq!(loc.key("keys/abc"), "keys/abc");
        assert_eq!(loc.to_string(), "s3:my-bucket");
    }

    #[test]
    fn refusals_say_why() {
        for (text, needle) in [
            ("s3:", "no bucket"),
            ("s3://bucket", "not s3://"),
            ("s3:ftp://host/bucket", "http://"),
            ("s3:https://host", "no bucket"),
            ("s3:Upper_Case", "not a valid bucket"),
            ("s3:ok-bucket/a/../b", "`..`"),
        ] {
            let err = S3Location::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
