//! Security headers on every response, with safe defaults, and hardening of the upstream's
//! `Set-Cookie` headers.
//!
//! HSTS goes only on TLS connections (and on requests without a [`Peer`], whose server is
//! assumed to terminate TLS); `Server` and `X-Powered-By` are always removed.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{BoxFuture, client_ip::Peer, route::Routes};

/// The shortest HSTS `max-age` accepted: two years, in seconds.
pub const MIN_HSTS_MAX_AGE: u64 = 63_072_000;

/// Which pages may frame this site: `X-Frame-Options` and CSP `frame-ancestors`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameOptions {
    /// None: `DENY`, `frame-ancestors 'none'`.
    #[default]
    Deny,
    /// Only the site itself: `SAMEORIGIN`, `frame-ancestors 'self'`.
    SameOrigin,
}

/// The `SameSite` attribute added to cookies that have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SameSite {
    /// `SameSite=Strict`.
    #[serde(alias = "strict")]
    Strict,
    /// `SameSite=Lax`: the browsers' own default, made explicit.
    #[default]
    #[serde(alias = "lax")]
    Lax,
    /// `SameSite=None` (only with `Secure`).
    #[serde(alias = "none")]
    None,
}

/// What is added to every upstream `Set-Cookie` that lacks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieOptions {
    /// Add `Secure`.
    pub secure: bool,
    /// Add `HttpOnly`, except to the cookies named in `http_only_exempt`.
    pub http_only: bool,
    /// Cookies the page's scripts must read (a CSRF token cookie, say).
    pub http_only_exempt: Vec<String>,
    /// Add `SameSite` with this value; leave out to add none.
    pub same_site: Option<SameSite>,
}

impl Default for CookieOptions {
    fn default() -> Self {
        Self {
            secure: true,
            http_only: true,
            http_only_exempt: Vec::new(),
            same_site: Some(SameSite::Lax),
        }
    }
}

/// The security headers and their values; every field has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersOptions {
    /// HSTS `max-age` in seconds; at least [`MIN_HSTS_MAX_AGE`].
    pub hsts_max_age: u64,
    /// HSTS `includeSubDomains`.
    pub hsts_include_subdomains: bool,
    /// HSTS `preload`: only once every subdomain serves HTTPS, as it is hard to undo.
    pub hsts_preload: bool,
    /// Who may frame the site.
    pub frame_options: FrameOptions,
    /// `Referrer-Policy` (when the upstream sets none).
    pub referrer_policy: String,
    /// `Permissions-Policy` (when the upstream sets none).
    pub permissions_policy: String,
    /// `Cross-Origin-Opener-Policy` (when the upstream sets none).
    pub cross_origin_opener_policy: String,
    /// `Cross-Origin-Resource-Policy` (when the upstream sets none).
    pub cross_origin_resource_policy: String,
    /// `Cross-Origin-Embedder-Policy`, off by default as it breaks most cross-origin embeds.
    pub cross_origin_embedder_policy: Option<String>,
    /// Cookie hardening.
    pub cookies: CookieOptions,
}

impl Default for SecurityHeadersOptions {
    fn default() -> Self {
        Self {
            hsts_max_age: MIN_HSTS_MAX_AGE,
            hsts_include_subdomains: true,
            hsts_preload: false,
            frame_options: FrameOptions::Deny,
            referrer_policy: "strict-origin-when-cross-origin".into(),
            permissions_policy: "accelerometer=(), camera=(), geolocation=(), gyroscope=(), \
                                 magnetometer=(), microphone=(), payment=(), usb=()"
                .into(),
            cross_origin_opener_policy: "same-origin".into(),
            cross_origin_resource_policy: "same-origin".into(),
            cross_origin_embedder_policy: None,
            cookies: CookieOptions::default(),
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadHeaderSetting {
    /// The option's name.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl SecurityHeadersOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BadHeaderSetting> {
        self.prepare().map(|_| ())
    }

    fn prepare(&self) -> Result<Prepared, BadHeaderSetting> {
        if self.hsts_max_age < MIN_HSTS_MAX_AGE {
            return Err(BadHeaderSetting {
                setting: "hsts_max_age",
                message: format!(
                    "{} is shorter than two years; set it to {MIN_HSTS_MAX_AGE} or more",
                    self.hsts_max_age
                ),
            });
        }
        if self.hsts_preload && !self.hsts_include_subdomains {
            return Err(BadHeaderSetting {
                setting: "hsts_preload",
                message: "preload lists require includeSubDomains; set \
                          hsts_include_subdomains = true"
                    .into(),
            });
        }
        let mut hsts = format!("max-age={}", self.hsts_max_age);
        if self.hsts_include_subdomains {
            hsts.push_str("; includeSubDomains");
        }
        if self.hsts_preload {
            hsts.push_str("; preload");
        }
        let (frame, ancestors) = match self.frame_options {
            FrameOptions::Deny => ("DENY", "frame-ancestors 'none'"),
            FrameOptions::SameOrigin => ("SAMEORIGIN", "frame-ancestors 'self'"),
        };
        let value = |setting: &'static str, text: &str| {
            HeaderValue::from_str(text).map_err(|_| BadHeaderSetting {
                setting,
                message: format!("`{text}` is not a valid header value"),
            })
        };
        let mut defaults = vec![
            (
                header::REFERRER_POLICY,
                value("referrer_policy", &self.referrer_policy)?,
            ),
            (
                HeaderName::from_static("permissions-policy"),
                value("permissions_policy", &self.permissions_policy)?,
            ),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                value(
                    "cross_origin_opener_policy",
                    &self.cross_origin_opener_policy,
                )?,
            ),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                value(
                    "cross_origin_resource_policy",
                    &self.cross_origin_resource_policy,
                )?,
            ),
        ];
        if let Some(coep) = &self.cross_origin_embedder_policy {
            defaults.push((
                HeaderName::from_static("cross-origin-embedder-policy"),
                value("cross_origin_embedder_policy", coep)?,
            ));
        }
        Ok(Prepared {
            hsts: value("hsts_max_age", &hsts)?,
            frame_options: HeaderValue::from_static(frame),
            frame_ancestors: ancestors,
            defaults,
            cookies: self.cookies.clone(),
        })
    }
}

#[derive(Debug, Clone)]
struct Prepared {
    hsts: HeaderValue,
    frame_options: HeaderValue,
    frame_ancestors: &'static str,
    defaults: Vec<(HeaderName, HeaderValue)>,
    cookies: CookieOptions,
}

impl Prepared {
    fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        headers.remove(header::SERVER);
        headers.remove("x-powered-by");
        if tls {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, self.hsts.clone());
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, self.frame_options.clone());
        self.add_frame_ancestors(headers);
        for (name, value) in &self.defaults {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        self.harden_cookies(headers);
    }

    /// The response's CSP (the upstream's, or the one [`crate::csp`] set) with
    /// `frame-ancestors` added when it lacks one; `frame-ancestors` alone without a policy.
    fn add_frame_ancestors(&self, headers: &mut HeaderMap) {
        let csp = header::CONTENT_SECURITY_POLICY;
        let Some(policy) = headers.get(&csp).and_then(|v| v.to_str().ok()) else {
            headers.insert(csp, HeaderValue::from_static(self.frame_ancestors));
            return;
        };
        let value = with_frame_ancestors(policy, self.frame_ancestors);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(csp, value);
        }
    }

    fn harden_cookies(&self, headers: &mut HeaderMap) {
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        if cookies.is_empty() {
            return;
        }
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            let hardened = cookie
                .to_str()
                .ok()
                .map(|text| harden_cookie(text, &self.cookies))
                .and_then(|text| HeaderValue::from_str(&text).ok())
                .unwrap_or(cookie);
            headers.append(header::SET_COOKIE, hardened);
        }
    }
}

/// `policy`, with `ancestors` appended unless it has a `frame-ancestors` directive.
fn with_frame_ancestors(policy: &str, ancestors: &str) -> String {
    let has = policy
        .split(';')
        .any(|d| d.trim().to_ascii_lowercase().starts_with("frame-ancestors"));
    match has {
        true => policy.to_string(),
        false => format!("{}; {ancestors}", policy.trim_end_matches([';', ' '])),
    }
}

/// `Set-Cookie` value `text` with the missing attributes added. Names with the `__Host-`
/// prefix are made valid for it (`Secure`, `Path=/`, no `Domain`), or browsers drop them.
pub fn harden_cookie(text: &str, options: &CookieOptions) -> String {
    let mut parts = text.split(';').map(str::trim);
    let pair = parts.next().unwrap_or("");
    let name = pair.split('=').next().unwrap_or("").trim();
    let host_prefix = name.starts_with("__Host-");
    let attribute = |part: &str| {
        part.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let mut attributes: Vec<String> = parts
        .filter(|part| !part.is_empty())
        .filter(|part| !(host_prefix && matches!(attribute(part).as_str(), "domain" | "path")))
        .map(str::to_string)
        .collect();
    let has =
        |attributes: &[String], wanted: &str| attributes.iter().any(|a| attribute(a) == wanted);

    if host_prefix {
        attributes.push("Path=/".into());
    }
    let needs_secure = options.secure || host_prefix || name.starts_with("__Secure-");
    if needs_secure && !has(&attributes, "secure") {
        attributes.push("Secure".into());
    }
    let exempt = options.http_only_exempt.iter().any(|n| n == name);
    if options.http_only && !exempt && !has(&attributes, "httponly") {
        attributes.push("HttpOnly".into());
    }
    if let Some(same_site) = options.same_site
        && !has(&attributes, "samesite")
    {
        let value = match same_site {
            SameSite::Strict => "SameSite=Strict",
            SameSite::Lax => "SameSite=Lax",
            SameSite::None => "SameSite=None",
        };
        attributes.push(value.into());
    }
    std::iter::once(pair.to_string())
        .chain(attributes)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sets the security headers on every response; see the module documentation. Routes given
/// with [`with_route`](Self::with_route) get their own settings.
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    routes: Arc<Routes<Prepared>>,
}

impl SecurityHeadersLayer {
    /// The layer for checked `options`.
    pub fn new(options: &SecurityHeadersOptions) -> Result<Self, BadHeaderSetting> {
        Ok(Self {
            routes: Arc::new(Routes::new(options.prepare()?)),
        })
    }

    /// The layer with `options` for the paths under `prefix` (`/embed` covers `/embed` and
    /// `/embed/...`, not `/embedded`).
    pub fn with_route(
        self,
        prefix: &str,
        options: &SecurityHeadersOptions,
    ) -> Result<Self, BadHeaderSetting> {
        let routes = Arc::unwrap_or_clone(self.routes).with(prefix, options.prepare()?);
        Ok(Self {
            routes: Arc::new(routes),
        })
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> SecurityHeaders<S> {
        SecurityHeaders {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    routes: Arc<Routes<Prepared>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityHeaders<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let tls = req.extensions().get::<Peer>().is_none_or(|peer| peer.tls);
        let routes = self.routes.clone();
        let path = req.uri().path().to_string();
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            routes.for_path(&path).apply(response.headers_mut(), tls);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(headers: &mut HeaderMap, tls: bool) {
        SecurityHeadersOptions::default()
            .prepare()
            .unwrap()
            .apply(headers, tls);
    }

    #[test]
    fn defaults_set_every_header_and_remove_server() {
        let mut headers = HeaderMap::new();
        headers.insert(header::SERVER, HeaderValue::from_static("nginx/1.2"));
        headers.insert("x-powered-by", HeaderValue::from_static("PHP/5"));
        apply(&mut headers, true);
        assert_eq!(
            headers[header::STRICT_TRANSPORT_SECURITY],
            "max-age=63072000; includeSubDomains"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "frame-ancestors 'none'"
        );
        assert_eq!(headers["cross-origin-opener-policy"], "same-origin");
        assert!(headers.contains_key("permissions-policy"));
        assert!(headers.contains_key(header::REFERRER_POLICY));
        assert!(!headers.contains_key(header::SERVER));
        assert!(!headers.contains_key("x-powered-by"));
        assert!(!headers.contains_key("cross-origin-embedder-policy"));
    }

    #[test]
    fn no_hsts_over_plain_http() {
        let mut headers = HeaderMap::new();
        apply(&mut headers, false);
        assert!(!headers.contains_key(header::STRICT_TRANSPORT_SECURITY));
    }

    #[test]
    fn an_upstream_policy_gets_frame_ancestors_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self';"),
        );
        apply(&mut headers, true);
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors 'none'"
        );
    }

    #[test]
    fn a_policy_set_before_gets_frame_ancestors_and_one_with_its_own_is_kept() {
        let prepared = SecurityHeadersOptions::default().prepare().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self';"),
        );
        prepared.apply(&mut headers, true);
        let expected = "default-src 'self'; frame-ancestors 'none'";
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], expected);
        let mut own = HeaderMap::new();
        let upstream = "script-src 'none'; frame-ancestors 'self'";
        own.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(upstream),
        );
        prepared.apply(&mut own, true);
        assert_eq!(own[header::CONTENT_SECURITY_POLICY], upstream);
    }

    #[test]
    fn routes_match_whole_segments_and_the_longest_prefix_wins() {
        let frames = |frame_options| SecurityHeadersOptions {
            frame_options,
            ..Default::default()
        };
        let layer = SecurityHeadersLayer::new(&frames(FrameOptions::Deny))
            .and_then(|l| l.with_route("/embed", &frames(FrameOptions::SameOrigin)))
            .and_then(|l| l.with_route("/embed/private/", &frames(FrameOptions::Deny)))
            .unwrap();
        let frame = |path: &str| {
            let mut headers = HeaderMap::new();
            layer.routes.for_path(path).apply(&mut headers, true);
            headers[header::X_FRAME_OPTIONS]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(frame("/embed"), "SAMEORIGIN");
        assert_eq!(frame("/embed/widget"), "SAMEORIGIN");
        assert_eq!(frame("/embedded"), "DENY");
        assert_eq!(frame("/embed/private/x"), "DENY");
        assert_eq!(frame("/%65mbed/%70rivate/x"), "DENY");
        assert_eq!(frame("/embed%2Fprivate/x"), "DENY");
        assert_eq!(frame("/"), "DENY");
    }

    #[test]
    fn short_hsts_and_preload_without_subdomains_are_refused() {
        let short = SecurityHeadersOptions {
            hsts_max_age: 3600,
            ..Default::default()
        };
        assert_eq!(short.validate().unwrap_err().setting, "hsts_max_age");
        let preload = SecurityHeadersOptions {
            hsts_preload: true,
            hsts_include_subdomains: false,
            ..Default::default()
        };
        assert_eq!(preload.validate().unwrap_err().setting, "hsts_preload");
    }

    #[test]
    fn same_site_is_read_in_either_case() {
        let read = |text: &str| serde_json::from_str::<SameSite>(text).unwrap();
        assert_eq!(read("\"Strict\""), SameSite::Strict);
        assert_eq!(read("\"strict\""), SameSite::Strict);
        assert_eq!(read("\"none\""), SameSite::None);
    }

    #[test]
    fn cookies_get_missing_attributes_only() {
        let options = CookieOptions::default();
        assert_eq!(
            harden_cookie("sid=abc; Path=/", &options),
            "sid=abc; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            harden_cookie("sid=abc; secure; SameSite=Strict; httponly", &options),
            "sid=abc; secure; SameSite=Strict; httponly"
        );
        let exempt = CookieOptions {
            http_only_exempt: vec!["csrf".into()],
            ..Default::default()
        };
        assert_eq!(
            harden_cookie("csrf=t", &exempt),
            "csrf=t; Secure; SameSite=Lax"
        );
    }

    #[test]
    fn host_prefixed_cookies_are_made_valid_for_their_prefix() {
        let options = CookieOptions {
            secure: false,
            http_only: false,
            http_only_exempt: Vec::new(),
            same_site: None,
        };
        assert_eq!(
            harden_cookie("__Host-sid=1; Domain=example.com; Path=/app", &options),
            "__Host-sid=1; Path=/; Secure"
        );
        assert_eq!(
            harden_cookie("__Secure-a=1", &options),
            "__Secure-a=1; Secure"
        );
        assert_eq!(harden_cookie("plain=1", &options), "plain=1");
    }
}
