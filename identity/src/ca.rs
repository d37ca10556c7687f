//! The mesh certificate authority: one self-signed root per mesh, shared by every member
//! cluster (Secret `meridian-system/meridian-ca`, or PEM files for the testbed). It signs
//! gateway CSRs for SPIFFE identities; the identity comes from the caller, never from the
//! CSR, so a gateway cannot ask for someone else's name.
//!
//! PEM layout: the root certificate is [`CA_CERT_FILE`] (`ca.crt`) and its PKCS#8 key is
//! [`CA_KEY_FILE`] (`ca.key`); the Secret uses the same names as data keys.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, Identity};

/// File (and Secret key) name of the root certificate, PEM.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File (and Secret key) name of the root private key, PKCS#8 PEM.
pub const CA_KEY_FILE: &str = "ca.key";
/// Namespace and name of the Secret holding the mesh root.
pub const CA_SECRET: (&str, &str) = ("meridian-system", "meridian-ca");
/// Lifetime of a gateway certificate when the request does not ask for one.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest gateway certificate lifetime the CA grants.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lifetime of a new mesh root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
// Tolerate clocks that run a little behind the CA's: certificates are backdated by a
// quarter of their lifetime, at most a minute (so half-life renewal stays meaningful for
// short lifetimes).
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The lifetime granted for a requested one: 0 means [`DEFAULT_CERT_TTL`], capped at
/// [`MAX_CERT_TTL`].
pub fn granted_ttl(requested: Duration) -> Duration {
    if requested.is_zero() {
        DEFAULT_CERT_TTL
    } else {
        requested.min(MAX_CERT_TTL)
    }
}

/// A certificate issued by the mesh CA, as sent back to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    /// Leaf certificate then intermediates, PEM.
    pub cert_chain_pem: String,
    /// The mesh root, PEM.
    pub root_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl SignedCertificate {
    /// `not_after` as Unix seconds (the wire format of `SignCertificateResponse`).
    pub fn not_after_unix(&self) -> i64 {
        unix_seconds(self.not_after)
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A TLS server certificate the CA issued together with its key, for a process that holds
/// the CA itself (the controller's gRPC port): no CSR round trip is needed there.
pub struct ServerCertificate {
    /// The leaf certificate (the mesh root is not included: clients pin it).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8. A secret: never log it.
    pub key: PrivateKeyDer<'static>,
    /// Start of validity (backdated a little for clock skew).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ServerCertificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// When to renew: half way through the lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        crate::credentials::half_life(self.not_before, self.not_after)
    }
}

/// The mesh root CA: its certificate and signing key.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for MeshCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Creates a new self-signed root (ECDSA P-256, valid for [`ROOT_TTL`]). `name` becomes
    /// the root's common name, e.g. the trust domain.
    pub fn generate(name: &str) -> Result<Self, Error> {
        let cert_err = |source| Error::Certificate {
            what: "creating the mesh root",
            source,
        };
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meridian");
        dn.push(DnType::CommonName, format!("Meridian mesh root {name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root from its certificate and PKCS#8 key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        use rustls_pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem).map_err(|source| Error::Certificate {
            what: "reading the mesh root key",
            source,
        })?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| Error::Pem {
                what: "mesh root certificate",
                source,
            })?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| Error::Certificate {
                what: "reading the mesh root certificate",
                source,
            })?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// Loads [`CA_CERT_FILE`] and [`CA_KEY_FILE`] from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        let cert = read(&dir.join(CA_CERT_FILE))?;
        let key = read(&dir.join(CA_KEY_FILE))?;
        Self::from_pem(&cert, &key)
    }

    /// Writes [`CA_CERT_FILE`] and [`CA_KEY_FILE`] into `dir` (the key with mode 0600 on Unix).
    pub fn write_dir(&self, dir: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert = dir.join(CA_CERT_FILE);
        std::fs::write(&cert, &self.cert_pem).map_err(io(&cert))?;
        let key = dir.join(CA_KEY_FILE);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&key).map_err(io(&key))?;
        std::io::Write::write_all(&mut f, self.key_pem().as_bytes()).map_err(io(&key))?;
        Ok(())
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The root's private key, PKCS#8 PEM. A secret: store it, never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a gateway CSR (PEM, PKCS#10) for `identity`, valid from now for `ttl` (see
    /// [`granted_ttl`]). The CSR's own subject and SANs are ignored: the certificate
    /// carries exactly the identity the caller vouches for.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<SignedCertificate, Error> {
        let now = SystemTime::now();
        let backdate = CLOCK_SKEW.min(ttl / 4);
        self.sign_csr_valid(csr_pem, identity, now - backdate, now + ttl)
    }

    /// Issues a TLS server certificate with a fresh key for `dns_names` (and the URI SAN
    /// `uri`, e.g. a SPIFFE ID), valid from now for `ttl`. Clients check it with WebPKI
    /// against the pinned mesh root and one of the DNS names; its only extended key usage is
    /// serverAuth, and a gateway's tunnel verifier refuses it (it carries no gateway ID).
    pub fn issue_server(
        &self,
        dns_names: &[String],
        uri: Option<&str>,
        ttl: Duration,
    ) -> Result<ServerCertificate, Error> {
        let err = |source| Error::Certificate {
            what: "issuing a server certificate",
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(err)?;
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.to_owned().try_into().map_err(err)?));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meridian");
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_before = truncate_to_seconds(now - CLOCK_SKEW.min(ttl / 4));
        let not_after = truncate_to_seconds(now + ttl);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(ServerCertificate {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }

    /// Signs a gateway CSR with an explicit validity window (tests use it for expired and
    /// not-yet-valid certificates).
    pub fn sign_csr_valid(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, Error> {
        // Parsing also verifies the CSR's self-signature (proof of key possession).
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
            Error::Certificate {
                what: "parsing the CSR",
                source,
            }
        })?;
        csr.params = leaf_params(identity, not_before, not_after)?;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|source| Error::Certificate {
                what: "signing the CSR",
                source,
            })?;
        Ok(SignedCertificate {
            cert_chain_pem: cert.pem(),
            root_pem: self.cert_pem.clone(),
            not_after: truncate_to_seconds(not_after),
        })
    }
}

fn leaf_params(
    identity: &Identity,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(
        DnType::CommonName,
        format!("{} gateway", identity.cluster()),
    );
    params.distinguished_name = dn;
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|source| Error::Certificate {
            what: "encoding the SPIFFE ID",
            source,
        })?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Gateways are both tunnel servers and tunnel clients.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

// X.509 validity has second precision.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds(t).max(0) as u64)
}

pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateRequest;

    #[test]
    fn signs_for_the_vouched_identity_only() {
        let ca = MeshCa::generate("meridian.local").unwrap();
        let me = Identity::gateway("meridian.local", "east").unwrap();
        let req = CertificateRequest::generate(&me).unwrap();
        // The caller vouches for another cluster than the CSR asks for: the CSR loses.
        let other = Identity::gateway("meridian.local", "west").unwrap();
        let signed = ca.sign_csr(req.pem(), &other, Duration::ZERO).unwrap();
        let err = req
            .into_credentials(&signed.cert_chain_pem, &signed.root_pem)
            .unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
    }

    #[test]
    fn round_trips_through_pem() {
        let ca = MeshCa::generate("meridian.local").unwrap();
        let again = MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let id = Identity::gateway("meridian.local", "east").unwrap();
        let req = CertificateRequest::generate(&id).unwrap();
        let signed = again
            .sign_csr(req.pem(), &id, Duration::from_secs(3600))
            .unwrap();
        let creds = req
            .into_credentials(&signed.cert_chain_pem, &signed.root_pem)
            .unwrap();
        assert_eq!(creds.identity(), &id);
        assert_eq!(creds.not_after(), signed.not_after);
    }

    #[test]
    fn server_certificates_carry_the_names_and_half_life() {
        let ca = MeshCa::generate("meridian.local").unwrap();
        let names = vec!["meridian-controller.meridian-system.svc".to_owned()];
        let uri = "spiffe://meridian.local/cluster/east/controller";
        let cert = ca
            .issue_server(&names, Some(uri), Duration::from_secs(3600))
            .unwrap();
        assert_eq!(crate::identity::uri_sans(&cert.chain[0]).unwrap(), [uri]);
        assert!(
            crate::identity::identities_in(&cert.chain[0])
                .unwrap()
                .is_empty(),
            "a controller certificate is no gateway identity"
        );
        let half = cert.refresh_at().duration_since(cert.not_before).unwrap();
        assert_eq!(half, Duration::from_secs(3600 + 60) / 2);
    }

    #[test]
    fn ttl_defaults_and_caps() {
        assert_eq!(granted_ttl(Duration::ZERO), DEFAULT_CERT_TTL);
        assert_eq!(
            granted_ttl(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(granted_ttl(Duration::from_secs(u64::MAX / 2)), MAX_CERT_TTL);
    }

    #[test]
    fn rejects_garbage_csr() {
        let ca = MeshCa::generate("meridian.local").unwrap();
        let id = Identity::gateway("meridian.local", "east").unwrap();
        assert!(ca.sign_csr("not a csr", &id, Duration::ZERO).is_err());
    }
}
