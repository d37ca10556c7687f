//! Rewriting endpoint addresses before they are dialled, for simulated pod networks.
//!
//! Kubernetes refuses loopback addresses in Endpoints, so the hermetic testbed gives pods IPs
//! in `10.0.0.0/8` and serves them on the same offset in `127.0.0.0/8`. A gateway under test
//! is told `--dial-address-map 10.0.0.0/8=127.0.0.0/8` and dials the loopback twin; without
//! the flag (every real cluster) addresses are dialled as they are. The map applies only to
//! the final dial of an endpoint: authorization and routing keep the pod IPs of the snapshot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// `FROM=TO`, two IPv4 networks of the same prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressMap {
    from: Ipv4Addr,
    to: Ipv4Addr,
    prefix: u8,
}

impl AddressMap {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// `addr` moved into the `TO` network if it lies in `FROM`; unchanged otherwise.
    pub fn apply(&self, addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(v4) if u32::from(v4) & self.mask() == u32::from(self.from) => {
                let host = u32::from(v4) & !self.mask();
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from(self.to) | host)),
                    addr.port(),
                )
            }
            _ => addr,
        }
    }
}

fn network(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
    Ok((ip, prefix))
}

impl FromStr for AddressMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (from, to) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not FROM=TO"))?;
        let ((from, fp), (to, tp)) = (network(from)?, network(to)?);
        if fp != tp {
            return Err(format!("{s:?}: both networks need the same prefix length"));
        }
        let map = Self {
            from,
            to,
            prefix: fp,
        };
        if u32::from(from) & !map.mask() != 0 || u32::from(to) & !map.mask() != 0 {
            return Err(format!("{s:?}: host bits set in a network address"));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_only_the_from_network() {
        let m: AddressMap = "10.0.0.0/8=127.0.0.0/8".parse().unwrap();
        assert_eq!(
            m.apply("10.1.2.3:80".parse().unwrap()),
            "127.1.2.3:80".parse().unwrap()
        );
        assert_eq!(
            m.apply("192.0.2.1:80".parse().unwrap()),
            "192.0.2.1:80".parse().unwrap()
        );
        assert_eq!(
            m.apply("[::1]:80".parse().unwrap()),
            "[::1]:80".parse().unwrap()
        );
        assert!("10.0.0.0/8=127.0.0.0/16".parse::<AddressMap>().is_err());
        assert!("10.0.0.1/8=127.0.0.0/8".parse::<AddressMap>().is_err());
        assert!("10.0.0.0/8".parse::<AddressMap>().is_err());
    }
}
