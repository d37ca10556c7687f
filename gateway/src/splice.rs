//! Splicing two byte streams both ways until both ends close, or until no byte has moved
//! in either direction for the idle timeout (Envoy's `tcp_proxy` `idle_timeout`, 1 h by
//! default), so abandoned connections cannot pin sockets and tasks forever.
//!
//! [`Activity`] is the clock behind it, also used to close idle HTTP connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved on any of the streams sharing it.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last activity.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `idle`; never if `idle` is zero.
    pub(crate) async fn idle(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let deadline = self.last() + idle;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Wraps `io` so that every byte it reads or writes counts as activity.
    pub(crate) fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            io,
            activity: self.clone(),
            read: 0,
        }
    }
}

/// A stream whose reads and writes count as [`Activity`]; counts the bytes read.
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    io: T,
    activity: Activity,
    read: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout; both streams were dropped.
    Idle,
    /// A side failed.
    Error(io::Error),
}

/// The outcome of [`splice`].
#[derive(Debug)]
pub(crate) struct Spliced {
    /// Bytes from the first stream to the second.
    pub sent: u64,
    /// Bytes from the second stream to the first.
    pub received: u64,
    /// Why it ended.
    pub end: End,
}

/// Copies `a` to `b` and `b` to `a` until both are done, or until nothing moved for
/// `idle` (zero: no idle timeout).
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::default();
    let mut a = activity.track(a);
    let mut b = activity.track(b);
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e),
        },
        () = activity.idle(idle) => End::Idle,
    };
    Spliced {
        sent: a.read,
        received: b.read,
        end,
    }
}
