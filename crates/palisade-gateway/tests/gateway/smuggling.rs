//! Request smuggling and desync: ambiguous framing sent as raw bytes is refused with a 400
//! response, and the upstream receives nothing of it.

use crate::support::{TestGateway, Upstream, options};

async fn gateway() -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    (upstream, gateway)
}

/// Sends `framing` headers with `body` after a POST head, and returns the answer.
async fn post(gateway: &TestGateway, framing: &str, body: &str) -> String {
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\n{framing}Connection: close\r\n\r\n{body}"
    );
    gateway.raw(request.as_bytes()).await
}

async fn assert_refused(framing: &str, body: &str) {
    let (upstream, gateway) = gateway().await;
    let answer = post(&gateway, framing, body).await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "{framing:?} got: {answer}"
    );
    assert!(
        upstream.received().is_empty(),
        "{framing:?} reached the upstream: {:?}",
        upstream.received()
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    // The classic CL.TE: a front end reading Content-Length would forward the smuggled GET.
    let smuggled = "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_refused(
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        smuggled,
    )
    .await;
    assert_refused(
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        smuggled,
    )
    .await;
}

#[tokio::test]
async fn transfer_encodings_other_than_chunked_are_refused() {
    for te in [
        "chunked, identity",
        "identity",
        "gzip, chunked",
        "xchunked",
        "chunked\r\nTransfer-Encoding: identity",
    ] {
        assert_refused(&format!("Transfer-Encoding: {te}\r\n"), "0\r\n\r\n").await;
    }
}

#[tokio::test]
async fn malformed_transfer_encoding_header_names_are_refused() {
    assert_refused("Transfer-Encoding : chunked\r\n", "0\r\n\r\n").await;
    assert_refused("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n").await;
}

#[tokio::test]
async fn invalid_content_lengths_are_refused() {
    for cl in ["+5", "0x5", "5, 6", "5, 5", "-5", "5 5", "1e1"] {
        assert_refused(&format!("Content-Length: {cl}\r\n"), "hello").await;
    }
    assert_refused("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!").await;
}

#[tokio::test]
async fn repeated_equal_content_lengths_are_forwarded_as_one() {
    // RFC 9112 section 6.3 lets a recipient merge equal values; hyper does, and the upstream
    // sees one Content-Length that matches the body.
    let (upstream, gateway) = gateway().await;
    let answer = post(
        &gateway,
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "hello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = upstream.received();
    assert_eq!(received[0].body, "hello");
    assert_eq!(
        received[0].headers.get_all("content-length").iter().count(),
        1
    );
}

#[tokio::test]
async fn bare_line_feeds_and_carriage_returns_are_refused() {
    let (upstream, gateway) = gateway().await;
    let answer = gateway
        .raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "bare CR: {answer}");
    let answer = gateway
        .raw(b"GET / HTTP/1.1\rHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "bare CR ending a line: {answer}"
    );
    // httparse accepts a bare LF as a line end; the gateway's framing watch refuses it.
    let answer = gateway
        .raw(b"GET / HTTP/1.1\nHost: localhost\nConnection: close\n\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "bare LF: {answer}");
    let answer = gateway
        .raw(b"GET / HTTP/1.1\r\nHost: localhost\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "one bare LF: {answer}");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn the_refusal_of_ambiguous_framing_is_the_gateways_own_page() {
    let (_upstream, gateway) = gateway().await;
    let answer = post(
        &gateway,
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "0\r\n\r\n",
    )
    .await;
    assert!(answer.contains("ambiguous_framing"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-frame-options: deny"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_leading_space_before_chunked_is_read_as_chunked_and_forwarded_clean() {
    // httparse trims the value, so ` chunked` is `chunked`: not ambiguous. The upstream must
    // see exactly the body the gateway decoded, re-framed by the gateway.
    let (upstream, gateway) = gateway().await;
    let answer = post(
        &gateway,
        "Transfer-Encoding:  chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, "hello");
}

#[tokio::test]
async fn malformed_chunked_bodies_never_reach_the_upstream_whole() {
    let (upstream, gateway) = gateway().await;
    for body in [
        "5\r\nhello world\r\n0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
    ] {
        let answer = post(&gateway, "Transfer-Encoding: chunked\r\n", body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?} got: {answer}");
        assert!(answer.contains("x-frame-options: DENY"), "{answer}");
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn a_pipelined_request_is_forwarded_as_its_own_request() {
    // After a well-framed chunked body, the next bytes are a second request, judged on its own.
    let (upstream, gateway) = gateway().await;
    let answer = gateway
        .raw(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
              GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let targets: Vec<String> = upstream.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/", "/second"]);
}

#[tokio::test]
async fn ambiguous_framing_after_a_refused_upgrade_is_still_refused() {
    let (upstream, gateway) = gateway().await;
    let answer = gateway
        .raw(
            b"GET /no-upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n\
              POST /second HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let targets: Vec<String> = upstream.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/no-upgrade"]);
}

#[tokio::test]
async fn targets_that_are_not_paths_are_refused() {
    let (upstream, gateway) = gateway().await;
    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n",
    ] {
        let answer = gateway.raw(request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}

#[tokio::test]
async fn ambiguous_framing_after_a_refused_connect_is_still_refused() {
    let (upstream, gateway) = gateway().await;
    let answer = gateway
        .raw(
            b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n\
              POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 400").count(), 2, "{answer}");
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}
