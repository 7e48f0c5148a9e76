//! The reverse proxy: checks a request, rewrites its headers for the upstream, streams it to
//! the next healthy upstream and streams the answer back; upgrades are joined only after the
//! upstream answers 101.

use std::{
    collections::HashSet,
    convert::Infallible,
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
};

use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header,
};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioIo};
use palisade_guard::{
    Body, BoxFuture, ClientAddr, Peer, Rejection, RejectionKind, host, reject::error_page,
};
use tower::Service;

use crate::{
    body_timeout::{BodyReadTimeout, ClientBodyError, ended_early},
    options::{HostHeader, Limits, Timeouts},
    strict,
    upstream::{Connector, Pool, Upstream},
};

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding headers a client might forge; the gateway writes its own.
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// The proxy service; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("pool", &self.shared.pool)
            .finish()
    }
}

struct Shared {
    pool: Arc<Pool>,
    client: Client<Connector, Body>,
    limits: Limits,
    timeouts: Timeouts,
    hosts: HashSet<String>,
    host_header: HostHeader,
}

/// What a proxy needs to know.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Limits on requests.
    pub limits: Limits,
    /// Timeouts towards the upstream.
    pub timeouts: Timeouts,
    /// Accepted host names (normalised); empty accepts any.
    pub hosts: Vec<String>,
    /// What `Host` the upstream sees.
    pub host_header: HostHeader,
}

impl Proxy {
    /// A proxy to the upstreams of `pool`, through `client`.
    pub fn new(pool: Arc<Pool>, client: Client<Connector, Body>, options: ProxyOptions) -> Self {
        let hosts = options
            .hosts
            .iter()
            .filter_map(|h| host::normalize(h))
            .collect();
        Self {
            shared: Arc::new(Shared {
                pool,
                client,
                limits: options.limits,
                timeouts: options.timeouts,
                hosts,
                host_header: options.host_header,
            }),
        }
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.forward(req).await) })
    }
}

/// What is kept of a request for answering it after it went upstream.
struct Asked {
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Asked {
    fn of<B>(req: &Request<B>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(accept) = req.headers().get(header::ACCEPT) {
            headers.insert(header::ACCEPT, accept.clone());
        }
        let mut extensions = Extensions::new();
        if let Some(client) = req.extensions().get::<ClientAddr>() {
            extensions.insert(*client);
        }
        Self {
            uri: req.uri().clone(),
            headers,
            extensions,
        }
    }

    fn reject(&self, rejection: Rejection) -> Response<Body> {
        rejection.respond(&self.uri, &self.headers, &self.extensions)
    }

    fn error(&self, status: StatusCode, message: &str) -> Response<Body> {
        error_page(status, message, None, &self.headers)
    }
}

impl Shared {
    async fn forward(&self, mut req: Request<Body>) -> Response<Body> {
        if let Err(rejection) = strict::check(&req, &self.limits) {
            return rejection.respond_to(&req);
        }
        let host = match host::request_host(&req) {
            Ok(Some(host)) => host,
            Ok(None) => {
                return Rejection::new(RejectionKind::Malformed, "host-missing").respond_to(&req);
            }
            Err(rejection) => return rejection.respond_to(&req),
        };
        if !self.hosts.is_empty() && !self.hosts.contains(&host) {
            return Rejection::new(RejectionKind::UnknownHost, "host-not-configured")
                .respond_to(&req);
        }
        let asked = Asked::of(&req);
        let Some(upstream) = self.pool.pick() else {
            return asked.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The application is not reachable at the moment. Please try again shortly.",
            );
        };
        let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let outgoing = self.outgoing(req, upstream, client_upgrade.is_some());
        let sent = tokio::time::timeout(
            self.timeouts.upstream_response,
            self.client.request(outgoing),
        );
        let response = match sent.await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return self.failed(&asked, upstream, &err),
            Err(_) => {
                return asked.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The application took too long to answer.",
                );
            }
        };
        answer(response, client_upgrade, &asked)
    }

    /// The request as the upstream gets it: its target, `Host`, forwarding headers, body.
    fn outgoing(&self, req: Request<Body>, upstream: &Upstream, upgrade: bool) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        let tls = parts.extensions.get::<Peer>().is_none_or(|peer| peer.tls);
        let client = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or_else(|| parts.extensions.get::<Peer>().map(|p| p.addr.ip()));
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        strip_hop_by_hop(&mut parts.headers, upgrade);
        for name in FORWARDING {
            parts.headers.remove(name);
        }
        set_forwarding(&mut parts.headers, client, tls, original_host.as_ref());
        let host = match (self.host_header, original_host) {
            (HostHeader::Preserve, Some(host)) => Some(host),
            _ => upstream
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }

        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = upstream.uri.authority().map_or("", |a| a.as_str());
        let scheme = upstream.uri.scheme_str().unwrap_or("http");
        parts.uri = format!("{scheme}://{authority}{target}")
            .parse()
            .expect("a checked authority and a target starting with / form a URI");
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    fn failed(
        &self,
        asked: &Asked,
        upstream: &Upstream,
        err: &hyper_util::client::legacy::Error,
    ) -> Response<Body> {
        if caused_by::<http_body_util::LengthLimitError>(err) {
            let rejection = Rejection::new(RejectionKind::BodyTooLarge, "max-body-bytes");
            return asked.reject(rejection);
        }
        if caused_by::<BodyReadTimeout>(err) {
            let rejection = Rejection::new(RejectionKind::SlowBody, "body-read-timeout");
            return asked.reject(rejection);
        }
        if let Some(body) = find::<ClientBodyError>(err) {
            if ended_early(body) {
                tracing::debug!(target: "palisade::gateway", error = %body, "the client's body ended early");
                return asked.error(StatusCode::BAD_REQUEST, "The request body ended early.");
            }
            let rejection = Rejection::new(RejectionKind::Malformed, "request-body-malformed");
            return asked.reject(rejection);
        }
        if err.is_connect() {
            upstream.mark(false);
        }
        tracing::debug!(target: "palisade::gateway", upstream = %upstream.uri, error = %err, "upstream request failed");
        asked.error(
            StatusCode::BAD_GATEWAY,
            "The application could not be reached. Please try again shortly.",
        )
    }
}

/// The upstream's response for the client; a 101 joins the two upgraded connections.
fn answer(
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    asked: &Asked,
) -> Response<Body> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_upgrade) {
        (true, Some(client)) => {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, upstream));
        }
        (true, None) => {
            return asked.error(
                StatusCode::BAD_GATEWAY,
                "The application switched protocols without being asked to.",
            );
        }
        (false, _) => {}
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let body = if switching {
        Body::empty()
    } else {
        Body::new(body)
    };
    Response::from_parts(parts, body)
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(target: "palisade::gateway", error = %err, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(target: "palisade::gateway", error = %err, "upgraded connection ended");
    }
}

/// An HTTP/1.1 request asking to switch protocols (a WebSocket, say).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes the hop-by-hop headers and those `Connection` names; for an upgrade, `Upgrade` and
/// `Connection: upgrade` stay.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|name| name != header::HOST && !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if !(upgrade && name == "upgrade") {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `X-Forwarded-For/Proto/Host` and `Forwarded` from the resolved client address.
fn set_forwarding(
    headers: &mut HeaderMap,
    client: Option<IpAddr>,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let proto = if tls { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let mut forwarded = String::new();
    if let Some(client) = client {
        let value =
            HeaderValue::from_str(&client.to_string()).expect("an address is a header value");
        headers.insert("x-forwarded-for", value);
        match client {
            IpAddr::V4(v4) => forwarded.push_str(&format!("for={v4};")),
            IpAddr::V6(v6) => forwarded.push_str(&format!("for=\"[{v6}]\";")),
        }
    }
    forwarded.push_str(&format!("proto={proto}"));
    if let Some(host) = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| host::normalize(h).is_some())
    {
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_str(host).expect("checked host"),
        );
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    headers.insert(
        header::FORWARDED,
        HeaderValue::from_str(&forwarded).expect("forwarded is built from checked parts"),
    );
}

/// Whether `err` or one of its sources is an `E`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<E>(err).is_some()
}

/// The first error of type `E` in `err`'s chain of causes.
fn find<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, X-Secret, host".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("host", "a.example".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
    }

    #[test]
    fn forwarding_headers_name_the_client() {
        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_static("shop.example:8443");
        set_forwarding(
            &mut headers,
            Some("2001:db8::1".parse().unwrap()),
            true,
            Some(&host),
        );
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.example:8443");
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::1]\";proto=https;host=\"shop.example:8443\""
        );
    }
}
