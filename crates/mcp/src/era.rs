//! Protocol revisions and the two eras.
//!
//! "Legacy" revisions open a session with `initialize` (up to 2025-11-25); the "modern" revision
//! (2026-07-28) is stateless and carries the version and client capabilities in every request's
//! `params._meta`. A dual-era peer decides per request: a request whose `_meta` carries
//! [`META_PROTOCOL_VERSION`] is modern, anything else is legacy.

use crate::jsonrpc::Message;

/// Handshake-based revisions, oldest first.
pub const LEGACY_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Per-request-metadata revisions, oldest first.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
/// Newest legacy revision.
pub const LATEST_LEGACY: &str = "2025-11-25";
/// Newest modern revision.
pub const LATEST_MODERN: &str = "2026-07-28";
/// What a legacy server assumes when a request has no `MCP-Protocol-Version` header.
pub const LEGACY_DEFAULT_VERSION: &str = "2025-03-26";
/// `_meta` key carrying a modern request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying a modern request's client capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key carrying a modern request's self-reported client info.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

/// Which family of revisions a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    /// `initialize` handshake, sessions (2025-11-25 and earlier).
    Legacy,
    /// Stateless, `_meta` on every request (2026-07-28).
    Modern,
}

/// Modern when the message is a request whose `params._meta` has the protocol-version key
/// (whatever its value: an unsupported value is answered with -32022, not treated as legacy).
pub fn detect_era(msg: &Message) -> Era {
    match msg {
        Message::Request { .. }
            if msg
                .meta()
                .is_some_and(|m| m.contains_key(META_PROTOCOL_VERSION)) =>
        {
            Era::Modern
        }
        _ => Era::Legacy,
    }
}

/// The `_meta` protocol version of a request, when it is a string.
pub fn meta_protocol_version(msg: &Message) -> Option<&str> {
    msg.meta()?.get(META_PROTOCOL_VERSION)?.as_str()
}

/// True for a revision in [`MODERN_VERSIONS`].
pub fn is_modern_version(v: &str) -> bool {
    MODERN_VERSIONS.contains(&v)
}

/// True for a revision in [`LEGACY_VERSIONS`].
pub fn is_legacy_version(v: &str) -> bool {
    LEGACY_VERSIONS.contains(&v)
}

/// True for any revision this crate knows.
pub fn is_known_version(v: &str) -> bool {
    is_modern_version(v) || is_legacy_version(v)
}

/// Every supported revision of both eras, newest first. (A modern -32022 lists only
/// [`MODERN_VERSIONS`]; a legacy one only [`LEGACY_VERSIONS`].)
pub fn supported_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .rev()
        .chain(LEGACY_VERSIONS.iter().rev())
        .copied()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: serde_json::Value) -> Message {
        Message::from_value(v).unwrap()
    }

    #[test]
    fn a_request_with_protocol_version_in_meta_is_modern() {
        let msg = m(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientCapabilities":{}}}}),
        );
        assert_eq!(detect_era(&msg), Era::Modern);
        assert_eq!(meta_protocol_version(&msg), Some("2026-07-28"));
    }

    #[test]
    fn an_unknown_version_in_meta_is_still_modern() {
        let msg = m(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{
            "io.modelcontextprotocol/protocolVersion":"1900-01-01"}}}),
        );
        assert_eq!(detect_era(&msg), Era::Modern);
    }

    #[test]
    fn initialize_plain_requests_and_other_meta_are_legacy() {
        for v in [
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1}}}),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":"io.modelcontextprotocol/protocolVersion"}}),
            json!({"jsonrpc":"2.0","method":"notifications/x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
            json!({"jsonrpc":"2.0","id":1,"result":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
        ] {
            assert_eq!(detect_era(&m(v.clone())), Era::Legacy, "{v}");
        }
    }

    #[test]
    fn version_predicates_follow_the_lists() {
        assert!(is_modern_version(LATEST_MODERN));
        assert!(!is_modern_version(LATEST_LEGACY));
        assert!(is_legacy_version("2025-06-18"));
        assert!(is_legacy_version(LEGACY_DEFAULT_VERSION));
        assert!(!is_known_version("2025-01-01"));
        assert_eq!(
            supported_versions(),
            [
                "2026-07-28",
                "2025-11-25",
                "2025-06-18",
                "2025-03-26",
                "2024-11-05"
            ]
        );
    }
}
