//! The simulated network: loopback address blocks, the pod network, free ports.
//!
//! Every [`crate::Testbed`] reserves its own `127.B.0.0/16` block with an exclusive
//! `flock` on a lock file, so testbeds in parallel tests (threads or processes) never share
//! an address, and a crashed process releases its block automatically. API servers, etcd
//! and echo pods bind inside the block.
//!
//! Kubernetes rejects loopback addresses in core/v1 Endpoints ("may not be in the loopback
//! range"), so pods get IPs in a simulated pod network, `10.0.0.0/8`, mapped one to one onto
//! loopback by swapping the first octet: pod IP `10.B.X.Y` is served on `127.B.X.Y`. That
//! mapping is the testbed's stand-in for pod networking; anything that dials pod IPs
//! (a gateway under test) must apply it, see [`pod_ip_to_loopback`].

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, Result};

/// First octet of the simulated pod network (`10.0.0.0/8`).
pub(crate) const POD_NETWORK_OCTET: u8 = 10;

/// The simulated pod network, as CIDR text.
pub const POD_NETWORK_CIDR: &str = "10.0.0.0/8";

/// The loopback network pod IPs are mapped onto, as CIDR text.
pub const LOOPBACK_CIDR: &str = "127.0.0.0/8";

/// Addresses usable in one block: third octet 0..=255, fourth octet 1..=254.
const ADDRESSES_PER_BLOCK: u32 = 256 * 254;

/// Maps a pod IP (`10.B.X.Y`) to the loopback address its process listens on
/// (`127.B.X.Y`). Other addresses are returned unchanged.
pub fn pod_ip_to_loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.octets()[0] == POD_NETWORK_OCTET => {
            let [_, b, x, y] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(127, b, x, y))
        }
        other => other,
    }
}

/// Maps a loopback address (`127.B.X.Y`) to its pod IP (`10.B.X.Y`). Other addresses are
/// returned unchanged.
pub fn loopback_to_pod_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let [_, b, x, y] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(POD_NETWORK_OCTET, b, x, y))
        }
        other => other,
    }
}

/// An exclusively reserved `127.B.0.0/16` block, released when dropped (or when the
/// process dies, since the reservation is an `flock`).
#[derive(Debug)]
pub(crate) struct LoopbackBlock {
    octet: u8,
    next: AtomicU32,
    // Held for the lock; closing the file releases it.
    _lock: File,
}

impl LoopbackBlock {
    /// Reserves a free block. Blocks `127.1` to `127.254` are tried starting from a
    /// pid-derived offset, which keeps concurrent processes from contending for the same
    /// lock files; `127.0.0.0/16` stays free for everything else on the machine.
    pub(crate) fn reserve() -> Result<Self> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!(
            "creating lock directory {}",
            dir.display()
        )))?;
        let start = std::process::id() % 254;
        for i in 0..254 {
            let octet = ((start + i) % 254 + 1) as u8;
            let path = dir.join(format!("127.{octet}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(Error::io(format!("opening {}", path.display())))?;
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                tracing::debug!(block = %format!("127.{octet}.0.0/16"), "reserved loopback block");
                return Ok(LoopbackBlock {
                    octet,
                    next: AtomicU32::new(0),
                    _lock: file,
                });
            }
        }
        Err(Error::AddressesExhausted(
            "all 254 loopback blocks are held by other testbeds".into(),
        ))
    }

    /// The block's second octet `B` (the block is `127.B.0.0/16`).
    pub(crate) fn octet(&self) -> u8 {
        self.octet
    }

    /// Allocates a fresh address in the block (never handed out twice).
    pub(crate) fn allocate(&self) -> Result<Ipv4Addr> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= ADDRESSES_PER_BLOCK {
            return Err(Error::AddressesExhausted(format!(
                "block 127.{}.0.0/16 has handed out all {ADDRESSES_PER_BLOCK} addresses",
                self.octet
            )));
        }
        // Skip .0 and .255 in the last octet: some tools treat them specially.
        Ok(Ipv4Addr::new(
            127,
            self.octet,
            (n / 254) as u8,
            (n % 254 + 1) as u8,
        ))
    }
}

/// Asks the kernel for a currently free TCP port on `ip`.
///
/// The port is released before returning, so another process could take it; that cannot
/// happen for addresses inside a reserved block unless someone binds the wildcard address.
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0)))
        .map_err(Error::io(format!("finding a free port on {ip}")))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("reading bound address"))?
        .port();
    Ok(port)
}

/// `N` distinct currently free TCP ports on `ip`, for one process that binds them all.
///
/// Every probe listener is held until all `N` are picked: two [`free_port`] calls in a row
/// can get the same port back (the first is released before the second bind), which makes
/// the process fail to bind its second address.
pub fn free_ports<const N: usize>(ip: Ipv4Addr) -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind(SocketAddr::from((ip, 0)))
            .map_err(Error::io(format!("finding a free port on {ip}")))?;
        *port = listener
            .local_addr()
            .map_err(Error::io("reading bound address"))?
            .port();
        held.push(listener);
    }
    Ok(ports)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("meridian-testbed-locks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_map_to_loopback_and_back() {
        let lo: IpAddr = "127.7.1.9".parse().unwrap();
        let pod = loopback_to_pod_ip(lo);
        assert_eq!(pod, "10.7.1.9".parse::<IpAddr>().unwrap());
        assert_eq!(pod_ip_to_loopback(pod), lo);
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(pod_ip_to_loopback(other), other);
    }

    #[test]
    fn blocks_are_exclusive_and_addresses_unique() {
        let a = LoopbackBlock::reserve().unwrap();
        let b = LoopbackBlock::reserve().unwrap();
        assert_ne!(a.octet(), b.octet());
        let first = a.allocate().unwrap();
        let second = a.allocate().unwrap();
        assert_ne!(first, second);
        assert_eq!(first.octets()[..2], [127, a.octet()]);
        let port = free_port(first).unwrap();
        assert_ne!(port, 0);
        let [a_port, b_port] = free_ports(first).unwrap();
        assert_ne!(a_port, b_port);
    }
}
