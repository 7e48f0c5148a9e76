//! Brute force on login endpoints through the gateway: delays, then a challenge, then a
//! lockout of that account for that source only; outcomes read from statuses, redirects and
//! body markers; the path spellings of one endpoint; refusals of the gateway's own that count
//! nothing; lockouts shared by two gateways on Redis; and the state store's failure policy.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use palisade_gateway::GatewayOptions;
use palisade_guard::{
    AttemptStore, SqliteAttempts, Unlock,
    attempts::{Attempt, Policy, Standing},
};
use palisade_testkit::redis::RedisServer;
use sha2::{Digest, Sha256};

use crate::support::{PASSWORD, TestGateway, Upstream, get};

/// Delays from the second failure, a challenge from the third, a lockout at the fifth.
const LOGIN: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
    [challenge]\ndifficulty = 4\nmax_difficulty = 8\n\
    [brute_force]\ndelay_after = 2\nbase_delay = \"300ms\"\nmax_delay = \"300ms\"\n\
    challenge_after = 3\nlockout_after = 5\nlockout = \"1h\"\n\
    [[brute_force.logins]]\npath = \"/signin\"\n";

/// The policy the gateway applies with [`LOGIN`], for reading its store.
fn policy() -> Policy {
    Policy {
        half_life: Duration::from_secs(900),
        lockout_after: 5,
        challenge_after: 3,
        lockout: Duration::from_secs(3600),
        stuffing_accounts: 10,
        stuffing_sources: 10,
        stuffing_window: Duration::from_secs(600),
    }
}

async fn gateway(upstream: &Upstream, toml: &str) -> TestGateway {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n{toml}",
        upstream.url()
    );
    let options: GatewayOptions = toml::from_str(&text).unwrap();
    TestGateway::start(options).await
}

fn sqlite_state(dir: &Path) -> String {
    format!(
        "[state]\npath = \"{}\"\n",
        dir.join("gateway.sqlite").display()
    )
}

/// What the gateway's SQLite store says about `account` from `source`.
async fn standing(dir: &Path, account: &str, source: &str) -> Standing {
    let store = SqliteAttempts::open(&dir.join("gateway.sqlite")).unwrap();
    let attempt = Attempt {
        account: account.into(),
        source: source.parse().unwrap(),
    };
    store
        .standing(&attempt, &policy(), SystemTime::now())
        .await
        .unwrap()
}

/// A browser-like client behind the trusted proxy at `address`: its cookies (the CSRF one
/// and, once earned, the challenge pass) and its CSRF token.
struct Client {
    address: &'static str,
    cookies: Vec<String>,
    token: String,
}

impl Client {
    /// A client with the CSRF cookie and token the refresh path hands out.
    async fn new(gateway: &TestGateway, address: &'static str) -> Self {
        let mut client = Self {
            address,
            cookies: Vec::new(),
            token: String::new(),
        };
        let (response, body) = gateway
            .send(client.request(Request::get("/.well-known/palisade/csrf-token"), ""))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        client.keep_cookies(&response);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        client.token = value["token"].as_str().unwrap().to_string();
        client
    }

    fn request(&self, builder: http::request::Builder, body: &str) -> Request<Full<Bytes>> {
        let mut builder = builder
            .header(header::HOST, "localhost")
            .header("x-forwarded-for", self.address)
            .header(header::ACCEPT, "application/json");
        if !self.cookies.is_empty() {
            builder = builder.header(header::COOKIE, self.cookies.join("; "));
        }
        if !self.token.is_empty() {
            builder = builder.header("x-csrf-token", &self.token);
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    fn keep_cookies(&mut self, response: &http::Response<()>) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let name = pair.split('=').next().unwrap().to_string();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(pair);
        }
    }

    /// A login attempt at `path` with a form; gives the status, the body and how long it took.
    async fn login(
        &mut self,
        gateway: &TestGateway,
        path: &str,
        account: &str,
        password: &str,
    ) -> (StatusCode, serde_json::Value, Duration) {
        let body = format!(
            "username={}&password={}",
            account.replace(' ', "+"),
            password.replace(' ', "+")
        );
        let req = self.request(
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            &body,
        );
        let started = Instant::now();
        let (response, body) = gateway.send(req).await;
        let took = started.elapsed();
        self.keep_cookies(&response);
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (response.status(), value, took)
    }

    /// Solves the challenge in `demand` and trades it for the pass cookie.
    async fn solve(&mut self, gateway: &TestGateway, demand: &serde_json::Value) -> StatusCode {
        let challenge = &demand["challenge"];
        let token = challenge["token"].as_str().unwrap();
        let difficulty = challenge["difficulty"].as_u64().unwrap() as u32;
        let nonce = solve(token, difficulty);
        let body = format!("token={token}&nonce={nonce}&return=%2Fsignin");
        let req = self.request(
            Request::post(challenge["submit"].as_str().unwrap())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            &body,
        );
        let (response, _) = gateway.send(req).await;
        self.keep_cookies(&response);
        response.status()
    }
}

/// A nonce whose SHA-256 with `token` starts with `difficulty` zero bits.
fn solve(token: &str, difficulty: u32) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|nonce| {
            let digest = Sha256::digest(format!("{token}:{nonce}").as_bytes());
            let mut bits = 0;
            for byte in digest {
                bits += byte.leading_zeros();
                if byte != 0 {
                    break;
                }
            }
            bits >= difficulty
        })
        .unwrap()
}

fn signins(upstream: &Upstream) -> usize {
    upstream
        .received()
        .iter()
        .filter(|r| r.target.starts_with("/signin"))
        .count()
}

#[tokio::test]
async fn failures_are_delayed_then_challenged_then_locked_out_for_that_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream, &format!("{LOGIN}{}", sqlite_state(dir.path()))).await;
    let mut attacker = Client::new(&gateway, "192.0.2.10").await;
    let wrong = "hunter2";

    // Two failures pass at once.
    for _ in 0..2 {
        let (status, _, took) = attacker.login(&gateway, "/signin", "victim", wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(took < Duration::from_millis(300), "{took:?}");
    }
    // The third is held back.
    let (status, _, took) = attacker.login(&gateway, "/signin", "victim", wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // The fourth must solve a challenge first; the application does not see it.
    let seen = signins(&upstream);
    let (status, demand, _) = attacker.login(&gateway, "/signin", "victim", wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{demand}");
    assert_eq!(demand["error"]["kind"], "challenge_required");
    assert_eq!(signins(&upstream), seen);
    assert_eq!(attacker.solve(&gateway, &demand).await, StatusCode::OK);
    assert!(
        attacker
            .cookies
            .iter()
            .any(|c| c.starts_with("__Host-palisade-pass=")),
        "{:?}",
        attacker.cookies
    );
    // With the pass, attempts go on (held back) until the fifth failure locks the pair.
    for _ in 0..2 {
        let (status, body, took) = attacker.login(&gateway, "/signin", "victim", wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }
    let standing = standing(dir.path(), "victim", "192.0.2.10").await;
    assert!(standing.locked_until.is_some(), "{standing:?}");
    // Locked: even the right password is refused there, without reaching the application.
    let seen = signins(&upstream);
    let (status, body, _) = attacker
        .login(&gateway, "/signin", "victim", PASSWORD)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["kind"], "locked_out");
    assert_eq!(signins(&upstream), seen);

    // The victim, elsewhere, logs in as usual.
    let mut victim = Client::new(&gateway, "198.51.100.20").await;
    let (status, body, took) = victim.login(&gateway, "/signin", "Victim", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert!(took < Duration::from_millis(300), "{took:?}");

    // An operator's unlock, while the gateway runs, lets the attacker's address in again.
    let store = SqliteAttempts::open(&dir.path().join("gateway.sqlite")).unwrap();
    assert!(
        store
            .unlock(&Unlock::Source("192.0.2.10".parse().unwrap()))
            .await
            .unwrap()
            > 0
    );
    let (status, body, _) = attacker
        .login(&gateway, "/signin", "victim", PASSWORD)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
}

#[tokio::test]
async fn outcomes_come_from_redirects_and_body_markers_and_spellings_are_one_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let settings = format!(
        "{}[[brute_force.logins]]\npath = \"/signin-marker\"\nfailure_status = []\n\
         failure_body = \"Invalid username or password\"\n\
         [[brute_force.logins]]\npath = \"/signin-redirect\"\nfailure_location = \"/signin?error\"\n\
         {}",
        // Late delays and challenges: this test counts, it does not want to be stopped.
        LOGIN.replace("delay_after = 2", "delay_after = 8").replace(
            "challenge_after = 3\nlockout_after = 5",
            "challenge_after = 8\nlockout_after = 9"
        ),
        sqlite_state(dir.path())
    );
    let gateway = gateway(&upstream, &settings).await;
    let mut client = Client::new(&gateway, "192.0.2.30").await;
    // A 200 page that says so, in three spellings of the path.
    for path in ["/signin-marker", "/signin-marker/", "/%73ignin-marker"] {
        let (status, _, _) = client.login(&gateway, path, "Mallory ", "nope").await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let counted = standing(dir.path(), "mallory", "192.0.2.30").await;
    assert_eq!(counted.pair.round(), 3.0, "{counted:?}");
    // A success clears the pair; the source keeps its count.
    let (status, _, _) = client
        .login(&gateway, "/./signin-marker", "mallory", PASSWORD)
        .await;
    assert_eq!(status, StatusCode::OK);
    let cleared = standing(dir.path(), "mallory", "192.0.2.30").await;
    assert_eq!(cleared.pair, 0.0);
    assert_eq!(cleared.source.round(), 3.0);
    // A redirect back to the form is a failure; the one to /home is not.
    let (status, _, _) = client
        .login(&gateway, "/signin-redirect", "trent", "nope")
        .await;
    assert_eq!(status, StatusCode::FOUND);
    let (status, _, _) = client
        .login(&gateway, "/signin-redirect", "walter", PASSWORD)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        standing(dir.path(), "trent", "192.0.2.30")
            .await
            .pair
            .round(),
        1.0
    );
    assert_eq!(standing(dir.path(), "walter", "192.0.2.30").await.pair, 0.0);
    // The marker's page reached the client whole.
    let (_, _, _) = client.login(&gateway, "/signin-marker", "x", "nope").await;
    let last = upstream.received().pop().unwrap();
    assert!(
        !last.headers.contains_key(header::ACCEPT_ENCODING),
        "a body to search must come uncompressed"
    );
}

#[tokio::test]
async fn json_logins_name_the_account_by_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let settings = format!(
        "{}{}",
        LOGIN.replace(
            "path = \"/signin\"\n",
            "path = \"/signin\"\nusername_field = \"/user/name\"\n"
        ),
        sqlite_state(dir.path())
    );
    let gateway = gateway(&upstream, &settings).await;
    let client = Client::new(&gateway, "192.0.2.40").await;
    let req = client.request(
        Request::post("/signin").header(header::CONTENT_TYPE, "application/json"),
        r#"{"user": {"name": "Oscar"}, "password": "nope"}"#,
    );
    assert_eq!(gateway.send(req).await.0.status(), StatusCode::UNAUTHORIZED);
    let counted = standing(dir.path(), "oscar", "192.0.2.40").await;
    assert_eq!(counted.pair.round(), 1.0, "{counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attempts_sent_at_once_are_checked_one_after_another() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let settings = LOGIN.replace(
        "base_delay = \"300ms\"\nmax_delay = \"300ms\"",
        "base_delay = \"10ms\"\nmax_delay = \"10ms\"",
    );
    let state = sqlite_state(dir.path());
    let gateway = Arc::new(gateway(&upstream, &format!("{settings}{state}")).await);
    let client = Arc::new(Client::new(&gateway, "192.0.2.90").await);
    // Thirty guesses at once: the first three reach the application (the third held back),
    // then the count asks every other one for a challenge.
    let mut tasks = Vec::new();
    for n in 0..30 {
        let (gateway, client) = (gateway.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!("username=ivan&password=guess{n}");
            let req = client.request(
                Request::post("/signin")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
                &body,
            );
            gateway.send(req).await.0.status()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let reached = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(reached, 3, "{statuses:?}");
    assert_eq!(signins(&upstream), 3);
    let challenged = statuses
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    assert_eq!(challenged, 27, "{statuses:?}");
}

#[tokio::test]
async fn a_long_account_name_is_kept_cut_and_absolute_redirects_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let settings = format!(
        "{LOGIN}[[brute_force.logins]]\npath = \"/signin-redirect\"\nfailure_status = []\n\
         failure_location = \"/signin?error\"\n{}",
        sqlite_state(dir.path())
    );
    let gateway = gateway(&upstream, &settings).await;
    let mut client = Client::new(&gateway, "192.0.2.91").await;
    let long = "é".repeat(100_000);
    let (status, _, _) = client.login(&gateway, "/signin", &long, "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let kept = "é".repeat(palisade_guard::brute_force::MAX_ACCOUNT_BYTES / 2);
    let counted = standing(dir.path(), &kept, "192.0.2.91").await;
    assert_eq!(counted.pair.round(), 1.0, "{counted:?}");
    let file = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
    let size = file("gateway.sqlite") + file("gateway.sqlite-wal");
    assert!(size < 1024 * 1024, "{size} bytes of state for one attempt");
    // A failure sent back as an absolute URL, as many frameworks do.
    let (status, _, _) = client
        .login(&gateway, "/signin-redirect?absolute", "trudy", "nope")
        .await;
    assert_eq!(status, StatusCode::FOUND);
    let counted = standing(dir.path(), "trudy", "192.0.2.91").await;
    assert_eq!(counted.pair.round(), 1.0, "{counted:?}");
}

#[tokio::test]
async fn addresses_of_one_ipv6_prefix_are_one_source() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream, &format!("{LOGIN}{}", sqlite_state(dir.path()))).await;
    // Rotating through its /64 does not give a host a fresh count.
    for address in ["2001:db8:5:6::1", "2001:db8:5:6:ffff::2"] {
        let mut client = Client::new(&gateway, address).await;
        let (status, _, _) = client.login(&gateway, "/signin", "quentin", "nope").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let counted = standing(dir.path(), "quentin", "2001:db8:5:6::").await;
    assert_eq!(counted.pair.round(), 2.0, "{counted:?}");
    let next = standing(dir.path(), "quentin", "2001:db8:5:7::").await;
    assert_eq!(
        next,
        Standing {
            account: next.account,
            ..Standing::default()
        }
    );
}

#[tokio::test]
async fn the_gateways_own_refusals_count_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gateway = gateway(&upstream, &format!("{LOGIN}{}", sqlite_state(dir.path()))).await;
    let client = Client::new(&gateway, "192.0.2.50").await;
    // A cross-site post is the CSRF layer's 403, not the application's.
    for _ in 0..6 {
        let req = client.request(
            Request::post("/signin")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header("sec-fetch-site", "cross-site"),
            "username=peggy&password=nope",
        );
        let (response, _) = gateway.send(req).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let untouched = standing(dir.path(), "peggy", "192.0.2.50").await;
    assert_eq!(untouched, Standing::default());
}

#[tokio::test]
async fn two_gateways_on_redis_share_counts_lockouts_and_spent_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    // One key file: a pass from one gateway is good at the other, as behind a load balancer.
    let settings = format!(
        "{LOGIN}[state]\nredis = \"{}\"\n[csrf]\nkey_file = \"{}\"\n",
        redis.url(),
        dir.path().join("csrf.key").display()
    );
    let settings = settings.replace(
        "base_delay = \"300ms\"\nmax_delay = \"300ms\"",
        "base_delay = \"10ms\"\nmax_delay = \"10ms\"",
    );
    let one = gateway(&upstream, &settings).await;
    let two = gateway(&upstream, &settings).await;
    let mut attacker = Client::new(&one, "192.0.2.60").await;
    for gateway in [&one, &two, &one] {
        let (status, _, _) = attacker.login(gateway, "/signin", "rupert", "nope").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The third failure, counted across both, makes the other one ask for a challenge.
    let (status, demand, _) = attacker.login(&two, "/signin", "rupert", "nope").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{demand}");
    // Solved at one gateway, the same solution is refused at the other.
    let challenge = &demand["challenge"];
    let token = challenge["token"].as_str().unwrap();
    let nonce = solve(token, challenge["difficulty"].as_u64().unwrap() as u32);
    let answer = format!("token={token}&nonce={nonce}&return=%2Fsignin");
    let post = |client: &Client| {
        client.request(
            Request::post("/.well-known/palisade/challenge")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            &answer,
        )
    };
    let (response, _) = two.send(post(&attacker)).await;
    assert_eq!(response.status(), StatusCode::OK);
    attacker.keep_cookies(&response);
    let (replayed, _) = one.send(post(&attacker)).await;
    assert_eq!(replayed.status(), StatusCode::FORBIDDEN);
    // With the pass, two more failures (one at each) lock the pair at both.
    for gateway in [&one, &two] {
        let (status, _, _) = attacker.login(gateway, "/signin", "rupert", "nope").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for gateway in [&one, &two] {
        let (status, body, _) = attacker.login(gateway, "/signin", "rupert", PASSWORD).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
    let mut owner = Client::new(&two, "198.51.100.60").await;
    let (status, _, _) = owner.login(&one, "/signin", "rupert", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // `palisade gateway unlock` does this through the same store.
    let state = palisade_guard::RedisState::new(&redis.url()).unwrap();
    assert!(
        state
            .unlock(&Unlock::Account("rupert".into()))
            .await
            .unwrap()
            > 0
    );
    let (status, _, _) = attacker.login(&two, "/signin", "rupert", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn without_its_store_a_login_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let state = |policy: &str| {
        format!(
            "[state]\nredis = \"{}\"\non_failure = \"{policy}\"\n",
            redis.url()
        )
    };
    let open = Arc::new(gateway(&upstream, &format!("{LOGIN}{}", state("open"))).await);
    let closed = gateway(&upstream, &format!("{LOGIN}{}", state("closed"))).await;
    let mut client = Client::new(&open, "192.0.2.70").await;
    // Each gateway has a CSRF key of its own: a client of each.
    let mut other = Client::new(&closed, "192.0.2.70").await;
    let (status, _, _) = client.login(&open, "/signin", "sybil", "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    redis.stop();
    let (status, _, _) = client.login(&open, "/signin", "sybil", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, body, _) = other.login(&closed, "/signin", "sybil", PASSWORD).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["kind"], "state_unavailable");
    // Other paths do not need the store.
    assert_eq!(closed.send(get("/page")).await.0.status(), StatusCode::OK);
    redis.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = other.login(&closed, "/signin", "sybil", PASSWORD).await;
        if status == StatusCode::SEE_OTHER {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn bad_login_settings_name_their_setting() {
    let cases = [
        (
            "[brute_force]\nchallenge_after = 10\nlockout_after = 10\n",
            "brute_force.challenge_after",
        ),
        (
            "[[brute_force.logins]]\npath = \"signin\"\n",
            "brute_force.logins[0].path",
        ),
        (
            "[[brute_force.logins]]\npath = \"/signin\"\nfailure_status = []\n",
            "brute_force.logins[0].failure_status",
        ),
        ("[state]\nredis = \"http://x\"\n", "state.redis"),
    ];
    for (settings, setting) in cases {
        let text = format!("upstreams = [\"http://127.0.0.1:1\"]\n{settings}");
        let options: GatewayOptions = toml::from_str(&text).unwrap();
        let err = options.validate().unwrap_err().to_string();
        assert!(err.starts_with(setting), "{err}");
    }
}
