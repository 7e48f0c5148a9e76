//! The one client-address resolver: the connection's peer, or, behind trusted proxies, the
//! rightmost untrusted hop of `X-Forwarded-For` or `Forwarded`.
//!
//! Without trusted proxies, forwarded headers are ignored, so a client cannot choose its own
//! address. The result goes into the request's extensions as [`ClientAddr`] for later layers.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request};
use ipnet::IpNet;
use serde::Deserialize;
use tower::{Layer, Service};

/// The connection a request came on; the server puts it into the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The resolved client address, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Which forwarded header trusted proxies set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// How to find the client's address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpOptions {
    /// Proxies in front of this server whose forwarded headers are believed (CIDR list).
    /// Empty: forwarded headers are ignored.
    #[serde(default, deserialize_with = "crate::settings::networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// The header the trusted proxies set.
    #[serde(default)]
    pub header: ForwardedHeader,
}

impl ClientIpOptions {
    /// The client address of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
            ForwardedHeader::Forwarded => forwarded_for(headers),
        };
        // Walk from the nearest hop outwards; the first one we do not trust is the client. A
        // hop that is no address ends the walk at the last trusted one, who wrote it.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop else { return client };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Every `X-Forwarded-For` hop in order; `None` for one that is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(parse_hop).collect(),
            Err(_) => vec![None],
        })
        .collect()
}

/// Every `for=` of `Forwarded` in order; `None` for a hidden or unparsable one.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in split_outside_quotes(text, ',') {
            let node = split_outside_quotes(element, ';')
                .into_iter()
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map(|(_, node)| node.trim().trim_matches('"'));
            hops.push(node.and_then(parse_hop));
        }
    }
    hops
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// Resolves the client address of every request; see the module documentation.
#[derive(Debug, Clone)]
pub struct ClientIpLayer {
    options: Arc<ClientIpOptions>,
}

impl ClientIpLayer {
    /// A resolver with these options.
    pub fn new(options: ClientIpOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIp<S>;

    fn layer(&self, inner: S) -> ClientIp<S> {
        ClientIp {
            inner,
            options: self.options.clone(),
        }
    }
}

/// The service of [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIp<S> {
    inner: S,
    options: Arc<ClientIpOptions>,
}

impl<S, B> Service<Request<B>> for ClientIp<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if let Some(peer) = req.extensions().get::<Peer>().copied() {
            let client = self.options.resolve(peer.addr.ip(), req.headers());
            req.extensions_mut().insert(ClientAddr(client));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(trusted: &[&str], header: ForwardedHeader) -> ClientIpOptions {
        ClientIpOptions {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_are_ranges_or_single_addresses() {
        let read = |json: &str| serde_json::from_str::<ClientIpOptions>(json);
        let options =
            read(r#"{"trusted_proxies": ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]}"#).unwrap();
        assert!(options.is_trusted("192.168.1.7".parse().unwrap()));
        assert!(!options.is_trusted("192.168.1.8".parse().unwrap()));
        let err = read(r#"{"trusted_proxies": ["10.0.0/8"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`10.0.0/8` is not an IP address or CIDR range"),
            "{err}"
        );
    }

    #[test]
    fn forwarded_headers_are_ignored_without_trusted_proxies() {
        let options = options(&[], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(options.resolve(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let options = options(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["10.0.0.7"]);
        assert_eq!(options.resolve(ip("198.51.100.4"), &h), ip("198.51.100.4"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_wins_over_spoofed_ones() {
        let options = options(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client sent "1.1.1.1" itself; the proxies appended 203.0.113.9 and 10.0.0.2.
        let h = headers("x-forwarded-for", &["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(options.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_proxy_that_wrote_it() {
        let options = options(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["203.0.113.9, nonsense, 10.0.0.2"]);
        assert_eq!(options.resolve(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let options = options(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["10.0.0.3, 10.0.0.2"]);
        assert_eq!(options.resolve(ip("10.0.0.1"), &h), ip("10.0.0.3"));
    }

    #[test]
    fn forwarded_header_with_ports_and_ipv6() {
        let options = options(&["10.0.0.0/8", "::1/128"], ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=198.51.100.1;proto=https, for=\"[2001:db8::5]:4711\";by=x, for=10.0.0.9"],
        );
        assert_eq!(options.resolve(ip("::1"), &h), ip("2001:db8::5"));
        let hidden = headers("forwarded", &["for=_hidden, for=10.0.0.9"]);
        assert_eq!(options.resolve(ip("::1"), &hidden), ip("10.0.0.9"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_ranges() {
        let options = options(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(
            options.resolve(ip("::ffff:10.0.0.1"), &h),
            ip("203.0.113.9")
        );
    }
}
