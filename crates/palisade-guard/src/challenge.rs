//! Challenges: a self-hosted proof-of-work page that trades a solved, signed, expiring,
//! single-use challenge for a short-lived signed pass cookie, or a Turnstile or hCaptcha widget
//! in its place when one is configured.
//!
//! Other layers use [`Challenges`]. [`Challenges::has_pass`] tells whether a request carries a
//! valid pass for its client; [`Challenges::demand`] answers a request that must earn one first
//! (a login after too many failures, say) with a fresh challenge: a page, or for clients that
//! prefer JSON `{"error": {..}, "challenge": {"token", "difficulty", "submit", ..}}`, and one
//! `challenge_required` event (action `challenge`). [`ChallengeLayer`] answers the challenge
//! path itself: `GET` gives a challenge (for `?return=/path`); `POST` takes the answer
//! (`token`, `nonce` and `return`, form-encoded) and gives the pass with a 303 back to the
//! return path, or 200 and `{"pass": "ok"}` to JSON clients. Every other request passes
//! untouched.
//!
//! A token is `version ‖ provider ‖ difficulty ‖ id ‖ expires-at ‖ client tag ‖ HMAC-SHA-256`
//! in base64url. The tag is a keyed hash of the client's key (its address, an IPv6 one cut to
//! its /64), so a token is good for one client only, and the MAC covers the difficulty the
//! server chose. The work is a nonce (decimal digits) such that SHA-256(`token:nonce`) starts
//! with that many zero bits. Each challenge issued in the last minute counts towards the next
//! one's difficulty: one more bit per `load_step`, up to `max_difficulty`. An answered
//! challenge's id is spent in a [`SpentChallenges`] store, so each solution works once. The pass
//! cookie `__Host-palisade-pass` is `version ‖ expires-at ‖ HMAC-SHA-256` over those and the
//! client's key. `docs/gateway.md` has the details, and what proof of work does not stop.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};
use zeroize::Zeroizing;

use crate::{
    Body, BoxError, BoxFuture, PageNonce,
    attempts::StateError,
    body::read_whole,
    csrf::cookies,
    ratelimit::{client_key, normalize_path},
    reject::{Rejection, RejectionKind, branded_page, client_of, prefers_json},
};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The tracing target of the module's debug messages.
const TARGET: &str = "palisade::challenge";

/// Who sets the challenge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeProvider {
    /// The gateway's own proof of work: no third party.
    #[default]
    Pow,
    /// Cloudflare Turnstile: its widget on the page, its answer verified with its `siteverify`.
    Turnstile,
    /// hCaptcha: its widget on the page, its answer verified with its `siteverify`.
    Hcaptcha,
}

impl ChallengeProvider {
    /// The name in the options.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pow => "pow",
            Self::Turnstile => "turnstile",
            Self::Hcaptcha => "hcaptcha",
        }
    }

    /// The byte that names it in a token.
    fn code(self) -> u8 {
        match self {
            Self::Pow => 0,
            Self::Turnstile => 1,
            Self::Hcaptcha => 2,
        }
    }

    /// Where its answers are verified unless `verify_url` says otherwise.
    pub fn default_verify_url(self) -> Option<&'static str> {
        match self {
            Self::Pow => None,
            Self::Turnstile => Some("https://challenges.cloudflare.com/turnstile/v0/siteverify"),
            Self::Hcaptcha => Some("https://api.hcaptcha.com/siteverify"),
        }
    }

    /// The form field its widget puts the answer in.
    pub fn response_field(self) -> Option<&'static str> {
        match self {
            Self::Pow => None,
            Self::Turnstile => Some("cf-turnstile-response"),
            Self::Hcaptcha => Some("h-captcha-response"),
        }
    }

    /// Its widget's script, the widget's class, and the sources its page's policy must allow.
    fn widget(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Pow => ("", "", ""),
            Self::Turnstile => (
                "https://challenges.cloudflare.com/turnstile/v0/api.js",
                "cf-turnstile",
                "https://challenges.cloudflare.com",
            ),
            Self::Hcaptcha => (
                "https://js.hcaptcha.com/1/api.js",
                "h-captcha",
                "https://hcaptcha.com https://*.hcaptcha.com",
            ),
        }
    }
}

impl std::fmt::Display for ChallengeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The challenge settings; every field has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeOptions {
    /// Leading zero bits of SHA-256 a solution needs when the gateway is quiet; each bit
    /// doubles the work. 16 takes a desktop browser half a second on average.
    pub difficulty: u8,
    /// The most bits the load may raise it to.
    pub max_difficulty: u8,
    /// How many challenges issued within a minute add one bit.
    pub load_step: u32,
    /// How long a challenge can be answered.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub ttl: Duration,
    /// How long the pass cookie lets its client through.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub pass_ttl: Duration,
    /// Where the gateway serves challenges and takes their answers; the upstream never sees it.
    pub path: String,
    /// The gateway's own proof of work, or a CAPTCHA service.
    pub provider: ChallengeProvider,
    /// The CAPTCHA's site key, from its dashboard.
    pub site_key: Option<String>,
    /// A file holding the CAPTCHA's secret key, read by the gateway.
    pub secret_file: Option<PathBuf>,
    /// Where CAPTCHA answers are verified; the provider's `siteverify` by default.
    pub verify_url: Option<String>,
    /// How long a verification may take before the answer is refused.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub verify_timeout: Duration,
}

impl Default for ChallengeOptions {
    fn default() -> Self {
        Self {
            difficulty: 16,
            max_difficulty: 20,
            load_step: 100,
            ttl: Duration::from_secs(300),
            pass_ttl: Duration::from_secs(1800),
            path: "/.well-known/palisade/challenge".into(),
            provider: ChallengeProvider::Pow,
            site_key: None,
            secret_file: None,
            verify_url: None,
            verify_timeout: Duration::from_secs(10),
        }
    }
}

/// A challenge setting that cannot work, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadChallengeSetting {
    /// The option, like `max_difficulty`.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> BadChallengeSetting {
    BadChallengeSetting {
        setting,
        message: message.into(),
    }
}

impl ChallengeOptions {
    /// Checks what the types cannot, as for a config file: a CAPTCHA provider also needs
    /// `secret_file`, which the gateway reads ([`Challenges::new`] takes the secret itself).
    pub fn validate(&self) -> Result<(), BadChallengeSetting> {
        self.check()?;
        if self.provider != ChallengeProvider::Pow && self.secret_file.is_none() {
            return Err(bad(
                "secret_file",
                format!(
                    "{0} needs its secret key: put it in a file only the gateway can read and \
                     name it, like secret_file = \"/etc/palisade/{0}.secret\"",
                    self.provider
                ),
            ));
        }
        Ok(())
    }

    /// Every check but the secret's; the URL answers are verified at, for a provider.
    fn check(&self) -> Result<Option<Uri>, BadChallengeSetting> {
        if !(1..=32).contains(&self.difficulty) {
            return Err(bad(
                "difficulty",
                "must be between 1 and 32 bits; 16 (the default) takes a browser under a \
                 second, and each bit more doubles that",
            ));
        }
        if self.max_difficulty < self.difficulty || self.max_difficulty > 32 {
            return Err(bad(
                "max_difficulty",
                format!(
                    "must be at least difficulty ({}) and at most 32; set it to difficulty to \
                     keep the work the same under load",
                    self.difficulty
                ),
            ));
        }
        if self.load_step == 0 {
            return Err(bad(
                "load_step",
                "must be at least 1 (challenges per minute that add one bit); to keep the \
                 difficulty fixed, set max_difficulty = difficulty",
            ));
        }
        self.check_durations()?;
        self.check_path()?;
        if self.provider == ChallengeProvider::Pow {
            return self.check_pow_only().map(|()| None);
        }
        self.check_provider().map(Some)
    }

    fn check_durations(&self) -> Result<(), BadChallengeSetting> {
        let within = |value: Duration, low: u64, high: u64| {
            (Duration::from_secs(low)..=Duration::from_secs(high)).contains(&value)
        };
        if !within(self.ttl, 10, 3600) {
            return Err(bad(
                "ttl",
                "must be between 10s and 1h: a challenge is solved in seconds, and spent ones \
                 are kept this long; 5m is the default",
            ));
        }
        if !within(self.pass_ttl, 60, 86_400) {
            return Err(bad(
                "pass_ttl",
                "must be between 1m and 24h, as a pass is meant to be short-lived; 30m is the \
                 default",
            ));
        }
        if !within(self.verify_timeout, 1, 60) {
            return Err(bad(
                "verify_timeout",
                "must be between 1s and 60s; 10s is the default",
            ));
        }
        Ok(())
    }

    fn check_path(&self) -> Result<(), BadChallengeSetting> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"/-._~".contains(&b);
        if !self.path.starts_with('/') || self.path.len() < 2 || !self.path.bytes().all(plain) {
            return Err(bad(
                "path",
                format!(
                    "`{}` is not a path of its own; write it like \
                     \"/.well-known/palisade/challenge\" (letters, digits, / - . _ ~)",
                    self.path
                ),
            ));
        }
        Ok(())
    }

    fn check_pow_only(&self) -> Result<(), BadChallengeSetting> {
        let given = [
            ("site_key", self.site_key.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("verify_url", self.verify_url.is_some()),
        ];
        match given.into_iter().find(|(_, set)| *set) {
            Some((setting, _)) => Err(bad(
                setting,
                "is only used with provider = \"turnstile\" or \"hcaptcha\"; set provider, or \
                 leave this out for the gateway's own proof of work",
            )),
            None => Ok(()),
        }
    }

    fn check_provider(&self) -> Result<Uri, BadChallengeSetting> {
        let key_char = |c: char| c.is_ascii_alphanumeric() || "-_".contains(c);
        match self.site_key.as_deref() {
            Some(key) if !key.is_empty() && key.chars().all(key_char) => {}
            Some(key) => {
                return Err(bad(
                    "site_key",
                    format!("`{key}` is not a site key; copy it from the provider's dashboard"),
                ));
            }
            None => {
                return Err(bad(
                    "site_key",
                    format!(
                        "{} needs the site key from its dashboard, like site_key = \
                         \"0x4AAAAAAAB...\"",
                        self.provider
                    ),
                ));
            }
        }
        let url = self
            .verify_url
            .as_deref()
            .or(self.provider.default_verify_url())
            .expect("every provider has a default");
        verify_uri(url).ok_or_else(|| {
            bad(
                "verify_url",
                format!(
                    "`{url}` must be an https:// URL (http:// only to this machine: \
                     127.0.0.1, [::1] or localhost); leave it out for the provider's own"
                ),
            )
        })
    }
}

/// `url` as a URI answers can be posted to: HTTPS, or HTTP to a loopback address only (the
/// secret goes in the body).
fn verify_uri(url: &str) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    let host = crate::host::normalize(uri.authority()?.as_str())?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str()? {
        "https" => Some(uri),
        "http" if loopback => Some(uri),
        _ => None,
    }
}

/// Where answered challenges are remembered until they expire, so that each solution works
/// once. The gateway keeps them in memory ([`MemorySpent`]); a store shared by several
/// gateways makes a solution good at only one of them.
pub trait SpentChallenges: Send + Sync + std::fmt::Debug {
    /// Spends challenge `id`, which expires at `expires_at` and may be forgotten after: true
    /// the first time, false every time after. An error refuses the answer (fail closed).
    fn spend(&self, id: [u8; 16], expires_at: SystemTime) -> BoxFuture<Result<bool, StateError>>;
}

/// Spent challenges in memory, at most `capacity` of them. Expired ids are dropped when room is
/// needed and every 1,024 spends. While it is full of ids that have not expired, spending fails
/// and answers are refused (fail closed): forgetting an id early would let its solution be
/// replayed.
pub struct MemorySpent {
    capacity: usize,
    state: Mutex<SpentState>,
}

#[derive(Debug, Default)]
struct SpentState {
    ids: HashMap<[u8; 16], SystemTime>,
    /// The earliest expiry among `ids`: no sweep can drop anything before it.
    earliest: Option<SystemTime>,
    since_sweep: usize,
}

/// How many spends may pass between two sweeps of expired ids.
const SWEEP_EVERY: usize = 1024;

impl MemorySpent {
    /// The capacity the gateway uses: 100,000 ids, a few megabytes.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A store for at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    /// How many ids it holds now.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpentState> {
        // The state is consistent after every statement, so a panic elsewhere cannot break it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spend_at(
        &self,
        id: [u8; 16],
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<bool, StateError> {
        let mut state = self.lock();
        if state.ids.contains_key(&id) {
            return Ok(false);
        }
        state.since_sweep += 1;
        let due = state.ids.len() >= self.capacity || state.since_sweep >= SWEEP_EVERY;
        if due && state.earliest.is_some_and(|earliest| earliest <= now) {
            state.sweep(now);
        }
        if state.ids.len() >= self.capacity {
            return Err(StateError(format!(
                "{} challenges answered within their lifetime fill the memory store; answers \
                 are refused until the oldest expire",
                self.capacity
            )));
        }
        state.ids.insert(id, expires_at);
        state.earliest = Some(state.earliest.map_or(expires_at, |e| e.min(expires_at)));
        Ok(true)
    }
}

impl std::fmt::Debug for MemorySpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySpent")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl SpentState {
    fn sweep(&mut self, now: SystemTime) {
        self.ids.retain(|_, expires| *expires > now);
        self.earliest = self.ids.values().min().copied();
        self.since_sweep = 0;
    }
}

impl SpentChallenges for MemorySpent {
    fn spend(&self, id: [u8; 16], expires_at: SystemTime) -> BoxFuture<Result<bool, StateError>> {
        let spent = self.spend_at(id, expires_at, SystemTime::now());
        Box::pin(std::future::ready(spent))
    }
}

const TOKEN_VERSION: u8 = 1;
/// Version, provider, difficulty, id, expiry, client tag.
const TICKET_FIELDS: usize = 1 + 1 + 1 + 16 + 8 + 8;
const TOKEN_BYTES: usize = TICKET_FIELDS + 32;

/// What a challenge token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    provider: u8,
    difficulty: u8,
    id: [u8; 16],
    /// Seconds since the epoch.
    expires: u64,
    client: [u8; 8],
}

fn hmac(key: &[u8; 32], domain: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(domain);
    mac
}

/// The client's key as bytes: IPv4 as it is (mapped IPv4 too), IPv6 cut to its /64.
fn client_bytes(client: IpAddr) -> [u8; 17] {
    let mut bytes = [0u8; 17];
    match client_key(client, 64) {
        IpAddr::V4(v4) => {
            bytes[0] = 4;
            bytes[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            bytes[0] = 6;
            bytes[1..].copy_from_slice(&v6.octets());
        }
    }
    bytes
}

/// A keyed hash of the client's key: a token names its client without showing its address.
fn client_tag(key: &[u8; 32], client: IpAddr) -> [u8; 8] {
    let mut mac = hmac(key, b"palisade-challenge-client\0");
    mac.update(&client_bytes(client));
    let digest = mac.finalize().into_bytes();
    digest[..8].try_into().expect("8 bytes")
}

impl Ticket {
    fn fields(&self) -> [u8; TICKET_FIELDS] {
        let mut fields = [0u8; TICKET_FIELDS];
        fields[0] = TOKEN_VERSION;
        fields[1] = self.provider;
        fields[2] = self.difficulty;
        fields[3..19].copy_from_slice(&self.id);
        fields[19..27].copy_from_slice(&self.expires.to_be_bytes());
        fields[27..].copy_from_slice(&self.client);
        fields
    }

    fn mac(fields: &[u8], key: &[u8; 32]) -> HmacSha256 {
        let mut mac = hmac(key, b"palisade-challenge\0");
        mac.update(fields);
        mac
    }

    /// The token: the fields and their MAC, base64url.
    fn seal(&self, key: &[u8; 32]) -> String {
        let fields = self.fields();
        let tag = Self::mac(&fields, key).finalize().into_bytes();
        let mut raw = Vec::with_capacity(TOKEN_BYTES);
        raw.extend_from_slice(&fields);
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The ticket of a token this key sealed; the MAC is compared in constant time.
    fn open(key: &[u8; 32], token: &str) -> Result<Self, Refusal> {
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| Refusal::Invalid)?;
        if raw.len() != TOKEN_BYTES || raw[0] != TOKEN_VERSION {
            return Err(Refusal::Invalid);
        }
        let (fields, tag) = raw.split_at(TICKET_FIELDS);
        Self::mac(fields, key)
            .verify_slice(tag)
            .map_err(|_| Refusal::Invalid)?;
        Ok(Self {
            provider: fields[1],
            difficulty: fields[2],
            id: fields[3..19].try_into().expect("16 bytes"),
            expires: u64::from_be_bytes(fields[19..27].try_into().expect("8 bytes")),
            client: fields[27..].try_into().expect("8 bytes"),
        })
    }

    fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.expires)
    }
}

/// The zero bits SHA-256 of `token:nonce` starts with, where `nonce` is 1 to 20 decimal
/// digits; `None` for any other nonce.
fn work_of(token: &str, nonce: &str) -> Option<u32> {
    if nonce.is_empty() || nonce.len() > 20 || !nonce.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(token)
        .chain_update(b":")
        .chain_update(nonce)
        .finalize();
    Some(leading_zero_bits(&digest))
}

fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in bytes {
        if *byte != 0 {
            return bits + byte.leading_zeros();
        }
        bits += 8;
    }
    bits
}

/// The name of the pass cookie.
pub const PASS_COOKIE: &str = "__Host-palisade-pass";
const PASS_VERSION: u8 = 1;
const PASS_BYTES: usize = 1 + 8 + 32;

fn pass_mac(key: &[u8; 32], expires: u64, client: IpAddr) -> HmacSha256 {
    let mut mac = hmac(key, b"palisade-pass\0");
    mac.update(&[PASS_VERSION]);
    mac.update(&expires.to_be_bytes());
    mac.update(&client_bytes(client));
    mac
}

/// A pass for `client` until `expires` (seconds since the epoch), as the cookie's value.
fn mint_pass(key: &[u8; 32], client: IpAddr, expires: u64) -> String {
    let tag = pass_mac(key, expires, client).finalize().into_bytes();
    let mut raw = Vec::with_capacity(PASS_BYTES);
    raw.push(PASS_VERSION);
    raw.extend_from_slice(&expires.to_be_bytes());
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether `value` is this key's pass for `client`, unexpired at `now`.
fn pass_is_valid(key: &[u8; 32], value: &str, client: IpAddr, now: u64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(value) else {
        return false;
    };
    if raw.len() != PASS_BYTES || raw[0] != PASS_VERSION {
        return false;
    }
    let expires = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    expires > now
        && pass_mac(key, expires, client)
            .verify_slice(&raw[9..])
            .is_ok()
}

/// The challenges issued in the last minute, in one slot per second: each slot holds the
/// second it counts (high 32 bits) and its count (low 32), updated without a lock.
#[derive(Debug)]
struct Load {
    slots: [AtomicU64; 60],
}

impl Load {
    fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one challenge issued at `now` (seconds since the epoch).
    fn record(&self, now: u64) {
        let slot = &self.slots[(now % 60) as usize];
        let second = now & 0xFFFF_FFFF;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == second {
                current + u64::from(current & 0xFFFF_FFFF < 0xFFFF_FFFF)
            } else {
                (second << 32) | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The challenges issued in the minute up to `now`.
    fn count(&self, now: u64) -> u64 {
        let second = now & 0xFFFF_FFFF;
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|value| second.wrapping_sub(value >> 32) & 0xFFFF_FFFF < 60)
            .map(|value| value & 0xFFFF_FFFF)
            .sum()
    }
}

/// The difficulty after `issued` challenges in the last minute: `base`, one bit more per
/// `step`, at most `max`.
fn difficulty_for(base: u8, max: u8, step: u32, issued: u64) -> u8 {
    let raised = u64::from(base) + issued / u64::from(step.max(1));
    u8::try_from(raised.min(u64::from(max))).expect("at most max")
}

/// The longest return path kept.
const MAX_RETURN: usize = 2048;

/// Whether `path` is a path on this site to send a browser back to: one `/` and then printable
/// ASCII without `\`. Never `//host` or `/\host` (another site, to a browser), never a URL with
/// a scheme, never a character a browser drops from a URL (spaces, tabs, line ends) to find
/// `//` behind it; and, so that no later reader of the path finds `//` in it either, no empty
/// segment but a trailing one, and no `.` or `..` segment (`%2e` included).
fn is_local_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/')
        || path.len() > MAX_RETURN
        || !bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'\\')
    {
        return false;
    }
    let segments: Vec<&str> = path[1..]
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split('/')
        .collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(index, segment)| {
        let dots = segment.to_ascii_lowercase().replace("%2e", ".");
        (index == last || !segment.is_empty()) && dots != "." && dots != ".."
    })
}

/// Why an answer was refused: the event's rule and what the page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The body is not a form with the fields.
    FormInvalid,
    /// Sent from another site's page.
    CrossSite,
    /// The return path is not a path on this site.
    ReturnInvalid,
    /// A token this gateway did not make, changed, or for another provider.
    Invalid,
    /// Past its lifetime.
    Expired,
    /// Made for another client.
    WrongClient,
    /// The nonce does not give the token's difficulty.
    WorkInvalid,
    /// Answered before.
    Replayed,
    /// The CAPTCHA service says no.
    ProviderRefused,
    /// The CAPTCHA was solved on another site.
    ProviderHostname,
    /// The CAPTCHA service refused the secret key: a configuration mistake.
    ProviderSecret,
    /// The CAPTCHA service could not be asked, or gave no answer it could mean.
    ProviderUnavailable,
    /// The store of spent challenges failed.
    StoreUnavailable,
}

impl Refusal {
    fn rule(self) -> &'static str {
        match self {
            Self::FormInvalid => "challenge-form-invalid",
            Self::CrossSite => "challenge-cross-site",
            Self::ReturnInvalid => "challenge-return-invalid",
            Self::Invalid => "challenge-invalid",
            Self::Expired => "challenge-expired",
            Self::WrongClient => "challenge-wrong-client",
            Self::WorkInvalid => "challenge-work-invalid",
            Self::Replayed => "challenge-replayed",
            Self::ProviderRefused => "challenge-provider-refused",
            Self::ProviderHostname => "challenge-provider-hostname",
            Self::ProviderSecret => "challenge-provider-secret",
            Self::ProviderUnavailable => "challenge-provider-unavailable",
            Self::StoreUnavailable => "challenge-store-unavailable",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::FormInvalid => {
                "The answer must be a form (application/x-www-form-urlencoded) with the fields token, nonce and return."
            }
            Self::CrossSite => "The answer was sent from another site's page.",
            Self::ReturnInvalid => {
                "The page to return to must be a path on this site, like /login."
            }
            Self::Invalid => "The check was changed or is not from this site.",
            Self::Expired => "The check expired before it was answered.",
            Self::WrongClient => {
                "The check was made for another network address; did your connection change?"
            }
            Self::WorkInvalid => "The answer to the check is wrong.",
            Self::Replayed => "This check was answered already; each one counts once.",
            Self::ProviderRefused | Self::ProviderHostname => "The check was not passed.",
            Self::ProviderSecret | Self::ProviderUnavailable => {
                "The check could not be verified just now. Please try again in a moment."
            }
            Self::StoreUnavailable => {
                "The answer could not be recorded just now. Please try again in a moment."
            }
        }
    }
}

/// What a CAPTCHA service's `siteverify` answers.
#[derive(Debug, Deserialize)]
struct Verdict {
    success: bool,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<String>,
}

/// hyper's client with rustls: the one the gateway already links for its HTTPS upstreams, so it
/// adds no second HTTP stack, and async, so a verification holds no thread while it waits.
type VerifyClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Asks a CAPTCHA service whether an answer is good.
struct Verifier {
    provider: ChallengeProvider,
    url: Uri,
    secret: Zeroizing<String>,
    timeout: Duration,
    client: VerifyClient,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("provider", &self.provider)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The largest `siteverify` answer read.
const MAX_VERDICT_BYTES: usize = 64 * 1024;

impl Verifier {
    fn new(
        provider: ChallengeProvider,
        url: Uri,
        secret: Zeroizing<String>,
        timeout: Duration,
    ) -> Result<Self, BadChallengeSetting> {
        let mut roots = rustls::RootCertStore::empty();
        if url.scheme_str() == Some("https") {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(bad(
                    "verify_url",
                    "no CA certificates on this system to verify the CAPTCHA service with; \
                     install ca-certificates",
                ));
            }
        }
        let crypto = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()
            .map_err(|err| bad("verify_url", format!("TLS: {err}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            provider,
            url,
            secret,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Verifies `answer`, given by `remote` on a page for `host`. A `hostname` in the verdict
    /// must be `host`: an answer solved on another site with the same site key does not count.
    async fn check(&self, answer: &str, remote: IpAddr, host: Option<&str>) -> Result<(), Refusal> {
        let verdict = match tokio::time::timeout(self.timeout, self.ask(answer, remote)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(why)) => {
                tracing::debug!(target: TARGET, provider = self.provider.as_str(), url = %self.url, error = %why, "CAPTCHA verification failed");
                return Err(Refusal::ProviderUnavailable);
            }
            Err(_) => {
                tracing::debug!(target: TARGET, provider = self.provider.as_str(), url = %self.url, "CAPTCHA verification timed out");
                return Err(Refusal::ProviderUnavailable);
            }
        };
        if !verdict.success {
            let codes = verdict.error_codes.join(",");
            tracing::debug!(target: TARGET, provider = self.provider.as_str(), error_codes = %codes, "CAPTCHA answer refused");
            let secret_refused = verdict.error_codes.iter().any(|code| {
                matches!(
                    code.as_str(),
                    "missing-input-secret" | "invalid-input-secret" | "sitekey-secret-mismatch"
                )
            });
            return Err(if secret_refused {
                Refusal::ProviderSecret
            } else {
                Refusal::ProviderRefused
            });
        }
        match (verdict.hostname.as_deref(), host) {
            (None, _) => Ok(()),
            (Some(solved), Some(host))
                if crate::host::normalize(solved).as_deref() == Some(host) =>
            {
                Ok(())
            }
            (Some(_), _) => Err(Refusal::ProviderHostname),
        }
    }

    /// Posts `secret`, `response` and `remoteip`, form-encoded, and reads the verdict. Errors
    /// name what failed, never the secret (which only the request's body holds).
    async fn ask(&self, answer: &str, remote: IpAddr) -> Result<Verdict, String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("secret", &self.secret)
            .append_pair("response", answer)
            .append_pair("remoteip", &remote.to_string())
            .finish();
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| err.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| error_chain(&err))?;
        if !response.status().is_success() {
            return Err(format!("the service answered {}", response.status()));
        }
        let bytes = Limited::new(response.into_body(), MAX_VERDICT_BYTES)
            .collect()
            .await
            .map_err(|err| format!("reading its answer: {err}"))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|err| format!("its answer is not siteverify JSON: {err}"))
    }
}

/// An error with its causes, `: `-separated.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// The challenges of one gateway: their key, settings, load and spent store. Cheap to clone;
/// see the module documentation.
#[derive(Clone)]
pub struct Challenges {
    shared: Arc<Shared>,
}

struct Shared {
    options: ChallengeOptions,
    /// The challenge path, normalised as requests' paths are compared with it.
    path: String,
    key: Zeroizing<[u8; 32]>,
    spent: Arc<dyn SpentChallenges>,
    verifier: Option<Verifier>,
    load: Load,
    script: String,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.shared;
        f.debug_struct("Challenges")
            .field("path", &shared.options.path)
            .field("provider", &shared.options.provider)
            .field("spent", &shared.spent)
            .field("verifier", &shared.verifier)
            .finish_non_exhaustive()
    }
}

/// The largest answer form read: a CAPTCHA's answer is a few kilobytes.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// One challenge page's wording and manner.
struct Page<'a> {
    status: StatusCode,
    message: &'a str,
    /// The kind in the page's footer and JSON, for a refusal or a demand.
    kind: Option<RejectionKind>,
    return_to: &'a str,
    /// Whether the work starts by itself; after a refusal it waits for a click, so a client
    /// that keeps failing (its address changes) does not loop.
    auto: bool,
}

/// What a client sent back.
struct Answer {
    token: String,
    nonce: String,
    return_to: String,
    /// The CAPTCHA widget's answer.
    response: String,
}

impl Challenges {
    /// The challenges for `options`, signing with `key` (the gateway derives it from its CSRF
    /// key), remembering answered ones in `spent`; `provider_secret` is the CAPTCHA's secret
    /// key, needed for a provider and unused for the proof of work.
    pub fn new(
        options: &ChallengeOptions,
        key: [u8; 32],
        spent: Arc<dyn SpentChallenges>,
        provider_secret: Option<String>,
    ) -> Result<Self, BadChallengeSetting> {
        let verify_url = options.check()?;
        let secret = provider_secret.map(|s| Zeroizing::new(s.trim().to_string()));
        let verifier = match (verify_url, secret) {
            (None, _) => None,
            (Some(url), Some(secret)) if !secret.is_empty() => Some(Verifier::new(
                options.provider,
                url,
                secret,
                options.verify_timeout,
            )?),
            (Some(_), _) => {
                return Err(bad(
                    "secret_file",
                    format!(
                        "{} needs its secret key, and none was given",
                        options.provider
                    ),
                ));
            }
        };
        // The script without its comments and indentation, as every page carries it.
        let script = include_str!("challenge.js")
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Self {
            shared: Arc::new(Shared {
                path: normalize_path(&options.path, false),
                options: options.clone(),
                key: Zeroizing::new(key),
                spent,
                verifier,
                load: Load::new(),
                script,
            }),
        })
    }

    /// The layer that answers the challenge path.
    pub fn layer(&self) -> ChallengeLayer {
        ChallengeLayer::new(self.clone())
    }

    /// The path challenges are served and answered at.
    pub fn path(&self) -> &str {
        &self.shared.options.path
    }

    /// The difficulty a challenge issued now gets (0 with a CAPTCHA provider).
    pub fn difficulty(&self) -> u8 {
        self.difficulty_at(now())
    }

    fn difficulty_at(&self, now: u64) -> u8 {
        let options = &self.shared.options;
        if options.provider != ChallengeProvider::Pow {
            return 0;
        }
        let issued = self.shared.load.count(now);
        difficulty_for(
            options.difficulty,
            options.max_difficulty,
            options.load_step,
            issued,
        )
    }

    /// Whether `headers` carry a valid, unexpired pass for `client` (its address, or its key:
    /// an IPv6 address is cut to its /64 here, as the pass was made). A pass made for another
    /// client does not count.
    pub fn has_pass(&self, headers: &HeaderMap, client: IpAddr) -> bool {
        let now = now();
        cookies(headers)
            .filter(|(name, _)| *name == PASS_COOKIE)
            .any(|(_, value)| pass_is_valid(&self.shared.key, value, client, now))
    }

    /// A fresh challenge for `req` from `client`, which brings the browser back to `return_to`
    /// once solved (a path on this site; anything else, such as `//other.example`, becomes
    /// `/`). A 403 page, or JSON when the client prefers it, and one `challenge_required` event
    /// (rule `challenge-required`, action `challenge`).
    pub fn demand<B>(&self, req: &Request<B>, client: IpAddr, return_to: &str) -> Response<Body> {
        Rejection::new(RejectionKind::ChallengeRequired, "challenge-required").record_as(
            req.uri(),
            req.extensions(),
            "challenge",
        );
        let page = Page {
            status: StatusCode::FORBIDDEN,
            message: self.invitation(RejectionKind::ChallengeRequired.message()),
            kind: Some(RejectionKind::ChallengeRequired),
            return_to: if is_local_path(return_to) {
                return_to
            } else {
                "/"
            },
            auto: true,
        };
        self.page(req.headers(), client, &page)
    }

    /// What a page asks of its visitor: the proof of work runs by itself; a CAPTCHA needs them.
    fn invitation(&self, pow: &'static str) -> &'static str {
        match self.shared.options.provider {
            ChallengeProvider::Pow => pow,
            _ => "Before this request can go on, please complete the check below.",
        }
    }

    /// Issues a challenge for `client` at `now`: its token and difficulty.
    fn issue(&self, client: IpAddr, now: u64) -> (String, u8) {
        let shared = &self.shared;
        let difficulty = self.difficulty_at(now);
        shared.load.record(now);
        let ticket = Ticket {
            provider: shared.options.provider.code(),
            difficulty,
            id: random(),
            expires: now + shared.options.ttl.as_secs(),
            client: client_tag(&shared.key, client),
        };
        (ticket.seal(&shared.key), difficulty)
    }

    /// A page (or JSON) with a fresh challenge for `client`.
    fn page(&self, request_headers: &HeaderMap, client: IpAddr, page: &Page<'_>) -> Response<Body> {
        let (token, difficulty) = self.issue(client, now());
        let (content_type, body, policy) = if prefers_json(request_headers) {
            let json = self.json(page, &token, difficulty);
            ("application/json", json, None)
        } else {
            let nonce = PageNonce::default();
            let html = self.html(page, &token, difficulty, nonce.get());
            let policy = self.policy(nonce.get());
            ("text/html; charset=utf-8", html, Some(policy))
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = page.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(policy) = policy {
            let value = HeaderValue::from_str(&policy).expect("a policy of checked parts");
            headers.insert(header::CONTENT_SECURITY_POLICY, value);
        }
        response
    }

    fn json(&self, page: &Page<'_>, token: &str, difficulty: u8) -> String {
        let options = &self.shared.options;
        let mut challenge = serde_json::json!({
            "token": token,
            "provider": options.provider.as_str(),
            "expires_in": options.ttl.as_secs(),
            "submit": options.path,
            "return": page.return_to,
        });
        match options.provider.response_field() {
            None => challenge["difficulty"] = difficulty.into(),
            Some(field) => {
                challenge["site_key"] = options.site_key.clone().into();
                challenge["response_field"] = field.into();
            }
        }
        let mut value = serde_json::json!({ "challenge": challenge });
        if let Some(kind) = page.kind {
            value["error"] = serde_json::json!({
                "status": page.status.as_u16(),
                "kind": kind.as_str(),
                "message": page.message,
            });
        }
        value.to_string()
    }

    /// The page's own policy: nothing but its inline script (by nonce), inline styles, a form
    /// to this site, and the CAPTCHA's origins when there is one.
    fn policy(&self, nonce: &str) -> String {
        let (_, _, sources) = self.shared.options.provider.widget();
        if sources.is_empty() {
            return format!(
                "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
                 form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
            );
        }
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}' {sources}; frame-src {sources}; \
             connect-src {sources}; style-src 'unsafe-inline' {sources}; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'"
        )
    }

    fn html(&self, page: &Page<'_>, token: &str, difficulty: u8, nonce: &str) -> String {
        let options = &self.shared.options;
        let attribute = |text: &str| html_escape::encode_double_quoted_attribute(text).to_string();
        let (path, back) = (attribute(&options.path), attribute(page.return_to));
        let message = html_escape::encode_text(page.message);
        let fields = format!(
            "<input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <input type=\"hidden\" name=\"return\" value=\"{back}\">"
        );
        let (script_src, widget, _) = options.provider.widget();
        let form = if widget.is_empty() {
            format!(
                "<form id=\"palisade-challenge\" method=\"post\" action=\"{path}\" \
                 data-difficulty=\"{difficulty}\" data-auto=\"{}\">{fields}\
                 <input type=\"hidden\" name=\"nonce\" value=\"\">\
                 <progress id=\"palisade-progress\" max=\"1000\" value=\"0\"></progress>\
                 <p id=\"palisade-status\" role=\"status\">This check needs JavaScript: turn it \
                 on for this site and reload the page.</p>\
                 <button type=\"button\" id=\"palisade-again\" hidden>Try again</button></form>",
                u8::from(page.auto)
            )
        } else {
            let site_key = attribute(options.site_key.as_deref().unwrap_or_default());
            format!(
                "<form id=\"palisade-challenge\" method=\"post\" action=\"{path}\">{fields}\
                 <div class=\"{widget}\" data-sitekey=\"{site_key}\" \
                 data-callback=\"palisadeSolved\"></div>\
                 <p id=\"palisade-status\" role=\"status\"></p>\
                 <button type=\"submit\">Continue</button></form>\
                 <script src=\"{script_src}\" async defer nonce=\"{nonce}\"></script>"
            )
        };
        let body = format!(
            "<p>{message}</p>{form}<script nonce=\"{nonce}\">{}</script>",
            self.shared.script
        );
        branded_page("A quick check", &body, page.kind)
    }

    /// Answers a request for the challenge path.
    async fn answer<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let client = client_of(req.extensions()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match *req.method() {
            Method::GET | Method::HEAD => {
                let query = req.uri().query().unwrap_or("");
                let back = form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "return")
                    .map(|(_, value)| value.into_owned())
                    .filter(|path| is_local_path(path))
                    .unwrap_or_else(|| "/".into());
                let page = Page {
                    status: StatusCode::OK,
                    message: self.invitation(
                        "Your browser is passing a quick check before it goes on. This takes a few seconds.",
                    ),
                    kind: None,
                    return_to: &back,
                    auto: true,
                };
                self.page(req.headers(), client, &page)
            }
            Method::POST => self.take(req, client).await,
            _ => {
                let mut response = crate::reject::error_page(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Challenges are fetched here with GET and answered with POST.",
                    None,
                    req.headers(),
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                response
            }
        }
    }

    /// Takes an answer: the pass, or a refusal with a new challenge.
    async fn take<B>(&self, req: Request<B>, client: IpAddr) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let host = crate::host::request_host(&req).ok().flatten();
        let (parts, body) = req.into_parts();
        let refuse = |refusal: Refusal, back: &str| {
            Rejection::new(RejectionKind::ChallengeRequired, refusal.rule()).record_as(
                &parts.uri,
                &parts.extensions,
                "reject",
            );
            let page = Page {
                status: StatusCode::FORBIDDEN,
                message: refusal.message(),
                kind: Some(RejectionKind::ChallengeRequired),
                return_to: back,
                auto: false,
            };
            self.page(&parts.headers, client, &page)
        };
        let cross_site = parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site {
            return refuse(Refusal::CrossSite, "/");
        }
        let bytes = match read_whole(body, MAX_FORM_BYTES).await {
            Ok(bytes) => bytes,
            Err(rejection) => {
                return rejection.respond(&parts.uri, &parts.headers, &parts.extensions);
            }
        };
        let Some(answer) = self.read_answer(&parts.headers, &bytes) else {
            return refuse(Refusal::FormInvalid, "/");
        };
        if !is_local_path(&answer.return_to) {
            return refuse(Refusal::ReturnInvalid, "/");
        }
        match self.verify(&answer, client, host.as_deref(), now()).await {
            Ok(()) => self.grant(&parts.headers, client, &answer.return_to),
            Err(refusal) => refuse(refusal, &answer.return_to),
        }
    }

    /// The fields of a form body; `None` when it is no form or lacks the token.
    fn read_answer(&self, headers: &HeaderMap, body: &[u8]) -> Option<Answer> {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media.as_deref() != Some("application/x-www-form-urlencoded") {
            return None;
        }
        let field = self.shared.options.provider.response_field();
        let mut answer = Answer {
            token: String::new(),
            nonce: String::new(),
            return_to: "/".into(),
            response: String::new(),
        };
        for (name, value) in form_urlencoded::parse(body) {
            match name.as_ref() {
                "token" => answer.token = value.into_owned(),
                "nonce" => answer.nonce = value.into_owned(),
                "return" => answer.return_to = value.into_owned(),
                name if Some(name) == field => answer.response = value.into_owned(),
                _ => {}
            }
        }
        (!answer.token.is_empty()).then_some(answer)
    }

    /// Checks an answer from `client` (to a page for `host`) at `now`, in order: the token, its
    /// client, the work or the CAPTCHA, and last, that it was not answered before.
    async fn verify(
        &self,
        answer: &Answer,
        client: IpAddr,
        host: Option<&str>,
        now: u64,
    ) -> Result<(), Refusal> {
        let shared = &self.shared;
        let ticket = self.judge(answer, client, now)?;
        if let Some(verifier) = &shared.verifier {
            verifier.check(&answer.response, client, host).await?;
        }
        match shared.spent.spend(ticket.id, ticket.expires_at()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::Replayed),
            Err(err) => {
                tracing::debug!(target: TARGET, error = %err, "the spent-challenge store failed");
                Err(Refusal::StoreUnavailable)
            }
        }
    }

    /// The checks that need no service: the token is this gateway's, for this provider,
    /// unexpired and for `client`, and the proof of work meets the difficulty inside it.
    fn judge(&self, answer: &Answer, client: IpAddr, now: u64) -> Result<Ticket, Refusal> {
        let shared = &self.shared;
        let options = &shared.options;
        let ticket = Ticket::open(&shared.key, &answer.token)?;
        if ticket.provider != options.provider.code() {
            return Err(Refusal::Invalid);
        }
        if ticket.expires <= now {
            return Err(Refusal::Expired);
        }
        if ticket.client != client_tag(&shared.key, client) {
            return Err(Refusal::WrongClient);
        }
        if options.provider == ChallengeProvider::Pow {
            // Below the floor only if the settings changed since it was issued.
            if ticket.difficulty < options.difficulty {
                return Err(Refusal::Invalid);
            }
            let work = work_of(&answer.token, &answer.nonce).unwrap_or(0);
            if work < u32::from(ticket.difficulty) {
                return Err(Refusal::WorkInvalid);
            }
        }
        Ok(ticket)
    }

    /// The pass for `client`: a 303 to `return_to` with the cookie, or 200 and JSON.
    fn grant(
        &self,
        request_headers: &HeaderMap,
        client: IpAddr,
        return_to: &str,
    ) -> Response<Body> {
        let lifetime = self.shared.options.pass_ttl.as_secs();
        let value = mint_pass(&self.shared.key, client, now() + lifetime);
        let cookie = format!(
            "{PASS_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={lifetime}"
        );
        let mut response = if prefers_json(request_headers) {
            let body = serde_json::json!({ "pass": "ok", "return": return_to });
            let mut response = Response::new(Body::from(body.to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        } else {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SEE_OTHER;
            let location = HeaderValue::from_str(return_to).expect("a checked path is ASCII");
            response.headers_mut().insert(header::LOCATION, location);
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("base64url and digits"),
        );
        response
    }
}

/// The layer: answers the challenge path, passes everything else on. See the module
/// documentation.
#[derive(Debug, Clone)]
pub struct ChallengeLayer {
    challenges: Challenges,
}

impl ChallengeLayer {
    /// The layer for `challenges`.
    pub fn new(challenges: Challenges) -> Self {
        Self { challenges }
    }
}

impl<S> Layer<S> for ChallengeLayer {
    type Service = Challenge<S>;

    fn layer(&self, inner: S) -> Challenge<S> {
        Challenge {
            inner,
            challenges: self.challenges.clone(),
        }
    }
}

/// The service of [`ChallengeLayer`].
#[derive(Debug, Clone)]
pub struct Challenge<S> {
    inner: S,
    challenges: Challenges,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Challenge<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
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
        if normalize_path(req.uri().path(), false) != self.challenges.shared.path {
            let future = self.inner.call(req);
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        }
        let challenges = self.challenges.clone();
        Box::pin(async move { Ok(challenges.answer(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: u64 = 1_700_000_000;

    fn challenges(options: ChallengeOptions) -> Challenges {
        let spent = Arc::new(MemorySpent::new(MemorySpent::DEFAULT_CAPACITY));
        Challenges::new(&options, KEY, spent, None).unwrap()
    }

    fn pow(difficulty: u8) -> Challenges {
        challenges(ChallengeOptions {
            difficulty,
            max_difficulty: difficulty,
            ..Default::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The first nonce whose work meets `difficulty` for `token`.
    fn solve(token: &str, difficulty: u8) -> String {
        (0u64..)
            .map(|n| n.to_string())
            .find(|nonce| work_of(token, nonce).unwrap() >= u32::from(difficulty))
            .unwrap()
    }

    fn answer(token: &str, nonce: &str) -> Answer {
        Answer {
            token: token.into(),
            nonce: nonce.into(),
            return_to: "/".into(),
            response: String::new(),
        }
    }

    #[test]
    fn a_token_opens_to_what_was_sealed() {
        let ticket = Ticket {
            provider: 0,
            difficulty: 16,
            id: random(),
            expires: NOW + 300,
            client: client_tag(&KEY, ip("192.0.2.7")),
        };
        let token = ticket.seal(&KEY);
        assert_eq!(token.len(), 90);
        assert_eq!(Ticket::open(&KEY, &token), Ok(ticket));
        assert_eq!(Ticket::open(&[8; 32], &token), Err(Refusal::Invalid));
    }

    #[test]
    fn a_tampered_token_is_invalid_wherever_it_was_changed() {
        let challenges = pow(4);
        let client = ip("192.0.2.7");
        let (token, _) = challenges.issue(client, NOW);
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for index in 0..raw.len() {
            let mut changed = raw.clone();
            changed[index] ^= 0x01;
            let changed = URL_SAFE_NO_PAD.encode(changed);
            let nonce = solve(&changed, 4);
            assert_eq!(
                challenges
                    .judge(&answer(&changed, &nonce), client, NOW)
                    .map(|_| ()),
                Err(Refusal::Invalid),
                "byte {index}"
            );
        }
        for broken in [&token[..60], "", "not base64!", &format!("{token}AA")] {
            assert_eq!(
                Ticket::open(&KEY, broken).map(|_| ()),
                Err(Refusal::Invalid)
            );
        }
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let challenges = pow(4);
        let client = ip("192.0.2.7");
        let (token, _) = challenges.issue(client, NOW);
        let nonce = solve(&token, 4);
        let solution = answer(&token, &nonce);
        assert!(challenges.judge(&solution, client, NOW + 299).is_ok());
        assert_eq!(
            challenges.judge(&solution, client, NOW + 300).map(|_| ()),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_token_is_good_for_its_client_and_its_ipv6_prefix_only() {
        let challenges = pow(4);
        let (token, _) = challenges.issue(ip("2001:db8:1:2::1"), NOW);
        let solution = answer(&token, &solve(&token, 4));
        assert!(
            challenges
                .judge(&solution, ip("2001:db8:1:2:ffff::9"), NOW)
                .is_ok()
        );
        for other in ["2001:db8:1:3::1", "192.0.2.7", "::ffff:192.0.2.7"] {
            assert_eq!(
                challenges.judge(&solution, ip(other), NOW).map(|_| ()),
                Err(Refusal::WrongClient),
                "{other}"
            );
        }
    }

    #[test]
    fn the_difficulty_inside_the_token_cannot_be_lowered() {
        let challenges = pow(12);
        let client = ip("192.0.2.7");
        let (token, difficulty) = challenges.issue(client, NOW);
        assert_eq!(difficulty, 12);
        // A nonce that is enough for 1 bit but not for 12.
        let weak = (0u64..)
            .map(|n| n.to_string())
            .find(|n| (1..12).contains(&work_of(&token, n).unwrap()))
            .unwrap();
        assert_eq!(
            challenges
                .judge(&answer(&token, &weak), client, NOW)
                .map(|_| ()),
            Err(Refusal::WorkInvalid)
        );
        // Writing difficulty 1 into the token breaks its MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[2] = 1;
        let lowered = URL_SAFE_NO_PAD.encode(raw);
        let cheap = solve(&lowered, 1);
        assert_eq!(
            challenges
                .judge(&answer(&lowered, &cheap), client, NOW)
                .map(|_| ()),
            Err(Refusal::Invalid)
        );
        assert!(
            challenges
                .judge(&answer(&token, &solve(&token, 12)), client, NOW)
                .is_ok()
        );
        // Nonces are decimal digits only.
        assert_eq!(work_of(&token, ""), None);
        assert_eq!(work_of(&token, "12a"), None);
        assert_eq!(work_of(&token, &"9".repeat(21)), None);
    }

    #[test]
    fn a_token_of_one_provider_is_no_good_for_another() {
        let ticket = Ticket {
            provider: ChallengeProvider::Turnstile.code(),
            difficulty: 16,
            id: random(),
            expires: NOW + 300,
            client: client_tag(&KEY, ip("192.0.2.7")),
        };
        let token = ticket.seal(&KEY);
        assert_eq!(
            pow(1)
                .judge(&answer(&token, "0"), ip("192.0.2.7"), NOW)
                .map(|_| ()),
            Err(Refusal::Invalid)
        );
    }

    #[tokio::test]
    async fn a_replayed_solution_is_refused() {
        let challenges = pow(4);
        let client = ip("192.0.2.7");
        let (token, _) = challenges.issue(client, NOW);
        let solution = answer(&token, &solve(&token, 4));
        assert_eq!(
            challenges.verify(&solution, client, None, NOW).await,
            Ok(())
        );
        assert_eq!(
            challenges.verify(&solution, client, None, NOW).await,
            Err(Refusal::Replayed)
        );
        // Another nonce that also meets the difficulty is the same challenge, spent.
        let second = (0u64..)
            .map(|n| n.to_string())
            .filter(|n| work_of(&token, n).unwrap() >= 4)
            .nth(1)
            .unwrap();
        assert_eq!(
            challenges
                .verify(&answer(&token, &second), client, None, NOW)
                .await,
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn the_memory_store_spends_once_and_refuses_when_full() {
        let store = MemorySpent::new(2);
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(store.spend_at([1; 16], at(NOW + 10), at(NOW)), Ok(true));
        assert_eq!(store.spend_at([1; 16], at(NOW + 10), at(NOW)), Ok(false));
        assert_eq!(store.spend_at([2; 16], at(NOW + 20), at(NOW)), Ok(true));
        // Full of unexpired ids: refused, not forgotten.
        let full = store.spend_at([3; 16], at(NOW + 30), at(NOW)).unwrap_err();
        assert!(full.0.contains("fill the memory store"), "{full}");
        assert_eq!(store.spend_at([1; 16], at(NOW + 10), at(NOW)), Ok(false));
        // Once the first has expired, it makes room.
        assert_eq!(
            store.spend_at([3; 16], at(NOW + 30), at(NOW + 10)),
            Ok(true)
        );
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.spend_at([2; 16], at(NOW + 20), at(NOW + 10)),
            Ok(false)
        );
    }

    #[test]
    fn expired_ids_are_swept_as_spends_go_on() {
        let store = MemorySpent::new(MemorySpent::DEFAULT_CAPACITY);
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        for n in 0..5000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            let now = NOW + u64::from(n);
            assert_eq!(store.spend_at(id, at(now + 10), at(now)), Ok(true));
        }
        assert!(store.len() < 1100, "{} ids kept", store.len());
    }

    #[test]
    fn the_difficulty_rises_with_load_and_is_capped() {
        assert_eq!(difficulty_for(16, 20, 100, 0), 16);
        assert_eq!(difficulty_for(16, 20, 100, 99), 16);
        assert_eq!(difficulty_for(16, 20, 100, 100), 17);
        assert_eq!(difficulty_for(16, 20, 100, 350), 19);
        assert_eq!(difficulty_for(16, 20, 100, 10_000_000), 20);
        assert_eq!(difficulty_for(16, 16, 100, 10_000), 16);

        let challenges = challenges(ChallengeOptions {
            difficulty: 8,
            max_difficulty: 10,
            load_step: 10,
            ..Default::default()
        });
        let client = ip("192.0.2.7");
        let issued: Vec<u8> = (0..40)
            .map(|n| challenges.issue(client, NOW + n / 4).1)
            .collect();
        assert_eq!(issued[..10], [8; 10]);
        assert_eq!(issued[10..20], [9; 10]);
        assert_eq!(issued[20..], [10; 20]);
        // The 40 were issued within ten seconds: they count until a minute after each.
        assert_eq!(challenges.shared.load.count(NOW + 59), 40);
        assert_eq!(challenges.shared.load.count(NOW + 60), 36);
        assert_eq!(challenges.difficulty_at(NOW + 65), 9);
        assert_eq!(challenges.difficulty_at(NOW + 70), 8);
    }

    #[test]
    fn the_load_counter_counts_a_minute_without_losing_concurrent_issues() {
        let load = Arc::new(Load::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let load = load.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| load.record(NOW)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        (0..5).for_each(|_| load.record(NOW + 1));
        assert_eq!(load.count(NOW + 1), 40_005);
        assert_eq!(load.count(NOW + 59), 40_005);
        assert_eq!(load.count(NOW + 60), 5);
        // The slot of NOW, reused a minute later, starts again.
        load.record(NOW + 60);
        assert_eq!(load.count(NOW + 60), 6);
    }

    #[test]
    fn return_paths_stay_on_this_site() {
        for good in ["/", "/login", "/a/b/", "/a/b?next=//x#top", "/a.b/c..d"] {
            assert!(is_local_path(good), "{good}");
        }
        for evil in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "\\\\evil",
            "/.//evil.example",
            "/%2E%2e//evil.example",
            "/a//b",
            "/a/../b",
            "/\t/evil.example",
            "/ /evil",
            "/\n/evil",
            "evil.example",
            "javascript:alert(1)",
            "",
            "/é",
        ] {
            assert!(!is_local_path(evil), "{evil:?}");
        }
        assert!(!is_local_path(&format!("/{}", "a".repeat(MAX_RETURN))));
    }

    #[test]
    fn a_pass_is_good_for_its_client_until_it_expires() {
        let client = ip("2001:db8:1:2::1");
        let value = mint_pass(&KEY, client, NOW + 1800);
        assert!(pass_is_valid(&KEY, &value, client, NOW));
        assert!(pass_is_valid(&KEY, &value, ip("2001:db8:1:2::99"), NOW));
        assert!(!pass_is_valid(&KEY, &value, ip("2001:db8:1:3::1"), NOW));
        assert!(!pass_is_valid(&KEY, &value, client, NOW + 1800));
        assert!(!pass_is_valid(&[8; 32], &value, client, NOW));
        let mut raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        raw[8] ^= 1;
        assert!(!pass_is_valid(
            &KEY,
            &URL_SAFE_NO_PAD.encode(raw),
            client,
            NOW
        ));

        let challenges = pow(4);
        let cookie = mint_pass(&KEY, client, now() + 60);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {PASS_COOKIE}={cookie}")).unwrap(),
        );
        assert!(challenges.has_pass(&headers, client));
        assert!(!challenges.has_pass(&headers, ip("192.0.2.7")));
        assert!(!challenges.has_pass(&HeaderMap::new(), client));
    }

    #[test]
    fn leading_zero_bits_are_counted_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0, 0, 0x10, 0xff]), 19);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn bad_settings_say_what_to_write_instead() {
        let err = |options: ChallengeOptions| options.validate().unwrap_err();
        assert!(ChallengeOptions::default().validate().is_ok());
        let e = err(ChallengeOptions {
            difficulty: 0,
            ..Default::default()
        });
        assert_eq!(e.setting, "difficulty");
        let e = err(ChallengeOptions {
            max_difficulty: 12,
            ..Default::default()
        });
        assert_eq!(e.setting, "max_difficulty");
        assert!(e.message.contains("at least difficulty (16)"), "{e}");
        let e = err(ChallengeOptions {
            load_step: 0,
            ..Default::default()
        });
        assert!(e.message.contains("max_difficulty = difficulty"), "{e}");
        let e = err(ChallengeOptions {
            path: "challenge".into(),
            ..Default::default()
        });
        assert_eq!(e.setting, "path");
        let e = err(ChallengeOptions {
            site_key: Some("abc".into()),
            ..Default::default()
        });
        assert!(e.message.contains("provider = \"turnstile\""), "{e}");
        let turnstile = ChallengeOptions {
            provider: ChallengeProvider::Turnstile,
            ..Default::default()
        };
        assert_eq!(err(turnstile.clone()).setting, "site_key");
        let with_key = ChallengeOptions {
            site_key: Some("0x4AAAAAAAB".into()),
            ..turnstile
        };
        let e = err(with_key.clone());
        assert_eq!(e.setting, "secret_file");
        assert!(
            e.message
                .contains("secret_file = \"/etc/palisade/turnstile.secret\"")
        );
        let with_file = ChallengeOptions {
            secret_file: Some("/etc/palisade/turnstile.secret".into()),
            ..with_key
        };
        assert!(with_file.validate().is_ok());
        for url in [
            "http://verify.example/siteverify",
            "ftp://127.0.0.1/",
            "nonsense",
        ] {
            let e = err(ChallengeOptions {
                verify_url: Some(url.into()),
                ..with_file.clone()
            });
            assert_eq!(e.setting, "verify_url", "{url}");
        }
        for url in [
            "http://127.0.0.1:9/v",
            "http://[::1]:9/v",
            "http://localhost/v",
        ] {
            let options = ChallengeOptions {
                verify_url: Some(url.into()),
                ..with_file.clone()
            };
            assert!(options.validate().is_ok(), "{url}");
        }
        // Without the secret itself, no challenges.
        let spent = Arc::new(MemorySpent::new(1));
        let e = Challenges::new(&with_file, KEY, spent, Some("  ".into())).unwrap_err();
        assert_eq!(e.setting, "secret_file");
    }

    #[test]
    fn options_read_from_toml_with_durations() {
        let options: ChallengeOptions =
            toml::from_str("difficulty = 18\nttl = \"2m\"\npass_ttl = \"1h\"\n").unwrap();
        assert_eq!(options.difficulty, 18);
        assert_eq!(options.ttl, Duration::from_secs(120));
        assert_eq!(options.pass_ttl, Duration::from_secs(3600));
        let err = toml::from_str::<ChallengeOptions>("dificulty = 18").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = toml::from_str::<ChallengeOptions>("provider = \"recaptcha\"").unwrap_err();
        assert!(err.to_string().contains("turnstile"), "{err}");
    }
}
