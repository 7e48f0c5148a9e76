//! The challenge path through the whole gateway: answered by the gateway itself, with the
//! page's own policy (which the CSP layer leaves alone) and the security headers, and never
//! passed to the upstream.

use http::StatusCode;

use super::support::{TestGateway, Upstream, get, options};

#[tokio::test]
async fn the_challenge_page_keeps_its_own_policy_and_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let path = gateway.challenges.path();
    assert_eq!(path, "/.well-known/palisade/challenge");
    let (response, body) = gateway.send(get(&format!("{path}?return=/account"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let policies: Vec<_> = response
        .headers()
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(policies.len(), 1, "{policies:?}");
    let policy = &policies[0];
    assert!(
        policy.starts_with("default-src 'none'; script-src 'nonce-"),
        "{policy}"
    );
    let start = policy.find("'nonce-").unwrap() + 7;
    let nonce = &policy[start..start + policy[start..].find('\'').unwrap()];
    let page = String::from_utf8_lossy(&body);
    assert!(
        page.contains(&format!("<script nonce=\"{nonce}\">")),
        "{page}"
    );
    assert!(
        page.contains("name=\"return\" value=\"/account\""),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    let headers = response.headers();
    assert!(headers.contains_key("strict-transport-security"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
}
