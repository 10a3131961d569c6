//! The admin token check.

use sha2::{Digest as _, Sha256};
use tollgate_proto::ADMIN_TOKEN_METADATA_KEY;
use tonic::Status;

use crate::error::ControlError;

/// The admin token of a control node. Only its SHA-256 is kept; a presented token is hashed and
/// compared in constant time, so neither the length nor the content of the token leaks through
/// timing.
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Wrap the configured token; an empty one is refused.
    pub fn new(token: &str) -> Result<Self, ControlError> {
        if token.is_empty() {
            return Err(ControlError::EmptyAdminToken);
        }
        Ok(Self {
            hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the admin token.
    pub fn matches(&self, presented: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = hash
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }

    /// Check the `authorization: Bearer <token>` metadata of a request.
    pub(crate) fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get(ADMIN_TOKEN_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing admin token"))?;
        if self.matches(presented.trim()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong admin token"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_matches() {
        let token = AdminToken::new("s3cret").unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
    }

    #[test]
    fn an_empty_admin_token_is_refused() {
        assert!(matches!(
            AdminToken::new(""),
            Err(ControlError::EmptyAdminToken)
        ));
    }
}
