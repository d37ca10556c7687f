//! Certificate signing requests for a gateway's own key. The key is generated here and
//! only ever leaves this struct inside the [`Credentials`] built from the signed chain.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::certificate::parse_certs;
use crate::{Credentials, Error, Identity};

/// A fresh ECDSA P-256 key and a PKCS#10 CSR for an identity.
pub struct CertificateRequest {
    identity: Identity,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for CertificateRequest {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Generates a key and a CSR whose URI SAN is `identity` (the CA decides the final
    /// identity from who is asking; the SAN only documents the request).
    pub fn generate(identity: &Identity) -> Result<Self, Error> {
        let err = |source| Error::Certificate {
            what: "creating the CSR",
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{} gateway", identity.cluster()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(identity.to_string().try_into().map_err(err)?)];
        let pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(err)?;
        Ok(Self {
            identity: identity.clone(),
            key,
            pem,
        })
    }

    /// The CSR, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The identity requested.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Combines the key with the signed chain and the root the CA returned. Fails when the
    /// leaf does not carry the requested identity or does not match the key.
    pub fn into_credentials(
        self,
        cert_chain_pem: &str,
        root_pem: &str,
    ) -> Result<Credentials, Error> {
        let chain = parse_certs("certificate chain", cert_chain_pem)?;
        let roots = parse_certs("root certificate", root_pem)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Credentials::new(chain, key, roots, Some(&self.identity))
    }
}

/// Makes a CSR for a caller-provided key (test helpers that keep the key themselves).
#[cfg(feature = "testing")]
pub(crate) fn request_for(key: &KeyPair, identity: &Identity) -> Result<String, Error> {
    let err = |source| Error::Certificate {
        what: "creating the CSR",
        source,
    };
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().map_err(err)?)];
    params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(err)
}
