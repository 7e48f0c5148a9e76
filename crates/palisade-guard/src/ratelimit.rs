//! Rate limits: GCRA (governor) per client address, per route group or globally, matched on the
//! normalised path, answered with 429, `Retry-After` and the IETF `RateLimit` headers.
//!
//! A client's key is its resolved address (so forwarded headers count only from trusted
//! proxies), an IPv4-mapped IPv6 address as the IPv4 one, and an IPv6 address cut to its /64
//! (configurable), so that one host cannot dodge a limit by rotating through its own prefix.
//! Each rule keeps at most `max_keys` keys; idle ones are dropped, and while the table is full,
//! new keys share one bucket, so that a flood of distinct addresses cannot grow memory without
//! bound (and is limited together).

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed, StateStore, keyed::ShrinkableKeyedStateStore},
};
use http::{HeaderValue, Method, Request, Response};
use ipnet::IpNet;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    brute_force::WhenStateFails,
    client_ip::{ClientAddr, Peer},
    redis_state::RedisState,
    reject::{Rejection, RejectionKind},
};

/// Rate limits: the rules, and how clients are told apart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitOptions {
    /// The limits; a request is counted against every rule that matches it.
    pub rules: Vec<RateRule>,
    /// The prefix length IPv6 clients are keyed by.
    pub ipv6_prefix: u8,
    /// The most client keys one rule keeps.
    pub max_keys: usize,
    /// Addresses and ranges no limit applies to, like a monitoring host.
    #[serde(deserialize_with = "crate::settings::networks")]
    pub allow: Vec<IpNet>,
    /// Whether `/Login` is the same route as `/login`.
    pub case_insensitive_paths: bool,
}

impl Default for RateLimitOptions {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            ipv6_prefix: 64,
            max_keys: 100_000,
            allow: Vec::new(),
            case_insensitive_paths: false,
        }
    }
}

/// What a rule counts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    /// Each client address (or IPv6 prefix) has its own bucket.
    #[default]
    Address,
    /// All clients share one bucket.
    Global,
}

/// One limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Its name, in the headers and events.
    pub name: String,
    /// The path prefixes it covers, matched on the normalised path; empty covers every path.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// The methods it counts; empty counts every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The sustained rate: `10/s`, `100/min`, `1000/h`.
    pub rate: String,
    /// How many requests may come at once; the rate's count by default.
    pub burst: Option<u32>,
    /// Per client or for everyone.
    #[serde(default)]
    pub key: RateKey,
}

/// A rate limit setting that cannot work, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRateSetting {
    /// The option, like `rules[0].rate`.
    pub setting: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> BadRateSetting {
    BadRateSetting {
        setting: setting.into(),
        message: message.into(),
    }
}

/// `10/s` → (10, one second).
fn parse_rate(text: &str) -> Option<(NonZeroU32, Duration)> {
    let (count, unit) = text.split_once('/')?;
    let count = NonZeroU32::new(count.trim().parse().ok()?)?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        _ => return None,
    };
    Some((count, period))
}

impl RateLimitOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BadRateSetting> {
        self.compile().map(|_| ())
    }

    fn compile(&self) -> Result<Vec<Compiled>, BadRateSetting> {
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err(bad(
                "ipv6_prefix",
                "must be between 1 and 128; 64 is the default",
            ));
        }
        if self.max_keys == 0 {
            return Err(bad("max_keys", "must be at least 1"));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut rules = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let setting = |field: &str| format!("rules[{index}].{field}");
            if rule.name.is_empty()
                || !rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(bad(
                    setting("name"),
                    "use letters, digits, `-` and `_`, like \"login\"",
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(bad(
                    setting("name"),
                    format!("`{}` names two rules", rule.name),
                ));
            }
            let (count, period) = parse_rate(&rule.rate).ok_or_else(|| {
                bad(
                    setting("rate"),
                    format!(
                        "`{}` is not a rate; write it like \"10/s\", \"100/min\" or \"1000/h\"",
                        rule.rate
                    ),
                )
            })?;
            let burst = match rule.burst {
                Some(0) => return Err(bad(setting("burst"), "must be at least 1")),
                Some(burst) => NonZeroU32::new(burst).expect("not zero"),
                None => count,
            };
            let cell = period / count.get();
            if cell.is_zero() {
                return Err(bad(
                    setting("rate"),
                    "is faster than one request per nanosecond",
                ));
            }
            let quota = Quota::with_period(cell)
                .expect("a period above zero")
                .allow_burst(burst);
            for prefix in &rule.prefixes {
                if !prefix.starts_with('/') {
                    return Err(bad(
                        setting("prefixes"),
                        format!("`{prefix}` must start with /"),
                    ));
                }
            }
            let mut methods = Vec::new();
            for name in &rule.methods {
                methods.push(
                    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        bad(setting("methods"), format!("`{name}` is not a method"))
                    })?,
                );
            }
            let prefixes = rule
                .prefixes
                .iter()
                .map(|p| normalize_path(p, self.case_insensitive_paths))
                .collect();
            let window = cell * burst.get();
            let policy = format!(
                "\"{}\";q={};w={}",
                rule.name,
                burst,
                window.as_secs().max(1)
            );
            rules.push(Compiled {
                name: rule.name.clone(),
                prefixes,
                methods,
                cell,
                burst: burst.get(),
                policy: HeaderValue::from_str(&policy).expect("a checked name"),
                limiter: match rule.key {
                    RateKey::Address => Limiter::Keyed(KeyedLimiter::new(
                        quota,
                        BoundedStore::new(self.max_keys),
                        DefaultClock::default(),
                    )),
                    RateKey::Global => Limiter::Global(
                        RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
                    ),
                },
                checks: AtomicU64::new(0),
            });
        }
        Ok(rules)
    }
}

/// The client keys of a rule: at most `max`, with one shared bucket for the rest.
struct BoundedStore {
    map: DashMap<IpAddr, InMemoryState>,
    overflow: InMemoryState,
    max: usize,
}

impl BoundedStore {
    fn new(max: usize) -> Self {
        Self {
            map: DashMap::new(),
            overflow: InMemoryState::default(),
            max,
        }
    }
}

impl StateStore for BoundedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.map.len() >= self.max {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = self.map.entry(*key).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        // A state whose theoretical arrival time is past is as good as a fresh one. Reading it
        // through the public interface: a decision that declines to replace it.
        self.map.retain(|_, state| {
            let read: Result<(), Option<Nanos>> = state.measure_and_replace(&NotKeyed::NonKey, Err);
            read.err().flatten().is_some_and(|tat| tat > drop_below)
        });
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type KeyedLimiter = RateLimiter<IpAddr, BoundedStore, DefaultClock, StateInformationMiddleware>;
type GlobalLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

enum Limiter {
    Keyed(KeyedLimiter),
    Global(GlobalLimiter),
}

struct Compiled {
    name: String,
    prefixes: Vec<String>,
    methods: Vec<Method>,
    cell: Duration,
    burst: u32,
    policy: HeaderValue,
    limiter: Limiter,
    checks: AtomicU64,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("name", &self.name)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

/// What one rule decided for a request.
enum Decision {
    /// Allowed, with this many requests left in the burst.
    Allowed(u32),
    /// Refused until this much time has passed.
    Limited(Duration),
}

/// How often a rule looks for idle keys to drop.
const SWEEP_EVERY: u64 = 4096;

impl Compiled {
    fn covers(&self, method: &Method, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.contains(method);
        let path_ok = self.prefixes.is_empty()
            || self.prefixes.iter().any(|prefix| {
                path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')
                })
            });
        method_ok && path_ok
    }

    fn check(&self, key: IpAddr) -> Decision {
        let outcome = match &self.limiter {
            Limiter::Keyed(limiter) => {
                if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                    limiter.retain_recent();
                }
                limiter.check_key(&key)
            }
            Limiter::Global(limiter) => limiter.check(),
        };
        match outcome {
            Ok(snapshot) => Decision::Allowed(snapshot.remaining_burst_capacity()),
            Err(not_until) => {
                Decision::Limited(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Seconds until the burst is whole again, with `remaining` of it left.
    fn reset_after(&self, remaining: u32) -> u64 {
        let used = self.burst.saturating_sub(remaining);
        (self.cell * used).as_secs_f64().ceil() as u64
    }

    /// How many client keys the rule holds.
    fn keys(&self) -> usize {
        match &self.limiter {
            Limiter::Keyed(limiter) => limiter.len(),
            Limiter::Global(_) => 0,
        }
    }
}

pub use crate::route::normalize_path;

/// The key of a client: IPv4 as it is (also when mapped into IPv6), IPv6 cut to `prefix` bits.
pub fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

/// The layer: see the module documentation.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    rules: Vec<Compiled>,
    allow: Vec<IpNet>,
    ipv6_prefix: u8,
    case_insensitive: bool,
    /// Where the buckets are when several gateways share them; in process when `None`.
    redis: Option<(RedisState, WhenStateFails)>,
    /// When the last "state unavailable" event went out, in seconds since the epoch.
    last_outage_event: AtomicU64,
}

/// How often, at most, an unreachable Redis is reported while requests keep coming.
const OUTAGE_EVENT_EVERY_SECS: u64 = 10;

impl RateLimitLayer {
    /// The layer for `options`, its buckets in this process.
    pub fn new(options: &RateLimitOptions) -> Result<Self, BadRateSetting> {
        Self::build(options, None)
    }

    /// The layer for `options`, its buckets in Redis so that every gateway sharing `state`
    /// enforces one limit; while Redis cannot be reached, `when_fails` decides.
    pub fn shared(
        options: &RateLimitOptions,
        state: RedisState,
        when_fails: WhenStateFails,
    ) -> Result<Self, BadRateSetting> {
        Self::build(options, Some((state, when_fails)))
    }

    fn build(
        options: &RateLimitOptions,
        redis: Option<(RedisState, WhenStateFails)>,
    ) -> Result<Self, BadRateSetting> {
        Ok(Self {
            shared: Arc::new(Shared {
                rules: options.compile()?,
                allow: options.allow.clone(),
                ipv6_prefix: options.ipv6_prefix,
                case_insensitive: options.case_insensitive_paths,
                redis,
                last_outage_event: AtomicU64::new(0),
            }),
        })
    }

    /// Whether the layer has any rule.
    pub fn is_empty(&self) -> bool {
        self.shared.rules.is_empty()
    }

    /// How many client keys the rule `name` holds now.
    pub fn keys(&self, name: &str) -> Option<usize> {
        self.shared
            .rules
            .iter()
            .find(|r| r.name == name)
            .map(Compiled::keys)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or_else(|| req.extensions().get::<Peer>().map(|p| p.addr.ip()));
        let exempt = client.is_none_or(|ip| {
            let ip = client_key(ip, 128);
            shared.allow.iter().any(|net| net.contains(&ip))
        });
        if !exempt && shared.redis.is_some() && !shared.rules.is_empty() {
            return self.call_shared(req, client.expect("not exempt"));
        }
        let mut first: Option<(&Compiled, u32)> = None;
        if !exempt && !shared.rules.is_empty() {
            let key = client_key(client.expect("not exempt"), shared.ipv6_prefix);
            let path = normalize_path(req.uri().path(), shared.case_insensitive);
            for rule in shared
                .rules
                .iter()
                .filter(|r| r.covers(req.method(), &path))
            {
                match rule.check(key) {
                    Decision::Allowed(remaining) => {
                        if first.is_none_or(|(_, left)| remaining < left) {
                            first = Some((rule, remaining));
                        }
                    }
                    Decision::Limited(wait) => {
                        let response = limited(rule, wait, &req);
                        return Box::pin(async move { Ok(response) });
                    }
                }
            }
        }
        let headers = first.and_then(|(rule, remaining)| headers_for(rule, remaining));
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut response = future.await?.map(Body::new);
            if let Some((policy, state)) = headers {
                response.headers_mut().insert("ratelimit-policy", policy);
                response.headers_mut().insert("ratelimit", state);
            }
            Ok(response)
        })
    }
}

impl<S> RateLimit<S> {
    /// The check against buckets in Redis: one script call per matching rule.
    fn call_shared<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        client: IpAddr,
    ) -> BoxFuture<Result<Response<Body>, S::Error>>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = normalize_path(req.uri().path(), shared.case_insensitive);
        let covering: Vec<usize> = (0..shared.rules.len())
            .filter(|i| shared.rules[*i].covers(req.method(), &path))
            .collect();
        Box::pin(async move {
            let (state, when_fails) = shared.redis.as_ref().expect("called with Redis");
            let key = client_key(client, shared.ipv6_prefix);
            let mut first: Option<(&Compiled, u32)> = None;
            for rule in covering.iter().map(|i| &shared.rules[*i]) {
                let bucket = match rule.limiter {
                    Limiter::Keyed(_) => crate::redis_state::rate_key(&rule.name, Some(key)),
                    Limiter::Global(_) => crate::redis_state::rate_key(&rule.name, None),
                };
                match state.check_rate(&bucket, rule.cell, rule.burst).await {
                    Ok(Ok(remaining)) => {
                        if first.is_none_or(|(_, left)| remaining < left) {
                            first = Some((rule, remaining));
                        }
                    }
                    Ok(Err(wait)) => return Ok(limited(rule, wait, &req)),
                    Err(err) => {
                        shared.outage(&err, &req);
                        if *when_fails == WhenStateFails::Closed {
                            let kind = RejectionKind::StateUnavailable;
                            return Ok(crate::reject::error_page(
                                kind.status(),
                                kind.message(),
                                Some(kind),
                                req.headers(),
                            ));
                        }
                        first = None;
                        break;
                    }
                }
            }
            let headers = first.and_then(|(rule, remaining)| headers_for(rule, remaining));
            let mut response = inner.call(req).await?.map(Body::new);
            if let Some((policy, state)) = headers {
                response.headers_mut().insert("ratelimit-policy", policy);
                response.headers_mut().insert("ratelimit", state);
            }
            Ok(response)
        })
    }
}

impl Shared {
    /// Reports an unreachable Redis, at most once every [`OUTAGE_EVENT_EVERY_SECS`].
    fn outage<T>(&self, err: &crate::attempts::StateError, req: &Request<T>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_outage_event.load(Ordering::Relaxed);
        if now.saturating_sub(last) < OUTAGE_EVENT_EVERY_SECS
            || self
                .last_outage_event
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(target: "palisade::gateway", "rate limits: {err}");
        Rejection::new(RejectionKind::StateUnavailable, "rate-limit-state").log(req);
    }
}

/// The 429 for a request that `rule` refuses for `wait`.
fn limited<T>(rule: &Compiled, wait: Duration, req: &Request<T>) -> Response<Body> {
    let mut response: Response<Body> =
        Rejection::new(RejectionKind::RateLimited, rule.name.clone()).respond_to(req);
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    headers.insert("ratelimit-policy", rule.policy.clone());
    let state = format!("\"{}\";r=0;t={seconds}", rule.name);
    if let Ok(value) = HeaderValue::from_str(&state) {
        headers.insert("ratelimit", value);
    }
    response
}

/// The `RateLimit-Policy` and `RateLimit` headers of an allowed request.
fn headers_for(rule: &Compiled, remaining: u32) -> Option<(HeaderValue, HeaderValue)> {
    let state = format!(
        "\"{}\";r={remaining};t={}",
        rule.name,
        rule.reset_after(remaining)
    );
    Some((rule.policy.clone(), HeaderValue::from_str(&state).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_variants_are_one_route() {
        for path in [
            "/login",
            "/login/",
            "/%6cogin",
            "/./login",
            "//login",
            "/a/../login",
        ] {
            assert_eq!(normalize_path(path, false), "/login", "{path}");
        }
        assert_eq!(normalize_path("/Login", false), "/Login");
        assert_eq!(normalize_path("/Login", true), "/login");
        assert_eq!(normalize_path("/../..", false), "/");
        // Decoded once: an encoded percent stays a percent.
        assert_eq!(normalize_path("/%256cogin", false), "/%6cogin");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 64),
            client_key(ip("2001:db8:1:2:ffff:1:2:3"), 64)
        );
        assert_ne!(client_key(ip("2001:db8:1:3::1"), 64), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    }

    #[test]
    fn rates_are_read_and_bad_ones_explained() {
        assert_eq!(
            parse_rate("10/s"),
            Some((NonZeroU32::new(10).unwrap(), Duration::from_secs(1)))
        );
        assert_eq!(parse_rate("100/min").unwrap().1, Duration::from_secs(60));
        assert_eq!(parse_rate("0/s"), None);
        let options = |rate: &str| RateLimitOptions {
            rules: vec![RateRule {
                name: "api".into(),
                prefixes: vec![],
                methods: vec![],
                rate: rate.into(),
                burst: None,
                key: RateKey::Address,
            }],
            ..Default::default()
        };
        let err = options("ten per second").validate().unwrap_err();
        assert_eq!(err.setting, "rules[0].rate");
        assert!(err.message.contains("\"100/min\""), "{}", err.message);
        assert!(options("5/min").validate().is_ok());
    }

    #[test]
    fn a_full_table_puts_new_clients_in_one_shared_bucket() {
        let store = BoundedStore::new(3);
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap());
        let limiter: RateLimiter<IpAddr, BoundedStore, DefaultClock> =
            RateLimiter::new(quota, store, DefaultClock::default());
        for n in 0..3u8 {
            assert!(limiter.check_key(&IpAddr::from([10, 0, 0, n])).is_ok());
        }
        assert_eq!(limiter.len(), 3);
        // Two newcomers share the overflow bucket: the second is refused.
        assert!(limiter.check_key(&IpAddr::from([10, 0, 1, 0])).is_ok());
        assert!(limiter.check_key(&IpAddr::from([10, 0, 1, 1])).is_err());
        assert_eq!(limiter.len(), 3);
        // Known clients keep their own.
        assert!(limiter.check_key(&IpAddr::from([10, 0, 0, 0])).is_err());
    }

    type Answer = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;
    /// A service that always answers 200.
    type Ok200 = tower::util::ServiceFn<fn(Request<()>) -> Answer>;

    /// The status `service` answers a request from `client` with.
    async fn send(service: &mut RateLimit<Ok200>, client: IpAddr) -> http::StatusCode {
        let mut req = Request::get("/login").body(()).unwrap();
        req.extensions_mut().insert(ClientAddr(client));
        service.call(req).await.unwrap().status()
    }

    /// The layer of `options` (TOML) and the service it makes around [`Ok200`].
    fn service(options: &str) -> (RateLimitLayer, RateLimit<Ok200>) {
        let options: RateLimitOptions = toml::from_str(options).unwrap();
        let layer = RateLimitLayer::new(&options).unwrap();
        let ok: fn(Request<()>) -> Answer =
            |_| std::future::ready(Ok(Response::new(Body::empty())));
        let service = layer.layer(tower::service_fn(ok));
        (layer, service)
    }

    #[tokio::test]
    async fn a_hundred_thousand_addresses_cannot_grow_the_table_past_its_bound() {
        let (layer, mut service) =
            service("max_keys = 10000\n[[rules]]\nname = \"login\"\nrate = \"1/h\"\n");
        let mut passed = 0;
        for n in 0..100_000u32 {
            let client = IpAddr::from((0xC000_0000u32 + n).to_be_bytes());
            if send(&mut service, client).await == http::StatusCode::OK {
                passed += 1;
            }
        }
        assert_eq!(layer.keys("login"), Some(10_000));
        // Each of the first 10,000 had its own request; the other 90,000 shared one.
        assert_eq!(passed, 10_001);
    }

    #[tokio::test]
    async fn idle_keys_are_dropped_as_requests_go_on() {
        let (layer, mut service) =
            service("[[rules]]\nname = \"login\"\nrate = \"1000/s\"\nburst = 1\n");
        for n in 0..100_000u32 {
            let client = IpAddr::from((0x0A00_0000u32 + n).to_be_bytes());
            assert_eq!(send(&mut service, client).await, http::StatusCode::OK);
        }
        // A key is idle a millisecond after its request; sweeps every 4,096 requests drop them.
        let keys = layer.keys("login").unwrap();
        assert!(keys < 20_000, "{keys} keys kept");
    }
}
