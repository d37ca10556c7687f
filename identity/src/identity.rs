//! SPIFFE identities of Meridian gateways: `spiffe://<trust-domain>/cluster/<cluster>/gateway`.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;

use crate::Error;

const SCHEME: &str = "spiffe://";

/// The SPIFFE identity of one cluster's east-west gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    cluster: String,
}

impl Identity {
    /// The gateway identity of `cluster` in `trust_domain`, validated as a SPIFFE ID.
    pub fn gateway(trust_domain: &str, cluster: &str) -> Result<Self, Error> {
        let text = format!("{SCHEME}{trust_domain}/cluster/{cluster}/gateway");
        check_trust_domain(&text, trust_domain)?;
        check_segment(&text, cluster)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cluster: cluster.to_owned(),
        })
    }

    /// The trust domain, e.g. `meridian.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The member cluster whose gateway this is.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/cluster/{}/gateway",
            self.trust_domain, self.cluster
        )
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| Error::InvalidIdentity {
            id: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "cluster", cluster, "gateway"] => {
                Self::gateway(td, cluster).map_err(|e| match e {
                    Error::InvalidIdentity { reason, .. } => bad(reason),
                    other => other,
                })
            }
            _ => Err(bad(
                "expected spiffe://<trust-domain>/cluster/<name>/gateway",
            )),
        }
    }
}

// SPIFFE: trust domain names are lower-case letters, digits, '.', '-' and '_'.
fn check_trust_domain(id: &str, td: &str) -> Result<(), Error> {
    let ok = !td.is_empty()
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidIdentity {
            id: id.to_owned(),
            reason: "trust domain must be non-empty [a-z0-9.-_]",
        })
    }
}

// SPIFFE: path segments are letters, digits, '.', '-' and '_', and not `.` or `..`.
fn check_segment(id: &str, seg: &str) -> Result<(), Error> {
    let ok = !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidIdentity {
            id: id.to_owned(),
            reason: "cluster name must be a non-empty path segment [A-Za-z0-9.-_]",
        })
    }
}

/// The SPIFFE ID of `cluster`'s controller, `spiffe://<trust-domain>/cluster/<cluster>/controller`,
/// carried by its gRPC serving certificate. It is not an [`Identity`]: the tunnel accepts
/// only gateway IDs, so a controller certificate can never stand in for a gateway.
pub fn controller_spiffe_id(trust_domain: &str, cluster: &str) -> Result<String, Error> {
    let text = format!("{SCHEME}{trust_domain}/cluster/{cluster}/controller");
    check_trust_domain(&text, trust_domain)?;
    check_segment(&text, cluster)?;
    Ok(text)
}

/// The SPIFFE ID naming a cluster's intermediate CA, `spiffe://<trust-domain>/cluster/<cluster>`:
/// the intermediate carries it as its URI SAN, and the tunnel verifiers accept a gateway
/// leaf only when its cluster equals the one its issuing intermediate names (X.509 name
/// constraints would say the same, but rcgen cannot write URI subtrees).
pub fn cluster_ca_spiffe_id(trust_domain: &str, cluster: &str) -> Result<String, Error> {
    let text = format!("{SCHEME}{trust_domain}/cluster/{cluster}");
    check_trust_domain(&text, trust_domain)?;
    check_segment(&text, cluster)?;
    Ok(text)
}

/// The clusters a certificate names with [`cluster_ca_spiffe_id`] URIs, as the gateway
/// identity of each (the identity an intermediate may certify). Other URIs are ignored.
pub fn ca_scopes_in(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, Error> {
    Ok(uri_sans(cert)?
        .iter()
        .filter_map(|u| {
            let rest = u.strip_prefix(SCHEME)?;
            match rest.split('/').collect::<Vec<_>>().as_slice() {
                [td, "cluster", cluster] => Identity::gateway(td, cluster).ok(),
                _ => None,
            }
        })
        .collect())
}

/// Every URI SAN of a DER certificate, in order.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, Error> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(cert).map_err(|e| Error::Malformed {
        what: "certificate",
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                out.push((*u).to_owned());
            }
        }
    }
    Ok(out)
}

/// The Meridian gateway identities among a certificate's URI SANs. Other URIs are ignored.
pub fn identities_in(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, Error> {
    Ok(uri_sans(cert)?
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: Identity = "spiffe://meridian.local/cluster/east-1/gateway"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "meridian.local");
        assert_eq!(id.cluster(), "east-1");
        assert_eq!(
            id.to_string(),
            "spiffe://meridian.local/cluster/east-1/gateway"
        );
        assert_eq!(Identity::gateway("meridian.local", "east-1").unwrap(), id);
    }

    #[test]
    fn controller_ids_are_not_gateway_identities() {
        let id = controller_spiffe_id("meridian.local", "east-1").unwrap();
        assert_eq!(id, "spiffe://meridian.local/cluster/east-1/controller");
        assert!(id.parse::<Identity>().is_err());
        assert!(controller_spiffe_id("meridian.local", "a/b").is_err());
    }

    #[test]
    fn cluster_ca_ids_are_not_gateway_identities() {
        let id = cluster_ca_spiffe_id("meridian.local", "east-1").unwrap();
        assert_eq!(id, "spiffe://meridian.local/cluster/east-1");
        assert!(id.parse::<Identity>().is_err());
        assert!(cluster_ca_spiffe_id("meridian.local", "..").is_err());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://meridian.local/cluster/a/gateway",
            "spiffe://meridian.local/cluster/a",
            "spiffe://meridian.local/ns/a/sa/b",
            "spiffe://Meridian.local/cluster/a/gateway",
            "spiffe:///cluster/a/gateway",
            "spiffe://td/cluster//gateway",
            "spiffe://td/cluster/../gateway",
            "spiffe://td/cluster/a/gateway/x",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
