//! Test fakes shared by the DNS server, gateway and controller tests (cargo feature `testing`).
//!
//! [`FakeDiscovery`] is an in-process `meridian.v1.Discovery` server on `127.0.0.1`. Tests
//! push the snapshots they want consumers to see, and stop and restart it on the same port
//! to exercise reconnects and static stability.
//!
//! [`FakeDiscovery::start`] serves `Watch` only and answers `UNIMPLEMENTED` to
//! `DeltaWatch`, like a controller from before the delta stream (clients fall back to full
//! snapshots, whose versions are the pushed ones). [`FakeDiscovery::start_delta`] serves
//! `DeltaWatch` too, as the real controller does: pushes are split into resources and each
//! stream gets the difference since what it was last sent; the versions clients see there
//! are system versions ([`Resources::version`]), not the pushed ones.
//!
//! ```no_run
//! use meridian_api::proto::{GlobalService, Snapshot};
//! use meridian_api::testing::FakeDiscovery;
//!
//! # async fn example() -> std::io::Result<()> {
//! let mut controller = FakeDiscovery::start().await?;
//! controller.push(Snapshot {
//!     version: 1,
//!     cluster: "east".into(),
//!     services: vec![GlobalService {
//!         name: "reviews".into(),
//!         namespace: "default".into(),
//!         hostname: "reviews.default.global".into(),
//!         vip: "10.96.0.10".into(),
//!         ..Default::default()
//!     }],
//!     ..Default::default()
//! });
//! // Point the component under test at `controller.url()`, e.g. `--controller <url>`.
//! let subscriber = controller.wait_for_subscribers(1).await.remove(0);
//! assert_eq!(subscriber.role, "dns");
//!
//! controller.stop().await; // every stream ends, the port is closed
//! controller.restart().await?; // same port; new subscribers get the latest snapshot
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, warn};

use crate::proto::discovery_server::{Discovery, DiscoveryServer};
use crate::proto::{DeltaRequest, DeltaResponse, Snapshot, Subscriber};
use crate::resources::Resources;

/// How long [`FakeDiscovery::stop`] waits for connections to close before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// An in-process fake of the controller's Discovery service.
///
/// Every Watch stream receives the current snapshot at once (if one was pushed) and then
/// each later push, like the real controller. Pushes made while the server is stopped are
/// kept and delivered after [`restart`](Self::restart).
#[derive(Debug)]
pub struct FakeDiscovery {
    addr: SocketAddr,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    subscribers: Arc<watch::Sender<Vec<Subscriber>>>,
    delta: Option<DeltaState>,
    running: Option<Running>,
}

/// What the DeltaWatch side of the fake shares with its streams.
#[derive(Debug, Clone)]
struct DeltaState {
    resources: Arc<watch::Sender<Option<Resources>>>,
    injected: broadcast::Sender<DeltaResponse>,
    requests: Arc<watch::Sender<Vec<DeltaRequest>>>,
    responses: Arc<watch::Sender<Vec<DeltaResponse>>>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl FakeDiscovery {
    /// Starts a server on a free port of `127.0.0.1`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts a server on a free port of `127.0.0.1` that serves `DeltaWatch` too.
    pub async fn start_delta() -> std::io::Result<Self> {
        Self::start_delta_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr` that serves `DeltaWatch` too.
    pub async fn start_delta_on(addr: SocketAddr) -> std::io::Result<Self> {
        let delta = DeltaState {
            resources: Arc::new(watch::channel(None).0),
            injected: broadcast::channel(16).0,
            requests: Arc::new(watch::channel(Vec::new()).0),
            responses: Arc::new(watch::channel(Vec::new()).0),
        };
        Self::start_with(addr, Some(delta)).await
    }

    async fn start_with(addr: SocketAddr, delta: Option<DeltaState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let mut fake = Self {
            addr: listener.local_addr()?,
            snapshot: watch::channel(None).0,
            subscribers: Arc::new(watch::channel(Vec::new()).0),
            delta,
            running: None,
        };
        fake.serve(listener);
        Ok(fake)
    }

    /// The address the server listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL for clients, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the server is currently accepting connections.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Publishes `snapshot` to every open stream and to every later subscriber (on the
    /// delta stream: as the difference from what each was last sent).
    pub fn push(&self, snapshot: Snapshot) {
        if let Some(delta) = &self.delta {
            delta.resources.send_modify(|current| {
                let mut next = current.clone().unwrap_or_default();
                next.update_from_snapshot(&snapshot);
                *current = Some(next);
            });
        }
        self.snapshot.send_replace(Some(Arc::new(snapshot)));
    }

    /// The resources the delta streams serve (`None` without `DeltaWatch` or before the
    /// first push).
    pub fn resources(&self) -> Option<Resources> {
        self.delta
            .as_ref()
            .and_then(|d| d.resources.borrow().clone())
    }

    /// Sends `delta` as it is to every open delta stream, without changing what the fake
    /// serves: a fault (a missed change, a malformed resource) for tests of the client.
    pub fn inject_delta(&self, delta: DeltaResponse) {
        if let Some(state) = &self.delta {
            // No open stream is no error: nobody to disturb.
            let _ = state.injected.send(delta);
        }
    }

    /// Every DeltaWatch request received so far (first requests, acks, NACKs), in order.
    pub fn delta_requests(&self) -> Vec<DeltaRequest> {
        self.delta
            .as_ref()
            .map(|d| d.requests.borrow().clone())
            .unwrap_or_default()
    }

    /// Every DeltaWatch response sent so far, on every stream, in order.
    pub fn delta_responses(&self) -> Vec<DeltaResponse> {
        self.delta
            .as_ref()
            .map(|d| d.responses.borrow().clone())
            .unwrap_or_default()
    }

    /// Waits until the DeltaWatch requests received so far satisfy `done`; returns them.
    pub async fn wait_for_delta_requests(
        &self,
        mut done: impl FnMut(&[DeltaRequest]) -> bool,
    ) -> Vec<DeltaRequest> {
        let Some(state) = &self.delta else {
            return Vec::new();
        };
        let mut requests = state.requests.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        requests
            .wait_for(|seen| done(seen))
            .await
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }

    /// The last pushed snapshot.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// Every Watch request received so far, in arrival order (across restarts).
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.subscribers.borrow().clone()
    }

    /// Waits until at least `count` Watch requests have been received; returns them all.
    pub async fn wait_for_subscribers(&self, count: usize) -> Vec<Subscriber> {
        let mut subscribers = self.subscribers.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let seen = subscribers
            .wait_for(|seen| seen.len() >= count)
            .await
            .map(|seen| seen.clone());
        seen.unwrap_or_default()
    }

    /// Stops the server: every open stream ends with `UNAVAILABLE`, connections close and
    /// the port is released. Does nothing if already stopped.
    pub async fn stop(&mut self) {
        let Some(Running { stop, mut server }) = self.running.take() else {
            return;
        };
        stop.send_replace(true);
        if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
            warn!(addr = %self.addr, "fake discovery server did not stop in time; aborting it");
            server.abort();
            let _ = server.await;
        }
    }

    /// Starts the server again on the same address. Does nothing if it is running.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        let service = WatchService {
            snapshot: self.snapshot.subscribe(),
            subscribers: self.subscribers.clone(),
            delta: self.delta.clone(),
            stopped: stopped.clone(),
        };
        let mut shutdown = stopped;
        let addr = self.addr;
        let server = tokio::spawn(
            async move {
                let result = tonic::transport::Server::builder()
                    .add_service(DiscoveryServer::new(service))
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                        until_stopped(&mut shutdown).await
                    })
                    .await;
                if let Err(error) = result {
                    warn!(%error, "fake discovery server failed");
                }
            }
            .instrument(info_span!("fake_discovery", %addr)),
        );
        self.running = Some(Running { stop, server });
    }
}

impl Drop for FakeDiscovery {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.send_replace(true);
            running.server.abort();
        }
    }
}

/// The Discovery implementation behind [`FakeDiscovery`].
struct WatchService {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    subscribers: Arc<watch::Sender<Vec<Subscriber>>>,
    delta: Option<DeltaState>,
    stopped: watch::Receiver<bool>,
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard returned by `wait_for` is not `Send`; drop it here, not in a caller's select!.
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for WatchService {
    type WatchStream = SnapshotStream;
    type DeltaWatchStream = DeltaStream;

    async fn delta_watch(
        &self,
        request: Request<tonic::Streaming<DeltaRequest>>,
    ) -> Result<Response<Self::DeltaWatchStream>, Status> {
        let Some(state) = self.delta.clone() else {
            return Err(Status::unimplemented("this fake serves Watch only"));
        };
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no first request"))?;
        let subscriber = first.subscriber.clone().unwrap_or_default();
        debug!(?subscriber, "delta watch");
        self.subscribers
            .send_modify(|seen| seen.push(subscriber.clone()));
        state.requests.send_modify(|seen| seen.push(first.clone()));
        let (tx, rx) = mpsc::channel(4);
        let stopped = self.stopped.clone();
        tokio::spawn(feed_deltas(state, first, inbound, tx, stopped).instrument(
            info_span!("fake_delta_watch", cluster = %subscriber.cluster, role = %subscriber.role),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch(
        &self,
        request: Request<Subscriber>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let subscriber = request.into_inner();
        debug!(?subscriber, "watch");
        self.subscribers
            .send_modify(|seen| seen.push(subscriber.clone()));
        let (tx, rx) = mpsc::channel(4);
        let mut snapshot = self.snapshot.clone();
        let mut stopped = self.stopped.clone();
        // The current snapshot goes out at once, like the real controller's.
        snapshot.mark_changed();
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        changed = snapshot.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let Some(current) = snapshot.borrow_and_update().clone() else {
                                continue;
                            };
                            tokio::select! {
                                sent = tx.send(Ok(Snapshot::clone(&current))) => {
                                    if sent.is_err() {
                                        return; // the client went away
                                    }
                                }
                                _ = until_stopped(&mut stopped) => break,
                            }
                        }
                        _ = until_stopped(&mut stopped) => break,
                    }
                }
                // Ending every stream lets the server's graceful shutdown complete.
                let _ = tx.try_send(Err(Status::unavailable("fake discovery server stopping")));
            }
            .instrument(
                info_span!("fake_watch", cluster = %subscriber.cluster, role = %subscriber.role),
            ),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One fake delta stream: the difference from the client's versions, then the difference
/// since what was last sent for each push, injected faults as they are, and a resend from
/// the stated versions on a NACK.
async fn feed_deltas(
    state: DeltaState,
    first: DeltaRequest,
    mut inbound: tonic::Streaming<DeltaRequest>,
    tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut resources = state.resources.subscribe();
    let mut injected = state.injected.subscribe();
    // `None`: nothing sent yet; the client holds these versions.
    let mut known = Some(first.initial_resource_versions);
    let mut sent = Resources::new();
    resources.mark_changed();
    loop {
        let out = tokio::select! {
            changed = resources.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(current) = resources.borrow_and_update().clone() else {
                    continue;
                };
                let delta = match known.take() {
                    Some(versions) => current.delta_from_versions(&versions),
                    None if current.version() == sent.version() => continue,
                    None => current.delta_since(&sent),
                };
                sent = current;
                delta
            }
            fault = injected.recv() => match fault {
                Ok(fault) => fault,
                Err(_) => continue,
            },
            request = inbound.message() => {
                let Ok(Some(request)) = request else { return };
                state.requests.send_modify(|seen| seen.push(request.clone()));
                if request.error_detail.is_empty() {
                    continue;
                }
                let current = resources.borrow().clone().unwrap_or_default();
                let delta = current.delta_from_versions(&request.initial_resource_versions);
                sent = current;
                known = None;
                delta
            }
            _ = until_stopped(&mut stopped) => break,
        };
        state.responses.send_modify(|all| all.push(out.clone()));
        tokio::select! {
            sent = tx.send(Ok(out)) => if sent.is_err() { return },
            _ = until_stopped(&mut stopped) => break,
        }
    }
    // Ending every stream lets the server's graceful shutdown complete.
    let _ = tx.try_send(Err(Status::unavailable("fake discovery server stopping")));
}

/// Polls `probe` every `every` until it yields `Some`, or panics naming `what` once
/// `within` has passed. The bound only turns a hang into a failure on a loaded machine;
/// it is not a timing assertion.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::GlobalService;
    use crate::resources::Resources;
    use crate::subscription::{Subscription, SubscriptionConfig};

    fn snapshot(version: u64, vip: &str) -> Snapshot {
        Snapshot {
            version,
            cluster: "east".into(),
            services: vec![GlobalService {
                name: "reviews".into(),
                namespace: "default".into(),
                hostname: "reviews.default.global".into(),
                vip: vip.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn config(url: String) -> SubscriptionConfig {
        let mut config = SubscriptionConfig::new(
            url,
            Subscriber {
                cluster: "east".into(),
                role: "gateway".into(),
                instance: "gw-0".into(),
            },
        );
        config.min_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(200);
        config
    }

    /// Waits (bounded, to fail instead of hanging) for a snapshot with `version`.
    async fn wait_version(subscription: &Subscription, version: u64) -> Arc<Snapshot> {
        let mut snapshots = subscription.snapshots();
        tokio::time::timeout(
            Duration::from_secs(30),
            snapshots.wait_for(|s| s.as_ref().is_some_and(|s| s.version == version)),
        )
        .await
        .expect("snapshot within 30 s")
        .expect("subscription alive")
        .clone()
        .expect("some snapshot")
    }

    #[tokio::test]
    async fn subscription_follows_pushes_and_survives_restarts() {
        let mut fake = FakeDiscovery::start().await.expect("start");
        fake.push(snapshot(1, "10.0.0.1"));
        let subscription = Subscription::spawn(config(fake.url())).expect("spawn");

        let first = wait_version(&subscription, 1).await;
        assert_eq!(first.services[0].vip, "10.0.0.1");
        let seen = fake.wait_for_subscribers(1).await;
        assert_eq!(seen[0].role, "gateway");
        assert_eq!(seen[0].instance, "gw-0");
        assert!(subscription.status().connected);

        fake.push(snapshot(2, "10.0.0.2"));
        assert_eq!(
            wait_version(&subscription, 2).await.services[0].vip,
            "10.0.0.2"
        );

        // Controller away: the last snapshot stays published.
        fake.stop().await;
        let mut status = subscription.status_changes();
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| !s.connected))
            .await
            .expect("disconnect noticed")
            .expect("alive");
        assert_eq!(subscription.latest().map(|s| s.version), Some(2));

        // Back on the same port with newer content: picked up after reconnecting.
        fake.push(snapshot(3, "10.0.0.3"));
        fake.restart().await.expect("restart");
        assert_eq!(
            wait_version(&subscription, 3).await.services[0].vip,
            "10.0.0.3"
        );
        let status = subscription.status();
        assert!(status.connects >= 2, "{status:?}");
        assert_eq!(status.version, Some(3));
        assert!(fake.subscribers().len() >= 2);
        subscription.shutdown().await;
    }

    /// Waits (bounded) until the subscription's state equals what the fake serves.
    async fn wait_in_step(subscription: &Subscription, fake: &FakeDiscovery) -> Resources {
        let want = fake.resources().expect("pushed").version();
        let mut resources = subscription.resources();
        tokio::time::timeout(
            Duration::from_secs(30),
            resources.wait_for(|r| r.as_ref().is_some_and(|r| r.version() == want)),
        )
        .await
        .expect("in step within 30 s")
        .expect("subscription alive")
        .clone()
        .expect("some state")
    }

    #[tokio::test]
    async fn a_controller_without_deltas_is_followed_through_watch() {
        let fake = FakeDiscovery::start().await.expect("start");
        fake.push(snapshot(4, "10.0.0.4"));
        let subscription = Subscription::spawn(config(fake.url())).expect("spawn");
        wait_version(&subscription, 4).await;
        let status = subscription.status();
        assert!(status.connected && !status.delta, "{status:?}");
        let resources = subscription.latest_resources().expect("resources too");
        assert_eq!(
            resources.snapshot_version(),
            4,
            "the full stream's numbering"
        );
        assert_eq!(
            resources.service("reviews.default.global").map(|s| s.vip),
            Some("10.0.0.4".to_owned())
        );
        subscription.shutdown().await;
    }

    #[tokio::test]
    async fn deltas_follow_pushes_and_a_reconnect_resumes_from_the_held_versions() {
        let mut fake = FakeDiscovery::start_delta().await.expect("start");
        fake.push(snapshot(1, "10.0.0.1"));
        let subscription = Subscription::spawn(config(fake.url())).expect("spawn");
        let first = wait_in_step(&subscription, &fake).await;
        assert!(subscription.status().delta);
        assert_eq!(fake.wait_for_subscribers(1).await[0].role, "gateway");
        let opening = fake.delta_requests();
        assert!(opening[0].initial_resource_versions.is_empty());

        fake.push(snapshot(2, "10.0.0.2"));
        let second = wait_in_step(&subscription, &fake).await;
        assert_eq!(
            second.touched_since(&first).services,
            ["reviews.default.global".to_owned()].into()
        );
        // The one changed resource went out, nothing else.
        let last = fake.delta_responses().pop().expect("sent");
        let names: Vec<_> = last.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["service/reviews.default.global"]);
        // Each applied response is acked with its system version.
        fake.wait_for_delta_requests(|seen| seen.iter().any(|r| r.ack_version == second.version()))
            .await;

        // Away and back with one change: the client states its versions and gets only
        // the difference.
        fake.stop().await;
        let sent_before = fake.delta_responses().len();
        fake.push(snapshot(3, "10.0.0.3"));
        fake.restart().await.expect("restart");
        let third = wait_in_step(&subscription, &fake).await;
        let requests = fake.delta_requests();
        let reopened = requests
            .iter()
            .rev()
            .find(|r| r.subscriber.is_some())
            .expect("a second first request");
        assert_eq!(reopened.initial_resource_versions, second.versions());
        let resumed = &fake.delta_responses()[sent_before];
        assert_eq!(resumed.resources.len(), 1, "{resumed:?}");
        assert!(resumed.removed.is_empty());
        assert_eq!(
            third.service("reviews.default.global").map(|s| s.vip),
            Some("10.0.0.3".to_owned())
        );
        assert_eq!(subscription.status().resyncs, 0);
        // A full snapshot is still there for those who need it.
        let full = subscription.latest().expect("snapshot");
        assert_eq!(full.version, third.version());
        assert_eq!(full.services[0].vip, "10.0.0.3");
        subscription.shutdown().await;
    }

    #[tokio::test]
    async fn a_delta_that_does_not_apply_is_nacked_and_resynced_from_scratch() {
        let fake = FakeDiscovery::start_delta().await.expect("start");
        fake.push(snapshot(1, "10.0.0.1"));
        let subscription = Subscription::spawn(config(fake.url())).expect("spawn");
        let before = wait_in_step(&subscription, &fake).await;
        let mut snapshots = subscription.snapshots();
        snapshots.borrow_and_update();

        // A delta announcing a state the client cannot reach: a missed change.
        fake.inject_delta(DeltaResponse {
            system_version: 0xdead_beef,
            ..DeltaResponse::default()
        });
        let requests = fake
            .wait_for_delta_requests(|seen| seen.iter().any(|r| !r.error_detail.is_empty()))
            .await;
        let nack = requests
            .iter()
            .find(|r| !r.error_detail.is_empty())
            .expect("a NACK");
        assert!(
            nack.error_detail.contains("0xdeadbeef"),
            "{}",
            nack.error_detail
        );
        assert!(nack.initial_resource_versions.is_empty(), "from scratch");
        // The resend from scratch arrives and the state is the fake's again.
        let mut status = subscription.status_changes();
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.resyncs == 1 && s.snapshots >= 3),
        )
        .await
        .expect("resynced")
        .expect("alive");
        let resent = fake.delta_responses().pop().expect("resend");
        assert_eq!(resent.resources.len(), before.len(), "everything resent");
        assert_eq!(
            subscription.latest_resources().map(|r| r.version()),
            Some(before.version())
        );
        assert!(
            !snapshots.has_changed().expect("alive"),
            "same content: not republished"
        );

        // And the stream goes on.
        fake.push(snapshot(2, "10.0.0.2"));
        let after = wait_in_step(&subscription, &fake).await;
        assert_eq!(
            after.service("reviews.default.global").map(|s| s.vip),
            Some("10.0.0.2".to_owned())
        );
        assert_eq!(subscription.status().resyncs, 1);
        subscription.shutdown().await;
    }

    #[tokio::test]
    async fn unchanged_snapshot_after_reconnect_is_not_republished() {
        let mut fake = FakeDiscovery::start().await.expect("start");
        fake.push(snapshot(7, "10.0.0.7"));
        let subscription = Subscription::spawn(config(fake.url())).expect("spawn");
        let mut snapshots = subscription.snapshots();
        wait_version(&subscription, 7).await;
        snapshots.borrow_and_update();

        fake.stop().await;
        fake.restart().await.expect("restart");
        let mut status = subscription.status_changes();
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.connected && s.snapshots >= 2),
        )
        .await
        .expect("resubscribed")
        .expect("alive");
        assert!(!snapshots.has_changed().expect("alive"));
        subscription.shutdown().await;
    }
}
