//! Network partitions with Linux network namespaces: a [`Netns`] is an empty network
//! stack, a [`Link`] a veth pair joining it to the root namespace, which a test can cut
//! ([`Link::cut`]), heal ([`Link::heal`]) or make lossy ([`Link::lose`], nftables).
//! Latency is added by a userspace relay, [`crate::delay::DelayRelay`]: the kernels
//! this runs on (CI's included) have no `tc netem` and no other qdisc that delays.
//!
//! Addresses come from the project's own test subnet [`TEST_SUBNET`] (`198.18.0.0/15`,
//! reserved for benchmarking by RFC 2544, so never a real network): each link gets a
//! `/30`, root side `.1`, namespace side `.2`. Namespaces and links are deleted on drop.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 (`ip`) and, for loss,
//! nftables (`nft`); CI runs as root. Without them creation fails with an error naming what is missing: partition
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

/// The nftables table holding a link's packet loss (one per namespace).
const LOSS_TABLE: &str = "meridian_loss";

/// What packet loss needs, named in its errors.
const NFT_NEEDS: &str = "packet loss needs nftables (`nft`; scripts/prereqs.sh installs it) \
     and a kernel with nf_tables and CONFIG_NFT_NUMGEN";

/// What partition tests need, named in every setup error.
const NEEDS: &str = "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2 \
     (`ip`; scripts/prereqs.sh installs it)";

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

    /// Drops `percent` % of the packets crossing the link, in each direction, chosen at
    /// random per packet: an nftables table in the namespace (`numgen random mod 100 <
    /// percent drop` on the namespace's end, input and output), replacing earlier loss.
    /// Loss is real packet loss, so TCP retransmits. nftables, not `tc netem`, because
    /// kernels without netem (`CONFIG_NET_SCH_NETEM` unset, as CI's) have it. Fails naming
    /// `nft` and `CONFIG_NFT_NUMGEN` when either is missing.
    pub fn lose(&self, percent: u8) -> Result<()> {
        let _ = self.clear();
        let (t, i) = (LOSS_TABLE, &self.ns_if);
        let script = format!(
            "add table inet {t}; \
             add chain inet {t} input {{ type filter hook input priority 0; }}; \
             add chain inet {t} output {{ type filter hook output priority 0; }}; \
             add rule inet {t} input iifname \"{i}\" numgen random mod 100 < {percent} counter drop; \
             add rule inet {t} output oifname \"{i}\" numgen random mod 100 < {percent} counter drop"
        );
        self.nft(&script)
    }

    /// Packets dropped by [`Link::lose`] so far (both directions), read from its counters.
    pub fn dropped(&self) -> Result<u64> {
        let context = format!("reading the loss counters in network namespace {}", self.ns);
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "list", "table", "inet", LOSS_TABLE,
            ])
            .output()
            .map_err(|e| Error::Io {
                context: format!("{context} ({NFT_NEEDS})"),
                source: e,
            })?;
        if !out.status.success() {
            return Err(Error::Io {
                context: format!("{context} ({NFT_NEEDS})"),
                source: std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ),
            });
        }
        // `... counter packets N bytes M drop`
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Removes the loss added by [`Link::lose`].
    pub fn clear(&self) -> Result<()> {
        self.nft(&format!("delete table inet {LOSS_TABLE}"))
    }

    /// Runs an nftables script inside the namespace (its tables go with it).
    fn nft(&self, script: &str) -> Result<()> {
        run("ip", &["netns", "exec", &self.ns, "nft", script]).map_err(|e| match e {
            Error::Io { context, source } => Error::Io {
                context: format!("{context} ({NFT_NEEDS})"),
                source,
            },
            other => other,
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        let _ = run("ip", &["link", "del", &self.root_if]);
    }
}
