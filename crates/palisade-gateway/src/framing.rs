//! A watch on the raw bytes of an HTTP/1 connection for framing that hyper accepts and
//! silently repairs, so that the gateway can refuse it instead: a request with both
//! `Content-Length` and `Transfer-Encoding` (hyper drops the length, RFC 9112 section 6.1
//! allows either), and request heads with bare line feeds.
//!
//! The watcher reads the same bytes hyper reads, finds each request head with httparse (the
//! parser hyper uses) and skips each body by its framing, so it stays aligned with hyper's view
//! of the stream. It pushes one verdict per head into a queue that the connection's service pops
//! per request, in order. Whatever it cannot follow (an HTTP/2 preface, a malformed head or
//! body) stops the watch: hyper then refuses or handles the bytes itself.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The verdicts for the heads seen so far and not yet claimed: `Some(rule)` for a head that
/// breaks one.
pub type Verdicts = Arc<Mutex<VecDeque<Option<&'static str>>>>;

/// A request whose raw head broke a framing rule, in its extensions: the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingFlag(pub &'static str);

/// What the watcher expects next.
#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(Vec<u8>),
    Trailers(Vec<u8>),
    Stopped,
}

/// Follows request framing over a byte stream; see the module documentation.
#[derive(Debug)]
pub struct Watcher {
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    max_headers: usize,
}

const MAX_LINE: usize = 4096;

impl Watcher {
    /// A watcher for heads of at most `max_head` bytes and `max_headers` headers.
    pub fn new(verdicts: Verdicts, max_head: usize, max_headers: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            verdicts,
            max_head,
            max_headers,
        }
    }

    /// Feeds the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Stopped => return,
                State::Head(buf) => {
                    if buf.is_empty() && bytes.starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Stopped;
                        return;
                    }
                    buf.extend_from_slice(bytes);
                    let consumed = self.head();
                    // Bytes after the head were appended too; hand them back.
                    let total = bytes.len();
                    match consumed {
                        Some(extra) => total - extra,
                        None => total,
                    }
                }
                State::Body(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    take as usize
                }
                State::ChunkData(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        self.state = State::ChunkEnd(Vec::new());
                    }
                    take as usize
                }
                State::ChunkSize(line) | State::ChunkEnd(line) | State::Trailers(line) => {
                    match bytes.iter().position(|b| *b == b'\n') {
                        Some(at) => {
                            line.extend_from_slice(&bytes[..=at]);
                            self.line_done();
                            at + 1
                        }
                        None => {
                            line.extend_from_slice(bytes);
                            if line.len() > MAX_LINE {
                                self.state = State::Stopped;
                            }
                            bytes.len()
                        }
                    }
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Parses the head buffer; on a complete head, records the verdict, moves to its body and
    /// gives the number of buffered bytes that follow the head.
    fn head(&mut self) -> Option<usize> {
        let State::Head(buf) = &self.state else {
            return None;
        };
        let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut request = httparse::Request::new(&mut headers);
        let length = match request.parse(buf) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buf.len() <= self.max_head => return None,
            _ => {
                self.state = State::Stopped;
                return None;
            }
        };
        let head = &buf[..length];
        let (verdict, next) = judge(&request, head);
        let extra = buf.len() - length;
        self.verdicts
            .lock()
            .expect("verdict lock")
            .push_back(verdict);
        self.state = next;
        Some(extra)
    }

    fn line_done(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Stopped) {
            State::ChunkSize(line) => match chunk_size(&line) {
                Some(0) => State::Trailers(Vec::new()),
                Some(size) => State::ChunkData(size),
                None => State::Stopped,
            },
            State::ChunkEnd(line) if line == b"\r\n" || line == b"\n" => {
                State::ChunkSize(Vec::new())
            }
            State::Trailers(line) if line == b"\r\n" || line == b"\n" => State::Head(Vec::new()),
            State::Trailers(_) => State::Trailers(Vec::new()),
            _ => State::Stopped,
        };
    }
}

/// The verdict on one head and the state for its body.
fn judge(request: &httparse::Request<'_, '_>, head: &[u8]) -> (Option<&'static str>, State) {
    let named = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_length = named("content-length").next().is_some();
    let encodings: Vec<&[u8]> = named("transfer-encoding").collect();
    // An `Upgrade` or CONNECT request is followed like any other: refused, the connection stays
    // HTTP; accepted (an upgrade after the upstream's 101), hyper reads no more requests and
    // verdicts on tunnel bytes are never claimed.
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'));

    if has_length && !encodings.is_empty() {
        // hyper reads such a request as chunked and closes the connection after it.
        return (
            Some("content-length-with-transfer-encoding"),
            State::Stopped,
        );
    }
    if bare_lf {
        return (Some("bare-line-feed"), State::Stopped);
    }
    let next = if !encodings.is_empty() {
        State::ChunkSize(Vec::new())
    } else if let Some(value) = named("content-length").next() {
        match std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(0) => State::Head(Vec::new()),
            Some(length) => State::Body(length),
            None => State::Stopped,
        }
    } else {
        State::Head(Vec::new())
    };
    (None, next)
}

/// The size of a chunk-size line (`1a;ext=x\r\n`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text
        .trim_end_matches(['\r', '\n'])
        .split(';')
        .next()?
        .trim();
    u64::from_str_radix(size, 16).ok()
}

pin_project_lite::pin_project! {
    /// A client connection whose reads go through a [`Watcher`].
    pub struct Watched<T> {
        #[pin]
        inner: T,
        watcher: Watcher,
    }
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, watcher: Watcher) -> Self {
        Self { inner, watcher }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            this.watcher.feed(&buf.filled()[before..]);
        }
        poll
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<Option<&'static str>> {
        let queue = Verdicts::default();
        let mut watcher = Watcher::new(queue.clone(), 16384, 100);
        // Any split of the bytes into reads gives the same verdicts.
        for piece in stream.chunks(split) {
            watcher.feed(piece);
        }
        queue.lock().unwrap().iter().copied().collect()
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
                       POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5;x=1\r\nGET /\r\n0\r\nX-Trailer: 1\r\n\r\n\
                       GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in [1, 3, 7, stream.len()] {
            assert_eq!(verdicts(stream, split), [None, None, None], "split {split}");
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_judged() {
        let body = "GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(verdicts(stream.as_bytes(), 4), [None]);
    }

    #[test]
    fn length_with_encoding_and_bare_line_feeds_are_flagged() {
        let both =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            verdicts(both, 5),
            [Some("content-length-with-transfer-encoding")]
        );
        let lf = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(verdicts(lf, 2), [Some("bare-line-feed")]);
    }

    #[test]
    fn a_refused_upgrade_is_followed_by_the_next_head() {
        let stream = b"GET /ws HTTP/1.1\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n\
                       POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let rule = Some("content-length-with-transfer-encoding");
        assert_eq!(verdicts(stream, 9), [None, rule]);
    }

    #[test]
    fn http2_and_garbage_stop_the_watch() {
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4).is_empty());
        assert!(verdicts(b"\x16\x03\x01 not http\r\n\r\n", 4).is_empty());
    }
}
