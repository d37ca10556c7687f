//! The `meridian.v1.Discovery` gRPC server: streams full snapshots to this cluster's gateway
//! and DNS server.
//!
//! The latest snapshot lives in a `tokio::sync::watch` channel, which only ever holds the
//! newest value. Each subscriber has its own task that sends the current snapshot at once,
//! then at most one snapshot per coalescing window (50 ms), always the newest. A slow
//! subscriber only stalls its own task; the publisher never waits for anyone.
//!
//! On shutdown every stream is ended first (the subscribers reconnect, to another replica
//! behind the Service), so the server's graceful stop does not wait for them.
//!
//! Only this cluster's gateway and DNS server may subscribe: `Watch` checks the caller's
//! ServiceAccount token ([`crate::grpc::auth`]) before anything is streamed, since the snapshot
//! maps every global service to its endpoints in every member. At most
//! `--max-subscribers` streams are open at once; one more is refused with
//! `RESOURCE_EXHAUSTED` (and counted) instead of growing the controller's memory without
//! bound. The server sends HTTP/2 PINGs ([`Keepalive`]) so a subscriber that vanished
//! without closing its connection (node lost, network partition) is noticed and its slot
//! freed; the clients ping too, to notice a vanished controller.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use meridian_api::proto::{self, Snapshot, Subscriber};
use meridian_api::resources::Resources;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::grpc::auth::CallerAuth;
use crate::metrics::Metrics;

/// Minimum time between two sends to one subscriber.
pub(crate) const COALESCE_WINDOW: Duration = Duration::from_millis(50);
/// Default cap on concurrently open Watch streams (`--max-subscribers`): far above the
/// gateway and DNS replicas of one cluster, far below what exhausts memory.
pub(crate) const DEFAULT_MAX_SUBSCRIBERS: usize = 1024;

/// What is published: the resources, and the full snapshot they make, put together on
/// first demand (for `Watch` subscribers and `meridianctl`) and then kept.
#[derive(Debug)]
pub struct Published {
    /// The system version (the snapshot's version).
    pub(crate) version: u64,
    resources: Resources,
    snapshot: OnceLock<Arc<Snapshot>>,
}

impl Published {
    /// The resources.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The full snapshot (made once per version).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .get_or_init(|| Arc::new(self.resources.to_snapshot()))
            .clone()
    }
}

/// The publishing side: the controller sets the latest resources here.
#[derive(Clone)]
pub struct SnapshotPublisher {
    tx: Arc<watch::Sender<Option<Arc<Published>>>>,
}

impl Default for SnapshotPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotPublisher {
    /// A publisher with no snapshot yet (subscribers wait for the first one).
    pub fn new() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx: Arc::new(tx) }
    }

    /// Publishes `resources` if their system version differs from the current one;
    /// returns whether it did. O(1): the full snapshot is only made when asked for.
    pub fn publish_resources(&self, resources: Resources) -> bool {
        self.set(Published {
            version: resources.version(),
            resources,
            snapshot: OnceLock::new(),
        })
    }

    /// Publishes a full snapshot (with its own version) if its version differs from the
    /// current one; returns whether it did.
    pub fn publish(&self, snap: Snapshot) -> bool {
        self.set(Published {
            version: snap.version,
            resources: Resources::from_snapshot(&snap),
            snapshot: OnceLock::from(Arc::new(snap)),
        })
    }

    fn set(&self, published: Published) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.as_ref().map(|c| c.version) == Some(published.version) {
                return false;
            }
            *cur = Some(Arc::new(published));
            true
        })
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.tx.subscribe()
    }
}

/// The Discovery service implementation.
pub struct DiscoveryService {
    cluster: String,
    publisher: SnapshotPublisher,
    metrics: Arc<Metrics>,
    auth: CallerAuth,
    slots: Arc<Semaphore>,
    stopping: CancellationToken,
}

impl DiscoveryService {
    /// Serves the snapshots of `publisher` to subscribers of cluster `cluster` that pass
    /// `auth`, at most [`DEFAULT_MAX_SUBSCRIBERS`] at a time.
    pub fn new(
        cluster: String,
        publisher: SnapshotPublisher,
        metrics: Arc<Metrics>,
        auth: CallerAuth,
    ) -> Self {
        Self {
            cluster,
            publisher,
            metrics,
            auth,
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_SUBSCRIBERS)),
            stopping: CancellationToken::new(),
        }
    }

    /// Allows at most `max` concurrently open streams.
    pub(crate) fn with_max_subscribers(mut self, max: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(max));
        self
    }

    /// Ends every stream (and refuses new ones) once `stopping` is cancelled.
    pub(crate) fn with_shutdown(mut self, stopping: CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic service, ready to add to a server.
    pub(crate) fn into_server(self) -> proto::discovery_server::DiscoveryServer<Self> {
        proto::discovery_server::DiscoveryServer::new(self)
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

/// Feeds one subscriber until it goes away.
async fn feed(
    rx: watch::Receiver<Option<Arc<Published>>>,
    tx: mpsc::Sender<Result<Snapshot, Status>>,
    metrics: Arc<Metrics>,
    stopping: CancellationToken,
) {
    tokio::select! {
        () = feed_until_closed(rx, &tx, metrics) => {}
        () = stopping.cancelled() => debug!("ending the stream: shutting down"),
    }
}

async fn feed_until_closed(
    mut rx: watch::Receiver<Option<Arc<Published>>>,
    tx: &mpsc::Sender<Result<Snapshot, Status>>,
    metrics: Arc<Metrics>,
) {
    let mut last_sent: Option<u64> = None;
    loop {
        // Wait for a snapshot newer than the last one sent (or the first one).
        let snap = loop {
            let cur = rx.borrow_and_update().clone();
            if let Some(s) = cur
                && Some(s.version) != last_sent
            {
                break s;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        };
        let started = Instant::now();
        // A full channel means the client is slow: this waits, but only in this task, and
        // whatever is newest when it frees up is what goes next.
        if tx.send(Ok((*snap.snapshot()).clone())).await.is_err() {
            return;
        }
        metrics.observe_push(started.elapsed());
        last_sent = Some(snap.version);
        debug!(version = snap.version, "snapshot sent");
        tokio::select! {
            _ = tokio::time::sleep(COALESCE_WINDOW) => {}
            _ = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl proto::discovery_server::Discovery for DiscoveryService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<Subscriber>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Err(refused) = self.auth.check("Watch", request.metadata()).await {
            self.metrics.refuse("Watch", refused.reason.label());
            return Err(refused.into());
        }
        let sub = request.into_inner();
        if !sub.cluster.is_empty() && sub.cluster != self.cluster {
            return Err(Status::invalid_argument(format!(
                "this controller serves cluster {:?}, not {:?}",
                self.cluster, sub.cluster
            )));
        }
        if self.stopping.is_cancelled() {
            return Err(Status::unavailable("the controller is shutting down"));
        }
        // The slot is held by the feeding task, so it frees when the stream ends.
        let slot: OwnedSemaphorePermit = self.slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.refuse("Watch", "subscriber_limit");
            warn!(role = %sub.role, instance = %sub.instance, "subscriber refused: --max-subscribers reached");
            Status::resource_exhausted(
                "too many open snapshot streams on this controller (--max-subscribers)",
            )
        })?;
        info!(role = %sub.role, instance = %sub.instance, "subscriber connected");
        let (tx, rx) = mpsc::channel(1);
        let metrics = self.metrics.clone();
        metrics.subscribers.inc();
        let span = info_span!("subscriber", role = %sub.role, instance = %sub.instance);
        let watch_rx = self.publisher.subscribe();
        let stopping = self.stopping.clone();
        tokio::spawn(
            async move {
                feed(watch_rx, tx, metrics.clone(), stopping).await;
                drop(slot);
                metrics.subscribers.dec();
                info!("subscriber gone");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::tls::Transport;
    use crate::grpc::{Keepalive, serve};
    use meridian_api::proto::discovery_client::DiscoveryClient;

    fn snap(version: u64) -> Snapshot {
        Snapshot {
            version,
            cluster: "a".into(),
            ..Snapshot::default()
        }
    }

    async fn start(publisher: SnapshotPublisher) -> (String, tokio_util::sync::DropGuard) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let svc = DiscoveryService::new(
            "a".into(),
            publisher,
            Arc::new(Metrics::default()),
            CallerAuth::Unauthenticated,
        );
        tokio::spawn(serve(
            listener,
            Transport::Plaintext,
            Keepalive::default(),
            svc,
            None,
            stop.clone(),
        ));
        (addr, stop.drop_guard())
    }

    fn subscriber(cluster: &str) -> Subscriber {
        Subscriber {
            cluster: cluster.into(),
            role: "gateway".into(),
            instance: "test".into(),
        }
    }

    #[tokio::test]
    async fn new_subscriber_gets_current_snapshot_then_updates() {
        let publisher = SnapshotPublisher::new();
        assert!(publisher.publish(snap(7)));
        assert!(
            !publisher.publish(snap(7)),
            "same version is not republished"
        );
        let (addr, _stop) = start(publisher.clone()).await;
        let mut client = DiscoveryClient::connect(addr).await.unwrap();
        let mut stream = client.watch(subscriber("a")).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().version, 7);
        publisher.publish(snap(8));
        assert_eq!(stream.message().await.unwrap().unwrap().version, 8);
    }

    #[tokio::test]
    async fn bursts_are_coalesced_to_the_newest() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _stop) = start(publisher.clone()).await;
        let mut client = DiscoveryClient::connect(addr).await.unwrap();
        let mut stream = client.watch(subscriber("")).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
        for v in 2..=200 {
            publisher.publish(snap(v));
        }
        // However the burst interleaves with the window, the newest arrives and far fewer
        // than 199 messages are sent.
        let mut seen = Vec::new();
        loop {
            let v = stream.message().await.unwrap().unwrap().version;
            seen.push(v);
            if v == 200 {
                break;
            }
        }
        assert!(seen.len() < 10, "not coalesced: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "order: {seen:?}");
    }

    #[tokio::test]
    async fn slow_subscriber_does_not_block_others() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _stop) = start(publisher.clone()).await;
        // A subscriber that never reads: its stream is opened and left alone.
        let mut slow = DiscoveryClient::connect(addr.clone()).await.unwrap();
        let _slow_stream = slow.watch(subscriber("a")).await.unwrap().into_inner();
        let mut fast = DiscoveryClient::connect(addr).await.unwrap();
        let mut stream = fast.watch(subscriber("a")).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
        // Large snapshots fill the slow client's transport buffers quickly.
        let big = |v: u64| Snapshot {
            version: v,
            trust_domain: "x".repeat(256 * 1024),
            ..Snapshot::default()
        };
        for v in 2..=20 {
            publisher.publish(big(v));
            let got = stream.message().await.unwrap().unwrap().version;
            assert_eq!(got, v);
        }
    }

    #[tokio::test]
    async fn shutdown_ends_open_streams_at_once() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let svc = DiscoveryService::new(
            "a".into(),
            publisher,
            Arc::new(Metrics::default()),
            CallerAuth::Unauthenticated,
        )
        .with_shutdown(stop.child_token());
        let server = tokio::spawn(serve(
            listener,
            Transport::Plaintext,
            Keepalive::default(),
            svc,
            None,
            stop.clone(),
        ));
        let mut client = DiscoveryClient::connect(addr).await.unwrap();
        let mut stream = client.watch(subscriber("a")).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
        stop.cancel();
        // The stream ends cleanly and the server stops, long before the 5 s the controller
        // grants it (the bound here only keeps a regression from hanging the test).
        let end = tokio::time::timeout(Duration::from_secs(4), stream.message()).await;
        assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
        tokio::time::timeout(Duration::from_secs(4), server)
            .await
            .expect("server stops with streams open")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn wrong_cluster_is_rejected() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _stop) = start(publisher).await;
        let mut client = DiscoveryClient::connect(addr).await.unwrap();
        let err = client.watch(subscriber("zz")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
