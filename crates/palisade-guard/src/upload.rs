//! Upload checks for `multipart/form-data` requests, per route: file count and size, the type
//! by the file's magic bytes against an allow-list and against the declared type and the file
//! name's extension, file names made safe, and an optional ClamAV scan; the application gets
//! the form rewritten from what was checked.

use std::{
    collections::BTreeSet,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body_util::BodyDataStream;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{
    Body, BoxError, BoxFuture,
    clamav::{BadClamavSetting, ClamavOptions, Clamd, Verdict, WhenUnavailable},
    inspect::{self, Part},
    reject::{Rejection, RejectionKind},
    route::Routes,
};

/// What a route accepts as uploads. Every field has a safe default: common image types, up to
/// ten files of 10 MiB each, scanned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadOptions {
    /// Accepted types: file extensions (`png`, `jpeg`, `pdf`) or media types (`image/png`) of
    /// formats recognisable by their first bytes.
    pub allow: Vec<String>,
    /// The largest file (and the largest other part of the form), in bytes or like `"5 MiB"`.
    #[serde(deserialize_with = "crate::settings::byte_count")]
    pub max_file_bytes: u64,
    /// The most files in one request.
    pub max_files: usize,
    /// Scan every file with ClamAV (`[gateway.clamav]` must then be set).
    pub scan: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            allow: ["png", "jpeg", "gif", "webp"].map(String::from).to_vec(),
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 10,
            scan: true,
        }
    }
}

/// A setting of [`UploadOptions`] that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadUploadSetting {
    /// The setting, like `allow`.
    pub setting: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Type names offered when an `allow` entry is unknown; each is one the gateway recognises.
const KNOWN_TYPES: &[&str] = &[
    "png", "jpeg", "jpg", "gif", "webp", "avif", "bmp", "tiff", "jxl", "psd", "pdf", "rtf", "epub",
    "docx", "xlsx", "pptx", "odt", "ods", "odp", "zip", "gz", "tar", "7z", "mp3", "m4a", "ogg",
    "mp4", "webm", "mov", "avi", "mkv", "woff", "ttf", "otf",
];

/// The media types an `allow` entry stands for: those the magic bytes can tell and that a
/// file name's extension can name (else no file could pass the extension check).
fn resolve(entry: &str) -> Vec<String> {
    let entry = entry.trim().to_ascii_lowercase();
    let candidates: Vec<String> = if entry.contains('/') {
        vec![entry]
    } else {
        let mimes = mime_guess::from_ext(&entry);
        mimes.iter().map(|m| m.essence_str().to_string()).collect()
    };
    candidates
        .into_iter()
        .filter(|mime| infer::is_mime_supported(mime) && has_extension(mime))
        .collect()
}

/// Whether some file name extension stands for `mime`.
fn has_extension(mime: &str) -> bool {
    mime_guess::get_mime_extensions_str(mime)
        .unwrap_or_default()
        .iter()
        .any(|ext| {
            mime_guess::from_ext(ext)
                .iter()
                .any(|m| m.essence_str() == mime)
        })
}

/// A route's upload rules, ready to apply.
#[derive(Debug)]
struct Rules {
    /// Accepted media types, as infer names them.
    allowed: BTreeSet<String>,
    /// The `allow` entries as configured, for messages.
    names: String,
    max_file_bytes: u64,
    max_files: usize,
    scan: bool,
}

impl UploadOptions {
    /// Checks the options: every `allow` entry a type the gateway recognises, limits above
    /// zero.
    pub fn validate(&self) -> Result<(), BadUploadSetting> {
        self.rules().map(|_| ())
    }

    fn rules(&self) -> Result<Rules, BadUploadSetting> {
        let bad = |setting, message: String| BadUploadSetting { setting, message };
        if self.allow.is_empty() {
            return Err(bad(
                "allow",
                "no type is allowed; list some, like allow = [\"png\", \"jpeg\", \"pdf\"]".into(),
            ));
        }
        let mut allowed = BTreeSet::new();
        for entry in &self.allow {
            let mimes = resolve(entry);
            if mimes.is_empty() {
                return Err(bad("allow", unknown_type(entry)));
            }
            allowed.extend(mimes);
        }
        if self.max_file_bytes == 0 || self.max_files == 0 {
            let setting = if self.max_files == 0 {
                "max_files"
            } else {
                "max_file_bytes"
            };
            return Err(bad(setting, "must be at least 1".into()));
        }
        Ok(Rules {
            allowed,
            names: self.allow.join(", "),
            max_file_bytes: self.max_file_bytes,
            max_files: self.max_files,
            scan: self.scan,
        })
    }
}

fn unknown_type(entry: &str) -> String {
    let lower = entry.to_ascii_lowercase();
    let closest = KNOWN_TYPES
        .iter()
        .map(|known| (strsim::levenshtein(&lower, known), *known))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    let hint = match closest {
        Some((_, known)) => format!(" Did you mean \"{known}\"?"),
        None => String::new(),
    };
    format!(
        "`{entry}` is not a file type the gateway can recognise by its content (text formats \
         such as svg, csv or txt have no magic bytes); use a name like {}.{hint}",
        KNOWN_TYPES[..6].join(", ")
    )
}

/// A file name made safe to store: the last path segment only, without control or reserved
/// characters, without leading dots (no `.htaccess`), and with only its last extension (the
/// other dots become `_`, so `shell.php.jpg` is `shell_php.jpg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanName {
    /// The name forwarded to the application.
    pub name: String,
    /// Whether the original carried a path, control characters or a leading dot: the shape
    /// of an attack rather than of a browser's upload.
    pub suspicious: bool,
}

/// The safe form of the file name a client sent.
pub fn clean_file_name(raw: &str) -> CleanName {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let suspicious =
        base.len() != raw.len() || raw.chars().any(char::is_control) || base.starts_with('.');
    let options = sanitize_filename::Options {
        windows: true,
        truncate: true,
        replacement: "",
    };
    let cleaned = sanitize_filename::sanitize_with_options(base, options);
    let trimmed = cleaned.trim_start_matches(['.', ' ']);
    let name = match trimmed.rfind('.') {
        Some(dot) => format!("{}{}", trimmed[..dot].replace('.', "_"), &trimmed[dot..]),
        None => trimmed.to_string(),
    };
    CleanName {
        name: if name.is_empty() {
            "upload".into()
        } else {
            name
        },
        suspicious,
    }
}

impl Rules {
    /// Whether a file with these bytes, declared type and (clean) name may pass.
    fn check(&self, data: &[u8], declared: Option<&str>, name: &str) -> Result<(), Rejection> {
        let refuse = |rule: &'static str, detail: String| {
            Err(Rejection::new(RejectionKind::UploadRefused, rule).with_detail(detail))
        };
        let Some(detected) = infer::get(data) else {
            return refuse(
                "upload-type-unknown",
                format!(
                    "The file's type could not be recognised. Accepted here: {}.",
                    self.names
                ),
            );
        };
        let mime = detected.mime_type();
        if !self.allowed.contains(mime) {
            return refuse(
                "upload-type-not-allowed",
                format!(
                    "Files of type {mime} are not accepted here. Accepted: {}.",
                    self.names
                ),
            );
        }
        if !declared.is_some_and(|declared| agrees(mime, declared)) {
            return refuse(
                "upload-declared-type-mismatch",
                format!("The file's declared type does not match its content ({mime})."),
            );
        }
        let extension = name.rsplit_once('.').map(|(_, ext)| ext).unwrap_or("");
        if !mime_guess::from_ext(extension)
            .iter()
            .any(|m| m.essence_str() == mime)
        {
            return refuse(
                "upload-extension-mismatch",
                format!("The file name \"{name}\" does not match its content ({mime})."),
            );
        }
        Ok(())
    }
}

/// Whether a declared media type agrees with the detected one: the same, or another name that
/// a file of one of the detected type's extensions goes by.
fn agrees(detected: &str, declared: &str) -> bool {
    let declared = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if declared == detected {
        return true;
    }
    mime_guess::get_mime_extensions_str(detected)
        .unwrap_or_default()
        .iter()
        .any(|ext| {
            mime_guess::from_ext(ext)
                .iter()
                .any(|m| m.essence_str() == declared)
        })
}

/// What every route shares: the scanner.
#[derive(Debug)]
struct Shared {
    scanner: Option<(Clamd, WhenUnavailable)>,
}

/// Checks uploads on the routes given with [`UploadLayer::with_route`]; other requests pass
/// untouched.
#[derive(Debug, Clone)]
pub struct UploadLayer {
    routes: Arc<Routes<Option<Arc<Rules>>>>,
    shared: Arc<Shared>,
}

impl UploadLayer {
    /// A layer scanning with the clamd `clamav` names, when given; no route has rules yet.
    /// Bodies are read as they come: the server's size limit and read timeout, which the
    /// gateway puts on every request body, bound them.
    pub fn new(clamav: Option<&ClamavOptions>) -> Result<Self, BadClamavSetting> {
        let scanner = clamav
            .map(|options| Clamd::new(options).map(|clamd| (clamd, options.when_unavailable)))
            .transpose()?;
        Ok(Self {
            routes: Arc::new(Routes::new(None)),
            shared: Arc::new(Shared { scanner }),
        })
    }

    /// These rules for the paths under `prefix`.
    pub fn with_route(
        self,
        prefix: &str,
        options: &UploadOptions,
    ) -> Result<Self, BadUploadSetting> {
        let rules = options.rules()?;
        if rules.scan && self.shared.scanner.is_none() {
            return Err(BadUploadSetting {
                setting: "scan",
                message: "no virus scanner is configured; add [gateway.clamav] with clamd's \
                          socket, or set scan = false"
                    .into(),
            });
        }
        let routes = Arc::unwrap_or_clone(self.routes).with(prefix, Some(Arc::new(rules)));
        Ok(Self {
            routes: Arc::new(routes),
            shared: self.shared,
        })
    }
}

impl<S> Layer<S> for UploadLayer {
    type Service = Upload<S>;

    fn layer(&self, inner: S) -> Upload<S> {
        Upload {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`UploadLayer`].
#[derive(Debug, Clone)]
pub struct Upload<S> {
    inner: S,
    layer: UploadLayer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for Upload<S>
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
        let Some(rules) = rules else {
            return Box::pin(self.inner.call(req.map(Body::new)));
        };
        // The inner service that was polled ready goes with this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            match check(parts, body, &rules, &shared).await {
                Ok(req) => inner.call(req).await,
                Err((parts, rejection)) => {
                    Ok(rejection.respond(&parts.uri, &parts.headers, &parts.extensions))
                }
            }
        })
    }
}

type Refusal = (Parts, Rejection);

/// The request with its form rewritten from the checked parts, or why it is refused.
async fn check<B>(
    mut parts: Parts,
    body: B,
    rules: &Rules,
    shared: &Shared,
) -> Result<Request<Body>, Refusal>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let media_type = match inspect::media_type(&parts.headers) {
        Ok(media_type) => media_type,
        Err(rejection) => return Err((parts, rejection)),
    };
    if !media_type.starts_with("multipart/") {
        return Ok(Request::from_parts(parts, Body::new(body)));
    }
    if parts.headers.contains_key(http::header::CONTENT_ENCODING) {
        let rejection = Rejection::new(RejectionKind::UploadRefused, "upload-content-encoding")
            .with_detail("An upload must not be sent compressed (Content-Encoding).");
        return Err((parts, rejection));
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        let rejection = Rejection::new(RejectionKind::UploadRefused, "multipart-not-form-data")
            .with_detail("Uploads are sent as multipart/form-data with a boundary.");
        return Err((parts, rejection));
    };
    match rewrite(&parts, body, &boundary, rules, shared).await {
        Ok(form) => {
            inspect::set_length(&mut parts.headers, form.len());
            Ok(Request::from_parts(parts, Body::from(Bytes::from(form))))
        }
        Err(rejection) => Err((parts, rejection)),
    }
}

/// Reads the form part by part, checks each file, and writes the form the application gets.
async fn rewrite<B>(
    parts: &Parts,
    body: B,
    boundary: &str,
    rules: &Rules,
    shared: &Shared,
) -> Result<Vec<u8>, Rejection>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limits = multer::SizeLimit::new().per_field(rules.max_file_bytes);
    let constraints = multer::Constraints::new().size_limit(limits);
    let stream = BodyDataStream::new(body);
    let mut form = multer::Multipart::with_constraints(stream, boundary, constraints);
    let multipart_error = |err| inspect::multipart_error(err, rules.max_file_bytes);
    let (mut out, mut files) = (Vec::new(), 0);
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(Rejection::new(
                RejectionKind::Malformed,
                "multipart-part-unnamed",
            ));
        };
        let raw_file_name = field.file_name().map(str::to_owned);
        if raw_file_name.is_none() && inspect::names_a_file(field.headers()) {
            return Err(
                Rejection::new(RejectionKind::UploadRefused, "upload-filename-unreadable")
                    .with_detail("A file's name could not be read; send it as filename=\"...\"."),
            );
        }
        // The whole type, parameters too (a text part's charset); the checks use its essence.
        let content_type = field.content_type().map(|m| m.to_string());
        let data = read_part(&mut field, rules.max_file_bytes).await?;
        let file_name = match raw_file_name {
            // A file input left empty: browsers send an empty name and no bytes.
            Some(raw) if raw.is_empty() && data.is_empty() => Some(raw),
            Some(raw) => {
                files += 1;
                let file = File {
                    raw: &raw,
                    data: &data,
                    declared: content_type.as_deref(),
                };
                Some(check_file(parts, file, files, rules, shared).await?)
            }
            None => None,
        };
        let part = Part {
            name: &name,
            file_name: file_name.as_deref(),
            content_type: content_type.as_deref(),
            data: &data,
        };
        inspect::write_part(&mut out, boundary, &part);
    }
    inspect::write_end(&mut out, boundary);
    Ok(out)
}

/// A part's bytes, as they arrive.
async fn read_part(
    field: &mut multer::Field<'_>,
    max_file_bytes: u64,
) -> Result<Vec<u8>, Rejection> {
    let mut data = Vec::new();
    loop {
        let chunk = field.chunk().await;
        match chunk.map_err(|err| inspect::multipart_error(err, max_file_bytes))? {
            Some(chunk) => data.extend_from_slice(&chunk),
            None => return Ok(data),
        }
    }
}

/// One file of a form, as it arrived.
struct File<'a> {
    raw: &'a str,
    data: &'a [u8],
    declared: Option<&'a str>,
}

/// Checks the `count`th file of a form; gives its clean name.
async fn check_file(
    parts: &Parts,
    file: File<'_>,
    count: usize,
    rules: &Rules,
    shared: &Shared,
) -> Result<String, Rejection> {
    if count > rules.max_files {
        let detail = format!(
            "At most {} files can be uploaded at once here.",
            rules.max_files
        );
        return Err(
            Rejection::new(RejectionKind::BodyTooLarge, "upload-max-files").with_detail(detail),
        );
    }
    let clean = clean_file_name(file.raw);
    if clean.suspicious {
        let sanitized = Rejection::new(RejectionKind::Sanitized, "upload-filename");
        sanitized.record_as(&parts.uri, &parts.extensions, "sanitize");
    }
    rules.check(file.data, file.declared, &clean.name)?;
    if rules.scan {
        scan(parts, file.data, shared).await?;
    }
    Ok(clean.name)
}

/// Scans one file; a finding is refused with the signature as the rule, a scanner that cannot
/// answer is handled by `when_unavailable`.
async fn scan(parts: &Parts, data: &[u8], shared: &Shared) -> Result<(), Rejection> {
    let (clamd, when_unavailable) = shared
        .scanner
        .as_ref()
        .expect("routes that scan are only accepted with a scanner");
    let unavailable = Rejection::new(RejectionKind::ScanUnavailable, "clamav-unavailable");
    match clamd.scan(data).await {
        Ok(Verdict::Clean) => Ok(()),
        Ok(Verdict::Found(signature)) => Err(Rejection::new(RejectionKind::Malware, signature)),
        Err(err) => {
            tracing::warn!(target: "palisade::gateway", error = %err, "an upload could not be scanned");
            match when_unavailable {
                WhenUnavailable::Refuse => Err(unavailable),
                WhenUnavailable::DangerPass => {
                    unavailable.record_as(&parts.uri, &parts.extensions, "log");
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;
    use std::convert::Infallible;

    use super::*;

    /// The first bytes of a PNG file (signature and the start of its header chunk).
    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    fn rules(allow: &[&str]) -> Rules {
        let options = UploadOptions {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            scan: false,
            ..UploadOptions::default()
        };
        options.rules().unwrap()
    }

    #[test]
    fn file_names_lose_paths_hidden_dots_and_inner_extensions() {
        let clean = |raw| clean_file_name(raw);
        assert_eq!(
            clean("cat.png"),
            CleanName {
                name: "cat.png".into(),
                suspicious: false
            }
        );
        assert_eq!(clean("../../etc/passwd").name, "passwd");
        assert!(clean("../../etc/passwd").suspicious);
        assert_eq!(clean("C:\\Users\\me\\cat.png").name, "cat.png");
        assert_eq!(clean("shell.php.jpg").name, "shell_php.jpg");
        assert!(!clean("shell.php.jpg").suspicious);
        assert_eq!(clean(".htaccess").name, "htaccess");
        assert!(clean(".htaccess").suspicious);
        assert_eq!(clean("a\0b\r\n.png").name, "ab.png");
        assert!(clean("a\0b.png").suspicious);
        assert_eq!(clean("..").name, "upload");
        assert_eq!(clean("x/").name, "upload");
        assert_eq!(clean("con.png").name, "upload");
        assert_eq!(clean("résumé \"v2\".pdf").name, "résumé v2.pdf");
        assert!(clean(&"a".repeat(400)).name.len() <= 255);
    }

    #[test]
    fn types_come_from_the_bytes_and_must_agree_with_type_and_name() {
        let rules = rules(&["png", "jpeg"]);
        assert!(rules.check(PNG, Some("image/png"), "cat.png").is_ok());
        let rule = |result: Result<(), Rejection>| result.unwrap_err().rule.to_string();
        let php = b"<?php system($_GET['c']); ?>";
        assert_eq!(
            rule(rules.check(php, Some("image/jpeg"), "cat.jpg")),
            "upload-type-unknown"
        );
        let gif = b"GIF89a\x01\0\x01\0\x80\0\0\0\0\0\xff\xff\xff!";
        assert_eq!(
            rule(rules.check(gif, Some("image/gif"), "a.gif")),
            "upload-type-not-allowed"
        );
        assert_eq!(
            rule(rules.check(PNG, Some("image/jpeg"), "cat.png")),
            "upload-declared-type-mismatch"
        );
        assert_eq!(
            rule(rules.check(PNG, Some("application/octet-stream"), "cat.png")),
            "upload-declared-type-mismatch"
        );
        assert_eq!(
            rule(rules.check(PNG, None, "cat.png")),
            "upload-declared-type-mismatch"
        );
        assert_eq!(
            rule(rules.check(PNG, Some("image/png"), "cat.jpg")),
            "upload-extension-mismatch"
        );
        assert_eq!(
            rule(rules.check(PNG, Some("image/png"), "cat")),
            "upload-extension-mismatch"
        );
        // Any extension of the type, in any case, and parameters are fine.
        let jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
        assert!(rules.check(jpeg, Some("image/jpeg"), "me.JPEG").is_ok());
        assert!(rules.check(jpeg, Some("image/jpeg"), "me.jpg").is_ok());
        assert!(rules.check(PNG, Some("Image/PNG; x=y"), "cat.png").is_ok());
    }

    #[test]
    fn unknown_types_are_named_with_a_suggestion() {
        let options = UploadOptions {
            allow: vec!["png".into(), "jpgg".into()],
            ..UploadOptions::default()
        };
        let err = options.validate().unwrap_err();
        assert_eq!(err.setting, "allow");
        assert!(err.message.contains("`jpgg`"), "{}", err.message);
        assert!(
            err.message.contains("Did you mean \"jpeg\"?"),
            "{}",
            err.message
        );
        let svg = UploadOptions {
            allow: vec!["svg".into()],
            ..UploadOptions::default()
        };
        assert!(svg.validate().unwrap_err().message.contains("magic bytes"));
        assert!(
            UploadOptions {
                allow: vec!["application/pdf".into()],
                ..UploadOptions::default()
            }
            .validate()
            .is_ok()
        );
        let unresolved: Vec<_> = KNOWN_TYPES
            .iter()
            .filter(|k| resolve(k).is_empty())
            .collect();
        assert!(unresolved.is_empty(), "{unresolved:?} do not resolve");
    }

    /// A form body split into chunks of `size` bytes, as a client might send it.
    fn chunked(
        body: Vec<u8>,
        size: usize,
    ) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static {
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
            .chunks(size)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// Name, file name, declared type, data.
    type TestPart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

    fn form(parts: &[TestPart<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file_name, content_type, data) in parts {
            let part = Part {
                name,
                file_name: *file_name,
                content_type: *content_type,
                data,
            };
            inspect::write_part(&mut out, "b0undary", &part);
        }
        inspect::write_end(&mut out, "b0undary");
        out
    }

    async fn run(body: Vec<u8>, chunk: usize, rules: &Rules) -> Result<Vec<u8>, Rejection> {
        let shared = Shared { scanner: None };
        let (parts, ()) = Request::post("/upload").body(()).unwrap().into_parts();
        rewrite(&parts, chunked(body, chunk), "b0undary", rules, &shared).await
    }

    #[tokio::test]
    async fn a_form_split_anywhere_is_read_and_rewritten_with_clean_names() {
        let rules = rules(&["png"]);
        let mut image = PNG.to_vec();
        image.extend_from_slice(&[7u8; 3000]);
        let body = form(&[
            ("title", None, None, b"My cat"),
            (
                "photo",
                Some("../../var/www/cat.png"),
                Some("image/png"),
                &image,
            ),
        ]);
        let expected = form(&[
            ("title", None, None, b"My cat"),
            ("photo", Some("cat.png"), Some("image/png"), &image),
        ]);
        // A file input left empty passes as it came.
        let empty = form(&[
            ("title", None, None, b"x"),
            ("photo", Some(""), Some("application/octet-stream"), b""),
        ]);
        assert_eq!(run(empty.clone(), 9, &rules).await.unwrap(), empty);
        for chunk in [1, 7, 64, 100_000] {
            assert_eq!(
                run(body.clone(), chunk, &rules).await.unwrap(),
                expected,
                "{chunk}"
            );
        }
    }

    #[tokio::test]
    async fn limits_on_size_and_count_and_unreadable_names_refuse() {
        let mut rules = rules(&["png"]);
        rules.max_file_bytes = 100;
        let big = [PNG, &[0u8; 200]].concat();
        let body = form(&[("photo", Some("a.png"), Some("image/png"), &big)]);
        let err = run(body, 10, &rules).await.unwrap_err();
        assert_eq!(
            (err.kind, err.rule.as_ref()),
            (RejectionKind::BodyTooLarge, "upload-max-file-bytes")
        );
        rules.max_file_bytes = 1000;
        rules.max_files = 1;
        let body = form(&[
            ("a", Some("a.png"), Some("image/png"), PNG),
            ("b", Some("b.png"), Some("image/png"), PNG),
        ]);
        assert_eq!(
            run(body, 10, &rules).await.unwrap_err().rule,
            "upload-max-files"
        );
        let sneaky = b"--b0undary\r\nContent-Disposition: form-data; name=\"f\"; FILENAME=\"x.php\"\r\n\r\n<?php ?>\r\n--b0undary--\r\n";
        assert_eq!(
            run(sneaky.to_vec(), 5, &rules).await.unwrap_err().rule,
            "upload-filename-unreadable"
        );
        let broken =
            b"--b0undary\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nno end".to_vec();
        assert_eq!(
            run(broken, 5, &rules).await.unwrap_err().kind,
            RejectionKind::Malformed
        );
    }
}
