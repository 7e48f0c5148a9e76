//! Strict request checks that hyper's parser leaves to us: framing that two parsers could read
//! differently, the request target's length, and the body's declared size.
//!
//! Framing hyper accepts and repairs, and heads no parser can read, are flagged by the
//! [`crate::framing`] watcher and refused by its layer before a request gets here. hyper itself refuses malformed chunked bodies and
//! `Content-Length` values that are not plain digits or disagree; the gateway's tests pin what
//! it does. The request forwarded is the one hyper parsed, re-encoded, so the upstream sees the
//! framing the gateway judged.

use http::{HeaderMap, Request, header};
use palisade_guard::{Rejection, RejectionKind};

use crate::options::Limits;

/// The first rule `req` breaks, if any.
pub fn check<B>(req: &Request<B>, limits: &Limits) -> Result<(), Rejection> {
    check_framing(req.headers())?;
    // The framing watch limits HTTP/1 heads; an HTTP/2 header list is checked here, where its
    // refusal gets the gateway's page (HTTP/2 itself refuses only lists of twice the limit).
    if req.headers().len() > limits.max_headers {
        return Err(Rejection::new(
            RejectionKind::HeadersTooLarge,
            "max-headers",
        ));
    }
    if req.version() == http::Version::HTTP_2 && header_list_size(req) > limits.max_header_bytes {
        return Err(Rejection::new(
            RejectionKind::HeadersTooLarge,
            "max-header-bytes",
        ));
    }
    // `OPTIONS *` and CONNECT's `host:port` name no resource of the application.
    if !req.uri().path().starts_with('/') {
        return Err(Rejection::new(
            RejectionKind::Malformed,
            "target-not-a-path",
        ));
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(Rejection::new(RejectionKind::UriTooLong, "max-uri-bytes"));
    }
    if declared_length(req.headers()).is_some_and(|len| len > limits.max_body_bytes) {
        return Err(Rejection::new(
            RejectionKind::BodyTooLarge,
            "max-body-bytes",
        ));
    }
    Ok(())
}

fn check_framing(headers: &HeaderMap) -> Result<(), Rejection> {
    let ambiguous = |rule| Err(Rejection::new(RejectionKind::AmbiguousFraming, rule));
    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let encodings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !lengths.is_empty() && !encodings.is_empty() {
        return ambiguous("content-length-with-transfer-encoding");
    }
    match encodings.as_slice() {
        [] => {}
        [only] if only.as_bytes().eq_ignore_ascii_case(b"chunked") => {}
        _ => return ambiguous("transfer-encoding-not-chunked"),
    }
    match lengths.as_slice() {
        [] => Ok(()),
        [only] if is_length(only.as_bytes()) => Ok(()),
        _ => ambiguous("content-length-invalid"),
    }
}

/// The size of the request's header list as HTTP/2 counts it (RFC 9113 section 6.5.2: each
/// field's name and value plus 32), with the target.
fn header_list_size<B>(req: &Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    fields + req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// One to nineteen ASCII digits: no sign, no hex, no list, no spaces.
pub(crate) fn is_length(bytes: &[u8]) -> bool {
    (1..=19).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_digit)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pairs: &[(&'static str, &'static str)]) -> Option<&'static str> {
        let mut req = Request::post("/").body(()).unwrap();
        for (name, value) in pairs {
            req.headers_mut().append(*name, value.parse().unwrap());
        }
        let rule = check(&req, &Limits::default()).err().map(|r| r.rule);
        rule.map(|rule| match rule {
            std::borrow::Cow::Borrowed(rule) => rule,
            std::borrow::Cow::Owned(rule) => panic!("strict rules are fixed names, not {rule}"),
        })
    }

    #[test]
    fn framing_must_be_unambiguous() {
        assert_eq!(rule(&[("content-length", "5")]), None);
        assert_eq!(rule(&[("transfer-encoding", "Chunked")]), None);
        let both = [("content-length", "5"), ("transfer-encoding", "chunked")];
        assert_eq!(rule(&both), Some("content-length-with-transfer-encoding"));
        for te in [
            "chunked, identity",
            "identity",
            "gzip, chunked",
            "chunked;x",
        ] {
            let got = rule(&[("transfer-encoding", te)]);
            assert_eq!(got, Some("transfer-encoding-not-chunked"), "{te}");
        }
        let twice = [
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(rule(&twice), Some("transfer-encoding-not-chunked"));
        for cl in ["+5", "0x5", "5, 5", "5 ", "-1", "99999999999999999999"] {
            assert_eq!(
                rule(&[("content-length", cl)]),
                Some("content-length-invalid"),
                "{cl}"
            );
        }
    }

    #[test]
    fn only_paths_are_forwarded() {
        for target in ["*", "example.com:443"] {
            let req = Request::options(target).body(()).unwrap();
            let rule = check(&req, &Limits::default()).err().map(|r| r.rule);
            assert_eq!(rule.as_deref(), Some("target-not-a-path"), "{target}");
        }
        let absolute = Request::get("http://example.com/a?b").body(()).unwrap();
        assert!(check(&absolute, &Limits::default()).is_ok());
    }

    #[test]
    fn too_many_headers_are_refused_whatever_the_protocol() {
        let mut req = Request::get("/").body(()).unwrap();
        let limits = Limits::default();
        for n in 0..limits.max_headers {
            let name = http::HeaderName::try_from(format!("x-{n}")).unwrap();
            req.headers_mut().insert(name, "v".parse().unwrap());
        }
        assert!(check(&req, &limits).is_ok());
        req.headers_mut().insert("x-one-more", "v".parse().unwrap());
        assert_eq!(
            check(&req, &limits).err().map(|r| r.rule).as_deref(),
            Some("max-headers")
        );
    }

    #[test]
    fn declared_bodies_over_the_limit_are_refused() {
        assert_eq!(
            rule(&[("content-length", "10485761")]),
            Some("max-body-bytes")
        );
        assert_eq!(rule(&[("content-length", "10485760")]), None);
    }
}
