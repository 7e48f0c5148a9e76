//! Settings per path prefix: the longest prefix that ends on a segment boundary wins, matched
//! on the path with percent-encoded unreserved characters decoded.

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
        self.prefixed.push((prefix.to_string(), settings));
        self.prefixed
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        self
    }

    /// The settings for `path`: those of the longest prefix that is `path` itself or ends
    /// where one of its segments ends. Percent-encoded unreserved characters are decoded
    /// first, so that `/%61dmin` cannot dodge the settings of `/admin`.
    pub(crate) fn for_path(&self, path: &str) -> &T {
        let decoded = decode_unreserved(path);
        let path = decoded.as_str();
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

/// `path` with every `%XX` that encodes a letter, digit, `-`, `.`, `_` or `~` decoded (RFC 3986
/// section 6.2.2.2: such URIs are equivalent); every other escape stays as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escaped {
            Some(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
}
