//! The plain-HTTP listener's service: a 308 to `https://` on the same path and query, only for
//! the configured host names; any other `Host` is refused (421) without a `Location`, so the
//! redirect can never be pointed elsewhere. ACME HTTP-01 challenges pass through.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    BoxFuture, host,
    reject::{Rejection, RejectionKind},
};

/// The path prefix of ACME HTTP-01 challenges.
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Where plain-HTTP requests are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsRedirectOptions {
    /// Host names that are redirected; every other is refused.
    pub hosts: Vec<String>,
    /// The HTTPS port in the `Location` (443 is left out).
    pub https_port: u16,
    /// Pass `/.well-known/acme-challenge/` requests to the inner service instead.
    pub acme_passthrough: bool,
}

impl Default for HttpsRedirectOptions {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            https_port: 443,
            acme_passthrough: true,
        }
    }
}

/// Redirects to HTTPS; see the module documentation.
#[derive(Debug, Clone)]
pub struct HttpsRedirectLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    hosts: HashSet<String>,
    port_suffix: String,
    acme_passthrough: bool,
}

impl HttpsRedirectLayer {
    /// The layer for `options`; host names are compared normalised (lower case, no port).
    pub fn new(options: &HttpsRedirectOptions) -> Self {
        let hosts = options
            .hosts
            .iter()
            .filter_map(|h| host::normalize(h))
            .collect();
        let port_suffix = match options.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        Self {
            shared: Arc::new(Shared {
                hosts,
                port_suffix,
                acme_passthrough: options.acme_passthrough,
            }),
        }
    }
}

impl<S> Layer<S> for HttpsRedirectLayer {
    type Service = HttpsRedirect<S>;

    fn layer(&self, inner: S) -> HttpsRedirect<S> {
        HttpsRedirect {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`HttpsRedirectLayer`].
#[derive(Debug, Clone)]
pub struct HttpsRedirect<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// The redirect for `req`, or the rejection of its host.
    fn redirect<B, ResBody: From<Bytes>>(&self, req: &Request<B>) -> Response<ResBody> {
        let host = match host::request_host(req) {
            Ok(Some(host)) if self.hosts.contains(&host) => host,
            Ok(_) => {
                return Rejection::new(RejectionKind::UnknownHost, "redirect-host-not-configured")
                    .respond_to(req);
            }
            Err(rejection) => return rejection.respond_to(req),
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if !target.starts_with('/') {
            return Rejection::new(RejectionKind::Malformed, "redirect-target-not-a-path")
                .respond_to(req);
        }
        let location = format!("https://{host}{}{target}", self.port_suffix);
        let Ok(location) = HeaderValue::from_str(&location) else {
            return Rejection::new(RejectionKind::Malformed, "redirect-location-invalid")
                .respond_to(req);
        };
        let mut response = Response::new(ResBody::from(Bytes::new()));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(header::LOCATION, location);
        response
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpsRedirect<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
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
        if self.shared.acme_passthrough && is_acme_challenge(&req) {
            return Box::pin(self.inner.call(req));
        }
        let response = self.shared.redirect(&req);
        Box::pin(async move { Ok(response) })
    }
}

/// An HTTP-01 challenge fetch: `GET` or `HEAD` of `/.well-known/acme-challenge/TOKEN`, the token
/// being one segment of base64url characters (RFC 8555 §8.3). Anything else under the prefix
/// (other methods, `..` or `%2e%2e`, more segments, a query) is redirected like every other
/// request, so that the plain listener never becomes a way to the application.
fn is_acme_challenge<B>(req: &Request<B>) -> bool {
    let token = req.uri().path().strip_prefix(ACME_PREFIX).unwrap_or("");
    matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && req.uri().query().is_none()
        && !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;

    async fn send(host: &str, target: &str) -> Response<Bytes> {
        let options = HttpsRedirectOptions {
            hosts: vec!["shop.example".into()],
            https_port: 8443,
            acme_passthrough: true,
        };
        let inner = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"challenge")))
        });
        let service = HttpsRedirectLayer::new(&options).layer(inner);
        let req = Request::get(target).header("host", host).body(()).unwrap();
        service.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn configured_hosts_keep_path_and_query() {
        let response = send("SHOP.example:80", "/cart?item=3&x=%2F").await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://shop.example:8443/cart?item=3&x=%2F"
        );
    }

    #[tokio::test]
    async fn a_forged_host_gets_no_location() {
        let response = send("evil.example", "/").await;
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(!response.headers().contains_key(header::LOCATION));
    }

    #[tokio::test]
    async fn acme_challenges_pass_through() {
        let response = send("evil.example", "/.well-known/acme-challenge/abc-D_9").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body().as_ref(), b"challenge");
    }

    #[tokio::test]
    async fn only_a_challenge_token_passes_not_a_path_around_it() {
        for target in [
            "/.well-known/acme-challenge/../../index.html",
            "/.well-known/acme-challenge/%2e%2e/%2e%2e/",
            "/.well-known/acme-challenge/a/b",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/abc?x=1",
        ] {
            let response = send("shop.example", target).await;
            assert_eq!(
                response.status(),
                StatusCode::PERMANENT_REDIRECT,
                "{target}"
            );
            assert_ne!(response.body().as_ref(), b"challenge", "{target}");
        }
    }
}
