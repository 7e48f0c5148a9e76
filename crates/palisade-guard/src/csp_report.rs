//! A collector for Content-Security-Policy violation reports: browsers `POST` them to one path,
//! and each becomes one security event (`csp_violation`) with the directive, the blocked
//! resource's origin and the page's path; nothing else of the report is kept.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    BoxError, BoxFuture,
    client_ip::{ClientAddr, Peer},
    reject::{self, Rejection, RejectionKind},
};

/// Where reports are collected, and how large one may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CspReportOptions {
    /// The path browsers send reports to (`report-uri`).
    pub path: String,
    /// The largest report accepted, in bytes.
    pub max_bytes: usize,
}

impl Default for CspReportOptions {
    fn default() -> Self {
        Self {
            path: "/.well-known/csp-report".into(),
            max_bytes: 16 * 1024,
        }
    }
}

/// What is kept of one violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The directive that was violated, like `script-src-elem`.
    pub directive: String,
    /// The blocked resource's origin (`https://cdn.example`), or a keyword such as `inline`.
    pub blocked: String,
    /// The path of the page, without its query.
    pub page: String,
}

/// The violations in a report body: the `report-uri` format (`{"csp-report": {...}}`) or the
/// Reporting API's (`[{"type": "csp-violation", "body": {...}}]`).
pub fn parse_report(body: &[u8]) -> Option<Vec<Violation>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let reports: Vec<&serde_json::Value> = match &value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter(|item| item["type"] == "csp-violation")
            .map(|item| &item["body"])
            .collect(),
        object => vec![object.get("csp-report")?],
    };
    let field = |report: &serde_json::Value, names: &[&str]| {
        names
            .iter()
            .find_map(|name| report[*name].as_str())
            .unwrap_or("")
            .to_string()
    };
    let violations = reports
        .into_iter()
        .map(|report| Violation {
            directive: field(
                report,
                &[
                    "effective-directive",
                    "effectiveDirective",
                    "violated-directive",
                ],
            ),
            blocked: origin_only(&field(report, &["blocked-uri", "blockedURL"])),
            page: path_only(&field(report, &["document-uri", "documentURL"])),
        })
        .collect();
    Some(violations)
}

/// `https://cdn.example/x.js?token=1` → `https://cdn.example`; keywords stay.
fn origin_only(uri: &str) -> String {
    match uri.parse::<http::Uri>() {
        Ok(parsed) if parsed.scheme().is_some() && parsed.authority().is_some() => {
            format!(
                "{}://{}",
                parsed.scheme_str().unwrap_or(""),
                parsed.authority().map_or("", |a| a.as_str())
            )
        }
        _ => uri
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_graphic())
            .collect(),
    }
}

/// `https://shop.example/cart?session=1` → `/cart`.
fn path_only(uri: &str) -> String {
    uri.parse::<http::Uri>()
        .map(|parsed| parsed.path().chars().take(256).collect())
        .unwrap_or_default()
}

/// Collects reports at the configured path; passes everything else on.
#[derive(Debug, Clone)]
pub struct CspReportLayer {
    options: Arc<CspReportOptions>,
}

impl CspReportLayer {
    /// A collector with these options.
    pub fn new(options: CspReportOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }
}

impl<S> Layer<S> for CspReportLayer {
    type Service = CspReport<S>;

    fn layer(&self, inner: S) -> CspReport<S> {
        CspReport {
            inner,
            options: self.options.clone(),
        }
    }
}

/// The service of [`CspReportLayer`].
#[derive(Debug, Clone)]
pub struct CspReport<S> {
    inner: S,
    options: Arc<CspReportOptions>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CspReport<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.uri().path() != self.options.path {
            return Box::pin(self.inner.call(req));
        }
        if req.method() != Method::POST {
            // The path is the collector's; the upstream never sees it.
            let mut response = reject::error_page(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "CSP violation reports are sent here with POST.",
                None,
                req.headers(),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return Box::pin(async move { Ok(response) });
        }
        let max = self.options.max_bytes;
        Box::pin(async move { Ok(collect(req, max).await) })
    }
}

/// Reads one report and emits its events; 204 when it was one, a rejection otherwise.
async fn collect<ReqBody, ResBody>(req: Request<ReqBody>, max: usize) -> Response<ResBody>
where
    ReqBody: http_body::Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    let (parts, body) = req.into_parts();
    let refuse = |kind, rule| {
        Rejection::new(kind, rule).respond(&parts.uri, &parts.headers, &parts.extensions)
    };
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return refuse(RejectionKind::BodyTooLarge, "csp-report-max-bytes"),
    };
    let Some(violations) = parse_report(&bytes) else {
        return refuse(RejectionKind::Malformed, "csp-report-unreadable");
    };
    let client = parts
        .extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| parts.extensions.get::<Peer>().map(|p| p.addr.ip()));
    for violation in violations {
        let rule = format!("{} {}", violation.directive, violation.blocked);
        reject::record(
            RejectionKind::CspViolation,
            &rule,
            client,
            &violation.page,
            "report",
        );
    }
    let mut response = Response::new(ResBody::from(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_report_formats_keep_only_directive_origin_and_path() {
        let legacy = br#"{"csp-report": {"document-uri": "https://shop.example/cart?session=s3cret",
            "violated-directive": "script-src", "effective-directive": "script-src-elem",
            "blocked-uri": "https://evil.example/x.js?k=1", "original-policy": "default-src 'self'"}}"#;
        let expected = Violation {
            directive: "script-src-elem".into(),
            blocked: "https://evil.example".into(),
            page: "/cart".into(),
        };
        assert_eq!(
            parse_report(legacy).unwrap(),
            std::slice::from_ref(&expected)
        );
        let reporting =
            br#"[{"type": "csp-violation", "body": {"documentURL": "https://shop.example/cart",
            "effectiveDirective": "script-src-elem", "blockedURL": "https://evil.example/x.js"}},
            {"type": "deprecation", "body": {}}]"#;
        assert_eq!(parse_report(reporting).unwrap(), [expected]);
        let inline =
            br#"{"csp-report": {"effective-directive": "script-src", "blocked-uri": "inline"}}"#;
        assert_eq!(parse_report(inline).unwrap()[0].blocked, "inline");
        assert!(parse_report(b"not json").is_none());
        assert!(parse_report(br#"{"other": 1}"#).is_none());
    }
}
