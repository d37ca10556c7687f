//! The mesh certificate authority, in two tiers as in Istio's plug-in CA: one self-signed
//! root per mesh ([`RootCa`]) whose key stays with the operator (PEM files, or a Secret in
//! a cluster of their choosing, never a member's `meridian-ca`), and one intermediate per
//! member cluster ([`ClusterCa`]) that the root signs (`meridianctl ca
//! issue-intermediate`). A member holds only its own intermediate key: its controller
//! signs its gateways' CSRs and its own serving certificate with it and hands out chains
//! of leaf + intermediate; peers anchor on the root. The identity comes from the caller,
//! never from the CSR, so a gateway cannot ask for someone else's name.
//!
//! An intermediate names its cluster with the URI SAN `spiffe://<td>/cluster/<name>`
//! ([`crate::identity::cluster_ca_spiffe_id`]). rcgen cannot write URI name constraints, so
//! the tunnel verifiers ([`crate::verifier`]) enforce that scope: a gateway leaf is
//! accepted only when its cluster is the one its issuing intermediate names, and never
//! when the root signed it directly. A compromised member can mint only its own gateway's
//! identity.
//!
//! PEM layout (files, and the data keys of the Secret `meridian-system/meridian-ca`): the
//! root certificate is [`CA_CERT_FILE`] (`ca.crt`) everywhere; the root key
//! [`CA_KEY_FILE`] (`ca.key`) only where the operator keeps the root; a member has
//! [`INTERMEDIATE_CERT_FILE`] and [`INTERMEDIATE_KEY_FILE`] next to `ca.crt`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::certificate::read;
use crate::identity::{ca_scopes_in, cluster_ca_spiffe_id};
use crate::{Error, Identity};

/// File (and Secret key) name of the mesh root certificate, PEM.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File (and Secret key) name of the root private key, PKCS#8 PEM. Only where the operator
/// keeps the root: a member's `meridian-ca` Secret must not have it.
pub const CA_KEY_FILE: &str = "ca.key";
/// File (and Secret key) name of a member's intermediate certificate, PEM.
pub const INTERMEDIATE_CERT_FILE: &str = "intermediate.crt";
/// File (and Secret key) name of a member's intermediate key, PKCS#8 PEM.
pub const INTERMEDIATE_KEY_FILE: &str = "intermediate.key";
/// Namespace and name of a member's Secret holding its intermediate and the root.
pub const CA_SECRET: (&str, &str) = ("meridian-system", "meridian-ca");
/// Lifetime of a gateway certificate when the request does not ask for one.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest gateway certificate lifetime the CA grants.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lifetime of a new mesh root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a cluster intermediate (rotated by issuing a new one).
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
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
        crate::certificate::half_life(self.not_before, self.not_after)
    }
}

/// The mesh root: its certificate and key. It signs cluster intermediates only.
pub struct RootCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for RootCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa").finish_non_exhaustive()
    }
}

impl RootCa {
    /// Creates a new self-signed root (ECDSA P-256, valid for [`ROOT_TTL`]). `name` becomes
    /// the root's common name, e.g. the trust domain.
    pub fn generate(name: &str) -> Result<Self, Error> {
        let cert_err = |source| Error::Certificate {
            what: "creating the mesh root",
            source,
        };
        let key = KeyPair::generate().map_err(cert_err)?;
        let now = SystemTime::now();
        let params = ca_params(
            format!("Meridian mesh root {name}"),
            BasicConstraints::Unconstrained,
            now - CLOCK_SKEW,
            now + ROOT_TTL,
        );
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root from its certificate and PKCS#8 key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let (issuer, cert_der) = issuer_from_pem("mesh root", cert_pem, key_pem)?;
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
        write_pair(
            dir,
            CA_CERT_FILE,
            &self.cert_pem,
            CA_KEY_FILE,
            &self.key_pem(),
        )
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

    /// Issues the intermediate CA of `cluster` in `trust_domain`, valid from now for `ttl`
    /// (at most until the root expires). It may sign end-entity certificates only (path
    /// length 0) and names its cluster with `spiffe://<td>/cluster/<cluster>`.
    pub fn issue_intermediate(
        &self,
        trust_domain: &str,
        cluster: &str,
        ttl: Duration,
    ) -> Result<ClusterCa, Error> {
        let err = |source| Error::Certificate {
            what: "issuing a cluster intermediate",
            source,
        };
        let scope = Identity::gateway(trust_domain, cluster)?;
        let uri = cluster_ca_spiffe_id(trust_domain, cluster)?;
        let key = KeyPair::generate().map_err(err)?;
        let now = SystemTime::now();
        let not_after = truncate_to_seconds(now + ttl).min(not_after_of(&self.cert_der)?);
        let mut params = ca_params(
            format!("Meridian cluster CA {trust_domain}/{cluster}"),
            BasicConstraints::Constrained(0),
            now - CLOCK_SKEW,
            not_after,
        );
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(err)?)];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(ClusterCa {
            scope,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            root_pem: self.cert_pem.clone(),
            root_der: self.cert_der.clone(),
            not_after,
            issuer: Issuer::new(params, key),
        })
    }
}

#[cfg(feature = "testing")]
impl RootCa {
    /// Signs a gateway leaf with the root itself: what the one-tier layout did, and what a
    /// stolen root key could do, for the tests that show peers refuse it.
    pub(crate) fn sign_leaf(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, Error> {
        let cert = sign_gateway_csr(&self.issuer, csr_pem, identity, not_before, not_after)?;
        Ok(SignedCertificate {
            cert_chain_pem: cert.pem(),
            root_pem: self.cert_pem.clone(),
            not_after: truncate_to_seconds(not_after),
        })
    }
}

/// A member cluster's intermediate CA: signs that cluster's gateway CSRs and the
/// controller's serving certificate. Chains it hands out are leaf + intermediate.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    // The gateway identity this intermediate may certify (its cluster and trust domain).
    scope: Identity,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    root_pem: String,
    root_der: CertificateDer<'static>,
    not_after: SystemTime,
}

impl std::fmt::Debug for ClusterCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.scope.cluster())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Loads an intermediate from its certificate and PKCS#8 key and the mesh root, PEM.
    /// The certificate must name exactly one cluster and be signed by the root.
    pub fn from_pem(cert_pem: &str, key_pem: &str, root_pem: &str) -> Result<Self, Error> {
        let (issuer, cert_der) = issuer_from_pem("cluster intermediate", cert_pem, key_pem)?;
        let root_der =
            CertificateDer::from_pem_slice(root_pem.as_bytes()).map_err(|source| Error::Pem {
                what: "mesh root certificate",
                source,
            })?;
        let scope = match ca_scopes_in(&cert_der)?.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Error::Malformed {
                    what: "cluster intermediate",
                    reason: "it must carry exactly one spiffe://<td>/cluster/<name> URI".into(),
                });
            }
        };
        check_signed_by(&cert_der, &root_der)?;
        Ok(Self {
            not_after: not_after_of(&cert_der)?,
            issuer,
            scope,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            root_pem: root_pem.to_owned(),
            root_der,
        })
    }

    /// Loads [`INTERMEDIATE_CERT_FILE`], [`INTERMEDIATE_KEY_FILE`] and the root
    /// [`CA_CERT_FILE`] from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        Self::from_pem(
            &read(&dir.join(INTERMEDIATE_CERT_FILE))?,
            &read(&dir.join(INTERMEDIATE_KEY_FILE))?,
            &read(&dir.join(CA_CERT_FILE))?,
        )
    }

    /// Writes the intermediate (key mode 0600 on Unix) and the root certificate into `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<(), Error> {
        write_pair(
            dir,
            INTERMEDIATE_CERT_FILE,
            &self.cert_pem,
            INTERMEDIATE_KEY_FILE,
            &self.key_pem(),
        )?;
        let root = dir.join(CA_CERT_FILE);
        std::fs::write(&root, &self.root_pem).map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })
    }

    /// The cluster this intermediate certifies.
    pub fn cluster(&self) -> &str {
        self.scope.cluster()
    }

    /// The trust domain it certifies in.
    pub fn trust_domain(&self) -> &str {
        self.scope.trust_domain()
    }

    /// The intermediate certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The intermediate certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The intermediate's private key, PKCS#8 PEM. A secret: store it, never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The mesh root, PEM (what peers anchor on).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The mesh root, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// End of the intermediate's validity: no certificate it issues outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a gateway CSR (PEM, PKCS#10) for `identity`, valid from now for `ttl` (see
    /// [`granted_ttl`]; cut at the intermediate's end). The CSR's own subject and SANs are
    /// ignored: the certificate carries exactly the identity the caller vouches for, which
    /// must be this intermediate's cluster.
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

    /// Signs a gateway CSR with an explicit validity window (tests use it for expired and
    /// not-yet-valid certificates). `identity` must be this intermediate's cluster.
    pub fn sign_csr_valid(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, Error> {
        if identity != &self.scope {
            return Err(Error::IdentityMismatch {
                expected: self.scope.to_string(),
                found: identity.to_string(),
            });
        }
        self.sign_any(csr_pem, identity, not_before, not_after)
    }

    /// Signs for any identity: what a stolen intermediate key can do, for the tests that
    /// show peers refuse it.
    #[cfg(feature = "testing")]
    pub(crate) fn sign_out_of_scope(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, Error> {
        self.sign_any(csr_pem, identity, not_before, not_after)
    }

    fn sign_any(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, Error> {
        let not_after = truncate_to_seconds(not_after).min(self.not_after);
        let cert = sign_gateway_csr(&self.issuer, csr_pem, identity, not_before, not_after)?;
        Ok(SignedCertificate {
            cert_chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            root_pem: self.root_pem.clone(),
            not_after,
        })
    }

    /// Issues a TLS server certificate with a fresh key for `dns_names` (and the URI SAN
    /// `uri`, e.g. a SPIFFE ID), valid from now for `ttl` (cut at the intermediate's end).
    /// Clients check it with WebPKI against the pinned mesh root and one of the DNS names;
    /// its only extended key usage is serverAuth, and a gateway's tunnel verifier refuses
    /// it (it carries no gateway ID).
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
        let not_after = truncate_to_seconds(now + ttl).min(self.not_after);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(ServerCertificate {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }
}

// An rcgen issuer from a CA certificate and its key, PEM.
fn issuer_from_pem(
    what: &'static str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), Error> {
    let key = KeyPair::from_pem(key_pem).map_err(|source| Error::Certificate {
        what: "reading a CA key",
        source,
    })?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|source| Error::Pem { what, source })?;
    let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| Error::Certificate {
        what: "reading a CA certificate",
        source,
    })?;
    Ok((issuer, cert_der))
}

// Refuses an intermediate the root did not sign: a mismatched pair would hand out chains
// no peer accepts.
fn check_signed_by(cert: &CertificateDer<'_>, root: &CertificateDer<'_>) -> Result<(), Error> {
    use x509_parser::prelude::*;
    fn parse<'a>(
        what: &'static str,
        der: &'a CertificateDer<'_>,
    ) -> Result<X509Certificate<'a>, Error> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|e| Error::Malformed {
                what,
                reason: e.to_string(),
            })
    }
    let cert = parse("cluster intermediate", cert)?;
    let root = parse("mesh root certificate", root)?;
    cert.verify_signature(Some(root.public_key()))
        .map_err(|_| Error::Malformed {
            what: "cluster intermediate",
            reason: "not signed by the mesh root".into(),
        })
}

fn not_after_of(cert: &CertificateDer<'_>) -> Result<SystemTime, Error> {
    Ok(crate::certificate::validity(cert)?.1)
}

fn write_pair(
    dir: &Path,
    cert_file: &str,
    cert_pem: &str,
    key_file: &str,
    key_pem: &str,
) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert = dir.join(cert_file);
    std::fs::write(&cert, cert_pem).map_err(io(&cert))?;
    let key = dir.join(key_file);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&key).map_err(io(&key))?;
    std::io::Write::write_all(&mut f, key_pem.as_bytes()).map_err(io(&key))?;
    Ok(())
}

/// Signs a gateway CSR (PEM, PKCS#10) with `issuer` for `identity`. Parsing verifies the
/// CSR's self-signature (proof of key possession); its own subject and SANs are replaced
/// by the leaf parameters of `identity`.
fn sign_gateway_csr(
    issuer: &Issuer<'static, KeyPair>,
    csr_pem: &str,
    identity: &Identity,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<rcgen::Certificate, Error> {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
        Error::Certificate {
            what: "parsing the CSR",
            source,
        }
    })?;
    csr.params = leaf_params(identity, not_before, not_after)?;
    csr.signed_by(issuer).map_err(|source| Error::Certificate {
        what: "signing the CSR",
        source,
    })
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

/// What both CA tiers share: a Meridian CA certificate named `common_name` that signs
/// certificates and CRLs, valid from `not_before` to `not_after`, with a fresh serial.
fn ca_params(
    common_name: String,
    constraints: BasicConstraints,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateRequest;

    const TD: &str = "meridian.local";

    fn east() -> ClusterCa {
        RootCa::generate(TD)
            .unwrap()
            .issue_intermediate(TD, "east", INTERMEDIATE_TTL)
            .unwrap()
    }

    #[test]
    fn signs_for_the_vouched_identity_only() {
        let ca = east();
        let me = Identity::gateway(TD, "east").unwrap();
        let other = Identity::gateway(TD, "west").unwrap();
        // The CSR asks for west, the caller vouches for east: east it is.
        let req = CertificateRequest::generate(&other).unwrap();
        let signed = ca.sign_csr(req.pem(), &me, Duration::ZERO).unwrap();
        let err = req
            .into_credentials(&signed.cert_chain_pem, &signed.root_pem)
            .unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
    }

    #[test]
    fn an_intermediate_signs_only_its_own_cluster() {
        let ca = east();
        let west = Identity::gateway(TD, "west").unwrap();
        let req = CertificateRequest::generate(&west).unwrap();
        let err = ca.sign_csr(req.pem(), &west, Duration::ZERO).unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
    }

    #[test]
    fn chains_are_leaf_then_intermediate_and_round_trip_through_pem() {
        let root = RootCa::generate(TD).unwrap();
        let root = RootCa::from_pem(root.cert_pem(), &root.key_pem()).unwrap();
        let issued = root
            .issue_intermediate(TD, "east", INTERMEDIATE_TTL)
            .unwrap();
        let ca =
            ClusterCa::from_pem(issued.cert_pem(), &issued.key_pem(), root.cert_pem()).unwrap();
        assert_eq!(ca.cluster(), "east");
        assert_eq!(ca.trust_domain(), TD);
        let id = Identity::gateway(TD, "east").unwrap();
        let req = CertificateRequest::generate(&id).unwrap();
        let signed = ca
            .sign_csr(req.pem(), &id, Duration::from_secs(3600))
            .unwrap();
        let chain = crate::certificate::parse_certs("chain", &signed.cert_chain_pem).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.cert_der());
        assert_eq!(signed.root_pem, root.cert_pem());
        let creds = req
            .into_credentials(&signed.cert_chain_pem, &signed.root_pem)
            .unwrap();
        assert_eq!(creds.identity(), &id);
        assert_eq!(creds.not_after(), signed.not_after);
    }

    #[test]
    fn refuses_an_intermediate_of_another_root() {
        let ca = east();
        let other = RootCa::generate(TD).unwrap();
        let err = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem(), other.cert_pem()).unwrap_err();
        assert!(
            err.to_string().contains("not signed by the mesh root"),
            "{err}"
        );
        // A root is no intermediate: it names no cluster.
        let err =
            ClusterCa::from_pem(other.cert_pem(), &other.key_pem(), other.cert_pem()).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn nothing_outlives_the_intermediate() {
        let root = RootCa::generate(TD).unwrap();
        let ca = root
            .issue_intermediate(TD, "east", Duration::from_secs(600))
            .unwrap();
        let id = Identity::gateway(TD, "east").unwrap();
        let req = CertificateRequest::generate(&id).unwrap();
        let signed = ca.sign_csr(req.pem(), &id, MAX_CERT_TTL).unwrap();
        assert_eq!(signed.not_after, ca.not_after());
        let server = ca.issue_server(&["a".into()], None, MAX_CERT_TTL).unwrap();
        assert_eq!(server.not_after, ca.not_after());
    }

    #[test]
    fn server_certificates_carry_the_names_and_half_life() {
        let ca = east();
        let names = vec!["meridian-controller.meridian-system.svc".to_owned()];
        let uri = "spiffe://meridian.local/cluster/east/controller";
        let cert = ca
            .issue_server(&names, Some(uri), Duration::from_secs(3600))
            .unwrap();
        assert_eq!(cert.chain.len(), 2, "leaf and intermediate");
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
        let ca = east();
        let id = Identity::gateway(TD, "east").unwrap();
        assert!(ca.sign_csr("not a csr", &id, Duration::ZERO).is_err());
    }
}
