//! Rich text cleaned on the way in: per route, the configured form fields and JSON pointers
//! are sanitised with an allow-list (ammonia, through [`crate::sanitize`]), so stored XSS
//! cannot enter through them; every other byte of the body passes unchanged.

use std::{
    collections::BTreeSet,
    ops::Range,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, header, request::Parts};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    body::read_whole,
    inspect::{self, Part},
    reject::{Rejection, RejectionKind},
    route::Routes,
    sanitize::{SanitizeOptions, Sanitizer},
};

/// Which values of a route's requests are rich text, and what their HTML may keep.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RichTextOptions {
    /// Form fields by name, in `application/x-www-form-urlencoded` bodies and the text parts
    /// of `multipart/form-data` ones.
    pub fields: Vec<String>,
    /// JSON pointers (RFC 6901, like `/post/body`) into `application/json` bodies; every
    /// string at or below each is cleaned.
    pub json: Vec<String>,
    /// The elements, attributes and URL schemes kept; by default simple formatting and links.
    pub allow: SanitizeOptions,
}

/// A setting of [`RichTextOptions`] that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadRichTextSetting {
    /// The setting, like `allow.tags`.
    pub setting: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Elements that load, run or submit content (or hide markup from the sanitiser) and that
/// rich text therefore may never keep.
const NEVER_ALLOWED: &[&str] = &[
    "applet", "base", "embed", "form", "frame", "frameset", "iframe", "link", "math", "meta",
    "noscript", "object", "script", "style", "svg", "template",
];

impl RichTextOptions {
    /// Checks the options: something to clean, pointers that are pointers, and an allow-list
    /// without elements or attributes that can run code.
    pub fn validate(&self) -> Result<(), BadRichTextSetting> {
        let bad = |setting, message: String| Err(BadRichTextSetting { setting, message });
        if self.fields.is_empty() && self.json.is_empty() {
            return bad(
                "fields",
                "names no field; list form fields (fields = [\"comment\"]) or JSON pointers \
                 (json = [\"/post/body\"])"
                    .into(),
            );
        }
        if let Some(pointer) = self.json.iter().find(|p| !p.starts_with('/')) {
            return bad(
                "json",
                format!("`{pointer}` is not a JSON pointer; write it like \"/post/body\""),
            );
        }
        let allow = &self.allow;
        let elements = allow.tags.iter().chain(allow.attributes.keys());
        if let Some(tag) = elements
            .map(|t| t.to_ascii_lowercase())
            .find(|t| NEVER_ALLOWED.contains(&t.as_str()))
        {
            return bad(
                "allow.tags",
                format!(
                    "`{tag}` can load or run content and cannot be allowed in rich text; remove it"
                ),
            );
        }
        for (tag, names) in &allow.attributes {
            let name = names.iter().map(|n| n.to_ascii_lowercase()).find(|n| {
                n.starts_with("on")
                    || n == "srcdoc"
                    || (tag == "a" && n == "rel" && !allow.link_rel.is_empty())
            });
            if let Some(name) = name {
                let why = if name == "rel" {
                    "is set by link_rel; remove it here, or set link_rel = \"\"".to_string()
                } else {
                    "can run scripts and cannot be allowed; remove it".to_string()
                };
                return bad("allow.attributes", format!("`{name}` on `{tag}` {why}"));
            }
        }
        Ok(())
    }
}

/// A route's rich text rules, ready to apply.
#[derive(Debug)]
struct Rules {
    fields: BTreeSet<String>,
    /// Each pointer as written and as its unescaped tokens.
    pointers: Vec<(String, Vec<String>)>,
    sanitizer: Sanitizer,
    /// The same allow-list without `link_rel`, to tell removed markup from added `rel`s.
    counter: Sanitizer,
}

impl Rules {
    fn new(options: &RichTextOptions) -> Result<Self, BadRichTextSetting> {
        options.validate()?;
        let pointers = options
            .json
            .iter()
            .map(|p| (p.clone(), pointer_tokens(p)))
            .collect();
        let counting = SanitizeOptions {
            link_rel: String::new(),
            ..options.allow.clone()
        };
        Ok(Self {
            fields: options.fields.iter().cloned().collect(),
            pointers,
            sanitizer: Sanitizer::new(options.allow.clone()),
            counter: Sanitizer::new(counting),
        })
    }

    /// The cleaned value when cleaning changed it, and whether markup was removed (rather
    /// than text re-encoded, `&` as `&amp;`).
    fn clean(&self, value: &str) -> Option<(String, bool)> {
        let clean = self.sanitizer.clean(value);
        if clean == value {
            return None;
        }
        let removed = markup_count(&self.counter.clean(value)) < markup_count(value);
        Some((clean, removed))
    }
}

/// `/a~1b/0` → `["a/b", "0"]`.
fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// How many elements and attributes `html` has.
fn markup_count(html: &str) -> usize {
    let count = std::cell::Cell::new(0);
    let handler = lol_html::element!("*", |el| {
        count.set(count.get() + 1 + el.attributes().len());
        Ok(())
    });
    let settings = lol_html::RewriteStrSettings::new().append_element_content_handler(handler);
    // A fragment lol_html cannot parse counts as all markup: nothing counts as removed.
    match lol_html::rewrite_str(html, settings) {
        Ok(_) => count.get(),
        Err(_) => usize::MAX,
    }
}

/// What cleaning a body gave: the new body if anything changed, and the fields or pointers
/// whose markup was removed (one event each).
#[derive(Debug, Default, PartialEq, Eq)]
struct Cleaned {
    body: Option<Vec<u8>>,
    flagged: BTreeSet<String>,
}

/// `name=value&...` with the configured fields cleaned; other pairs stay byte for byte.
fn clean_form(body: &[u8], rules: &Rules) -> Cleaned {
    let mut out = Vec::with_capacity(body.len());
    let mut cleaned = Cleaned::default();
    let mut changed = false;
    for (index, pair) in body.split(|b| *b == b'&').enumerate() {
        if index > 0 {
            out.push(b'&');
        }
        let decoded = form_urlencoded::parse(pair).next();
        let cleaned_value = decoded
            .filter(|(name, _)| rules.fields.contains(name.as_ref()))
            .and_then(|(name, value)| Some((name.into_owned(), rules.clean(&value)?)));
        let Some((name, (value, removed))) = cleaned_value else {
            out.extend_from_slice(pair);
            continue;
        };
        let raw_name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        out.extend_from_slice(raw_name);
        out.push(b'=');
        out.extend(form_urlencoded::byte_serialize(value.as_bytes()).flat_map(str::bytes));
        if removed {
            cleaned.flagged.insert(name);
        }
        changed = true;
    }
    cleaned.body = changed.then_some(out);
    cleaned
}

/// A JSON document with the strings at the configured pointers cleaned; every other byte
/// stays. `Err` when the body is no JSON, which the application could read differently.
fn clean_json(body: &[u8], rules: &Rules) -> Result<Cleaned, Rejection> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(
            Rejection::new(RejectionKind::InvalidInput, "rich-text-json-invalid")
                .with_detail("The request body is not valid JSON."),
        );
    }
    let mut spans: Vec<(Range<usize>, &str)> = Vec::new();
    for (pointer, tokens) in &rules.pointers {
        let mut scan = Scan {
            doc: body,
            at: 0,
            out: Vec::new(),
        };
        scan.value(Some(tokens));
        spans.extend(scan.out.into_iter().map(|span| (span, pointer.as_str())));
    }
    spans.sort_by_key(|(span, _)| span.start);
    spans.dedup_by_key(|(span, _)| span.start);
    let mut cleaned = Cleaned::default();
    let (mut out, mut copied, mut changed) = (Vec::with_capacity(body.len()), 0, false);
    for (span, pointer) in spans {
        let Ok(value) = serde_json::from_slice::<String>(&body[span.clone()]) else {
            continue;
        };
        let Some((value, removed)) = rules.clean(&value) else {
            continue;
        };
        out.extend_from_slice(&body[copied..span.start]);
        let encoded = serde_json::to_string(&value).expect("a string always serialises");
        out.extend_from_slice(encoded.as_bytes());
        copied = span.end;
        if removed {
            cleaned.flagged.insert(pointer.to_string());
        }
        changed = true;
    }
    out.extend_from_slice(&body[copied..]);
    cleaned.body = changed.then_some(out);
    Ok(cleaned)
}

/// A walk over a valid JSON document that records the byte ranges of the strings (quotes
/// included) at or below one pointer. Duplicate keys are all followed, so that a second
/// `"body"` cannot slip past the first.
struct Scan<'a> {
    doc: &'a [u8],
    at: usize,
    out: Vec<Range<usize>>,
}

impl Scan<'_> {
    fn peek(&self) -> u8 {
        self.doc.get(self.at).copied().unwrap_or(b'}')
    }

    fn space(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// One value: `target` is `None` to skip it, the remaining pointer tokens to follow them,
    /// and empty to record every string in it.
    fn value(&mut self, target: Option<&[String]>) {
        self.space();
        match self.peek() {
            b'{' => self.object(target),
            b'[' => self.array(target),
            b'"' => {
                let span = self.string();
                if target.is_some_and(<[String]>::is_empty) {
                    self.out.push(span);
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                ) {
                    self.at += 1;
                }
            }
        }
    }

    fn string(&mut self) -> Range<usize> {
        let start = self.at;
        self.at += 1;
        while self.at < self.doc.len() {
            match self.doc[self.at] {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        start..self.at
    }

    fn object(&mut self, target: Option<&[String]>) {
        self.at += 1;
        loop {
            self.space();
            if self.peek() == b'}' {
                self.at += 1;
                return;
            }
            let key = self.string();
            self.space();
            self.at += 1; // the colon
            let next = match target {
                Some([]) => Some(&[][..]),
                Some([first, rest @ ..]) => {
                    let key: Option<String> = serde_json::from_slice(&self.doc[key]).ok();
                    (key.as_deref() == Some(first.as_str())).then_some(rest)
                }
                None => None,
            };
            self.value(next);
            self.space();
            if self.peek() == b',' {
                self.at += 1;
            }
        }
    }

    fn array(&mut self, target: Option<&[String]>) {
        self.at += 1;
        let mut index = 0usize;
        loop {
            self.space();
            if self.peek() == b']' {
                self.at += 1;
                return;
            }
            let next = match target {
                Some([]) => Some(&[][..]),
                Some([first, rest @ ..]) => (first.parse() == Ok(index)).then_some(rest),
                None => None,
            };
            self.value(next);
            index += 1;
            self.space();
            if self.peek() == b',' {
                self.at += 1;
            }
        }
    }
}

/// A form with the configured text parts cleaned; the original bytes when nothing changed,
/// else every part written out again (values byte for byte, headers in the gateway's form).
async fn clean_multipart(body: Bytes, boundary: &str, rules: &Rules) -> Result<Cleaned, Rejection> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    let mut cleaned = Cleaned::default();
    let mut changed = false;
    let malformed = |_| Rejection::new(RejectionKind::Malformed, "multipart-malformed");
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let mut data = field.bytes().await.map_err(malformed)?.to_vec();
        if file_name.is_none() && rules.fields.contains(&name) {
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some((value, removed)) = rules.clean(&text) {
                data = value.into_bytes();
                changed = true;
                if removed {
                    cleaned.flagged.insert(name.clone());
                }
            }
        }
        parts.push((name, file_name, content_type, data));
    }
    if changed {
        let mut out = Vec::new();
        for (name, file_name, content_type, data) in &parts {
            let part = Part {
                name,
                file_name: file_name.as_deref(),
                content_type: content_type.as_deref(),
                data,
            };
            inspect::write_part(&mut out, boundary, &part);
        }
        inspect::write_end(&mut out, boundary);
        cleaned.body = Some(out);
    }
    Ok(cleaned)
}

/// Cleans rich text on the routes given with [`RichTextLayer::with_route`]; other requests
/// pass untouched.
#[derive(Debug, Clone)]
pub struct RichTextLayer {
    routes: Arc<Routes<Option<Arc<Rules>>>>,
}

impl Default for RichTextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RichTextLayer {
    /// A layer without routes. Bodies are read whole: the server's size limit and read
    /// timeout, which the gateway puts on every request body, bound them.
    pub fn new() -> Self {
        Self {
            routes: Arc::new(Routes::new(None)),
        }
    }

    /// These rules for the paths under `prefix`.
    pub fn with_route(
        self,
        prefix: &str,
        options: &RichTextOptions,
    ) -> Result<Self, BadRichTextSetting> {
        let rules = Arc::new(Rules::new(options)?);
        let routes = Arc::unwrap_or_clone(self.routes).with(prefix, Some(rules));
        Ok(Self {
            routes: Arc::new(routes),
        })
    }
}

impl<S> Layer<S> for RichTextLayer {
    type Service = RichText<S>;

    fn layer(&self, inner: S) -> RichText<S> {
        RichText {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RichTextLayer`].
#[derive(Debug, Clone)]
pub struct RichText<S> {
    inner: S,
    layer: RichTextLayer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for RichText<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let rules = self.layer.routes.for_path(req.uri().path()).clone();
        let kind = rules.as_ref().and_then(|_| body_kind(req.headers()));
        let (Some(rules), Some(kind)) = (rules, kind) else {
            return Box::pin(self.inner.call(req.map(Body::new)));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match clean(&mut parts, body, kind, &rules).await {
                Ok(body) => inner.call(Request::from_parts(parts, body)).await,
                Err(rejection) => {
                    Ok(rejection.respond(&parts.uri, &parts.headers, &parts.extensions))
                }
            }
        })
    }
}

/// A body that can carry rich text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
    Multipart(String),
}

/// The kind of a request's body; `None` for other types, and for a `Content-Type` that is
/// repeated, which the application may read either way: passed on as they are.
fn body_kind(headers: &http::HeaderMap) -> Option<BodyKind> {
    let media_type = inspect::media_type(headers).ok()?;
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => Some(BodyKind::Form),
        "application/json" => Some(BodyKind::Json),
        json if json.starts_with("application/") && json.ends_with("+json") => Some(BodyKind::Json),
        "multipart/form-data" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let boundary = multer::parse_boundary(content_type?).ok()?;
            Some(BodyKind::Multipart(boundary))
        }
        _ => None,
    }
}

/// Reads the body, cleans its rich text, and gives the body to forward; emits one `sanitized`
/// event per field or pointer whose markup was removed.
async fn clean<B>(
    parts: &mut Parts,
    body: B,
    kind: BodyKind,
    rules: &Rules,
) -> Result<Body, Rejection>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if parts.headers.contains_key(header::CONTENT_ENCODING) {
        return Err(
            Rejection::new(RejectionKind::InvalidInput, "rich-text-content-encoding").with_detail(
                "Form and JSON bodies must not be sent compressed here (Content-Encoding).",
            ),
        );
    }
    let bytes = read_whole(body, usize::MAX).await?;
    let cleaned = match &kind {
        BodyKind::Form => clean_form(&bytes, rules),
        BodyKind::Json => clean_json(&bytes, rules)?,
        BodyKind::Multipart(boundary) => clean_multipart(bytes.clone(), boundary, rules).await?,
    };
    for field in &cleaned.flagged {
        let rule = format!("rich-text {field}");
        Rejection::new(RejectionKind::Sanitized, rule).record_as(
            &parts.uri,
            &parts.extensions,
            "sanitize",
        );
    }
    let Some(body) = cleaned.body else {
        return Ok(Body::from(bytes));
    };
    inspect::set_length(&mut parts.headers, body.len());
    Ok(Body::from(Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(fields: &[&str], json: &[&str]) -> Rules {
        let options = RichTextOptions {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            json: json.iter().map(|s| s.to_string()).collect(),
            allow: SanitizeOptions::default(),
        };
        Rules::new(&options).unwrap()
    }

    #[test]
    fn only_configured_form_fields_change_and_the_rest_stays_byte_for_byte() {
        let rules = rules(&["comment"], &[]);
        let body = b"a=%3Cscript%3E1%3C%2Fscript%3E&comment=%3Cb%3Ehi%3C%2Fb%3E%3Cimg+src%3Dx+onerror%3Dalert(1)%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E&z=+1";
        let cleaned = clean_form(body, &rules);
        let out = String::from_utf8(cleaned.body.unwrap()).unwrap();
        assert_eq!(
            out,
            "a=%3Cscript%3E1%3C%2Fscript%3E&comment=%3Cb%3Ehi%3C%2Fb%3E&z=+1"
        );
        assert_eq!(cleaned.flagged, BTreeSet::from(["comment".to_string()]));
        // Nothing to clean: no new body.
        assert_eq!(
            clean_form(b"comment=%3Cb%3Eok%3C%2Fb%3E&x=%3C", &rules),
            Cleaned::default()
        );
    }

    #[test]
    fn re_encoded_text_and_added_rels_are_no_removal() {
        let rules = rules(&["c"], &[]);
        let (clean, removed) = rules.clean("Tom & Jerry <br/>").unwrap();
        assert_eq!(clean, "Tom &amp; Jerry <br>");
        assert!(!removed);
        let (_, removed) = rules.clean("<a href=\"https://x.example/\">x</a>").unwrap();
        assert!(!removed);
        let (_, removed) = rules
            .clean("<a href=\"javascript:alert(1)\">x</a>")
            .unwrap();
        assert!(removed);
        assert_eq!(rules.clean("<p>fine</p>"), None);
    }

    #[test]
    fn json_pointers_clean_their_strings_and_leave_the_document_as_written() {
        let rules = rules(&[], &["/post/body", "/tags", "/a~1b"]);
        let doc = br#"{ "post" : {"title": "<script>x</script>", "body": "hi<script>alert(1)</script>",
            "body": "<img src=x onerror=alert(1)>ok"}, "tags": ["<b>a</b>", {"t": "<i onclick=x>b</i>"}],
            "a/b": "\u003cscript\u003e1\u003c/script\u003e2", "n": 1.5e3 }"#;
        let cleaned = clean_json(doc, &rules).unwrap();
        let out = String::from_utf8(cleaned.body.unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{ "post" : {"title": "<script>x</script>", "body": "hi",
            "body": "ok"}, "tags": ["<b>a</b>", {"t": "<i>b</i>"}],
            "a/b": "2", "n": 1.5e3 }"#
        );
        let flagged: Vec<_> = cleaned.flagged.into_iter().collect();
        assert_eq!(flagged, ["/a~1b", "/post/body", "/tags"]);
        let index = rules_for_index();
        let cleaned = clean_json(
            br#"[{"c":"<script>1</script>"},{"c":"<script>2</script>x"}]"#,
            &index,
        )
        .unwrap();
        assert_eq!(
            cleaned.body.unwrap(),
            br#"[{"c":"<script>1</script>"},{"c":"x"}]"#
        );
        let err = clean_json(b"{\"post\": {\"body\": \"<script>\"},}", &rules).unwrap_err();
        assert_eq!(err.rule, "rich-text-json-invalid");
    }

    /// What cleaning at `pointer` should give, computed on the parsed document instead of
    /// its bytes.
    fn expected(doc: &[u8], pointer: &str, rules: &Rules) -> serde_json::Value {
        fn clean_all(value: &mut serde_json::Value, rules: &Rules) {
            match value {
                serde_json::Value::String(text) => {
                    if let Some((clean, _)) = rules.clean(text) {
                        *text = clean;
                    }
                }
                serde_json::Value::Array(items) => {
                    items.iter_mut().for_each(|v| clean_all(v, rules))
                }
                serde_json::Value::Object(map) => {
                    map.values_mut().for_each(|v| clean_all(v, rules))
                }
                _ => {}
            }
        }
        let mut value: serde_json::Value = serde_json::from_slice(doc).unwrap();
        if let Some(target) = value.pointer_mut(pointer) {
            clean_all(target, rules);
        }
        value
    }

    #[test]
    fn the_byte_walk_agrees_with_a_parsed_document() {
        let docs: [&[u8]; 5] = [
            br#"{"a": {"b\"c": "<script>1</script>x", "d": ["<i onclick=1>i</i>", 2, true, null, {}, []]}}"#,
            br#" [ "<b>0</b>" , { "k" : -1.5E+3 , "a/b" : { "~" : "\u003cimg src=x onerror=1\u003e\\\"" } } ] "#,
            br#"{"a":{"b\"c":{"x":"<script>\"}</script>y"}},"z":"<script>z</script>"}"#,
            br#"{"": {"": "<script>e</script>"}, "a": [[["<script>deep</script>d"]]]}"#,
            "{\"a\":{\"d\":[\"caf\u{e9} <em>ok</em><script>x</script>\"]}}".as_bytes(),
        ];
        let pointers = [
            "/a/b\"c",
            "/a/d",
            "/a/d/0",
            "/1/a~1b/~0",
            "/0",
            "/a",
            "",
            "/",
            "//",
            "/a/0/0/0",
            "/z",
            "/nope/x",
        ];
        for doc in docs {
            for pointer in pointers {
                // The empty pointer is the whole document (the config only takes ones with /).
                let mut rules = rules(&[], &["/"]);
                rules.pointers = vec![(pointer.to_string(), pointer_tokens(pointer))];
                let cleaned = clean_json(doc, &rules).unwrap();
                let out = cleaned.body.unwrap_or_else(|| doc.to_vec());
                let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let shown = String::from_utf8_lossy(doc);
                assert_eq!(got, expected(doc, pointer, &rules), "{pointer} in {shown}");
            }
        }
    }

    fn rules_for_index() -> Rules {
        rules(&[], &["/1/c"])
    }

    #[tokio::test]
    async fn multipart_text_parts_are_cleaned_and_files_left_alone() {
        let rules = rules(&["bio"], &[]);
        let mut body = Vec::new();
        let parts = [
            ("bio", None, None, &b"<p>me</p><script>x</script>"[..]),
            ("bio_raw", None, None, &b"<script>x</script>"[..]),
            (
                "bio",
                Some("bio.html"),
                Some("text/html"),
                &b"<script>file</script>"[..],
            ),
        ];
        for (name, file_name, content_type, data) in parts {
            inspect::write_part(
                &mut body,
                "XX",
                &Part {
                    name,
                    file_name,
                    content_type,
                    data,
                },
            );
        }
        inspect::write_end(&mut body, "XX");
        let cleaned = clean_multipart(Bytes::from(body.clone()), "XX", &rules)
            .await
            .unwrap();
        let out = String::from_utf8(cleaned.body.unwrap()).unwrap();
        let expected = String::from_utf8(body).unwrap().replacen(
            "<p>me</p><script>x</script>",
            "<p>me</p>",
            1,
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn dangerous_allow_lists_are_refused() {
        let mut options = RichTextOptions {
            fields: vec!["c".into()],
            ..Default::default()
        };
        assert!(options.validate().is_ok());
        options.allow.tags.insert("iframe".into());
        assert_eq!(options.validate().unwrap_err().setting, "allow.tags");
        options.allow.tags.remove("iframe");
        options
            .allow
            .attributes
            .insert("img".into(), ["src".into(), "onError".into()].into());
        let err = options.validate().unwrap_err();
        assert!(
            err.message.contains("`onerror` on `img`"),
            "{}",
            err.message
        );
        options.allow.attributes.clear();
        options.json = vec!["post/body".into()];
        assert_eq!(options.validate().unwrap_err().setting, "json");
        assert!(RichTextOptions::default().validate().is_err());
    }
}
