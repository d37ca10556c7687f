//! One kube-apiserver per simulated cluster, stoppable and restartable with the same
//! address, port and credentials (its state lives in etcd, which keeps running).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Client;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::pki::PkiFiles;
use crate::process::ChildProcess;

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// Everything needed to (re)start one API server.
#[derive(Clone, Debug)]
pub(crate) struct ApiServerConfig {
    /// Cluster name, for logs and errors.
    pub cluster: String,
    /// The `kube-apiserver` binary.
    pub binary: PathBuf,
    /// Minor version of that binary (flags differ across versions).
    pub minor_version: u32,
    /// Bind and advertise address.
    pub ip: Ipv4Addr,
    /// Secure port.
    pub port: u16,
    /// `--etcd-servers`.
    pub etcd_url: String,
    /// `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// Credentials.
    pub pki: PkiFiles,
    /// Directory for the log and scratch files.
    pub dir: PathBuf,
    /// Switch the built-in `discovery.k8s.io` off so the EndpointSlice v1 CRD serves it
    /// (see [`crate::slice_api`]).
    pub slice_crd: bool,
}

/// An API server that may be running or stopped.
#[derive(Debug)]
pub(crate) struct ApiServer {
    config: ApiServerConfig,
    process: Option<ChildProcess>,
}

impl ApiServer {
    /// A stopped API server.
    pub(crate) fn new(config: ApiServerConfig) -> Self {
        ApiServer {
            config,
            process: None,
        }
    }

    /// `https://ip:port`.
    pub(crate) fn url(&self) -> String {
        format!("https://{}:{}", self.config.ip, self.config.port)
    }

    /// Whether the process is running (it may not be ready yet).
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(process) => process.exited().is_none(),
            None => false,
        }
    }

    /// The process id, when running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Starts the process; [`ApiServer::wait_ready`] waits for it to serve.
    pub(crate) fn start(&mut self) -> Result<()> {
        self.stop();
        let name = format!("kube-apiserver[{}]", self.config.cluster);
        let log = self.config.dir.join("apiserver.log");
        self.process = Some(ChildProcess::spawn(
            name,
            &self.config.binary,
            &self.args(),
            &log,
        )?);
        Ok(())
    }

    /// Kills the process (data stays in etcd).
    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Waits until `/readyz` answers `ok` (all post-start hooks, including the RBAC
    /// bootstrap policy, have run).
    pub(crate) async fn wait_ready(&mut self, client: &Client, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(process) = &mut self.process else {
                return Err(Error::ApiServerStopped {
                    cluster: self.config.cluster.clone(),
                });
            };
            if let Some(status) = process.exited() {
                return Err(process.failure(format!("exited during startup ({status})")));
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request is valid");
            let last =
                match tokio::time::timeout(Duration::from_secs(2), client.request_text(request))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => body,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "request timed out".into(),
                };
            if Instant::now() >= deadline {
                return Err(process.failure(format!(
                    "not ready after {timeout:?} (last /readyz: {last})"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn args(&self) -> Vec<String> {
        let c = &self.config;
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--etcd-servers={}", c.etcd_url),
            format!("--bind-address={}", c.ip),
            format!("--advertise-address={}", c.ip),
            format!("--secure-port={}", c.port),
            format!("--cert-dir={}", path(&c.dir)),
            format!("--tls-cert-file={}", path(&c.pki.serving_cert)),
            format!("--tls-private-key-file={}", path(&c.pki.serving_key)),
            format!("--client-ca-file={}", path(&c.pki.ca_cert)),
            format!(
                "--service-account-key-file={}",
                path(&c.pki.service_account_public)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&c.pki.service_account_private)
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={}", c.service_cidr),
            "--authorization-mode=RBAC".into(),
            // No kube-controller-manager mints ServiceAccount tokens, so Pods could not be
            // created with the ServiceAccount admission plugin on.
            "--disable-admission-plugins=ServiceAccount".into(),
            // Several API servers share the loopback "network"; none may rewrite the
            // `kubernetes` Endpoints with its neighbours' addresses.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if c.slice_crd {
            args.push(crate::slice_api::RUNTIME_CONFIG.into());
        }
        if c.minor_version < 24 {
            // Before 1.24 an insecure port (8080) opens by default; several servers would
            // collide on it, and it bypasses authentication.
            args.push("--insecure-port=0".into());
        }
        args
    }
}

/// The minor version of a `kube-apiserver` binary, from `--version`
/// ("Kubernetes v1.20.2" → 20).
pub(crate) fn minor_version(binary: &Path) -> Result<u32> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(Error::io(format!("running {} --version", binary.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_minor(&text).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "cannot parse the version of {} from {text:?}",
            binary.display()
        ))
    })
}

fn parse_minor(version: &str) -> Option<u32> {
    let v = version.split_whitespace().find(|w| w.starts_with('v'))?;
    v.trim_start_matches('v').split('.').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_minor;

    #[test]
    fn parses_kubernetes_versions() {
        assert_eq!(parse_minor("Kubernetes v1.20.2\n"), Some(20));
        assert_eq!(parse_minor("Kubernetes v1.31.0-rc.1"), Some(31));
        assert_eq!(parse_minor("garbage"), None);
    }
}
