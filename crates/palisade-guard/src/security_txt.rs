//! `/.well-known/security.txt` (RFC 9116) from options, and the check that warns before its
//! `Expires` passes.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::BoxFuture;

/// Where the file is served.
pub const SECURITY_TXT_PATH: &str = "/.well-known/security.txt";

/// How close to `Expires` the check starts to warn.
pub const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(30 * 24);

/// The fields of security.txt; `contact` and `expires` are required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityTxtOptions {
    /// Where to report: `mailto:`, `https://` or `tel:` URIs, most preferred first.
    pub contact: Vec<String>,
    /// When the file's content stops being valid: RFC 3339, like `2027-06-30T00:00:00Z`.
    pub expires: String,
    /// URIs of keys for encrypted reports.
    #[serde(default)]
    pub encryption: Vec<String>,
    /// URIs of the disclosure policy.
    #[serde(default)]
    pub policy: Vec<String>,
    /// Languages reports may be written in, like `en, de`.
    pub preferred_languages: Option<String>,
    /// The file's own canonical URIs.
    #[serde(default)]
    pub canonical: Vec<String>,
}

/// A security.txt option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadSecurityTxt {
    /// The option's name.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl SecurityTxtOptions {
    /// The parsed `Expires`, after checking every field.
    pub fn validate(&self) -> Result<Timestamp, BadSecurityTxt> {
        let bad = |setting, message: String| BadSecurityTxt { setting, message };
        if self.contact.is_empty() {
            return Err(bad(
                "contact",
                "security.txt needs at least one contact, like \"mailto:security@example.com\""
                    .into(),
            ));
        }
        if let Some(contact) = self.contact.iter().find(|c| !is_contact_uri(c)) {
            return Err(bad(
                "contact",
                format!("`{contact}` is not a mailto:, https:// or tel: URI"),
            ));
        }
        let uris = [
            ("encryption", &self.encryption),
            ("policy", &self.policy),
            ("canonical", &self.canonical),
        ];
        for (setting, values) in uris {
            if let Some(value) = values.iter().find(|v| !is_https_or_other_uri(v)) {
                return Err(bad(
                    setting,
                    format!("`{value}` is not a URI (web ones must be https://)"),
                ));
            }
        }
        let fields = [
            self.preferred_languages.iter().collect::<Vec<_>>(),
            self.contact.iter().collect(),
        ];
        if fields.iter().flatten().any(|v| v.contains(['\r', '\n'])) {
            return Err(bad("contact", "values must be one line each".into()));
        }
        self.expires.trim().parse::<Timestamp>().map_err(|_| {
            bad(
                "expires",
                format!(
                    "`{}` is not an RFC 3339 time; write it like 2027-06-30T00:00:00Z",
                    self.expires
                ),
            )
        })
    }

    /// A warning when `Expires` is past or less than 30 days after `now`.
    pub fn expiry_warning(&self, now: Timestamp) -> Option<String> {
        let expires = self.validate().ok()?;
        let left = now.duration_until(expires);
        if left <= SignedDuration::ZERO {
            return Some(format!(
                "security.txt expired at {expires}; set a new `expires` (at most a year ahead)"
            ));
        }
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "security.txt expires at {expires}, in {} day(s); set a new `expires`",
                left.as_hours() / 24
            )
        })
    }

    /// [`expiry_warning`](Self::expiry_warning) at the current time.
    pub fn expiry_warning_now(&self) -> Option<String> {
        self.expiry_warning(Timestamp::now())
    }

    /// The file's text.
    pub fn render(&self, expires: Timestamp) -> String {
        let mut text = String::new();
        let mut line = |name: &str, value: &str| {
            text.push_str(name);
            text.push_str(": ");
            text.push_str(value.trim());
            text.push('\n');
        };
        self.contact.iter().for_each(|v| line("Contact", v));
        line("Expires", &expires.to_string());
        self.encryption.iter().for_each(|v| line("Encryption", v));
        self.policy.iter().for_each(|v| line("Policy", v));
        if let Some(languages) = &self.preferred_languages {
            line("Preferred-Languages", languages);
        }
        self.canonical.iter().for_each(|v| line("Canonical", v));
        text
    }
}

fn is_contact_uri(text: &str) -> bool {
    ["mailto:", "https://", "tel:"]
        .iter()
        .any(|p| text.starts_with(p))
        && !text.contains(char::is_whitespace)
}

fn is_https_or_other_uri(text: &str) -> bool {
    let scheme = text.split_once(':').map(|(s, _)| s);
    let plain = scheme.is_some_and(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    plain && !text.starts_with("http:") && !text.contains(char::is_whitespace)
}

/// Answers `GET /.well-known/security.txt`; passes everything else on.
#[derive(Debug, Clone)]
pub struct SecurityTxtLayer {
    text: Arc<Bytes>,
}

impl SecurityTxtLayer {
    /// The layer for checked `options`.
    pub fn new(options: &SecurityTxtOptions) -> Result<Self, BadSecurityTxt> {
        let expires = options.validate()?;
        Ok(Self {
            text: Arc::new(Bytes::from(options.render(expires))),
        })
    }
}

impl<S> Layer<S> for SecurityTxtLayer {
    type Service = SecurityTxt<S>;

    fn layer(&self, inner: S) -> SecurityTxt<S> {
        SecurityTxt {
            inner,
            text: self.text.clone(),
        }
    }
}

/// The service of [`SecurityTxtLayer`].
#[derive(Debug, Clone)]
pub struct SecurityTxt<S> {
    inner: S,
    text: Arc<Bytes>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityTxt<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let ours = req.uri().path() == SECURITY_TXT_PATH
            && (req.method() == Method::GET || req.method() == Method::HEAD);
        if !ours {
            return Box::pin(self.inner.call(req));
        }
        let mut response = Response::new(ResBody::from(self.text.as_ref().clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Box::pin(async move { Ok(response) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(expires: &str) -> SecurityTxtOptions {
        SecurityTxtOptions {
            contact: vec!["mailto:security@example.com".into()],
            expires: expires.into(),
            preferred_languages: Some("en, de".into()),
            policy: vec!["https://example.com/disclosure".into()],
            ..Default::default()
        }
    }

    #[test]
    fn renders_the_fields_in_order() {
        let options = options("2027-06-30T00:00:00Z");
        let text = options.render(options.validate().unwrap());
        assert_eq!(
            text,
            "Contact: mailto:security@example.com\nExpires: 2027-06-30T00:00:00Z\n\
             Policy: https://example.com/disclosure\nPreferred-Languages: en, de\n"
        );
    }

    #[test]
    fn contact_and_expires_are_required() {
        let mut missing = options("2027-06-30T00:00:00Z");
        missing.contact.clear();
        assert_eq!(missing.validate().unwrap_err().setting, "contact");
        assert_eq!(
            options("next year").validate().unwrap_err().setting,
            "expires"
        );
        let mut plain_http = options("2027-06-30T00:00:00Z");
        plain_http.policy = vec!["http://example.com/policy".into()];
        assert_eq!(plain_http.validate().unwrap_err().setting, "policy");
    }

    #[test]
    fn expiry_warnings_start_thirty_days_ahead() {
        let now: Timestamp = "2027-06-01T00:00:00Z".parse().unwrap();
        assert!(
            options("2027-12-01T00:00:00Z")
                .expiry_warning(now)
                .is_none()
        );
        let soon = options("2027-06-20T00:00:00Z").expiry_warning(now).unwrap();
        assert!(soon.contains("in 19 day(s)"), "{soon}");
        let past = options("2027-05-01T00:00:00Z").expiry_warning(now).unwrap();
        assert!(past.contains("expired"), "{past}");
    }
}
