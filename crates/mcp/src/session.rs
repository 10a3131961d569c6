//! Sealed session ids: the legacy `Mcp-Session-Id` carries its own state, encrypted, so that any
//! gateway node can serve any session and nothing about sessions is shared between nodes.
//!
//! ```text
//!  SessionClaims ──serde_json──> plaintext ──XChaCha20-Poly1305(key, random 24-byte nonce,
//!                                                  aad = "v1.<key id>")──> ciphertext+tag
//!  id = "v1." <key id> "." base64url_nopad(nonce || ciphertext+tag)
//! ```
//!
//! - Visible ASCII only (`[A-Za-z0-9_.-]`), as the transport requires of session ids.
//! - The key id travels in clear so the right key is found without trying them all; it is bound
//!   to the ciphertext as associated data, so moving a ciphertext under another key id fails.
//! - Rotation: the first key seals, every listed key opens. Add the new key in front, wait for
//!   the longest session lifetime, then drop the old one.
//! - The nonce is random (192 bits: no coordination between nodes, no realistic collision).
//! - Every failure maps to HTTP 404 in the gateway, after which the client re-initializes; the
//!   variants only exist for logs and metrics.
//! - A typical id (uuid grant, uuid upstream session) is about 260 bytes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use std::fmt;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Longest id [`SessionSealer::open`] looks at; anything longer is refused unread.
pub const MAX_SESSION_ID_LEN: usize = 4096;

/// What a sealed session id carries. Short serde names keep the id small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Upstream server name.
    #[serde(rename = "s")]
    pub server: String,
    /// Grant id the session belongs to.
    #[serde(rename = "g")]
    pub grant: String,
    /// The upstream's own `Mcp-Session-Id`, if it issued one.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub upstream_session: Option<String>,
    /// Negotiated protocol revision.
    #[serde(rename = "v")]
    pub protocol_version: String,
    /// Issue time, unix seconds.
    #[serde(rename = "i")]
    pub issued_at: u64,
    /// Expiry, unix seconds: the id stops opening at this instant.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// Node owning a node-local (stdio) session.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node-local session number.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub local_id: Option<u64>,
}

/// Why a session id was refused (all HTTP 404), or why a sealer could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not of the form `v1.<key id>.<payload>`.
    #[error("malformed session id")]
    Malformed,
    /// The key id is not (or no longer) configured.
    #[error("session id sealed with unknown key {0:?}")]
    UnknownKey(String),
    /// The payload is not base64url or too short to hold a nonce and a tag.
    #[error("session id payload is not valid base64url")]
    BadEncoding,
    /// Authentication failed: altered, or sealed by someone else.
    #[error("session id failed authentication")]
    Tampered,
    /// Authentic but past its expiry.
    #[error("session expired at {expires_at}")]
    Expired {
        /// When it expired, unix seconds.
        expires_at: u64,
    },
    /// Configuration: no keys given.
    #[error("no session keys configured")]
    NoKeys,
    /// Configuration: a key id outside `[A-Za-z0-9_-]{1,16}`.
    #[error("invalid session key id {0:?}")]
    InvalidKeyId(String),
    /// Configuration: the same key id twice.
    #[error("duplicate session key id {0:?}")]
    DuplicateKeyId(String),
}

/// Seals and opens session ids with a rotation list of 256-bit keys.
pub struct SessionSealer {
    /// `(key id, cipher)`; index 0 seals.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl fmt::Debug for SessionSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SessionSealer")
            .field("key_ids", &ids)
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=16).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl SessionSealer {
    /// Builds a sealer; the first key seals, all of them open.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Result<SessionSealer, SessionError> {
        if keys.is_empty() {
            return Err(SessionError::NoKeys);
        }
        let mut out: Vec<(String, XChaCha20Poly1305)> = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if !valid_key_id(&id) {
                return Err(SessionError::InvalidKeyId(id));
            }
            if out.iter().any(|(k, _)| *k == id) {
                return Err(SessionError::DuplicateKeyId(id));
            }
            out.push((id, XChaCha20Poly1305::new(&key.into())));
        }
        Ok(SessionSealer { keys: out })
    }

    /// The key id new sessions are sealed with.
    pub fn current_key_id(&self) -> &str {
        self.keys
            .first()
            .map(|(id, _)| id.as_str())
            .unwrap_or_default()
    }

    /// Seals claims into an opaque, visible-ASCII session id.
    pub fn seal(&self, claims: &SessionClaims) -> String {
        let Some((key_id, cipher)) = self.keys.first() else {
            // `new` refuses an empty key list.
            return String::new();
        };
        // Neither call can fail here (plain struct; plaintext far below the AEAD's size limit).
        // Falling back to empty output yields an id that never opens: a 404, never a panic.
        let plaintext = serde_json::to_vec(claims).unwrap_or_default();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(key_id);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&sealed);
        format!("{VERSION}.{key_id}.{}", URL_SAFE_NO_PAD.encode(payload))
    }

    /// Opens a session id and checks its expiry against `now_unix`.
    pub fn open(&self, id: &str, now_unix: u64) -> Result<SessionClaims, SessionError> {
        if id.len() > MAX_SESSION_ID_LEN {
            return Err(SessionError::Malformed);
        }
        let mut parts = id.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(payload)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Malformed);
        };
        if !valid_key_id(key_id) {
            return Err(SessionError::Malformed);
        }
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| SessionError::UnknownKey(key_id.to_owned()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| SessionError::BadEncoding)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(SessionError::BadEncoding);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let aad = associated_data(key_id);
        let plaintext = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SessionError::Tampered)?;
        // Authentic bytes that do not decode were sealed by a different claims format.
        let claims: SessionClaims =
            serde_json::from_slice(&plaintext).map_err(|_| SessionError::Tampered)?;
        if now_unix >= claims.expires_at {
            return Err(SessionError::Expired {
                expires_at: claims.expires_at,
            });
        }
        Ok(claims)
    }
}

fn associated_data(key_id: &str) -> String {
    format!("{VERSION}.{key_id}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
