//! The upstream pool: round robin over the upstreams a health check has not marked down, and
//! the client that reaches them over HTTP/1.1 or HTTP/2, in the clear or over TLS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Uri};
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    Error,
    options::{HealthCheckOptions, UpstreamProtocol, UpstreamTlsOptions},
};

/// What opens connections to upstreams: TCP, then TLS for `https://` ones.
pub type Connector = HttpsConnector<HttpConnector>;

/// The connector for `protocol`, verifying `https://` upstreams against `tls.ca` or else the
/// system's CA certificates. Fails when the CA file cannot be used.
pub fn connector(
    protocol: UpstreamProtocol,
    tls: &UpstreamTlsOptions,
    connect_timeout: Duration,
) -> Result<Connector, Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots(tls)?)
        .with_no_client_auth();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    Ok(match protocol {
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    })
}

/// A client over `connector`; HTTP/2 only, with prior knowledge in the clear, for
/// [`UpstreamProtocol::Http2`].
pub fn client<B>(connector: Connector, protocol: UpstreamProtocol) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(protocol == UpstreamProtocol::Http2);
    builder.build(connector)
}

fn roots(tls: &UpstreamTlsOptions) -> Result<rustls::RootCertStore, Error> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = &tls.ca else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(Error::Certificate {
                path: "/etc/ssl/certs".into(),
                message: "no CA certificates on this system to verify https:// upstreams \
                          with; install ca-certificates or set upstream_tls.ca"
                    .into(),
            });
        }
        return Ok(roots);
    };
    let bad = |message: String| Error::Certificate {
        path: path.clone(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| bad(format!("cannot read it as PEM: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(format!("cannot read it as PEM: {err}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it; upstream_tls.ca is a PEM file of CA certificates".into(),
        ));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| bad(format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

/// One upstream: its `http://HOST:PORT` and whether it is believed up.
#[derive(Debug)]
pub struct Upstream {
    /// Scheme and authority.
    pub uri: Uri,
    up: AtomicBool,
}

impl Upstream {
    /// Whether the last probe or request reached it.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a probe's or a request's verdict; logs a change.
    pub fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            tracing::warn!(target: "palisade::gateway", upstream = %self.uri, up, "upstream state changed");
        }
    }
}

/// Every upstream, and where the round robin stands.
#[derive(Debug)]
pub struct Pool {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool of `uris`, all believed up until a probe says otherwise.
    pub fn new(uris: Vec<Uri>) -> Self {
        let upstreams = uris
            .into_iter()
            .map(|uri| Upstream {
                uri,
                up: AtomicBool::new(true),
            })
            .collect();
        Self {
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    /// The next upstream that is up, or `None` when all are down.
    pub fn pick(&self) -> Option<&Upstream> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.upstreams.len();
        (0..count)
            .map(|offset| &self.upstreams[(start + offset) % count])
            .find(|upstream| upstream.is_up())
    }

    /// Every upstream.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// Probes every upstream each `options.interval`, forever.
    pub async fn check_forever(
        self: Arc<Self>,
        client: Client<Connector, Empty<bytes::Bytes>>,
        options: HealthCheckOptions,
    ) {
        let mut ticks = tokio::time::interval(options.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for upstream in &self.upstreams {
                let up = probe(&client, upstream, &options).await;
                upstream.mark(up);
            }
        }
    }
}

async fn probe(
    client: &Client<Connector, Empty<bytes::Bytes>>,
    upstream: &Upstream,
    options: &HealthCheckOptions,
) -> bool {
    let Some(path) = &options.path else {
        return connects(&upstream.uri, options.timeout).await;
    };
    let uri = format!("{}{}", upstream.uri.to_string().trim_end_matches('/'), path);
    let Ok(request) = Request::get(uri).body(Empty::new()) else {
        return false;
    };
    match tokio::time::timeout(options.timeout, client.request(request)).await {
        Ok(Ok(response)) => response.status().as_u16() < 500,
        _ => false,
    }
}

async fn connects(uri: &Uri, timeout: Duration) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let address = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None if uri.scheme_str() == Some("https") => format!("{}:443", authority.host()),
        None => format!("{}:80", authority.host()),
    };
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_upstreams_that_are_down() {
        let pool = Pool::new(vec![
            "http://a:1".parse().unwrap(),
            "http://b:1".parse().unwrap(),
            "http://c:1".parse().unwrap(),
        ]);
        let picks: Vec<String> = (0..3)
            .map(|_| pool.pick().unwrap().uri.to_string())
            .collect();
        assert_eq!(picks, ["http://a:1/", "http://b:1/", "http://c:1/"]);
        pool.upstreams()[1].mark(false);
        let picks: Vec<String> = (0..4)
            .map(|_| pool.pick().unwrap().uri.to_string())
            .collect();
        assert!(!picks.iter().any(|p| p.contains("//b")), "{picks:?}");
        pool.upstreams()[0].mark(false);
        pool.upstreams()[2].mark(false);
        assert!(pool.pick().is_none());
    }
}
