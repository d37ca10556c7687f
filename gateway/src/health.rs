//! Live health of endpoints: readiness from the snapshot, passive outlier detection per
//! service, and peer-gateway liveness (a peer that is down takes all its endpoints with
//! it at once). The data plane turns this into healthy counts for the locality engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::outlier::{Detector, Ejected, Outcome};
use crate::routing::{RoutingTable, Service};

/// Liveness of a peer gateway.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// Whether tunnels to it work.
    pub up: bool,
    /// Since when.
    pub since: Instant,
    /// Why it is down.
    pub last_error: Option<String>,
}

/// Outlier detectors and peer liveness.
#[derive(Debug, Default)]
pub struct Health {
    detectors: Mutex<HashMap<String, Detector>>,
    peers: Mutex<BTreeMap<String, PeerState>>,
}

impl Health {
    /// Aligns detectors with a new routing table: new services get one, settings follow policy
    /// changes, state of endpoints that left is dropped.
    pub async fn sync(&self, table: &RoutingTable) {
        let now = Instant::now();
        let mut detectors = self.detectors.lock().await;
        detectors.retain(|name, _| table.services.contains_key(name));
        for (name, svc) in &table.services {
            let d = detectors
                .entry(name.clone())
                .or_insert_with(|| Detector::new(svc.outlier, now));
            d.set_settings(svc.outlier);
            d.retain(|k| svc.endpoints.iter().any(|e| &e.key == k));
        }
        let mut peers = self.peers.lock().await;
        peers.retain(|c, _| table.peers.contains_key(c));
    }

    /// [`Self::sync`] for the services `hosts` only (the others and the peers unchanged).
    pub async fn sync_services(&self, table: &RoutingTable, hosts: &BTreeSet<String>) {
        let now = Instant::now();
        let mut detectors = self.detectors.lock().await;
        for host in hosts {
            let Some(svc) = table.services.get(host) else {
                detectors.remove(host);
                continue;
            };
            let d = detectors
                .entry(host.clone())
                .or_insert_with(|| Detector::new(svc.outlier, now));
            d.set_settings(svc.outlier);
            d.retain(|k| svc.endpoints.iter().any(|e| &e.key == k));
        }
    }

    /// Health of each endpoint of `svc`: ready, not ejected (unless `minHealthPercent`
    /// suspends ejections), and local or behind a live peer gateway.
    pub async fn healthy(&self, own_cluster: &str, svc: &Service) -> Vec<bool> {
        let detectors = self.detectors.lock().await;
        let peers = self.peers.lock().await;
        let detector = detectors.get(&svc.hostname);
        let ready = svc.endpoints.iter().filter(|e| e.ready).count();
        let apply = detector.is_some_and(|d| d.ejections_apply(svc.endpoints.len(), ready));
        svc.endpoints
            .iter()
            .map(|e| {
                let peer_up =
                    e.cluster == own_cluster || peers.get(&e.cluster).is_none_or(|p| p.up);
                let ejected = apply && detector.is_some_and(|d| d.is_ejected(&e.key));
                e.ready && peer_up && !ejected
            })
            .collect()
    }

    /// Records an outcome for endpoint `idx` of `svc`; true when it got ejected.
    pub async fn record(&self, svc: &Service, idx: usize, outcome: Outcome) -> bool {
        let Some(ep) = svc.endpoints.get(idx) else {
            return false;
        };
        let ready = svc.endpoints.iter().filter(|e| e.ready).count();
        let mut detectors = self.detectors.lock().await;
        let Some(d) = detectors.get_mut(&svc.hostname) else {
            return false;
        };
        d.record(&ep.key, outcome, Instant::now(), svc.endpoints.len(), ready)
    }

    /// Runs due interval sweeps; true when an ejection ended.
    pub async fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut detectors = self.detectors.lock().await;
        let mut changed = false;
        for d in detectors.values_mut() {
            changed |= d.sweep(now);
        }
        changed
    }

    /// Current ejections, by service.
    pub async fn ejections(&self) -> Vec<(String, Ejected)> {
        let detectors = self.detectors.lock().await;
        let mut out = Vec::new();
        for (name, d) in detectors.iter() {
            out.extend(d.ejected().into_iter().map(|e| (name.clone(), e)));
        }
        out.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
        out
    }

    /// Number of ejected endpoints of a service.
    pub async fn ejected_count(&self, service: &str) -> usize {
        self.detectors
            .lock()
            .await
            .get(service)
            .map_or(0, Detector::ejected_count)
    }

    /// Sets a peer's liveness; true when it changed.
    pub async fn set_peer(&self, cluster: &str, up: bool, error: Option<String>) -> bool {
        let mut peers = self.peers.lock().await;
        let changed = peers.get(cluster).is_none_or(|p| p.up != up);
        if changed {
            peers.insert(
                cluster.to_owned(),
                PeerState {
                    up,
                    since: Instant::now(),
                    last_error: error,
                },
            );
        } else if let Some(p) = peers.get_mut(cluster) {
            p.last_error = error;
        }
        changed
    }

    /// Known peer states.
    pub async fn peers(&self) -> BTreeMap<String, PeerState> {
        self.peers.lock().await.clone()
    }
}
