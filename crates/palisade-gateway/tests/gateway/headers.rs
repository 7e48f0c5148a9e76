//! Security headers on every response, cookie hardening and security.txt.

use http::{StatusCode, header};
use palisade_guard::SecurityTxtOptions;

use crate::support::{TestGateway, Upstream, get, options};

fn assert_hardened(headers: &http::HeaderMap, what: &str) {
    let expect = [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ];
    for (name, value) in expect {
        assert_eq!(
            headers.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{what}: {name}"
        );
    }
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(headers.contains_key("permissions-policy"), "{what}");
    assert!(
        !headers.contains_key(header::SERVER),
        "{what}: Server left in"
    );
    assert!(
        !headers.contains_key("x-powered-by"),
        "{what}: X-Powered-By left in"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.security_txt = Some(security_txt());
    let gateway = TestGateway::start(options).await;

    let (response, _) = gateway.send(get("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_hardened(response.headers(), "proxied");

    let (response, _) = gateway.send(get("/.well-known/security.txt")).await;
    assert_hardened(response.headers(), "security.txt");

    // A request refused by the gateway's own framing check, not by hyper's parser.
    let answer = gateway
        .raw(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("x-frame-options: deny"), "{answer}");
    assert!(
        answer.contains("strict-transport-security: max-age=63072000"),
        "{answer}"
    );

    // A head no parser can read (a bare CR) gets the same page and headers; after a good
    // request on the same connection, which is answered first.
    let answer = gateway
        .raw(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let refusal = &answer[answer.find("http/1.1 400").expect(&answer)..];
    assert!(refusal.contains("x-frame-options: deny"), "{refusal}");
    assert!(refusal.contains("strict-transport-security"), "{refusal}");
    assert!(refusal.contains("connection: close"), "{refusal}");
    assert!(
        refusal.contains("<title>400 bad request</title>"),
        "{refusal}"
    );
}

#[tokio::test]
async fn rejections_carry_the_security_headers_too() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.hosts = vec!["localhost".into()];
    let gateway = TestGateway::start(options).await;
    let mut forged = get("/");
    forged
        .headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    let (response, body) = gateway.send(forged).await;
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_hardened(response.headers(), "421 rejection");
    assert!(String::from_utf8_lossy(&body).contains("Palisade gateway"));
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn rejections_are_json_for_clients_that_prefer_it() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.hosts = vec!["localhost".into()];
    let gateway = TestGateway::start(options).await;
    let mut forged = get("/api/orders");
    forged
        .headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    forged
        .headers_mut()
        .insert("accept", "application/json".parse().unwrap());
    let (response, body) = gateway.send(forged).await;
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["error"]["status"], 421);
    assert_eq!(value["error"]["kind"], "unknown_host");
}

#[tokio::test]
async fn http2_responses_are_hardened_and_bodies_forwarded() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let output = gateway
        .curl(&[
            "--http2",
            "--include",
            "--data-binary",
            "h2 body",
            &gateway.url("/form"),
        ])
        .await;
    let text = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age=63072000"),
        "{text}"
    );
    assert!(!text.contains("\nserver:"), "{text}");
    let received = upstream.received();
    assert_eq!(received[0].body, "h2 body");
    assert_eq!(received[0].method, "POST");
}

#[tokio::test]
async fn a_route_gets_its_own_header_settings() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    let mut embed = palisade_gateway::RouteOptions::new("/embed");
    embed.headers.frame_options = palisade_guard::headers::FrameOptions::SameOrigin;
    options.routes.push(embed);
    let gateway = TestGateway::start(options).await;
    let frame = |response: &http::Response<()>| {
        let headers = response.headers();
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        let ancestors = csp.rsplit("; ").next().unwrap().to_string();
        (
            headers["x-frame-options"].to_str().unwrap().to_string(),
            ancestors,
        )
    };
    let (response, _) = gateway.send(get("/embed/widget")).await;
    assert_eq!(
        frame(&response),
        ("SAMEORIGIN".into(), "frame-ancestors 'self'".into())
    );
    assert_hardened_except_frames(response.headers());
    let (response, _) = gateway.send(get("/embedded")).await;
    assert_eq!(
        frame(&response),
        ("DENY".into(), "frame-ancestors 'none'".into())
    );
}

fn assert_hardened_except_frames(headers: &http::HeaderMap) {
    assert!(headers.contains_key("strict-transport-security"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(!headers.contains_key(header::SERVER));
}

#[tokio::test]
async fn csp_reports_are_collected_by_the_gateway() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csp_report = Some(Default::default());
    let gateway = TestGateway::start(options).await;
    let (response, _) = gateway.send(get("/")).await;
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(policy.starts_with("default-src 'self'; "), "{policy}");
    assert!(
        policy.ends_with("; report-uri /.well-known/csp-report; frame-ancestors 'none'"),
        "{policy}"
    );
    let report =
        r#"{"csp-report": {"effective-directive": "script-src", "blocked-uri": "inline"}}"#;
    let request = http::Request::post("/.well-known/csp-report")
        .header("host", "localhost")
        .header("content-type", "application/csp-report")
        .body(http_body_util::Full::new(bytes::Bytes::from(report)))
        .unwrap();
    let (response, _) = gateway.send(request).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let oversized = http::Request::post("/.well-known/csp-report")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b' ';
            20_000
        ])))
        .unwrap();
    assert_eq!(
        gateway.send(oversized).await.0.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (response, _) = gateway.send(get("/.well-known/csp-report")).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "POST");
    assert_eq!(
        upstream.received().len(),
        1,
        "only the GET of / reaches the upstream"
    );
}

/// The nonce in a policy.
fn nonce_of(policy: &str) -> &str {
    let start = policy.find("'nonce-").expect(policy) + "'nonce-".len();
    policy[start..].split('\'').next().unwrap()
}

#[tokio::test]
async fn pages_get_a_fresh_nonce_on_their_inline_code_and_are_not_cached() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let page = |path: &str| {
        http::Request::get(path)
            .header("host", "localhost")
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .header("accept-encoding", "gzip, br")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let (response, body) = gateway.send(page("/page")).await;
    let headers = response.headers();
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    let nonce = nonce_of(policy);
    assert!(
        policy.contains(&format!("script-src 'self' 'nonce-{nonce}'")),
        "{policy}"
    );
    assert!(
        policy.contains(&format!("style-src 'self' 'nonce-{nonce}'")),
        "{policy}"
    );
    assert!(policy.contains("object-src 'none'"), "{policy}");
    let body = String::from_utf8(body.to_vec()).unwrap();
    // The page's own script and style, and the CSRF layer's script.
    assert_eq!(
        body.matches(&format!(" nonce=\"{nonce}\"")).count(),
        3,
        "{body}"
    );
    assert!(
        body.contains(&format!("<script nonce=\"{nonce}\">(() =>")),
        "{body}"
    );
    assert!(
        body.contains("<img src=\"/missing.png\" onerror="),
        "{body}"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "private, no-store");
    assert!(!headers.contains_key(header::ETAG));
    let received = upstream.received();
    assert!(
        !received[0].headers.contains_key("accept-encoding"),
        "a page load is asked for uncompressed: {:?}",
        received[0].headers
    );

    let (again, _) = gateway.send(page("/page")).await;
    let other = again.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert_ne!(nonce_of(other), nonce, "each response has its own nonce");

    // A compressed page cannot be rewritten: it passes unchanged, with a policy without a
    // nonce, which blocks its inline code rather than trusting it.
    let (response, body) = gateway.send(page("/page-gzip")).await;
    assert_eq!(body, crate::support::PAGE);
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(!policy.contains("nonce"), "{policy}");
}

#[tokio::test]
async fn a_route_can_try_its_policy_report_only() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.routes = vec![palisade_gateway::RouteOptions {
        csp: Some(palisade_guard::CspOptions {
            mode: palisade_guard::CspMode::ReportOnly,
            ..Default::default()
        }),
        ..palisade_gateway::RouteOptions::new("/page")
    }];
    let gateway = TestGateway::start(options).await;
    let (response, body) = gateway.send(get("/page")).await;
    let headers = response.headers();
    let policy = headers["content-security-policy-report-only"]
        .to_str()
        .unwrap();
    assert!(body.windows(7).any(|w| w == b"nonce=\""), "{policy}");
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        "frame-ancestors 'none'",
        "the enforced policy keeps only frame-ancestors"
    );
    let (response, _) = gateway.send(get("/other")).await;
    assert!(
        !response
            .headers()
            .contains_key("content-security-policy-report-only")
    );
}

#[tokio::test]
async fn upstream_cookies_are_hardened() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let (response, _) = gateway.send(get("/cookies")).await;
    let cookies: Vec<&str> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "sid=abc; Path=/; Secure; HttpOnly; SameSite=Lax",
            "__Host-id=1; Path=/; Secure; HttpOnly; SameSite=Lax",
        ]
    );
}

fn security_txt() -> SecurityTxtOptions {
    SecurityTxtOptions {
        contact: vec!["mailto:security@example.com".into()],
        expires: "2030-01-01T00:00:00Z".into(),
        preferred_languages: Some("en".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn security_txt_is_served_by_the_gateway() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.security_txt = Some(security_txt());
    let gateway = TestGateway::start(options).await;
    let (response, body) = gateway.send(get("/.well-known/security.txt")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        body,
        "Contact: mailto:security@example.com\nExpires: 2030-01-01T00:00:00Z\nPreferred-Languages: en\n"
    );
    assert!(upstream.received().is_empty());
}
