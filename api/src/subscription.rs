//! Subscription to the controller's delta stream (`meridian.v1.Discovery/DeltaWatch`),
//! or its full snapshot stream (`Watch`) on a controller without deltas.
//!
//! The gateway and the DNS server of a cluster both follow the state of their own
//! controller. A [`Subscription`] owns one background task that connects, sends the
//! [`Subscriber`] with the resource versions it holds, applies each delta to its
//! [`Resources`] (acking the system version it reached) and publishes the result through a
//! [`tokio::sync::watch`] channel ([`Subscription::resources`]). Readers never block on the
//! network: they keep the last value they applied and ask the newest one what changed
//! ([`Resources::touched_since`]), so a one-endpoint change costs them one service.
//!
//! A delta that does not apply (a missed change: the state does not hash to the server's
//! system version) is NACKed; the server then resends everything and the client replaces
//! its state (counted in [`Status::resyncs`]). On reconnect the client sends its versions
//! and gets only the difference. A controller that answers `UNIMPLEMENTED` to DeltaWatch
//! is followed through `Watch` instead; the snapshots are turned into resources the same
//! way, so consumers see one interface either way.
//!
//! Consumers that need a whole [`Snapshot`] (admin endpoints, older code) use
//! [`Subscription::snapshots`] or [`Subscription::latest`]: the snapshot is put together
//! only while someone holds such a receiver (or on demand), never on the delta hot path
//! otherwise.
//!
//! Static stability: when the controller goes away the last snapshot stays published, and
//! the task reconnects with jittered exponential backoff (the `backon` crate) until the
//! controller is back. A snapshot equal to the one already published (typically the first
//! snapshot after a reconnect) is not published again, so consumers do not rebuild state
//! for nothing.
//!
//! ```no_run
//! use meridian_api::proto::Subscriber;
//! use meridian_api::subscription::{Subscription, SubscriptionConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let subscriber = Subscriber {
//!     cluster: "east".into(),
//!     role: "dns".into(),
//!     instance: "meridian-dns-7d9f".into(),
//! };
//! let subscription =
//!     Subscription::spawn(SubscriptionConfig::new("http://127.0.0.1:15010", subscriber))?;
//! let mut resources = subscription.resources();
//! // Wait for the first state, then apply only what each later one changed.
//! let mut applied = resources.wait_for(Option::is_some).await?.clone().unwrap_or_default();
//! println!("version {:#x}", applied.version());
//! while resources.changed().await.is_ok() {
//!     let Some(latest) = resources.borrow_and_update().clone() else { continue };
//!     let touched = latest.touched_since(&applied);
//!     // ... rebuild `touched.services` (and what depends on the header if `touched.header`) ...
//! #   drop(touched);
//!     applied = latest;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::channel::{ControllerEndpoint, ControllerTls};
use crate::error_chain;
use crate::proto::discovery_client::DiscoveryClient;
use crate::proto::{DeltaRequest, DeltaResponse, Snapshot, Subscriber};
use crate::resources::{DeltaError, Resources};

/// The latest snapshot, `None` until the first one arrives.
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// The latest applied resources, `None` until the first state arrives. Cloning the value
/// is O(1); keep the one you applied and call [`Resources::touched_since`] on the next.
pub type ResourcesReceiver = watch::Receiver<Option<Resources>>;

/// Errors that prevent a subscription from starting: the endpoint is malformed, or
/// `https://` without a pinned root (see [`crate::channel`]).
pub use crate::channel::Error;

/// Requests queued towards the controller (the first request, acks, NACKs).
const REQUEST_QUEUE: usize = 16;

/// Responses that fail to apply while a resync is pending before the session is
/// restarted from scratch: responses the server sent before it read the NACK fail
/// harmlessly, but a server that keeps sending what does not apply is not waited on.
const MAX_FAILURES_WHILE_RESYNCING: u32 = 4;

/// Where the controller is, who is asking, and how patiently to reconnect.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    /// The controller's Discovery endpoint, e.g.
    /// `https://meridian-controller.meridian-system.svc:15010`.
    pub endpoint: String,
    /// How to verify the controller on an `https://` endpoint (required there).
    pub tls: Option<ControllerTls>,
    /// The caller's ServiceAccount token, sent with every stream (re-read on each connect,
    /// as the kubelet rotates it); the controller refuses callers without one.
    pub token_file: Option<PathBuf>,
    /// Sent in the first request: this cluster, the role (`dns`, `gateway`) and the instance.
    pub subscriber: Subscriber,
    /// Timeout of one TCP connect.
    pub connect_timeout: Duration,
    /// First reconnect delay after a failure (jitter is added).
    pub min_backoff: Duration,
    /// Upper bound of the reconnect delay.
    pub max_backoff: Duration,
    /// HTTP/2 PING interval; detects a controller that vanished without closing the connection.
    pub keepalive_interval: Duration,
    /// How long to wait for a PING acknowledgement before declaring the connection dead.
    pub keepalive_timeout: Duration,
    /// Largest message accepted, in bytes (tonic's default of 4 MiB is too small for the
    /// first state of a big mesh).
    pub max_message_bytes: usize,
}

impl SubscriptionConfig {
    /// A configuration with production defaults: 5 s connect timeout, backoff from 100 ms to
    /// 10 s, keepalive every 10 s with a 5 s timeout, messages up to 64 MiB.
    pub fn new(endpoint: impl Into<String>, subscriber: Subscriber) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            token_file: None,
            subscriber,
            connect_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }

    /// The production defaults for the controller that the shared `--controller*` flags
    /// name (its URL, pinned root and token file), as `subscriber`.
    #[cfg(feature = "clap")]
    pub fn from_args(args: &crate::channel::ControllerArgs, subscriber: Subscriber) -> Self {
        Self {
            tls: args.tls(),
            token_file: args.token_file.clone(),
            ..Self::new(args.url.clone(), subscriber)
        }
    }
}

/// Connection state of a subscription, for metrics, readiness and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// A stream to the controller is currently open.
    pub connected: bool,
    /// The open stream is a delta stream (`DeltaWatch`), not full snapshots (`Watch`).
    pub delta: bool,
    /// Version of the published state: the system version on the delta stream, the
    /// snapshot's version on the full one.
    pub version: Option<u64>,
    /// When the controller last sent a snapshot or delta (changed or not).
    pub received_at: Option<SystemTime>,
    /// When the published state was first received (its content is this old).
    pub changed_at: Option<SystemTime>,
    /// Streams opened so far.
    pub connects: u64,
    /// Streams lost so far (closed, failed, or never opened).
    pub disconnects: u64,
    /// Snapshots and deltas received so far, including ones that changed nothing.
    pub snapshots: u64,
    /// Deltas that did not apply (a missed change, a malformed resource), each answered
    /// with a NACK and a resync from scratch.
    pub resyncs: u64,
    /// Why the last connection attempt or stream ended, cleared on the next connect.
    pub last_error: Option<String>,
}

/// The channels the task publishes to, and the lazily kept full snapshot.
#[derive(Debug)]
struct Shared {
    resources: watch::Sender<Option<Resources>>,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    /// The resources version the published snapshot was made from (0: none yet); only
    /// changed under the snapshot channel's lock.
    snapshot_of: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Self {
            resources: watch::channel(None).0,
            snapshot: watch::channel(None).0,
            snapshot_of: AtomicU64::new(0),
        }
    }

    /// Brings the full snapshot up to the published resources: `received` when the full
    /// stream delivered it (published unless equal to the current one), else put together
    /// from the resources (O(all), so only for receivers that want it). Returns whether
    /// the snapshot changed. Runs under the snapshot channel's lock, so the last writer
    /// always writes the newest.
    fn sync_snapshot(&self, received: Option<Arc<Snapshot>>) -> bool {
        self.snapshot.send_if_modified(|published| {
            let Some(current) = self.resources.borrow().clone() else {
                return false;
            };
            let version = current.version();
            let next = match received {
                // Compare contents, not only versions: a restarted controller may reuse
                // version numbers, and a new number over the same content is still new.
                Some(received) if published.as_deref() == Some(&*received) => {
                    self.snapshot_of.store(version, Ordering::Relaxed);
                    return false;
                }
                Some(received) => received,
                None if published.is_some()
                    && self.snapshot_of.load(Ordering::Relaxed) == version =>
                {
                    return false;
                }
                None => Arc::new(current.to_snapshot()),
            };
            self.snapshot_of.store(version, Ordering::Relaxed);
            *published = Some(next);
            true
        })
    }

    /// Publishes `next` unless it equals the published state; keeps the full snapshot in
    /// step (when `sync`) only if someone holds a snapshot receiver. Returns whether it
    /// published.
    fn publish_resources(&self, next: Resources, sync: bool) -> bool {
        let changed = self.resources.send_if_modified(|cur| {
            let key = |r: &Resources| (r.version(), r.snapshot_version());
            if cur.as_ref().map(key) == Some(key(&next)) {
                false
            } else {
                *cur = Some(next);
                true
            }
        });
        if sync && changed && self.snapshot.receiver_count() > 0 {
            self.sync_snapshot(None);
        }
        changed
    }
}

/// A running subscription: a background task plus the channels it publishes to.
///
/// Dropping it stops the task; the published state stays readable through receivers
/// obtained earlier.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Starts following the controller. Must be called within a Tokio runtime.
    ///
    /// Fails only on a malformed endpoint (or `https://` without [`SubscriptionConfig::tls`]);
    /// an unreachable controller, or one that fails verification, is retried forever.
    pub fn spawn(config: SubscriptionConfig) -> Result<Self, Error> {
        let endpoint = endpoint(&config)?;
        let shared = Arc::new(Shared::new());
        let (status_tx, status) = watch::channel(Status::default());
        let span = info_span!(
            "subscription",
            endpoint = %config.endpoint,
            role = %config.subscriber.role,
        );
        let task = tokio::spawn(run(config, endpoint, shared.clone(), status_tx).instrument(span));
        Ok(Self {
            shared,
            status,
            task,
        })
    }

    /// Starts following the controller that the shared `--controller*` flags name, with
    /// the production defaults, as `role` (`"gateway"`, `"dns"`) instance `instance` of
    /// `cluster`.
    #[cfg(feature = "clap")]
    pub fn follow(
        args: &crate::channel::ControllerArgs,
        cluster: &str,
        role: &str,
        instance: &str,
    ) -> Result<Self, Error> {
        let subscriber = Subscriber {
            cluster: cluster.to_owned(),
            role: role.to_owned(),
            instance: instance.to_owned(),
        };
        Self::spawn(SubscriptionConfig::from_args(args, subscriber))
    }

    /// A receiver of the latest applied resources (`None` until the first state): what
    /// consumers that rebuild only what changed follow.
    pub fn resources(&self) -> ResourcesReceiver {
        self.shared.resources.subscribe()
    }

    /// The latest applied resources, without waiting.
    pub fn latest_resources(&self) -> Option<Resources> {
        self.shared.resources.borrow().clone()
    }

    /// A receiver of the latest full snapshot (`None` until the first one arrives). While
    /// such a receiver exists, every change puts the whole snapshot together (O(all));
    /// consumers on the hot path follow [`Self::resources`] instead.
    pub fn snapshots(&self) -> SnapshotReceiver {
        // Subscribe first: from then on the task keeps the snapshot in step.
        let rx = self.shared.snapshot.subscribe();
        self.shared.sync_snapshot(None);
        rx
    }

    /// The latest full snapshot, without waiting (put together now if needed).
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.shared.sync_snapshot(None);
        self.shared.snapshot.borrow().clone()
    }

    /// The current connection state.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of the connection state, to wait for changes (e.g. `connected`).
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops the background task and waits for it to end.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The task holds no state worth saving, so an abort is a clean stop;
        // its result is only a cancellation.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn endpoint(config: &SubscriptionConfig) -> Result<ControllerEndpoint, Error> {
    Ok(
        ControllerEndpoint::new(config.endpoint.clone(), config.tls.clone())?
            .with_token_file(config.token_file.clone())
            .configure(|e| {
                e.connect_timeout(config.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(config.keepalive_interval)
                    .keep_alive_timeout(config.keepalive_timeout)
                    .keep_alive_while_idle(true)
            }),
    )
}

/// Reconnect loop. The backoff restarts after a session that delivered something, so a
/// controller restart is followed quickly, while a controller that is down or refuses the
/// stream is retried ever more slowly.
async fn run(
    config: SubscriptionConfig,
    endpoint: ControllerEndpoint,
    shared: Arc<Shared>,
    status_tx: watch::Sender<Status>,
) {
    let policy = ExponentialBuilder::new()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = policy.build();
    let mut fresh = false;
    loop {
        let ended = session(&config, &endpoint, &shared, &status_tx, fresh).await;
        fresh = ended.fresh;
        let (was_connected, same_reason) = {
            let status = status_tx.borrow();
            (
                status.connected,
                status.last_error.as_deref() == Some(ended.reason.as_str()),
            )
        };
        status_tx.send_modify(|status| {
            status.connected = false;
            status.delta = false;
            status.disconnects += 1;
            status.last_error = Some(ended.reason.clone());
        });
        if was_connected {
            warn!(reason = %ended.reason, "disconnected from controller; serving the last state");
        } else if same_reason {
            // Retrying against the same failure: say it once, not every backoff step.
            debug!(reason = %ended.reason, "controller still unavailable");
        } else {
            warn!(reason = %ended.reason, "controller unavailable; retrying with backoff");
        }
        if ended.delivered {
            backoff = policy.build();
        }
        let delay = backoff.next().unwrap_or(config.max_backoff);
        debug!(?delay, "reconnecting after backoff");
        tokio::time::sleep(delay).await;
    }
}

/// Why a session ended, whether it delivered anything, and whether the next one must
/// start from no versions (the held state is not to be trusted).
struct SessionEnd {
    reason: String,
    delivered: bool,
    fresh: bool,
}

impl SessionEnd {
    fn new(reason: String, delivered: bool) -> Self {
        Self {
            reason,
            delivered,
            fresh: false,
        }
    }
}

/// One connection: DeltaWatch, or Watch when the controller does not implement it.
async fn session(
    config: &SubscriptionConfig,
    endpoint: &ControllerEndpoint,
    shared: &Shared,
    status_tx: &watch::Sender<Status>,
    fresh: bool,
) -> SessionEnd {
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return SessionEnd::new(format!("connect: {}", error_chain(&error)), false),
    };
    let mut client =
        DiscoveryClient::new(channel).max_decoding_message_size(config.max_message_bytes);
    match delta_session(config, endpoint, &mut client, shared, status_tx, fresh).await {
        Some(ended) => ended,
        None => watch_session(config, endpoint, &mut client, shared, status_tx).await,
    }
}

type Client = DiscoveryClient<tonic::transport::Channel>;

fn connected(config: &SubscriptionConfig, status_tx: &watch::Sender<Status>, delta: bool) {
    status_tx.send_modify(|status| {
        status.connected = true;
        status.delta = delta;
        status.connects += 1;
        status.last_error = None;
    });
    info!(cluster = %config.subscriber.cluster, delta, "connected to controller");
}

/// The delta stream until it ends; `None` when the controller does not implement it.
async fn delta_session(
    config: &SubscriptionConfig,
    endpoint: &ControllerEndpoint,
    client: &mut Client,
    shared: &Shared,
    status_tx: &watch::Sender<Status>,
    fresh: bool,
) -> Option<SessionEnd> {
    let held = if fresh {
        Resources::new()
    } else {
        shared.resources.borrow().clone().unwrap_or_default()
    };
    let (requests, queued) = mpsc::channel(REQUEST_QUEUE);
    let first = DeltaRequest {
        subscriber: Some(config.subscriber.clone()),
        initial_resource_versions: held.versions(),
        ..DeltaRequest::default()
    };
    // The queue is new and empty: this cannot fail.
    let _ = requests.try_send(first);
    let mut request = tonic::Request::new(ReceiverStream::new(queued));
    if let Err(error) = endpoint.authorize(&mut request) {
        return Some(SessionEnd::new(format!("token: {error}"), false));
    }
    let mut stream = match client.delta_watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            debug!("the controller has no delta stream; following full snapshots");
            return None;
        }
        Err(status) => return Some(SessionEnd::new(format!("delta watch: {status}"), false)),
    };
    connected(config, status_tx, true);
    let mut follower = DeltaFollower {
        base: held,
        resyncing: false,
        failures: 0,
    };
    let mut delivered = false;
    loop {
        let delta = match stream.message().await {
            Ok(Some(delta)) => delta,
            Ok(None) => {
                return Some(SessionEnd::new(
                    "stream closed by the controller".into(),
                    delivered,
                ));
            }
            Err(status) => return Some(SessionEnd::new(format!("stream: {status}"), delivered)),
        };
        delivered = true;
        match follower.receive(&delta, shared, status_tx) {
            Reply::Ack(request) => {
                // Acks only inform the controller; a full queue drops one rather than
                // stalling the stream.
                let _ = requests.try_send(request);
            }
            Reply::Nack(request) => {
                if requests.send(request).await.is_err() {
                    return Some(SessionEnd::new("request stream closed".into(), delivered));
                }
            }
            Reply::Nothing => {}
            Reply::Restart(reason) => {
                return Some(SessionEnd {
                    reason,
                    delivered,
                    fresh: true,
                });
            }
        }
    }
}

/// What the client sends after a response.
enum Reply {
    Ack(DeltaRequest),
    Nack(DeltaRequest),
    Nothing,
    Restart(String),
}

/// The client side of one delta stream: the state the server believes it holds.
struct DeltaFollower {
    base: Resources,
    /// A NACK was sent and the resend from scratch has not arrived yet.
    resyncing: bool,
    failures: u32,
}

impl DeltaFollower {
    fn receive(
        &mut self,
        delta: &DeltaResponse,
        shared: &Shared,
        status_tx: &watch::Sender<Status>,
    ) -> Reply {
        let now = SystemTime::now();
        status_tx.send_modify(|status| {
            status.received_at = Some(now);
            status.snapshots += 1;
        });
        match self.base.apply(delta) {
            Ok(touched) => {
                self.resyncing = false;
                self.failures = 0;
                let changed = shared.publish_resources(self.base.clone(), true);
                let version = self.base.version();
                status_tx.send_modify(|status| {
                    status.version = Some(version);
                    if changed || status.changed_at.is_none() {
                        status.changed_at = Some(now);
                    }
                });
                if changed {
                    info!(
                        version,
                        resources = delta.resources.len(),
                        removed = delta.removed.len(),
                        services = touched.services.len(),
                        header = touched.header,
                        "delta applied"
                    );
                } else {
                    debug!(version, "delta changed nothing");
                }
                Reply::Ack(DeltaRequest {
                    ack_version: delta.system_version,
                    ..DeltaRequest::default()
                })
            }
            Err(error) if self.resyncing => {
                self.failures += 1;
                if self.failures >= MAX_FAILURES_WHILE_RESYNCING {
                    return Reply::Restart(format!("resync failed: {error}"));
                }
                // Sent before the controller read the NACK: the resend follows.
                debug!(%error, "response before the resync ignored");
                Reply::Nothing
            }
            Err(error) => {
                warn!(%error, "delta does not apply; resyncing from scratch");
                status_tx.send_modify(|status| status.resyncs += 1);
                self.base = Resources::new();
                self.resyncing = true;
                self.failures = 0;
                Reply::Nack(nack(&error))
            }
        }
    }
}

/// A NACK stating no versions: the controller resends everything.
fn nack(error: &DeltaError) -> DeltaRequest {
    DeltaRequest {
        initial_resource_versions: BTreeMap::new(),
        error_detail: error.to_string(),
        ..DeltaRequest::default()
    }
}

/// The full snapshot stream, for a controller without deltas.
async fn watch_session(
    config: &SubscriptionConfig,
    endpoint: &ControllerEndpoint,
    client: &mut Client,
    shared: &Shared,
    status_tx: &watch::Sender<Status>,
) -> SessionEnd {
    let mut delivered = false;
    let mut request = tonic::Request::new(config.subscriber.clone());
    if let Err(error) = endpoint.authorize(&mut request) {
        return SessionEnd::new(format!("token: {error}"), delivered);
    }
    let mut stream = match client.watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return SessionEnd::new(format!("watch: {status}"), delivered),
    };
    connected(config, status_tx, false);
    loop {
        match stream.message().await {
            Ok(Some(snapshot)) => {
                delivered = true;
                publish_snapshot(snapshot, shared, status_tx);
            }
            Ok(None) => {
                return SessionEnd::new("stream closed by the controller".into(), delivered);
            }
            Err(status) => return SessionEnd::new(format!("stream: {status}"), delivered),
        }
    }
}

/// Publishes a received full snapshot, as resources and as the snapshot itself, unless
/// it equals the one already published.
fn publish_snapshot(snapshot: Snapshot, shared: &Shared, status_tx: &watch::Sender<Status>) {
    let version = snapshot.version;
    let services = snapshot.services.len();
    let now = SystemTime::now();
    let snapshot = Arc::new(snapshot);
    let mut next = shared.resources.borrow().clone().unwrap_or_default();
    next.update_from_snapshot(&snapshot);
    next.set_snapshot_version(version);
    // The received snapshot is the full one: no need to put it together.
    let resources_changed = shared.publish_resources(next, false);
    let snapshot_changed = shared.sync_snapshot(Some(snapshot));
    let changed = resources_changed || snapshot_changed;
    status_tx.send_modify(|status| {
        status.version = Some(version);
        status.received_at = Some(now);
        status.snapshots += 1;
        if changed || status.changed_at.is_none() {
            status.changed_at = Some(now);
        }
    });
    if changed {
        info!(version, services, "snapshot received");
    } else {
        debug!(version, "snapshot unchanged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber() -> Subscriber {
        Subscriber {
            cluster: "east".into(),
            role: "dns".into(),
            instance: "test".into(),
        }
    }

    #[tokio::test]
    async fn rejects_malformed_endpoints_and_https_without_a_root() {
        let bad = Subscription::spawn(SubscriptionConfig::new("not a uri", subscriber()));
        assert!(matches!(bad, Err(Error::InvalidEndpoint { .. })), "{bad:?}");
        let tls = Subscription::spawn(SubscriptionConfig::new("https://127.0.0.1:1", subscriber()));
        assert!(matches!(tls, Err(Error::MissingRoot { .. })), "{tls:?}");
        let other = Subscription::spawn(SubscriptionConfig::new("ftp://127.0.0.1:1", subscriber()));
        assert!(
            matches!(other, Err(Error::UnsupportedScheme { .. })),
            "{other:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_controller_is_retried_and_reported() {
        // Bind then drop a listener to get a loopback port with nothing behind it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("free port");
        let mut config = SubscriptionConfig::new(format!("http://127.0.0.1:{port}"), subscriber());
        config.min_backoff = Duration::from_millis(10);
        config.max_backoff = Duration::from_millis(20);
        let subscription = Subscription::spawn(config).expect("valid endpoint");
        let mut status = subscription.status_changes();
        // The timeout only guards against a hang; it asserts nothing about speed.
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            status.wait_for(|status| status.disconnects >= 3),
        )
        .await
        .expect("three reconnect attempts")
        .expect("task alive")
        .clone();
        assert!(!status.connected);
        assert_eq!(status.connects, 0);
        assert!(status.last_error.is_some_and(|e| e.starts_with("connect")));
        assert!(subscription.latest().is_none());
        subscription.shutdown().await;
    }
}
