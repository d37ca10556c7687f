//! A real Prometheus (Debian package `prometheus`) scraping the testbed's gateways, for
//! testing the dashboard's queries and for the failover screenshot.
//!
//! It runs unprivileged in the foreground from its own configuration file on 127.0.0.1
//! (a fresh port), its data in a directory of the testbed; the package's system service
//! and configuration are not used (`scripts/prereqs.sh` stops and disables it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::network::free_port;
use crate::process::ChildProcess;
use crate::traffic::http_get;

/// How long Prometheus gets to answer its readiness probe.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The scrape (and evaluation) interval: short, so a test sees rates within seconds.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// The job of the gateways' scrape targets, as in `manifests/observability/`.
pub const GATEWAY_JOB: &str = "meridian-gateway";

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    process: ChildProcess,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts a Prometheus that scrapes `/metrics` of every address in `gateways` (job
    /// [`GATEWAY_JOB`]) every [`SCRAPE_INTERVAL`], with its configuration, data and log in
    /// `dir`. Returns once it is ready to answer queries.
    pub async fn start(gateways: &[SocketAddr], dir: &Path) -> Result<Prometheus> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let ip = Ipv4Addr::LOCALHOST;
        let addr = SocketAddr::from((ip, free_port(ip)?));
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, render_config(gateways))
            .map_err(Error::io(format!("writing {}", config.display())))?;
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ];
        let mut process = ChildProcess::spawn(
            "prometheus".into(),
            &prometheus_binary()?,
            &args,
            &dir.join("prometheus.log"),
        )?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = process.exited() {
                return Err(process.failure(format!("exited during startup ({status})")));
            }
            if http_get(addr, "/-/ready", &[])
                .await
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(
                    process.failure(format!("not ready on {addr} after {STARTUP_TIMEOUT:?}"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::debug!(%addr, "prometheus ready");
        Ok(Prometheus { process, addr })
    }

    /// Its web and API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Evaluates `promql` now (`/api/v1/query`) and returns the result array (one entry
    /// per series); a query Prometheus rejects is an error naming its reason.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let resp = http_get(self.addr, &path, &[]).await?;
        let body: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            Error::InvalidSpec(format!("prometheus answer to {promql:?} is not JSON: {e}"))
        })?;
        if body["status"] != "success" {
            return Err(Error::InvalidSpec(format!(
                "prometheus rejected {promql:?}: {} {}",
                body["errorType"], body["error"]
            )));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// The `prometheus` binary: on `PATH`, else where Debian puts it.
pub fn prometheus_binary() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    let debian = PathBuf::from("/usr/bin/prometheus");
    on_path
        .or_else(|| debian.is_file().then_some(debian))
        .ok_or_else(|| {
            Error::InvalidSpec(
                "prometheus not found on PATH or in /usr/bin; run scripts/prereqs.sh \
                 (Debian: apt-get install prometheus)"
                    .into(),
            )
        })
}

/// The configuration: the gateways as static targets of [`GATEWAY_JOB`] (Kubernetes
/// discovery finds the same endpoints in `manifests/observability/`).
fn render_config(gateways: &[SocketAddr]) -> String {
    let targets: Vec<String> = gateways.iter().map(|a| format!("\"{a}\"")).collect();
    let interval = SCRAPE_INTERVAL.as_secs();
    format!(
        r#"# Written by the Meridian testbed.
global:
  scrape_interval: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: {GATEWAY_JOB}
    metrics_path: /metrics
    static_configs:
      - targets: [{}]
"#,
        targets.join(", ")
    )
}

/// Percent-encodes a query parameter (every byte but RFC 3986's unreserved ones).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"sum(rate(x{a="b"}[1m]))"#),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn config_lists_every_gateway() {
        let c = render_config(&[
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.2:2".parse().unwrap(),
        ]);
        assert!(
            c.contains(r#"targets: ["127.0.0.1:1", "127.0.0.2:2"]"#),
            "{c}"
        );
        assert!(c.contains("job_name: meridian-gateway"), "{c}");
    }
}
