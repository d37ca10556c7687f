//! Test helpers: mint mesh roots, cluster intermediates and gateway certificates,
//! including the bad ones a test needs (another CA, a wrong trust domain, expired, signed
//! by the root directly, signed by another cluster's intermediate).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;

use crate::ca::INTERMEDIATE_TTL;
use crate::csr::request_for;
use crate::{ClusterCa, Credentials, Error, Identity, RootCa, SignedCertificate};

/// A mesh for tests: a root, and cluster intermediates it issues on demand (a fresh one
/// per certificate: peers only care that the intermediate names the leaf's cluster).
#[derive(Debug)]
pub struct TestCa {
    root: RootCa,
    trust_domain: String,
}

/// A certificate, its key and the root, all PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The identity the leaf carries.
    pub identity: Identity,
    /// Leaf certificate then its issuing intermediate (if any), PEM.
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The mesh root, PEM.
    pub root_pem: String,
}

/// Paths of a [`TestCert`] written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Leaf certificate and intermediate.
    pub chain: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Root certificate.
    pub root: PathBuf,
}

impl TestCa {
    /// A fresh root for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            root: RootCa::generate(trust_domain).expect("generate test root"),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The root itself.
    pub fn root(&self) -> &RootCa {
        &self.root
    }

    /// A new intermediate of `cluster` in this CA's trust domain (to serve
    /// `SignCertificate` in tests).
    pub fn intermediate(&self, cluster: &str) -> ClusterCa {
        self.intermediate_in(&self.trust_domain, cluster)
    }

    fn intermediate_in(&self, trust_domain: &str, cluster: &str) -> ClusterCa {
        self.root
            .issue_intermediate(trust_domain, cluster, INTERMEDIATE_TTL)
            .expect("issue test intermediate")
    }

    /// The trust domain this CA certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> &str {
        self.root.cert_pem()
    }

    /// A gateway certificate for `cluster` from its intermediate, valid for a day.
    pub fn issue(&self, cluster: &str) -> TestCert {
        let now = SystemTime::now();
        self.issue_valid(
            &self.gateway(cluster),
            now - Duration::from_secs(60),
            now + Duration::from_secs(24 * 3600),
        )
    }

    /// A gateway certificate for `cluster` that expired an hour ago.
    pub fn issue_expired(&self, cluster: &str) -> TestCert {
        let now = SystemTime::now();
        self.issue_valid(
            &self.gateway(cluster),
            now - Duration::from_secs(48 * 3600),
            now - Duration::from_secs(3600),
        )
    }

    /// A certificate for `identity` (any trust domain) from the intermediate of its own
    /// cluster, valid between the given times.
    pub fn issue_valid(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> TestCert {
        let ca = self.intermediate_in(identity.trust_domain(), identity.cluster());
        self.make(identity, |csr| {
            ca.sign_csr_valid(csr, identity, not_before, not_after)
        })
    }

    /// What a stolen intermediate can forge: a gateway certificate for `cluster` signed by
    /// the intermediate of `issuer` (another cluster).
    pub fn issue_from(&self, issuer: &str, cluster: &str) -> TestCert {
        let ca = self.intermediate(issuer);
        let identity = self.gateway(cluster);
        let now = SystemTime::now();
        self.make(&identity, |csr| {
            ca.sign_out_of_scope(csr, &identity, now, now + Duration::from_secs(3600))
        })
    }

    /// What the root key alone can forge (and what the one-tier layout issued): a gateway
    /// certificate for `cluster` signed by the root directly.
    pub fn issue_by_root(&self, cluster: &str) -> TestCert {
        let identity = self.gateway(cluster);
        let now = SystemTime::now();
        self.make(&identity, |csr| {
            self.root
                .sign_leaf(csr, &identity, now, now + Duration::from_secs(3600))
        })
    }

    fn gateway(&self, cluster: &str) -> Identity {
        Identity::gateway(&self.trust_domain, cluster).expect("identity")
    }

    fn make(
        &self,
        identity: &Identity,
        sign: impl FnOnce(&str) -> Result<SignedCertificate, Error>,
    ) -> TestCert {
        let key = KeyPair::generate().expect("test key");
        let signed = request_for(&key, identity)
            .and_then(|csr| sign(&csr))
            .expect("issue test certificate");
        TestCert {
            identity: identity.clone(),
            chain_pem: signed.cert_chain_pem,
            key_pem: key.serialize_pem(),
            root_pem: signed.root_pem,
        }
    }
}

impl TestCert {
    /// Parsed credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::from_pem(&self.chain_pem, &self.key_pem, &self.root_pem)
            .expect("test credentials")
    }

    /// Credentials that present this certificate but trust `root_pem` instead.
    pub fn credentials_trusting(&self, root_pem: &str) -> Credentials {
        Credentials::from_pem(&self.chain_pem, &self.key_pem, root_pem).expect("test credentials")
    }

    /// Writes `<stem>.crt`, `<stem>.key` and `<stem>-root.crt` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> CertFiles {
        std::fs::create_dir_all(dir).expect("create cert dir");
        let files = CertFiles {
            chain: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            root: dir.join(format!("{stem}-root.crt")),
        };
        std::fs::write(&files.chain, &self.chain_pem).expect("write cert");
        std::fs::write(&files.key, &self.key_pem).expect("write key");
        std::fs::write(&files.root, &self.root_pem).expect("write root");
        files
    }
}
