//! Keeps the served zones in step with the controller's snapshots.
//!
//! Each new snapshot is turned into zones on a blocking thread (large meshes must not
//! stall the query path), then swapped in whole. Snapshots that arrive while a build runs
//! are coalesced by the watch channel: only the latest is built next. If a build fails,
//! the previous zones stay in service.

use std::sync::Arc;

use meridian_api::proto::Snapshot;
use meridian_api::signal::Shutdown;
use meridian_api::subscription::SnapshotReceiver;
use tracing::{error, info, warn};

use crate::authority::Authority;
use crate::metrics::Metrics;
use crate::zone::{ZoneSettings, Zones};

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
    loop {
        let latest = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = latest {
            apply(snapshot, &authority, &settings, &metrics, &cluster).await;
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

async fn apply(
    snapshot: Arc<Snapshot>,
    authority: &Authority,
    settings: &Arc<ZoneSettings>,
    metrics: &Metrics,
    cluster: &str,
) {
    let version = snapshot.version;
    if snapshot.cluster != cluster {
        warn!(
            version,
            snapshot_cluster = %snapshot.cluster,
            "snapshot is for another cluster; serving it anyway"
        );
    }
    let settings = settings.clone();
    let built = tokio::task::spawn_blocking(move || {
        let zones = Zones::build(&snapshot, &settings);
        let records = zones.record_count();
        let skipped = zones.skipped().to_vec();
        zones
            .into_catalog()
            .map(|catalog| (catalog, records, skipped))
    })
    .await;
    match built {
        Ok(Ok((catalog, records, skipped))) => {
            for entry in &skipped {
                warn!(version, service = %entry.service, reason = %entry.reason, "snapshot entry not served");
            }
            authority.replace(catalog);
            metrics.snapshot_applied(version, records, skipped.len());
            info!(version, records, skipped = skipped.len(), "zones updated");
        }
        Ok(Err(zone_error)) => {
            error!(version, error = %zone_error, "snapshot not applied; still serving the previous zones");
        }
        Err(join_error) => {
            error!(version, error = %join_error, "zone build failed; still serving the previous zones");
        }
    }
}
