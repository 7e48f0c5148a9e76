//! Challenges through `ChallengeLayer` with real requests: a login service that demands a
//! challenge until its client has a pass, answers solved in Rust, replays and short work
//! refused; and CAPTCHA verification against a local `siteverify` stub over HTTP. A test binary
//! of its own, as it installs the process-wide tracing subscriber to read events and to look
//! for the secret in every log line.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_guard::{
    Body, ChallengeOptions, ChallengeProvider, Challenges, ClientAddr, MemorySpent,
};
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};

#[path = "support/recorder.rs"]
mod recorder;
use recorder::Recorder;

/// The process-wide recorder, installed by the first test that asks.
fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<Arc<Recorder>> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Arc::new(Recorder::default());
        tracing::subscriber::set_global_default(recorder.clone()).unwrap();
        recorder
    })
}

/// The security events so far about `client`: their fields.
fn events_of(client: &str) -> Vec<Vec<(String, String)>> {
    recorder()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(target, fields)| {
            target == "palisade::security" && field(fields, "client") == Some(client)
        })
        .map(|(_, fields)| fields.clone())
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn options(difficulty: u8) -> ChallengeOptions {
    ChallengeOptions {
        difficulty,
        max_difficulty: difficulty,
        ..Default::default()
    }
}

fn challenges(options: &ChallengeOptions, secret: Option<&str>) -> Challenges {
    let spent = Arc::new(MemorySpent::new(MemorySpent::DEFAULT_CAPACITY));
    Challenges::new(options, [3; 32], spent, secret.map(str::to_string)).unwrap()
}

/// The stack a gateway would build: the challenge layer in front of a login that demands a
/// challenge from every client without a pass, as the brute-force layer does past its
/// threshold. The login answers "welcome" otherwise; every other path says which it was.
type Stack = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

fn stack(challenges: &Challenges) -> Stack {
    let gate = challenges.clone();
    let app = tower::service_fn(move |req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let client = req.extensions().get::<ClientAddr>().unwrap().0;
            if req.uri().path() == "/login" && !gate.has_pass(req.headers(), client) {
                return Ok::<_, Infallible>(gate.demand(&req, client, "/login"));
            }
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!("{} {} {}", parts.method, parts.uri, body.len());
            Ok(Response::new(Body::from(text)))
        }
    });
    tower::util::BoxCloneService::new(challenges.layer().layer(app))
}

/// Sends `req` from `client` through `service`: the response's head and its body.
async fn send(service: &Stack, mut req: Request<Body>, client: &str) -> (Response<()>, Bytes) {
    req.extensions_mut()
        .insert(ClientAddr(client.parse().unwrap()));
    let response = service.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

fn get(path: &str, accept: &str, cookie: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path)
        .header(header::HOST, "shop.example")
        .header(header::ACCEPT, accept);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    req.body(Body::empty()).unwrap()
}

fn post(path: &str, accept: &str, fields: &[(&str, &str)]) -> Request<Body> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    Request::post(path)
        .header(header::HOST, "shop.example")
        .header(header::ACCEPT, accept)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

const JSON: &str = "application/json";
const HTML: &str = "text/html,application/xhtml+xml";
const SUBMIT: &str = "/.well-known/palisade/challenge";

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

/// The number of zero bits SHA-256(`token:nonce`) starts with.
fn work(token: &str, nonce: u64) -> u32 {
    let digest = Sha256::digest(format!("{token}:{nonce}"));
    let mut bits = 0;
    for byte in digest {
        if byte != 0 {
            return bits + byte.leading_zeros();
        }
        bits += 8;
    }
    bits
}

/// A nonce that meets `difficulty` for `token`, as a script would find it.
fn solve(token: &str, difficulty: u32) -> String {
    (0u64..)
        .find(|n| work(token, *n) >= difficulty)
        .unwrap()
        .to_string()
}

/// The `name=value` of the pass cookie a response sets, and the whole header.
fn pass_cookie(response: &Response<()>) -> (String, String) {
    let set = response
        .headers()
        .get(header::SET_COOKIE)
        .expect("a pass cookie")
        .to_str()
        .unwrap()
        .to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

fn cookie_headers(cookie: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, cookie.parse().unwrap());
    headers
}

#[tokio::test]
async fn a_solved_challenge_gives_its_client_a_pass_and_a_replayed_solution_is_refused() {
    recorder();
    let challenges = challenges(&options(8), None);
    let service = stack(&challenges);
    let (alice, bob) = ("198.51.100.1", "198.51.100.2");

    // The login demands a challenge: JSON for a script, with everything needed to solve it.
    let (response, body) = send(&service, get("/login", JSON, None), alice).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let value = json(&body);
    assert_eq!(value["error"]["kind"], "challenge_required");
    assert_eq!(value["error"]["status"], 403);
    let challenge = &value["challenge"];
    assert_eq!(challenge["difficulty"], 8);
    assert_eq!(challenge["submit"], SUBMIT);
    assert_eq!(challenge["return"], "/login");
    assert_eq!(challenge["provider"], "pow");
    let token = challenge["token"].as_str().unwrap().to_string();
    let demanded = events_of(alice);
    assert_eq!(demanded.len(), 1, "{demanded:?}");
    assert_eq!(field(&demanded[0], "kind"), Some("challenge_required"));
    assert_eq!(field(&demanded[0], "rule"), Some("challenge-required"));
    assert_eq!(field(&demanded[0], "action"), Some("challenge"));
    assert_eq!(field(&demanded[0], "route"), Some("/login"));

    // Solved and sent back: the pass, as a __Host- cookie that scripts cannot read.
    let nonce = solve(&token, 8);
    let solution = [
        ("token", token.as_str()),
        ("nonce", nonce.as_str()),
        ("return", "/login"),
    ];
    let (response, body) = send(&service, post(SUBMIT, JSON, &solution), alice).await;
    assert_eq!(response.status(), StatusCode::OK, "{body:?}");
    assert_eq!(
        json(&body),
        serde_json::json!({"pass": "ok", "return": "/login"})
    );
    let (cookie, set_cookie) = pass_cookie(&response);
    assert!(cookie.starts_with("__Host-palisade-pass="), "{set_cookie}");
    assert!(
        set_cookie.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=1800"),
        "{set_cookie}"
    );
    assert!(challenges.has_pass(&cookie_headers(&cookie), alice.parse().unwrap()));
    assert!(!challenges.has_pass(&cookie_headers(&cookie), bob.parse().unwrap()));
    assert_eq!(events_of(alice).len(), 1, "a pass is no refusal");

    // The pass lets Alice log in; the same cookie from Bob's address does not.
    let (response, body) = send(&service, get("/login", JSON, Some(&cookie)), alice).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "GET /login 0");
    let (response, _) = send(&service, get("/login", JSON, Some(&cookie)), bob).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The same solution again: refused, with a fresh challenge to solve instead.
    let (response, body) = send(&service, post(SUBMIT, JSON, &solution), alice).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let value = json(&body);
    assert_eq!(value["error"]["kind"], "challenge_required");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("answered already"),
        "{value}"
    );
    assert_ne!(value["challenge"]["token"], token.as_str());
    let refused = events_of(alice);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(field(&refused[1], "rule"), Some("challenge-replayed"));
    assert_eq!(field(&refused[1], "action"), Some("reject"));

    // Bob cannot use Alice's solution either: it was made for her address.
    let (_, body) = send(&service, get(SUBMIT, JSON, None), alice).await;
    let fresh = json(&body)["challenge"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let nonce = solve(&fresh, 8);
    let theirs = [
        ("token", fresh.as_str()),
        ("nonce", &nonce),
        ("return", "/"),
    ];
    let (response, _) = send(&service, post(SUBMIT, JSON, &theirs), bob).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        field(events_of(bob).last().unwrap(), "rule"),
        Some("challenge-wrong-client")
    );
}

#[tokio::test]
async fn a_nonce_short_of_the_difficulty_is_refused() {
    recorder();
    let challenges = challenges(&options(10), None);
    let service = stack(&challenges);
    let client = "198.51.100.3";
    let (_, body) = send(&service, get(SUBMIT, JSON, None), client).await;
    let token = json(&body)["challenge"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let short = (0u64..)
        .find(|n| (1..10).contains(&work(&token, *n)))
        .unwrap();
    let answer = [
        ("token", token.as_str()),
        ("nonce", &short.to_string()),
        ("return", "/"),
    ];
    let (response, body) = send(&service, post(SUBMIT, JSON, &answer), client).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong")
    );
    let events = events_of(client);
    assert_eq!(events.len(), 1, "a GET of the page is no event: {events:?}");
    assert_eq!(field(&events[0], "rule"), Some("challenge-work-invalid"));
    // The challenge was not spent by the wrong answer: the right one still counts.
    let nonce = solve(&token, 10);
    let answer = [
        ("token", token.as_str()),
        ("nonce", &nonce),
        ("return", "/"),
    ];
    let (response, _) = send(&service, post(SUBMIT, JSON, &answer), client).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// The nonce in a page's policy.
fn policy_nonce(response: &Response<()>) -> String {
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    let start = policy.find("'nonce-").unwrap() + 7;
    policy[start..start + policy[start..].find('\'').unwrap()].to_string()
}

/// The value of the hidden field `name` in a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("{page}")) + marker.len();
    page[start..start + page[start..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn a_browser_gets_a_page_with_its_own_policy_and_is_sent_back_where_it_came_from() {
    recorder();
    let challenges = challenges(&options(8), None);
    let service = stack(&challenges);
    let client = "198.51.100.4";

    let (response, body) = send(
        &service,
        get(&format!("{SUBMIT}?return=%2Faccount%3Ftab%3D2"), HTML, None),
        client,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let page = String::from_utf8(body.to_vec()).unwrap();
    let nonce = policy_nonce(&response);
    assert_eq!(
        response.headers()[header::CONTENT_SECURITY_POLICY],
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        .as_str()
    );
    assert!(
        page.contains(&format!("<script nonce=\"{nonce}\">")),
        "{page}"
    );
    assert!(page.contains("crypto.subtle.digest(\"SHA-256\""), "{page}");
    assert!(
        page.contains("data-difficulty=\"8\" data-auto=\"1\""),
        "{page}"
    );
    assert!(page.contains(&format!("action=\"{SUBMIT}\"")), "{page}");
    assert_eq!(hidden(&page, "return"), "/account?tab=2");

    // A form post of the solution: 303 back, with the pass.
    let token = hidden(&page, "token");
    let nonce = solve(&token, 8);
    let answer = [
        ("token", token.as_str()),
        ("nonce", &nonce),
        ("return", "/account?tab=2"),
    ];
    let (response, body) = send(&service, post(SUBMIT, HTML, &answer), client).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/account?tab=2");
    assert!(body.is_empty());
    let (cookie, _) = pass_cookie(&response);
    assert!(challenges.has_pass(&cookie_headers(&cookie), client.parse().unwrap()));

    // Another site as the return path: the page returns home instead, and an answer that
    // names one is refused, without a Location.
    for evil in ["//evil.example", "https://evil.example", "/\\evil.example"] {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("return", evil)
            .finish();
        let (_, body) = send(
            &service,
            get(&format!("{SUBMIT}?{query}"), HTML, None),
            client,
        )
        .await;
        let page = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(hidden(&page, "return"), "/", "{evil}");
        let token = hidden(&page, "token");
        let nonce = solve(&token, 8);
        let answer = [
            ("token", token.as_str()),
            ("nonce", &nonce),
            ("return", evil),
        ];
        let (response, body) = send(&service, post(SUBMIT, HTML, &answer), client).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{evil}");
        assert!(response.headers().get(header::LOCATION).is_none());
        let page = String::from_utf8(body.to_vec()).unwrap();
        assert!(page.contains("must be a path on this site"), "{page}");
        // After a refusal the page waits for a click rather than looping by itself.
        assert!(page.contains("data-auto=\"0\""), "{page}");
        assert_eq!(
            field(events_of(client).last().unwrap(), "rule"),
            Some("challenge-return-invalid")
        );
    }

    // A demand made with a return path to another site comes back home too.
    let mut req = get("/login", JSON, None);
    req.extensions_mut()
        .insert(ClientAddr(client.parse().unwrap()));
    let response = challenges.demand(&req, client.parse().unwrap(), "//evil.example/x");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&body)["challenge"]["return"], "/");
}

#[tokio::test]
async fn every_other_request_passes_untouched_and_the_path_takes_get_and_post_only() {
    recorder();
    let challenges = challenges(&options(8), None);
    let service = stack(&challenges);
    let client = "198.51.100.5";
    let upload = Request::post("/api/items?x=1")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("token=abc&nonce=1"))
        .unwrap();
    let (response, body) = send(&service, upload, client).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "POST /api/items?x=1 17");
    // Spellings of the path are the path.
    let (response, _) = send(
        &service,
        get("/.well-known/palisade/challenge/", JSON, None),
        client,
    )
    .await;
    assert!(response.headers()[header::CONTENT_TYPE] == JSON);
    let delete = Request::delete(SUBMIT).body(Body::empty()).unwrap();
    let (response, _) = send(&service, delete, client).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD, POST");
    // An answer that is no form, or sent from another site's page.
    let not_a_form = Request::post(SUBMIT)
        .header(header::CONTENT_TYPE, JSON)
        .body(Body::from("{\"token\":\"x\"}"))
        .unwrap();
    let (response, _) = send(&service, not_a_form, client).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let mut cross = post(
        SUBMIT,
        HTML,
        &[("token", "x"), ("nonce", "1"), ("return", "/")],
    );
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let (response, _) = send(&service, cross, client).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let rules: Vec<_> = events_of(client)
        .iter()
        .map(|e| field(e, "rule").unwrap().to_string())
        .collect();
    assert_eq!(rules, ["challenge-form-invalid", "challenge-cross-site"]);
}

/// What the stub `siteverify` received.
#[derive(Debug, Clone, Default)]
struct Asked {
    secret: String,
    response: String,
    remoteip: String,
}

/// A local `siteverify`: success for the answer `good` (solved on shop.example) and for
/// `elsewhere` (solved on another site), failure for any other answer, and Turnstile's
/// `invalid-input-secret` for any secret but `SECRET`.
struct Stub {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
}

const SECRET: &str = "0x4AAAAAAA-the-real-secret-key";

impl Stub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| verify(req, log.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, asked }
    }

    fn url(&self) -> String {
        format!("http://{}/turnstile/v0/siteverify", self.addr)
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

async fn verify(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Asked>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.headers()[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    let body = req.into_body().collect().await?.to_bytes();
    let mut asked = Asked::default();
    for (name, value) in form_urlencoded::parse(&body) {
        match name.as_ref() {
            "secret" => asked.secret = value.into_owned(),
            "response" => asked.response = value.into_owned(),
            "remoteip" => asked.remoteip = value.into_owned(),
            other => panic!("unexpected field {other}"),
        }
    }
    log.lock().unwrap().push(asked.clone());
    let verdict = if asked.secret != SECRET {
        r#"{"success":false,"error-codes":["invalid-input-secret"]}"#
    } else {
        match asked.response.as_str() {
            "good" => r#"{"success":true,"hostname":"shop.example","error-codes":[]}"#,
            "elsewhere" => r#"{"success":true,"hostname":"other.example"}"#,
            "strange" => r#"{"success":"true"}"#,
            _ => r#"{"success":false,"error-codes":["invalid-input-response"]}"#,
        }
    };
    Ok(Response::new(Full::new(Bytes::from(verdict))))
}

fn turnstile(verify_url: String) -> ChallengeOptions {
    ChallengeOptions {
        provider: ChallengeProvider::Turnstile,
        site_key: Some("0x4AAAAAAAsitekey".into()),
        verify_url: Some(verify_url),
        verify_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Answers a fresh Turnstile challenge with `response`, from `client`: the status, the body,
/// and the rule of the last event about the client.
async fn answer_with(
    service: &Stack,
    client: &str,
    response: &str,
) -> (StatusCode, String, String) {
    let (_, body) = send(service, get(SUBMIT, JSON, None), client).await;
    let token = json(&body)["challenge"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let fields = [
        ("token", token.as_str()),
        ("return", "/login"),
        ("cf-turnstile-response", response),
    ];
    let (answer, body) = send(service, post(SUBMIT, JSON, &fields), client).await;
    assert!(!format!("{:?}", answer.headers()).contains(SECRET));
    let body = String::from_utf8(body.to_vec()).unwrap();
    let rule = events_of(client)
        .last()
        .map(|e| field(e, "rule").unwrap().to_string())
        .unwrap_or_default();
    (answer.status(), body, rule)
}

#[tokio::test]
async fn a_captcha_answer_is_verified_with_the_provider_and_the_secret_never_shows() {
    recorder();
    let stub = Stub::start().await;
    let challenges = challenges(&turnstile(stub.url()), Some(SECRET));
    let service = stack(&challenges);

    // The page shows the widget, whose origin its policy allows.
    let client = "198.51.100.6";
    let (response, body) = send(&service, get(SUBMIT, HTML, None), client).await;
    let page = String::from_utf8(body.to_vec()).unwrap();
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        policy.contains("script-src 'nonce-")
            && policy.contains("' https://challenges.cloudflare.com;")
            && policy.contains("frame-src https://challenges.cloudflare.com;"),
        "{policy}"
    );
    assert!(
        page.contains("<div class=\"cf-turnstile\" data-sitekey=\"0x4AAAAAAAsitekey\""),
        "{page}"
    );
    assert!(page.contains(
        "<script src=\"https://challenges.cloudflare.com/turnstile/v0/api.js\" async defer nonce="
    ));
    assert!(!page.contains(SECRET));
    let (_, body) = send(&service, get(SUBMIT, JSON, None), client).await;
    let value = json(&body);
    assert_eq!(value["challenge"]["site_key"], "0x4AAAAAAAsitekey");
    assert_eq!(
        value["challenge"]["response_field"],
        "cf-turnstile-response"
    );

    // A good answer passes; the provider was asked with the secret and the client's address.
    let (status, body, _) = answer_with(&service, client, "good").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let asked = stub.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].secret, SECRET);
    assert_eq!(asked[0].response, "good");
    assert_eq!(asked[0].remoteip, client);

    // A failed one, one solved on another site, and a verdict that is not a JSON true.
    let (status, body, rule) = answer_with(&service, client, "bad").await;
    assert_eq!(
        (status, rule.as_str()),
        (StatusCode::FORBIDDEN, "challenge-provider-refused")
    );
    assert!(body.contains("was not passed"), "{body}");
    let (status, _, rule) = answer_with(&service, client, "elsewhere").await;
    assert_eq!(
        (status, rule.as_str()),
        (StatusCode::FORBIDDEN, "challenge-provider-hostname")
    );
    let (status, _, rule) = answer_with(&service, client, "strange").await;
    assert_eq!(
        (status, rule.as_str()),
        (StatusCode::FORBIDDEN, "challenge-provider-unavailable")
    );

    // A wrong secret is a configuration mistake with a rule of its own; the page does not say.
    let wrong = challenges_with_secret(&stub, "not-the-secret");
    let (status, body, rule) = answer_with(&stack(&wrong), "198.51.100.7", "good").await;
    assert_eq!(
        (status, rule.as_str()),
        (StatusCode::FORBIDDEN, "challenge-provider-secret")
    );
    assert!(body.contains("could not be verified just now"), "{body}");
    assert!(!body.contains("not-the-secret"));

    // The same good answer again: the challenge token is spent.
    let (_, body) = send(&service, get(SUBMIT, JSON, None), client).await;
    let token = json(&body)["challenge"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let fields = [
        ("token", token.as_str()),
        ("return", "/"),
        ("cf-turnstile-response", "good"),
    ];
    let (first, _) = send(&service, post(SUBMIT, JSON, &fields), client).await;
    assert_eq!(first.status(), StatusCode::OK);
    let (again, _) = send(&service, post(SUBMIT, JSON, &fields), client).await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        field(events_of(client).last().unwrap(), "rule"),
        Some("challenge-replayed")
    );

    assert_no_secret_logged(SECRET);
}

fn challenges_with_secret(stub: &Stub, secret: &str) -> Challenges {
    challenges(&turnstile(stub.url()), Some(secret))
}

#[tokio::test]
async fn a_provider_that_is_down_fails_closed_with_a_clear_message() {
    recorder();
    // A port that was free a moment ago, and is closed now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/siteverify", closed.local_addr().unwrap());
    drop(closed);
    let challenges = challenges(&turnstile(url), Some(SECRET));
    let client = "198.51.100.8";
    let (status, body, rule) = answer_with(&stack(&challenges), client, "good").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(rule, "challenge-provider-unavailable");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        value["error"]["message"],
        "The check could not be verified just now. Please try again in a moment."
    );
    assert!(value["challenge"]["token"].is_string(), "{value}");
    // Why, for the operator, in the debug log: the connection was refused.
    let logged = recorder().0.lock().unwrap().clone();
    let reason = logged
        .iter()
        .filter(|(target, _)| target == "palisade::challenge")
        .filter_map(|(_, fields)| field(fields, "error"))
        .find(|error| error.contains("Connection refused"));
    assert!(reason.is_some(), "{logged:?}");
    assert_no_secret_logged(SECRET);
}

#[tokio::test]
async fn a_provider_that_never_answers_is_given_up_on_after_the_timeout() {
    recorder();
    // Accepts the connection and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/siteverify", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let options = ChallengeOptions {
        verify_timeout: Duration::from_secs(1),
        ..turnstile(url)
    };
    let challenges = challenges(&options, Some(SECRET));
    let started = std::time::Instant::now();
    let (status, _, rule) = answer_with(&stack(&challenges), "198.51.100.9", "good").await;
    assert_eq!(
        (status, rule.as_str()),
        (StatusCode::FORBIDDEN, "challenge-provider-unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}

/// No event of any level, from any target, holds `secret` in any field.
fn assert_no_secret_logged(secret: &str) {
    let logged = recorder().0.lock().unwrap().clone();
    assert!(!logged.is_empty());
    for (target, fields) in &logged {
        assert!(
            !format!("{fields:?}").contains(secret),
            "{target}: {fields:?}"
        );
    }
}

#[test]
fn challenges_debug_shows_neither_key_nor_secret() {
    let options = turnstile("http://127.0.0.1:9/siteverify".into());
    let challenges = challenges(&options, Some(SECRET));
    let shown = format!("{challenges:?}");
    assert!(shown.contains("Turnstile"), "{shown}");
    assert!(
        shown.contains("MemorySpent { capacity: 100000, len: 0 }"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains("[3, 3"), "{shown}");
}
