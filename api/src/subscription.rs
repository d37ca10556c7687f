//! Subscription to the controller's snapshot stream (`meridian.v1.Discovery/Watch`).
//!
//! The gateway and the DNS server of a cluster both follow the snapshots of their own
//! controller. A [`Subscription`] owns one background task that connects, sends the
//! [`Subscriber`], and publishes every snapshot it receives through a
//! [`tokio::sync::watch`] channel. Readers never block on the network: they read the latest
//! snapshot whenever they need it, or wait for a change.
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
//! let mut snapshots = subscription.snapshots();
//! // Wait for the first snapshot, then for every later change.
//! let first = snapshots.wait_for(Option::is_some).await?.clone();
//! println!("version {}", first.map_or(0, |s| s.version));
//! while snapshots.changed().await.is_ok() {
//!     let latest = snapshots.borrow_and_update().clone();
//!     // ... rebuild from `latest` ...
//! #   drop(latest);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::channel::{ControllerEndpoint, ControllerTls};
use crate::error_chain;
use crate::proto::discovery_client::DiscoveryClient;
use crate::proto::{Snapshot, Subscriber};

/// The latest snapshot, `None` until the first one arrives.
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Errors that prevent a subscription from starting: the endpoint is malformed, or
/// `https://` without a pinned root (see [`crate::channel`]).
pub use crate::channel::Error;

/// Where the controller is, who is asking, and how patiently to reconnect.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    /// The controller's Discovery endpoint, e.g.
    /// `https://meridian-controller.meridian-system.svc:15010`.
    pub endpoint: String,
    /// How to verify the controller on an `https://` endpoint (required there).
    pub tls: Option<ControllerTls>,
    /// The caller's ServiceAccount token, sent with every Watch (re-read on each connect,
    /// as the kubelet rotates it); the controller refuses callers without one.
    pub token_file: Option<PathBuf>,
    /// Sent as the Watch request: this cluster, the role (`dns`, `gateway`) and the instance.
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
    /// Largest snapshot accepted, in bytes (tonic's default of 4 MiB is too small for big meshes).
    pub max_message_bytes: usize,
}

impl SubscriptionConfig {
    /// A configuration with production defaults: 5 s connect timeout, backoff from 100 ms to
    /// 10 s, keepalive every 10 s with a 5 s timeout, snapshots up to 64 MiB.
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
    /// A Watch stream to the controller is currently open.
    pub connected: bool,
    /// Version of the published snapshot, if any.
    pub version: Option<u64>,
    /// When the controller last sent a snapshot (changed or not).
    pub received_at: Option<SystemTime>,
    /// When the published snapshot was first received (its content is this old).
    pub changed_at: Option<SystemTime>,
    /// Watch streams opened so far.
    pub connects: u64,
    /// Watch streams lost so far (closed, failed, or never opened).
    pub disconnects: u64,
    /// Snapshots received so far, including unchanged ones.
    pub snapshots: u64,
    /// Why the last connection attempt or stream ended, cleared on the next connect.
    pub last_error: Option<String>,
}

/// A running subscription: a background task plus the channels it publishes to.
///
/// Dropping it stops the task; the published snapshot stays readable through receivers
/// obtained earlier.
#[derive(Debug)]
pub struct Subscription {
    snapshots: SnapshotReceiver,
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
        let (snapshot_tx, snapshots) = watch::channel(None);
        let (status_tx, status) = watch::channel(Status::default());
        let span = info_span!(
            "subscription",
            endpoint = %config.endpoint,
            role = %config.subscriber.role,
        );
        let task = tokio::spawn(run(config, endpoint, snapshot_tx, status_tx).instrument(span));
        Ok(Self {
            snapshots,
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

    /// A receiver of the latest snapshot (`None` until the first one arrives).
    pub fn snapshots(&self) -> SnapshotReceiver {
        self.snapshots.clone()
    }

    /// The latest snapshot, without waiting.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
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

/// Reconnect loop. The backoff restarts after a session that delivered a snapshot, so a
/// controller restart is followed quickly, while a controller that is down or refuses the
/// stream is retried ever more slowly.
async fn run(
    config: SubscriptionConfig,
    endpoint: ControllerEndpoint,
    snapshot_tx: watch::Sender<Option<Arc<Snapshot>>>,
    status_tx: watch::Sender<Status>,
) {
    let policy = ExponentialBuilder::new()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = policy.build();
    loop {
        let ended = session(&config, &endpoint, &snapshot_tx, &status_tx).await;
        let (was_connected, same_reason) = {
            let status = status_tx.borrow();
            (
                status.connected,
                status.last_error.as_deref() == Some(ended.reason.as_str()),
            )
        };
        status_tx.send_modify(|status| {
            status.connected = false;
            status.disconnects += 1;
            status.last_error = Some(ended.reason.clone());
        });
        if was_connected {
            warn!(reason = %ended.reason, "disconnected from controller; serving the last snapshot");
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

/// Why a session ended, and whether it delivered at least one snapshot.
struct SessionEnd {
    reason: String,
    delivered: bool,
}

/// One connection: connect, Watch, publish snapshots until the stream ends.
async fn session(
    config: &SubscriptionConfig,
    endpoint: &ControllerEndpoint,
    snapshot_tx: &watch::Sender<Option<Arc<Snapshot>>>,
    status_tx: &watch::Sender<Status>,
) -> SessionEnd {
    let mut delivered = false;
    let ended = |reason: String, delivered: bool| SessionEnd { reason, delivered };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return ended(format!("connect: {}", error_chain(&error)), delivered),
    };
    let mut client =
        DiscoveryClient::new(channel).max_decoding_message_size(config.max_message_bytes);
    let mut request = tonic::Request::new(config.subscriber.clone());
    if let Err(error) = endpoint.authorize(&mut request) {
        return ended(format!("token: {error}"), delivered);
    }
    let mut stream = match client.watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return ended(format!("watch: {status}"), delivered),
    };
    status_tx.send_modify(|status| {
        status.connected = true;
        status.connects += 1;
        status.last_error = None;
    });
    info!(cluster = %config.subscriber.cluster, "connected to controller");
    loop {
        match stream.message().await {
            Ok(Some(snapshot)) => {
                delivered = true;
                publish(snapshot, snapshot_tx, status_tx);
            }
            Ok(None) => return ended("stream closed by the controller".into(), delivered),
            Err(status) => return ended(format!("stream: {status}"), delivered),
        }
    }
}

/// Publishes a received snapshot unless it equals the one already published.
fn publish(
    snapshot: Snapshot,
    snapshot_tx: &watch::Sender<Option<Arc<Snapshot>>>,
    status_tx: &watch::Sender<Status>,
) {
    let version = snapshot.version;
    let services = snapshot.services.len();
    let now = SystemTime::now();
    // Compare contents, not only versions: a restarted controller may reuse version numbers.
    let changed = snapshot_tx.send_if_modified(|current| {
        if current.as_deref() == Some(&snapshot) {
            false
        } else {
            *current = Some(Arc::new(snapshot));
            true
        }
    });
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
