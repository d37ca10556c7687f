//! The gateway's command line: one typed struct, flags documented, environment fallbacks
//! where Kubernetes manifests set them (cluster, pod name, controller address).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use meridian_api::telemetry::LogFormat;

/// Port of the admin listener (probes, metrics) when --admin-addr is not given.
pub const ADMIN_PORT: u16 = 15021;

/// Meridian east-west gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "meridian-gateway", version, about)]
pub struct Config {
    /// Name of the member cluster this gateway serves.
    #[arg(long, env = "MERIDIAN_CLUSTER_NAME")]
    pub cluster: String,

    /// Where the controller is (snapshot stream and, unless --ca is set, certificates)
    /// and how it is verified. Over TLS the root the controller returns with the gateway
    /// certificate must be in --controller-ca-file too.
    #[command(flatten)]
    pub controller: meridian_api::channel::ControllerArgs,

    /// The certificate signer's gRPC endpoint (default: --controller); verified the same way.
    #[arg(long, env = "MERIDIAN_CA")]
    pub ca: Option<String>,

    /// Instance name for logs and the controller (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "meridian-gateway")]
    pub instance: String,

    /// Trust domain of the mesh (default: the one in the first snapshot).
    #[arg(long, env = "MERIDIAN_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// Tunnel listener: HTTP/2 CONNECT over mTLS from peer gateways.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub tunnel_addr: SocketAddr,

    /// Admin listener for probes and scraping: /healthz/ready, /metrics (default:
    /// $POD_IP:15021, else 127.0.0.1:15021).
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,

    /// Listener of /config_dump (and /metrics, /healthz/ready): loopback only by default,
    /// as Envoy's admin port in Istio, since the dump shows every endpoint of the mesh.
    /// Reach it with `kubectl port-forward`.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub config_dump_addr: SocketAddr,

    /// Where admin listeners bind by default and how many clients they serve.
    #[command(flatten)]
    pub admin: meridian_api::admin::AdminArgs,

    /// Connections each listener (every outbound listener, the tunnel listener) serves at
    /// once; more are closed on accept and counted in `connections_refused`.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Threads serving the outbound listeners' connections, each with an event loop of
    /// its own (connections are handed out in turn and stay on theirs). Default: half the
    /// available cores, at least one (the main runtime, one thread per core, serves the
    /// tunnel and the control plane); 0 serves them on the main runtime's threads.
    #[arg(long, env = "MERIDIAN_GATEWAY_WORKERS")]
    pub workers: Option<usize>,

    /// Tunnel connections one peer gateway identity may hold at once; more are closed
    /// after the handshake and counted in `connections_refused`.
    #[arg(long, default_value_t = 64)]
    pub max_peer_connections: usize,

    /// Concurrent streams one tunnel connection may carry (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS; the peer's pool waits for a free one).
    #[arg(long, default_value_t = 200)]
    pub tunnel_max_streams: u32,

    /// How long a tunnel client may take to start and finish its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,

    /// How long an HTTP/1 client of an outbound listener may take to send request
    /// headers; also how long an idle keep-alive connection is kept.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub http_header_timeout: Duration,

    /// A spliced TCP connection, tunnel stream or inbound HTTP connection that moves no
    /// byte in either direction for this long is closed (Envoy's tcp_proxy idle_timeout
    /// default; `0s`: never).
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub idle_timeout: Duration,

    /// Address the outbound listeners (one per global service port) bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub outbound_bind: IpAddr,

    /// Static certificate chain (PEM); with --key and --root, replaces CSR signing.
    #[arg(long, requires_all = ["key", "root"])]
    pub cert_chain: Option<PathBuf>,

    /// Static private key (PEM) for --cert-chain.
    #[arg(long, requires_all = ["cert_chain", "root"])]
    pub key: Option<PathBuf>,

    /// Static mesh root certificate (PEM) for --cert-chain.
    #[arg(long, requires_all = ["cert_chain", "key"])]
    pub root: Option<PathBuf>,

    /// Requested certificate lifetime; renewed at half life (e.g. 24h, 10m, 30s).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,

    /// Retries of an idempotent HTTP request onto the next choice (connect failure or 503).
    #[arg(long, default_value_t = 2)]
    pub max_retries: u32,

    /// Timeout of one connection attempt to an endpoint or a peer gateway.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// How often a peer gateway that is down is probed again.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub peer_probe_interval: Duration,

    /// HTTP/2 keepalive PING interval on tunnel connections (detects silent peers).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub tunnel_keepalive: Duration,

    /// How long an unused upstream HTTP connection is kept for the next request to the
    /// same endpoint (idle HTTP/1.1 keep-alive connections, and the shared HTTP/2
    /// connection of an endpoint). `0s` turns reuse off: every request opens its own
    /// connection (or tunnel stream).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Idle HTTP/1.1 upstream connections kept per endpoint (0: none; HTTP/2 connections
    /// are shared regardless).
    #[arg(long, default_value_t = 16)]
    pub upstream_max_idle: usize,

    /// How long an upstream may take to answer an HTTP request with its response headers
    /// (retries on a fresh connection included); then the client gets 504 and the
    /// endpoint an error for outlier detection. Envoy's default route timeout; `0s`
    /// waits forever (long polls, streaming RPCs that send headers late).
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub upstream_timeout: Duration,

    /// On shutdown, how long open connections may drain before they are cut.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Rewrite dialled endpoint addresses `FROM=TO` (CIDRs of equal length), for simulated
    /// pod networks such as the testbed's `10.0.0.0/8=127.0.0.0/8`. Never needed in a
    /// real cluster.
    #[arg(long)]
    pub dial_address_map: Option<crate::address_map::AddressMap>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

impl Config {
    /// The limits the flags set.
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits {
            max_connections: self.max_connections,
            max_peer_connections: self.max_peer_connections,
            max_streams: self.tunnel_max_streams,
            handshake_timeout: self.handshake_timeout,
            header_timeout: self.http_header_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    /// The connection workers in force: `--workers`, else half the available cores, at
    /// least one. Why half: the main runtime (the tunnel server's inbound traffic, the
    /// control plane) has a thread per core too, and a gateway busy both ways would
    /// otherwise run twice as many busy threads as cores; on two cores shared with the
    /// load, two workers had a p99 of 3.8–4.3 ms against 0.75–0.82 ms for one, at the
    /// same rate (docs/benchmarks.md).
    pub fn connection_workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            (cores / 2).max(1)
        })
    }

    /// The admin listener's address in force (probes and metrics).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr(self.admin_addr, ADMIN_PORT)
    }

    /// The certificate signer endpoint in force.
    pub fn ca_endpoint(&self) -> &str {
        self.ca.as_deref().unwrap_or(&self.controller.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_static_certs() {
        let c = Config::try_parse_from(["meridian-gateway", "--cluster", "east"]).unwrap();
        assert_eq!(c.tunnel_addr.port(), 15008);
        assert_eq!(c.admin_addr().port(), 15021);
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.limits().max_streams, 200);
        assert_eq!(c.cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.max_retries, 2);
        assert_eq!(c.upstream_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.upstream_max_idle, 16);
        assert_eq!(c.upstream_timeout, Duration::from_secs(15));
        let off = Config::try_parse_from([
            "meridian-gateway",
            "--cluster",
            "east",
            "--upstream-idle-timeout",
            "0s",
        ])
        .unwrap();
        assert!(off.upstream_idle_timeout.is_zero());
        assert_eq!(c.ca_endpoint(), c.controller.url);
        assert!(c.controller.url.starts_with("https://"), "TLS by default");
        assert_eq!(
            c.controller.server_name,
            "meridian-controller.meridian-system.svc"
        );
        assert!(c.controller.tls().is_none());
        // Static files come as a set of three.
        assert!(Config::try_parse_from(["g", "--cluster", "e", "--cert-chain", "c.pem"]).is_err());
    }

    /// The admin listeners never bind every interface by default: the probe and metrics
    /// listener takes the pod IP (downward API) or loopback, /config_dump loopback.
    #[test]
    fn admin_listeners_default_to_pod_ip_or_loopback() {
        let c = Config::try_parse_from(["g", "--cluster", "e"]).unwrap();
        assert!(!c.admin_addr().ip().is_unspecified(), "{}", c.admin_addr());
        assert!(
            c.config_dump_addr.ip().is_loopback(),
            "{}",
            c.config_dump_addr
        );
        let c = Config::try_parse_from(["g", "--cluster", "e", "--pod-ip", "10.1.2.3"]).unwrap();
        assert_eq!(c.admin_addr(), "10.1.2.3:15021".parse().unwrap());
        assert!(
            c.config_dump_addr.ip().is_loopback(),
            "{}",
            c.config_dump_addr
        );
        let c = Config::try_parse_from(["g", "--cluster", "e", "--pod-ip", "0.0.0.0"]).unwrap();
        assert!(c.admin_addr().ip().is_loopback(), "{}", c.admin_addr());
    }
}
