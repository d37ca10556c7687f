//! Network partitions with Linux network namespaces: a [`Netns`] is an empty network
//! stack, a [`Link`] a veth pair joining it to the root namespace, which a test can cut
//! ([`Link::cut`]), heal ([`Link::heal`]) or impair with `tc netem` ([`Link::impair`]).
//!
//! Addresses come from the project's own test subnet [`TEST_SUBNET`] (`198.18.0.0/15`,
//! reserved for benchmarking by RFC 2544, so never a real network): each link gets a
//! `/30`, root side `.1`, namespace side `.2`. Namespaces and links are deleted on drop.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2 (`ip`, `tc`); CI runs as
//! root. Without them creation fails with an error naming what is missing: partition
//! tests fail, they are never skipped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::error::{Error, Result};

/// The project's test subnet for namespace links, as CIDR text.
pub const TEST_SUBNET: &str = "198.18.0.0/15";

/// What partition tests need, named in every setup error.
const NEEDS: &str = "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2 \
     (`ip`, `tc`; scripts/prereqs.sh installs it)";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
fn unique(prefix: &str) -> (String, u32) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = std::process::id() % 100_000;
    (format!("{prefix}{id}x{n}"), id * 16 + n)
}

/// Runs iproute2 `program args…`; a failure carries its standard error and [`NEEDS`].
fn run(program: &str, args: &[&str]) -> Result<()> {
    let context = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Io {
            context: format!("{context} ({NEEDS})"),
            source: e,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Io {
        context: format!("{context} ({NEEDS})"),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates an empty namespace (loopback up).
    pub fn create() -> Result<Netns> {
        let (name, _) = unique("mrd");
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A TCP listener bound to `addr` inside the namespace. The socket stays in the
    /// namespace it was created in, so the caller can use it from any thread.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let context = format!("binding {addr} in network namespace {}", self.name);
        // setns moves the calling thread only: a thread of its own, gone afterwards.
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path)?;
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
                TcpListener::bind(addr)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("binding thread panicked")))
        })
        .map_err(|e| Error::Io {
            context: format!("{context} ({NEEDS})"),
            source: e,
        })
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair between the root namespace and a [`Netns`], with a `/30` of
/// [`TEST_SUBNET`]; deleted on drop.
#[derive(Debug)]
pub struct Link {
    root_if: String,
    ns: String,
    ns_if: String,
    /// The root namespace's address on the link.
    pub root_ip: Ipv4Addr,
    /// The namespace's address on the link.
    pub ns_ip: Ipv4Addr,
}

impl Link {
    /// Joins `ns` to the root namespace; the namespace's default route is the link.
    pub fn connect(ns: &Netns) -> Result<Link> {
        let (root_if, index) = unique("mrh");
        let ns_if = format!("mrn{}", &root_if[3..]);
        // 198.18.0.0/15 holds 32768 /30s.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (index % 32_768) * 4;
        let (root_ip, ns_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        run(
            "ip",
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if,
            ],
        )?;
        let link = Link {
            root_if,
            ns: ns.name.clone(),
            ns_if,
            root_ip,
            ns_ip,
        };
        run("ip", &["link", "set", &link.ns_if, "netns", &link.ns])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{root_ip}/30"),
                "dev",
                &link.root_if,
            ],
        )?;
        run("ip", &["link", "set", &link.root_if, "up"])?;
        let n = link.ns.as_str();
        run(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &link.ns_if,
            ],
        )?;
        run("ip", &["-n", n, "link", "set", &link.ns_if, "up"])?;
        run(
            "ip",
            &[
                "-n",
                n,
                "route",
                "add",
                "default",
                "via",
                &root_ip.to_string(),
            ],
        )?;
        Ok(link)
    }

    /// Cuts the link (both ends down): packets are dropped, nothing is reset.
    pub fn cut(&self) -> Result<()> {
        run("ip", &["link", "set", &self.root_if, "down"])?;
        run("ip", &["-n", &self.ns, "link", "set", &self.ns_if, "down"])
    }

    /// Brings a cut link back (addresses and routes are restored with it).
    pub fn heal(&self) -> Result<()> {
        run("ip", &["link", "set", &self.root_if, "up"])?;
        let n = self.ns.as_str();
        run("ip", &["-n", n, "link", "set", &self.ns_if, "up"])?;
        // The default route went with the interface.
        run(
            "ip",
            &[
                "-n",
                n,
                "route",
                "replace",
                "default",
                "via",
                &self.root_ip.to_string(),
            ],
        )
    }

    /// Adds `delay_ms` of latency and `loss_percent` packet loss to traffic leaving the
    /// root side (`tc netem`), replacing earlier impairment.
    /// Fails naming `CONFIG_NET_SCH_NETEM` when the kernel has no netem qdisc.
    pub fn impair(&self, delay_ms: u32, loss_percent: f64) -> Result<()> {
        let result = run(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &self.root_if,
                "root",
                "netem",
                "delay",
                &format!("{delay_ms}ms"),
                "loss",
                &format!("{loss_percent}%"),
            ],
        );
        match result {
            Err(Error::Io { context, source }) if source.to_string().contains("unknown") => {
                Err(Error::Io {
                    context: format!(
                        "{context}: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM, \
                         module sch_netem)"
                    ),
                    source,
                })
            }
            other => other,
        }
    }

    /// Removes the impairment.
    pub fn clear(&self) -> Result<()> {
        run("tc", &["qdisc", "del", "dev", &self.root_if, "root"])
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        let _ = run("ip", &["link", "del", &self.root_if]);
    }
}
