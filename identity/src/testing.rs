//! Test helpers: mint mesh CAs and gateway certificates, including the bad ones a test
//! needs (another CA, a wrong trust domain, expired).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;

use crate::csr::request_for;
use crate::{Credentials, Error, Identity, MeshCa};

/// A mesh CA for tests.
#[derive(Debug)]
pub struct TestCa {
    ca: MeshCa,
    trust_domain: String,
}

/// A certificate, its key and the root, all PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The identity the leaf carries.
    pub identity: Identity,
    /// Leaf certificate, PEM.
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The issuing root, PEM.
    pub root_pem: String,
}

/// Paths of a [`TestCert`] written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Leaf certificate.
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
            ca: MeshCa::generate(trust_domain).expect("generate test CA"),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The CA itself (to serve `SignCertificate` in tests).
    pub fn ca(&self) -> &MeshCa {
        &self.ca
    }

    /// The trust domain this CA certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A gateway certificate for `cluster`, valid for a day.
    pub fn issue(&self, cluster: &str) -> TestCert {
        let now = SystemTime::now();
        self.issue_valid(
            &Identity::gateway(&self.trust_domain, cluster).expect("identity"),
            now - Duration::from_secs(60),
            now + Duration::from_secs(24 * 3600),
        )
    }

    /// A gateway certificate for `cluster` that expired an hour ago.
    pub fn issue_expired(&self, cluster: &str) -> TestCert {
        let now = SystemTime::now();
        self.issue_valid(
            &Identity::gateway(&self.trust_domain, cluster).expect("identity"),
            now - Duration::from_secs(48 * 3600),
            now - Duration::from_secs(3600),
        )
    }

    /// A certificate for `identity` (any trust domain) valid between the given times.
    pub fn issue_valid(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> TestCert {
        self.try_issue(identity, not_before, not_after)
            .expect("issue test certificate")
    }

    fn try_issue(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<TestCert, Error> {
        let key = KeyPair::generate().map_err(|source| Error::Certificate {
            what: "test key",
            source,
        })?;
        let csr = request_for(&key, identity)?;
        let signed = self
            .ca
            .sign_csr_valid(&csr, identity, not_before, not_after)?;
        Ok(TestCert {
            identity: identity.clone(),
            chain_pem: signed.cert_chain_pem,
            key_pem: key.serialize_pem(),
            root_pem: signed.root_pem,
        })
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
