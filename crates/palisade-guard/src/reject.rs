//! Rejections: every refused request gets a small branded page (or JSON when the client
//! prefers it) and emits exactly one security event, through [`Rejection::respond`].

use std::{borrow::Cow, net::IpAddr};

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};

use crate::client_ip::{ClientAddr, Peer};

/// The tracing target of every security event.
pub const SECURITY_TARGET: &str = "palisade::security";

/// Why a request was refused. The same name is the log field, and later the metric label and
/// the dashboard category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// Framing that two parsers could read differently (request smuggling, desync).
    AmbiguousFraming,
    /// A request that is malformed in another way (no host, say).
    Malformed,
    /// A `Host` that is not one of the configured host names.
    UnknownHost,
    /// A request target longer than the limit.
    UriTooLong,
    /// A body larger than the limit.
    BodyTooLarge,
    /// A request line and headers larger than the limit, or too many headers.
    HeadersTooLarge,
    /// Headers that did not arrive within the header read timeout (slowloris).
    SlowHeaders,
    /// A body whose next bytes did not arrive within the body read timeout.
    SlowBody,
    /// Not a refusal: a browser's report that the Content-Security-Policy blocked something.
    CspViolation,
    /// A state-changing request without a valid CSRF token, or sent from another site.
    Csrf,
    /// Input that breaks the route's validation rules (method, content type, schema,
    /// parameters).
    InvalidInput,
    /// Input that the attack signatures match.
    Attack,
    /// An upload whose type, name or size the route does not accept.
    UploadRefused,
    /// An upload the virus scanner flagged.
    Malware,
    /// More requests than a rate limit allows.
    RateLimited,
    /// An upload that could not be scanned because the virus scanner did not answer.
    ScanUnavailable,
    /// Not a refusal: input the gateway cleaned and passed on (markup removed from rich text,
    /// a path taken out of an upload's file name).
    Sanitized,
    /// An account locked out for one source after too many failed logins from it (action
    /// `lockout` when it starts, `reject` for each attempt refused during it).
    LockedOut,
    /// Not a refusal: a login attempt held back because of earlier failures.
    LoginDelayed,
    /// Not a refusal: failed logins spread over many accounts from one source, or over many
    /// sources on one account.
    CredentialStuffing,
    /// The shared state (login counters, Redis) could not be reached.
    StateUnavailable,
    /// A request that must first be let through by a challenge (a proof of work, or a CAPTCHA
    /// when one is configured), or an answer to a challenge that was refused.
    ChallengeRequired,
}

impl RejectionKind {
    /// The snake_case name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::Malformed => "malformed",
            Self::UnknownHost => "unknown_host",
            Self::UriTooLong => "uri_too_long",
            Self::BodyTooLarge => "body_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::SlowHeaders => "slow_headers",
            Self::SlowBody => "slow_body",
            Self::CspViolation => "csp_violation",
            Self::Csrf => "csrf",
            Self::InvalidInput => "invalid_input",
            Self::Attack => "attack",
            Self::UploadRefused => "upload_refused",
            Self::Malware => "malware",
            Self::RateLimited => "rate_limited",
            Self::ScanUnavailable => "scan_unavailable",
            Self::Sanitized => "sanitized",
            Self::LockedOut => "locked_out",
            Self::LoginDelayed => "login_delayed",
            Self::CredentialStuffing => "credential_stuffing",
            Self::StateUnavailable => "state_unavailable",
            Self::ChallengeRequired => "challenge_required",
        }
    }

    /// The status a response for this kind has.
    pub fn status(self) -> StatusCode {
        match self {
            Self::AmbiguousFraming | Self::Malformed => StatusCode::BAD_REQUEST,
            Self::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::SlowHeaders | Self::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Self::CspViolation => StatusCode::NO_CONTENT,
            // 403, not 429: the client must act (solve the challenge), and waiting does not
            // help, while clients and libraries retry a 429 by themselves after a pause.
            Self::Csrf | Self::Attack | Self::Malware | Self::ChallengeRequired => {
                StatusCode::FORBIDDEN
            }
            Self::InvalidInput => StatusCode::BAD_REQUEST,
            Self::UploadRefused => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited | Self::LockedOut => StatusCode::TOO_MANY_REQUESTS,
            Self::ScanUnavailable | Self::StateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Sanitized | Self::LoginDelayed | Self::CredentialStuffing => StatusCode::OK,
        }
    }

    /// The short explanation its page gives.
    pub fn message(self) -> &'static str {
        match self {
            Self::AmbiguousFraming => "The request's length or encoding is ambiguous.",
            Self::Malformed => "The request is malformed.",
            Self::UnknownHost => "This server does not answer for the host name requested.",
            Self::UriTooLong => "The requested address is too long.",
            Self::BodyTooLarge => "The request body is too large.",
            Self::HeadersTooLarge => "The request headers are too large.",
            Self::SlowHeaders => "The request headers took too long to arrive.",
            Self::SlowBody => "The request body took too long to arrive.",
            Self::CspViolation => "The report was received.",
            Self::Csrf => {
                "The request did not come from this site's own pages. Reload the page and try again."
            }
            Self::InvalidInput => "The request's input is not valid.",
            Self::Attack => "The request was blocked because it looks like an attack.",
            Self::UploadRefused => "The uploaded file is not accepted here.",
            Self::Malware => "The uploaded file was refused because it contains malware.",
            Self::RateLimited => "Too many requests. Please wait a moment and try again.",
            Self::ScanUnavailable => {
                "The uploaded file could not be checked for malware just now. Please try again shortly."
            }
            Self::Sanitized => "The request's input was cleaned.",
            Self::LockedOut => {
                "Too many failed sign-in attempts for this account from your network. Please try again later."
            }
            Self::LoginDelayed => "The sign-in attempt was held back.",
            Self::CredentialStuffing => "Failed sign-ins look like credential stuffing.",
            Self::StateUnavailable => {
                "The server cannot check sign-in attempts just now. Please try again shortly."
            }
            Self::ChallengeRequired => {
                "Before this request can go on, your browser must pass a quick check. It runs by itself and takes a few seconds."
            }
        }
    }
}

/// A policy decision to refuse a request: its kind, the rule that made it and, optionally, a
/// short explanation for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, in general.
    pub kind: RejectionKind,
    /// The exact rule, such as `content-length-with-transfer-encoding` or a signature's id.
    pub rule: Cow<'static, str>,
    /// What the page says instead of the kind's general message: it must be safe to show to
    /// the client (no secrets, no echo of the input beyond names the route's config gave).
    pub detail: Option<String>,
}

impl Rejection {
    /// A rejection of `kind` by `rule`.
    pub fn new(kind: RejectionKind, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            rule: rule.into(),
            detail: None,
        }
    }

    /// The same rejection, explained to the client by `detail` (HTML-encoded on the page).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Emits the security event for a request that a log-only or detect-only setting lets
    /// through: action `log`, no response.
    pub fn log<T>(&self, req: &Request<T>) {
        self.record_as(req.uri(), req.extensions(), "log");
    }

    /// Emits the security event for a request with these parts that is let through with
    /// `action` (`log`, or `sanitize` for input that was cleaned), or answered by the caller
    /// itself (`challenge` for a challenge page), without a response.
    pub fn record_as(&self, uri: &Uri, extensions: &Extensions, action: &'static str) {
        record(
            self.kind,
            &self.rule,
            client_of(extensions),
            &route_of(uri),
            action,
        );
    }

    /// The response for `req`, after emitting the security event.
    pub fn respond_to<T, B: From<Bytes>>(self, req: &Request<T>) -> Response<B> {
        self.respond(req.uri(), req.headers(), req.extensions())
    }

    /// The response for a request with these parts, after emitting the security event.
    pub fn respond<B: From<Bytes>>(
        self,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Response<B> {
        let route = route_of(uri);
        record(
            self.kind,
            &self.rule,
            client_of(extensions),
            &route,
            "reject",
        );
        let message = self.detail.as_deref().unwrap_or(self.kind.message());
        error_page(self.kind.status(), message, Some(self.kind), headers)
    }
}

/// Emits the security event of one refusal: the only place such events are made. `action` is
/// `reject` when a response went out, `close` when the connection was closed instead (a
/// client too slow to send its headers), `log` when a log-only setting let the request pass.
pub fn record(
    kind: RejectionKind,
    rule: &str,
    client: Option<IpAddr>,
    route: &str,
    action: &'static str,
) {
    tracing::warn!(
        target: SECURITY_TARGET,
        kind = kind.as_str(),
        client = client.map(|ip| ip.to_string()).unwrap_or_default(),
        route,
        rule,
        action,
        status = kind.status().as_u16(),
    );
}

/// Emits the security event of a login attempt: [`record`]'s fields and the account it was
/// for (control characters replaced, cut to 128 characters).
pub fn record_login(
    kind: RejectionKind,
    rule: &str,
    client: Option<IpAddr>,
    route: &str,
    action: &'static str,
    account: &str,
) {
    let account: String = account
        .chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    tracing::warn!(
        target: SECURITY_TARGET,
        kind = kind.as_str(),
        client = client.map(|ip| ip.to_string()).unwrap_or_default(),
        route,
        rule,
        action,
        status = kind.status().as_u16(),
        account,
    );
}

/// Marks a response the gateway made itself (a refusal, an error page), so that a layer
/// further out can tell it from the application's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayMade;

/// A page for `status` (a rejection's, or a gateway error such as 502), as HTML or JSON by the
/// request's `Accept`.
pub fn error_page<B: From<Bytes>>(
    status: StatusCode,
    message: &str,
    kind: Option<RejectionKind>,
    request_headers: &HeaderMap,
) -> Response<B> {
    let (content_type, body) = if prefers_json(request_headers) {
        let mut error = serde_json::json!({
            "status": status.as_u16(),
            "message": message,
        });
        if let Some(kind) = kind {
            error["kind"] = kind.as_str().into();
        }
        let value = serde_json::json!({ "error": error });
        ("application/json", value.to_string())
    } else {
        ("text/html; charset=utf-8", html_page(status, message, kind))
    };
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.extensions_mut().insert(GatewayMade);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

fn html_page(status: StatusCode, message: &str, kind: Option<RejectionKind>) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let message = html_escape::encode_text(message);
    branded_page(&title, &format!("<p>{message}</p>"), kind)
}

/// The gateway's own page: `title` (text) as its heading, then `body` (HTML, encoded by the
/// caller), then the gateway's name and the kind.
pub(crate) fn branded_page(title: &str, body: &str, kind: Option<RejectionKind>) -> String {
    let title = html_escape::encode_text(title);
    let tag = kind
        .map(|k| format!(" · {}", k.as_str()))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;\
         padding:0 1rem;color:#222}}small{{color:#666}}progress{{width:100%}}</style></head>\
         <body><h1>{title}</h1>{body}\
         <p><small>Palisade gateway{tag}</small></p></body></html>\n"
    )
}

/// Whether `Accept` ranks `application/json` above `text/html`.
pub fn prefers_json(headers: &HeaderMap) -> bool {
    let (mut json, mut html) = (0.0_f32, 0.0_f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/json" => json = json.max(q),
                "text/html" => html = html.max(q),
                _ => {}
            }
        }
    }
    json > html
}

/// The resolved client address, or the peer's when no resolver ran.
pub(crate) fn client_of(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<Peer>().map(|p| p.addr.ip()))
}

/// The path, without the query (which may carry tokens), cut to 256 bytes.
pub(crate) fn route_of(uri: &Uri) -> String {
    crate::cut(uri.path(), 256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn json_only_when_ranked_above_html() {
        assert!(prefers_json(&accept("application/json")));
        assert!(prefers_json(&accept("text/html;q=0.5, application/json")));
        assert!(!prefers_json(&accept("text/html,application/json;q=0.9")));
        assert!(!prefers_json(&accept("*/*")));
        assert!(!prefers_json(&HeaderMap::new()));
    }

    #[test]
    fn a_rejection_is_a_page_with_its_status() {
        let req = Request::get("/login?token=secret").body(()).unwrap();
        let rejection = Rejection::new(RejectionKind::UnknownHost, "host-not-configured");
        let response: Response<Bytes> = rejection.respond_to(&req);
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        let body = String::from_utf8(response.body().to_vec()).unwrap();
        assert!(body.contains("421 Misdirected Request"), "{body}");
        assert!(!body.contains("secret"));
    }

    #[test]
    fn a_rejection_is_json_when_asked() {
        let mut req = Request::get("/").body(()).unwrap();
        *req.headers_mut() = accept("application/json");
        let rejection = Rejection::new(RejectionKind::BodyTooLarge, "max-body-size");
        let response: Response<Bytes> = rejection.respond_to(&req);
        let value: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(value["error"]["status"], 413);
        assert_eq!(value["error"]["kind"], "body_too_large");
        // A gateway error that is no rejection has no kind, rather than a null one.
        let response: Response<Bytes> =
            error_page(StatusCode::SERVICE_UNAVAILABLE, "down", None, req.headers());
        let value: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": {"status": 503, "message": "down"}})
        );
    }

    #[test]
    fn a_detail_replaces_the_message_and_is_encoded() {
        let req = Request::post("/signup").body(()).unwrap();
        let rejection = Rejection::new(RejectionKind::InvalidInput, "schema")
            .with_detail("field <email> is not an e-mail address");
        let response: Response<Bytes> = rejection.respond_to(&req);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8(response.body().to_vec()).unwrap();
        assert!(body.contains("field &lt;email&gt; is not"), "{body}");
        assert!(
            !body.contains(RejectionKind::InvalidInput.message()),
            "{body}"
        );
    }

    #[test]
    fn a_long_path_is_cut_to_256_bytes_for_the_event() {
        // One request cannot write kilobytes of log.
        let long = format!("/{}", "a".repeat(9000));
        let uri: Uri = long.parse().unwrap();
        assert_eq!(route_of(&uri).len(), 256);
    }

    #[test]
    fn route_is_cut_on_a_character_boundary() {
        let long: String = "é".repeat(300);
        let uri: Uri = format!("/{}", long.replace('é', "%C3%A9")).parse().unwrap();
        assert!(route_of(&uri).len() <= 256);
    }
}
