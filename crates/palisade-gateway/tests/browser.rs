//! A real browser (Debian's headless Chromium) loads a page through the gateway: the page's own
//! inline code runs with its nonce, and a stored XSS in it is blocked by the default policy, or
//! only reported in report-only mode; the challenge page's script solves its proof of work and
//! the browser comes back with the pass. `PALISADE_CHROMIUM` names the browser, `/usr/bin/chromium`
//! by default; the test fails when it is missing, as every test whose server is missing.

#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::PathBuf;

use palisade_guard::{CspMode, CspOptions};
use support::{TestGateway, Upstream, options};

fn chromium() -> PathBuf {
    let path = std::env::var_os("PALISADE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium (apt-get install chromium) or name the \
         browser in PALISADE_CHROMIUM",
        path.display()
    );
    path
}

/// The page's DOM after its scripts ran (and the navigations they started), as Chromium saw it.
async fn dom_of(url: &str) -> String {
    let (success, dom, stderr) = load(url).await;
    assert!(
        success && dom.contains("<h1>Shop</h1>"),
        "chromium: {stderr}\n{dom}"
    );
    dom
}

/// Chromium's exit, the DOM it ended with and what it said on stderr, after loading `url`.
async fn load(url: &str) -> (bool, String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn gateway(csp: CspOptions) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csp = csp;
    let gateway = TestGateway::start(options).await;
    (upstream, gateway)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_own_script_runs_and_an_injected_handler_does_not() {
    let (_upstream, gateway) = gateway(CspOptions::default()).await;
    let dom = dom_of(&gateway.url("/page")).await;
    assert!(dom.contains("data-inline=\"ran\""), "{dom}");
    assert!(!dom.contains("data-xss"), "the onerror handler ran: {dom}");
}

#[tokio::test(flavor = "multi_thread")]
async fn report_only_blocks_nothing() {
    let csp = CspOptions {
        mode: CspMode::ReportOnly,
        ..Default::default()
    };
    let (_upstream, gateway) = gateway(csp).await;
    let dom = dom_of(&gateway.url("/page")).await;
    assert!(dom.contains("data-inline=\"ran\""), "{dom}");
    assert!(dom.contains("data-xss=\"ran\""), "{dom}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nonces_the_policy_blocks_the_pages_own_script_too() {
    let csp = CspOptions {
        nonce_scripts: String::new(),
        ..Default::default()
    };
    let (_upstream, gateway) = gateway(csp).await;
    let dom = dom_of(&gateway.url("/page")).await;
    assert!(!dom.contains("data-inline"), "{dom}");
    assert!(!dom.contains("data-xss"), "{dom}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_app_sends_its_csrf_token_with_fetch_xhr_and_forms() {
    let (upstream, gateway) = gateway(CspOptions::default()).await;
    let (success, dom, stderr) = load(&gateway.url("/app")).await;
    assert!(success, "chromium: {stderr}\n{dom}");
    // The gateway refuses a cookie-carrying post without a valid token, so each request that
    // reached the upstream passed the check.
    let received = upstream.received();
    let reached = |path: &str| received.iter().find(|r| r.target == path).cloned();
    for path in ["/api/save", "/api/xhr"] {
        let request = reached(path).unwrap_or_else(|| panic!("{path} never arrived: {dom}"));
        assert!(
            request.headers.contains_key("x-csrf-token"),
            "{path}: {:?}",
            request.headers
        );
        assert!(
            request.headers.contains_key("cookie"),
            "{path}: {:?}",
            request.headers
        );
    }
    let submitted = reached("/submit").unwrap_or_else(|| panic!("the form was not sent: {dom}"));
    let body = String::from_utf8_lossy(&submitted.body);
    assert!(body.starts_with("palisade_csrf="), "{body}");
    assert!(body.ends_with("&q=1"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_challenge_page_solves_itself_and_the_browser_returns_with_a_pass() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    // Low, so that the test is fast; 16, the default, takes this Chromium half a second more.
    let difficulty = 8;
    options.challenge.difficulty = difficulty;
    options.challenge.max_difficulty = difficulty;
    let gateway = TestGateway::start(options).await;
    let started = std::time::Instant::now();
    // The page's script hashes, posts the form, and follows the 303 back to /page.
    let dom = dom_of(&gateway.url("/.well-known/palisade/challenge?return=/page")).await;
    let took = started.elapsed();
    assert!(dom.contains("data-inline=\"ran\""), "{dom}");
    let received = upstream.received();
    assert!(
        received
            .iter()
            .all(|r| !r.target.contains("/.well-known/palisade/")),
        "the challenge path reached the upstream: {received:?}"
    );
    let page = received
        .iter()
        .find(|r| r.target == "/page")
        .unwrap_or_else(|| panic!("never came back to /page: {received:?}"));
    let cookie = page
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cookie.contains("__Host-palisade-pass="), "{cookie:?}");
    assert!(
        gateway
            .challenges
            .has_pass(&page.headers, "127.0.0.1".parse().unwrap()),
        "{cookie}"
    );
    assert!(
        !gateway
            .challenges
            .has_pass(&page.headers, "192.0.2.1".parse().unwrap())
    );
    eprintln!("Chromium solved difficulty {difficulty} and came back in {took:?}");
}
