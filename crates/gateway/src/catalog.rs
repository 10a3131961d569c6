//! What tools an upstream currently offers, and the digest of each definition.
//!
//! A `tools/call` is only judged against a tool the upstream has listed (POLICY.md step 3): a
//! tool missing from the catalog answers exactly like a hidden one. The catalog is filled from
//! every complete `tools/list` answer that passes through the gateway, refreshed by the gateway
//! itself when a call names a tool it has not seen (at most once per [`REFRESH_INTERVAL`] per
//! upstream, so unknown-tool floods cannot amplify into upstream load), and dropped when the
//! upstream sends `notifications/tools/list_changed`.
//!
//! Each entry keeps the SHA-256 of the tool's RFC 8785 canonical definition without `_meta`:
//! the audit record carries it today; tool pinning (policy v2) will compare it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The shortest time between two gateway-initiated refreshes of one upstream's catalog.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    tools: HashMap<String, String>,
    filled: bool,
    last_refresh: Option<Instant>,
}

/// The tool catalog of one upstream.
#[derive(Default)]
pub struct Catalog {
    state: Mutex<State>,
}

impl Catalog {
    /// The digest of `tool`'s definition, if the upstream lists it.
    pub fn digest(&self, tool: &str) -> Option<String> {
        self.state.lock().tools.get(tool).cloned()
    }

    /// Replaces the catalog with a complete tool list (every page of one `tools/list`).
    pub fn replace<'a>(&self, tools: impl IntoIterator<Item = &'a Value>) {
        let entries: HashMap<String, String> = tools
            .into_iter()
            .filter_map(|tool| {
                let name = tool.get("name")?.as_str()?;
                Some((name.to_owned(), tool_digest(tool)))
            })
            .collect();
        let mut state = self.state.lock();
        state.tools = entries;
        state.filled = true;
    }

    /// Forgets everything (the upstream said its list changed).
    pub fn invalidate(&self) {
        let mut state = self.state.lock();
        state.tools.clear();
        state.filled = false;
    }

    /// Whether the gateway may fetch the list now; if so, records the attempt.
    pub fn begin_refresh(&self, tool: &str) -> bool {
        let mut state = self.state.lock();
        if state.tools.contains_key(tool) {
            return false;
        }
        let now = Instant::now();
        match state.last_refresh {
            Some(last) if now.duration_since(last) < REFRESH_INTERVAL => false,
            _ => {
                state.last_refresh = Some(now);
                true
            }
        }
    }
}

/// `sha256:<hex>` of a tool definition's RFC 8785 canonical JSON, without its `_meta`.
pub fn tool_digest(tool: &Value) -> String {
    let canonical = match tool {
        Value::Object(map) if map.contains_key("_meta") => {
            let mut map = map.clone();
            map.shift_remove("_meta");
            tollgate_policy::canonical_json(&Value::Object(map))
        }
        other => tollgate_policy::canonical_json(other),
    };
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_ignores_meta_and_key_order() {
        let a = json!({"name": "x", "inputSchema": {"type": "object"}, "_meta": {"k": 1}});
        let b = json!({"inputSchema": {"type": "object"}, "name": "x"});
        assert_eq!(tool_digest(&a), tool_digest(&b));
        let c = json!({"name": "x", "inputSchema": {"type": "object"}, "description": "new"});
        assert_ne!(tool_digest(&a), tool_digest(&c));
    }

    #[test]
    fn a_listed_tool_is_known_until_the_list_changes() {
        let catalog = Catalog::default();
        catalog.replace(&[json!({"name": "run-rerun", "inputSchema": {}})]);
        assert!(catalog.digest("run-rerun").is_some());
        assert!(catalog.digest("other").is_none());
        catalog.invalidate();
        assert!(catalog.digest("run-rerun").is_none());
    }

    #[test]
    fn refreshes_for_unknown_tools_are_throttled() {
        let catalog = Catalog::default();
        assert!(
            catalog.begin_refresh("x"),
            "an empty catalog may always be filled"
        );
        catalog.replace(&[json!({"name": "a"})]);
        assert!(
            !catalog.begin_refresh("x"),
            "a second refresh within the interval is refused"
        );
        assert!(!catalog.begin_refresh("a"), "a known tool needs no refresh");
    }
}
