//! What tools an upstream currently offers, and the digest of each definition.
//!
//! A `tools/call` is only judged against a tool the upstream has listed (POLICY.md step 3): a
//! tool missing from the catalog answers exactly like a hidden one. The catalog is filled from
//! every complete `tools/list` answer that passes through the gateway, refreshed by the gateway
//! itself when a call names a tool it has not seen (at most once per [`REFRESH_INTERVAL`] per
//! upstream while the catalog holds a list, so unknown-tool floods cannot amplify into upstream
//! load), and dropped when the upstream sends `notifications/tools/list_changed`.
//!
//! Refreshes go one at a time through [`Catalog::refresh_gate`]. A call that misses while one is
//! under way waits for it and reads its result instead of concluding "unknown tool" from an
//! empty catalog: the first calls after a start or a `list_changed` name real tools.
//!
//! Each entry keeps the SHA-256 of the tool's RFC 8785 canonical definition without `_meta`
//! (the audit record carries it today; tool pinning, policy v2, will compare it) and the
//! `x-mcp-header` annotations of its `inputSchema`, against which a modern call's
//! `Mcp-Param-*` headers are cross-checked ([`tollgate_mcp::headers::check_param_headers`]).
//! Only what those two uses need is kept, not the definitions themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tollgate_mcp::tool::{ParamHeader, param_headers};

/// The shortest time between two gateway-initiated refreshes of one upstream's catalog.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the catalog knows of one listed tool.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// `sha256:<hex>` of the definition ([`tool_digest`]).
    pub digest: String,
    /// The `x-mcp-header` annotations of its `inputSchema`, often none.
    pub param_headers: Arc<[ParamHeader]>,
}

impl CatalogEntry {
    /// The entry for one tool definition.
    pub fn of(tool: &Value) -> Self {
        CatalogEntry {
            digest: tool_digest(tool),
            param_headers: tool
                .get("inputSchema")
                .map(param_headers)
                .unwrap_or_default()
                .into(),
        }
    }
}

#[derive(Default)]
struct State {
    tools: HashMap<String, CatalogEntry>,
    filled: bool,
    last_refresh: Option<Instant>,
    /// Refreshes begun so far.
    attempts: u64,
}

/// The tool catalog of one upstream.
#[derive(Default)]
pub struct Catalog {
    state: Mutex<State>,
    gate: tokio::sync::Mutex<()>,
}

impl Catalog {
    /// What the catalog knows of `tool`, if the upstream lists it.
    pub fn lookup(&self, tool: &str) -> Option<CatalogEntry> {
        self.state.lock().tools.get(tool).cloned()
    }

    /// The digest of `tool`'s definition, if the upstream lists it.
    pub fn digest(&self, tool: &str) -> Option<String> {
        self.lookup(tool).map(|entry| entry.digest)
    }

    /// Replaces the catalog with a complete tool list (every page of one `tools/list`).
    pub fn replace<'a>(&self, tools: impl IntoIterator<Item = &'a Value>) {
        let entries: HashMap<String, CatalogEntry> = tools
            .into_iter()
            .filter_map(|tool| {
                let name = tool.get("name")?.as_str()?;
                Some((name.to_owned(), CatalogEntry::of(tool)))
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

    /// Whether the gateway may fetch the list now; if so, records the attempt. An empty
    /// (never filled, or invalidated) catalog may always be filled; a filled one at most once
    /// per [`REFRESH_INTERVAL`].
    pub fn begin_refresh(&self, tool: &str) -> bool {
        let mut state = self.state.lock();
        if state.tools.contains_key(tool) {
            return false;
        }
        let now = Instant::now();
        match state.last_refresh {
            Some(last) if state.filled && now.duration_since(last) < REFRESH_INTERVAL => false,
            _ => {
                state.last_refresh = Some(now);
                state.attempts += 1;
                true
            }
        }
    }

    /// How many refreshes have begun: a caller that saw this change while it waited at the
    /// [`Catalog::refresh_gate`] reads the catalog that refresh left instead of starting another.
    pub fn attempts(&self) -> u64 {
        self.state.lock().attempts
    }

    /// Held for the whole of a gateway-initiated refresh, so that refreshes of one upstream run
    /// one at a time and callers that miss can wait for the one under way.
    pub async fn refresh_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
    fn a_listed_tool_keeps_the_header_annotations_of_its_input_schema() {
        let catalog = Catalog::default();
        catalog.replace(&[
            json!({"name": "plain", "inputSchema": {"type": "object"}}),
            json!({"name": "routed", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"}}}}),
        ]);
        assert!(catalog.lookup("plain").unwrap().param_headers.is_empty());
        let routed = catalog.lookup("routed").unwrap();
        assert_eq!(routed.param_headers.len(), 1);
        assert_eq!(routed.param_headers[0].name, "Region");
        assert_eq!(routed.param_headers[0].path, ["region"]);
        assert_eq!(Some(routed.digest), catalog.digest("routed"));
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

    #[test]
    fn an_emptied_catalog_may_be_filled_again_at_once() {
        let catalog = Catalog::default();
        assert!(catalog.begin_refresh("x"));
        catalog.replace(&[json!({"name": "a"})]);
        catalog.invalidate();
        assert!(
            catalog.begin_refresh("a"),
            "after list_changed a listed tool must not answer as unknown for an interval"
        );
        assert_eq!(catalog.attempts(), 2);
    }
}
