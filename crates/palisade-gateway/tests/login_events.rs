//! Security events of brute-force protection: a delay, a challenge, the start of a lockout and
//! each attempt refused during it, credential stuffing and an unreachable store each emit one
//! event, with the account for the login ones; plain failures and successes emit none. A test
//! binary of its own, as it installs the process-wide tracing subscriber.

#[path = "gateway/recorder.rs"]
mod recorder;
#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use palisade_gateway::GatewayOptions;
use recorder::{Fields, Recorder, field};
use support::{PASSWORD, TestGateway, Upstream};

fn login(source: &str, account: &str, password: &str) -> Request<Full<Bytes>> {
    login_with(source, account, password, "")
}

/// A login attempt carrying `cookie` (a challenge pass) when not empty.
fn login_with(source: &str, account: &str, password: &str, cookie: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/signin");
    if !cookie.is_empty() {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder
        .header(header::HOST, "localhost")
        .header("x-forwarded-for", source)
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "username={account}&password={}",
            password.replace(' ', "+")
        ))))
        .unwrap()
}

/// Checks that `events` is exactly one event with these fields.
fn one(events: &[Fields], (kind, rule, action, account): (&str, &str, &str, &str)) {
    assert_eq!(events.len(), 1, "{rule}: {events:?}");
    let event = &events[0];
    assert_eq!(field(event, "kind"), kind, "{event:?}");
    assert_eq!(field(event, "rule"), rule, "{event:?}");
    assert_eq!(field(event, "action"), action, "{event:?}");
    assert_eq!(field(event, "route"), "/signin", "{event:?}");
    assert_eq!(field(event, "client"), "192.0.2.80", "{event:?}");
    if !account.is_empty() {
        assert_eq!(field(event, "account"), account, "{event:?}");
    }
}

#[tokio::test]
async fn every_delay_challenge_lockout_and_stuffing_emits_one_event() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    let upstream = Upstream::start().await;
    let mut redis = palisade_testkit::redis::RedisServer::start();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n\
         [client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [challenge]\ndifficulty = 1\nmax_difficulty = 1\n\
         [brute_force]\ndelay_after = 2\nbase_delay = \"10ms\"\nmax_delay = \"10ms\"\n\
         challenge_after = 4\nlockout_after = 5\nstuffing_accounts = 3\n\
         [[brute_force.logins]]\npath = \"/signin\"\n\
         [[routes]]\nprefix = \"/signin\"\ncsrf = {{ mode = \"off\" }}\n\
         [state]\nredis = \"{}\"\n",
        upstream.url(),
        redis.url()
    );
    let options: GatewayOptions = toml::from_str(&text).unwrap();
    let gateway = TestGateway::start(options).await;
    let attacker = "192.0.2.80";

    // Failures and successes below the thresholds: none.
    for _ in 0..2 {
        let (response, _) = gateway.send(login(attacker, "victim", "nope")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(recorder.take(0).await, Vec::<Fields>::new());
    // Held back: one event, with the account.
    gateway.send(login(attacker, "victim", "nope")).await;
    one(
        &recorder.take(1).await,
        ("login_delayed", "login-delay", "delay", "victim"),
    );
    gateway.send(login(attacker, "victim", "nope")).await;
    recorder.take(1).await;
    // The fourth failure's count asks for a challenge.
    let (response, body) = gateway.send(login(attacker, "victim", "nope")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let demand: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let events = recorder.take(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(field(&events[0], "kind"), "challenge_required");
    assert_eq!(field(&events[0], "action"), "challenge");
    assert!(
        !format!("{events:?}").contains(PASSWORD) && !format!("{events:?}").contains("nope"),
        "no password in events: {events:?}"
    );

    // Solved (at difficulty 1, any of a few nonces), the fifth failure starts the lockout.
    let token = demand["challenge"]["token"].as_str().unwrap();
    let nonce = (0u32..)
        .find(|n| {
            use sha2::Digest;
            sha2::Sha256::digest(format!("{token}:{n}").as_bytes())[0] & 0x80 == 0
        })
        .unwrap();
    let answer = Request::post("/.well-known/palisade/challenge")
        .header(header::HOST, "localhost")
        .header("x-forwarded-for", attacker)
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "token={token}&nonce={nonce}&return=%2Fsignin"
        ))))
        .unwrap();
    let (response, _) = gateway.send(answer).await;
    assert_eq!(response.status(), StatusCode::OK);
    let pass = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    recorder.take(0).await;
    let (response, _) = gateway
        .send(login_with(attacker, "victim", "nope", &pass))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let events = recorder.take(2).await;
    let lockout: Vec<_> = events
        .iter()
        .filter(|e| field(e, "kind") == "locked_out")
        .cloned()
        .collect();
    one(
        &lockout,
        ("locked_out", "login-lockout", "lockout", "victim"),
    );
    // Each attempt during it: one refusal event, nothing more.
    for _ in 0..2 {
        let (response, _) = gateway
            .send(login_with(attacker, "victim", PASSWORD, &pass))
            .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        one(
            &recorder.take(1).await,
            ("locked_out", "login-lockout", "reject", "victim"),
        );
    }

    // Three accounts failing from one source: stuffing, once (beside the delay that the
    // source's own count brings by then).
    for account in ["a1", "a2"] {
        gateway.send(login("192.0.2.81", account, "nope")).await;
    }
    assert_eq!(recorder.take(0).await, Vec::<Fields>::new());
    gateway.send(login("192.0.2.81", "a3", "nope")).await;
    let events = recorder.take(2).await;
    let stuffing: Vec<_> = events
        .iter()
        .filter(|e| field(e, "kind") == "credential_stuffing")
        .collect();
    assert_eq!(stuffing.len(), 1, "{events:?}");
    assert_eq!(field(stuffing[0], "rule"), "stuffing-many-accounts");
    assert_eq!(field(stuffing[0], "action"), "log");

    // An unreachable store: one event per attempt, the attempt let through (on_failure open).
    redis.stop();
    let (response, _) = gateway.send(login(attacker, "walter", PASSWORD)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let events = recorder.take(1).await;
    one(
        &events,
        ("state_unavailable", "login-state", "log", "walter"),
    );
    redis.start_again();
}
