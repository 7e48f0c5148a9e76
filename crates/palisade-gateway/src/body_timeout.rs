//! A request body that fails when its next bytes take longer than the body read timeout, so a
//! client cannot hold an upstream connection open by trickling a body, and that marks the
//! client's own body errors (a malformed chunk, an early end) apart from the upstream's.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use palisade_guard::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub use palisade_guard::body::{BodyReadTimeout, ClientBodyError};

/// Whether the client's body merely ended early (the client went away) rather than broke a
/// rule.
pub fn ended_early(err: &ClientBodyError) -> bool {
    err.0
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_incomplete_message)
}

fn mark(err: BoxError) -> BoxError {
    if err.is::<http_body_util::LengthLimitError>() {
        err
    } else {
        Box::new(ClientBodyError(err))
    }
}

pin_project! {
    /// `inner`, failing with [`BodyReadTimeout`] after `timeout` without a frame.
    pub struct BodyTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
    }
}

impl<B> BodyTimeout<B> {
    /// Wraps `inner`; the clock starts now.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

impl<B> Body for BodyTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.as_mut().reset(Instant::now() + *this.timeout);
                Poll::Ready(frame.map(|f| f.map_err(|err| mark(err.into()))))
            }
            Poll::Pending => match this.deadline.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyReadTimeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
