//! Limits and timeouts: every refusal is a response, and slow clients are cut off.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestGateway, Upstream, options, read_all};

#[tokio::test]
async fn a_declared_body_over_the_limit_is_a_413() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.limits.max_body_bytes = 10;
    let gateway = TestGateway::start(options).await;
    let answer = gateway
        .raw(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world")
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_a_413() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.limits.max_body_bytes = 10;
    let gateway = TestGateway::start(options).await;
    let answer = gateway
        .raw(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn a_long_uri_is_a_414() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.limits.max_uri_bytes = 100;
    let gateway = TestGateway::start(options).await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "a".repeat(200)
    );
    let answer = gateway.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_a_431() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.limits.max_headers = 10;
    let gateway = TestGateway::start(options).await;
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n");
    let answer = gateway.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "many headers: {answer}");
    let large = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20_000)
    );
    let answer = gateway.raw(large.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "large header: {answer}");
    // The gateway's own page and headers, not hyper's bare status line.
    assert!(answer.contains("x-frame-options: DENY"), "{answer}");
    assert!(answer.contains("headers_too_large"), "{answer}");

    // The same over HTTP/2, for a header list over the limit.
    let big = format!("X-Big: {}", "b".repeat(20_000));
    let output = gateway
        .curl(&["--http2", "-i", "-H", &big, &gateway.url("/")])
        .await;
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.starts_with("HTTP/2 431"), "{answer}");
    assert!(answer.contains("x-frame-options: DENY"), "{answer}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.timeouts.header_read = Duration::from_millis(300);
    let gateway = TestGateway::start(options).await;
    let mut stream = gateway.tls().await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // read_all fails the test unless the gateway closes within five seconds.
    let answer = read_all(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_body_that_trickles_is_a_408() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.timeouts.body_read = Duration::from_millis(300);
    let gateway = TestGateway::start(options).await;
    let mut stream = gateway.tls().await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc")
        .await
        .unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.timeouts.idle = Duration::from_millis(300);
    let gateway = TestGateway::start(options).await;
    let mut stream = gateway.tls().await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    let closed = matches!(
        read.expect("idle connection still open after 5 s"),
        Ok(0) | Err(_)
    );
    assert!(closed);
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.limits.max_connections = 1;
    let gateway = TestGateway::start(options).await;
    let first = gateway.tls().await;
    // The second connection is queued, not refused: its handshake waits for the first to go.
    let second = tokio::spawn({
        let (addr, ca) = (gateway.addr, gateway.ca.clone());
        async move { crate::support::tls_connect(addr, &ca, "localhost").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served beyond the cap"
    );
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second).await;
    second
        .expect("the queued connection was never served")
        .unwrap();
}
