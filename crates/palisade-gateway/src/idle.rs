//! A connection wrapper that fails once no byte has been read or written for a while.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

pin_project! {
    /// `inner`, closed with `TimedOut` after `timeout` without traffic either way.
    pub struct IdleTimeout<T> {
        #[pin]
        inner: T,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
    }
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

/// The outcome of an I/O poll, after the idle deadline had its say.
fn watch<R>(
    poll: Poll<io::Result<R>>,
    mut deadline: Pin<&mut Sleep>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    match poll {
        Poll::Ready(result) => {
            deadline.as_mut().reset(Instant::now() + timeout);
            Poll::Ready(result)
        }
        Poll::Pending => match deadline.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        },
    }
}

impl<T: AsyncRead> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_read(cx, buf);
        watch(poll, this.deadline, *this.timeout, cx)
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        watch(poll, this.deadline, *this.timeout, cx)
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
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        watch(poll, this.deadline, *this.timeout, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
