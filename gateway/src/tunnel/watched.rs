//! A tunnel connection's transport, watched for its end: the moment a read on it fails
//! or reaches end-of-stream, or a write fails, the connection is marked ended.
//!
//! Why: a request failing because its tunnel connection died must find that connection
//! already gone, so its retries go to another cluster (`Dataplane::peer_lost`). HTTP/2's
//! own signal (the sender closing) comes two task hops after the failed streams are woken,
//! which a retry can beat. This mark is set inside the very read or write that observes
//! the failure, before HTTP/2 learns of it, so it is always seen first.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether a [`Watched`] transport has ended (shared with the pool).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ended(Arc<AtomicBool>);

impl Ended {
    /// True once a read failed or hit end-of-stream, or a write failed.
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A transport that marks its [`Ended`] when it fails or ends.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    ended: Ended,
}

impl<T> Watched<T> {
    /// Wraps `inner`; the returned [`Ended`] reports its end.
    pub(crate) fn new(inner: T) -> (Self, Ended) {
        let ended = Ended::default();
        (
            Self {
                inner,
                ended: ended.clone(),
            },
            ended,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Err(_)) => self.ended.set(),
            // Nothing read into a buffer with room: end-of-stream.
            Poll::Ready(Ok(())) if room && buf.filled().len() == before => self.ended.set(),
            _ => {}
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &poll {
            self.ended.set();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(_)) = &poll {
            self.ended.set();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &poll {
            self.ended.set();
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down: the connection is ending, whatever the outcome.
        self.ended.set();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn data_leaves_it_live_and_the_peer_closing_ends_it() {
        let (near, mut far) = tokio::io::duplex(64);
        let (mut watched, ended) = Watched::new(near);
        far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        watched.write_all(b"pong").await.unwrap();
        assert!(!ended.get(), "a transport carrying data is not ended");
        drop(far);
        assert_eq!(watched.read(&mut buf).await.unwrap(), 0);
        assert!(ended.get(), "end-of-stream ends it");
    }

    #[tokio::test]
    async fn a_failed_write_ends_it() {
        let (near, far) = tokio::io::duplex(64);
        let (mut watched, ended) = Watched::new(near);
        drop(far);
        assert!(watched.write_all(b"ping").await.is_err());
        assert!(ended.get(), "a failed write ends it");
    }
}
