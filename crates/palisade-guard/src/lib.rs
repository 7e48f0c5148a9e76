//! Tower layers that harden a web application's HTTP traffic, usable alone or composed by
//! `palisade-gateway`.
//!
//! Each protection is a `Layer` + `Service` pair in its own module. Layers take typed options
//! and never read the environment or files. A layer that refuses a request answers with a
//! response built by [`reject`] and emits one security event; see `docs/gateway.md`.

pub mod attempts;
pub mod body;
pub mod brute_force;
pub mod challenge;
pub mod clamav;
pub mod client_ip;
pub mod csp;
pub mod csp_report;
pub mod csrf;
pub mod headers;
pub mod host;
mod inspect;
pub mod ratelimit;
pub mod redirect;
pub mod redis_state;
pub mod reject;
mod rewrite;
pub mod rich_text;
mod route;
pub mod sanitize;
pub mod security_txt;
pub mod settings;
pub mod upload;
pub mod validate;

pub use attempts::{AttemptStore, SqliteAttempts, StateError, Unlock};
pub use body::{Body, BoxError};
pub use brute_force::{
    BruteForceLayer, BruteForceOptions, ChallengeGate, LoginEndpoint, WhenStateFails,
};
pub use challenge::{
    BadChallengeSetting, ChallengeLayer, ChallengeOptions, ChallengeProvider, Challenges,
    MemorySpent, SpentChallenges,
};
pub use clamav::{ClamavOptions, Clamd, WhenUnavailable};
pub use client_ip::{ClientAddr, ClientIpLayer, ClientIpOptions, Peer};
pub use csp::{CspLayer, CspMode, CspOptions, CspPolicy, DirectiveValue, PageNonce};
pub use csp_report::{CspReportLayer, CspReportOptions};
pub use csrf::{CsrfKey, CsrfLayer, CsrfMode, CsrfOptions, CsrfRouteOptions};
pub use headers::{CookieOptions, SameSite, SecurityHeadersLayer, SecurityHeadersOptions};
pub use ratelimit::{RateLimitLayer, RateLimitOptions};
pub use redirect::{HttpsRedirectLayer, HttpsRedirectOptions};
pub use redis_state::RedisState;
pub use reject::{Rejection, RejectionKind};
pub use rich_text::{RichTextLayer, RichTextOptions};
pub use sanitize::{SanitizeOptions, Sanitizer};
pub use security_txt::{SecurityTxtLayer, SecurityTxtOptions};
pub use upload::{UploadLayer, UploadOptions};
pub use validate::{ValidateLayer, ValidationOptions};

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    let end = (0..=text.len().min(max))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..end]
}

/// A boxed future, as the services of this crate return.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
