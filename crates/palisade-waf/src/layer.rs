//! [`WafLayer`]: buffers a request's body (up to the gateway's limit), has the engine inspect
//! the request as received and its normalised form, and blocks (403, one `attack` event with
//! the matched rule ids) or, in detect-only mode, logs and lets it through.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, request::Parts};
use palisade_guard::{
    Body, BoxError, BoxFuture, ClientAddr, Peer, Rejection, RejectionKind, body, reject,
};
use tower::{Layer, Service};

use crate::{RequestView, RuleEngine, Verdict, WafOptions, normalize};

/// The rule families whose matches count on the normalised form: the attack rules (930 to
/// 944). Protocol rules judge the bytes as received only.
const ATTACK_FAMILIES: std::ops::RangeInclusive<u32> = 930_000..=944_999;

/// Inspects every request with a [`RuleEngine`].
#[derive(Clone)]
pub struct WafLayer {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<dyn RuleEngine>,
    detect_only: bool,
    normalize: bool,
    max_body_bytes: usize,
    server: SocketAddr,
}

impl std::fmt::Debug for WafLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WafLayer")
            .field("engine", &self.shared.engine.name())
            .field("detect_only", &self.shared.detect_only)
            .finish()
    }
}

impl WafLayer {
    /// A layer for `engine`, reading bodies of at most `max_body_bytes`; `server` is the
    /// listening address the engine is told.
    pub fn new(
        engine: Arc<dyn RuleEngine>,
        options: &WafOptions,
        max_body_bytes: u64,
        server: SocketAddr,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine,
                detect_only: options.detect_only,
                normalize: options.normalize,
                max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
                server,
            }),
        }
    }
}

impl<S> Layer<S> for WafLayer {
    type Service = Waf<S>;

    fn layer(&self, inner: S) -> Waf<S> {
        Waf {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`WafLayer`]; the inner service gets the request with its body buffered.
#[derive(Clone)]
pub struct Waf<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Waf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waf")
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Waf<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready goes into the future; `self` keeps a fresh one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // The body carries the listener's size limit and read timeout already.
            let body = match body::read_whole(body, shared.max_body_bytes).await {
                Ok(body) => body,
                Err(rejection) => {
                    return Ok(rejection.respond(&parts.uri, &parts.headers, &parts.extensions));
                }
            };
            let view = view_of(&parts, &body, shared.server);
            let (engine, normalize) = (shared.engine.clone(), shared.normalize);
            let inspected =
                tokio::task::spawn_blocking(move || inspect(engine.as_ref(), &view, normalize))
                    .await
                    .map_err(|err| err.to_string())
                    .and_then(|result| result.map_err(|err| err.to_string()));
            let req = Request::from_parts(parts, Body::from(body));
            if let Some(refusal) = shared.refusal(inspected, &req) {
                return Ok(refusal);
            }
            inner.call(req).await
        })
    }
}

impl Shared {
    /// The answer that stops `req`, when its verdict blocks it or its inspection failed; in
    /// detect-only mode none, and a logged event for a verdict that would have blocked.
    fn refusal<B, T: From<Bytes>>(
        &self,
        inspected: Result<Verdict, String>,
        req: &Request<B>,
    ) -> Option<Response<T>> {
        match inspected {
            Ok(verdict) if !verdict.block => None,
            Ok(verdict) => {
                let rejection = Rejection::new(RejectionKind::Attack, verdict.rule_ids());
                if self.detect_only {
                    rejection.log(req);
                    return None;
                }
                Some(rejection.respond_to(req))
            }
            Err(error) => {
                tracing::warn!(target: "palisade::waf", error, "a request could not be inspected");
                let message = "The request could not be checked. Please try again.";
                let page = reject::error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    message,
                    None,
                    req.headers(),
                );
                (!self.detect_only).then_some(page)
            }
        }
    }
}

/// The request as received, then, unless an attack rule matched already, its normalised form
/// when that differs; the normalised form adds only attack rules (and the blocking evaluation,
/// when one of them made it block).
pub fn inspect(
    engine: &dyn RuleEngine,
    view: &RequestView,
    normalize: bool,
) -> Result<Verdict, crate::EngineError> {
    let mut verdict = engine.inspect(view)?;
    let attack = |m: &crate::Match| ATTACK_FAMILIES.contains(&m.id);
    if !normalize || verdict.matches.iter().any(attack) {
        return Ok(verdict);
    }
    let Some(normal) = normalize::normalized(view) else {
        return Ok(verdict);
    };
    let second = engine.inspect(&normal)?;
    let attacks: Vec<_> = second
        .matches
        .iter()
        .filter(|m| ATTACK_FAMILIES.contains(&m.id))
        .cloned()
        .collect();
    if attacks.is_empty() {
        return Ok(verdict);
    }
    for found in attacks {
        if !verdict.matches.contains(&found) {
            verdict.matches.push(found);
        }
    }
    if second.block && !verdict.block {
        verdict.block = true;
        verdict.anomaly_score = second.anomaly_score;
        let evaluation = second
            .matches
            .iter()
            .filter(|m| !ATTACK_FAMILIES.contains(&m.id));
        for found in evaluation.filter(|m| m.id / 1000 == 949) {
            if !verdict.matches.contains(found) {
                verdict.matches.push(found.clone());
            }
        }
    }
    Ok(verdict)
}

/// The request target as the client wrote it: a path and query; on HTTP/1, a whole URL
/// (absolute form) or `host:port` (CONNECT's authority form). HTTP/2 always has a path
/// (hyper fills in scheme and authority from the pseudo-headers).
fn target(uri: &http::Uri, version: Version) -> String {
    let http1 = version < Version::HTTP_2;
    match (uri.scheme(), uri.path_and_query(), uri.authority()) {
        (Some(_), _, _) if http1 => uri.to_string(),
        (_, Some(pq), _) => pq.as_str().to_string(),
        (_, None, Some(authority)) => authority.as_str().to_string(),
        (_, None, None) => "/".to_string(),
    }
}

/// What the engine is shown of a request.
fn view_of(parts: &Parts, body: &Bytes, server: SocketAddr) -> RequestView {
    let peer = parts.extensions.get::<Peer>().map(|p| p.addr);
    let ip = parts
        .extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or(peer.map(|p| p.ip()))
        .unwrap_or(server.ip());
    let client = SocketAddr::new(ip, peer.map_or(0, |p| p.port()));
    let mut headers: Vec<(Bytes, Bytes)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                Bytes::copy_from_slice(name.as_str().as_bytes()),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect();
    // HTTP/2 carries the host in `:authority`; the rules expect a Host header.
    if !parts.headers.contains_key(http::header::HOST)
        && let Some(authority) = parts.uri.authority()
    {
        headers.insert(
            0,
            (
                Bytes::from_static(b"host"),
                Bytes::copy_from_slice(authority.as_str().as_bytes()),
            ),
        );
    }
    let version = match parts.version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    };
    RequestView {
        method: parts.method.as_str().to_string(),
        uri: target(&parts.uri, parts.version),
        version,
        headers,
        body: body.clone(),
        client,
        server,
    }
}
