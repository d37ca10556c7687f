//! Reading certificates: PEM documents and files, and a certificate's validity window
//! (renewal at half life). Shared by the CA ([`crate::ca`]) and a gateway's
//! [`crate::Credentials`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::Error;

/// Every certificate in a PEM document (at least one).
pub fn parse_certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { what, source })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate(what));
    }
    Ok(certs)
}

pub(crate) fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), Error> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(cert).map_err(|e| Error::Malformed {
        what: "leaf certificate",
        reason: e.to_string(),
    })?;
    let at = |t: i64| {
        if t >= 0 {
            UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
        }
    };
    Ok((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
    ))
}

/// Half way through a validity period: when a certificate is renewed.
pub(crate) fn half_life(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life / 2
}

/// Reads a PEM file.
pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}
