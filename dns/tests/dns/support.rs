//! Shared helpers: the real `meridian-dns` process, `dig`, raw DNS packets, snapshots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meridian_api::proto::{ClusterVip, GlobalService, ServicePort, Snapshot};
use meridian_api::testing::FakeDiscovery;
/// Value of one series in Prometheus text.
pub(crate) use meridian_testbed::metrics::sample as metric;
use meridian_testbed::traffic::http_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};

/// Upper bound for anything the tests wait for. It only turns a hang into a failure;
/// no assertion depends on how fast things happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// The cluster the server under test runs in.
pub(crate) const CLUSTER: &str = "east";

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// A running `meridian-dns` binary, killed on drop.
pub(crate) struct Dns {
    child: Child,
    /// DNS address (UDP and TCP).
    pub addr: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Dns {
    /// Starts the binary against `controller` on free loopback ports, with `extra` flags,
    /// and waits until it listens.
    pub(crate) async fn start(controller: &FakeDiscovery, extra: &[&str]) -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("meridian-dns-{}-{n}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_meridian-dns"))
            .args([
                "--controller",
                &controller.url(),
                "--cluster",
                CLUSTER,
                "--instance",
                &format!("dns-test-{n}"),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "info,hickory_server=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meridian-dns");
        let mut dns = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        // The server logs the ports it bound; port 0 avoids any race for free ports.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = dns.log();
            // Only whole lines: a line caught mid-write could end inside a port number.
            let lines = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
            if let (Some(addr), Some(admin)) = (field(lines, "tcp="), field(lines, "admin=")) {
                dns.addr = addr;
                dns.admin = admin;
                return dns;
            }
            if let Some(status) = dns.child.try_wait().expect("wait") {
                panic!("meridian-dns exited with {status} before listening:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "meridian-dns did not start:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Waits for the process to exit; panics after [`PATIENCE`].
    pub(crate) async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("meridian-dns did not exit:\n{}", self.log()))
            .expect("wait")
    }

    /// `GET path` on the admin server: (status code, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let answer = http_get(self.admin, path, &[]).await.expect("admin GET");
        (answer.status, answer.text())
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Value of the sample `name` (exact name with labels) in `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        metric(&self.metrics().await, name)
    }

    /// Waits until the served zones are built from snapshot `version`.
    pub(crate) async fn wait_version(&self, version: u64) {
        self.wait_metric("meridian_dns_snapshot_version", version as f64)
            .await;
    }

    /// Waits until `name` in `/metrics` equals `value`.
    pub(crate) async fn wait_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.metric(name).await == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never became {value}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `dig` against this server (UDP unless `+tcp` is among `args`).
    pub(crate) async fn dig(&self, args: &[&str]) -> Dig {
        dig(self.addr, args).await
    }
}

/// Parses `key=ip:port` from a log line.
fn field(log: &str, key: &str) -> Option<SocketAddr> {
    let start = log.find(key)? + key.len();
    let value = log[start..].split_whitespace().next()?;
    value.parse().ok()
}

/// One resource record as dig prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rr {
    pub name: String,
    pub ttl: u32,
    pub class: String,
    pub rtype: String,
    pub data: String,
}

/// A parsed dig response.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    pub raw: String,
}

impl Dig {
    /// The data of every answer record.
    pub(crate) fn answers(&self) -> Vec<&str> {
        self.answer.iter().map(|rr| rr.data.as_str()).collect()
    }

    /// Whether the AA flag is set.
    pub(crate) fn authoritative(&self) -> bool {
        self.flags.iter().any(|flag| flag == "aa")
    }
}

/// Runs `dig @addr -p port +norecurse <args>` and parses its output.
pub(crate) async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let output = tokio::time::timeout(
        PATIENCE,
        Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .args(["-p", &addr.port().to_string()])
            // A generous per-try timeout: a retry would be counted twice by the server,
            // and a slow answer on a loaded machine is still an answer.
            .args(["+norecurse", "+tries=3", "+time=10"])
            .args([
                "+noall",
                "+comments",
                "+answer",
                "+authority",
                "+additional",
            ])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("dig finished")
    .expect("dig runs (CI must install dnsutils)");
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_dig(raw).unwrap_or_else(|raw| panic!("no DNS answer from dig {args:?}:\n{raw}"))
}

fn parse_dig(raw: String) -> Result<Dig, String> {
    let mut dig = Dig::default();
    let mut section = None;
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            dig.status = rest
                .split(',')
                .find_map(|part| part.trim().strip_prefix("status: "))
                .unwrap_or_default()
                .to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Some(0);
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Some(1);
        } else if line.starts_with(";; ADDITIONAL SECTION:") {
            section = Some(2);
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = None;
            }
        } else if let Some(index) = section {
            let mut parts = line.split_whitespace();
            let rr = Rr {
                name: parts.next().unwrap_or_default().to_owned(),
                ttl: parts
                    .next()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(u32::MAX),
                class: parts.next().unwrap_or_default().to_owned(),
                rtype: parts.next().unwrap_or_default().to_owned(),
                data: parts.collect::<Vec<_>>().join(" "),
            };
            match index {
                0 => dig.answer.push(rr),
                1 => dig.authority.push(rr),
                _ => dig.additional.push(rr),
            }
        }
    }
    if dig.status.is_empty() {
        Err(raw)
    } else {
        dig.raw = raw;
        Ok(dig)
    }
}

/// Encodes a DNS query by hand (so tests can make it wrong): header with `id`, `flags`
/// and one question per entry of `questions` (name, type, class).
pub(crate) fn query_bytes(id: u16, flags: u16, questions: &[(&str, u16, u16)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&flags.to_be_bytes());
    bytes.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&[0; 6]);
    for (name, qtype, qclass) in questions {
        for label in name.trim_end_matches('.').split('.') {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&qclass.to_be_bytes());
    }
    bytes
}

/// Header fields of a raw response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub id: u16,
    pub rcode: u8,
    pub is_response: bool,
}

/// Reads the header of a raw DNS message.
pub(crate) fn header(bytes: &[u8]) -> Header {
    assert!(bytes.len() >= 12, "short response: {bytes:?}");
    Header {
        id: u16::from_be_bytes([bytes[0], bytes[1]]),
        rcode: bytes[3] & 0x0f,
        is_response: bytes[2] & 0x80 != 0,
    }
}

/// How long to wait before counting a packet as dropped. Where dropping is an allowed
/// outcome this decides nothing about pass or fail.
pub(crate) const DROP_WAIT: Duration = Duration::from_millis(500);

/// How long to wait for a reply the test requires: only turns a hang into a failure.
pub(crate) const REPLY_WAIT: Duration = PATIENCE;

/// Sends one raw UDP datagram and returns the reply, or `None` if none came within `wait`.
pub(crate) async fn udp_exchange(
    addr: SocketAddr,
    packet: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(packet, addr).await.expect("send");
    let mut buf = vec![0; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        Ok(Err(error)) => panic!("recv: {error}"),
        Err(_) => None,
    }
}

/// Sends `frame` as is on a new TCP connection; returns the first reply, or `None` if the
/// server closed the connection or said nothing within `wait`.
pub(crate) async fn tcp_exchange(
    addr: SocketAddr,
    frame: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may close as soon as it sees garbage: a failed write is a drop.
    if stream.write_all(frame).await.is_err() {
        return None;
    }
    let read = async {
        let mut len = [0_u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// `payload` with the two-byte length prefix of DNS over TCP.
pub(crate) fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A service with a VIP, an `http` port 9080 and pinned VIPs in `east` and `west`.
pub(crate) fn service(name: &str, namespace: &str, vip: &str) -> GlobalService {
    GlobalService {
        name: name.into(),
        namespace: namespace.into(),
        hostname: format!("{name}.{namespace}.global"),
        vip: vip.into(),
        cluster_vips: vec![
            ClusterVip {
                cluster: "east".into(),
                vip: "10.96.1.1".into(),
                ports: Vec::new(),
            },
            ClusterVip {
                cluster: "west".into(),
                vip: "10.96.2.1".into(),
                ports: Vec::new(),
            },
        ],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 9080,
            listener_port: 15100,
            ..Default::default()
        }],
        clusters: vec!["east".into(), "west".into()],
        ..Default::default()
    }
}

/// A snapshot for [`CLUSTER`].
pub(crate) fn snapshot(version: u64, services: Vec<GlobalService>) -> Snapshot {
    Snapshot {
        version,
        cluster: CLUSTER.into(),
        trust_domain: "meridian.local".into(),
        services,
        ..Default::default()
    }
}

/// A fake controller serving `snapshot` and a server following it, with zones loaded.
pub(crate) async fn serving(snapshot: Snapshot, extra: &[&str]) -> (FakeDiscovery, Dns) {
    let controller = FakeDiscovery::start().await.expect("fake controller");
    let version = snapshot.version;
    controller.push(snapshot);
    let dns = Dns::start(&controller, extra).await;
    dns.wait_version(version).await;
    (controller, dns)
}
