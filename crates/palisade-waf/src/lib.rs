//! Attack detection: the [`RuleEngine`] trait, request normalisation, the OWASP Core Rule Set
//! through libmodsecurity (feature `modsecurity`), and [`WafLayer`], which blocks or logs.
//!
//! The layer knows only the trait: it hands an engine a [`RequestView`] (the request as
//! received, then its normalised form) and gets a [`Verdict`]. Another engine can replace
//! libmodsecurity without touching the layer; the CRS regression replayer in the gateway's
//! tests is the yardstick such an engine must meet. [docs/gateway.md](../../docs/gateway.md)
//! explains what is inspected and why.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;

pub mod layer;
#[cfg(libmodsecurity)]
pub mod modsecurity;
pub mod normalize;
pub mod options;

pub use layer::{Waf, WafLayer};
pub use options::WafOptions;

/// One request as an engine sees it.
#[derive(Debug, Clone)]
pub struct RequestView {
    /// The method, as received.
    pub method: String,
    /// The request target (path and query), as received or normalised.
    pub uri: String,
    /// `1.0`, `1.1` or `2.0`.
    pub version: &'static str,
    /// Header names and values, in order, repeated names kept.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The whole body (empty for a request without one).
    pub body: Bytes,
    /// The client (the resolved address, and the TCP peer's port).
    pub client: SocketAddr,
    /// The gateway's own listening address.
    pub server: SocketAddr,
}

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The rule's id, like `942100`.
    pub id: u32,
    /// The rule's message, like `SQL Injection Attack Detected via libinjection`.
    pub message: String,
}

/// What an engine decided about one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the rules ask for the request to be refused (in detect-only mode: would ask).
    pub block: bool,
    /// Every rule that matched, in the order they ran.
    pub matches: Vec<Match>,
    /// The inbound anomaly score, when the engine scores.
    pub anomaly_score: Option<u32>,
}

impl Verdict {
    /// The matched rule ids, space-separated (`942100 949110`): the events' `rule`.
    pub fn rule_ids(&self) -> String {
        let ids: Vec<String> = self.matches.iter().map(|m| m.id.to_string()).collect();
        ids.join(" ")
    }
}

/// A rule engine: given one request, decide. Implementations are shared between threads and
/// called off the async executor (the layer uses `spawn_blocking`), so they may be slow.
pub trait RuleEngine: Send + Sync + 'static {
    /// Inspects one request.
    fn inspect(&self, request: &RequestView) -> Result<Verdict, EngineError>;

    /// A short name for logs (`libmodsecurity 3.0.9 + CRS`).
    fn name(&self) -> String;
}

/// A failure of the engine itself on one request (not a verdict).
#[derive(Debug, thiserror::Error)]
#[error("the rule engine failed on a request: {0}")]
pub struct EngineError(pub String);

/// What can go wrong setting the WAF up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range; `setting` is its name under `[gateway.waf]`.
    #[error("waf.{setting}: {message}")]
    BadSetting {
        /// The setting, like `paranoia_level`.
        setting: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The config asks for the WAF but this build has no engine.
    #[error(
        "[gateway.waf] is enabled, but this palisade was built without the WAF; rebuild it \
         with `--features modsecurity` (needs libmodsecurity-dev and modsecurity-crs), or set \
         waf.enabled = false"
    )]
    NotBuiltIn,
    /// The rules directory lacks what the CRS needs.
    #[error(
        "waf.rules_dir: {0} holds no CRS rules (REQUEST-*.conf); install them with \
         `apt-get install modsecurity-crs`, or point rules_dir at a CRS 3 `rules` folder"
    )]
    NoRules(String),
    /// libmodsecurity refused the rules.
    #[error("the WAF rules did not load: {0}")]
    RulesRejected(String),
}

impl Error {
    /// The setting under `[gateway.waf]` the error is about.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::BadSetting { setting, .. } => setting,
            Self::NotBuiltIn => "enabled",
            Self::NoRules(_) | Self::RulesRejected(_) => "rules_dir",
        }
    }

    /// What is wrong and what to do, without the setting's name.
    pub fn message(&self) -> String {
        match self {
            Self::BadSetting { message, .. } => message.clone(),
            other => {
                let text = other.to_string();
                let prefix = format!("waf.{}: ", other.setting());
                text.strip_prefix(&prefix)
                    .map(str::to_string)
                    .unwrap_or(text)
            }
        }
    }
}

/// Whether this build has a rule engine: the `modsecurity` feature, with libmodsecurity found
/// when it was built.
pub const BUILT_IN: bool = cfg!(libmodsecurity);

/// The engine the options ask for, for bodies of at most `body_limit` bytes: none when the WAF
/// is off, libmodsecurity with the CRS when it is on and built in, an error when it is on and
/// not built in.
pub fn engine(options: &WafOptions, body_limit: u64) -> Result<Option<Arc<dyn RuleEngine>>, Error> {
    if !options.enabled {
        return Ok(None);
    }
    options.validate()?;
    #[cfg(libmodsecurity)]
    {
        let engine = modsecurity::ModSecurityEngine::with_body_limit(options, body_limit)?;
        Ok(Some(Arc::new(engine)))
    }
    #[cfg(not(libmodsecurity))]
    {
        let _ = body_limit;
        Err(Error::NotBuiltIn)
    }
}
