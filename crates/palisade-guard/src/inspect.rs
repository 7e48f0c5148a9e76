//! What the layers that look into request bodies share: reading a body with a size limit and a
//! read timeout, the media type of a request, and writing multipart parts back out.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::BodyExt;

use crate::{
    BoxError,
    reject::{Rejection, RejectionKind},
};

/// How a body is read: at most `max_bytes`, and never waiting longer than `read_timeout` for
/// its next bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadOptions {
    /// The most bytes read; a larger body is refused with 413 (`max-body-bytes`).
    pub max_bytes: u64,
    /// The longest wait for the body's next bytes; refused with 408 (`body-read-timeout`).
    pub read_timeout: Duration,
}

impl Default for BodyReadOptions {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// The whole body, or the rejection that reading it ended in.
pub(crate) async fn read_body<B>(body: B, options: BodyReadOptions) -> Result<Bytes, Rejection>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut collected = Vec::new();
    loop {
        let frame = tokio::time::timeout(options.read_timeout, body.frame())
            .await
            .map_err(|_| slow_body())?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|err| body_error(&err.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if (collected.len() + data.len()) as u64 > options.max_bytes {
            return Err(too_large());
        }
        collected.extend_from_slice(&data);
    }
    Ok(Bytes::from(collected))
}

/// Refuses a body whose declared `Content-Length` is over the limit before a byte of it is
/// read.
pub(crate) fn check_declared_length(headers: &HeaderMap, max_bytes: u64) -> Result<(), Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_bytes => Err(too_large()),
        _ => Ok(()),
    }
}

/// The rejection for a body that stalled.
pub(crate) fn slow_body() -> Rejection {
    Rejection::new(RejectionKind::SlowBody, "body-read-timeout")
}

/// The rejection for a body over the limit.
pub(crate) fn too_large() -> Rejection {
    Rejection::new(RejectionKind::BodyTooLarge, "max-body-bytes")
}

/// The rejection for a body that failed while it was read: over a limit a layer below set, or
/// broken (a malformed chunk, an early end).
pub(crate) fn body_error(err: &BoxError) -> Rejection {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return too_large();
        }
        source = err.source();
    }
    Rejection::new(RejectionKind::Malformed, "request-body-malformed")
}

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
        multer::Error::StreamSizeExceeded { .. } => too_large(),
        multer::Error::StreamReadFailed(err) => body_error(&err),
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

    #[tokio::test]
    async fn a_body_is_read_within_its_limit_and_its_timeout() {
        use http_body_util::{Full, StreamBody};
        let options = BodyReadOptions {
            max_bytes: 4,
            read_timeout: Duration::from_millis(50),
        };
        let read = read_body(Full::new(Bytes::from_static(b"abcd")), options).await;
        assert_eq!(read.unwrap().as_ref(), b"abcd");
        let read = read_body(Full::new(Bytes::from_static(b"abcde")), options).await;
        assert_eq!(read.unwrap_err().rule, "max-body-bytes");
        type Frames = futures_util::stream::Pending<Result<http_body::Frame<Bytes>, BoxError>>;
        let stalled: StreamBody<Frames> = StreamBody::new(futures_util::stream::pending());
        let read = read_body(stalled, options).await;
        assert_eq!(read.unwrap_err().kind, RejectionKind::SlowBody);
        // A limit a layer below set shows through the error's sources.
        let limited = http_body_util::Limited::new(Full::new(Bytes::from_static(b"abc")), 1);
        let read = read_body(limited, BodyReadOptions::default()).await;
        assert_eq!(read.unwrap_err().kind, RejectionKind::BodyTooLarge);
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
