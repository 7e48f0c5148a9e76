//! Content-Security-Policy: a policy builder with strict defaults, enforced or report-only, and a
//! fresh nonce per HTML response, put on the inline scripts and styles the layer is told to
//! trust while the page streams through (lol_html) and named in the policy.
//!
//! A response whose upstream set a policy of its own (enforced or report-only) is left alone:
//! its page is not rewritten, as new nonces would break the upstream's. Every other response
//! gets the policy; an HTML one, with identity encoding and an ASCII-compatible charset, also
//! gets the nonces, loses `Content-Length` and `ETag`, and is marked uncacheable (the nonce must
//! never be served twice). Navigations are asked for uncompressed, so that the page can be
//! rewritten; any other HTML gets the policy without nonces, which blocks its inline code.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use lol_html::{AsciiCompatibleEncoding, Selector, send::ElementContentHandlers};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    rewrite::{self, RewrittenBody, accepts_html, has_body, rewritable_html},
    route::Routes,
};

/// Whether the policy blocks or only reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CspMode {
    /// `Content-Security-Policy`: violations are blocked (and reported).
    #[default]
    Enforce,
    /// `Content-Security-Policy-Report-Only`: violations are only reported, for trying a policy
    /// out on a live site before enforcing it.
    ReportOnly,
    /// No policy from this layer (`frame-ancestors` still comes with the security headers).
    Off,
}

/// One directive's value in the options: its sources, `true` for a directive without sources
/// (`upgrade-insecure-requests`), or `false` to remove a default one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DirectiveValue {
    /// Sources separated by spaces: `'self' https://cdn.example`.
    Sources(String),
    /// Present without sources (`true`) or removed (`false`).
    Flag(bool),
}

/// The policy and its nonces; every field has a strict default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CspOptions {
    /// Enforce, report only, or off.
    pub mode: CspMode,
    /// Directives that replace or add to [`CspPolicy::strict`]'s, by name.
    pub directives: BTreeMap<String, DirectiveValue>,
    /// A CSS selector for the `<script>` elements that get the nonce; empty for none. The
    /// default trusts every script in the page, which keeps a legacy page working; a narrower
    /// one (`script[data-trusted]`, `head > script`) also keeps out scripts injected into it.
    pub nonce_scripts: String,
    /// The same for `<style>` elements.
    pub nonce_styles: String,
    /// `Cache-Control` of a page that got nonces; empty keeps the upstream's.
    pub nonce_cache_control: String,
}

impl Default for CspOptions {
    fn default() -> Self {
        Self {
            mode: CspMode::Enforce,
            directives: BTreeMap::new(),
            nonce_scripts: "script".into(),
            nonce_styles: "style".into(),
            nonce_cache_control: "private, no-store".into(),
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadCspSetting {
    /// The option, like `directives.img-src`.
    pub setting: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> BadCspSetting {
    BadCspSetting {
        setting: setting.into(),
        message: message.into(),
    }
}

/// The directives of CSP Level 3 and its drafts that browsers act on.
const DIRECTIVES: [&str; 29] = [
    "default-src",
    "script-src",
    "script-src-elem",
    "script-src-attr",
    "style-src",
    "style-src-elem",
    "style-src-attr",
    "img-src",
    "font-src",
    "connect-src",
    "media-src",
    "object-src",
    "frame-src",
    "child-src",
    "worker-src",
    "manifest-src",
    "fenced-frame-src",
    "base-uri",
    "form-action",
    "frame-ancestors",
    "sandbox",
    "upgrade-insecure-requests",
    "block-all-mixed-content",
    "require-trusted-types-for",
    "trusted-types",
    "report-uri",
    "report-to",
    "webrtc",
    "prefetch-src",
];

/// Keywords that only mean something in single quotes.
const KEYWORDS: [&str; 10] = [
    "self",
    "none",
    "unsafe-inline",
    "unsafe-eval",
    "unsafe-hashes",
    "strict-dynamic",
    "report-sample",
    "wasm-unsafe-eval",
    "inline-speculation-rules",
    "unsafe-allow-redirects",
];

/// An ordered list of directives, each with its sources (empty for a flag directive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CspPolicy {
    directives: Vec<(String, String)>,
}

impl CspPolicy {
    /// The strict default: everything from the site itself only, no plugins, no `<base>`
    /// elsewhere, forms only to the site, images also as `data:`, and HTTP subresources
    /// upgraded. Inline code runs only with the response's nonce.
    pub fn strict() -> Self {
        let directives = [
            ("default-src", "'self'"),
            ("script-src", "'self'"),
            ("style-src", "'self'"),
            ("img-src", "'self' data:"),
            ("object-src", "'none'"),
            ("base-uri", "'self'"),
            ("form-action", "'self'"),
            ("upgrade-insecure-requests", ""),
        ];
        Self {
            directives: directives
                .into_iter()
                .map(|(name, sources)| (name.to_string(), sources.to_string()))
                .collect(),
        }
    }

    /// The policy with `name` set to `sources` (in place when present, else appended); empty
    /// sources make a flag directive.
    pub fn set(mut self, name: &str, sources: &str) -> Result<Self, BadCspSetting> {
        let name = check_name(name)?;
        let sources = check_sources(&name, sources)?;
        match self.directives.iter_mut().find(|(n, _)| *n == name) {
            Some((_, value)) => *value = sources,
            None => self.directives.push((name, sources)),
        }
        Ok(self)
    }

    /// The policy without `name`.
    pub fn remove(mut self, name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.directives.retain(|(n, _)| *n != name);
        self
    }

    /// Whether the policy has `name`.
    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|(n, _)| n == name)
    }

    /// The header value, with `'nonce-NONCE'` added to the directives in `nonce_in`.
    pub fn render(&self, nonce: Option<&str>, nonce_in: &[&str]) -> String {
        let mut out = String::new();
        for (name, sources) in &self.directives {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(name);
            if !sources.is_empty() {
                out.push(' ');
                out.push_str(sources);
            }
            if let Some(nonce) = nonce
                && nonce_in.contains(&name.as_str())
            {
                out.push_str(" 'nonce-");
                out.push_str(nonce);
                out.push('\'');
            }
        }
        out
    }
}

fn check_name(name: &str) -> Result<String, BadCspSetting> {
    let lower = name.to_ascii_lowercase();
    if DIRECTIVES.contains(&lower.as_str()) {
        return Ok(lower);
    }
    let near = DIRECTIVES
        .iter()
        .map(|known| (strsim::jaro_winkler(known, &lower), known))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| format!("did you mean `{known}`?"))
        .unwrap_or_else(|| format!("the known ones are {}", DIRECTIVES.join(", ")));
    Err(bad(
        format!("directives.{name}"),
        format!("`{name}` is not a CSP directive; {near}"),
    ))
}

fn check_sources(name: &str, sources: &str) -> Result<String, BadCspSetting> {
    let setting = || format!("directives.{name}");
    if let Some(c) = sources
        .chars()
        .find(|c| matches!(c, ';' | ',') || !(c.is_ascii_graphic() || *c == ' '))
    {
        return Err(bad(
            setting(),
            format!(
                "`{sources}` contains {c:?}, which ends or breaks a directive; give only \
                 space-separated sources, one directive per key"
            ),
        ));
    }
    let tokens: Vec<&str> = sources.split_whitespace().collect();
    if let Some(keyword) = tokens.iter().find(|t| KEYWORDS.contains(t)) {
        return Err(bad(
            setting(),
            format!("`{keyword}` must be in single quotes: `'{keyword}'`"),
        ));
    }
    if tokens.iter().any(|t| t.starts_with("'nonce-")) {
        return Err(bad(
            setting(),
            "a fixed nonce defeats its purpose; the layer adds a fresh one per page \
             (nonce_scripts, nonce_styles)",
        ));
    }
    Ok(tokens.join(" "))
}

/// The checked options: the policy, where its nonce goes, and the selectors.
#[derive(Debug)]
struct Prepared {
    mode: CspMode,
    policy: CspPolicy,
    scripts: Option<Selector>,
    styles: Option<Selector>,
    cache_control: Option<HeaderValue>,
    /// The policy for responses that get no nonce.
    plain: HeaderValue,
    /// The directives a page's nonce goes in.
    nonce_in: Vec<&'static str>,
}

impl CspOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BadCspSetting> {
        self.prepare(None).map(|_| ())
    }

    fn prepare(&self, report_uri: Option<&str>) -> Result<Prepared, BadCspSetting> {
        let mut policy = CspPolicy::strict();
        for (name, value) in &self.directives {
            policy = match value {
                DirectiveValue::Sources(sources) if sources.trim().is_empty() => {
                    return Err(bad(
                        format!("directives.{name}"),
                        "no sources; give some, `'none'` to allow nothing, or false to drop \
                         the directive",
                    ));
                }
                DirectiveValue::Sources(sources) => policy.set(name, sources)?,
                DirectiveValue::Flag(true) => policy.set(name, "")?,
                DirectiveValue::Flag(false) => {
                    check_name(name)?;
                    policy.remove(name)
                }
            };
        }
        if self.mode == CspMode::ReportOnly {
            // Browsers ignore it in a report-only policy, and say so in the console.
            policy = policy.remove("upgrade-insecure-requests");
        }
        if let Some(uri) = report_uri
            && !policy.has("report-uri")
        {
            policy = policy.set("report-uri", uri)?;
        }
        let selector = |setting: &str, text: &str, directive: &str| {
            if text.trim().is_empty() {
                return Ok(None);
            }
            if !policy.has(directive) {
                return Err(bad(
                    setting,
                    format!(
                        "the nonce goes in `{directive}`, which the policy lacks; add \
                         directives.{directive} or set {setting} = \"\""
                    ),
                ));
            }
            text.parse::<Selector>().map(Some).map_err(|err| {
                bad(
                    setting,
                    format!("`{text}` is not a CSS selector lol_html supports: {err}"),
                )
            })
        };
        let scripts = selector("nonce_scripts", &self.nonce_scripts, "script-src")?;
        let styles = selector("nonce_styles", &self.nonce_styles, "style-src")?;
        let cache_control = match self.nonce_cache_control.trim() {
            "" => None,
            text => Some(HeaderValue::from_str(text).map_err(|_| {
                bad(
                    "nonce_cache_control",
                    format!("`{text}` is not a valid header value"),
                )
            })?),
        };
        let plain = HeaderValue::from_str(&policy.render(None, &[]))
            .map_err(|_| bad("directives", "the policy is not a valid header value"))?;
        let nonce_in = [(&scripts, "script-src"), (&styles, "style-src")]
            .into_iter()
            .filter(|(selector, _)| selector.is_some())
            .map(|(_, directive)| directive)
            .collect();
        Ok(Prepared {
            mode: self.mode,
            policy,
            scripts,
            styles,
            cache_control,
            plain,
            nonce_in,
        })
    }
}

impl Prepared {
    fn header(&self) -> HeaderName {
        match self.mode {
            CspMode::ReportOnly => HeaderName::from_static("content-security-policy-report-only"),
            _ => header::CONTENT_SECURITY_POLICY,
        }
    }

    fn rewrites(&self) -> bool {
        self.mode != CspMode::Off && (self.scripts.is_some() || self.styles.is_some())
    }

    fn apply<B>(
        &self,
        response: Response<B>,
        head: bool,
        nonce: Option<PageNonce>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = response.into_parts();
        let upstream_has_one = parts.headers.contains_key(header::CONTENT_SECURITY_POLICY)
            || parts
                .headers
                .contains_key("content-security-policy-report-only");
        if self.mode == CspMode::Off || upstream_has_one {
            return Response::from_parts(parts, Body::new(body));
        }
        let encoding = (self.rewrites() && !head && has_body(parts.status))
            .then(|| rewritable_html(&parts.headers))
            .flatten();
        let Some(encoding) = encoding else {
            parts.headers.insert(self.header(), self.plain.clone());
            return Response::from_parts(parts, Body::new(body));
        };
        let nonce = nonce.unwrap_or_default();
        let nonce = nonce.get();
        let policy = self.policy.render(Some(nonce), &self.nonce_in);
        let Ok(value) = HeaderValue::from_str(&policy) else {
            parts.headers.insert(self.header(), self.plain.clone());
            return Response::from_parts(parts, Body::new(body));
        };
        parts.headers.insert(self.header(), value);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ETAG);
        if let Some(cache_control) = &self.cache_control {
            parts
                .headers
                .insert(header::CACHE_CONTROL, cache_control.clone());
        }
        let settings = nonce_settings(self, nonce, encoding);
        let body = RewrittenBody::new(body, settings, "CSP nonces");
        Response::from_parts(parts, Body::new(body))
    }
}

/// The nonce of the page a request will get, made when first asked for. The CSP layer puts it
/// in the request's extensions for the layers inside it, so that code they add to a page (the
/// CSRF script) carries the nonce the policy names.
#[derive(Debug, Clone, Default)]
pub struct PageNonce(Arc<OnceLock<String>>);

impl PageNonce {
    /// The nonce, the same for every caller.
    pub fn get(&self) -> &str {
        self.0.get_or_init(fresh_nonce)
    }
}

/// 128 random bits from the operating system, base64: a nonce no one can guess.
fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The rewriter settings that put `nonce` on the trusted elements.
fn nonce_settings<'s>(
    prepared: &'s Prepared,
    nonce: &str,
    encoding: AsciiCompatibleEncoding,
) -> lol_html::send::Settings<'static, 's> {
    let mut settings = rewrite::settings(encoding);
    for selector in [&prepared.scripts, &prepared.styles].into_iter().flatten() {
        let nonce = nonce.to_string();
        let handlers = ElementContentHandlers::default().element(
            move |element: &mut lol_html::send::Element<'_, '_>| {
                element.set_attribute("nonce", &nonce)?;
                Ok(())
            },
        );
        settings = settings.append_element_content_handler((Cow::Borrowed(selector), handlers));
    }
    settings
}

/// Sets the policy on every response and nonces on its pages; see the module documentation.
#[derive(Debug, Clone)]
pub struct CspLayer {
    routes: Arc<Routes<Arc<Prepared>>>,
}

impl CspLayer {
    /// The layer for `options`; `report_uri` (a collector's path) is added to a policy without
    /// a `report-uri` of its own.
    pub fn new(options: &CspOptions, report_uri: Option<&str>) -> Result<Self, BadCspSetting> {
        Ok(Self {
            routes: Arc::new(Routes::new(Arc::new(options.prepare(report_uri)?))),
        })
    }

    /// The layer with `options` for the paths under `prefix`.
    pub fn with_route(
        self,
        prefix: &str,
        options: &CspOptions,
        report_uri: Option<&str>,
    ) -> Result<Self, BadCspSetting> {
        let prepared = Arc::new(options.prepare(report_uri)?);
        Ok(Self {
            routes: Arc::new(Arc::unwrap_or_clone(self.routes).with(prefix, prepared)),
        })
    }
}

impl<S> Layer<S> for CspLayer {
    type Service = Csp<S>;

    fn layer(&self, inner: S) -> Csp<S> {
        Csp {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`CspLayer`].
#[derive(Debug, Clone)]
pub struct Csp<S> {
    inner: S,
    routes: Arc<Routes<Arc<Prepared>>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Csp<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let prepared = self.routes.for_path(req.uri().path()).clone();
        let head = req.method() == Method::HEAD;
        let mut nonce = None;
        if prepared.rewrites() && accepts_html(req.headers()) {
            req.headers_mut().remove(header::ACCEPT_ENCODING);
            let page = PageNonce::default();
            req.extensions_mut().insert(page.clone());
            nonce = Some(page);
        }
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(prepared.apply(response, head, nonce))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{pin::Pin, sync::Mutex};

    use http::HeaderMap;
    use http_body::Frame;

    use super::*;

    #[test]
    fn the_strict_default_renders_with_its_nonce_where_asked() {
        let policy = CspPolicy::strict();
        assert_eq!(
            policy.render(Some("abc"), &["script-src"]),
            "default-src 'self'; script-src 'self' 'nonce-abc'; style-src 'self'; \
             img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; \
             upgrade-insecure-requests"
        );
    }

    #[test]
    fn directives_replace_add_and_remove() {
        let mut options = CspOptions::default();
        options.directives.insert(
            "img-src".into(),
            DirectiveValue::Sources("'self'  https://img.example".into()),
        );
        options.directives.insert(
            "connect-src".into(),
            DirectiveValue::Sources("'self' wss:".into()),
        );
        options.directives.insert(
            "upgrade-insecure-requests".into(),
            DirectiveValue::Flag(false),
        );
        let prepared = options.prepare(Some("/.well-known/csp-report")).unwrap();
        assert_eq!(
            prepared.plain,
            "default-src 'self'; script-src 'self'; style-src 'self'; \
             img-src 'self' https://img.example; object-src 'none'; base-uri 'self'; \
             form-action 'self'; connect-src 'self' wss:; report-uri /.well-known/csp-report"
        );
    }

    #[test]
    fn bad_settings_say_what_to_write_instead() {
        let refused = |name: &str, value: DirectiveValue| {
            let mut options = CspOptions::default();
            options.directives.insert(name.into(), value);
            options.validate().unwrap_err()
        };
        let err = refused("scripts-src", DirectiveValue::Sources("'self'".into()));
        assert_eq!(err.setting, "directives.scripts-src");
        assert!(err.message.contains("did you mean `script-src`"), "{err}");
        let err = refused("script-src", DirectiveValue::Sources("self".into()));
        assert!(err.message.contains("`'self'`"), "{err}");
        let err = refused(
            "script-src",
            DirectiveValue::Sources("'self'; object-src *".into()),
        );
        assert!(err.message.contains("one directive per key"), "{err}");
        let err = refused("script-src", DirectiveValue::Sources("'nonce-x'".into()));
        assert!(err.message.contains("fresh one"), "{err}");
        let err = refused("script-src", DirectiveValue::Flag(false));
        assert_eq!(err.setting, "nonce_scripts");
        let err = refused("img-src", DirectiveValue::Sources(" ".into()));
        assert!(err.message.contains("'none'"), "{err}");
        let options = CspOptions {
            nonce_styles: "style[".into(),
            ..Default::default()
        };
        assert_eq!(options.validate().unwrap_err().setting, "nonce_styles");
    }

    #[test]
    fn html_is_recognised_by_type_charset_and_encoding() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let encoding = |pairs: &[(&str, &str)]| rewritable_html(&headers(pairs)).map(|e| e.into());
        let utf8: Option<&'static encoding_rs::Encoding> = Some(encoding_rs::UTF_8);
        assert_eq!(encoding(&[("content-type", "text/html")]), utf8);
        assert_eq!(
            encoding(&[("content-type", "Text/HTML; Charset=\"windows-1252\"")]),
            Some(encoding_rs::WINDOWS_1252)
        );
        assert_eq!(
            encoding(&[("content-type", "text/html; charset=utf-16")]),
            None
        );
        assert_eq!(encoding(&[("content-type", "application/json")]), None);
        assert_eq!(
            encoding(&[("content-type", "text/html"), ("content-encoding", "gzip")]),
            None
        );
        assert_eq!(encoding(&[]), None);
    }

    /// The page an upstream sends in `chunks`, through the layer.
    async fn through(
        options: &CspOptions,
        content_type: &str,
        chunks: &[&'static str],
        accept: &str,
    ) -> (http::response::Parts, String, Option<HeaderValue>) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let chunks: Vec<Bytes> = chunks
            .iter()
            .map(|c| Bytes::from_static(c.as_bytes()))
            .collect();
        let content_type = content_type.to_string();
        let seen = Arc::new(Mutex::new(None));
        let saw = seen.clone();
        let upstream = tower::service_fn(move |req: Request<()>| {
            *saw.lock().unwrap() = req.headers().get(header::ACCEPT_ENCODING).cloned();
            let body = Chunks(chunks.iter().cloned().collect());
            let response = Response::builder()
                .header(header::CONTENT_TYPE, &content_type)
                .header(header::ETAG, "\"v1\"")
                .header(header::CONTENT_LENGTH, "999")
                .body(body)
                .unwrap();
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let service = CspLayer::new(options, None).unwrap().layer(upstream);
        let request = Request::get("/page")
            .header(header::ACCEPT, accept)
            .header(header::ACCEPT_ENCODING, "gzip, br")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let seen = seen.lock().unwrap().clone();
        (parts, String::from_utf8(bytes.to_vec()).unwrap(), seen)
    }

    /// A body of fixed chunks, each its own frame.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn nonce_of(policy: &str) -> String {
        let start = policy.find("'nonce-").unwrap() + 7;
        policy[start..].split('\'').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn every_trusted_inline_element_gets_the_nonce_of_the_header_even_across_chunks() {
        let page = [
            "<!doctype html><html><head><sty",
            "le>p{color:red}</style><script nonce=\"forged\">let a = 1;</scr",
            "ipt></head><body><p style=\"x\">hi</p><scr",
            "ipt src=\"/app.js\"></script></body></html>",
        ];
        let options = CspOptions::default();
        let (parts, body, seen) =
            through(&options, "text/html; charset=utf-8", &page, "text/html,*/*").await;
        let policy = parts.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        let nonce = nonce_of(policy);
        assert_eq!(nonce.len(), 24, "{policy}");
        assert!(
            policy.contains(&format!("style-src 'self' 'nonce-{nonce}'")),
            "{policy}"
        );
        assert_eq!(
            body.matches(&format!("nonce=\"{nonce}\"")).count(),
            3,
            "{body}"
        );
        assert!(!body.contains("forged"), "{body}");
        assert!(body.contains("<p style=\"x\">hi</p>"), "{body}");
        assert_eq!(parts.headers[header::CACHE_CONTROL], "private, no-store");
        assert!(parts.headers.get(header::CONTENT_LENGTH).is_none());
        assert!(parts.headers.get(header::ETAG).is_none());
        assert_eq!(seen, None, "a page load is asked for uncompressed");

        // A second response gets another nonce.
        let (again, _, _) = through(&options, "text/html", &page, "text/html").await;
        let other = nonce_of(
            again.headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap(),
        );
        assert_ne!(nonce, other);
    }

    #[tokio::test]
    async fn only_selected_elements_are_trusted_and_report_only_uses_its_header() {
        let options = CspOptions {
            mode: CspMode::ReportOnly,
            nonce_scripts: "script[data-trusted]".into(),
            nonce_styles: String::new(),
            nonce_cache_control: String::new(),
            ..Default::default()
        };
        let page =
            ["<script data-trusted>ok()</script><script>injected()</script><style>p{}</style>"];
        let (parts, body, _) = through(&options, "text/html", &page, "text/html").await;
        assert!(parts.headers.get(header::CONTENT_SECURITY_POLICY).is_none());
        let policy = parts.headers["content-security-policy-report-only"]
            .to_str()
            .unwrap();
        let nonce = nonce_of(policy);
        assert!(!policy.contains("style-src 'self' 'nonce-"), "{policy}");
        assert!(!policy.contains("upgrade-insecure-requests"), "{policy}");
        assert_eq!(
            body,
            format!(
                "<script data-trusted nonce=\"{nonce}\">ok()</script><script>injected()</script><style>p{{}}</style>"
            )
        );
        assert!(parts.headers.get(header::ETAG).is_none());
        assert!(parts.headers.get(header::CACHE_CONTROL).is_none());
    }

    #[tokio::test]
    async fn other_responses_get_the_policy_without_nonces_and_stay_untouched() {
        let options = CspOptions::default();
        let json = ["{\"a\":\"<script>\"}"];
        let (parts, body, seen) =
            through(&options, "application/json", &json, "application/json").await;
        assert_eq!(body, json[0]);
        assert_eq!(
            parts.headers[header::CONTENT_SECURITY_POLICY],
            CspOptions::default().prepare(None).unwrap().plain
        );
        assert_eq!(parts.headers[header::CONTENT_LENGTH], "999");
        assert_eq!(
            seen.unwrap(),
            "gzip, br",
            "only page loads lose Accept-Encoding"
        );

        let off = CspOptions {
            mode: CspMode::Off,
            ..Default::default()
        };
        let page = ["<script>x()</script>"];
        let (parts, body, _) = through(&off, "text/html", &page, "text/html").await;
        assert_eq!(body, page[0]);
        assert!(parts.headers.get(header::CONTENT_SECURITY_POLICY).is_none());
    }

    #[test]
    fn a_page_with_the_upstreams_own_policy_is_not_rewritten() {
        let prepared = CspOptions::default().prepare(None).unwrap();
        for own in [
            "content-security-policy",
            "content-security-policy-report-only",
        ] {
            let response = Response::builder()
                .header(header::CONTENT_TYPE, "text/html")
                .header(own, "script-src 'nonce-upstream'")
                .body(http_body_util::Full::new(Bytes::from_static(
                    b"<script nonce=upstream>",
                )))
                .unwrap();
            let response = prepared.apply(response, false, None);
            assert_eq!(response.headers()[own], "script-src 'nonce-upstream'");
            assert_eq!(response.headers().len(), 2, "{:?}", response.headers());
        }
    }

    #[tokio::test]
    async fn markup_the_rewriter_cannot_parse_safely_cuts_the_page_off() {
        use http_body_util::BodyExt;
        let prepared = CspOptions::default().prepare(None).unwrap();
        let page = "<select><xmp><script>alert(1)</script></xmp></select>";
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(Chunks([Bytes::from_static(page.as_bytes())].into()))
            .unwrap();
        let body = prepared.apply(response, false, None).into_body();
        assert!(body.collect().await.is_err(), "the ambiguous page went out");
    }
}
