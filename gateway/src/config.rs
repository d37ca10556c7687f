//! The gateway's command line: one typed struct, flags documented, environment fallbacks
//! where Kubernetes manifests set them (cluster, pod name, controller address).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

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

    /// Admin listener: /healthz/ready, /metrics, /config_dump.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub admin_addr: SocketAddr,

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
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

impl Config {
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
        assert_eq!(c.admin_addr.port(), 15021);
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
}
