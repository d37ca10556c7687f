//! Per-cluster credentials: a CA, the API server's serving certificate, an admin client
//! certificate and the ServiceAccount token signing key. All ECDSA P-256, made with rcgen.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

/// Group that Kubernetes' default RBAC policy makes cluster-admin.
const ADMIN_GROUP: &str = "system:masters";

/// Paths of the credential files the API server reads.
#[derive(Clone, Debug)]
pub(crate) struct PkiFiles {
    /// CA certificate (client CA and trust anchor).
    pub ca_cert: PathBuf,
    /// Serving certificate.
    pub serving_cert: PathBuf,
    /// Serving key.
    pub serving_key: PathBuf,
    /// ServiceAccount token verification key (public).
    pub service_account_public: PathBuf,
    /// ServiceAccount token signing key (private).
    pub service_account_private: PathBuf,
}

/// One cluster's generated credentials.
pub(crate) struct ClusterPki {
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Admin client certificate (group `system:masters`), PEM.
    pub admin_cert_pem: String,
    /// Admin client key, PKCS#8 PEM.
    pub admin_key_pem: String,
    /// Files written for the API server.
    pub files: PkiFiles,
}

impl ClusterPki {
    /// Generates credentials for the API server of `cluster` at `server_ip` and writes the
    /// server's files into `dir`.
    pub(crate) fn generate(cluster: &str, server_ip: IpAddr, dir: &Path) -> Result<Self> {
        let pki = |what| move |source| Error::Pki { what, source };

        let ca_key = KeyPair::generate().map_err(pki("CA key"))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name(&format!("meridian-testbed-{cluster}-ca"), None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(pki("CA cert"))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().map_err(pki("serving key"))?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(pki("serving cert"))?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(server_ip));
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .map_err(pki("serving cert"))?;

        let admin_key = KeyPair::generate().map_err(pki("admin key"))?;
        let mut admin = CertificateParams::default();
        admin.distinguished_name = name("meridian-testbed-admin", Some(ADMIN_GROUP));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin
            .signed_by(&admin_key, &issuer)
            .map_err(pki("admin cert"))?;

        let sa_key = KeyPair::generate().map_err(pki("service account key"))?;

        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_public: dir.join("sa.pub"),
            service_account_private: dir.join("sa.key"),
        };
        write(&files.ca_cert, &ca_cert.pem())?;
        write(&files.serving_cert, &serving_cert.pem())?;
        write(&files.serving_key, &serving_key.serialize_pem())?;
        write(&files.service_account_public, &sa_key.public_key_pem())?;
        write(&files.service_account_private, &sa_key.serialize_pem())?;

        Ok(ClusterPki {
            ca_pem: ca_cert.pem(),
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            files,
        })
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn write(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).map_err(Error::io(format!("writing {}", path.display())))
}
