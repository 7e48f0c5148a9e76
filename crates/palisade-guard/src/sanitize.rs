//! HTML encoding and sanitising for Rust applications that render their own pages: encoding
//! for text and attribute values (html-escape), and an allow-list sanitiser for rich text
//! (ammonia) whose lists are plain data, so that they can come from a config file.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
};

use serde::Deserialize;

/// `text` made safe inside an element or a quoted attribute value: `&`, `<`, `>`, `"`, `'` and
/// `/` become character references, everything else stays as it is.
pub fn encode(text: &str) -> Cow<'_, str> {
    html_escape::encode_safe(text)
}

/// `text` made safe as an unquoted attribute value (every character that could end it is
/// encoded). Prefer quoted attributes and [`encode`].
pub fn encode_unquoted_attribute(text: &str) -> Cow<'_, str> {
    html_escape::encode_unquoted_attribute(text)
}

/// What rich text may keep; everything else is removed (elements such as `<script>` with their
/// content, other elements keeping their text). Every field has a conservative default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SanitizeOptions {
    /// Elements kept.
    pub tags: BTreeSet<String>,
    /// Attributes kept, by element.
    pub attributes: BTreeMap<String, BTreeSet<String>>,
    /// URL schemes a link or image may use; relative URLs are kept.
    pub url_schemes: BTreeSet<String>,
    /// The `rel` every link gets, so that a link out neither passes a referrer nor leaks the
    /// opener; empty for none.
    pub link_rel: String,
}

impl Default for SanitizeOptions {
    fn default() -> Self {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        Self {
            tags: set(&[
                "a",
                "b",
                "blockquote",
                "br",
                "code",
                "em",
                "h2",
                "h3",
                "h4",
                "i",
                "li",
                "ol",
                "p",
                "pre",
                "s",
                "strong",
                "sub",
                "sup",
                "u",
                "ul",
            ]),
            attributes: [("a".to_string(), set(&["href", "title"]))].into(),
            url_schemes: set(&["https", "http", "mailto"]),
            link_rel: "noopener noreferrer nofollow".into(),
        }
    }
}

/// A sanitiser for one allow-list.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    options: SanitizeOptions,
}

impl Sanitizer {
    /// A sanitiser keeping what `options` allows.
    pub fn new(options: SanitizeOptions) -> Self {
        Self { options }
    }

    /// `html` with everything the allow-list does not name removed, as well-formed HTML.
    pub fn clean(&self, html: &str) -> String {
        let options = &self.options;
        let tags: HashSet<&str> = options.tags.iter().map(String::as_str).collect();
        let attributes: HashMap<&str, HashSet<&str>> = options
            .attributes
            .iter()
            .map(|(tag, names)| (tag.as_str(), names.iter().map(String::as_str).collect()))
            .collect();
        let schemes: HashSet<&str> = options.url_schemes.iter().map(String::as_str).collect();
        let link_rel = (!options.link_rel.is_empty()).then_some(options.link_rel.as_str());
        ammonia::Builder::default()
            .tags(tags)
            .tag_attributes(attributes)
            .generic_attributes(HashSet::new())
            .url_schemes(schemes)
            .link_rel(link_rel)
            .clean(html)
            .to_string()
    }
}

impl Default for Sanitizer {
    fn default() -> Self {
        Self::new(SanitizeOptions::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_leaves_no_markup_or_way_out_of_an_attribute() {
        let hostile = r#"</p><script>alert(1)</script>" onmouseover='x' a&b"#;
        let encoded = encode(hostile);
        assert!(!encoded.contains(['<', '>', '"', '\'']), "{encoded}");
        assert!(encoded.contains("&amp;b"), "{encoded}");
        assert_eq!(encode("plain text"), "plain text");
        let unquoted = encode_unquoted_attribute("a b=c>");
        assert!(!unquoted.contains([' ', '=', '>']), "{unquoted}");
    }

    #[test]
    fn rich_text_keeps_what_the_list_allows_and_nothing_that_runs() {
        let sanitizer = Sanitizer::default();
        let dirty = r#"<p onclick="steal()">Hi <b>there</b><script>alert(1)</script>
            <a href="javascript:alert(1)">x</a> <a href="https://example.org/" target="_top">ok</a>
            <img src=x onerror=alert(1)><iframe src="https://evil.example"></iframe></p>"#;
        let clean = sanitizer.clean(dirty);
        assert!(clean.starts_with("<p>Hi <b>there</b>"), "{clean}");
        for gone in [
            "script",
            "alert",
            "onclick",
            "javascript",
            "onerror",
            "iframe",
            "<img",
            "_top",
        ] {
            assert!(!clean.contains(gone), "{gone} left in {clean}");
        }
        assert!(
            clean.contains(
                r#"<a href="https://example.org/" rel="noopener noreferrer nofollow">ok</a>"#
            ),
            "{clean}"
        );
    }

    #[test]
    fn the_lists_come_from_options() {
        let options: SanitizeOptions = serde_json::from_str(
            r#"{"tags": ["p", "img"], "attributes": {"img": ["src", "alt"]},
                "url_schemes": ["https"], "link_rel": ""}"#,
        )
        .unwrap();
        let clean = Sanitizer::new(options).clean(
            r#"<p><img src="https://i.example/a.png" alt="a"><img src="http://i.example/b.png"><b>bold</b></p>"#,
        );
        assert_eq!(
            clean,
            r#"<p><img src="https://i.example/a.png" alt="a"><img>bold</p>"#
        );
    }
}
