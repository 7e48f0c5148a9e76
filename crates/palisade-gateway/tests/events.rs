//! Security events: every refusal, the gateway's and hyper's own, emits exactly one event on
//! `palisade::security` with its kind, client, route, rule and action. A test binary of its
//! own, as it installs the process-wide tracing subscriber.

#[path = "gateway/recorder.rs"]
mod recorder;
#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::{sync::Arc, time::Duration};

use recorder::{Recorder, field};

use support::{TestGateway, Upstream, options, read_all};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn every_refusal_emits_one_security_event() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.hosts = vec!["localhost".into()];
    options.timeouts.header_read = Duration::from_millis(300);
    options.csp_report = Some(Default::default());
    options.routes = vec![palisade_gateway::RouteOptions {
        csrf: palisade_guard::CsrfRouteOptions {
            mode: Some(palisade_guard::CsrfMode::LogOnly),
            json: false,
        },
        ..palisade_gateway::RouteOptions::new("/beta")
    }];
    options.routes.push(palisade_gateway::RouteOptions {
        validate: Some(toml::from_str("params.id = { type = \"integer\" }").unwrap()),
        ..palisade_gateway::RouteOptions::new("/orders")
    });
    options.rate_limit =
        toml::from_str("[[rules]]\nname = \"search\"\nprefixes = [\"/search\"]\nrate = \"1/h\"\n")
            .unwrap();
    let gateway = TestGateway::start(options).await;

    let cases: [(&[u8], &str, &str, &str, &str); 9] = [
        (
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "malformed",
            "request-body-malformed",
            "/upload",
            "reject",
        ),
        (
            b"POST /login?pw=x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "ambiguous_framing",
            "content-length-with-transfer-encoding",
            "/login",
            "reject",
        ),
        (
            b"GET /admin HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            "unknown_host",
            "host-not-configured",
            "/admin",
            "reject",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\nConnection: close\r\n\r\n",
            "malformed",
            "http-parse-error",
            "",
            "reject",
        ),
        (
            b"POST /account HTTP/1.1\r\nHost: localhost\r\nCookie: sid=1\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
            "csrf",
            "csrf-token-missing",
            "/account",
            "reject",
        ),
        (
            b"DELETE /account HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\n\
              Connection: close\r\n\r\n",
            "csrf",
            "csrf-cross-site",
            "/account",
            "reject",
        ),
        (
            b"POST /beta/account HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
            "csrf",
            "csrf-origin-mismatch",
            "/beta/account",
            "log",
        ),
        (
            b"GET /orders?id=1%20OR%201=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "invalid_input",
            "param-type",
            "/orders",
            "reject",
        ),
        (
            // The rule's one request an hour went to the test below; this one is over.
            b"GET /search?q=x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "rate_limited",
            "search",
            "/search",
            "reject",
        ),
    ];
    // The search limit's one request: passes, with no event.
    let answer = gateway
        .raw(b"GET /search HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (raw, kind, rule, route, action) in cases {
        let answer = gateway.raw(raw).await;
        // Only a log-only rule lets the request through.
        assert_eq!(
            answer.starts_with("HTTP/1.1 200"),
            action == "log",
            "{answer}"
        );
        let events = recorder.take(1).await;
        assert_eq!(events.len(), 1, "{kind}: {events:?}");
        let event = &events[0];
        assert_eq!(field(event, "kind"), kind);
        assert_eq!(field(event, "rule"), rule);
        assert_eq!(field(event, "route"), route);
        assert_eq!(field(event, "action"), action);
        assert_eq!(field(event, "client"), "127.0.0.1");
        assert!(!format!("{event:?}").contains("pw=x"), "{event:?}");
    }

    let report = r#"{"csp-report": {"document-uri": "https://localhost/cart?s=1",
        "effective-directive": "script-src-elem", "blocked-uri": "https://evil.example/x.js"}}"#;
    let request = format!(
        "POST /.well-known/csp-report HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{report}",
        report.len()
    );
    let answer = gateway.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let events = recorder.take(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(field(&events[0], "kind"), "csp_violation");
    assert_eq!(
        field(&events[0], "rule"),
        "script-src-elem https://evil.example"
    );
    assert_eq!(field(&events[0], "route"), "/cart");
    assert_eq!(field(&events[0], "action"), "report");

    let large = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    gateway.raw(large.as_bytes()).await;
    let events = recorder.take(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(field(&events[0], "kind"), "headers_too_large");

    let mut slow = gateway.tls().await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    read_all(&mut slow).await;
    let events = recorder.take(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(field(&events[0], "kind"), "slow_headers");
    assert_eq!(field(&events[0], "action"), "close");
}
