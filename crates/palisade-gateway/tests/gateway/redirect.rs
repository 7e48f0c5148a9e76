//! The plain-HTTP listener: 308 to HTTPS for configured hosts only, ACME passthrough.

use crate::support::{TestGateway, Upstream, options, read_all};
use tokio::io::AsyncWriteExt;

async fn gateway(upstream: &Upstream) -> TestGateway {
    let mut options = options(upstream);
    options.hosts = vec!["localhost".into()];
    options.http_listen = Some("127.0.0.1:0".parse().unwrap());
    TestGateway::start(options).await
}

async fn plain(gateway: &TestGateway, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(gateway.http_addr.unwrap())
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_all(&mut stream).await
}

#[tokio::test]
async fn configured_hosts_are_redirected_with_path_and_query() {
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream).await;
    let answer = plain(
        &gateway,
        "GET /a/b?c=d&e=%2F HTTP/1.1\r\nHost: LOCALHOST:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let location = format!(
        "https://localhost:{}/a/b?c=d&e=%2F\r\n",
        gateway.addr.port()
    );
    assert!(answer.contains(&location), "{answer}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn a_forged_host_gets_no_redirect() {
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream).await;
    for host in [
        "evil.example",
        "localhost.evil.example",
        "localhost@evil.example",
    ] {
        let request = format!("GET /login HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = plain(&gateway, &request).await;
        assert!(
            answer.starts_with("HTTP/1.1 421") || answer.starts_with("HTTP/1.1 400"),
            "{host}: {answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("location:"),
            "{host}: {answer}"
        );
    }
    let absolute =
        "GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = plain(&gateway, absolute).await;
    assert!(
        !answer.to_ascii_lowercase().contains("location:"),
        "{answer}"
    );
    let missing = "GET / HTTP/1.0\r\n\r\n";
    let answer = plain(&gateway, missing).await;
    assert!(
        !answer.to_ascii_lowercase().contains("location:"),
        "{answer}"
    );
}

#[tokio::test]
async fn acme_challenges_reach_the_upstream_over_plain_http() {
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream).await;
    let request = "GET /.well-known/acme-challenge/token1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = plain(&gateway, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = upstream.received();
    assert_eq!(received[0].target, "/.well-known/acme-challenge/token1");
    assert_eq!(received[0].headers["x-forwarded-proto"], "http");
}
