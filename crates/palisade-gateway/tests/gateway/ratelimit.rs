//! Rate limits through the gateway: exact admission under concurrency, keys that forged
//! headers and path spellings cannot change, IPv6 prefixes, and the 429 answer.

use std::sync::Arc;

use http::{StatusCode, header};
use palisade_gateway::GatewayOptions;

use crate::support::{TestGateway, Upstream, get};

/// A gateway in front of `upstream` with the settings of `toml` (`[rate_limit]`, ...).
async fn gateway(upstream: &Upstream, toml: &str) -> TestGateway {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n{toml}",
        upstream.url()
    );
    let options: GatewayOptions = toml::from_str(&text).unwrap();
    TestGateway::start(options).await
}

const LOGIN_LIMIT: &str = "[[rate_limit.rules]]\nname = \"login\"\nprefixes = [\"/login\"]\n\
                           rate = \"5/h\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_burst_passes_when_clients_race() {
    let upstream = Upstream::start().await;
    let gateway = Arc::new(gateway(&upstream, LOGIN_LIMIT).await);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(
            async move { gateway.send(get("/login")).await },
        ));
    }
    let mut statuses = Vec::new();
    let mut limited = None;
    for task in tasks {
        let (response, _) = task.await.unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
        }
    }
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(passed, 5, "{statuses:?}");
    assert_eq!(statuses.len() - passed, 35);
    assert_eq!(upstream.received().len(), 5);
    let limited = limited.unwrap();
    let headers = limited.headers();
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=720).contains(&retry),
        "one request comes back every 12 minutes: {retry}"
    );
    assert_eq!(headers["ratelimit-policy"], "\"login\";q=5;w=3600");
    assert_eq!(headers["ratelimit"], format!("\"login\";r=0;t={retry}"));
    // Other paths are not limited.
    assert_eq!(gateway.send(get("/other")).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn spellings_of_the_path_and_forged_addresses_share_the_counter() {
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream, LOGIN_LIMIT).await;
    let spellings = ["/login", "/login/", "/%6cogin", "/./login", "//login"];
    for (n, path) in spellings.iter().enumerate() {
        let mut req = get(path);
        // No trusted proxy: a forwarded address must not make a new client.
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("198.51.100.{n}").parse().unwrap(),
        );
        assert_eq!(gateway.send(req).await.0.status(), StatusCode::OK, "{path}");
    }
    let (response, body) = gateway.send(get("/login/./")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("Too many requests"));
}

#[tokio::test]
async fn addresses_of_one_ipv6_prefix_share_a_counter_and_others_do_not() {
    let upstream = Upstream::start().await;
    let settings = format!(
        "{LOGIN_LIMIT}[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [rate_limit]\nallow = [\"2001:db8:ffff::/48\"]\n"
    );
    let gateway = gateway(&upstream, &settings).await;
    let from = |client: &str| {
        let mut req = get("/login");
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        req
    };
    // One /64, five addresses: its burst is spent.
    for n in 1..=5 {
        let client = format!("2001:db8:1:2::{n:x}");
        assert_eq!(gateway.send(from(&client)).await.0.status(), StatusCode::OK);
    }
    let rotated = from("2001:db8:1:2:dead:beef:0:1");
    assert_eq!(
        gateway.send(rotated).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The next /64 and an IPv4 client have their own; an allowed range has none.
    assert_eq!(
        gateway.send(from("2001:db8:1:3::1")).await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        gateway.send(from("192.0.2.1")).await.0.status(),
        StatusCode::OK
    );
    for _ in 0..10 {
        let allowed = from("2001:db8:ffff:1::1");
        assert_eq!(gateway.send(allowed).await.0.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_global_rule_limits_everyone_together_and_answers_carry_the_state() {
    let upstream = Upstream::start().await;
    let settings = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
                    [[rate_limit.rules]]\nname = \"api\"\nprefixes = [\"/api\"]\nmethods = [\"POST\"]\n\
                    rate = \"3/min\"\nkey = \"global\"\n";
    let gateway = gateway(&upstream, settings).await;
    let post = |client: &str| {
        http::Request::post("/api/items")
            .header("host", "localhost")
            .header("x-forwarded-for", client)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let (first, _) = gateway.send(post("192.0.2.1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"api\";q=3;w=60");
    assert_eq!(first.headers()["ratelimit"], "\"api\";r=2;t=20");
    assert_eq!(
        gateway.send(post("192.0.2.2")).await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        gateway.send(post("192.0.2.3")).await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        gateway.send(post("192.0.2.4")).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // GET is not counted by this rule.
    assert_eq!(
        gateway.send(get("/api/items")).await.0.status(),
        StatusCode::OK
    );
}

#[test]
fn bad_rules_name_their_setting() {
    let cases = [
        (
            "[[rate_limit.rules]]\nname = \"a\"\nrate = \"fast\"\n",
            "rate_limit.rules[0].rate",
        ),
        (
            "[[rate_limit.rules]]\nname = \"a b\"\nrate = \"1/s\"\n",
            "rate_limit.rules[0].name",
        ),
        ("[rate_limit]\nipv6_prefix = 0\n", "rate_limit.ipv6_prefix"),
    ];
    for (settings, setting) in cases {
        let text = format!("upstreams = [\"http://127.0.0.1:1\"]\n{settings}");
        let options: GatewayOptions = toml::from_str(&text).unwrap();
        let err = options.validate().unwrap_err().to_string();
        assert!(err.starts_with(setting), "{err}");
    }
}

/// `[state]` on the Redis server at `url`, failing as `on_failure` says.
fn redis_state(url: &str, on_failure: &str) -> String {
    format!("[state]\nredis = \"{url}\"\non_failure = \"{on_failure}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_redis_admit_exactly_the_burst() {
    let redis = palisade_testkit::redis::RedisServer::start();
    let upstream = Upstream::start().await;
    let settings = format!("{LOGIN_LIMIT}{}", redis_state(&redis.url(), "open"));
    let gateways = [
        Arc::new(gateway(&upstream, &settings).await),
        Arc::new(gateway(&upstream, &settings).await),
    ];
    let mut tasks = Vec::new();
    for n in 0..40 {
        let gateway = gateways[n % 2].clone();
        tasks.push(tokio::spawn(
            async move { gateway.send(get("/login")).await },
        ));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (response, _) = task.await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"login\";q=5;w=3600"
            );
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
        statuses.push(response.status());
    }
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(passed, 5, "{statuses:?}");
    assert_eq!(upstream.received().len(), 5);
    // The path spellings share the Redis bucket too.
    assert_eq!(
        gateways[1].send(get("/%6cogin/")).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn without_redis_the_configured_policy_applies_and_recovery_is_automatic() {
    let mut redis = palisade_testkit::redis::RedisServer::start();
    let upstream = Upstream::start().await;
    let open = gateway(
        &upstream,
        &format!("{LOGIN_LIMIT}{}", redis_state(&redis.url(), "open")),
    )
    .await;
    let closed = gateway(
        &upstream,
        &format!("{LOGIN_LIMIT}{}", redis_state(&redis.url(), "closed")),
    )
    .await;
    assert_eq!(open.send(get("/login")).await.0.status(), StatusCode::OK);
    redis.stop();
    // Fail open: requests pass, uncounted; fail closed: 503 with the reason.
    for _ in 0..7 {
        assert_eq!(open.send(get("/login")).await.0.status(), StatusCode::OK);
    }
    let (response, body) = closed.send(get("/login")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("cannot check"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Paths no rule covers never need Redis.
    assert_eq!(closed.send(get("/other")).await.0.status(), StatusCode::OK);
    redis.start_again();
    // Back (empty, as a restarted Redis without persistence is): limits count again, which
    // an answer shows by its RateLimit header (one let through uncounted has none).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while closed.send(get("/login")).await.0.status() != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut statuses = Vec::new();
    while statuses.len() < 6 {
        let (response, _) = open.send(get("/login")).await;
        if response.headers().contains_key("ratelimit") {
            statuses.push(response.status());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {statuses:?}"
        );
    }
    // The closed gateway's one success and the open one's four: the burst of five.
    assert_eq!(
        statuses,
        [
            [StatusCode::OK; 4].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS; 2]
        ]
        .concat()
    );
}
