//! Input validation per route: methods, content types, body size, JSON bodies against a JSON
//! Schema and a nesting limit, query and form parameters by type, length, pattern and enum,
//! and a policy for parameters the route does not name.
//!
//! A request that breaks a rule is refused with 400 and a short explanation that names the rule
//! and the parameter (never the value), and emits one `invalid_input` event; in `log-only` mode
//! it passes with an event whose action is `log`. A body is read whole only when a rule needs
//! to look into it (a schema, a depth limit on JSON, parameter rules on a form); the route's size
//! limit applies to every body as it streams.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    body::read_whole,
    reject::{Rejection, RejectionKind},
    route::Routes,
};

/// Whether a route's violations are refused or only logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationMode {
    /// Refused with 400.
    #[default]
    Enforce,
    /// Logged (action `log`) and let through, to try rules out on live traffic.
    LogOnly,
}

/// What to do with a parameter the route's `params` does not name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownParams {
    /// Let it through.
    #[default]
    Allow,
    /// Let it through with an event.
    Log,
    /// Refuse the request.
    Reject,
}

/// The validation rules of a route; a route without them is not validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationOptions {
    /// Enforce or log only.
    #[serde(default)]
    pub mode: ValidationMode,
    /// The methods the route takes, like `["GET", "POST"]`; empty takes any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The media types a request body may have, like `["application/json"]` (parameters such
    /// as `charset` are ignored); empty takes any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// The largest body, below the gateway's own limit.
    #[serde(default, deserialize_with = "optional_size")]
    pub max_body_bytes: Option<u64>,
    /// How deeply a JSON body may nest arrays and objects.
    #[serde(default = "default_depth")]
    pub max_json_depth: usize,
    /// How many query and form parameters a request may have together.
    #[serde(default = "default_params")]
    pub max_params: usize,
    /// What to do with parameters `params` does not name.
    #[serde(default)]
    pub unknown_params: UnknownParams,
    /// Rules by parameter name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamRule>,
    /// A JSON Schema (draft 2020-12 unless it says otherwise with `$schema`) for JSON bodies,
    /// written inline.
    pub json_schema: Option<serde_json::Value>,
    /// The same, from a file (read by the gateway; relative to the config file).
    pub json_schema_file: Option<std::path::PathBuf>,
}

fn optional_size<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    crate::settings::byte_count(deserializer).map(Some)
}

fn default_depth() -> usize {
    32
}

fn default_params() -> usize {
    100
}

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A whole number, like `-12`.
    Integer,
    /// A finite decimal number, like `3.5`.
    Number,
    /// `true`, `false`, `1`, `0`, `on` or `off` (an HTML checkbox sends `on`).
    Boolean,
}

/// Where a parameter may be given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamIn {
    /// In the query or the form body.
    #[default]
    Any,
    /// In the query string only.
    Query,
    /// In a form body only (URL-encoded or multipart).
    Form,
}

/// The rule of one parameter.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamRule {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Where it may be given.
    #[serde(rename = "in")]
    pub location: ParamIn,
    /// Whether every request must have it.
    pub required: bool,
    /// Whether it may be given more than once (refused by default: parameter pollution).
    pub repeat: bool,
    /// The fewest characters.
    pub min_length: Option<usize>,
    /// The most characters.
    pub max_length: Option<usize>,
    /// A regular expression the whole value must match.
    pub pattern: Option<String>,
    /// The values it may take.
    #[serde(rename = "enum")]
    pub one_of: Vec<String>,
    /// The smallest number (integer and number).
    pub min: Option<f64>,
    /// The largest number (integer and number).
    pub max: Option<f64>,
}

/// A validation setting that cannot work, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadValidationSetting {
    /// The option, like `params.age.pattern`.
    pub setting: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> BadValidationSetting {
    BadValidationSetting {
        setting: setting.into(),
        message: message.into(),
    }
}

/// A route's rules, checked and compiled.
struct Compiled {
    mode: ValidationMode,
    methods: Vec<Method>,
    content_types: Vec<String>,
    max_body_bytes: Option<usize>,
    max_json_depth: usize,
    max_params: usize,
    unknown: UnknownParams,
    params: BTreeMap<String, (ParamRule, Option<regex::Regex>)>,
    schema: Option<jsonschema::Validator>,
    /// Parameters other layers put in (the CSRF field), known to every route.
    ignored: BTreeSet<String>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("methods", &self.methods)
            .field("params", &self.params.keys().collect::<Vec<_>>())
            .field("schema", &self.schema.is_some())
            .finish_non_exhaustive()
    }
}

impl ValidationOptions {
    /// Checks and compiles the rules; `schema` is the route's JSON Schema, from `json_schema`
    /// or the file the caller read.
    fn compile(
        &self,
        schema: Option<&serde_json::Value>,
        ignored: &[String],
    ) -> Result<Compiled, BadValidationSetting> {
        let mut methods = Vec::new();
        for name in &self.methods {
            let method =
                Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    bad(
                        "methods",
                        format!("`{name}` is not a method; write it like \"POST\""),
                    )
                })?;
            methods.push(method);
        }
        let mut content_types = Vec::new();
        for media in &self.content_types {
            let media = media.trim().to_ascii_lowercase();
            if media
                .split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty() || b.contains(';'))
            {
                return Err(bad(
                    "content_types",
                    format!(
                        "`{media}` is not a media type; write it like \"application/json\", without parameters"
                    ),
                ));
            }
            content_types.push(media);
        }
        if self.json_schema.is_some() && self.json_schema_file.is_some() {
            return Err(bad(
                "json_schema",
                "give the schema inline (json_schema) or in a file (json_schema_file), not both",
            ));
        }
        let schema = match schema.or(self.json_schema.as_ref()) {
            Some(schema) => Some(
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(schema)
                    .map_err(|err| {
                        bad("json_schema", format!("not a usable JSON Schema: {err}"))
                    })?,
            ),
            None => None,
        };
        let mut params = BTreeMap::new();
        for (name, rule) in &self.params {
            let setting = |field: &str| format!("params.{name}.{field}");
            let pattern = match &rule.pattern {
                Some(pattern) => {
                    Some(whole_match(pattern).map_err(|err| bad(setting("pattern"), err))?)
                }
                None => None,
            };
            if let (Some(min), Some(max)) = (rule.min_length, rule.max_length)
                && min > max
            {
                return Err(bad(setting("min_length"), "is larger than max_length"));
            }
            if matches!(rule.kind, ParamType::String | ParamType::Boolean)
                && (rule.min.is_some() || rule.max.is_some())
            {
                return Err(bad(
                    setting("min"),
                    "min and max are for numbers; give the parameter type = \"integer\" or \"number\", or use min_length and max_length",
                ));
            }
            params.insert(name.clone(), (rule.clone(), pattern));
        }
        Ok(Compiled {
            mode: self.mode,
            methods,
            content_types,
            max_body_bytes: self
                .max_body_bytes
                .map(|max| usize::try_from(max).unwrap_or(usize::MAX)),
            max_json_depth: self.max_json_depth,
            max_params: self.max_params,
            unknown: self.unknown_params,
            params,
            schema,
            ignored: ignored.iter().cloned().collect(),
        })
    }

    /// Checks what the types cannot; `schema` as for the layer.
    pub fn validate(&self, schema: Option<&serde_json::Value>) -> Result<(), BadValidationSetting> {
        self.compile(schema, &[]).map(|_| ())
    }
}

/// Validates requests on the routes given rules; see the module documentation.
#[derive(Debug, Clone)]
pub struct ValidateLayer {
    routes: Arc<Routes<Option<Arc<Compiled>>>>,
    ignored: Vec<String>,
}

impl ValidateLayer {
    /// A layer that validates nothing yet; `ignored` names parameters other layers add (the
    /// CSRF field), which are never unknown.
    pub fn new(ignored: &[String]) -> Self {
        Self {
            routes: Arc::new(Routes::new(None)),
            ignored: ignored.to_vec(),
        }
    }

    /// The layer with `options` for the paths under `prefix`; `schema` is the JSON Schema read
    /// from `json_schema_file`, if any.
    pub fn with_route(
        self,
        prefix: &str,
        options: &ValidationOptions,
        schema: Option<&serde_json::Value>,
    ) -> Result<Self, BadValidationSetting> {
        let compiled = Arc::new(options.compile(schema, &self.ignored)?);
        let routes = Arc::unwrap_or_clone(self.routes).with(prefix, Some(compiled));
        Ok(Self {
            routes: Arc::new(routes),
            ignored: self.ignored,
        })
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`ValidateLayer`].
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    routes: Arc<Routes<Option<Arc<Compiled>>>>,
}

impl<S, ResBody> Service<Request<Body>> for Validate<S>
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
        let Some(rules) = self.routes.for_path(req.uri().path()).clone() else {
            let future = self.inner.call(req);
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let req = match rules.check(req).await {
                Ok(req) => req,
                Err(refused) => {
                    let (rejection, req) = *refused;
                    if rules.mode == ValidationMode::Enforce || req.body_consumed() {
                        return Ok(rejection.respond_to(&*req));
                    }
                    rejection.log(&*req);
                    req.into_request()
                }
            };
            Ok(inner.call(req).await?.map(Body::new))
        })
    }
}

/// A request a check refused: whole, or (when its body broke a limit while being read) without
/// its body, which then cannot be sent on even in log-only mode.
enum Held {
    Whole(Request<Body>),
    Headless(Request<Body>),
}

impl Held {
    fn body_consumed(&self) -> bool {
        matches!(self, Self::Headless(_))
    }

    fn into_request(self) -> Request<Body> {
        match self {
            Self::Whole(req) | Self::Headless(req) => req,
        }
    }
}

impl std::ops::Deref for Held {
    type Target = Request<Body>;

    fn deref(&self) -> &Request<Body> {
        match self {
            Self::Whole(req) | Self::Headless(req) => req,
        }
    }
}

type Refused = Box<(Rejection, Held)>;

fn invalid(rule: &'static str, detail: String) -> Rejection {
    Rejection::new(RejectionKind::InvalidInput, rule).with_detail(detail)
}

/// The media type of a request's body, lower case, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

fn has_body<B: http_body::Body>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
        || !req.body().is_end_stream()
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// A parameter as received: name, value (none for a file part), and where.
struct Param {
    name: String,
    value: Option<String>,
    location: ParamIn,
}

impl Compiled {
    async fn check(&self, req: Request<Body>) -> Result<Request<Body>, Refused> {
        let refuse = |req, rejection| Err(Box::new((rejection, Held::Whole(req))));
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            let allowed: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            let detail = format!(
                "This address does not take {} requests; it takes {}.",
                req.method(),
                allowed.join(", ")
            );
            return refuse(req, invalid("method-not-allowed", detail));
        }
        let mut params: Vec<Param> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .map(|(name, value)| Param {
                    name: name.into_owned(),
                    value: Some(value.into_owned()),
                    location: ParamIn::Query,
                })
                .collect();
        let media = media_type(req.headers());
        let body = has_body(&req);
        if body && !self.content_types.is_empty() {
            let allowed = media
                .as_deref()
                .is_some_and(|m| self.content_types.iter().any(|c| c == m));
            if !allowed {
                let detail = format!(
                    "This address takes bodies of type {} only.",
                    self.content_types.join(", ")
                );
                return refuse(req, invalid("content-type-not-allowed", detail));
            }
        }
        let media = media.unwrap_or_default();
        let json = is_json(&media) && (self.schema.is_some() || self.max_json_depth > 0);
        let form = matches!(
            media.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data"
        );
        let req = if body && (json || form) {
            let (parts, body) = req.into_parts();
            let max = self.max_body_bytes.unwrap_or(usize::MAX);
            let bytes = match read_whole(body, max).await {
                Ok(bytes) => bytes,
                Err(rejection) => {
                    let req = Request::from_parts(parts, Body::empty());
                    return Err(Box::new((rejection, Held::Headless(req))));
                }
            };
            let req = Request::from_parts(parts, Body::from(bytes.clone()));
            if json {
                if let Err(rejection) = self.check_json(&bytes) {
                    return refuse(req, rejection);
                }
            } else if media == "multipart/form-data" {
                let content_type = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match multipart_params(&content_type, bytes).await {
                    Ok(found) => params.extend(found),
                    Err(()) => {
                        let detail = "The multipart body cannot be read.".to_string();
                        return refuse(req, invalid("multipart-unreadable", detail));
                    }
                }
            } else {
                params.extend(form_urlencoded::parse(&bytes).map(|(name, value)| Param {
                    name: name.into_owned(),
                    value: Some(value.into_owned()),
                    location: ParamIn::Form,
                }));
            }
            req
        } else if let Some(max) = self.max_body_bytes {
            // Nothing to look at: the route's limit applies as the body streams on.
            req.map(|body| Body::new(http_body_util::Limited::new(body, max)))
        } else {
            req
        };
        match self.check_params(&params, &req) {
            Ok(()) => Ok(req),
            Err(rejection) => refuse(req, rejection),
        }
    }

    fn check_json(&self, bytes: &[u8]) -> Result<(), Rejection> {
        if self.max_json_depth > 0 && json_depth(bytes) > self.max_json_depth {
            let detail = format!(
                "The JSON body nests deeper than {} levels.",
                self.max_json_depth
            );
            return Err(invalid("json-too-deep", detail));
        }
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|err| {
            let detail = format!(
                "The body is not valid JSON (line {}, column {}).",
                err.line(),
                err.column()
            );
            invalid("json-invalid", detail)
        })?;
        let problems: Vec<String> = schema
            .iter_errors(&value)
            .take(3)
            .map(|err| {
                let path = err.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_string()
                } else {
                    crate::cut(&path, 64).to_string()
                };
                format!("at {path}: {}", err.kind().keyword())
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "The JSON body does not match this address's schema ({}).",
            problems.join("; ")
        );
        Err(invalid("json-schema", detail))
    }

    fn check_params(&self, params: &[Param], req: &Request<Body>) -> Result<(), Rejection> {
        if params.len() > self.max_params {
            let detail = format!("The request has more than {} parameters.", self.max_params);
            return Err(invalid("too-many-params", detail));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for param in params {
            *seen.entry(param.name.as_str()).or_default() += 1;
            let Some((rule, pattern)) = self.params.get(&param.name) else {
                if self.ignored.contains(&param.name) {
                    continue;
                }
                let rejection = invalid(
                    "unknown-param",
                    format!(
                        "This address does not take the parameter `{}`.",
                        crate::cut(&param.name, 64)
                    ),
                );
                match self.unknown {
                    UnknownParams::Allow => {}
                    UnknownParams::Log => rejection.log(req),
                    UnknownParams::Reject => return Err(rejection),
                }
                continue;
            };
            let name = &param.name;
            if rule.location != ParamIn::Any && rule.location != param.location {
                let place = match rule.location {
                    ParamIn::Query => "the query string",
                    _ => "the form body",
                };
                return Err(invalid(
                    "param-location",
                    format!("The parameter `{name}` must be given in {place}."),
                ));
            }
            if let Some(value) = &param.value {
                check_value(name, value, rule, pattern.as_ref())?;
            }
        }
        for (name, (rule, _)) in &self.params {
            let count = seen.get(name.as_str()).copied().unwrap_or(0);
            if rule.required && count == 0 {
                return Err(invalid(
                    "param-required",
                    format!("The parameter `{name}` is required."),
                ));
            }
            if !rule.repeat && count > 1 {
                return Err(invalid(
                    "param-repeated",
                    format!("The parameter `{name}` is given more than once."),
                ));
            }
        }
        Ok(())
    }
}

/// Checks one value against its rule: the rule it breaks, saying what the value must be.
fn check_value(
    name: &str,
    value: &str,
    rule: &ParamRule,
    pattern: Option<&regex::Regex>,
) -> Result<(), Rejection> {
    let fail = |rule: &'static str, what: String| {
        Err(invalid(rule, format!("The parameter `{name}` {what}.")))
    };
    let number = match rule.kind {
        ParamType::String => None,
        ParamType::Integer => match value.trim().parse::<i64>() {
            Ok(n) => Some(n as f64),
            Err(_) => return fail("param-type", "must be a whole number".into()),
        },
        ParamType::Number => match value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => return fail("param-type", "must be a number".into()),
        },
        ParamType::Boolean => {
            let known = ["true", "false", "1", "0", "on", "off"];
            if !known.iter().any(|k| value.eq_ignore_ascii_case(k)) {
                return fail("param-type", "must be true or false".into());
            }
            None
        }
    };
    if let Some(n) = number {
        if let Some(min) = rule.min.filter(|min| n < *min) {
            return fail("param-range", format!("must be at least {min}"));
        }
        if let Some(max) = rule.max.filter(|max| n > *max) {
            return fail("param-range", format!("must be at most {max}"));
        }
    }
    let length = value.chars().count();
    if let Some(min) = rule.min_length.filter(|min| length < *min) {
        return fail(
            "param-length",
            format!("must be at least {min} characters long"),
        );
    }
    if let Some(max) = rule.max_length.filter(|max| length > *max) {
        return fail(
            "param-length",
            format!("must be at most {max} characters long"),
        );
    }
    if let Some(pattern) = pattern
        && !pattern.is_match(value)
    {
        return fail("param-pattern", "does not have the expected form".into());
    }
    if !rule.one_of.is_empty() && !rule.one_of.iter().any(|v| v == value) {
        return fail(
            "param-enum",
            format!("must be one of {}", rule.one_of.join(", ")),
        );
    }
    Ok(())
}

/// A regular expression that matches `pattern` against a whole value; the error says what is
/// wrong with the pattern as written.
fn whole_match(pattern: &str) -> Result<regex::Regex, String> {
    let explain = |err: regex::Error| {
        let text = err.to_string();
        let reason = text
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or(&text)
            .to_string();
        format!("`{pattern}` is not a regular expression: {reason}")
    };
    regex::Regex::new(pattern).map_err(explain)?;
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(explain)
}

/// How deeply arrays and objects nest in a JSON text (counted without parsing it, so that a
/// body built to exhaust a parser's stack costs nothing).
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The fields of a multipart body: text fields with their values, files by name only.
async fn multipart_params(content_type: &str, body: Bytes) -> Result<Vec<Param>, ()> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| ())?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut params = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|_| ())? {
        let name = field.name().unwrap_or("").to_string();
        let value = if field.file_name().is_some() {
            None
        } else {
            Some(field.text().await.map_err(|_| ())?)
        };
        params.push(Param {
            name,
            value,
            location: ParamIn::Form,
        });
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml: &str) -> Compiled {
        let options: ValidationOptions = toml::from_str(toml).unwrap();
        options.compile(None, &["palisade_csrf".into()]).unwrap()
    }

    async fn check(rules: &Compiled, req: Request<Body>) -> Result<(), (String, String)> {
        match rules.check(req).await {
            Ok(_) => Ok(()),
            Err(refused) => {
                let (rejection, _) = *refused;
                Err((
                    rejection.rule.into_owned(),
                    rejection.detail.unwrap_or_default(),
                ))
            }
        }
    }

    fn form(body: &str) -> Request<Body> {
        Request::post("/signup")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", body.len())
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn parameters_are_checked_by_type_length_pattern_and_enum() {
        let rules = rules(
            r#"
            unknown_params = "reject"
            [params.age]
            type = "integer"
            min = 13
            [params.name]
            required = true
            max_length = 5
            [params.zip]
            pattern = "[0-9]{5}"
            [params.plan]
            enum = ["free", "pro"]
            [params.news]
            type = "boolean"
            "#,
        );
        assert_eq!(
            check(&rules, form("name=ann&age=20&zip=12345&plan=pro&news=on")).await,
            Ok(())
        );
        let cases = [
            (
                "name=ann&age=x",
                "param-type",
                "`age` must be a whole number",
            ),
            (
                "name=ann&age=12",
                "param-range",
                "`age` must be at least 13",
            ),
            ("name=annabel", "param-length", "`name` must be at most 5"),
            ("name=ann&zip=1234a", "param-pattern", "`zip` does not have"),
            (
                "name=ann&zip=12345%0a",
                "param-pattern",
                "`zip` does not have",
            ),
            ("name=ann&plan=gold", "param-enum", "one of free, pro"),
            ("name=ann&news=maybe", "param-type", "true or false"),
            ("age=20", "param-required", "`name` is required"),
            ("name=ann&name=bob", "param-repeated", "more than once"),
            ("name=ann&admin=1", "unknown-param", "`admin`"),
        ];
        for (body, rule, detail) in cases {
            let (got, text) = check(&rules, form(body)).await.unwrap_err();
            assert_eq!(got, rule, "{body}");
            assert!(text.contains(detail), "{body}: {text}");
            // The explanation names the parameter, never its value.
            assert!(
                !text.contains("annabel") && !text.contains("gold"),
                "{text}"
            );
        }
        // The CSRF field is never unknown; the query counts as well as the body.
        assert_eq!(
            check(&rules, form("name=ann&palisade_csrf=t")).await,
            Ok(())
        );
        let query = Request::get("/signup?name=ann&x=1")
            .body(Body::empty())
            .unwrap();
        assert_eq!(check(&rules, query).await.unwrap_err().0, "unknown-param");
    }

    #[tokio::test]
    async fn methods_content_types_and_counts() {
        let rules = rules(
            r#"
            methods = ["get", "POST"]
            content_types = ["application/json"]
            max_params = 2
            "#,
        );
        let put = Request::put("/x").body(Body::empty()).unwrap();
        let (rule, detail) = check(&rules, put).await.unwrap_err();
        assert_eq!(rule, "method-not-allowed");
        assert!(detail.contains("it takes GET, POST"), "{detail}");
        assert_eq!(
            check(&rules, form("a=1")).await.unwrap_err().0,
            "content-type-not-allowed"
        );
        let many = Request::get("/x?a=1&b=2&c=3").body(Body::empty()).unwrap();
        assert_eq!(check(&rules, many).await.unwrap_err().0, "too-many-params");
        let get = Request::get("/x?a=1").body(Body::empty()).unwrap();
        assert_eq!(check(&rules, get).await, Ok(()));
    }

    fn json(body: &str) -> Request<Body> {
        Request::post("/api/users")
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn json_bodies_follow_their_schema_and_depth_limit() {
        let options: ValidationOptions = toml::from_str(
            r#"
            max_json_depth = 4
            [json_schema]
            type = "object"
            required = ["email"]
            additionalProperties = false
            properties.email = { type = "string", format = "email" }
            properties.age = { type = "integer", minimum = 0 }
            properties.tags = { type = "array" }
            "#,
        )
        .unwrap();
        let rules = options.compile(None, &[]).unwrap();
        assert_eq!(
            check(&rules, json(r#"{"email": "a@example.com", "age": 3}"#)).await,
            Ok(())
        );
        let (rule, detail) = check(&rules, json(r#"{"email": "nope", "age": -1}"#))
            .await
            .unwrap_err();
        assert_eq!(rule, "json-schema");
        assert!(detail.contains("at /email: format"), "{detail}");
        assert!(detail.contains("at /age: minimum"), "{detail}");
        assert!(!detail.contains("nope"), "{detail}");
        let (rule, _) = check(&rules, json(r#"{"email": "a@example.com", "x": 1}"#))
            .await
            .unwrap_err();
        assert_eq!(rule, "json-schema");
        let (rule, detail) = check(&rules, json("{\"email\": ")).await.unwrap_err();
        assert_eq!(rule, "json-invalid");
        assert!(detail.contains("line 1"), "{detail}");
        let deep = format!(
            "{{\"email\": \"a@example.com\", \"tags\": {}{}}}",
            "[".repeat(5),
            "]".repeat(5)
        );
        assert_eq!(
            check(&rules, json(&deep)).await.unwrap_err().0,
            "json-too-deep"
        );
        // Brackets inside strings are text, not nesting.
        let text = r#"{"email": "a@example.com", "tags": ["[[[[[[[[\"]]]]"]}"#;
        assert_eq!(check(&rules, json(text)).await, Ok(()));
    }

    #[tokio::test]
    async fn a_body_over_the_routes_limit_is_refused_whole() {
        let rules = rules("max_body_bytes = 8\n[params.a]\nmax_length = 100");
        let (rule, _) = check(&rules, form("a=0123456789")).await.unwrap_err();
        assert_eq!(rule, "max-body-bytes");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let err = |toml: &str| {
            let options: ValidationOptions = toml::from_str(toml).unwrap();
            options.validate(None).unwrap_err()
        };
        assert_eq!(err("methods = [\"PO ST\"]").setting, "methods");
        assert_eq!(err("content_types = [\"json\"]").setting, "content_types");
        assert_eq!(
            err("[params.a]\npattern = \"(\"").setting,
            "params.a.pattern"
        );
        assert_eq!(err("[params.a]\nmin = 1").setting, "params.a.min");
        let schema = err("json_schema = { type = \"nothing\" }");
        assert_eq!(schema.setting, "json_schema");
        assert!(toml::from_str::<ValidationOptions>("[params.a]\ntype = \"int\"").is_err());
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(b"{}"), 1);
        assert_eq!(json_depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(json_depth(br#"{"a": "\"[[[["}"#), 1);
        assert_eq!(json_depth(b"12"), 0);
    }
}
