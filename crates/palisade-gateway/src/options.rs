//! The gateway's typed options, with safe defaults; the binary reads them from `[gateway]`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use http::Uri;
use palisade_guard::{
    BruteForceOptions, ChallengeOptions, ClamavOptions, ClientIpOptions, CspOptions,
    CspReportOptions, CsrfOptions, CsrfRouteOptions, RateLimitOptions, RichTextOptions,
    SecurityHeadersOptions, SecurityTxtOptions, UploadOptions, ValidationOptions, WhenStateFails,
};
use palisade_waf::WafOptions;
use serde::{Deserialize, Deserializer};

use crate::Error;

/// Everything the gateway needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayOptions {
    /// The HTTPS listener.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The plain-HTTP listener, which only redirects to HTTPS (none by default).
    #[serde(default, deserialize_with = "optional_socket_addr")]
    pub http_listen: Option<SocketAddr>,
    /// The application: `http://HOST:PORT` or `https://HOST:PORT` URLs, used round robin.
    pub upstreams: Vec<String>,
    /// The HTTP version spoken to the upstreams.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// How `https://` upstreams are verified.
    #[serde(default)]
    pub upstream_tls: UpstreamTlsOptions,
    /// Host names the gateway answers for and redirects; empty accepts any `Host` on HTTPS and
    /// redirects none.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// What `Host` the upstream sees.
    #[serde(default)]
    pub host_header: HostHeader,
    /// Certificates and protocol versions.
    #[serde(default)]
    pub tls: TlsOptions,
    /// Security headers and cookie hardening.
    #[serde(default)]
    pub headers: SecurityHeadersOptions,
    /// The Content-Security-Policy and its per-page nonces.
    #[serde(default)]
    pub csp: CspOptions,
    /// Header and policy settings of their own for some paths.
    #[serde(default)]
    pub routes: Vec<RouteOptions>,
    /// `/.well-known/security.txt`, when given.
    pub security_txt: Option<SecurityTxtOptions>,
    /// A collector for CSP violation reports, when given; the gateway's policies then name it
    /// in `report-uri`.
    pub csp_report: Option<CspReportOptions>,
    /// CSRF tokens in pages and their checks on state-changing requests.
    #[serde(default)]
    pub csrf: CsrfOptions,
    /// Rate limits per client address, route group or globally; none by default.
    #[serde(default)]
    pub rate_limit: RateLimitOptions,
    /// Delays, challenges and lockouts on login endpoints; none by default.
    #[serde(default)]
    pub brute_force: BruteForceOptions,
    /// Where login counters, lockouts and spent challenges are kept.
    #[serde(default)]
    pub state: StateOptions,
    /// Proof-of-work challenges (or a CAPTCHA) that other protections can demand, served at
    /// their own path.
    #[serde(default)]
    pub challenge: ChallengeOptions,
    /// Trusted proxies in front of the gateway.
    #[serde(default)]
    pub client_ip: ClientIpOptions,
    /// Size and count limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How upstreams are probed.
    #[serde(default)]
    pub health_check: HealthCheckOptions,
    /// The ClamAV daemon that routes with `upload` rules scan files with, when given.
    pub clamav: Option<ClamavOptions>,
    /// Attack detection with the OWASP CRS (off by default).
    #[serde(default)]
    pub waf: WafOptions,
}

/// The header settings of the paths under `prefix`; every header setting not given takes its
/// safe default (not the value in `[gateway.headers]`). Without `csp`, the paths get
/// `[gateway.csp]`; with it, that section's settings, each one not given at its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    /// `/embed` covers `/embed` and `/embed/...`; the longest matching prefix wins.
    pub prefix: String,
    /// The headers for these paths.
    #[serde(default)]
    pub headers: SecurityHeadersOptions,
    /// The policy for these paths.
    pub csp: Option<CspOptions>,
    /// The CSRF mode of these paths (`off` for signed webhooks) and whether they take JSON
    /// only.
    #[serde(default)]
    pub csrf: CsrfRouteOptions,
    /// What `multipart/form-data` uploads to these paths may hold; without it, uploads are
    /// not checked.
    pub upload: Option<UploadOptions>,
    /// Form fields and JSON pointers whose HTML is sanitised on the way in; without it, none.
    pub rich_text: Option<RichTextOptions>,
    /// Input validation for these paths; none by default.
    pub validate: Option<ValidationOptions>,
}

impl RouteOptions {
    /// A route for the paths under `prefix` with every setting at its default.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            headers: SecurityHeadersOptions::default(),
            csp: None,
            csrf: CsrfRouteOptions::default(),
            validate: None,
            upload: None,
            rich_text: None,
        }
    }
}

/// Where the gateway keeps the state that outlives a request: login failure counts, lockouts
/// and spent challenges.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateOptions {
    /// The SQLite file; `palisade gateway` makes it `<state_dir>/gateway.sqlite`. Without a
    /// file or Redis, the state lives in memory for this run.
    pub path: Option<PathBuf>,
    /// A Redis server shared by several gateway instances, like `redis://127.0.0.1:6379/0`;
    /// it then holds the rate limits too. Its password, if the URL has one, is never logged.
    pub redis: Option<String>,
    /// What happens to requests that need the state while it cannot be reached.
    #[serde(default)]
    pub on_failure: WhenStateFails,
}

/// The JSON Schema in a route's `json_schema_file`, if it names one.
pub fn schema_file(options: &ValidationOptions) -> Result<Option<serde_json::Value>, String> {
    let Some(path) = &options.json_schema_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| format!("{} is not JSON: {err}", path.display()))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}

/// The HTTP version spoken to the upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 to `http://` upstreams; to `https://` ones whatever ALPN agrees, HTTP/2 first.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: with prior knowledge (h2c) to `http://` upstreams, by ALPN to `https://`
    /// ones. Upgrades (WebSockets) cannot pass.
    Http2,
}

/// How `https://` upstreams are verified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsOptions {
    /// A PEM file of the CA certificates to trust instead of the system's (a private CA, or
    /// the upstream's own self-signed certificate).
    pub ca: Option<PathBuf>,
}

/// What `Host` the upstream sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostHeader {
    /// The client's (the original `Host` also goes in `X-Forwarded-Host`).
    #[default]
    Preserve,
    /// The upstream's own `HOST:PORT`.
    Upstream,
}

/// Which TLS versions and suites are offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// Mozilla's "intermediate": TLS 1.2 and 1.3, ECDHE with AEAD suites only.
    #[default]
    Intermediate,
    /// Mozilla's "modern": TLS 1.3 only.
    Modern,
}

/// Certificates and protocol versions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsOptions {
    /// Versions and suites.
    pub profile: TlsProfile,
    /// Certificate chains with their keys; the one whose names match the client's SNI is used,
    /// the first when none does. Reread on [`crate::CertReloader::reload`].
    pub certificates: Vec<CertificateFiles>,
    /// Reread the certificates when one of their files changes (checked every
    /// `watch_interval`).
    pub watch: bool,
    /// How often the files are checked for changes.
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            profile: TlsProfile::default(),
            certificates: Vec::new(),
            watch: true,
            watch_interval: Duration::from_secs(5),
        }
    }
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A DER OCSP response for the certificate, stapled to every handshake (renew it before it
    /// expires; it is reread with the certificate).
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
}

/// Size and count limits; each refusal is a response (413, 414, 431, 400).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request line and headers together, in bytes (at least 8192).
    #[serde(deserialize_with = "byte_count")]
    pub max_header_bytes: usize,
    /// Headers per request.
    pub max_headers: usize,
    /// Request target, in bytes.
    #[serde(deserialize_with = "byte_count")]
    pub max_uri_bytes: usize,
    /// Request body, in bytes.
    #[serde(deserialize_with = "byte_count")]
    pub max_body_bytes: u64,
    /// Open client connections; further ones wait in the listen queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 1024,
        }
    }
}

/// Timeouts, written like `10s`, `500ms` or `2m`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TLS handshake and request headers (slowloris).
    #[serde(deserialize_with = "duration")]
    pub header_read: Duration,
    /// The longest wait for the next bytes of a request body (408 when it passes).
    #[serde(deserialize_with = "duration")]
    pub body_read: Duration,
    /// Connecting to an upstream.
    #[serde(deserialize_with = "duration")]
    pub upstream_connect: Duration,
    /// An upstream's response headers.
    #[serde(deserialize_with = "duration")]
    pub upstream_response: Duration,
    /// A client connection with no bytes read or written.
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// How upstreams are probed: a TCP connect, or a `GET` of `path` answered below 500.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckOptions {
    /// Time between probes.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// One probe's limit.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// A path to `GET` instead of a plain connect.
    pub path: Option<String>,
}

impl Default for HealthCheckOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            path: None,
        }
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an IP address and port; write it like 0.0.0.0:443, \
             127.0.0.1:8443 or [::]:443"
        ))
    })
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(deserializer).map(Some)
}

pub use palisade_guard::settings::parse_duration;
use palisade_guard::settings::{byte_count, duration};

impl GatewayOptions {
    /// Options for one upstream with every default.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            listen: default_listen(),
            http_listen: None,
            upstreams: vec![upstream.into()],
            upstream_protocol: UpstreamProtocol::default(),
            upstream_tls: UpstreamTlsOptions::default(),
            hosts: Vec::new(),
            host_header: HostHeader::default(),
            tls: TlsOptions::default(),
            headers: SecurityHeadersOptions::default(),
            csp: CspOptions::default(),
            routes: Vec::new(),
            security_txt: None,
            csp_report: None,
            csrf: CsrfOptions::default(),
            rate_limit: RateLimitOptions::default(),
            brute_force: BruteForceOptions::default(),
            state: StateOptions::default(),
            challenge: ChallengeOptions::default(),
            client_ip: ClientIpOptions::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            health_check: HealthCheckOptions::default(),
            clamav: None,
            waf: WafOptions::default(),
        }
    }

    /// Checks what the types cannot; the error names the setting (`headers.hsts_max_age`).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &str, message: String| Error::BadSetting {
            setting: setting.to_string(),
            message,
        };
        if self.upstreams.is_empty() {
            return Err(bad(
                "upstreams",
                "no upstream; add the application's address, like upstreams = [\"http://127.0.0.1:3000\"]".into(),
            ));
        }
        for upstream in &self.upstreams {
            upstream_uri(upstream).map_err(|message| bad("upstreams", message))?;
        }
        if let Some(host) = self
            .hosts
            .iter()
            .find(|h| palisade_guard::host::normalize(h).is_none())
        {
            return Err(bad("hosts", format!("`{host}` is not a host name")));
        }
        self.headers
            .validate()
            .map_err(|err| bad(&format!("headers.{}", err.setting), err.message))?;
        self.csp
            .validate()
            .map_err(|err| bad(&format!("csp.{}", err.setting), err.message))?;
        for (index, route) in self.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return Err(bad(
                    &format!("routes[{index}].prefix"),
                    format!("`{}` must start with /", route.prefix),
                ));
            }
            route.headers.validate().map_err(|err| {
                bad(
                    &format!("routes[{index}].headers.{}", err.setting),
                    err.message,
                )
            })?;
            if let Some(csp) = &route.csp {
                csp.validate().map_err(|err| {
                    bad(&format!("routes[{index}].csp.{}", err.setting), err.message)
                })?;
            }
            if let Some(rules) = &route.validate {
                let setting = format!("routes[{index}].validate.json_schema_file");
                let schema = schema_file(rules).map_err(|message| bad(&setting, message))?;
                rules.validate(schema.as_ref()).map_err(|err| {
                    bad(
                        &format!("routes[{index}].validate.{}", err.setting),
                        err.message,
                    )
                })?;
            }
            self.validate_upload(index, route)?;
            if let Some(rich_text) = &route.rich_text {
                rich_text.validate().map_err(|err| {
                    bad(
                        &format!("routes[{index}].rich_text.{}", err.setting),
                        err.message,
                    )
                })?;
            }
        }
        if let Some(clamav) = &self.clamav {
            clamav
                .validate()
                .map_err(|err| bad(&format!("clamav.{}", err.setting), err.message))?;
        }
        if let Some(report) = &self.csp_report
            && !report.path.starts_with('/')
        {
            return Err(bad(
                "csp_report.path",
                format!("`{}` must start with /", report.path),
            ));
        }
        self.csrf
            .validate()
            .map_err(|err| bad(&format!("csrf.{}", err.setting), err.message))?;
        self.rate_limit
            .validate()
            .map_err(|err| bad(&format!("rate_limit.{}", err.setting), err.message))?;
        self.brute_force
            .validate()
            .map_err(|err| bad(&format!("brute_force.{}", err.setting), err.message))?;
        if let Some(url) = &self.state.redis {
            crate::state::check_redis_url(url).map_err(|message| bad("state.redis", message))?;
        }
        self.challenge
            .validate()
            .map_err(|err| bad(&format!("challenge.{}", err.setting), err.message))?;
        crate::challenge::read_secret(&self.challenge)?;
        self.validate_waf()?;
        if let Some(txt) = &self.security_txt {
            txt.validate()
                .map_err(|err| bad(&format!("security_txt.{}", err.setting), err.message))?;
        }
        self.validate_limits()
    }

    fn validate_upload(&self, index: usize, route: &RouteOptions) -> Result<(), Error> {
        let Some(upload) = &route.upload else {
            return Ok(());
        };
        let bad = |setting: &str, message: String| Error::BadSetting {
            setting: format!("routes[{index}].upload.{setting}"),
            message,
        };
        upload
            .validate()
            .map_err(|err| bad(err.setting, err.message))?;
        if upload.scan && self.clamav.is_none() {
            return Err(bad(
                "scan",
                "no virus scanner is configured; add [gateway.clamav] with clamd's socket \
                 (socket = \"/run/clamav/clamd.ctl\"), or set scan = false"
                    .into(),
            ));
        }
        if upload.max_file_bytes > self.limits.max_body_bytes {
            return Err(bad(
                "max_file_bytes",
                format!(
                    "is larger than limits.max_body_bytes ({} bytes), which every request \
                     must fit; lower it or raise the limit",
                    self.limits.max_body_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate_waf(&self) -> Result<(), Error> {
        if !self.waf.enabled {
            return Ok(());
        }
        let bad = |err: palisade_waf::Error| Error::BadSetting {
            setting: format!("waf.{}", err.setting()),
            message: err.message(),
        };
        self.waf.validate().map_err(bad)?;
        if !palisade_waf::BUILT_IN {
            return Err(bad(palisade_waf::Error::NotBuiltIn));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), Error> {
        let bad = |setting: &str, message: &str| Error::BadSetting {
            setting: setting.to_string(),
            message: message.to_string(),
        };
        let limits = &self.limits;
        if limits.max_header_bytes < 8192 {
            return Err(bad("limits.max_header_bytes", "must be at least 8192"));
        }
        if limits.max_headers == 0 || limits.max_uri_bytes == 0 || limits.max_connections == 0 {
            return Err(bad("limits", "limits must be at least 1"));
        }
        let zero = [
            ("timeouts.header_read", self.timeouts.header_read),
            ("timeouts.body_read", self.timeouts.body_read),
            ("timeouts.upstream_connect", self.timeouts.upstream_connect),
            (
                "timeouts.upstream_response",
                self.timeouts.upstream_response,
            ),
            ("timeouts.idle", self.timeouts.idle),
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
            ("tls.watch_interval", self.tls.watch_interval),
        ];
        if let Some((setting, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
            return Err(bad(setting, "must be longer than zero"));
        }
        if let Some(path) = &self.health_check.path
            && !path.starts_with('/')
        {
            return Err(bad("health_check.path", "must start with /"));
        }
        Ok(())
    }
}

/// The scheme and authority of an upstream URL: `http://` only, with no path.
pub(crate) fn upstream_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL; write it like http://127.0.0.1:3000"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "`{text}`: an upstream is an http:// or https:// URL; write it like \
             http://127.0.0.1:3000"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{text}` has a path; give only {}://HOST:PORT",
            uri.scheme_str().unwrap_or("http")
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn upstreams_must_be_http_urls_without_a_path() {
        assert!(upstream_uri("http://127.0.0.1:3000").is_ok());
        assert!(upstream_uri("https://app.internal").is_ok());
        assert!(upstream_uri("ftp://app.internal").is_err());
        assert!(upstream_uri("https://app.internal/api").is_err());
        assert!(upstream_uri("http://app.internal/api").is_err());
        assert!(upstream_uri("127.0.0.1:3000").is_err());
    }

    #[test]
    fn addresses_and_sizes_read_like_people_write_them() {
        let read = |toml: &str| {
            toml::from_str::<GatewayOptions>(&format!("upstreams = [\"http://a:1\"]\n{toml}"))
        };
        let options = read(
            "listen = \"[::]:443\"\nhttp_listen = \"0.0.0.0:80\"\n\
             [limits]\nmax_body_bytes = \"10 MiB\"\nmax_uri_bytes = 4096",
        )
        .unwrap();
        assert_eq!(options.listen, "[::]:443".parse().unwrap());
        assert_eq!(options.http_listen, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(options.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(options.limits.max_uri_bytes, 4096);
        let err = read("listen = \"443\"").unwrap_err().to_string();
        assert!(err.contains("write it like 0.0.0.0:443"), "{err}");
        let err = read("[limits]\nmax_body_bytes = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("like 10 MiB"), "{err}");
    }

    #[test]
    fn the_documented_example_is_a_valid_gateway_section() {
        let doc = include_str!("../../../docs/gateway.md");
        let start = doc
            .find("```toml\n[gateway]")
            .expect("docs/gateway.md has the example")
            + 8;
        let block = &doc[start..start + doc[start..].find("```").unwrap()];
        let file: toml::Table = toml::from_str(block).unwrap();
        let section = file["gateway"].clone();
        let options: GatewayOptions = section.try_into().unwrap();
        options.validate().unwrap();
        assert_eq!(options.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(options.csp.directives.len(), 2);
        assert!(options.routes[0].csp.is_none());
    }

    #[test]
    fn the_waf_is_off_by_default_and_asking_for_it_needs_the_feature() {
        let options = GatewayOptions::new("http://127.0.0.1:1");
        assert!(!options.waf.enabled);
        options.validate().unwrap();
        let mut options = GatewayOptions::new("http://127.0.0.1:1");
        options.waf.enabled = true;
        let result = options.validate();
        assert_eq!(result.is_ok(), palisade_waf::BUILT_IN, "{result:?}");
        if let Err(err) = result {
            let Error::BadSetting { setting, message } = err else {
                panic!("{err}")
            };
            assert_eq!(setting, "waf.enabled");
            assert!(message.contains("--features modsecurity"), "{message}");
        }
        options.waf.paranoia_level = 0;
        let Err(Error::BadSetting { setting, .. }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "waf.paranoia_level");
    }

    #[test]
    fn a_challenge_provider_needs_a_readable_secret_file() {
        let mut options = GatewayOptions::new("http://127.0.0.1:1");
        options.challenge.provider = palisade_guard::ChallengeProvider::Hcaptcha;
        options.challenge.site_key = Some("10000000-ffff-ffff-ffff-000000000001".into());
        let Err(Error::BadSetting { setting, message }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "challenge.secret_file");
        assert!(
            message.contains("/etc/palisade/hcaptcha.secret"),
            "{message}"
        );
        let dir = tempfile::tempdir().unwrap();
        options.challenge.secret_file = Some(dir.path().join("hcaptcha.secret"));
        let Err(Error::BadSetting { setting, message }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "challenge.secret_file");
        assert!(message.contains("cannot read"), "{message}");
        std::fs::write(dir.path().join("hcaptcha.secret"), "0x0000-secret\n").unwrap();
        options.validate().unwrap();
        options.challenge.max_difficulty = 8;
        let Err(Error::BadSetting { setting, .. }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "challenge.max_difficulty");
    }

    #[test]
    fn mistakes_name_their_setting() {
        let mut options = GatewayOptions::new("http://127.0.0.1:1");
        options.limits.max_header_bytes = 100;
        let Err(Error::BadSetting { setting, .. }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "limits.max_header_bytes");
        let mut options = GatewayOptions::new("http://127.0.0.1:1");
        options.headers.hsts_max_age = 10;
        let Err(Error::BadSetting { setting, .. }) = options.validate() else {
            panic!("accepted")
        };
        assert_eq!(setting, "headers.hsts_max_age");
    }
}
