//! Forms as clients send them (`multipart/form-data` bodies, a small PNG, one carrying the
//! EICAR test string) and gateways with routes that check them.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use palisade_gateway::{GatewayOptions, RouteOptions};
use palisade_guard::{ClamavOptions, RichTextOptions, UploadOptions};

use crate::{
    clamd::eicar,
    support::{Upstream, options},
};

/// A one-pixel PNG.
pub const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\
\0\0\0\rIDATx\x9cc\xf8\xff\xff?\0\x05\xfe\x02\xfe\xa7\x35\x81\x84\0\0\0\0IEND\xaeB`\x82";

pub const BOUNDARY: &str = "----palisade-test-7MA4YWxk";

/// One part of a form: name, file name, declared type, data.
pub type FormPart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A `multipart/form-data` body as a browser writes it.
pub fn form(parts: &[FormPart<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, content_type, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let file = file_name.map_or(String::new(), |f| format!("; filename=\"{f}\""));
        let disposition = format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n");
        body.extend_from_slice(disposition.as_bytes());
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A POST of `body` as a form to `path`.
pub fn post_form(path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A PNG that carries the EICAR test string after its image data.
pub fn infected_png() -> Vec<u8> {
    [PNG, &eicar()].concat()
}

/// A gateway whose `/upload` route takes up to two PNG or PDF files of 64 KiB, scanned by
/// `clamav` when given.
pub fn upload_options(upstream: &Upstream, clamav: Option<ClamavOptions>) -> GatewayOptions {
    let mut options = options(upstream);
    options.routes.push(RouteOptions {
        upload: Some(UploadOptions {
            allow: vec!["png".into(), "pdf".into()],
            max_file_bytes: 64 * 1024,
            max_files: 2,
            scan: clamav.is_some(),
        }),
        ..RouteOptions::new("/upload")
    });
    options.clamav = clamav;
    options
}

/// A gateway whose `/comments` route cleans the form field `comment` and the JSON pointer
/// `/post/body`.
pub fn rich_text_options(upstream: &Upstream) -> GatewayOptions {
    let mut options = options(upstream);
    options.routes.push(RouteOptions {
        rich_text: Some(RichTextOptions {
            fields: vec!["comment".into()],
            json: vec!["/post/body".into()],
            ..Default::default()
        }),
        ..RouteOptions::new("/comments")
    });
    options
}

pub fn post(path: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
