//! A cluster's resolver for `.global`: Unbound with a stub zone pointing at that cluster's
//! `meridian-dns`, the way pods resolve `.global` through their cluster DNS (CoreDNS with a
//! stub domain in a real cluster; CoreDNS is not packaged in Debian, Unbound is).
//!
//! Each instance runs unprivileged from its own configuration file on a loopback address
//! of the testbed, in the foreground, without chroot, control socket, trust anchors or
//! root hints: it resolves the stub zones and nothing else. The Debian package's system
//! service and configuration are not used (`scripts/prereqs.sh` stops and disables it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::network::free_port;
use crate::process::ChildProcess;

/// How long Unbound gets to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Unbound; killed when dropped.
#[derive(Debug)]
pub struct Resolver {
    process: ChildProcess,
    addr: SocketAddr,
    config: PathBuf,
}

impl Resolver {
    /// Starts an Unbound named `name` on `ip` (a fresh port) that resolves `zones` (e.g.
    /// `global.` and `clusterset.local.`) by asking `stub` (a `meridian-dns` address), with
    /// its configuration and log in `dir`. Returns once it accepts TCP connections.
    pub async fn start(
        name: &str,
        ip: Ipv4Addr,
        zones: &[&str],
        stub: SocketAddr,
        dir: &Path,
    ) -> Result<Resolver> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let addr = SocketAddr::new(IpAddr::V4(ip), free_port(ip)?);
        let config = dir.join("unbound.conf");
        std::fs::write(&config, render_config(addr, zones, stub, dir))
            .map_err(Error::io(format!("writing {}", config.display())))?;
        let mut process = ChildProcess::spawn(
            format!("{name}/unbound"),
            &unbound_binary()?,
            &["-d".into(), "-c".into(), config.display().to_string()],
            &dir.join("unbound.log"),
        )?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = process.exited() {
                return Err(process.failure(format!("exited during startup ({status})")));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(
                    process.failure(format!("not listening on {addr} after {STARTUP_TIMEOUT:?}"))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::debug!(resolver = %name, %addr, %stub, "unbound ready");
        Ok(Resolver {
            process,
            addr,
            config,
        })
    }

    /// Where to send queries (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration file it runs with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The `unbound` binary: on `PATH`, else where Debian puts it (`/usr/sbin`, often not on a
/// user's `PATH`).
pub fn unbound_binary() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("unbound"))
            .find(|p| p.is_file())
    });
    let debian = PathBuf::from("/usr/sbin/unbound");
    on_path
        .or_else(|| debian.is_file().then_some(debian))
        .ok_or_else(|| {
            Error::InvalidSpec(
                "unbound not found on PATH or in /usr/sbin; run scripts/prereqs.sh \
                 (Debian: apt-get install unbound)"
                    .into(),
            )
        })
}

/// The configuration of one instance.
fn render_config(listen: SocketAddr, zones: &[&str], stub: SocketAddr, dir: &Path) -> String {
    let stubs: String = zones
        .iter()
        .map(|zone| {
            format!(
                "stub-zone:\n    name: \"{}.\"\n    stub-addr: {}@{}\n",
                zone.trim_end_matches('.'),
                stub.ip(),
                stub.port()
            )
        })
        .collect();
    format!(
        r#"# Written by the Meridian testbed: the .global and clusterset.local resolver of one simulated cluster.
server:
    interface: {ip}
    port: {port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    # Unprivileged, in the foreground, everything in its own directory.
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    # meridian-dns listens on a loopback address, which Unbound refuses to ask by default.
    do-not-query-localhost: no
    # The zone is not signed and no trust anchor is configured: no validator.
    module-config: "iterator"
remote-control:
    control-enable: no
{stubs}"#,
        ip = listen.ip(),
        port = listen.port(),
        dir = dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_stubs_the_zone_to_meridian_dns() {
        let conf = render_config(
            "127.9.0.2:5300".parse().unwrap(),
            &["global", "clusterset.local."],
            "127.9.0.3:5353".parse().unwrap(),
            Path::new("/tmp/r"),
        );
        assert!(conf.contains("interface: 127.9.0.2\n    port: 5300\n"));
        assert!(conf.contains("name: \"global.\"\n    stub-addr: 127.9.0.3@5353\n"));
        assert!(conf.contains("name: \"clusterset.local.\"\n    stub-addr: 127.9.0.3@5353\n"));
        assert!(conf.contains("username: \"\""));
    }
}
