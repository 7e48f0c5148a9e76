//! What the layers that look into forms share: the media type of a request, a body's new
//! length, and multipart parts read and written back out.

use http::{HeaderMap, HeaderValue, header};

use crate::{
    body::rejection_for,
    reject::{Rejection, RejectionKind},
};

/// The request's media type in lower case without parameters (`multipart/form-data`), the
/// empty string without one; `Err` when `Content-Type` is repeated, since the application
/// might read another one than the gateway.
pub(crate) fn media_type(headers: &HeaderMap) -> Result<String, Rejection> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(Rejection::new(
            RejectionKind::Malformed,
            "content-type-repeated",
        ));
    }
    let text = first.and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    Ok(essence.to_ascii_lowercase())
}

/// Gives the body its new length: a single `Content-Length` is rewritten; a chunked body
/// stays chunked (the proxy re-frames it). Other framing is left for the strict checks to
/// refuse.
pub(crate) fn set_length(headers: &mut HeaderMap, length: usize) {
    if headers.get_all(header::CONTENT_LENGTH).iter().count() == 1 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// One part of a `multipart/form-data` body, as the gateway writes it.
#[derive(Debug)]
pub(crate) struct Part<'a> {
    pub name: &'a str,
    pub file_name: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub data: &'a [u8],
}

/// Appends `part` to `out`: the delimiter, `Content-Disposition` with the name (and file
/// name), `Content-Type` when the part had one, and the data. Quotes and line ends in names
/// are percent-encoded, as browsers do.
pub(crate) fn write_part(out: &mut Vec<u8>, boundary: &str, part: &Part<'_>) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
    out.extend_from_slice(quote(part.name).as_bytes());
    out.push(b'"');
    if let Some(file_name) = part.file_name {
        out.extend_from_slice(b"; filename=\"");
        out.extend_from_slice(quote(file_name).as_bytes());
        out.push(b'"');
    }
    if let Some(content_type) = part.content_type {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(part.data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the closing delimiter.
pub(crate) fn write_end(out: &mut Vec<u8>, boundary: &str) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
}

fn quote(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Whether a part's `Content-Disposition` names a file in any spelling (`filename`,
/// `FILENAME`, `filename*`), so that a file the parser did not read as one is not taken for a
/// text field.
pub(crate) fn names_a_file(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_DISPOSITION)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .windows(8)
                .any(|w| w.eq_ignore_ascii_case(b"filename"))
        })
}

/// The rejection for a multipart parse that failed.
pub(crate) fn multipart_error(err: multer::Error, max_file_bytes: u64) -> Rejection {
    match err {
        multer::Error::FieldSizeExceeded { .. } => {
            Rejection::new(RejectionKind::BodyTooLarge, "upload-max-file-bytes").with_detail(
                format!(
                    "A part of the form is larger than the {max_file_bytes} bytes accepted here."
                ),
            )
        }
        multer::Error::StreamSizeExceeded { .. } => {
            Rejection::new(RejectionKind::BodyTooLarge, "max-body-bytes")
        }
        multer::Error::StreamReadFailed(err) => rejection_for(err.as_ref()),
        _ => Rejection::new(RejectionKind::Malformed, "multipart-malformed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_written_with_quoted_names() {
        let mut out = Vec::new();
        let part = Part {
            name: "a\"b",
            file_name: Some("x.png"),
            content_type: Some("image/png"),
            data: b"DATA",
        };
        write_part(&mut out, "XyZ", &part);
        write_end(&mut out, "XyZ");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"a%22b\"; filename=\"x.png\"\r\n\
             Content-Type: image/png\r\n\r\nDATA\r\n--XyZ--\r\n"
        );
    }

    #[test]
    fn any_spelling_of_filename_names_a_file() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("form-data; name=\"f\"; FILENAME=\"a.php\""),
        );
        assert!(names_a_file(&headers));
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("form-data; name=\"f\"; filename*=UTF-8''a.php"),
        );
        assert!(names_a_file(&headers));
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("form-data; name=\"comment\""),
        );
        assert!(!names_a_file(&headers));
    }

    #[test]
    fn a_repeated_content_type_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(media_type(&headers).unwrap(), "text/plain");
        headers.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Multipart/Form-Data; boundary=x"),
        );
        assert_eq!(
            media_type(&headers).unwrap_err().rule,
            "content-type-repeated"
        );
    }
}
