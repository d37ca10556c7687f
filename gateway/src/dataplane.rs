//! The data plane's shared state: the routes built from the routing table and live health,
//! dialling endpoints (directly when local, through the owning cluster's gateway when
//! remote), reusing upstream HTTP connections, reporting outcomes to outlier detection,
//! and draining on shutdown.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};

use crate::address_map::AddressMap;
use crate::dial::{DialError, Io};
use crate::health::Health;
use crate::limits::Limits;
use crate::metrics::{self, Metrics};
use crate::outlier::Outcome;
use crate::route::ServiceRoutes;
use crate::routing::{Changes, Endpoint, Port, RoutingTable, Service};
use crate::tunnel::{PeerEvent, Pool, TunnelError};
use crate::upstream::{self, Conn, Upstreams};

/// Tunables of the data plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Retries onto the next choice.
    pub max_retries: u32,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// How long an HTTP upstream may take to send response headers (zero: no limit).
    pub response_timeout: Duration,
    /// Rewrites endpoint addresses before dialling (simulated pod networks only).
    pub address_map: Option<AddressMap>,
    /// Limits of the listeners.
    pub limits: Limits,
    /// Reuse of upstream HTTP connections.
    pub upstream: upstream::Settings,
}

impl Settings {
    /// Connects to an endpoint of this cluster, within the connect timeout.
    pub async fn connect_endpoint(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        let addr = self.address_map.map_or(target, |m| m.apply(target));
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// Routes for the current routing table and health.
#[derive(Debug, Default)]
pub struct Routing {
    /// The routing table in use.
    pub table: Arc<RoutingTable>,
    /// Routes and balancers per service hostname (a persistent map: a change to one
    /// service shares every other's).
    pub services: imbl::HashMap<String, Arc<ServiceRoutes>>,
}

/// Held by an open connection: [`Dataplane::drain`] waits until every guard is dropped.
#[derive(Debug)]
pub struct DrainGuard(watch::Receiver<bool>);

impl DrainGuard {
    /// Resolves once draining has started: the connection should finish gracefully.
    pub async fn draining(&mut self) {
        // An error means the data plane is gone: draining too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

/// The gateway's data plane.
#[derive(Debug)]
pub struct Dataplane {
    /// This gateway's cluster.
    pub cluster: String,
    /// `cluster` as a metric label.
    pub cluster_label: metrics::Label,
    /// Tunables.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live health.
    pub health: Health,
    routing: ArcSwap<Routing>,
    rebuild_lock: Mutex<()>,
    pool: Pool,
    upstreams: Upstreams,
    drain: watch::Sender<bool>,
    // Bumped with each installed snapshot, so open tunnel connections re-check admission.
    snapshots: watch::Sender<u64>,
}

impl Dataplane {
    /// A data plane with an empty routing table.
    pub fn new(cluster: &str, settings: Settings, metrics: Arc<Metrics>, pool: Pool) -> Self {
        Self {
            cluster: cluster.to_owned(),
            cluster_label: metrics::Label::from(cluster),
            upstreams: Upstreams::new(settings.upstream),
            settings,
            metrics,
            health: Health::default(),
            routing: ArcSwap::from_pointee(Routing::default()),
            rebuild_lock: Mutex::new(()),
            pool,
            drain: watch::channel(false).0,
            snapshots: watch::channel(0).0,
        }
    }

    /// Installs the tunnel connector (once credentials exist).
    pub fn set_connector(&self, connector: meridian_identity::tls::Connector) {
        self.pool.set_connector(connector);
    }

    /// The routing in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Switches to a new routing table (a new snapshot).
    pub async fn set_table(&self, table: RoutingTable) {
        self.health.sync(&table).await;
        let version = table.version;
        self.rebuild_with(Arc::new(table)).await;
        // Only now is the snapshot the one requests route by.
        self.metrics.snapshot_version.set(version);
        self.snapshots.send_modify(|n| *n += 1);
    }

    /// Changes whenever a new snapshot is in force (tunnel connections re-check their
    /// peer's membership then).
    pub fn snapshots(&self) -> watch::Receiver<u64> {
        self.snapshots.subscribe()
    }

    /// Recomputes every service's split from the current health.
    pub async fn rebuild(&self) {
        let table = self.routing().table.clone();
        self.rebuild_with(table).await;
    }

    async fn rebuild_with(&self, table: Arc<RoutingTable>) {
        // Serialized, so a slow rebuild never overwrites a newer one.
        let _guard = self.rebuild_lock.lock().await;
        let mut services = imbl::HashMap::new();
        let mut live: HashMap<upstream::Key, usize> = HashMap::new();
        // Localities and services that left must not keep their last share.
        self.metrics.split.clear();
        for (name, svc) in &table.services {
            let routes = self.service_routes(&table, name, svc).await;
            for key in self.live_keys(&routes) {
                *live.entry(key).or_default() += 1;
            }
            services.insert(name.clone(), Arc::new(routes));
        }
        self.routing.store(Arc::new(Routing { table, services }));
        // Connections to endpoints that left or turned unhealthy are not worth keeping.
        self.upstreams.retain_counted(live).await;
    }

    /// Switches to `table`, which differs from the one in force by `changes` only: only
    /// the changed services' routes are rebuilt, the others are kept. A header change
    /// (the caller's locality, the peers) rebuilds every split, as all depend on it.
    pub async fn apply_table(&self, table: RoutingTable, changes: &Changes) {
        if changes.header {
            return self.set_table(table).await;
        }
        self.health.sync_services(&table, &changes.services).await;
        let version = table.version;
        self.rebuild_services(Arc::new(table), &changes.services)
            .await;
        self.metrics.snapshot_version.set(version);
        self.snapshots.send_modify(|n| *n += 1);
    }

    /// Rebuilds the routes of `hosts` against `table`, keeping every other service's.
    async fn rebuild_services(&self, table: Arc<RoutingTable>, hosts: &BTreeSet<String>) {
        let _guard = self.rebuild_lock.lock().await;
        let mut services = self.routing().services.clone();
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for host in hosts {
            if let Some(old) = services.remove(host) {
                removed.extend(self.live_keys(&old));
                self.forget_split(&old);
            }
            if let Some(svc) = table.services.get(host) {
                let routes = self.service_routes(&table, host, svc).await;
                added.extend(self.live_keys(&routes));
                services.insert(host.clone(), Arc::new(routes));
            }
        }
        self.routing.store(Arc::new(Routing { table, services }));
        self.upstreams.update_live(removed, added).await;
    }

    /// The routes of one service from the current health, with its ejection gauge.
    async fn service_routes(
        &self,
        table: &RoutingTable,
        name: &str,
        svc: &Arc<Service>,
    ) -> ServiceRoutes {
        let healthy = self.health.healthy(&table.cluster, svc).await;
        let routes = ServiceRoutes::build(svc.clone(), &table.caller, healthy);
        let ejected = self.health.ejected_count(name).await as i64;
        self.metrics
            .ejected
            .get_or_create(&metrics::Service {
                service: name.to_owned(),
            })
            .set(ejected);
        self.record_split(&routes);
        routes
    }

    /// The upstream keys worth pooling for `routes`: healthy endpoints of HTTP ports.
    fn live_keys<'a>(
        &'a self,
        routes: &'a ServiceRoutes,
    ) -> impl Iterator<Item = upstream::Key> + 'a {
        let svc = &routes.service;
        svc.ports
            .iter()
            .filter(|p| p.is_http())
            .flat_map(move |port| {
                (0..svc.endpoints.len())
                    .filter(|&i| routes.healthy[i])
                    .map(move |idx| self.upstream_key(routes, idx, port))
            })
    }

    /// The split of every endpoint of `routes` (destination 0), in percent per locality.
    fn split_shares(&self, routes: &ServiceRoutes) -> HashMap<metrics::SplitShare, f64> {
        let mut percents: HashMap<metrics::SplitShare, f64> = HashMap::new();
        let Some(all) = routes.destinations.first() else {
            return percents;
        };
        for (g, share) in all.balance.groups.iter().zip(&all.balance.split.groups) {
            let labels = metrics::SplitShare {
                service: routes.service.label.clone(),
                source_cluster: self.cluster_label.clone(),
                locality: g.locality.to_string(),
            };
            *percents.entry(labels).or_default() += share.percent;
        }
        percents
    }

    /// Publishes the split of `routes` per locality.
    fn record_split(&self, routes: &ServiceRoutes) {
        for (labels, percent) in self.split_shares(routes) {
            self.metrics.split.get_or_create(&labels).set(percent);
        }
    }

    /// Withdraws the split series of routes being replaced, so a locality or service that
    /// left does not keep its last share.
    fn forget_split(&self, routes: &ServiceRoutes) {
        for labels in self.split_shares(routes).into_keys() {
            self.metrics.split.remove(&labels);
        }
    }

    /// Metric labels for traffic from this gateway to endpoint `ep` of a service port:
    /// shared label values only, no allocation (this runs per request).
    pub fn destination(
        &self,
        service: &Service,
        port: &Port,
        ep: &Endpoint,
    ) -> metrics::Destination {
        metrics::Destination {
            service: service.label.clone(),
            port: port.port,
            source_cluster: self.cluster_label.clone(),
            cluster: ep.cluster_label.clone(),
            locality: ep.locality_label.clone(),
        }
    }

    /// Reports the outcome of a request or connection to endpoint `idx`; an ejection
    /// recomputes the split.
    pub async fn report(&self, routes: &ServiceRoutes, idx: usize, outcome: Outcome) {
        if self.health.record(&routes.service, idx, outcome).await {
            let ep = &routes.service.endpoints[idx];
            info!(service = %routes.service.hostname, endpoint = %ep.key.address, cluster = %ep.cluster, "endpoint ejected");
            self.metrics
                .ejections
                .get_or_create(&metrics::Ejection {
                    service: routes.service.hostname.clone(),
                    cluster: ep.cluster.clone(),
                    locality: ep.locality_label.to_string(),
                })
                .inc();
            self.rebuild().await;
        }
    }

    /// Runs due outlier sweeps; recomputes when an ejection ended.
    pub async fn sweep(&self) {
        if self.health.sweep().await {
            debug!("ejections ended");
            self.rebuild().await;
        }
    }

    /// Applies a peer liveness change.
    pub async fn peer_event(&self, ev: PeerEvent) {
        self.metrics
            .peer_up
            .get_or_create(&metrics::Peer {
                peer: ev.cluster.clone(),
            })
            .set(i64::from(ev.up));
        if self
            .health
            .set_peer(&ev.cluster, ev.up, ev.error.clone())
            .await
        {
            if ev.up {
                info!(peer = %ev.cluster, "peer gateway up");
            } else {
                warn!(peer = %ev.cluster, error = ?ev.error, "peer gateway down: its endpoints are unhealthy");
            }
            self.rebuild().await;
        }
    }

    /// Whether the tunnel to `cluster`'s gateway is gone after a request through it
    /// failed. If so, the peer is marked down now, as the pool's own event will shortly
    /// do, so that the failed request's retries route by the rebuilt split (another
    /// cluster) instead of trying the lost peer's other endpoints.
    pub async fn peer_lost(&self, cluster: &str) -> bool {
        if cluster == self.cluster || self.pool.is_connected(cluster).await {
            return false;
        }
        self.peer_event(PeerEvent {
            cluster: cluster.to_owned(),
            up: false,
            error: Some("tunnel connection lost".to_owned()),
        })
        .await;
        // The pool's own event may be rebuilding the routing right now: wait for that
        // rebuild, so the caller's next look at the routing is without the peer.
        drop(self.rebuild_lock.lock().await);
        // A reconnect that raced with the check above sent its "up" event before our
        // "down": restore it, or the peer would stay down while connected (the prober
        // only reconnects peers without a connection).
        if self.pool.is_connected(cluster).await {
            self.peer_event(PeerEvent {
                cluster: cluster.to_owned(),
                up: true,
                error: None,
            })
            .await;
        }
        true
    }

    /// Connects to every peer gateway that has no live connection; successes mark the peer
    /// up (failures are reported by the pool).
    pub async fn probe_peers(&self) {
        let table = self.routing().table.clone();
        for peer in table.peers.values() {
            if self.pool.is_connected(&peer.cluster).await {
                continue;
            }
            if self.pool.probe(peer).await.is_ok() {
                self.peer_event(PeerEvent {
                    cluster: peer.cluster.clone(),
                    up: true,
                    error: None,
                })
                .await;
            }
        }
    }

    /// Opens a byte stream to endpoint `idx` for service port `port`.
    pub async fn dial(
        &self,
        routes: &ServiceRoutes,
        idx: usize,
        port: &Port,
    ) -> Result<Box<dyn Io>, DialError> {
        let ep = &routes.service.endpoints[idx];
        let target = ep.target(port);
        if ep.cluster == self.cluster {
            let tcp = self
                .settings
                .connect_endpoint(target)
                .await
                .map_err(|e| DialError::Endpoint(format!("connect to {target}: {e}")))?;
            return Ok(Box::new(tcp));
        }
        let table = self.routing().table.clone();
        let peer = table
            .peers
            .get(&ep.cluster)
            .ok_or_else(|| DialError::NoPeer(ep.cluster.clone()))?;
        // The owning gateway authorizes by the global service, pinned VIP or not.
        let service = format!("{}:{}", routes.service.global_hostname, port.port);
        match tokio::time::timeout(
            self.settings.connect_timeout * 2,
            self.pool.open(peer, target, &service),
        )
        .await
        {
            Ok(Ok(io)) => Ok(Box::new(io)),
            Ok(Err(TunnelError::TargetConnect)) => Err(DialError::Endpoint(format!(
                "{} could not connect to {target}",
                peer.cluster
            ))),
            Ok(Err(TunnelError::Refused(s))) => Err(DialError::Refused(s)),
            Ok(Err(e @ TunnelError::Peer { .. })) => Err(DialError::Peer(e.to_string())),
            Err(_) => Err(DialError::Peer(format!(
                "tunnel to {} timed out",
                peer.cluster
            ))),
        }
    }

    /// How connections to endpoint `idx` for service port `port` are pooled.
    pub fn upstream_key(&self, routes: &ServiceRoutes, idx: usize, port: &Port) -> upstream::Key {
        let ep = &routes.service.endpoints[idx];
        let remote = ep.cluster != self.cluster;
        upstream::Key {
            cluster: ep.cluster_label.clone(),
            target: ep.target(port),
            // What `dial` names in the CONNECT request: the global service, pinned or not.
            tunnel_service: remote
                .then(|| format!("{}:{}", routes.service.global_hostname, port.port)),
            http2: port.is_http2(),
        }
    }

    /// An HTTP connection to endpoint `idx` for service port `port`: a pooled one, or a
    /// new one over [`Dataplane::dial`]. Counts opened connections and reused requests.
    pub async fn connect_upstream(
        &self,
        routes: &ServiceRoutes,
        idx: usize,
        port: &Port,
    ) -> Result<Conn, DialError> {
        let key = self.upstream_key(routes, idx, port);
        let conn = self
            .upstreams
            .connect(&key, || self.dial(routes, idx, port))
            .await?;
        self.count_upstream(routes, &conn, true);
        Ok(conn)
    }

    /// A fresh connection to endpoint `idx`, replacing connection `stale` that failed a
    /// request before sending it.
    pub async fn reconnect_upstream(
        &self,
        routes: &ServiceRoutes,
        idx: usize,
        port: &Port,
        stale: u64,
    ) -> Result<Conn, DialError> {
        let key = self.upstream_key(routes, idx, port);
        let conn = self
            .upstreams
            .reconnect(&key, stale, || self.dial(routes, idx, port))
            .await?;
        // The request was already counted as reused.
        self.count_upstream(routes, &conn, false);
        Ok(conn)
    }

    fn count_upstream(&self, routes: &ServiceRoutes, conn: &Conn, count_reuse: bool) {
        let label = metrics::Service {
            service: routes.service.hostname.clone(),
        };
        if !conn.reused() {
            self.metrics
                .upstream_connections
                .get_or_create(&label)
                .inc();
        } else if count_reuse {
            self.metrics.upstream_reused.get_or_create(&label).inc();
        }
    }

    /// The pool of upstream HTTP connections.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// A guard held by every open connection; shutdown waits for all to be dropped.
    pub fn drain_guard(&self) -> DrainGuard {
        DrainGuard(self.drain.subscribe())
    }

    /// Signals shutdown and waits up to `timeout` for open connections to finish.
    pub async fn drain(&self, timeout: Duration) {
        self.drain.send_replace(true);
        if tokio::time::timeout(timeout, self.drain.closed())
            .await
            .is_err()
        {
            warn!(
                open = self.drain.receiver_count(),
                "drain timeout: cutting open connections"
            );
        }
        self.upstreams.clear().await;
        self.pool.clear().await;
    }
}
