//! Proxying: what the upstream sees, round robin and health, upgrades, streaming.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper_util::rt::TokioIo;
use palisade_gateway::HostHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestGateway, Upstream, get, options};

#[tokio::test]
async fn the_upstream_gets_the_request_with_forwarding_headers_of_its_own() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let request = Request::post("/orders?id=7&x=%2F")
        .header("host", "localhost")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (response, body) = gateway.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "hello from upstream");

    let received = upstream.received();
    let got = &received[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, "/orders?id=7&x=%2F");
    assert_eq!(got.body, "payload");
    assert_eq!(got.headers["host"], "localhost");
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "https");
    assert_eq!(got.headers["x-forwarded-host"], "localhost");
    assert_eq!(
        got.headers["forwarded"],
        "for=127.0.0.1;proto=https;host=\"localhost\""
    );
    assert!(!got.headers.contains_key("x-hop"));
    assert!(!got.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_believed() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.client_ip.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gateway = TestGateway::start(options).await;
    let mut request = get("/");
    request
        .headers_mut()
        .insert("x-forwarded-for", "6.6.6.6, 203.0.113.5".parse().unwrap());
    gateway.send(request).await;
    let got = &upstream.received()[0];
    assert_eq!(got.headers["x-forwarded-for"], "203.0.113.5");
    assert_eq!(
        got.headers["forwarded"],
        "for=203.0.113.5;proto=https;host=\"localhost\""
    );
}

#[tokio::test]
async fn host_is_rewritten_to_the_upstream_when_configured() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.host_header = HostHeader::Upstream;
    let gateway = TestGateway::start(options).await;
    gateway.send(get("/")).await;
    assert_eq!(
        upstream.received()[0].headers["host"],
        upstream.addr.to_string()
    );
    assert_eq!(
        upstream.received()[0].headers["x-forwarded-host"],
        "localhost"
    );
}

#[tokio::test]
async fn requests_go_round_robin() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let mut options = options(&a);
    options.upstreams.push(b.url());
    let gateway = TestGateway::start(options).await;
    for _ in 0..4 {
        assert_eq!(gateway.send(get("/")).await.0.status(), StatusCode::OK);
    }
    assert_eq!((a.received().len(), b.received().len()), (2, 2));
}

#[tokio::test]
async fn an_upstream_that_is_down_is_skipped() {
    let live = Upstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = options(&live);
    options.upstreams.insert(0, format!("http://{dead}"));
    let gateway = TestGateway::start(options).await;
    // The first request may reach the dead one (502) before a probe marked it; none after.
    let first = gateway.send(get("/")).await.0.status();
    assert!(
        first == StatusCode::OK || first == StatusCode::BAD_GATEWAY,
        "{first}"
    );
    for _ in 0..4 {
        assert_eq!(gateway.send(get("/")).await.0.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_health_check_brings_an_upstream_back() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = palisade_gateway::GatewayOptions::new(format!("http://{addr}"));
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.health_check.interval = Duration::from_millis(100);
    let gateway = TestGateway::start(options).await;
    let status = gateway.send(get("/")).await.0.status();
    assert!(status.is_server_error(), "{status}");

    let upstream = Upstream::start_on(addr).await;
    let start = std::time::Instant::now();
    while gateway.send(get("/")).await.0.status() != StatusCode::OK {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the upstream stayed marked down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!upstream.received().is_empty());
}

#[tokio::test]
async fn no_upstream_up_is_a_503_page() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = palisade_gateway::GatewayOptions::new(format!("http://{dead}"));
    options.listen = "127.0.0.1:0".parse().unwrap();
    let gateway = TestGateway::start(options).await;
    let _ = gateway.send(get("/")).await;
    let (response, body) = gateway.send(get("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("503"));
    assert_eq!(response.headers()["x-frame-options"], "DENY");
}

/// The response head, read byte by byte up to the blank line.
async fn head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(Duration::from_secs(5), stream.read_u8()).await;
        head.push(byte.expect("no response head within 5 s").unwrap());
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn upgrades_are_joined_after_the_upstream_answers_101() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let mut stream = gateway.tls().await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"PING");
    assert_eq!(upstream.received()[0].headers["upgrade"], "echo");
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_stays_plain_http() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let request = b"GET /no-upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                    Upgrade: echo\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = gateway.raw(request).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // The bytes after the first request were read as a second request, not tunnelled.
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn response_bodies_stream_through() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let io = TokioIo::new(gateway.tls().await);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(get("/stream")).await.unwrap();
    let mut body = response.into_body();
    let wait = Duration::from_secs(5);
    let first = tokio::time::timeout(wait, body.frame())
        .await
        .expect("first chunk held back");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first;");
    upstream.release.notify_one();
    let second = tokio::time::timeout(wait, body.frame()).await.unwrap();
    assert_eq!(second.unwrap().unwrap().into_data().unwrap(), "second");
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let io = TokioIo::new(gateway.tls().await);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let (mut body_tx, body) = Channel::<Bytes, std::convert::Infallible>::new(1);
    let request = Request::post("/stream-up")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    body_tx
        .send_data(Bytes::from_static(b"part one"))
        .await
        .unwrap();
    // The upstream answers before the body ends; a buffering gateway would wait for the end.
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("the gateway waited for the whole request body")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(body_tx);
}

/// A gateway in front of `upstream_url`, with `configure` applied to its options.
async fn gateway_to(
    upstream: &Upstream,
    upstream_url: String,
    configure: impl FnOnce(&mut palisade_gateway::GatewayOptions),
) -> TestGateway {
    let mut options = options(upstream);
    options.upstreams = vec![upstream_url];
    configure(&mut options);
    TestGateway::start(options).await
}

#[tokio::test]
async fn https_upstreams_are_verified_and_spoken_to_in_http2_when_they_offer_it() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, ca) = Upstream::start_tls(dir.path(), &["h2", "http/1.1"]).await;
    let gateway = gateway_to(&upstream, upstream.https_url(), |o| {
        o.upstream_tls.ca = Some(ca.clone());
    })
    .await;
    let (response, body) = gateway.send(get("/over-tls")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "hello from upstream");
    let received = upstream.received();
    assert_eq!(received[0].version, http::Version::HTTP_2);
    // HTTP/2 carries the target in absolute form, with the upstream's authority.
    let target = format!("https://localhost:{}/over-tls", upstream.addr.port());
    assert_eq!(received[0].target, target);
    assert_eq!(received[0].headers["host"], "localhost");
    assert_eq!(received[0].headers["x-forwarded-proto"], "https");

    // An upstream that offers only HTTP/1.1 gets HTTP/1.1.
    let (upstream, ca) = Upstream::start_tls(dir.path(), &["http/1.1"]).await;
    let gateway = gateway_to(&upstream, upstream.https_url(), |o| {
        o.upstream_tls.ca = Some(ca.clone());
    })
    .await;
    assert_eq!(gateway.send(get("/")).await.0.status(), StatusCode::OK);
    assert_eq!(upstream.received()[0].version, http::Version::HTTP_11);
}

#[tokio::test]
async fn an_https_upstream_whose_certificate_is_not_trusted_is_never_sent_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _ca) = Upstream::start_tls(dir.path(), &["h2", "http/1.1"]).await;
    // The system's CAs do not know the upstream's self-signed certificate.
    let gateway = gateway_to(&upstream, upstream.https_url(), |_| {}).await;
    let (response, _) = gateway.send(get("/secret")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn http2_with_prior_knowledge_reaches_a_cleartext_upstream() {
    let upstream = Upstream::start().await;
    let gateway = gateway_to(&upstream, upstream.url(), |o| {
        o.upstream_protocol = palisade_gateway::UpstreamProtocol::Http2;
    })
    .await;
    let (response, body) = gateway.send(get("/h2c")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "hello from upstream");
    assert_eq!(upstream.received()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_used_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let mut options = palisade_gateway::GatewayOptions::new("https://localhost:1");
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.upstream_tls.ca = Some(not_pem.clone());
    let self_signed = palisade_gateway::SelfSigned::generate(&["localhost".into()]).unwrap();
    let err = palisade_gateway::Gateway::bind(options, Some(self_signed))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&not_pem.display().to_string()), "{err}");
    assert!(err.contains("no certificate in it"), "{err}");
}
