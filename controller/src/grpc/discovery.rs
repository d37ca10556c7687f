//! The `meridian.v1.Discovery` gRPC server: streams this cluster's state to its gateway and
//! DNS server, as full snapshots (`Watch`) or as deltas (`DeltaWatch`).
//!
//! `DeltaWatch` works as Envoy's incremental xDS: the snapshot is a set of named,
//! content-versioned resources ([`meridian_api::resources`]). The first request names the
//! subscriber and the versions it holds; it gets the difference. Each stream keeps the
//! resources it last sent and then sends the difference between the newest and those,
//! so a one-endpoint change sends one small resource whatever the mesh size. The client
//! acks each system version it applied; a NACK (`error_detail`) is answered with a resend
//! from the versions that request states (from scratch when none).
//!
//! The latest snapshot lives in a `tokio::sync::watch` channel, which only ever holds the
//! newest value. Each subscriber has its own task that sends the current snapshot at once,
//! then at most one snapshot per coalescing window (50 ms), always the newest. A slow
//! subscriber only stalls its own task; the publisher never waits for anyone.
//!
//! On shutdown every stream is ended first (the subscribers reconnect, to another replica
//! behind the Service), so the server's graceful stop does not wait for them.
//!
//! Only this cluster's gateway and DNS server may subscribe: both streams check the caller's
//! ServiceAccount token ([`crate::grpc::auth`]) before anything is streamed, since the snapshot
//! maps every global service to its endpoints in every member. At most
//! `--max-subscribers` streams are open at once; one more is refused with
//! `RESOURCE_EXHAUSTED` (and counted) instead of growing the controller's memory without
//! bound. The server sends HTTP/2 PINGs ([`Keepalive`]) so a subscriber that vanished
//! without closing its connection (node lost, network partition) is noticed and its slot
//! freed; the clients ping too, to notice a vanished controller.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use meridian_api::proto::{self, DeltaRequest, DeltaResponse, Snapshot, Subscriber};
use meridian_api::resources::Resources;
use prost::Message;
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
/// How long a new DeltaWatch stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        // Updated from what is published, so the two share every unchanged resource and
        // the delta streams' diffs stay O(changes).
        let mut resources = self
            .tx
            .borrow()
            .as_ref()
            .map(|p| p.resources.clone())
            .unwrap_or_default();
        resources.update_from_snapshot(&snap);
        self.set(Published {
            version: snap.version,
            resources,
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

    /// Admits subscriber `sub` on `method`: its cluster must be ours, the controller not
    /// stopping, and a stream slot free (held until the stream ends).
    fn admit(&self, method: &str, sub: &Subscriber) -> Result<OwnedSemaphorePermit, Status> {
        if !sub.cluster.is_empty() && sub.cluster != self.cluster {
            return Err(Status::invalid_argument(format!(
                "this controller serves cluster {:?}, not {:?}",
                self.cluster, sub.cluster
            )));
        }
        if self.stopping.is_cancelled() {
            return Err(Status::unavailable("the controller is shutting down"));
        }
        self.slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.refuse(method, "subscriber_limit");
            warn!(method, role = %sub.role, instance = %sub.instance, "subscriber refused: --max-subscribers reached");
            Status::resource_exhausted(
                "too many open snapshot streams on this controller (--max-subscribers)",
            )
        })
    }

    /// Runs `feed` for subscriber `sub` in its own task, holding `slot` and counting the
    /// subscriber while it runs.
    fn spawn_feed<F>(
        &self,
        method: &'static str,
        sub: &Subscriber,
        slot: OwnedSemaphorePermit,
        feed: F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        info!(method, role = %sub.role, instance = %sub.instance, "subscriber connected");
        let metrics = self.metrics.clone();
        metrics.subscribers.inc();
        let span = info_span!("subscriber", method, role = %sub.role, instance = %sub.instance);
        let stopping = self.stopping.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = feed => {}
                    () = stopping.cancelled() => debug!("ending the stream: shutting down"),
                }
                drop(slot);
                metrics.subscribers.dec();
                info!("subscriber gone");
            }
            .instrument(span),
        );
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

/// Feeds one Watch subscriber full snapshots until it goes away.
async fn feed_until_closed(
    mut rx: watch::Receiver<Option<Arc<Published>>>,
    tx: mpsc::Sender<Result<Snapshot, Status>>,
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

/// Feeds one DeltaWatch subscriber until it goes away: the difference from the versions
/// it holds, then the difference since what it was last sent, at most once per coalescing
/// window (always the newest); a NACK is answered with a resend from the versions it states.
async fn feed_deltas(
    mut rx: watch::Receiver<Option<Arc<Published>>>,
    first: BTreeMap<String, u64>,
    mut inbound: tonic::Streaming<DeltaRequest>,
    tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    metrics: Arc<Metrics>,
) {
    // An answer is owed from these versions: the first request's, or a NACK's.
    let mut owed = Some(first);
    // What the subscriber holds, as far as this stream knows.
    let mut sent = Resources::new();
    loop {
        let (current, delta) = loop {
            let published = rx.borrow_and_update().clone();
            if let Some(published) = published {
                let current = published.resources().clone();
                if let Some(versions) = owed.take() {
                    let delta = current.delta_from_versions(&versions);
                    break (current, delta);
                }
                if current.version() != sent.version() {
                    let delta = current.delta_since(&sent);
                    break (current, delta);
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        if let Some(versions) = received(&request, &metrics) {
                            owed = Some(versions);
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        debug!(%status, "request stream failed");
                        return;
                    }
                },
                _ = tx.closed() => return,
            }
        };
        let started = Instant::now();
        let bytes = delta.encoded_len();
        let (version, resources, removed) = (
            delta.system_version,
            delta.resources.len(),
            delta.removed.len(),
        );
        // A full channel means the client is slow: this waits, but only in this task, and
        // whatever is newest when it frees up is diffed against what it was sent.
        if tx.send(Ok(delta)).await.is_err() {
            return;
        }
        metrics.observe_push(started.elapsed());
        metrics.delta_bytes.inc_by(bytes as u64);
        sent = current;
        debug!(version, resources, removed, bytes, "delta sent");
        tokio::select! {
            _ = tokio::time::sleep(COALESCE_WINDOW) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Handles a request after the first: an ack is logged; a NACK returns the versions the
/// subscriber states it holds, to resend from.
fn received(request: &DeltaRequest, metrics: &Metrics) -> Option<BTreeMap<String, u64>> {
    if request.error_detail.is_empty() {
        debug!(version = request.ack_version, "ack");
        return None;
    }
    metrics.delta_nacks.inc();
    warn!(
        error = %request.error_detail,
        held = request.initial_resource_versions.len(),
        "subscriber could not apply a delta; resending"
    );
    Some(request.initial_resource_versions.clone())
}

#[tonic::async_trait]
impl proto::discovery_server::Discovery for DiscoveryService {
    type WatchStream = SnapshotStream;
    type DeltaWatchStream = DeltaStream;

    async fn delta_watch(
        &self,
        request: Request<tonic::Streaming<DeltaRequest>>,
    ) -> Result<Response<Self::DeltaWatchStream>, Status> {
        const METHOD: &str = "DeltaWatch";
        if let Err(refused) = self.auth.check(METHOD, request.metadata()).await {
            self.metrics.refuse(METHOD, refused.reason.label());
            return Err(refused.into());
        }
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            first = inbound.message() => first?,
            () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => {
                return Err(Status::deadline_exceeded("no first request within 10 s"));
            }
            () = self.stopping.cancelled() => {
                return Err(Status::unavailable("the controller is shutting down"));
            }
        }
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let sub = first.subscriber.unwrap_or_default();
        let slot = self.admit(METHOD, &sub)?;
        let (tx, rx) = mpsc::channel(1);
        let feed = feed_deltas(
            self.publisher.subscribe(),
            first.initial_resource_versions,
            inbound,
            tx,
            self.metrics.clone(),
        );
        self.spawn_feed(METHOD, &sub, slot, feed);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch(
        &self,
        request: Request<Subscriber>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Err(refused) = self.auth.check("Watch", request.metadata()).await {
            self.metrics.refuse("Watch", refused.reason.label());
            return Err(refused.into());
        }
        let sub = request.into_inner();
        let slot = self.admit("Watch", &sub)?;
        let (tx, rx) = mpsc::channel(1);
        let feed = feed_until_closed(self.publisher.subscribe(), tx, self.metrics.clone());
        self.spawn_feed("Watch", &sub, slot, feed);
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
        start_with(publisher, Arc::new(Metrics::default())).await
    }

    async fn start_with(
        publisher: SnapshotPublisher,
        metrics: Arc<Metrics>,
    ) -> (String, tokio_util::sync::DropGuard) {
        start_service(DiscoveryService::new(
            "a".into(),
            publisher,
            metrics,
            CallerAuth::Unauthenticated,
        ))
        .await
    }

    /// Serves `svc` in plaintext on a free loopback port until the guard is dropped.
    async fn start_service(svc: DiscoveryService) -> (String, tokio_util::sync::DropGuard) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
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

    /// A snapshot of `n` services with one ready endpoint in each of east and west.
    fn mesh(n: usize) -> Snapshot {
        let services = (0..n)
            .map(|i| proto::GlobalService {
                name: format!("s{i:03}"),
                namespace: "default".into(),
                hostname: format!("s{i:03}.default.global"),
                endpoints: ["east", "west"]
                    .iter()
                    .map(|c| proto::Endpoint {
                        cluster: (*c).into(),
                        address: format!("10.{}.0.{i}", usize::from(*c == "west")),
                        ready: true,
                        ..proto::Endpoint::default()
                    })
                    .collect(),
                ..proto::GlobalService::default()
            })
            .collect();
        let mut snap = Snapshot {
            cluster: "a".into(),
            services,
            ..Snapshot::default()
        };
        snap.version = crate::snapshot::content_version(&snap);
        snap
    }

    /// Opens a DeltaWatch stream whose first request states `held`; returns the request
    /// queue (for acks and NACKs) and the responses.
    async fn delta_watch(
        addr: &str,
        cluster: &str,
        held: BTreeMap<String, u64>,
    ) -> Result<(mpsc::Sender<DeltaRequest>, tonic::Streaming<DeltaResponse>), Status> {
        let mut client = DiscoveryClient::connect(addr.to_owned()).await.unwrap();
        let (requests, queued) = mpsc::channel(8);
        requests
            .send(DeltaRequest {
                subscriber: Some(subscriber(cluster)),
                initial_resource_versions: held,
                ..DeltaRequest::default()
            })
            .await
            .unwrap();
        let stream = client
            .delta_watch(ReceiverStream::new(queued))
            .await?
            .into_inner();
        Ok((requests, stream))
    }

    fn names(delta: &DeltaResponse) -> Vec<&str> {
        delta.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[tokio::test]
    async fn a_one_endpoint_change_sends_only_that_resource() {
        let publisher = SnapshotPublisher::new();
        let mut snap = mesh(200);
        publisher.publish(snap.clone());
        let (addr, _stop) = start(publisher.clone()).await;
        let (_requests, mut stream) = delta_watch(&addr, "a", BTreeMap::new()).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(
            first.resources.len(),
            1 + 200 + 400,
            "header, services, groups"
        );
        let mut client = Resources::new();
        client.apply(&first).expect("the first state applies");

        snap.services[7].endpoints[1].ready = false;
        snap.version = crate::snapshot::content_version(&snap);
        publisher.publish(snap.clone());
        let delta = stream.message().await.unwrap().unwrap();
        assert_eq!(names(&delta), ["endpoints/s007.default.global/west"]);
        assert!(delta.removed.is_empty());
        assert!(delta.encoded_len() < 200, "{} bytes", delta.encoded_len());
        let touched = client.apply(&delta).expect("the delta applies");
        assert_eq!(touched.services, ["s007.default.global".to_owned()].into());
        assert_eq!(
            client.to_snapshot(),
            Resources::from_snapshot(&snap).to_snapshot()
        );
    }

    #[tokio::test]
    async fn a_reconnect_with_versions_gets_only_the_difference() {
        let publisher = SnapshotPublisher::new();
        let mut snap = mesh(50);
        publisher.publish(snap.clone());
        let (addr, _stop) = start(publisher.clone()).await;
        let (requests, mut stream) = delta_watch(&addr, "a", BTreeMap::new()).await.unwrap();
        let mut client = Resources::new();
        client
            .apply(&stream.message().await.unwrap().unwrap())
            .expect("applies");
        drop((requests, stream));

        // Unchanged while away: an empty answer that confirms the system version.
        let (_r, mut stream) = delta_watch(&addr, "a", client.versions()).await.unwrap();
        let same = stream.message().await.unwrap().unwrap();
        assert!(
            same.resources.is_empty() && same.removed.is_empty(),
            "{same:?}"
        );
        assert_eq!(same.system_version, client.version());

        // One service gone and one endpoint changed while away: exactly that.
        snap.services.remove(3);
        snap.services[10].endpoints[0].address = "10.9.9.9".into();
        snap.version = crate::snapshot::content_version(&snap);
        publisher.publish(snap.clone());
        let (_r, mut stream) = delta_watch(&addr, "a", client.versions()).await.unwrap();
        let resumed = stream.message().await.unwrap().unwrap();
        assert_eq!(names(&resumed), ["endpoints/s011.default.global/east"]);
        assert_eq!(
            resumed.removed,
            [
                "endpoints/s003.default.global/east",
                "endpoints/s003.default.global/west",
                "service/s003.default.global"
            ]
        );
        client.apply(&resumed).expect("applies");
        assert_eq!(
            client.to_snapshot(),
            Resources::from_snapshot(&snap).to_snapshot()
        );
    }

    #[tokio::test]
    async fn a_nack_is_answered_with_a_resend_from_the_stated_versions() {
        let publisher = SnapshotPublisher::new();
        let snap = mesh(20);
        publisher.publish(snap.clone());
        let metrics = Arc::new(Metrics::default());
        let (addr, _stop) = start_with(publisher.clone(), metrics.clone()).await;
        let (requests, mut stream) = delta_watch(&addr, "a", BTreeMap::new()).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        requests
            .send(DeltaRequest {
                ack_version: first.system_version,
                ..DeltaRequest::default()
            })
            .await
            .unwrap();

        // From scratch: everything again.
        requests
            .send(DeltaRequest {
                error_detail: "state after the delta has version 0x1".into(),
                ..DeltaRequest::default()
            })
            .await
            .unwrap();
        let resend = stream.message().await.unwrap().unwrap();
        assert_eq!(resend.resources.len(), first.resources.len());
        let mut client = Resources::new();
        client
            .apply(&resend)
            .expect("the resend applies from scratch");

        // From what the client says it holds: only what it lacks.
        let mut held = client.versions();
        held.remove("service/s005.default.global");
        requests
            .send(DeltaRequest {
                error_detail: "lost one".into(),
                initial_resource_versions: held,
                ..DeltaRequest::default()
            })
            .await
            .unwrap();
        let patch = stream.message().await.unwrap().unwrap();
        assert_eq!(names(&patch), ["service/s005.default.global"]);
        assert_eq!(metrics.delta_nacks.get(), 2);
    }

    #[tokio::test]
    async fn delta_watch_of_another_cluster_is_rejected() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _stop) = start(publisher).await;
        let err = delta_watch(&addr, "zz", BTreeMap::new()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("not \"zz\""), "{}", err.message());
    }

    #[tokio::test]
    async fn delta_watch_without_a_first_request_is_rejected() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _stop) = start(publisher).await;
        let mut client = DiscoveryClient::connect(addr).await.unwrap();
        let err = client
            .delta_watch(futures::stream::empty::<DeltaRequest>())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "the stream ended before its first request");
    }

    #[tokio::test]
    async fn delta_watch_beyond_max_subscribers_is_refused() {
        let publisher = SnapshotPublisher::new();
        publisher.publish(snap(1));
        let (addr, _guard) = start_service(
            DiscoveryService::new(
                "a".into(),
                publisher,
                Arc::new(Metrics::default()),
                CallerAuth::Unauthenticated,
            )
            .with_max_subscribers(1),
        )
        .await;
        let (_r, mut open) = delta_watch(&addr, "a", BTreeMap::new()).await.unwrap();
        open.message().await.unwrap().unwrap();
        let err = delta_watch(&addr, "a", BTreeMap::new()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
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
