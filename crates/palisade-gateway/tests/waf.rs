//! Attack detection through the real gateway with libmodsecurity and Debian's CRS: attacks in
//! each part of a request are refused with 403 and one `attack` event naming the rule, benign
//! requests reach the upstream unchanged, and detect-only lets attacks through with an event.
//! A test binary of its own, as it installs the process-wide tracing subscriber.

#![cfg(feature = "modsecurity")]

#[path = "waf/recorder.rs"]
#[allow(dead_code)] // the replayer's helpers
mod recorder;
#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::{Arc, OnceLock};

use palisade_waf::WafOptions;
use recorder::Recorder;
use support::{TestGateway, Upstream, options};

fn recorder() -> Arc<Recorder> {
    static RECORDER: OnceLock<Arc<Recorder>> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            let recorder = Arc::new(Recorder::default());
            tracing::subscriber::set_global_default(recorder.clone()).unwrap();
            recorder
        })
        .clone()
}

async fn gateway(waf: WafOptions) -> (Upstream, TestGateway) {
    recorder();
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    // The WAF alone: the CSRF check would refuse some of these requests first.
    options.csrf.mode = palisade_guard::CsrfMode::Off;
    options.waf = WafOptions {
        enabled: true,
        ..waf
    };
    let gateway = TestGateway::start(options).await;
    (upstream, gateway)
}

/// A request of `method` to `target` with these extra header lines and body.
fn request(method: &str, target: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: palisade-test\r\n\
         Accept: text/html\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `raw` and expects a 403 and one `attack` event for `route` whose rules include one
/// of `family` (like 942: SQL injection), with action `reject`.
async fn assert_blocked(
    gateway: &TestGateway,
    upstream: &Upstream,
    raw: &[u8],
    route: &str,
    family: u32,
) {
    let answer = gateway.raw(raw).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("attack"), "{answer}");
    let events = recorder().take_for(route, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.get("kind"), "attack");
    assert_eq!(event.get("action"), "reject");
    assert_eq!(event.get("status"), "403");
    let ids = event.rule_ids();
    assert!(ids.iter().any(|id| id / 1000 == family), "{route}: {ids:?}");
    assert!(ids.contains(&949110), "{ids:?}");
    assert!(
        !upstream
            .received()
            .iter()
            .any(|r| r.target.starts_with(route)),
        "the upstream saw {route}"
    );
}

#[tokio::test]
async fn attacks_in_every_part_of_a_request_are_refused_with_their_rule() {
    let (upstream, gateway) = gateway(WafOptions::default()).await;
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let cases: Vec<(Vec<u8>, &str, u32)> = vec![
        (
            request("GET", "/sqli-query?id=1%27%20OR%201=1--", "", ""),
            "/sqli-query",
            942,
        ),
        (
            request(
                "POST",
                "/xss-form",
                form,
                "comment=%3Cscript%3Ealert(document.cookie)%3C/script%3E",
            ),
            "/xss-form",
            941,
        ),
        (
            request(
                "GET",
                "/xss-cookie",
                "Cookie: theme=<script>alert(1)</script>\r\n",
                "",
            ),
            "/xss-cookie",
            941,
        ),
        (
            multipart(
                "/sqli-part",
                "name=\"q\"",
                "1' UNION SELECT password FROM users--",
            ),
            "/sqli-part",
            942,
        ),
        (
            multipart(
                "/php-filename",
                "name=\"f\"; filename=\"shell.php\"",
                "hello",
            ),
            "/php-filename",
            933,
        ),
        (
            multipart(
                "/php-filename-star",
                "name=\"f\"; filename*=UTF-8''shell%2Ephp",
                "hello",
            ),
            "/php-filename-star",
            933,
        ),
        (
            // Zero-width spaces inside the keywords, percent-encoded twice: only the
            // normalised form shows the injection.
            request(
                "GET",
                "/obfuscated?q=1%2527%2520UN%25E2%2580%258BION%2520SEL%25E2%2580%258BECT\
                 %2520password%2520FROM%2520users--",
                "",
                "",
            ),
            "/obfuscated",
            942,
        ),
    ];
    for (raw, route, family) in cases {
        assert_blocked(&gateway, &upstream, &raw, route, family).await;
    }
}

fn multipart(target: &str, disposition: &str, content: &str) -> Vec<u8> {
    let body = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nholiday\r\n\
         --b0undary\r\nContent-Disposition: form-data; {disposition}\r\n\
         Content-Type: text/plain\r\n\r\n{content}\r\n--b0undary--\r\n"
    );
    let headers = "Content-Type: multipart/form-data; boundary=b0undary\r\n";
    request("POST", target, headers, &body)
}

#[tokio::test]
async fn a_benign_request_reaches_the_upstream_unchanged() {
    let (upstream, gateway) = gateway(WafOptions::default()).await;
    let body = "name=Ada+Lovelace&comment=Lovely+shop%2C+thanks%21&qty=2";
    let raw = request(
        "POST",
        "/benign?page=2&sort=price",
        "Content-Type: application/x-www-form-urlencoded\r\nCookie: theme=dark\r\n",
        body,
    );
    let answer = gateway.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = upstream.received();
    let seen = received
        .iter()
        .find(|r| r.target.starts_with("/benign"))
        .unwrap();
    assert_eq!(seen.target, "/benign?page=2&sort=price");
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.headers["cookie"], "theme=dark");
    assert_eq!(seen.headers["content-length"], body.len().to_string());
    assert!(recorder().take_for("/benign", 0).await.is_empty());

    // A chunked body is read whole and forwarded with its length.
    let chunked = b"POST /benign-chunked HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\
        Accept: */*\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n5\r\n{\"a\":\r\n8\r\n\"hello\"}\r\n0\r\n\r\n";
    let answer = gateway.raw(chunked).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = upstream.received();
    let seen = received
        .iter()
        .find(|r| r.target == "/benign-chunked")
        .unwrap();
    assert_eq!(seen.body, "{\"a\":\"hello\"}".as_bytes());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_inspection() {
    recorder();
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csrf.mode = palisade_guard::CsrfMode::Off;
    options.waf.enabled = true;
    options.limits.max_body_bytes = 1000;
    let gateway = TestGateway::start(options).await;
    let raw = request(
        "POST",
        "/too-large",
        "Content-Type: text/plain\r\n",
        &"a".repeat(2000),
    );
    let answer = gateway.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let events = recorder().take_for("/too-large", 1).await;
    assert_eq!(events[0].get("rule"), "max-body-bytes");
}

#[tokio::test]
async fn detect_only_lets_an_attack_through_with_a_logged_event() {
    let waf = WafOptions {
        detect_only: true,
        ..Default::default()
    };
    let (upstream, gateway) = gateway(waf).await;
    let raw = request("GET", "/detect-only?id=1%27%20OR%201=1--", "", "");
    let answer = gateway.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let events = recorder().take_for("/detect-only", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].get("kind"), "attack");
    assert_eq!(events[0].get("action"), "log");
    assert!(
        events[0].rule_ids().iter().any(|id| id / 1000 == 942),
        "{events:?}"
    );
    assert!(
        upstream
            .received()
            .iter()
            .any(|r| r.target.starts_with("/detect-only"))
    );
}

#[tokio::test]
async fn an_excluded_rule_no_longer_blocks() {
    // The cookie XSS is found by 941100 (libinjection) and others; excluding every rule that
    // matched it lets it pass.
    let (_, blocking) = gateway(WafOptions::default()).await;
    let raw = request(
        "GET",
        "/exclusion",
        "Cookie: t=<script>alert(1)</script>\r\n",
        "",
    );
    let answer = blocking.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let events = recorder().take_for("/exclusion", 1).await;
    let excluded: Vec<u32> = events[0]
        .rule_ids()
        .into_iter()
        .filter(|id| *id != 949110)
        .collect();
    let (_, lenient) = gateway(WafOptions {
        exclusions: excluded.clone(),
        ..Default::default()
    })
    .await;
    let answer = lenient.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{excluded:?}: {answer}");
}

#[test]
fn a_missing_rules_folder_fails_at_start_naming_the_setting() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = palisade_gateway::GatewayOptions::new("http://127.0.0.1:1");
        options.listen = "127.0.0.1:0".parse().unwrap();
        options.waf.enabled = true;
        options.waf.rules_dir = "/nonexistent/crs".into();
        let self_signed = palisade_gateway::SelfSigned::generate(&["localhost".into()]).unwrap();
        let err = palisade_gateway::Gateway::bind(options, Some(self_signed))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("waf.rules_dir: "), "{text}");
        assert!(text.contains("apt-get install modsecurity-crs"), "{text}");
    });
}
