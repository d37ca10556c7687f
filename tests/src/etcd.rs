//! One single-member etcd per simulated cluster, plain HTTP on the cluster's loopback address.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::Result;
use crate::network::free_ports;
use crate::process::ChildProcess;

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// A running etcd.
#[derive(Debug)]
pub(crate) struct Etcd {
    process: ChildProcess,
    client: SocketAddr,
}

impl Etcd {
    /// Starts etcd for `cluster` on `ip` (free ports), keeping its data in `dir/etcd`.
    pub(crate) fn start(cluster: &str, binary: &Path, ip: Ipv4Addr, dir: &Path) -> Result<Self> {
        let [client_port, peer_port] = free_ports(ip)?;
        let client = SocketAddr::from((ip, client_port));
        let peer = SocketAddr::from((ip, peer_port));
        let data = dir.join("etcd");
        let args = vec![
            format!("--name={cluster}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://{client}"),
            format!("--advertise-client-urls=http://{client}"),
            format!("--listen-peer-urls=http://{peer}"),
            format!("--initial-advertise-peer-urls=http://{peer}"),
            format!("--initial-cluster={cluster}=http://{peer}"),
            "--initial-cluster-state=new".to_string(),
            // One member on loopback: elect fast, keep the log small.
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
            "--snapshot-count=10000".to_string(),
            "--log-level=warn".to_string(),
            "--logger=zap".to_string(),
        ];
        let process = ChildProcess::spawn(
            format!("etcd[{cluster}]"),
            binary,
            &args,
            &dir.join("etcd.log"),
        )?;
        Ok(Etcd { process, client })
    }

    /// The client URL for `--etcd-servers`.
    pub(crate) fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Waits until etcd reports itself healthy (it has a leader and serves reads).
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                return Err(self
                    .process
                    .failure(format!("exited during startup ({status})")));
            }
            if healthy(self.client).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self
                    .process
                    .failure(format!("not healthy after {timeout:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The process id (for tests that check teardown).
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// `GET /health` by hand: one request does not justify an HTTP client.
async fn healthy(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}
