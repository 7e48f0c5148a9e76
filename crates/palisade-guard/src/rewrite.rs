//! Streaming HTML rewriting shared by the layers that edit pages (CSP nonces, CSRF tokens):
//! which responses can be rewritten, and a body that runs lol_html over a page as it streams.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body::Frame;
use lol_html::{AsciiCompatibleEncoding, MemorySettings, OutputSink};

use crate::BoxError;

/// Whether a response with `status` carries a body (RFC 9110 section 6.4.1).
pub(crate) fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The charset of an HTML response with identity encoding that lol_html can rewrite.
pub(crate) fn rewritable_html(headers: &HeaderMap) -> Option<AsciiCompatibleEncoding> {
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return None;
    }
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut params = content_type.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("text/html") {
        return None;
    }
    let charset = params
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, value)| value.trim().trim_matches('"'));
    match charset {
        None => Some(AsciiCompatibleEncoding::utf_8()),
        Some(label) => encoding_rs::Encoding::for_label_no_replacement(label.as_bytes())
            .and_then(AsciiCompatibleEncoding::new),
    }
}

/// Whether the request is a page load, whose answer may be rewritten: it accepts HTML.
pub(crate) fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// The most the rewriter may buffer of one tag split across chunks before it passes the rest
/// of the page through unchanged.
const REWRITER_MEMORY: usize = 1024 * 1024;

/// Rewriter settings for a page in `encoding`, with the memory bound; the caller adds its
/// handlers.
pub(crate) fn settings<'s>(
    encoding: AsciiCompatibleEncoding,
) -> lol_html::send::Settings<'static, 's> {
    lol_html::send::Settings::new_send()
        .with_encoding(encoding)
        .with_memory_settings(
            MemorySettings::new()
                .with_max_allowed_memory_usage(REWRITER_MEMORY)
                .with_graceful_bail_out_on_memory_limit_exceeded(true),
        )
}

/// Where the rewriter writes its output, for the body to hand on.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(chunk);
        }
    }
}

/// A page body, rewritten by `settings`' handlers as it streams. `purpose` names the edit in
/// the warning logged when the page cannot be rewritten (its response is then cut off).
pub(crate) struct RewrittenBody<B> {
    inner: Pin<Box<B>>,
    rewriter: Option<lol_html::send::HtmlRewriter<'static, Sink>>,
    out: Arc<Mutex<Vec<u8>>>,
    trailers: Option<HeaderMap>,
    done: bool,
    purpose: &'static str,
}

impl<B> RewrittenBody<B> {
    pub(crate) fn new(
        inner: B,
        settings: lol_html::send::Settings<'static, '_>,
        purpose: &'static str,
    ) -> Self {
        let out = Arc::new(Mutex::new(Vec::new()));
        let rewriter = lol_html::send::HtmlRewriter::new(settings, Sink(out.clone()));
        Self {
            inner: Box::pin(inner),
            rewriter: Some(rewriter),
            out,
            trailers: None,
            done: false,
            purpose,
        }
    }

    fn take_output(&self) -> Option<Bytes> {
        let mut out = self.out.lock().ok()?;
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(&mut *out)))
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.done = true;
        match self.rewriter.take() {
            Some(rewriter) => rewriter.end().map_err(|err| self.failed(err)),
            None => Ok(()),
        }
    }

    fn failed(&self, err: lol_html::errors::RewritingError) -> BoxError {
        let purpose = self.purpose;
        tracing::warn!(target: "palisade::gateway", error = %err, "cannot add {purpose} to a page; its response was cut off");
        format!("rewriting a page for {purpose}: {err}").into()
    }
}

impl<B> http_body::Body for RewrittenBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.take_output() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(rewriter) = &mut this.rewriter
                            && let Err(err) = rewriter.write(&data)
                        {
                            this.rewriter = None;
                            this.done = true;
                            return Poll::Ready(Some(Err(this.failed(err))));
                        }
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        if let Err(err) = this.finish() {
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                },
                Some(Err(err)) => {
                    this.rewriter = None;
                    this.done = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                None => {
                    if let Err(err) = this.finish() {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            }
        }
    }
}
