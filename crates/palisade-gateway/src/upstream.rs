//! The upstream pool: round robin over the upstreams a health check has not marked down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use crate::options::HealthCheckOptions;

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
        client: Client<HttpConnector, Empty<bytes::Bytes>>,
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
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
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
