//! Keeps the served zones in step with the controller's snapshots.
//!
//! Each new snapshot is split into versioned resources ([`Resources`]) and compared with
//! the ones last applied; only the services that changed are rebuilt, and only the record
//! sets that differ are written into the served zones ([`crate::state`]). That runs on a
//! blocking thread (the first snapshot of a large mesh builds everything, and must not
//! stall the query path). Snapshots that arrive while an update runs are coalesced by the
//! watch channel: only the latest is applied next, against what was applied last. If an
//! update fails, the previous zones stay in service and the next snapshot is built from
//! scratch.

use std::sync::Arc;

use meridian_api::proto::Snapshot;
use meridian_api::resources::Resources;
use meridian_api::signal::Shutdown;
use meridian_api::subscription::SnapshotReceiver;
use tracing::{error, info, warn};

use crate::authority::Authority;
use crate::metrics::Metrics;
use crate::state::ZoneState;
use crate::zone::ZoneSettings;

/// Follows `snapshots` until the subscription ends or `shutdown` is cancelled, applying
/// each one to `authority`.
pub(crate) async fn follow(
    mut snapshots: SnapshotReceiver,
    authority: Authority,
    settings: Arc<ZoneSettings>,
    metrics: Arc<Metrics>,
    cluster: String,
    shutdown: Shutdown,
) {
    let mut served = None;
    loop {
        let latest = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = latest {
            served = apply(snapshot, served, &authority, &settings, &metrics, &cluster).await;
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// The zones being served and the resources they were built from.
struct Served {
    state: ZoneState,
    resources: Resources,
}

/// Applies `snapshot` on top of `served` (`None`: from scratch); returns what is served
/// now, or `None` if the update failed.
async fn apply(
    snapshot: Arc<Snapshot>,
    served: Option<Served>,
    authority: &Authority,
    settings: &Arc<ZoneSettings>,
    metrics: &Metrics,
    cluster: &str,
) -> Option<Served> {
    let version = snapshot.version;
    if snapshot.cluster != cluster {
        warn!(
            version,
            snapshot_cluster = %snapshot.cluster,
            "snapshot is for another cluster; serving it anyway"
        );
    }
    let mut served = served.unwrap_or_else(|| Served {
        state: ZoneState::new(settings.clone()),
        resources: Resources::new(),
    });
    let authority = authority.clone();
    let updated = tokio::task::spawn_blocking(move || {
        // Until the subscription delivers resources (the delta stream), each full snapshot
        // is split again; the diff and the rebuild stay limited to what changed.
        let resources = Resources::from_snapshot(&snapshot);
        let touched = resources.touched_since(&served.resources);
        let applied = served
            .state
            .apply(&resources, &touched, version, &authority);
        served.resources = resources;
        (served, applied)
    })
    .await;
    match updated {
        Ok((served, applied)) => {
            for entry in &applied.newly_skipped {
                warn!(version, service = %entry.service, reason = %entry.reason, "snapshot entry not served");
            }
            metrics.snapshot_applied(version, applied.records, applied.skipped);
            info!(
                version,
                services = applied.services,
                record_sets = applied.sets,
                records = applied.records,
                skipped = applied.skipped,
                "zones updated"
            );
            Some(served)
        }
        Err(join_error) => {
            error!(version, error = %join_error, "zone update failed; still serving the previous zones");
            None
        }
    }
}
