//! TLS settings of an `https://` upstream, read from PEM files and checked when the configuration
//! loads.
//!
//! An `https://` upstream is always verified against the platform's trust store (loaded once per
//! process by [`crate::upstream::http`]). Its `tls_*` keys add to that:
//!
//! ```text
//!   tls_ca_file      ──▶ extra trust anchors (a private CA), on top of the platform's
//!   tls_client_cert  ──┐
//!   tls_client_key   ──┴▶ a client identity, presented when the upstream asks for one (mTLS)
//! ```
//!
//! Everything that can be wrong with these files is found here, at load, with the key's path: a
//! missing file, a file without a PEM certificate, a CA certificate webpki cannot use, a key of an
//! unsupported type, or a key that does not belong to the certificate. Building the rustls client
//! configuration at start then has nothing left to fail on.
//!
//! The private key is parsed into a signing key right away; its DER bytes are not kept, and
//! neither `Debug` nor any message prints them (a SHA-256 fingerprint stands in for equality, so a
//! SIGHUP reload can tell that a file changed).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

/// The TLS settings of one `https://` upstream beyond the defaults (platform trust store, no
/// client certificate).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The file the extra trust anchors came from (`tls_ca_file`, resolved).
    pub ca_file: Option<PathBuf>,
    /// Extra trust anchors, trusted in addition to the platform's.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The certificate and key presented to an upstream that asks for one.
    pub client_identity: Option<ClientIdentity>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .field("ca_certs", &self.ca_certs.len())
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// A client certificate chain and its private key, ready for rustls.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The PEM certificate chain file (`tls_client_cert`, resolved); the leaf comes first.
    pub cert_file: PathBuf,
    /// The PEM private key file (`tls_client_key`, resolved).
    pub key_file: PathBuf,
    key: Arc<CertifiedKey>,
    fingerprint: [u8; 32],
}

impl ClientIdentity {
    /// The chain and signing key, as rustls presents them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for ClientIdentity {}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("certificates", &self.key.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Which of the two client identity keys a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityKey {
    /// `tls_client_cert`.
    Cert,
    /// `tls_client_key`.
    Key,
}

/// Reads a PEM bundle of CA certificates; each one must be usable as a trust anchor.
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certificates(path)?;
    for (i, cert) in certs.iter().enumerate() {
        RootCertStore::empty().add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {} is not a usable CA certificate: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(certs)
}

/// Reads a client certificate chain and its private key and checks that they belong together.
pub(crate) fn load_client_identity(
    cert_file: &Path,
    key_file: &Path,
) -> Result<ClientIdentity, (IdentityKey, String)> {
    let chain = read_certificates(cert_file).map_err(|e| (IdentityKey::Cert, e))?;
    let bytes = std::fs::read(key_file).map_err(|e| {
        (
            IdentityKey::Key,
            format!("cannot read {}: {e}", key_file.display()),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        // The PEM error never quotes the key's body: only markers and positions.
        let why = match e {
            pem::Error::NoItemsFound => "no PKCS#8, PKCS#1 or SEC1 private key".to_owned(),
            other => format!("invalid PEM ({other})"),
        };
        (IdentityKey::Key, format!("{why} in {}", key_file.display()))
    })?;
    let mut hasher = Sha256::new();
    for cert in &chain {
        hasher.update((cert.len() as u64).to_be_bytes());
        hasher.update(cert.as_ref());
    }
    hasher.update(key.secret_der());
    let fingerprint = hasher.finalize().into();

    let provider = crate::upstream::http::crypto_provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        (
            IdentityKey::Key,
            format!("unsupported private key in {}: {e}", key_file.display()),
        )
    })?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        // A key type whose public half rustls cannot derive: the upstream will be the judge.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err((
                IdentityKey::Key,
                format!(
                    "the key in {} does not belong to the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
            ));
        }
        Err(e) => {
            return Err((
                IdentityKey::Cert,
                format!("invalid certificate in {}: {e}", cert_file.display()),
            ));
        }
    }
    Ok(ClientIdentity {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        key: Arc::new(key),
        fingerprint,
    })
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}
