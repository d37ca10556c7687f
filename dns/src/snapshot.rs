//! Keeps the served zones in step with the controller's resources.
//!
//! The subscription publishes the applied resources ([`Resources`]: the snapshot as
//! versioned `service/…` and `endpoints/…` resources, fed by the delta stream, or by full
//! snapshots from a controller without it). Each new value is compared with the one last
//! applied ([`Resources::touched_since`], O(changes)); only the services that changed are
//! rebuilt, and only the record sets that differ are written into the served zones
//! ([`crate::state`]). That runs on a blocking thread (the first value of a large mesh
//! builds everything, and must not stall the query path). Values that arrive while an
//! update runs are coalesced by the watch channel: only the latest is applied next,
//! against what was applied last. If an update fails, the previous zones stay in service
//! and the next value is built from scratch.

use std::sync::Arc;

use meridian_api::resources::Resources;
use meridian_api::signal::Shutdown;
use meridian_api::subscription::ResourcesReceiver;
use tracing::{error, info, warn};

use crate::authority::Authority;
use crate::metrics::Metrics;
use crate::state::ZoneState;
use crate::zone::ZoneSettings;

/// Follows `updates` until the subscription ends or `shutdown` is cancelled, applying
/// each new state to `authority`.
pub(crate) async fn follow(
    mut updates: ResourcesReceiver,
    authority: Authority,
    settings: Arc<ZoneSettings>,
    metrics: Arc<Metrics>,
    cluster: String,
    shutdown: Shutdown,
) {
    let mut served = None;
    loop {
        let latest = updates.borrow_and_update().clone();
        if let Some(resources) = latest {
            served = apply(resources, served, &authority, &settings, &metrics, &cluster).await;
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// The zones being served and the resources they were built from.
struct Served {
    state: ZoneState,
    resources: Resources,
}

/// Applies `resources` on top of `served` (`None`: from scratch); returns what is served
/// now, or `None` if the update failed.
async fn apply(
    resources: Resources,
    served: Option<Served>,
    authority: &Authority,
    settings: &Arc<ZoneSettings>,
    metrics: &Metrics,
    cluster: &str,
) -> Option<Served> {
    // The controller's snapshot version on the full stream, the system version on the
    // delta stream: what the SOA serial and `meridian_dns_snapshot_version` carry.
    let version = resources.snapshot_version();
    let for_cluster = resources.header().map(|h| h.cluster.as_str());
    if for_cluster.is_some_and(|c| c != cluster) {
        warn!(
            version,
            snapshot_cluster = for_cluster.unwrap_or_default(),
            "snapshot is for another cluster; serving it anyway"
        );
    }
    let mut served = served.unwrap_or_else(|| Served {
        state: ZoneState::new(settings.clone()),
        resources: Resources::new(),
    });
    let authority = authority.clone();
    let updated = tokio::task::spawn_blocking(move || {
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
