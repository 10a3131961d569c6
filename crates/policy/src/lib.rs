//! Tollgate policy documents: strict parsing, compilation and evaluation.
//!
//! This crate is sans-IO: no async, no files, no clock. The gateway hands it the bytes of a policy
//! document once ([`Policy::from_json`]) and then asks it, per request, whether a tool is visible
//! ([`Policy::is_visible`]) and what to do with a `tools/call` ([`Policy::evaluate_call`]).
//!
//! ```text
//!  bytes ──► json::parse_strict ──► compile ──► Policy (immutable, Send + Sync, share in an Arc)
//!            (duplicate keys)      (every error,          │
//!                                   with its pointer)     ▼
//!                          CallInput ──► evaluate_call ──► Decision
//!                                                          ├─ UnknownTool          (unknown or hidden)
//!                                                          ├─ Deny(Denial)         (default, no policy, rule)
//!                                                          └─ Allow { limits }     (borrowed, no allocation)
//! ```
//!
//! Version `"1"` ([`PolicyVersion::V1`]) is accepted whole, and of version `"2"`
//! ([`PolicyVersion::V2`]) the limit extensions (scopes `session`, `server`, `global`; window
//! `second`; `on_unavailable`); other version 2 fields are refused at their pointer. The compiled
//! form is version-agnostic, so that the rest of version 2 compiles into a superset of it. The
//! semantics decisions are listed in the crate README.
//!
//! ```
//! use tollgate_policy::{CallInput, Decision, Policy};
//!
//! let seed = br#"{"version":"1","default":"deny","tools":{"run-rerun":{"limits":[
//!   {"counter":"run-rerun_rate","window":"minute","max":10,"scope":"grant"}]}}}"#;
//! let policy = Policy::from_json(seed).map_err(|e| e.to_string())?;
//! let call = CallInput { tool: "run-rerun", arguments: None, tool_known: true };
//! match policy.evaluate_call(&call) {
//!     Decision::Allow { limits } => assert_eq!(limits.iter().map(|l| l.max).collect::<Vec<_>>(), [10]),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), String>(())
//! ```
//!
//! [`canonical_json`] (RFC 8785, JCS) is public: the policy digest uses it and tool-definition
//! pinning will too.

mod compile;
mod condition;
mod decision;
mod error;
mod jcs;
mod json;
mod limit;
mod policy;

pub use decision::{CallInput, Decision, Denial, DenyKind};
pub use error::{PolicyError, PolicyErrors};
pub use jcs::canonical_json;
pub use limit::{Limit, LimitSet, OnUnavailable, Scope, Window};
pub use policy::{NO_POLICY_DIGEST, Policy, PolicyVersion};

/// Escapes one JSON pointer reference token (RFC 6901): `~` becomes `~0`, `/` becomes `~1`.
pub fn escape_pointer_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains(['~', '/']) {
        std::borrow::Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        std::borrow::Cow::Borrowed(token)
    }
}

/// Appends `/<escaped token>` to a JSON pointer.
pub(crate) fn push_token(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape_pointer_token(token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_escape_tilde_before_slash() {
        assert_eq!(escape_pointer_token("a/b~c"), "a~1b~0c");
        assert_eq!(escape_pointer_token("~1"), "~01");
        assert_eq!(escape_pointer_token("plain"), "plain");
        assert_eq!(push_token("/tools", "x/y"), "/tools/x~1y");
    }
}
