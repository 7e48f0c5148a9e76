//! Settings per path prefix: the longest prefix that ends on a segment boundary wins, matched
//! on the normalised path (the one rate limits match too), so that no spelling of a path can
//! dodge its route's settings.

/// The settings of each route prefix, longest first, and those of every other path.
#[derive(Debug, Clone)]
pub(crate) struct Routes<T> {
    prefixed: Vec<(String, T)>,
    default: T,
}

impl<T> Routes<T> {
    /// `default` for every path.
    pub(crate) fn new(default: T) -> Self {
        Self {
            prefixed: Vec::new(),
            default,
        }
    }

    /// These routes with `settings` for the paths under `prefix`.
    pub(crate) fn with(mut self, prefix: &str, settings: T) -> Self {
        self.prefixed
            .push((normalize_path(prefix, false), settings));
        self.prefixed
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        self
    }

    /// The settings for `path`: those of the longest prefix that is `path` itself or ends
    /// where one of its segments ends, both normalised ([`normalize_path`]), so that
    /// `/%61dmin`, `/./admin` and `//admin` cannot dodge the settings of `/admin`.
    pub(crate) fn for_path(&self, path: &str) -> &T {
        let normal = normalize_path(path, false);
        let path = normal.as_str();
        let matches = |prefix: &str| match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
            None => false,
        };
        self.prefixed
            .iter()
            .find(|(prefix, _)| matches(prefix))
            .map_or(&self.default, |(_, settings)| settings)
    }
}

/// The path routes and rate limits match: percent-decoded once, `.` and `..` segments resolved, repeated and
/// trailing slashes dropped, and lower case when asked.
pub fn normalize_path(path: &str, case_insensitive: bool) -> String {
    let decoded = percent_decode(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut normal = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if case_insensitive {
        normal.make_ascii_lowercase();
    }
    normal
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
