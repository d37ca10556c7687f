//! The controller's configuration: one typed struct, parsed from flags (with the usual
//! Kubernetes environment fallbacks).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use clap::Parser;
use meridian_api::Locality;

fn duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

fn port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LOW-HIGH, e.g. 15100-15999"))?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: LOW must be at least 1 and at most HIGH"));
    }
    Ok(lo..=hi)
}

/// `region[/zone[/subzone]]`; empty (or only slashes) is the unknown locality.
fn locality(s: &str) -> Result<Locality, String> {
    let s = s.trim().trim_end_matches('/');
    if s.is_empty() {
        return Ok(Locality::default());
    }
    s.parse()
        .map_err(|e: meridian_api::locality::LocalityError| e.to_string())
}

impl Config {
    /// The configured caller locality: --locality (`MERIDIAN_LOCALITY`), else --region and
    /// --locality-zone (`MERIDIAN_REGION`, `MERIDIAN_ZONE`: the manifests fill them from the
    /// `meridian-cluster` ConfigMap), else none (the gateway's node decides).
    pub(crate) fn locality(&self) -> Option<Locality> {
        if let Some(l) = self.locality.clone().filter(|l| *l != Locality::default()) {
            return Some(l);
        }
        let region = self.region.as_deref().map(str::trim).unwrap_or_default();
        if region.is_empty() {
            return None;
        }
        let zone = self
            .locality_zone
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        Some(Locality::new(region, zone, ""))
    }
}

/// Authentication of gRPC callers (certificate requests, snapshot streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// TokenReview of the caller's ServiceAccount token (audience --token-audience).
    TokenReview,
    /// No authentication.
    None,
}

/// Flags of `meridian-controller`.
#[derive(Debug, Clone, Parser)]
#[command(name = "meridian-controller", version, about)]
pub struct Config {
    /// Name of the cluster this controller runs in (always a member).
    #[arg(long, env = "MERIDIAN_CLUSTER_NAME")]
    pub cluster_name: String,

    /// Kubeconfig of the own cluster; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Context within --kubeconfig (its current context when unset).
    #[arg(long)]
    pub context: Option<String>,

    /// Namespace holding member Secrets and the managed VIP Services.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meridian-system")]
    pub namespace: String,

    /// Address of the gRPC server (Discovery, Certificates).
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub grpc_addr: SocketAddr,

    /// Serve the gRPC port in plaintext (development only): without TLS, anyone able to
    /// impersonate the controller can feed gateways and DNS servers, and read the gateway's
    /// token. By default the port is TLS with a certificate issued from the mesh CA.
    #[arg(long)]
    pub grpc_plaintext: bool,

    /// Extra DNS name of the gRPC serving certificate (repeatable), besides
    /// `meridian-controller.<namespace>.svc` and `….svc.cluster.local`.
    #[arg(long = "grpc-dns-name")]
    pub grpc_dns_names: Vec<String>,

    /// Lifetime of the gRPC serving certificate; renewed in process at half life.
    #[arg(long, value_parser = duration, default_value = "24h")]
    pub grpc_cert_ttl: Duration,

    /// Address of the HTTP server with /metrics and /healthz (default: $POD_IP:15014,
    /// else 127.0.0.1:15014).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,

    /// Where the metrics server binds by default and how many clients it serves.
    #[command(flatten)]
    pub admin: meridian_api::admin::AdminArgs,

    /// How long an unreachable member's last endpoints are kept (marked stale).
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub stale_endpoint_grace: Duration,

    /// How often each member's API server is probed.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub probe_interval: Duration,

    /// How long the first snapshot waits for remote members to sync.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub initial_sync_timeout: Duration,

    /// Gateway listener ports the controller allocates from, LOW-HIGH.
    #[arg(long, value_parser = port_range, default_value = "15100-15999")]
    pub listener_ports: RangeInclusive<u16>,

    /// Listener ports the VIPs of one namespace's services may hold together (each port of
    /// a service's VIP and of each of its pinned VIPs counts), so one namespace cannot take
    /// the whole range; a VIP beyond it is refused (`VipAllocated=False`,
    /// `NamespacePortLimit`) and every other keeps its ports.
    #[arg(long, default_value_t = 256)]
    pub max_listener_ports_per_namespace: usize,

    /// Label selector (k=v[,k=v]) of the gateway pods the VIP Services select.
    #[arg(long, default_value = "app.kubernetes.io/name=meridian-gateway")]
    pub gateway_selector: String,

    /// Name of the gateway Service in --namespace of every member (its east-west address).
    #[arg(long, default_value = "meridian-gateway")]
    pub gateway_service: String,

    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = "meridian.local")]
    pub trust_domain: String,

    /// DNS zone of global hostnames.
    #[arg(long, default_value = "global")]
    pub zone: String,

    /// Default caller locality of this cluster (region/zone/subzone); derived from the
    /// gateway's node when unset. An empty value counts as unset, and so does a value whose
    /// parts are all empty (`/`), as an unset ConfigMap key leaves it in the manifests.
    #[arg(long, env = "MERIDIAN_LOCALITY", value_parser = locality)]
    pub locality: Option<Locality>,

    /// Region of this cluster's callers, when --locality is unset.
    #[arg(long, env = "MERIDIAN_REGION")]
    pub region: Option<String>,

    /// Zone of this cluster's callers, with --region.
    #[arg(long, env = "MERIDIAN_ZONE")]
    pub locality_zone: Option<String>,

    /// Directory with this cluster's intermediate CA (`intermediate.crt`, `intermediate.key`)
    /// and the mesh root (`ca.crt`); default: the Secret `meridian-ca` in --namespace.
    #[arg(long)]
    pub ca_dir: Option<std::path::PathBuf>,

    /// How SignCertificate callers are authenticated: `token-review` (the caller's
    /// ServiceAccount token must belong to --gateway-service-account) or `none` (development).
    #[arg(long, value_enum, default_value = "token-review")]
    pub csr_auth: AuthMode,

    /// How Discovery Watch callers are authenticated: `token-review` (the caller's token
    /// must belong to --gateway-service-account or --dns-service-account) or `none`
    /// (development: anyone reaching the port reads the whole mesh's endpoints).
    #[arg(long, value_enum, default_value = "token-review")]
    pub discovery_auth: AuthMode,

    /// ServiceAccount (in --namespace) whose token may obtain the gateway certificate and
    /// follow the snapshots.
    #[arg(long, default_value = "meridian-gateway")]
    pub gateway_service_account: String,

    /// ServiceAccount (in --namespace) of the DNS server, whose token may follow the
    /// snapshots.
    #[arg(long, default_value = "meridian-dns")]
    pub dns_service_account: String,

    /// Audience callers' ServiceAccount tokens must be issued for (the projected token's
    /// `audience`); tokens for the API server's default audience are refused.
    #[arg(long, default_value = crate::grpc::auth::DEFAULT_AUDIENCE)]
    pub token_audience: String,

    /// Most snapshot streams open at once; one more is refused (RESOURCE_EXHAUSTED) and
    /// counted in meridian_grpc_refusals_total{reason="subscriber_limit"}.
    #[arg(long, default_value_t = crate::grpc::discovery::DEFAULT_MAX_SUBSCRIBERS)]
    pub max_subscribers: usize,

    /// HTTP/2 PING interval on gRPC connections: a subscriber that vanished without closing
    /// its connection is noticed (and its stream slot freed) within interval + timeout.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub grpc_keepalive_interval: Duration,

    /// How long a PING may go unacknowledged before the connection is closed.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub grpc_keepalive_timeout: Duration,

    /// Apply Meridian's CRDs at startup (handy for development and tests).
    #[arg(long)]
    pub install_crds: bool,

    /// Elect a leader among the replicas through a Lease in --namespace: only the leader
    /// writes to the API; every replica serves snapshots. `false` makes this replica write
    /// unconditionally (one replica only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(long, default_value = "meridian-controller")]
    pub lease_name: String,

    /// How long a leader's Lease is valid after its last renewal (whole seconds, at least
    /// 2 s); a crashed leader is replaced within it.
    #[arg(long, value_parser = duration, default_value = "15s")]
    pub lease_duration: Duration,

    /// This replica's identity in the election; default: host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
}

/// Port of the metrics server when --metrics-addr is not given.
pub(crate) const METRICS_PORT: u16 = 15014;

impl Config {
    /// The VIP manager's settings.
    pub(crate) fn vip_settings(&self) -> crate::vip::VipSettings {
        crate::vip::VipSettings {
            namespace: self.namespace.clone(),
            selector: self.gateway_labels(),
            range: self.listener_ports.clone(),
            namespace_limit: self.max_listener_ports_per_namespace,
        }
    }

    /// The metrics server's address in force.
    pub(crate) fn metrics_addr(&self) -> SocketAddr {
        self.admin.addr(self.metrics_addr, METRICS_PORT)
    }

    /// The gateway selector as a label map.
    pub(crate) fn gateway_labels(&self) -> std::collections::BTreeMap<String, String> {
        self.gateway_selector
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let c = Config::try_parse_from([
            "meridian-controller",
            "--cluster-name",
            "a",
            "--stale-endpoint-grace",
            "2s",
            "--listener-ports",
            "20000-20009",
            "--locality",
            "eu/eu-1",
        ])
        .unwrap();
        assert_eq!(c.stale_endpoint_grace, Duration::from_secs(2));
        assert_eq!(c.listener_ports, 20000..=20009);
        assert_eq!(c.max_listener_ports_per_namespace, 256);
        assert_eq!(c.locality(), Some(Locality::new("eu", "eu-1", "")));
        assert!(c.leader_elect);
        // Never every interface by default: the pod IP (downward API) or loopback.
        assert!(
            !c.metrics_addr().ip().is_unspecified(),
            "{}",
            c.metrics_addr()
        );
        assert_eq!(c.metrics_addr().port(), METRICS_PORT);
        assert!(!c.grpc_plaintext, "TLS by default");
        assert_eq!(
            c.discovery_auth,
            AuthMode::TokenReview,
            "authenticated by default"
        );
        assert_eq!(c.token_audience, "meridian-controller");
        assert_eq!(c.max_subscribers, 1024);
        assert_eq!(c.grpc_cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(
            c.gateway_labels()
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("meridian-gateway")
        );
        assert!(
            Config::try_parse_from([
                "meridian-controller",
                "--cluster-name",
                "a",
                "--listener-ports",
                "9-1"
            ])
            .is_err()
        );
        let c = Config::try_parse_from([
            "meridian-controller",
            "--cluster-name",
            "a",
            "--leader-elect=false",
            "--locality=/",
        ])
        .unwrap();
        assert!(!c.leader_elect);
        assert_eq!(c.locality(), None, "an empty locality is no locality");
        let c = Config::try_parse_from([
            "meridian-controller",
            "--cluster-name",
            "a",
            "--region",
            "eu",
            "--locality-zone",
            "eu-2",
        ])
        .unwrap();
        assert_eq!(c.locality(), Some(Locality::new("eu", "eu-2", "")));
    }
}
