//! Added latency without `tc netem`: a [`DelayRelay`] is a TCP relay that holds every
//! chunk of bytes going upstream for a fixed delay before writing it on, and opens its
//! upstream connection only after the same delay (as a delayed SYN would arrive).
//! Bytes coming back are passed on at once, so a round trip grows by the delay, as with
//! netem delaying one direction of a link.
//!
//! Why a relay: the kernels this runs on, CI's included, are built without netem
//! (`CONFIG_NET_SCH_NETEM` unset) and without any other qdisc or nftables action that can
//! hold packets (no fq/etf for departure times; `CONFIG_NFT_QUEUE` unset). Put in front of a
//! [`crate::netns::Link`], the relay's upstream traffic crosses the link, so the link's
//! packet loss ([`crate::netns::Link::lose`]) applies to it as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// A TCP relay from [`DelayRelay::addr`] to an upstream address, delaying the upstream
/// direction; it stops (and its connections close) on drop.
#[derive(Debug)]
pub struct DelayRelay {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayRelay {
    /// Listens on `listen` (port 0: any) and relays each connection to `upstream`,
    /// holding the upstream direction `delay`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(Error::io(format!("binding the delay relay on {listen}")))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("reading the delay relay's address"))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                conns.spawn(relay(client, upstream, delay));
            }
        });
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (proof that traffic went through the relay).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// One relayed connection: upstream direction delayed, downstream direct.
async fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration) {
    tokio::time::sleep(delay).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed(client_read, server_write, delay),
        direct(server_read, client_write)
    );
}

/// Copies `from` to `to`, each chunk written `delay` after it was read (chunks keep
/// their order; reading goes on meanwhile, so the delay does not cut throughput).
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // Ok(0) is the client's half-close: dropping `tx` passes it on after the backlog.
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((Instant::now() + delay, Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Copies `from` to `to` as it comes, passing on the half-close.
async fn direct(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}
