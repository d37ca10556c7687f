//! Leader election among the controller replicas of one cluster, through a
//! `coordination.k8s.io/v1` Lease in the controller's namespace (kube-lease-manager).
//!
//! Every replica watches every member and serves the read-only snapshot stream from its own
//! state; only the leader writes to the API (VIP Services, `GlobalService` and
//! `MemberCluster` objects, policy status). Leadership is published through a
//! `tokio::sync::watch` channel that the writers follow. On shutdown the leader releases the
//! Lease, so a successor takes over at its next check instead of after the lease expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

/// Runs a writer of the views `rx` carries while this replica leads: each time leadership
/// is gained, `start` makes a fresh writer (what exists may have changed under another
/// leader, so it starts from the API; a failure, logged as `what`, is retried every 2 s),
/// then `work` runs it on the latest view and those after, until leadership is lost.
/// Returns when `work` does or `leader`'s sender is dropped.
pub(crate) async fn while_leader<T, W, S, SF, R, RF>(
    mut leader: watch::Receiver<bool>,
    mut rx: watch::Receiver<T>,
    what: &str,
    mut start: S,
    mut work: R,
) where
    S: FnMut() -> SF,
    SF: Future<Output = crate::Result<W>>,
    R: FnMut(W, watch::Receiver<T>) -> RF,
    RF: Future<Output = ()>,
{
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        let every_2s = std::iter::repeat(Duration::from_secs(2));
        let writer = crate::tasks::retry_after(what, every_2s, &mut start).await;
        rx.mark_changed();
        tokio::select! {
            () = work(writer, rx.clone()) => return,
            lost = leader.wait_for(|l| !*l) => if lost.is_err() { return },
        }
    }
}

/// How this replica takes part in the election.
#[derive(Debug, Clone)]
pub(crate) struct ElectionSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a leader's lock is valid after its last renewal.
    pub lease_duration: Duration,
}

impl ElectionSettings {
    /// (duration, grace) in whole seconds: the leader renews `grace` before expiry, so grace
    /// is also the clock skew tolerated between replicas.
    fn seconds(&self) -> (u64, u64) {
        let duration = self.lease_duration.as_secs().max(2);
        (duration, (duration / 3).max(1))
    }
}

/// The default identity outside Kubernetes: host name and process id, so two replicas on
/// one machine differ.
pub(crate) fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "meridian-controller".into());
    format!("{host}-{}", std::process::id())
}

/// A running election: whether this replica leads, and how to leave.
pub(crate) struct Election {
    rx: watch::Receiver<bool>,
    /// The sender of a fixed leadership (no election), kept so followers never see it go.
    fixed: Option<watch::Sender<bool>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Election {
    /// No election: this replica always leads (`--leader-elect=false`).
    pub(crate) fn always_leader() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            fixed: Some(tx),
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// Joins the election. Creating the Lease is retried until the API server answers;
    /// until then this replica does not lead.
    pub(crate) fn start(client: Client, settings: ElectionSettings) -> Self {
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            run(client, settings, tx, stop.clone()).instrument(info_span!("leader-election")),
        );
        Self {
            rx,
            fixed: None,
            stop,
            task: Some(task),
        }
    }

    /// Follows leadership: `true` while this replica leads.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Stops leading and releases the Lease (bounded by `timeout`).
    pub(crate) async fn resign(mut self, timeout: Duration) {
        if let Some(fixed) = self.fixed.take() {
            fixed.send_replace(false);
        }
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(timeout, task).await.is_err()
        {
            warn!("releasing the leader Lease timed out");
        }
    }
}

async fn run(
    client: Client,
    settings: ElectionSettings,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let (duration, grace) = settings.seconds();
    let params = LeaseParams::new(settings.identity.clone(), duration, grace);
    let mut backoff = std::time::Duration::from_millis(500);
    let manager = loop {
        let built = LeaseManager::new(
            client.clone(),
            settings.lease_name.clone(),
            settings.namespace.clone(),
            params.clone(),
            LeaseCreateMode::AutoCreate,
        );
        match built.await {
            Ok(m) => break m,
            Err(e) => {
                warn!(error = %e, lease = %settings.lease_name, "cannot set up the leader Lease, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    info!(
        identity = %settings.identity,
        lease = %settings.lease_name,
        duration_s = duration,
        "joined the leader election"
    );
    // The manager's task renews while a receiver lives and releases the Lease when the
    // last one is dropped.
    let (mut state, task) = manager.watch().await;
    let leases: Api<Lease> = Api::namespaced(client, &settings.namespace);
    follow(&mut state, &leases, &settings, &leader, &stop).await;
    leader.send_replace(false);
    drop(state);
    match task.await {
        Ok(Ok(_)) => {
            info!(identity = %settings.identity, "left the leader election (Lease released)")
        }
        Ok(Err(e)) => warn!(error = %e, "releasing the leader Lease failed"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
}

/// Publishes leadership until the manager ends or `stop`.
///
/// The manager keeps saying "leader" while its renewals fail (it only logs and retries), so
/// a replica cut off from its API server would go on leading after the Lease expired and
/// another replica took it, and write again the moment it reconnects. As client-go's renew
/// deadline: leadership also needs the Lease read back with this replica as the holder
/// within `duration - grace`; otherwise this replica steps down.
async fn follow(
    state: &mut watch::Receiver<bool>,
    leases: &Api<Lease>,
    settings: &ElectionSettings,
    leader: &watch::Sender<bool>,
    stop: &CancellationToken,
) {
    let (duration, grace) = settings.seconds();
    let deadline = Duration::from_secs(duration - grace);
    let mut check = tokio::time::interval(Duration::from_millis(grace * 500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the Lease was last known to be this replica's (`None`: known not to be).
    let (mut elected, mut confirmed) = (false, Some(Instant::now()));
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                elected = *state.borrow_and_update();
                // The manager has just written the Lease.
                confirmed = Some(Instant::now());
            }
            _ = check.tick(), if elected => {
                match tokio::time::timeout(deadline, holds_lease(leases, settings, duration)).await {
                    Ok(Ok(true)) => confirmed = Some(Instant::now()),
                    Ok(Ok(false)) => confirmed = None,
                    Ok(Err(e)) => debug!(error = %e, "reading the leader Lease failed"),
                    Err(_) => debug!("reading the leader Lease timed out"),
                }
            }
            () = stop.cancelled() => break,
        }
        let leads = elected && confirmed.is_some_and(|t| t.elapsed() < deadline);
        if leads == *leader.borrow() {
            continue;
        }
        if leads {
            info!(identity = %settings.identity, "became the leader: writing to the API");
        } else if elected {
            warn!(
                identity = %settings.identity,
                deadline_s = deadline.as_secs(),
                "the leader Lease was not confirmed within the renew deadline: stepping down, serving snapshots only"
            );
        } else {
            info!(identity = %settings.identity, "not the leader: serving snapshots only");
        }
        leader.send_replace(leads);
    }
}

/// Whether the Lease names this replica as holder and was renewed within `duration`
/// seconds (by this replica's clock; the grace absorbs skew): readable but no longer
/// renewed is not leading.
async fn holds_lease(
    leases: &Api<Lease>,
    settings: &ElectionSettings,
    duration: u64,
) -> kube::Result<bool> {
    let spec = leases
        .get(&settings.lease_name)
        .await?
        .spec
        .unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    let renewed = spec.renew_time.is_none_or(|t| {
        Timestamp::now().duration_since(t.0).as_secs() < i64::try_from(duration).unwrap_or(i64::MAX)
    });
    Ok(mine && renewed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_a_third_of_the_duration() {
        let s = |secs| ElectionSettings {
            namespace: "meridian-system".into(),
            lease_name: "meridian-controller".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(secs),
        };
        assert_eq!(s(15).seconds(), (15, 5));
        assert_eq!(s(3).seconds(), (3, 1));
        assert_eq!(s(0).seconds(), (2, 1), "never a zero lease or grace");
        assert!(default_identity().ends_with(&format!("-{}", std::process::id())));
    }
}
