//! CSRF protection by signed double submit: a token bound to the session, put into every page
//! as it streams and checked on every state-changing request, behind a Fetch-Metadata and
//! Origin gate.
//!
//! A token is `version ‖ issued-at ‖ random ‖ HMAC-SHA-256(key, binding ‖ issued-at ‖ random)`,
//! in base64url. The binding is the application's session cookie when it is configured and
//! present, else a random `__Host-` cookie the layer sets itself, so that a token taken from one
//! session is worthless in another, and no server state is kept. Tokens live `max_age`, plus
//! `grace` for requests already on their way when the page fetched a fresh one.
//!
//! Pages (HTML with identity encoding) get a hidden field at the start of every
//! `<form method="post">`, a `<meta name="csrf-token">` and a small script that sends the token
//! in a header with `fetch` and `XMLHttpRequest`, adds it to forms built later, and refreshes it
//! from the refresh path before it expires. The script carries the CSP nonce of the page, from
//! the CSP layer around this one or from the upstream's own policy.

use std::{
    borrow::Cow,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use lol_html::{
    html_content::ContentType,
    send::{DocumentContentHandlers, ElementContentHandlers},
};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture, PageNonce,
    body::read_whole,
    client_ip::Peer,
    ratelimit::normalize_path,
    reject::{Rejection, RejectionKind},
    rewrite::{self, RewrittenBody, has_body, rewritable_html},
    route::Routes,
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Whether the layer refuses, only logs, or does nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CsrfMode {
    /// Requests that fail a check are refused with 403.
    #[default]
    Enforce,
    /// Failures are logged as security events (action `log`) and the requests pass: for
    /// rolling the protection out on a live site.
    LogOnly,
    /// No checks and no tokens.
    Off,
}

/// The CSRF settings; every field has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrfOptions {
    /// Enforce, log only, or off.
    pub mode: CsrfMode,
    /// The application's session cookie, whose value tokens are bound to when a request has
    /// it; a new session (a login) then means new tokens. Without it (or before the
    /// application sets it), tokens are bound to the layer's own cookie.
    pub session_cookie: Option<String>,
    /// The layer's own cookie: random, `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`.
    pub cookie_name: String,
    /// The form field that carries the token.
    pub field: String,
    /// The request header that carries the token (and the response header with a new one).
    pub header: String,
    /// How long a token is accepted; pages refresh theirs after half of it.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_age: Duration,
    /// How much longer a token that has expired is still accepted.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub grace: Duration,
    /// Where pages fetch a fresh token (`GET`, JSON); the upstream never sees this path.
    pub refresh_path: String,
    /// Other origins whose pages may send state-changing requests here, like
    /// `https://admin.example.com`.
    pub trusted_origins: Vec<String>,
    /// Paths where a successful `POST` is a login: the layer's own cookie, and with it every
    /// token, is replaced in its response (with `session_cookie`, the application's new
    /// session does that).
    pub login_paths: Vec<String>,
    /// Whether pages get the field, the meta tag and the script.
    pub inject: bool,
    /// Where the key is kept; the binary generates one there when the file is missing
    /// (default: `csrf.key` in the state directory).
    pub key_file: Option<std::path::PathBuf>,
}

impl Default for CsrfOptions {
    fn default() -> Self {
        Self {
            mode: CsrfMode::Enforce,
            session_cookie: None,
            cookie_name: "__Host-palisade-csrf".into(),
            field: "palisade_csrf".into(),
            header: "x-csrf-token".into(),
            max_age: Duration::from_secs(8 * 3600),
            grace: Duration::from_secs(3600),
            refresh_path: "/.well-known/palisade/csrf-token".into(),
            trusted_origins: Vec::new(),
            login_paths: Vec::new(),
            inject: true,
            key_file: None,
        }
    }
}

/// The CSRF settings of one route: its own mode (`off` exempts it, for signed webhooks), and
/// whether it is a JSON API, which refuses the content types a plain HTML form can send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfRouteOptions {
    /// The mode for these paths; the global one when not given.
    pub mode: Option<CsrfMode>,
    /// State-changing requests must be `application/json` (or `+json`).
    #[serde(default)]
    pub json: bool,
}

/// A CSRF setting that cannot work, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadCsrfSetting {
    /// The option, like `cookie_name`.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> BadCsrfSetting {
    BadCsrfSetting {
        setting,
        message: message.into(),
    }
}

impl CsrfOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BadCsrfSetting> {
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.cookie_name.is_empty() || !self.cookie_name.chars().all(token_char) {
            return Err(bad(
                "cookie_name",
                format!("`{}` is not a cookie name", self.cookie_name),
            ));
        }
        if !self.cookie_name.starts_with("__Host-") {
            return Err(bad(
                "cookie_name",
                "the cookie must have the __Host- prefix, so that no subdomain can set it; \
                 write it like \"__Host-csrf\"",
            ));
        }
        if let Some(name) = &self.session_cookie
            && (name.is_empty() || !name.chars().all(token_char))
        {
            return Err(bad(
                "session_cookie",
                format!("`{name}` is not a cookie name"),
            ));
        }
        if self.field.is_empty()
            || !self
                .field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(bad(
                "field",
                "use letters, digits, `-` and `_` only, like \"csrf_token\"",
            ));
        }
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(bad(
                "header",
                format!("`{}` is not a header name", self.header),
            ));
        }
        if self.max_age < Duration::from_secs(120) {
            return Err(bad(
                "max_age",
                "tokens must live at least 2 minutes, or pages would spend their time fetching new ones; 8h is the default",
            ));
        }
        if !self.refresh_path.starts_with('/') || self.refresh_path.contains(['?', '#']) {
            return Err(bad(
                "refresh_path",
                "write a path starting with /, without query",
            ));
        }
        for path in &self.login_paths {
            if !path.starts_with('/') {
                return Err(bad(
                    "login_paths",
                    format!("`{path}` is not a path starting with /"),
                ));
            }
        }
        for origin in &self.trusted_origins {
            if parse_origin(origin).is_none() {
                return Err(bad(
                    "trusted_origins",
                    format!(
                        "`{origin}` is not an origin; write it like \"https://admin.example.com\""
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The key tokens are signed with: 32 random bytes. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// The number of bytes in a key.
    pub const LEN: usize = 32;

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self(random())
    }

    /// The key with these bytes; `None` unless there are exactly [`Self::LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The key's bytes, for keeping it in a file.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key for another purpose, derived from this one: HMAC-SHA-256 of `label`. Keys of
    /// different labels are unrelated, and none of them reveals this key or another.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// What a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// The application's session cookie's value.
    Session(String),
    /// The layer's own cookie's value.
    Own(String),
}

impl Binding {
    fn bytes(&self) -> (u8, &[u8]) {
        match self {
            Self::Session(value) => (b's', value.as_bytes()),
            Self::Own(value) => (b'o', value.as_bytes()),
        }
    }
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_BYTES: usize = 1 + 8 + 16 + 32;

fn mac(key: &CsrfKey, binding: &Binding, issued: u64, nonce: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    let (tag, value) = binding.bytes();
    mac.update(b"palisade-csrf\0");
    mac.update(&[tag]);
    mac.update(&(value.len() as u64).to_be_bytes());
    mac.update(value);
    mac.update(&issued.to_be_bytes());
    mac.update(nonce);
    mac
}

/// A token for `binding`, issued at `now` (seconds since the epoch).
fn mint(key: &CsrfKey, binding: &Binding, now: u64) -> String {
    let nonce: [u8; 16] = random();
    let tag = mac(key, binding, now, &nonce).finalize().into_bytes();
    let mut raw = Vec::with_capacity(TOKEN_BYTES);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(&now.to_be_bytes());
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Checks `token` against `binding` at `now`: the rule it breaks, if any. The signature is
/// compared in constant time.
fn verify(
    key: &CsrfKey,
    binding: &Binding,
    token: &str,
    now: u64,
    lifetime: u64,
) -> Result<(), &'static str> {
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| "csrf-token-invalid")?;
    if raw.len() != TOKEN_BYTES || raw[0] != TOKEN_VERSION {
        return Err("csrf-token-invalid");
    }
    let issued = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    mac(key, binding, issued, &raw[9..25])
        .verify_slice(&raw[25..])
        .map_err(|_| "csrf-token-invalid")?;
    // A token from the future (a clock that went back) is as good as a fresh one, within a
    // minute.
    if issued > now + 60 {
        return Err("csrf-token-invalid");
    }
    if now.saturating_sub(issued) > lifetime {
        return Err("csrf-token-expired");
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `scheme://host[:port]` with the default port made explicit, or `None`.
fn parse_origin(text: &str) -> Option<(String, String, u16)> {
    let uri: Uri = text.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = crate::host::normalize(authority.host())?;
    Some((scheme, host, authority.port_u16().unwrap_or(default)))
}

/// What the layer needs at run time.
#[derive(Debug, Clone)]
struct Shared {
    options: CsrfOptions,
    key: CsrfKey,
    routes: Routes<CsrfRouteOptions>,
    trusted: Vec<(String, String, u16)>,
    header: http::HeaderName,
    script: String,
    forms: lol_html::Selector,
    head: lol_html::Selector,
}

impl Shared {
    fn lifetime(&self) -> u64 {
        (self.options.max_age + self.options.grace).as_secs()
    }

    fn refresh_in(&self) -> u64 {
        self.options.max_age.as_secs() / 2
    }

    /// The binding of a request: its session cookie, else the layer's own cookie.
    fn binding(&self, headers: &HeaderMap) -> Option<Binding> {
        let session = self.options.session_cookie.as_deref();
        let mut own = None;
        for (name, value) in cookies(headers) {
            if Some(name) == session && !value.is_empty() {
                return Some(Binding::Session(value.to_string()));
            }
            if name == self.options.cookie_name && is_own_value(value) {
                own = Some(Binding::Own(value.to_string()));
            }
        }
        own
    }

    fn own_cookie(&self, value: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Secure; HttpOnly; SameSite=Lax",
            self.options.cookie_name
        ))
        .expect("a checked cookie name and a base64url value")
    }
}

/// Whether `value` is one the layer could have made: 16 random bytes, base64url.
fn is_own_value(value: &str) -> bool {
    value.len() == 22 && URL_SAFE_NO_PAD.decode(value).is_ok_and(|b| b.len() == 16)
}

fn fresh_own_value() -> String {
    URL_SAFE_NO_PAD.encode(random::<16>())
}

/// The `name=value` pairs of a request's `Cookie` headers (RFC 6265 section 5.4).
pub(crate) fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
}

/// The value the response sets for cookie `name`: `Some("")` when it deletes it.
fn set_cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (pair, attributes) = v.split_once(';').unwrap_or((v, ""));
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name).then(|| {
                let deleted = attributes.split(';').any(|a| {
                    let a = a.trim().to_ascii_lowercase();
                    a == "max-age=0" || a.starts_with("max-age=-")
                });
                if deleted {
                    ""
                } else {
                    value.trim().trim_matches('"')
                }
            })
        })
        .next_back()
}

/// The layer: see the module documentation.
#[derive(Debug, Clone)]
pub struct CsrfLayer {
    shared: Arc<Shared>,
}

impl CsrfLayer {
    /// The layer for `options`, signing with `key`.
    pub fn new(options: &CsrfOptions, key: CsrfKey) -> Result<Self, BadCsrfSetting> {
        options.validate()?;
        let trusted = options
            .trusted_origins
            .iter()
            .filter_map(|o| parse_origin(o))
            .collect();
        let header = http::HeaderName::from_bytes(options.header.as_bytes())
            .map_err(|_| bad("header", "not a header name"))?;
        // The script without its comments and indentation, as every page carries it.
        let script: String = include_str!("csrf.js")
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let script = script
            .replace("__HEADER__", header.as_str())
            .replace("__FIELD__", &options.field)
            .replace("__REFRESH__", &options.refresh_path);
        Ok(Self {
            shared: Arc::new(Shared {
                options: options.clone(),
                key,
                routes: Routes::new(CsrfRouteOptions::default()),
                trusted,
                header,
                script,
                forms: "form[method=\"post\" i]".parse().expect("a valid selector"),
                head: "head".parse().expect("a valid selector"),
            }),
        })
    }

    /// The layer with `route`'s settings for the paths under `prefix`.
    pub fn with_route(self, prefix: &str, route: &CsrfRouteOptions) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        shared.routes = shared.routes.with(prefix, route.clone());
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = Csrf<S>;

    fn layer(&self, inner: S) -> Csrf<S> {
        Csrf {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`CsrfLayer`].
#[derive(Debug, Clone)]
pub struct Csrf<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn changes_state(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

impl<S, ResBody> Service<Request<Body>> for Csrf<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let route = shared.routes.for_path(req.uri().path());
        let mode = route.mode.unwrap_or(shared.options.mode);
        if mode == CsrfMode::Off {
            let future = self.inner.call(req);
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        }
        if req.uri().path() == shared.options.refresh_path {
            return Box::pin(async move { Ok(refresh(&shared, &req)) });
        }
        // The clone that was ready goes with this request; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let json = route.json;
        Box::pin(async move {
            let binding = shared.binding(req.headers());
            let state_changing = changes_state(req.method());
            let req = if state_changing {
                match check(&shared, req, binding.as_ref(), json).await {
                    Ok(req) => req,
                    Err(refused) => match (mode, *refused) {
                        (CsrfMode::LogOnly, (rejection, req)) => {
                            rejection.log(&req);
                            req
                        }
                        (_, (rejection, req)) => return Ok(rejection.respond_to(&req)),
                    },
                }
            } else {
                req
            };
            // Matched as the rate limits match paths, so `/login/` and `/%6cogin` are `/login`.
            let login = state_changing && {
                let path = normalize_path(req.uri().path(), false);
                shared
                    .options
                    .login_paths
                    .iter()
                    .any(|p| normalize_path(p, false) == path)
            };
            let head = req.method() == Method::HEAD;
            let nonce = req.extensions().get::<PageNonce>().cloned();
            let response = inner.call(req).await?;
            Ok(answer(&shared, response, binding, login, head, nonce))
        })
    }
}

/// The refresh endpoint: a fresh token for the request's binding (a new own cookie when it
/// has none), as JSON.
fn refresh(shared: &Shared, req: &Request<Body>) -> Response<Body> {
    if req.method() != Method::GET {
        let mut response = crate::reject::error_page(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "Fresh CSRF tokens are fetched here with GET.",
            None,
            req.headers(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let (binding, cookie) = match shared.binding(req.headers()) {
        Some(binding) => (binding, None),
        None => {
            let value = fresh_own_value();
            (Binding::Own(value.clone()), Some(shared.own_cookie(&value)))
        }
    };
    let body = serde_json::json!({
        "token": mint(&shared.key, &binding, now()),
        "refresh_in": shared.refresh_in(),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    response
}

/// A refusal and the request it refused, for the response (boxed: requests are large).
type Refused = Box<(Rejection, Request<Body>)>;

/// The checks of a state-changing request, in order: where it comes from, its content type
/// on JSON routes, and its token. A refusal gives the request back for the response.
async fn check(
    shared: &Shared,
    req: Request<Body>,
    binding: Option<&Binding>,
    json: bool,
) -> Result<Request<Body>, Refused> {
    let refuse = |req, rule: &'static str, detail: &str| {
        Err(Box::new((
            Rejection::new(RejectionKind::Csrf, rule).with_detail(detail),
            req,
        )))
    };
    if let Some(rule) = cross_origin(shared, &req) {
        return refuse(
            req,
            rule,
            "The request was sent from another site. If you followed a link or a form here, go to this site directly and try again.",
        );
    }
    if json && !is_json(req.headers()) {
        return refuse(
            req,
            "csrf-json-content-type",
            "This address takes JSON only (Content-Type: application/json).",
        );
    }
    // A request without cookies or a browser's stored password carries no session a forgery
    // could ride on.
    let ambient = req.headers().contains_key(header::COOKIE)
        || req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case("basic "));
    if !ambient {
        return Ok(req);
    }
    let (req, token) = token_of(shared, req).await?;
    let reload =
        "The page's security token is missing or out of date. Reload the page and try again.";
    let Some(token) = token else {
        return refuse(req, "csrf-token-missing", reload);
    };
    let Some(binding) = binding else {
        return refuse(req, "csrf-token-invalid", reload);
    };
    match verify(&shared.key, binding, &token, now(), shared.lifetime()) {
        Ok(()) => Ok(req),
        Err(rule) => refuse(req, rule, reload),
    }
}

/// The rule a request from another site breaks: `Sec-Fetch-Site` when the browser sends it,
/// else `Origin`, else `Referer`; a request with none of them passes on to the token check.
fn cross_origin(shared: &Shared, req: &Request<Body>) -> Option<&'static str> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return site
            .as_bytes()
            .eq_ignore_ascii_case(b"cross-site")
            .then_some("csrf-cross-site")
            .filter(|_| !trusted_origin(shared, req, header::ORIGIN));
    }
    if headers.contains_key(header::ORIGIN) {
        return (!trusted_origin(shared, req, header::ORIGIN)).then_some("csrf-origin-mismatch");
    }
    if headers.contains_key(header::REFERER) {
        return (!trusted_origin(shared, req, header::REFERER)).then_some("csrf-referer-mismatch");
    }
    None
}

/// Whether the request's `which` header names its own origin or a trusted one.
fn trusted_origin(shared: &Shared, req: &Request<Body>, which: header::HeaderName) -> bool {
    let Some(origin) = req
        .headers()
        .get(which)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_origin)
    else {
        return false;
    };
    own_origin(req).is_some_and(|own| own == origin) || shared.trusted.contains(&origin)
}

/// The origin the request was sent to: the scheme it arrived by, and its `Host`.
fn own_origin(req: &Request<Body>) -> Option<(String, String, u16)> {
    let tls = req.extensions().get::<Peer>().is_none_or(|peer| peer.tls);
    let scheme = if tls { "https" } else { "http" };
    let authority = match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?.to_string(),
        None => req.uri().authority()?.to_string(),
    };
    parse_origin(&format!("{scheme}://{authority}"))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(media) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let media = media.trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The request's token: its header, else (for form bodies, which are then read whole) its
/// field. The request comes back with its body intact.
async fn token_of(
    shared: &Shared,
    req: Request<Body>,
) -> Result<(Request<Body>, Option<String>), Refused> {
    if let Some(value) = req.headers().get(&shared.header) {
        let token = value.to_str().ok().map(str::to_string);
        return Ok((req, token));
    }
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let kind = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if kind != "application/x-www-form-urlencoded" && kind != "multipart/form-data" {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let bytes = match read_whole(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(rejection) => {
            return Err(Box::new((
                rejection,
                Request::from_parts(parts, Body::empty()),
            )));
        }
    };
    let field = &shared.options.field;
    let token = if kind == "multipart/form-data" {
        multipart_field(&media, bytes.clone(), field).await
    } else {
        form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == field.as_str())
            .map(|(_, value)| value.into_owned())
    };
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

/// The value of text field `name` in a multipart body, if it has one.
async fn multipart_field(content_type: &str, body: Bytes, name: &str) -> Option<String> {
    let boundary = multer::parse_boundary(content_type).ok()?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some(name) && field.file_name().is_none() {
            return field.text().await.ok();
        }
    }
    None
}

/// The response: a new binding when the session changed, and a page with the token put in.
fn answer<B>(
    shared: &Shared,
    response: Response<B>,
    binding: Option<Binding>,
    login: bool,
    head: bool,
    nonce: Option<PageNonce>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let mut binding = binding;
    let mut changed = false;
    // The application started or ended a session: tokens follow it.
    if let Some(name) = &shared.options.session_cookie
        && let Some(value) = set_cookie_value(&parts.headers, name)
    {
        changed = true;
        binding = if value.is_empty() {
            binding.filter(|b| matches!(b, Binding::Own(_)))
        } else {
            Some(Binding::Session(value.to_string()))
        };
    }
    let succeeded = parts.status.as_u16() < 400;
    let rotate = login && succeeded && !matches!(binding, Some(Binding::Session(_)));
    let encoding = (shared.options.inject && !head && has_body(parts.status))
        .then(|| rewritable_html(&parts.headers))
        .flatten();
    if rotate || (binding.is_none() && encoding.is_some()) {
        let value = fresh_own_value();
        parts
            .headers
            .append(header::SET_COOKIE, shared.own_cookie(&value));
        binding = Some(Binding::Own(value));
        changed = true;
    }
    let Some(binding) = binding else {
        return Response::from_parts(parts, Body::new(body));
    };
    let token = mint(&shared.key, &binding, now());
    if changed && let Ok(value) = HeaderValue::from_str(&token) {
        parts.headers.insert(shared.header.clone(), value);
    }
    let Some(encoding) = encoding else {
        return Response::from_parts(parts, Body::new(body));
    };
    let nonce = policy_nonce(&parts.headers).or_else(|| nonce.map(|n| n.get().to_string()));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ETAG);
    let cacheable = parts
        .headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.contains("no-store"));
    if cacheable {
        parts.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    let settings = inject_settings(shared, &token, nonce.as_deref(), encoding);
    Response::from_parts(
        parts,
        Body::new(RewrittenBody::new(body, settings, "CSRF tokens")),
    )
}

/// The nonce of the script sources of a policy the upstream set itself.
fn policy_nonce(headers: &HeaderMap) -> Option<String> {
    let policy = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .or_else(|| headers.get("content-security-policy-report-only"))?
        .to_str()
        .ok()?;
    let directive = policy
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src ") || d.starts_with("script-src-elem "))
        .or_else(|| {
            policy
                .split(';')
                .map(str::trim)
                .find(|d| d.starts_with("default-src "))
        })?;
    directive
        .split_ascii_whitespace()
        .find_map(|s| s.strip_prefix("'nonce-")?.strip_suffix('\''))
        .map(str::to_string)
}

/// The rewriter settings that put the field into forms and the meta tag and script into the
/// page.
fn inject_settings<'s>(
    shared: &'s Shared,
    token: &str,
    nonce: Option<&str>,
    encoding: lol_html::AsciiCompatibleEncoding,
) -> lol_html::send::Settings<'static, 's> {
    let field = format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{token}\">",
        shared.options.field
    );
    let nonce_attribute = nonce
        .map(|n| {
            format!(
                " nonce=\"{}\"",
                html_escape::encode_double_quoted_attribute(n)
            )
        })
        .unwrap_or_default();
    let head = format!(
        "<meta name=\"csrf-token\" content=\"{token}\" data-refresh-in=\"{}\">\
         <script{nonce_attribute}>{}</script>",
        shared.refresh_in(),
        shared.script
    );
    let placed = Arc::new(AtomicBool::new(false));
    let mut settings = rewrite::settings(encoding);
    let form = ElementContentHandlers::default().element(
        move |element: &mut lol_html::send::Element<'_, '_>| {
            element.prepend(&field, ContentType::Html);
            Ok(())
        },
    );
    settings = settings.append_element_content_handler((Cow::Borrowed(&shared.forms), form));
    let (in_head, at_end) = (placed.clone(), placed);
    let head_html = Arc::new(head);
    let end_html = head_html.clone();
    let head_handler = ElementContentHandlers::default().element(
        move |element: &mut lol_html::send::Element<'_, '_>| {
            if !in_head.swap(true, Ordering::Relaxed) {
                element.append(&head_html, ContentType::Html);
            }
            Ok(())
        },
    );
    settings = settings.append_element_content_handler((Cow::Borrowed(&shared.head), head_handler));
    // A page without <head>: at its end, where the script still runs.
    settings = settings.append_document_content_handler(DocumentContentHandlers::default().end(
        move |end: &mut lol_html::html_content::DocumentEnd<'_>| {
            if !at_end.swap(true, Ordering::Relaxed) {
                end.append(&end_html, ContentType::Html);
            }
            Ok(())
        },
    ));
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Binding {
        Binding::Own(fresh_own_value())
    }

    #[test]
    fn a_token_is_good_for_its_binding_and_its_lifetime_only() {
        let key = CsrfKey::generate();
        let binding = own();
        let token = mint(&key, &binding, 1_000_000);
        assert_eq!(token.len(), 76);
        assert_eq!(verify(&key, &binding, &token, 1_000_000, 3600), Ok(()));
        assert_eq!(verify(&key, &binding, &token, 1_003_600, 3600), Ok(()));
        assert_eq!(
            verify(&key, &binding, &token, 1_003_601, 3600),
            Err("csrf-token-expired")
        );
        // Another browser's cookie, another session, another key: worthless.
        assert_eq!(
            verify(&key, &own(), &token, 1_000_000, 3600),
            Err("csrf-token-invalid")
        );
        let session = Binding::Session("abc".into());
        assert_eq!(
            verify(
                &key,
                &session,
                &mint(&key, &Binding::Own("abc".into()), 1),
                1,
                9
            ),
            Err("csrf-token-invalid"),
            "a session value and an own-cookie value never share tokens"
        );
        let other_key = CsrfKey::generate();
        assert_eq!(
            verify(&other_key, &binding, &token, 1_000_000, 3600),
            Err("csrf-token-invalid")
        );
        // A token from the future, a cut one, or one with a flipped bit.
        assert_eq!(
            verify(&key, &binding, &token, 1_000_000 - 61, 3600),
            Err("csrf-token-invalid")
        );
        assert_eq!(
            verify(&key, &binding, &token[..70], 1_000_000, 3600),
            Err("csrf-token-invalid")
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[5] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            verify(&key, &binding, &altered, 1_000_000, 3600),
            Err("csrf-token-invalid")
        );
    }

    #[test]
    fn derived_keys_differ_by_label_and_from_the_key() {
        let key = CsrfKey::from_bytes(&[7; 32]).unwrap();
        let challenge = key.derive("palisade challenge v1");
        assert_eq!(challenge, key.derive("palisade challenge v1"));
        assert_ne!(challenge, key.derive("palisade challenge v2"));
        assert_ne!(&challenge, key.as_bytes());
        let other = CsrfKey::from_bytes(&[8; 32]).unwrap();
        assert_ne!(challenge, other.derive("palisade challenge v1"));
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let key = CsrfKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "CsrfKey(..)");
        assert!(CsrfKey::from_bytes(&[7; 31]).is_none());
    }

    #[test]
    fn set_cookie_values_and_deletions_are_found() {
        let mut headers = HeaderMap::new();
        headers.append(header::SET_COOKIE, "other=1".parse().unwrap());
        headers.append(
            header::SET_COOKIE,
            "session=xyz; Path=/; HttpOnly".parse().unwrap(),
        );
        assert_eq!(set_cookie_value(&headers, "session"), Some("xyz"));
        assert_eq!(set_cookie_value(&headers, "sess"), None);
        headers.append(
            header::SET_COOKIE,
            "session=gone; Max-Age=0".parse().unwrap(),
        );
        assert_eq!(set_cookie_value(&headers, "session"), Some(""));
    }

    #[test]
    fn the_nonce_of_an_upstream_policy_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'nonce-r4nd0m' 'strict-dynamic'"
                .parse()
                .unwrap(),
        );
        assert_eq!(policy_nonce(&headers).as_deref(), Some("r4nd0m"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'nonce-d3f'".parse().unwrap(),
        );
        assert_eq!(policy_nonce(&headers).as_deref(), Some("d3f"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            "script-src 'self'".parse().unwrap(),
        );
        assert_eq!(policy_nonce(&headers), None);
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let origin = |s| parse_origin(s);
        assert_eq!(
            origin("https://Example.com"),
            origin("https://example.com:443")
        );
        assert_ne!(origin("https://example.com"), origin("http://example.com"));
        assert_ne!(
            origin("https://example.com"),
            origin("https://example.com:8443")
        );
        assert_eq!(origin("null"), None);
        assert_eq!(origin("ftp://example.com"), None);
    }

    #[test]
    fn bad_settings_say_what_to_write_instead() {
        let err = |options: CsrfOptions| options.validate().unwrap_err();
        let bad = err(CsrfOptions {
            cookie_name: "csrf".into(),
            ..Default::default()
        });
        assert_eq!(bad.setting, "cookie_name");
        assert!(bad.message.contains("__Host-"), "{}", bad.message);
        let bad = err(CsrfOptions {
            trusted_origins: vec!["admin.example.com".into()],
            ..Default::default()
        });
        assert!(
            bad.message.contains("https://admin.example.com"),
            "{}",
            bad.message
        );
        let bad = err(CsrfOptions {
            max_age: Duration::from_secs(10),
            ..Default::default()
        });
        assert_eq!(bad.setting, "max_age");
        assert!(CsrfOptions::default().validate().is_ok());
    }

    #[tokio::test]
    async fn a_page_without_head_still_gets_the_meta_tag_and_script() {
        let layer = CsrfLayer::new(&CsrfOptions::default(), CsrfKey::generate()).unwrap();
        let service = tower::service_fn(|_req: Request<Body>| async {
            let mut response = Response::new(Body::from("<p>hi</p><form method=post></form>"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = layer.layer(service);
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        let nonce = PageNonce::default();
        req.extensions_mut().insert(nonce.clone());
        let response = service.call(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with("<p>hi</p><form method=post><input type=\"hidden\""),
            "{body}"
        );
        assert!(body.contains("<meta name=\"csrf-token\""), "{body}");
        assert!(
            body.contains(&format!("<script nonce=\"{}\">", nonce.get())),
            "{body}"
        );
        assert_eq!(
            body.matches("<meta name=\"csrf-token\"").count(),
            1,
            "{body}"
        );
    }
}
