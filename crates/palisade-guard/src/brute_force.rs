//! Brute-force protection on login endpoints: the outcome of each attempt read from the
//! application's answer, failures counted per account, per source and per both with decay,
//! then progressive delays, a challenge, and a lockout of that account for that source only.
//!
//! For a request to a configured login endpoint the layer reads the account name (a form field
//! or a JSON pointer), asks the [`AttemptStore`] how that account, that source and the two
//! together stand, and then, in order:
//!
//! 1. refuses with 429 while the pair is locked out (the application never sees it, so the
//!    lockout cannot be extended by trying);
//! 2. asks for a challenge ([`ChallengeGate`]) when the pair or the source has
//!    `challenge_after` failures, or the account `account_challenge_after` from everywhere,
//!    and the client holds no pass;
//! 3. holds the request back `base_delay × 2^(failures − delay_after)` (at most `max_delay`)
//!    once the pair or the source has `delay_after` failures;
//! 4. forwards it, and reads the outcome from the answer: a failure when its status is one of
//!    `failure_status`, its `Location` starts with `failure_location`, or its body holds
//!    `failure_body`; a success for any other 2xx or 3xx; nothing for the rest (a 500 is not
//!    a wrong password). Answers the gateway made itself (a CSRF refusal) count nothing.
//!
//! Every delay, challenge, lockout and credential-stuffing pattern is a security event.

use std::{
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    attempts::{Attempt, AttemptStore, Policy, Standing, Stuffing, reached},
    body::read_whole,
    ratelimit::client_key,
    reject::{self, GatewayMade, RejectionKind},
    route::normalize_path,
};

/// Brute-force protection: the login endpoints, and when to delay, challenge and lock out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BruteForceOptions {
    /// The login endpoints; none by default, which turns the protection off.
    pub logins: Vec<LoginEndpoint>,
    /// Failures (of the pair, or of the source) after which attempts are held back.
    pub delay_after: u32,
    /// The first delay; each further failure doubles it.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub base_delay: Duration,
    /// The longest delay.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_delay: Duration,
    /// Failures (of the pair, or of the source) after which a challenge must be solved.
    pub challenge_after: u32,
    /// Failures on one account, from all sources together, after which every source must
    /// solve a challenge for it (never a lockout: that would hand attackers a way to lock
    /// victims out).
    pub account_challenge_after: u32,
    /// Failures of the pair after which it is locked out.
    pub lockout_after: u32,
    /// How long a lockout lasts.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub lockout: Duration,
    /// How long a failure takes to count half.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub half_life: Duration,
    /// Distinct accounts failing from one source within `stuffing_window` that raise a
    /// credential-stuffing event.
    pub stuffing_accounts: u32,
    /// Distinct sources failing on one account within `stuffing_window` that raise one.
    pub stuffing_sources: u32,
    /// The window of the two counts above.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub stuffing_window: Duration,
    /// The most attempts held back at once; past it, further ones get 429 at once.
    pub max_delayed: usize,
    /// Whether `Alice` and `alice` are one account.
    pub case_sensitive_accounts: bool,
    /// Whether `/Login` is the same endpoint as `/login`.
    pub case_insensitive_paths: bool,
    /// The prefix length IPv6 sources are keyed by.
    pub ipv6_prefix: u8,
}

impl Default for BruteForceOptions {
    fn default() -> Self {
        Self {
            logins: Vec::new(),
            delay_after: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            challenge_after: 5,
            account_challenge_after: 20,
            lockout_after: 10,
            lockout: Duration::from_secs(15 * 60),
            half_life: Duration::from_secs(15 * 60),
            stuffing_accounts: 10,
            stuffing_sources: 10,
            stuffing_window: Duration::from_secs(10 * 60),
            max_delayed: 256,
            case_sensitive_accounts: false,
            case_insensitive_paths: false,
            ipv6_prefix: 64,
        }
    }
}

/// One login endpoint and how its answers tell a failure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEndpoint {
    /// The path, matched on the normalised path (so `/login/` and `/%6cogin` are `/login`).
    pub path: String,
    /// The method of a login attempt.
    #[serde(default = "default_method")]
    pub method: String,
    /// Where the account name is: a form field name, or a JSON pointer such as `/user/email`.
    #[serde(default = "default_username_field")]
    pub username_field: String,
    /// Statuses that mean the login failed.
    #[serde(default = "default_failure_status")]
    pub failure_status: Vec<u16>,
    /// A `Location` that means the login failed, matched as a prefix (`/login?error`).
    pub failure_location: Option<String>,
    /// Text in the answer's body that means the login failed (`Invalid password`).
    pub failure_body: Option<String>,
}

fn default_method() -> String {
    "POST".into()
}

fn default_username_field() -> String {
    "username".into()
}

fn default_failure_status() -> Vec<u16> {
    vec![401, 403]
}

/// A brute-force setting that cannot work, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadBruteForceSetting {
    /// The option, like `logins[0].path`.
    pub setting: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> BadBruteForceSetting {
    BadBruteForceSetting {
        setting: setting.into(),
        message: message.into(),
    }
}

/// What happens when the state store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenStateFails {
    /// Let requests through uncounted, with an event (the default: an outage of the store
    /// must not take the site down).
    #[default]
    Open,
    /// Refuse them with 503 until the store is back.
    Closed,
}

impl BruteForceOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BadBruteForceSetting> {
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err(bad(
                "ipv6_prefix",
                "must be between 1 and 128; 64 is the default",
            ));
        }
        if self.lockout_after < 2 {
            return Err(bad(
                "lockout_after",
                "must be at least 2, above challenge_after (a client is challenged before it is \
                 locked out)",
            ));
        }
        if self.challenge_after >= self.lockout_after {
            return Err(bad(
                "challenge_after",
                format!(
                    "must be below lockout_after ({}): a client is asked to prove it is a \
                     person before it is locked out",
                    self.lockout_after
                ),
            ));
        }
        if self.delay_after == 0 || self.challenge_after == 0 {
            return Err(bad(
                if self.delay_after == 0 {
                    "delay_after"
                } else {
                    "challenge_after"
                },
                "must be at least 1: a first failure is often a typo",
            ));
        }
        if self.account_challenge_after == 0 {
            return Err(bad("account_challenge_after", "must be at least 1"));
        }
        if self.stuffing_accounts < 2 || self.stuffing_sources < 2 {
            return Err(bad(
                if self.stuffing_accounts < 2 {
                    "stuffing_accounts"
                } else {
                    "stuffing_sources"
                },
                "must be at least 2",
            ));
        }
        if self.half_life.is_zero() || self.lockout.is_zero() || self.stuffing_window.is_zero() {
            return Err(bad(
                "half_life",
                "half_life, lockout and stuffing_window must be longer than zero",
            ));
        }
        if self.base_delay > self.max_delay {
            return Err(bad("base_delay", "must not be longer than max_delay"));
        }
        for (index, login) in self.logins.iter().enumerate() {
            let setting = |field: &str| format!("logins[{index}].{field}");
            if !login.path.starts_with('/') || login.path.contains(['?', '#']) {
                return Err(bad(
                    setting("path"),
                    format!(
                        "`{}` must be a path: start with / and hold no query or fragment",
                        login.path
                    ),
                ));
            }
            if Method::from_bytes(login.method.to_ascii_uppercase().as_bytes()).is_err() {
                return Err(bad(
                    setting("method"),
                    format!("`{}` is not a method", login.method),
                ));
            }
            if login.username_field.is_empty() {
                return Err(bad(
                    setting("username_field"),
                    "name the form field (\"username\") or the JSON pointer (\"/user/email\")",
                ));
            }
            if let Some(status) = login
                .failure_status
                .iter()
                .find(|s| !(100..=599).contains(*s))
            {
                return Err(bad(
                    setting("failure_status"),
                    format!("{status} is not an HTTP status"),
                ));
            }
            let location = login.failure_location.as_deref();
            let body = login.failure_body.as_deref();
            if login.failure_status.is_empty() && location.is_none() && body.is_none() {
                return Err(bad(
                    setting("failure_status"),
                    "the gateway needs one way to tell a failed login: failure_status, \
                     failure_location or failure_body",
                ));
            }
            if location == Some("") || body == Some("") {
                return Err(bad(
                    setting(if location == Some("") {
                        "failure_location"
                    } else {
                        "failure_body"
                    }),
                    "must not be empty: it would match every answer",
                ));
            }
        }
        Ok(())
    }

    fn policy(&self) -> Policy {
        Policy {
            half_life: self.half_life,
            lockout_after: self.lockout_after,
            challenge_after: self.challenge_after,
            lockout: self.lockout,
            stuffing_accounts: self.stuffing_accounts,
            stuffing_sources: self.stuffing_sources,
            stuffing_window: self.stuffing_window,
        }
    }

    /// The delay for an attempt standing at `standing`, if any.
    fn delay_for(&self, standing: &Standing) -> Option<Duration> {
        let failures = standing.pair.max(standing.source).round();
        let over = failures - f64::from(self.delay_after);
        if over < 0.0 {
            return None;
        }
        let factor = 2f64.powf(over.min(63.0));
        let delay = self.base_delay.as_secs_f64() * factor;
        Some(Duration::from_secs_f64(
            delay.min(self.max_delay.as_secs_f64()),
        ))
    }

    /// Whether an attempt standing at `standing` must come with a solved challenge.
    fn wants_challenge(&self, standing: &Standing) -> bool {
        reached(standing.pair, self.challenge_after)
            || reached(standing.source, self.challenge_after)
            || reached(standing.account, self.account_challenge_after)
    }
}

/// What decides whether a client has shown it is a person, and asks it to when not: the
/// gateway's proof-of-work [`Challenges`](crate::challenge::Challenges), or an application's
/// own.
pub trait ChallengeGate: Send + Sync + std::fmt::Debug {
    /// Whether the request carries a valid pass for `client` (a client key).
    fn has_pass(&self, headers: &HeaderMap, client: IpAddr) -> bool;

    /// The answer that asks `client` for a challenge, to come back to `return_to` (a path)
    /// when solved. It emits the challenge's security event.
    fn demand(&self, req: &Request<Bytes>, client: IpAddr, return_to: &str) -> Response<Body>;
}

impl ChallengeGate for crate::challenge::Challenges {
    fn has_pass(&self, headers: &HeaderMap, client: IpAddr) -> bool {
        crate::challenge::Challenges::has_pass(self, headers, client)
    }

    fn demand(&self, req: &Request<Bytes>, client: IpAddr, return_to: &str) -> Response<Body> {
        crate::challenge::Challenges::demand(self, req, client, return_to)
    }
}

/// The longest account name kept, in bytes; longer ones are cut there.
pub const MAX_ACCOUNT_BYTES: usize = 256;

/// How long a login's answer may be for its body to be searched for `failure_body`.
const MAX_SCANNED_BODY: usize = 256 * 1024;

#[derive(Debug)]
struct Endpoint {
    path: String,
    method: Method,
    field: String,
    failure_status: Vec<StatusCode>,
    failure_location: Option<String>,
    failure_body: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Shared {
    /// The source whose attempt is being handled, and the one that may go next.
    turns: DashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>,
    options: BruteForceOptions,
    endpoints: Vec<Endpoint>,
    policy: Policy,
    store: Arc<dyn AttemptStore>,
    gate: Arc<dyn ChallengeGate>,
    allow: Vec<IpNet>,
    when_state_fails: WhenStateFails,
    delayed: Arc<Semaphore>,
    max_body: usize,
}

/// The layer: see the module documentation.
#[derive(Debug, Clone)]
pub struct BruteForceLayer {
    shared: Arc<Shared>,
}

impl BruteForceLayer {
    /// The layer for `options`, keeping its counts in `store`, asking for challenges through
    /// `gate`. Clients in `allow` are never delayed, challenged or locked out; request bodies
    /// are read up to `max_body` bytes.
    pub fn new(
        options: &BruteForceOptions,
        store: Arc<dyn AttemptStore>,
        gate: Arc<dyn ChallengeGate>,
        allow: Vec<IpNet>,
        when_state_fails: WhenStateFails,
        max_body: usize,
    ) -> Result<Self, BadBruteForceSetting> {
        options.validate()?;
        let endpoints = options
            .logins
            .iter()
            .map(|login| Endpoint {
                path: normalize_path(&login.path, options.case_insensitive_paths),
                method: Method::from_bytes(login.method.to_ascii_uppercase().as_bytes())
                    .expect("validated"),
                field: login.username_field.clone(),
                failure_status: login
                    .failure_status
                    .iter()
                    .filter_map(|s| StatusCode::from_u16(*s).ok())
                    .collect(),
                failure_location: login.failure_location.clone(),
                failure_body: login.failure_body.clone().map(String::into_bytes),
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                turns: DashMap::new(),
                policy: options.policy(),
                delayed: Arc::new(Semaphore::new(options.max_delayed)),
                options: options.clone(),
                endpoints,
                store,
                gate,
                allow,
                when_state_fails,
                max_body,
            }),
        })
    }

    /// Whether any login endpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.shared.endpoints.is_empty()
    }
}

impl<S> Layer<S> for BruteForceLayer {
    type Service = BruteForce<S>;

    fn layer(&self, inner: S) -> BruteForce<S> {
        BruteForce {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`BruteForceLayer`].
#[derive(Debug, Clone)]
pub struct BruteForce<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A source's turn to make a login attempt; the next one waits until it is dropped.
struct Turn<'a> {
    shared: &'a Shared,
    source: IpAddr,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    _waited: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Nobody holds or waits for the source's lock any more: forget it.
        self.shared
            .turns
            .remove_if(&self.source, |_, lock| Arc::strong_count(lock) == 1);
    }
}

impl Shared {
    /// Waits for `source`'s turn: at once when none of its attempts is under way; else
    /// behind them, taking one of the `max_delayed` places, for at most twice `max_delay` and
    /// ten seconds more. `None` when no place is free or the wait runs out.
    async fn turn(&self, source: IpAddr) -> Option<Turn<'_>> {
        let lock = self.turns.entry(source).or_default().clone();
        let mut turn = Turn {
            shared: self,
            source,
            guard: None,
            _waited: None,
        };
        match lock.clone().try_lock_owned() {
            Ok(guard) => turn.guard = Some(guard),
            Err(_) => {
                turn._waited = Some(self.delayed.clone().try_acquire_owned().ok()?);
                let wait = self.options.max_delay * 2 + Duration::from_secs(10);
                turn.guard = Some(tokio::time::timeout(wait, lock.lock_owned()).await.ok()?);
            }
        }
        Some(turn)
    }

    fn endpoint(&self, method: &Method, path: &str) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let path = normalize_path(path, self.options.case_insensitive_paths);
        self.endpoints
            .iter()
            .position(|e| e.method == *method && e.path == path)
    }

    fn account(&self, endpoint: &Endpoint, headers: &HeaderMap, body: &[u8]) -> String {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let raw = if media == "application/json" || media.ends_with("+json") {
            let pointer = if endpoint.field.starts_with('/') {
                endpoint.field.clone()
            } else {
                format!("/{}", endpoint.field)
            };
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|value| match value.pointer(&pointer) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
        } else if media == "application/x-www-form-urlencoded" {
            form_urlencoded::parse(body)
                .find(|(name, _)| *name == endpoint.field.as_str())
                .map(|(_, value)| value.into_owned())
        } else {
            None
        };
        let account = raw.unwrap_or_default();
        let account = account.trim();
        let account = if self.options.case_sensitive_accounts {
            account.to_string()
        } else {
            account.to_lowercase()
        };
        // Names are kept in the state store: one request must not write megabytes there.
        crate::cut(&account, MAX_ACCOUNT_BYTES).to_string()
    }
}

/// What a login's answer says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Failure,
    Success,
    Unknown,
}

impl<S, ResBody> Service<Request<Body>> for BruteForce<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let endpoint = shared.endpoint(req.method(), req.uri().path());
        let client = reject::client_of(req.extensions());
        let exempt = client.is_none_or(|ip| {
            let ip = client_key(ip, 128);
            shared.allow.iter().any(|net| net.contains(&ip))
        });
        let (Some(index), false) = (endpoint, exempt) else {
            let future = self.inner.call(req);
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        };
        let client = client.expect("not exempt");
        let source = client_key(client, shared.options.ipv6_prefix);
        // The clone that was ready goes with this request; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let endpoint = &shared.endpoints[index];
            let (mut parts, body) = req.into_parts();
            let bytes = match read_whole(body, shared.max_body).await {
                Ok(bytes) => bytes,
                Err(rejection) => {
                    return Ok(rejection.respond(&parts.uri, &parts.headers, &parts.extensions));
                }
            };
            let attempt = Attempt {
                account: shared.account(endpoint, &parts.headers, &bytes),
                source,
            };
            let route = reject::route_of(&parts.uri);
            let event = |kind: RejectionKind, rule: &str, action: &'static str| {
                reject::record_login(kind, rule, Some(client), &route, action, &attempt.account);
            };
            // One attempt of a source at a time, from its standing to its outcome: attempts
            // sent in parallel must not all pass the checks before the first one is counted.
            let Some(_turn) = shared.turn(source).await else {
                event(RejectionKind::RateLimited, "login-busy", "reject");
                let wait = Some(Duration::from_secs(1));
                return Ok(refusal(
                    RejectionKind::RateLimited,
                    None,
                    wait,
                    &parts.headers,
                ));
            };
            let now = SystemTime::now();
            let counted = match shared.store.standing(&attempt, &shared.policy, now).await {
                Ok(standing) => Some(standing),
                Err(err) => {
                    tracing::warn!(target: "palisade::gateway", "login protection: {err}");
                    let kind = RejectionKind::StateUnavailable;
                    if shared.when_state_fails == WhenStateFails::Closed {
                        event(kind, "login-state", "reject");
                        return Ok(refusal(kind, None, None, &parts.headers));
                    }
                    event(kind, "login-state", "log");
                    None
                }
            };
            if let Some(standing) = &counted {
                if let Some(until) = standing.locked_until {
                    let wait = until.duration_since(now).unwrap_or_default();
                    event(RejectionKind::LockedOut, "login-lockout", "reject");
                    let minutes = wait.as_secs().div_ceil(60).max(1);
                    let message = format!(
                        "Too many failed sign-in attempts for this account from your network. \
                         Try again in {minutes} minute{}.",
                        if minutes == 1 { "" } else { "s" }
                    );
                    let kind = RejectionKind::LockedOut;
                    return Ok(refusal(kind, Some(&message), Some(wait), &parts.headers));
                }
                if shared.options.wants_challenge(standing)
                    && !shared.gate.has_pass(&parts.headers, source)
                {
                    let return_to = return_path(&parts.headers, &endpoint.path);
                    let req = Request::from_parts(parts, bytes);
                    return Ok(shared.gate.demand(&req, source, &return_to));
                }
                if let Some(delay) = shared.options.delay_for(standing) {
                    let Ok(_permit) = shared.delayed.clone().try_acquire_owned() else {
                        event(RejectionKind::RateLimited, "login-delay-full", "reject");
                        let kind = RejectionKind::RateLimited;
                        return Ok(refusal(kind, None, Some(delay), &parts.headers));
                    };
                    event(RejectionKind::LoginDelayed, "login-delay", "delay");
                    tokio::time::sleep(delay).await;
                }
            }
            if endpoint.failure_body.is_some() {
                // The body is searched as sent; a compressed one could not be.
                parts.headers.remove(header::ACCEPT_ENCODING);
            }
            let response = inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await?
                .map(Body::new);
            if counted.is_none() {
                return Ok(response);
            }
            let (outcome, response) = outcome(endpoint, response).await;
            let store = &shared.store;
            let result = match outcome {
                Outcome::Failure => match store
                    .failed(&attempt, &shared.policy, SystemTime::now())
                    .await
                {
                    Ok(after) => {
                        if after.locked {
                            event(RejectionKind::LockedOut, "login-lockout", "lockout");
                        }
                        for stuffing in after.stuffing {
                            let rule = match stuffing {
                                Stuffing::ManyAccounts(_) => "stuffing-many-accounts",
                                Stuffing::ManySources(_) => "stuffing-many-sources",
                            };
                            event(RejectionKind::CredentialStuffing, rule, "log");
                        }
                        Ok(())
                    }
                    Err(err) => Err(err),
                },
                Outcome::Success if !attempt.account.is_empty() => store.succeeded(&attempt).await,
                _ => Ok(()),
            };
            if let Err(err) = result {
                tracing::warn!(target: "palisade::gateway", "login protection: {err}");
                event(RejectionKind::StateUnavailable, "login-state", "log");
            }
            Ok(response)
        })
    }
}

/// The layer's own answer of `kind` (its page says `message`, else the kind's), with
/// `Retry-After` in whole seconds, at least one, when `wait` is given. The event is the
/// caller's, as it carries the account.
fn refusal(
    kind: RejectionKind,
    message: Option<&str>,
    wait: Option<Duration>,
    request_headers: &HeaderMap,
) -> Response<Body> {
    let message = message.unwrap_or(kind.message());
    let mut response: Response<Body> =
        reject::error_page(kind.status(), message, Some(kind), request_headers);
    if let Some(wait) = wait {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Where a solved challenge sends the client back to: the page the login form was on, when
/// the browser says and it is on this site, else the login path itself.
fn return_path(headers: &HeaderMap, login_path: &str) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<http::Uri>().ok());
    if let (Some(host), Some(referer)) = (host, referer)
        && referer.authority().map(|a| a.as_str()) == Some(host)
        && let Some(path) = referer.path_and_query()
        && path.as_str().starts_with('/')
        && !path.as_str().starts_with("//")
    {
        return path.as_str().to_string();
    }
    login_path.to_string()
}

/// The outcome `response` tells, and the response to send on (its body read back in when it
/// had to be searched).
async fn outcome(endpoint: &Endpoint, response: Response<Body>) -> (Outcome, Response<Body>) {
    if response.extensions().get::<GatewayMade>().is_some() {
        return (Outcome::Unknown, response);
    }
    let status = response.status();
    if endpoint.failure_status.contains(&status) {
        return (Outcome::Failure, response);
    }
    if let Some(prefix) = &endpoint.failure_location
        && let Some(location) = response.headers().get(header::LOCATION)
        && location_matches(location.as_bytes(), prefix)
    {
        return (Outcome::Failure, response);
    }
    let fallback = if status.is_success() || status.is_redirection() {
        Outcome::Success
    } else {
        Outcome::Unknown
    };
    let Some(marker) = &endpoint.failure_body else {
        return (fallback, response);
    };
    let (parts, body) = response.into_parts();
    let (found, body) = search(body, marker).await;
    let outcome = if found { Outcome::Failure } else { fallback };
    (outcome, Response::from_parts(parts, body))
}

/// Whether a `Location` starts with `prefix`; for a prefix that is a path, an absolute URL's
/// path and query count (`https://shop.example/login?error=1` matches `/login?error`).
fn location_matches(location: &[u8], prefix: &str) -> bool {
    if location.starts_with(prefix.as_bytes()) {
        return true;
    }
    if !prefix.starts_with('/') {
        return false;
    }
    std::str::from_utf8(location)
        .ok()
        .and_then(|text| text.parse::<http::Uri>().ok())
        .filter(|uri| uri.scheme().is_some())
        .and_then(|uri| uri.path_and_query().map(|p| p.as_str().starts_with(prefix)))
        .unwrap_or(false)
}

/// Reads up to [`MAX_SCANNED_BODY`] bytes of `body` looking for `marker`; gives whether it is
/// there and the whole body again.
async fn search(mut body: Body, marker: &[u8]) -> (bool, Body) {
    let mut seen = BytesMut::new();
    let contains = |haystack: &[u8]| haystack.windows(marker.len()).any(|w| w == marker);
    loop {
        match body.frame().await {
            None => {
                let found = contains(&seen);
                return (found, Body::from(seen.freeze()));
            }
            // Trailers (not data) of a login page are not worth keeping.
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    seen.extend_from_slice(&data);
                    if seen.len() > MAX_SCANNED_BODY {
                        let head = seen.freeze();
                        let found = contains(&head);
                        let first = futures_util::stream::once(std::future::ready(
                            Ok::<_, BoxError>(Frame::data(head)),
                        ));
                        let rest = BodyStream::new(body);
                        return (found, Body::new(StreamBody::new(first.chain(rest))));
                    }
                }
            }
            Some(Err(err)) => {
                let failed =
                    futures_util::stream::once(std::future::ready(Err::<Frame<Bytes>, _>(err)));
                return (false, Body::new(StreamBody::new(failed)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_threshold_and_stop_at_the_cap() {
        let options = BruteForceOptions::default();
        let at = |failures: f64| {
            options.delay_for(&Standing {
                pair: failures,
                ..Standing::default()
            })
        };
        assert_eq!(at(2.4), None);
        assert_eq!(at(2.9), Some(Duration::from_secs(1)));
        assert_eq!(at(3.0), Some(Duration::from_secs(1)));
        assert_eq!(at(4.2), Some(Duration::from_secs(2)));
        assert_eq!(at(6.0), Some(Duration::from_secs(8)));
        assert_eq!(at(9.0), Some(Duration::from_secs(30)));
        assert_eq!(at(1e9), Some(Duration::from_secs(30)));
        // The source's failures count too: one address trying many accounts.
        let source = options.delay_for(&Standing {
            source: 4.0,
            ..Standing::default()
        });
        assert_eq!(source, Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_account_attacked_from_everywhere_is_challenged_not_delayed() {
        let options = BruteForceOptions::default();
        let standing = Standing {
            account: 25.0,
            ..Standing::default()
        };
        assert!(options.wants_challenge(&standing));
        assert_eq!(options.delay_for(&standing), None);
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let mut options = BruteForceOptions {
            challenge_after: 10,
            ..BruteForceOptions::default()
        };
        assert_eq!(options.validate().unwrap_err().setting, "challenge_after");
        options.challenge_after = 5;
        options.logins.push(LoginEndpoint {
            path: "login".into(),
            method: "POST".into(),
            username_field: "user".into(),
            failure_status: vec![401],
            failure_location: None,
            failure_body: None,
        });
        assert_eq!(options.validate().unwrap_err().setting, "logins[0].path");
        options.logins[0].path = "/login".into();
        options.logins[0].failure_status = vec![];
        let err = options.validate().unwrap_err();
        assert_eq!(err.setting, "logins[0].failure_status");
        assert!(err.message.contains("failure_body"), "{}", err.message);
        options.logins[0].failure_body = Some("Wrong password".into());
        options.validate().unwrap();
    }

    #[test]
    fn a_failure_location_matches_absolute_urls_by_their_path() {
        assert!(location_matches(b"/login?error=1", "/login?error"));
        assert!(location_matches(
            b"https://shop.example/login?error=1",
            "/login?error"
        ));
        assert!(!location_matches(
            b"https://shop.example/home",
            "/login?error"
        ));
        assert!(!location_matches(b"/home", "/login?error"));
        assert!(location_matches(
            b"https://sso.example/fail",
            "https://sso.example/fail"
        ));
    }

    #[test]
    fn the_return_path_is_same_site_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        assert_eq!(return_path(&headers, "/login"), "/login");
        headers.insert(
            header::REFERER,
            HeaderValue::from_static("https://shop.example/account/login?next=/cart"),
        );
        assert_eq!(return_path(&headers, "/login"), "/account/login?next=/cart");
        headers.insert(
            header::REFERER,
            HeaderValue::from_static("https://evil.example/login"),
        );
        assert_eq!(return_path(&headers, "/login"), "/login");
    }

    #[tokio::test]
    async fn a_marker_is_found_in_a_body_and_the_body_kept() {
        let (found, body) =
            search(Body::from("<p>Invalid password</p>"), b"Invalid password").await;
        assert!(found);
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            "<p>Invalid password</p>"
        );
        let big = "x".repeat(MAX_SCANNED_BODY + 10);
        let (found, body) = search(Body::from(big.clone()), b"Invalid").await;
        assert!(!found);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), big.len());
    }
}
