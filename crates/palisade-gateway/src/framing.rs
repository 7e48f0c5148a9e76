//! A watch on the raw bytes of an HTTP/1 connection for framing that hyper accepts and
//! silently repairs, so that the gateway can refuse it instead: a request with both
//! `Content-Length` and `Transfer-Encoding` (hyper drops the length, RFC 9112 section 6.1
//! allows either), and request heads with bare line feeds.
//!
//! The watcher reads the client's bytes before hyper does, finds each request head with
//! httparse (the parser hyper uses) and skips each body by its framing, so it stays aligned
//! with hyper's view of the stream. A head is held back until it is complete: hyper gets it
//! whole, or, when the watcher refuses it (a head no parser can read, such as one with a bare
//! CR, one of `max_head` bytes or more, or one with too many headers), a stand-in request
//! `GET / HTTP/1.1` with `Connection: close` and nothing after it. The watcher pushes one
//! verdict per head into a queue that the connection's service pops per request, in order, so
//! the stand-in is refused by the same layers, page and event as every other rejection, and in
//! its turn after the responses to the requests before it. Whatever else it cannot follow (an
//! HTTP/2 preface, a body whose framing it cannot read) stops the watch: the bytes then go to
//! hyper as they come.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Request, Response};
use palisade_guard::{Body, BoxFuture, ClientAddr, Rejection, RejectionKind, reject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tower::{Layer, Service};

/// The verdicts for the heads seen so far and not yet claimed: a flag for a head that breaks
/// a rule.
pub type Verdicts = Arc<Mutex<VecDeque<Option<FramingFlag>>>>;

/// A request whose raw head broke a rule, in its extensions: the rejection it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingFlag {
    /// The kind of rejection.
    pub kind: RejectionKind,
    /// The rule.
    pub rule: &'static str,
    /// Whether the request is the stand-in for a head hyper never saw (so it has no route).
    pub stand_in: bool,
}

/// What hyper reads in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";

/// The first bytes of an HTTP/2 connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the watcher expects next.
#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(Vec<u8>),
    Trailers(Vec<u8>),
    /// Not following: bytes pass as they come.
    Stopped,
    /// A head was refused: nothing more reaches hyper.
    Refused,
}

/// Follows request framing over a byte stream; see the module documentation.
#[derive(Debug)]
pub struct Watcher {
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    max_headers: usize,
    /// After a request that asks for an upgrade, the bytes may be a tunnel's: from then on they
    /// pass as they come and are only watched, as hyper reads them.
    observe_only: bool,
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
            observe_only: false,
        }
    }

    /// Whether bytes now pass as they come.
    pub fn stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// Whether a head was refused, after which hyper reads nothing more.
    pub fn refused(&self) -> bool {
        matches!(self.state, State::Refused)
    }

    /// Whether part of a head is held back, waiting for the rest.
    pub fn holding(&self) -> bool {
        !self.observe_only && matches!(&self.state, State::Head(buf) if !buf.is_empty())
    }

    /// Feeds the next bytes read from the client; what hyper may read of them (and of the head
    /// held back before them) is appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) {
        let rest = match self.observe_only {
            true => bytes,
            false => self.walk(bytes, out),
        };
        if !rest.is_empty() {
            out.extend_from_slice(rest);
            self.walk(rest, &mut BytesMut::new());
        }
    }

    /// Follows `bytes`, releasing to `out` what hyper may read; gives back the bytes left when
    /// an upgrade request turned the watch to observing only.
    fn walk<'b>(&mut self, mut bytes: &'b [u8], out: &mut BytesMut) -> &'b [u8] {
        let observing = self.observe_only;
        while !bytes.is_empty() {
            if self.observe_only && !observing {
                return bytes;
            }
            let used = match &mut self.state {
                State::Stopped => {
                    out.extend_from_slice(bytes);
                    return &[];
                }
                State::Refused => return &[],
                State::Head(buf) => {
                    let seen = buf.len() + bytes.len();
                    let preface = buf.iter().chain(bytes).zip(PREFACE).all(|(a, b)| a == b);
                    if preface {
                        buf.extend_from_slice(bytes);
                        if seen >= PREFACE.len() {
                            out.extend_from_slice(buf);
                            self.state = State::Stopped;
                        }
                        return &[];
                    }
                    buf.extend_from_slice(bytes);
                    let consumed = self.head(out);
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
                    out.extend_from_slice(&bytes[..take as usize]);
                    take as usize
                }
                State::ChunkData(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        self.state = State::ChunkEnd(Vec::new());
                    }
                    out.extend_from_slice(&bytes[..take as usize]);
                    take as usize
                }
                State::ChunkSize(line) | State::ChunkEnd(line) | State::Trailers(line) => {
                    let used = match bytes.iter().position(|b| *b == b'\n') {
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
                    };
                    out.extend_from_slice(&bytes[..used]);
                    used
                }
            };
            bytes = &bytes[used..];
        }
        &[]
    }

    /// Parses the head buffer; on a complete head, releases it to `out`, records the verdict,
    /// moves to its body and gives the number of buffered bytes that follow the head. A refused
    /// head is replaced by the stand-in.
    fn head(&mut self, out: &mut BytesMut) -> Option<usize> {
        let State::Head(buf) = &self.state else {
            return None;
        };
        let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut request = httparse::Request::new(&mut headers);
        let refusal = match request.parse(buf) {
            Ok(httparse::Status::Complete(_)) if !lengths_are_plain(&request) => {
                // hyper would refuse it itself, with a bare 400.
                (RejectionKind::AmbiguousFraming, "content-length-invalid")
            }
            Ok(httparse::Status::Complete(length)) => {
                let head = &buf[..length];
                let (verdict, next) = judge(&request, head);
                let upgrade = request.method == Some("CONNECT")
                    || request
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
                self.observe_only |= upgrade;
                out.extend_from_slice(head);
                let extra = buf.len() - length;
                self.verdicts
                    .lock()
                    .expect("verdict lock")
                    .push_back(verdict);
                self.state = next;
                return Some(extra);
            }
            // hyper refuses a partial head once its buffer holds `max_head` bytes.
            Ok(httparse::Status::Partial) if buf.len() < self.max_head => return None,
            Ok(httparse::Status::Partial) => (RejectionKind::HeadersTooLarge, "max-header-bytes"),
            Err(httparse::Error::TooManyHeaders) => (RejectionKind::HeadersTooLarge, "max-headers"),
            Err(_) => (RejectionKind::Malformed, "http-parse-error"),
        };
        if self.observe_only {
            // hyper already has the head's bytes; it refuses them itself.
            self.state = State::Stopped;
            return None;
        }
        let (kind, rule) = refusal;
        out.extend_from_slice(STAND_IN);
        self.verdicts
            .lock()
            .expect("verdict lock")
            .push_back(Some(FramingFlag {
                kind,
                rule,
                stand_in: true,
            }));
        self.state = State::Refused;
        None
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

/// Whether every `Content-Length` of the head is the same plain number (no sign, hex or list),
/// as hyper accepts them without refusing the head itself: equal repeats it merges into one.
fn lengths_are_plain(request: &httparse::Request<'_, '_>) -> bool {
    let mut lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value);
    let Some(first) = lengths.next() else {
        return true;
    };
    crate::strict::is_length(first) && lengths.all(|other| other == first)
}

/// The verdict on one head and the state for its body.
fn judge(request: &httparse::Request<'_, '_>, head: &[u8]) -> (Option<FramingFlag>, State) {
    let ambiguous = |rule| {
        Some(FramingFlag {
            kind: RejectionKind::AmbiguousFraming,
            rule,
            stand_in: false,
        })
    };
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
            ambiguous("content-length-with-transfer-encoding"),
            State::Stopped,
        );
    }
    if bare_lf {
        return (ambiguous("bare-line-feed"), State::Stopped);
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
    /// A client connection whose reads go through a [`Watcher`]. A head held back for longer
    /// than `header_read` closes the connection, with a `slow_headers` event: hyper never saw
    /// its bytes, so its own header timeout cannot start.
    pub struct Watched<T> {
        #[pin]
        inner: T,
        watcher: Watcher,
        // What hyper may read next.
        ready: BytesMut,
        header_read: Duration,
        deadline: Option<Pin<Box<Sleep>>>,
        client: IpAddr,
    }
}

impl<T> Watched<T> {
    /// Wraps `inner`, the connection of `client`.
    pub fn new(inner: T, watcher: Watcher, header_read: Duration, client: IpAddr) -> Self {
        Self {
            inner,
            watcher,
            ready: BytesMut::new(),
            header_read,
            deadline: None,
            client,
        }
    }
}

/// How much is read from the client at once while the watch follows the stream.
const READ_SIZE: usize = 16 * 1024;

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.watcher.refused() {
                // Nothing more, but no end either: hyper ends the stand-in's connection itself
                // once its refusal is written, where a read end would drop that response.
                return Poll::Pending;
            }
            if this.watcher.stopped() {
                return this.inner.poll_read(cx, buf);
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut chunk);
            if this.inner.as_mut().poll_read(cx, &mut read)?.is_pending() {
                if let Some(deadline) = this.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    let kind = RejectionKind::SlowHeaders;
                    reject::record(kind, "header-read-timeout", Some(*this.client), "", "close");
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                return Poll::Pending;
            }
            if read.filled().is_empty() {
                // The end of the stream; a head held back unfinished is dropped with it.
                return Poll::Ready(Ok(()));
            }
            this.watcher.feed(read.filled(), this.ready);
            match (this.watcher.holding(), this.deadline.is_some()) {
                (true, false) => {
                    *this.deadline = Some(Box::pin(tokio::time::sleep(*this.header_read)))
                }
                (false, _) => *this.deadline = None,
                (true, true) => {}
            }
        }
    }
}

/// Refuses the requests the watch flagged, with the rejection of their flag, before any other
/// layer sees them (the plain-HTTP redirect included).
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseFlaggedLayer;

impl<S> Layer<S> for RefuseFlaggedLayer {
    type Service = RefuseFlagged<S>;

    fn layer(&self, inner: S) -> RefuseFlagged<S> {
        RefuseFlagged { inner }
    }
}

/// The service of [`RefuseFlaggedLayer`].
#[derive(Debug, Clone)]
pub struct RefuseFlagged<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RefuseFlagged<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(flag) = req.extensions().get::<FramingFlag>() {
            let response = match (flag.stand_in, flag.kind) {
                // A real request, whose route is known.
                (false, kind) => Rejection::new(kind, flag.rule).respond_to(&req),
                // The stand-in for a head hyper never saw: no route, no headers.
                (true, kind) => {
                    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
                    reject::record(kind, flag.rule, client, "", "reject");
                    reject::error_page(kind.status(), kind.message(), Some(kind), &HeaderMap::new())
                }
            };
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(req))
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

    /// What hyper gets of `stream` fed in pieces of `split` bytes, and the verdicts.
    fn watch(stream: &[u8], split: usize, max_head: usize) -> (Vec<u8>, Vec<Option<&'static str>>) {
        let queue = Verdicts::default();
        let mut watcher = Watcher::new(queue.clone(), max_head, 4);
        let mut out = BytesMut::new();
        for piece in stream.chunks(split) {
            watcher.feed(piece, &mut out);
        }
        let verdicts = queue
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.map(|f| f.rule))
            .collect();
        (out.to_vec(), verdicts)
    }

    fn verdicts(stream: &[u8], split: usize) -> Vec<Option<&'static str>> {
        let (out, verdicts) = watch(stream, split, 16384);
        // Any split of the bytes into reads gives the same verdicts, and hyper gets every byte
        // of a stream the watch has no quarrel with.
        if verdicts.iter().all(Option::is_none) {
            assert_eq!(out, stream, "split {split}");
        }
        verdicts
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
    fn http2_stops_the_watch_even_when_its_preface_comes_in_pieces() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for split in [1, 4, 100] {
            assert!(verdicts(preface, split).is_empty());
        }
    }

    #[test]
    fn a_head_no_parser_can_read_is_replaced_by_the_stand_in() {
        let good = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        let bare_cr = b"GET /b HTTP/1.1\r\nX: a\rb\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let stream = [&good[..], &bare_cr[..]].concat();
        for split in [1, 5, 1000] {
            let (out, verdicts) = watch(&stream, split, 16384);
            assert_eq!(out, [&good[..], STAND_IN].concat(), "split {split}");
            assert_eq!(verdicts, [None, Some("http-parse-error")]);
        }
        let (out, verdicts) = watch(b"\x16\x03\x01 not http\r\n\r\n", 4, 16384);
        assert_eq!(
            (out.as_slice(), verdicts),
            (STAND_IN, vec![Some("http-parse-error")])
        );
    }

    #[test]
    fn lengths_hyper_would_refuse_bare_are_refused_whole() {
        for length in ["+5", "0x5", "5, 6", "5\r\nContent-Length: 6"] {
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\nhello");
            let (out, verdicts) = watch(head.as_bytes(), 4, 16384);
            assert_eq!(out, STAND_IN, "{length}");
            assert_eq!(verdicts, [Some("content-length-invalid")], "{length}");
        }
    }

    #[test]
    fn heads_too_large_or_with_too_many_headers_are_refused_whole() {
        let large = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        let (out, verdicts) = watch(large.as_bytes(), 7, 64);
        assert_eq!(
            (out.as_slice(), verdicts),
            (STAND_IN, vec![Some("max-header-bytes")])
        );
        let crowded = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
        let (out, verdicts) = watch(crowded, 3, 1024);
        assert_eq!(
            (out.as_slice(), verdicts),
            (STAND_IN, vec![Some("max-headers")])
        );
    }

    #[test]
    fn after_an_upgrade_request_the_bytes_pass_as_they_come() {
        let stream = b"GET /ws HTTP/1.1\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nping";
        for split in [1, 3, 1000] {
            let (out, verdicts) = watch(stream, split, 16384);
            assert_eq!(out, stream, "split {split}");
            assert_eq!(verdicts, [None]);
        }
    }
}
