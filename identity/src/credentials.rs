//! A gateway's credentials: its certified key, identity and the mesh roots it trusts.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certificate::{half_life, validity};
// Where the controller and the tests found it before it moved to `certificate`.
pub use crate::certificate::parse_certs;
use crate::identity::{identities_in, uri_sans};
use crate::{Error, Identity, tls};

/// A certified key with its identity, validity and the mesh roots. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    identity: Identity,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Builds credentials from a chain (leaf first), its private key and the mesh roots.
    /// The leaf must carry a Meridian gateway identity (`expected`, when given) and match
    /// the key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        expected: Option<&Identity>,
    ) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or(Error::NoCertificate("certificate chain"))?;
        let found = identities_in(leaf)?;
        let identity = match expected {
            Some(want) if found.contains(want) => want.clone(),
            Some(want) => {
                return Err(Error::IdentityMismatch {
                    expected: want.to_string(),
                    found: uri_sans(leaf)?.join(", "),
                });
            }
            None => found
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoIdentity(uri_sans(leaf).unwrap_or_default().join(", ")))?,
        };
        let (not_before, not_after) = validity(leaf)?;
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r)?;
        }
        if store.is_empty() {
            return Err(Error::NoCertificate("root certificate"));
        }
        let signing = tls::provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match()?;
        Ok(Self {
            identity,
            certified: Arc::new(certified),
            roots: Arc::new(store),
            not_before,
            not_after,
        })
    }

    /// Builds credentials from PEM text: chain (leaf first), PKCS#8/SEC1/PKCS#1 key, roots.
    pub fn from_pem(chain_pem: &str, key_pem: &str, root_pem: &str) -> Result<Self, Error> {
        let chain = parse_certs("certificate chain", chain_pem)?;
        let roots = parse_certs("root certificate", root_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| Error::Pem {
                what: "private key",
                source,
            })?;
        Self::new(chain, key, roots, None)
    }

    /// Reads PEM files (see [`Credentials::from_pem`]).
    pub fn from_files(chain: &Path, key: &Path, root: &Path) -> Result<Self, Error> {
        Self::from_pem(
            &crate::certificate::read(chain)?,
            &crate::certificate::read(key)?,
            &crate::certificate::read(root)?,
        )
    }

    /// The identity the leaf certifies.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Key and chain, as rustls uses them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The mesh roots peers must chain to.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew: half way through the leaf's lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        half_life(self.not_before, self.not_after)
    }

    /// Whether the leaf is outside its validity at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after || now < self.not_before
    }
}
