//! The DNS server's configuration: one typed struct, parsed from flags.

use std::net::SocketAddr;
use std::str::FromStr;

use clap::Parser;
use hickory_server::proto::rr::Name;

/// Flags of `meridian-dns`.
#[derive(Debug, Clone, Parser)]
#[command(name = "meridian-dns", version, about)]
pub struct Config {
    /// Where the controller is and how it is verified.
    #[command(flatten)]
    pub controller: meridian_api::channel::ControllerArgs,

    /// Name of the cluster this server runs in; its VIPs are the ones answered.
    #[arg(long, env = "MERIDIAN_CLUSTER_NAME")]
    pub cluster: String,

    /// Instance name reported to the controller (the pod name in Kubernetes).
    #[arg(long, env = "POD_NAME", default_value = "meridian-dns")]
    pub instance: String,

    /// Address to serve DNS on, UDP and TCP (repeatable). Port 0 picks one free port
    /// for both protocols.
    #[arg(long = "listen", default_value = "0.0.0.0:5353")]
    pub listen: Vec<SocketAddr>,

    /// Address of the admin HTTP server (`/metrics`, `/healthz/ready`, `/healthz/live`);
    /// default: $POD_IP:15053, else 127.0.0.1:15053.
    #[arg(long)]
    pub admin: Option<SocketAddr>,

    /// Where the admin server binds by default and how many clients it serves.
    #[command(flatten)]
    pub admin_listener: meridian_api::admin::AdminArgs,

    /// Zone the server is authoritative for (repeatable), e.g. `global.`.
    #[arg(long = "zone", default_value = "global.", value_parser = zone)]
    pub zones: Vec<Name>,

    /// TTL of every answer and of negative answers (SOA minimum), in whole seconds: `5s`, `1m`.
    #[arg(long, default_value = "5s", value_parser = ttl)]
    pub ttl: u32,

    /// Name server in the apex NS and SOA records: the DNS Service's own name, so that it
    /// resolves through cluster DNS rather than needing glue in the zone.
    #[arg(
        long,
        default_value = "meridian-dns.meridian-system.svc.cluster.local.",
        value_parser = zone
    )]
    pub nameserver: Name,

    /// The Multi-Cluster Services zone (`<svc>.<ns>.svc.<domain>`, the MCS DNS
    /// specification's names, with PTR names for their ClusterSet IPs).
    #[arg(long, default_value = "clusterset.local.", value_parser = zone)]
    pub clusterset_domain: Name,
}

/// Port of the admin server when --admin is not given.
pub const ADMIN_PORT: u16 = 15053;

impl Config {
    /// The admin server's address in force.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.addr(self.admin, ADMIN_PORT)
    }
}

/// Parses an absolute, lower-cased domain name (`global` and `global.` are the same).
fn zone(s: &str) -> Result<Name, String> {
    let mut name = Name::from_str(s).map_err(|e| format!("invalid domain name {s:?}: {e}"))?;
    if name.is_root() {
        return Err("the root zone cannot be served".into());
    }
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Parses a TTL as a duration of whole seconds that fits a DNS TTL.
fn ttl(s: &str) -> Result<u32, String> {
    let duration = meridian_api::policy::parse_duration(s)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("TTL {s:?} must be whole seconds"));
    }
    u32::try_from(duration.as_secs()).map_err(|_| format!("TTL {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = Config::try_parse_from(["meridian-dns", "--cluster", "east"]).unwrap();
        assert_eq!(config.zones, vec![Name::from_str("global.").unwrap()]);
        assert_eq!(config.ttl, 5);
        assert_eq!(config.listen, vec!["0.0.0.0:5353".parse().unwrap()]);
        assert_eq!(config.cluster, "east");
        // Never every interface by default: the pod IP (downward API) or loopback.
        assert!(!config.admin_addr().ip().is_unspecified());
        assert_eq!(config.admin_addr().port(), ADMIN_PORT);
        assert!(
            config.controller.url.starts_with("https://"),
            "TLS by default"
        );
        assert!(config.controller.tls().is_none());
        let config = Config::try_parse_from([
            "meridian-dns",
            "--cluster=east",
            "--controller-ca-file=/etc/meridian/ca/root-cert.pem",
        ])
        .unwrap();
        let tls = config.controller.tls().unwrap();
        assert_eq!(tls.server_name, "meridian-controller.meridian-system.svc");
    }

    #[test]
    fn zones_are_absolute_and_lower_case() {
        let config = Config::try_parse_from([
            "meridian-dns",
            "--cluster=east",
            "--zone=Global",
            "--zone=mesh.example.com.",
            "--ttl=1m",
        ])
        .unwrap();
        let zones: Vec<String> = config.zones.iter().map(Name::to_ascii).collect();
        assert_eq!(zones, ["global.", "mesh.example.com."]);
        assert_eq!(config.ttl, 60);
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            ["meridian-dns", "--cluster=east", "--ttl=1500ms"],
            ["meridian-dns", "--cluster=east", "--ttl=soon"],
            ["meridian-dns", "--cluster=east", "--zone=."],
            ["meridian-dns", "--cluster=east", "--zone=a..b"],
        ] {
            assert!(Config::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
