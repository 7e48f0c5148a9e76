//! The normalised form of a request: each value decoded once more (percent-encoding), put in
//! Unicode NFKC and stripped of BOMs and zero-width characters; Base64 values decoded beside
//! themselves; multipart bodies rewritten with one plain quoted name and filename per part (a
//! part's content is not percent-decoded: form-data is raw bytes).
//!
//! The engine sees the request as received first; this form is inspected as well when it
//! differs, so obfuscation that the application would undo itself does not hide a payload.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use unicode_normalization::UnicodeNormalization;

use crate::RequestView;

/// The name under which decoded Base64 values are added to the query.
pub const BASE64_ARG: &str = "palisade-base64";

/// The request's normalised form, or `None` when it is the same as received.
pub fn normalized(request: &RequestView) -> Option<RequestView> {
    let mut found = Found::default();
    let uri = normalized_uri(&request.uri, &mut found);
    let content_type = header(request, "content-type").unwrap_or_default();
    let body = normalized_body(&request.body, &content_type, &mut found);
    let headers: Vec<(Bytes, Bytes)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), normalized_header(name, value, &mut found)))
        .map(|(name, value)| {
            let fixed = name.eq_ignore_ascii_case(b"content-length");
            (
                name,
                if fixed {
                    Bytes::from(body.len().to_string())
                } else {
                    value
                },
            )
        })
        .collect();
    if !found.changed && found.decoded.is_empty() {
        return None;
    }
    let uri = with_decoded(uri, &found.decoded);
    Some(RequestView {
        uri,
        headers,
        body,
        ..request.clone()
    })
}

/// What normalising found: Base64 texts, and whether any value changed.
#[derive(Default)]
struct Found {
    decoded: Vec<String>,
    changed: bool,
}

impl Found {
    /// [`value`], noting whether it changed anything.
    fn value(&mut self, raw: &[u8]) -> Vec<u8> {
        let normal = value(raw);
        self.changed |= normal != raw;
        normal
    }

    /// [`text`], noting whether it changed anything.
    fn text(&mut self, raw: &str) -> String {
        let normal = text(raw);
        self.changed |= normal != raw;
        normal
    }
}

/// Text with BOMs and zero-width characters removed, then in NFKC.
pub fn text(value: &str) -> String {
    value.chars().filter(|c| !is_invisible(*c)).nfkc().collect()
}

/// Characters that render as nothing and that attackers put inside keywords (`SEL\u{200b}ECT`).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// One more percent-decoding, then [`text`] when the result is UTF-8.
pub fn value(raw: &[u8]) -> Vec<u8> {
    let decoded: Cow<[u8]> = percent_decode(raw).into();
    match std::str::from_utf8(&decoded) {
        Ok(text_value) => text(text_value).into_bytes(),
        Err(_) => decoded.into_owned(),
    }
}

/// The text a Base64 value stands for, when it is one and decodes to readable text.
pub fn base64_text(value: &[u8]) -> Option<String> {
    let trimmed: &[u8] = value.trim_ascii();
    let alphabet =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
    if trimmed.len() < 8 || !trimmed.iter().all(alphabet) {
        return None;
    }
    let unpadded = std::str::from_utf8(trimmed).ok()?.trim_end_matches('=');
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let bytes = engines.iter().find_map(|e| e.decode(unpadded).ok())?;
    let decoded = String::from_utf8(bytes).ok()?;
    let readable = decoded
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n'));
    let plain_word = decoded.chars().all(char::is_alphanumeric);
    (readable && !plain_word && decoded.chars().count() >= 4).then(|| text(&decoded))
}

fn header(request: &RequestView, name: &str) -> Option<String> {
    request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The path decoded once more; the query's names and values decoded as the application would,
/// then once more, and encoded again so that the engine's own decoding yields them.
fn normalized_uri(uri: &str, found: &mut Found) -> String {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let app_path: Vec<u8> = percent_decode(path.as_bytes()).collect();
    let mut out = encode_path(&found.value(&app_path));
    for segment in path.split('/') {
        found.decoded.extend(base64_text(segment.as_bytes()));
    }
    if uri.contains('?') {
        out.push('?');
        out.push_str(&normalized_form(query.as_bytes(), found));
    }
    out
}

fn encode_path(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    text.split('/')
        .map(|segment| utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `a=1&b=2` form data, each name and value normalised.
fn normalized_form(form: &[u8], found: &mut Found) -> String {
    let mut pairs = Vec::new();
    for pair in form.split(|b| *b == b'&') {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        let name = form_decode(parts.next().unwrap_or_default());
        let raw_value = parts.next();
        let app_value = form_decode(raw_value.unwrap_or_default());
        found.decoded.extend(base64_text(&app_value));
        let name = encode(&found.value(&name));
        pairs.push(match raw_value {
            Some(_) => format!("{name}={}", encode(&found.value(&app_value))),
            None => name,
        });
    }
    pairs.join("&")
}

/// Percent-decoding with `+` as a space, as forms are read.
fn form_decode(raw: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_decode(&spaced).collect()
}

fn encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, NON_ALPHANUMERIC).to_string()
}

/// Adds the decoded Base64 values to the query, one argument each.
fn with_decoded(mut uri: String, decoded: &[String]) -> String {
    for text in decoded {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str(BASE64_ARG);
        uri.push('=');
        uri.push_str(&utf8_percent_encode(text, NON_ALPHANUMERIC).to_string());
    }
    uri
}

/// A header value normalised; cookies value by value.
fn normalized_header(name: &[u8], raw: &Bytes, found: &mut Found) -> Bytes {
    if name.eq_ignore_ascii_case(b"content-type") || name.eq_ignore_ascii_case(b"content-length") {
        return raw.clone();
    }
    if name.eq_ignore_ascii_case(b"authorization") {
        // Basic credentials are Base64 by design; decoding them would only inspect a secret.
        return Bytes::from(found.value(raw));
    }
    if name.eq_ignore_ascii_case(b"cookie") {
        let mut cookies = Vec::new();
        for cookie in raw.split(|b| *b == b';') {
            let cookie = cookie.trim_ascii();
            let (name, raw_value) = match cookie.iter().position(|b| *b == b'=') {
                Some(at) => (&cookie[..at], &cookie[at + 1..]),
                None => (cookie, &[][..]),
            };
            found.decoded.extend(base64_text(raw_value));
            let mut normal = found.value(name);
            normal.push(b'=');
            // The rules decode cookie values themselves (`t:urlDecodeUni`): no encoding back.
            normal.extend(found.value(raw_value));
            cookies.push(normal);
        }
        return Bytes::from(cookies.join(&b"; "[..]));
    }
    found.decoded.extend(base64_text(raw));
    Bytes::from(found.value(raw))
}

fn normalized_body(body: &Bytes, content_type: &str, found: &mut Found) -> Bytes {
    if body.is_empty() {
        return body.clone();
    }
    let lower = content_type.to_ascii_lowercase();
    if lower.starts_with("application/x-www-form-urlencoded") {
        return Bytes::from(normalized_form(body, found));
    }
    if lower.starts_with("multipart/") {
        if let Some(boundary) = boundary(content_type) {
            return multipart(body, &boundary, found).map_or_else(|| body.clone(), Bytes::from);
        }
        return body.clone();
    }
    if lower.contains("json")
        && let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body)
    {
        normalize_json(&mut json, found);
        return Bytes::from(json.to_string());
    }
    match std::str::from_utf8(body) {
        Ok(_) => Bytes::from(found.value(body)),
        Err(_) => body.clone(),
    }
}

fn normalize_json(json: &mut serde_json::Value, found: &mut Found) {
    match json {
        serde_json::Value::String(s) => {
            found.decoded.extend(base64_text(s.as_bytes()));
            *s = String::from_utf8_lossy(&found.value(s.as_bytes())).into_owned();
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| normalize_json(v, found)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| normalize_json(v, found)),
        _ => {}
    }
}

/// The `boundary` parameter of a multipart content type.
fn boundary(content_type: &str) -> Option<String> {
    let params = parameters(content_type);
    params
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value)
        .filter(|b| !b.is_empty())
}

/// `type; a=1; b="two"` → `[(a, 1), (b, two)]`, quotes and backslash escapes undone.
fn parameters(header: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = header.split_once(';').map_or("", |(_, r)| r);
    loop {
        rest = rest.trim_start_matches([';', ' ', '\t']);
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let mut val = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.push((name, val));
    }
    params
}

/// RFC 5987 `filename*=UTF-8''%e2%82%ac.txt` → `€.txt`.
fn extended_value(raw: &str) -> String {
    let encoded = raw.splitn(3, '\'').nth(2).unwrap_or(raw);
    String::from_utf8_lossy(&percent_decode(encoded.as_bytes()).collect::<Vec<_>>()).into_owned()
}

/// A multipart body again, every part with one plain quoted name and filename (the
/// `filename*` form decoded, the last of several taken, both decoded once more) and its text
/// content in NFKC without invisible characters. A part's content is not percent-decoded:
/// form-data carries raw bytes (RFC 7578), so no application sees it decoded, and decoding it
/// only turns benign text like `john%2Bor%40var.es` into a false positive.
fn multipart(body: &[u8], boundary: &str, found: &mut Found) -> Option<Vec<u8>> {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut pieces = split(body, delimiter.as_bytes()).into_iter().skip(1);
    for piece in pieces.by_ref() {
        if piece.starts_with(b"--") {
            break;
        }
        let piece = piece
            .strip_prefix(b"\r\n")
            .or_else(|| piece.strip_prefix(b"\n"))?;
        let (head, content) = split_head(piece)?;
        let content = content
            .strip_suffix(b"\r\n")
            .or_else(|| content.strip_suffix(b"\n"))
            .unwrap_or(content);
        let head = String::from_utf8_lossy(head);
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.lines() {
            let Some((field, rest)) = line.split_once(':') else {
                continue;
            };
            if field.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(rest.trim().to_string());
            }
            if !field.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for (param, val) in parameters(rest) {
                match param.to_ascii_lowercase().as_str() {
                    "name" => name = Some(val),
                    "filename" | "filename*" if filename.is_some() => {
                        // Several filenames: parsers disagree on which one counts.
                        found.changed = true;
                        filename = Some(if param.ends_with('*') {
                            extended_value(&val)
                        } else {
                            val
                        });
                    }
                    "filename" => filename = Some(val),
                    "filename*" => {
                        found.changed = true;
                        filename = Some(extended_value(&val));
                    }
                    _ => {}
                }
            }
        }
        out.extend_from_slice(format!("{delimiter}\r\n").as_bytes());
        let mut disposition = format!(
            "Content-Disposition: form-data; name=\"{}\"",
            text_value_quoted(&name.unwrap_or_default(), found)
        );
        if let Some(filename) = filename {
            found.decoded.extend(base64_text(filename.as_bytes()));
            let quoted = text_value_quoted(&filename, found);
            disposition.push_str(&format!("; filename=\"{quoted}\""));
        }
        out.extend_from_slice(disposition.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        match std::str::from_utf8(content) {
            Ok(content_text) => {
                found.decoded.extend(base64_text(content));
                out.extend(found.text(content_text).into_bytes());
            }
            Err(_) => out.extend_from_slice(content),
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("{delimiter}--\r\n").as_bytes());
    Some(out)
}

/// A name or filename normalised and escaped for a quoted parameter.
fn text_value_quoted(raw: &str, found: &mut Found) -> String {
    let normal = String::from_utf8_lossy(&found.value(raw.as_bytes())).into_owned();
    normal
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(['\r', '\n'], " ")
}

fn split<'a>(text: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at + delimiter.len() <= text.len() {
        if &text[at..at + delimiter.len()] == delimiter {
            pieces.push(&text[start..at]);
            at += delimiter.len();
            start = at;
        } else {
            at += 1;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

fn split_head(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = piece
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4));
    let lf = piece
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| (at, 2));
    let (at, len) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b)?,
    };
    Some((&piece[..at], &piece[at + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(uri: &str, headers: &[(&str, &str)], body: &str) -> RequestView {
        RequestView {
            method: "POST".into(),
            uri: uri.into(),
            version: "1.1",
            headers: headers
                .iter()
                .map(|(n, v)| (Bytes::from(n.to_string()), Bytes::from(v.to_string())))
                .collect(),
            body: Bytes::from(body.to_string()),
            client: "127.0.0.1:1".parse().unwrap(),
            server: "127.0.0.1:2".parse().unwrap(),
        }
    }

    fn decode_all(text: &str) -> String {
        String::from_utf8(form_decode(text.as_bytes())).unwrap()
    }

    #[test]
    fn zero_width_characters_and_boms_go_and_text_is_nfkc() {
        assert_eq!(text("SEL\u{200b}ECT\u{feff} 1"), "SELECT 1");
        // Fullwidth letters and the ligature fold to ASCII under NFKC.
        assert_eq!(text("ＳＥＬＥＣＴ \u{fb01}le"), "SELECT file");
        assert_eq!(text("plain"), "plain");
    }

    #[test]
    fn values_are_decoded_once_more() {
        assert_eq!(value(b"%27%20OR%201=1"), b"' OR 1=1");
        // Twice encoded: one step only.
        assert_eq!(value(b"%2527"), b"%27");
        assert_eq!(value(b"SEL%E2%80%8BECT"), b"SELECT");
    }

    #[test]
    fn a_query_keeps_its_structure_and_its_values_come_out_decoded_by_the_engine() {
        let request = view("/find?q=SEL%25E2%2580%258BECT&x", &[], "");
        let normal = normalized(&request).unwrap();
        let (_, query) = normal.uri.split_once('?').unwrap();
        let pairs: Vec<&str> = query.split('&').collect();
        assert_eq!(pairs.len(), 2, "{query}");
        assert_eq!(decode_all(pairs[0]), "q=SELECT");
        assert_eq!(pairs[1], "x");
        assert!(normalized(&view("/plain?a=b", &[], "")).is_none());
        // Spelling alone (a dot, a plus for a space) is no change: no second inspection.
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let plain = view("/index.html?q=a+b", &form, "name=Ada+Lovelace&x=%2C");
        assert!(normalized(&plain).is_none());
    }

    #[test]
    fn base64_values_are_decoded_beside_themselves() {
        // "<script>alert(1)</script>"
        let encoded = "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==";
        assert_eq!(
            base64_text(encoded.as_bytes()).as_deref(),
            Some("<script>alert(1)</script>")
        );
        let request = view(&format!("/?comment={encoded}"), &[], "");
        let normal = normalized(&request).unwrap();
        assert!(
            decode_all(&normal.uri).contains("palisade-base64=<script>alert(1)</script>"),
            "{}",
            normal.uri
        );
        // Words, tokens and binary are no Base64 text.
        assert_eq!(base64_text(b"username"), None);
        assert_eq!(base64_text(b"3q2+7w=="), None);
        assert_eq!(base64_text(b"short"), None);
    }

    #[test]
    fn form_bodies_and_cookies_are_normalised() {
        let request = view(
            "/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", "a=%253Cscript%253E; b=1"),
                ("content-length", "17"),
            ],
            "c=%253Cscript%253E",
        );
        let normal = normalized(&request).unwrap();
        assert_eq!(
            decode_all(&String::from_utf8_lossy(&normal.body)),
            "c=<script>"
        );
        let cookie = &normal.headers[1].1;
        assert_eq!(
            decode_all(&String::from_utf8_lossy(cookie)),
            "a=<script>; b=1"
        );
        assert_eq!(normal.headers[2].1, normal.body.len().to_string());
    }

    #[test]
    fn every_filename_form_becomes_one_plain_filename() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"f\"; \
                    filename*=UTF-8''shell%2Ephp\r\nContent-Type: text/plain\r\n\r\n<?php\r\n\
                    --XX\r\nContent-Disposition: form-data; name=t; filename=\"a\\\"b.txt\"\r\n\r\n\
                    hi\r\n--XX--\r\n";
        let request = view(
            "/up",
            &[("content-type", "multipart/form-data; boundary=XX")],
            body,
        );
        let normal = normalized(&request).unwrap();
        let out = String::from_utf8_lossy(&normal.body);
        assert!(
            out.contains("name=\"f\"; filename=\"shell.php\"\r\n"),
            "{out}"
        );
        assert!(
            out.contains("name=\"t\"; filename=\"a\\\"b.txt\"\r\n"),
            "{out}"
        );
        assert!(out.ends_with("--XX--\r\n"), "{out}");
    }

    #[test]
    fn json_strings_are_normalised() {
        let request = view(
            "/api",
            &[("content-type", "application/json")],
            r#"{"q": ["1%27 OR 1=1"], "n": 3}"#,
        );
        let normal = normalized(&request).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&normal.body).unwrap();
        assert_eq!(json["q"][0], "1' OR 1=1");
        assert_eq!(json["n"], 3);
    }
}
