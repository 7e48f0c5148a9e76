//! The host name a request is for, from `Host` or the HTTP/2 `:authority`, checked for
//! agreement and normalised (lower case, no port, no trailing dot).

use http::{Request, header};

use crate::reject::{Rejection, RejectionKind};

/// The request's host name, without port; `Ok(None)` when it names none.
pub fn request_host<B>(req: &Request<B>) -> Result<Option<String>, Rejection> {
    let malformed = |rule| Rejection::new(RejectionKind::Malformed, rule);
    let mut values = req.headers().get_all(header::HOST).iter();
    let from_header = match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(malformed("multiple-host-headers")),
        (Some(value), None) => {
            let text = value.to_str().map_err(|_| malformed("host-not-ascii"))?;
            Some(normalize(text).ok_or(malformed("host-invalid"))?)
        }
        (None, _) => None,
    };
    let from_uri = match req.uri().authority() {
        Some(authority) => Some(normalize(authority.as_str()).ok_or(malformed("host-invalid"))?),
        None => None,
    };
    match (from_header, from_uri) {
        (Some(a), Some(b)) if a != b => Err(malformed("host-differs-from-target")),
        (a, b) => Ok(a.or(b)),
    }
}

/// `Example.COM.:443` → `example.com`; `[::1]:80` → `[::1]`; `None` for anything that is no
/// host name or address (user info, spaces, empty).
pub fn normalize(authority: &str) -> Option<String> {
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || is_port(rest.strip_prefix(':')?)) {
            return None;
        }
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':');
    (!host.is_empty() && host.chars().all(valid)).then_some(host)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalize("Example.COM.:443").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize("a@b.com"), None);
        assert_eq!(normalize("b.com:x"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn host_and_target_must_agree() {
        let req = Request::get("http://evil.example/")
            .header("host", "good.example")
            .body(());
        let err = request_host(&req.unwrap()).unwrap_err();
        assert_eq!(err.rule, "host-differs-from-target");
        let req = Request::get("/")
            .header("host", "Good.Example:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).unwrap().as_deref(), Some("good.example"));
    }
}
