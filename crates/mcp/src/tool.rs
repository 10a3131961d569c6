//! Tool-level wire rules: names, and the `x-mcp-header` annotations of an input schema.
//!
//! A tool may ask for some of its arguments to be mirrored into `Mcp-Param-{Name}` headers
//! (2026-07-28 Streamable HTTP, SEP-2243) by putting `"x-mcp-header": "Name"` on the argument's
//! schema. Only properties reachable from the schema root through a chain of `properties` keys
//! count (never through `items`, `oneOf`, `$ref`...); the value is read at that exact path of
//! the call's `arguments`. [`param_headers`] lists those annotations; the header check itself is
//! [`crate::headers::check_param_headers`].

use serde_json::Value;

/// Nesting of `properties` followed at most, so that a hostile schema cannot make the walk deep.
const MAX_SCHEMA_DEPTH: usize = 32;

/// One `x-mcp-header` annotation: the argument at `path` travels in `Mcp-Param-{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The name after `Mcp-Param-`, as the schema declares it (`Region`).
    pub name: String,
    /// The property names leading to the argument (`["region"]`, `["target", "region"]`).
    pub path: Vec<String>,
}

/// The `x-mcp-header` annotations of a tool's `inputSchema`, in schema order.
///
/// An annotation the spec calls invalid (empty, not an HTTP token, or equal to an earlier one
/// but for case) is skipped: a header nobody can validate is forwarded like any unknown
/// `Mcp-Param-*` header, and the body, where policy is enforced, stays authoritative.
pub fn param_headers(input_schema: &Value) -> Vec<ParamHeader> {
    let mut out = Vec::new();
    collect(input_schema, &mut Vec::new(), &mut out);
    out
}

fn collect(schema: &Value, path: &mut Vec<String>, out: &mut Vec<ParamHeader>) {
    if path.len() >= MAX_SCHEMA_DEPTH {
        return;
    }
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, sub) in properties {
        path.push(key.clone());
        if let Some(name) = sub.get("x-mcp-header").and_then(Value::as_str)
            && is_token(name)
            && !out.iter().any(|h| h.name.eq_ignore_ascii_case(name))
        {
            out.push(ParamHeader {
                name: name.to_owned(),
                path: path.clone(),
            });
        }
        collect(sub, path, out);
        path.pop();
    }
}

/// RFC 9110 `token` (`1*tchar`): a valid header field name.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A valid MCP tool name: 1 to 128 characters of `[A-Za-z0-9_.-]` (e.g. `run-rerun`).
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotated_properties_are_found_at_any_properties_depth() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "query": {"type": "string"},
            "target": {"type": "object", "properties": {
                "tenant": {"type": "integer", "x-mcp-header": "Tenant"}}}
        }});
        assert_eq!(
            param_headers(&schema),
            [
                ParamHeader {
                    name: "Region".into(),
                    path: vec!["region".into()]
                },
                ParamHeader {
                    name: "Tenant".into(),
                    path: vec!["target".into(), "tenant".into()]
                },
            ]
        );
    }

    #[test]
    fn annotations_outside_properties_chains_or_invalid_ones_are_ignored() {
        let schema = json!({"type": "object", "properties": {
            "list": {"type": "array", "items": {"type": "object", "properties": {
                "x": {"type": "string", "x-mcp-header": "X"}}}},
            "choice": {"oneOf": [{"type": "string", "x-mcp-header": "Choice"}]},
            "empty": {"type": "string", "x-mcp-header": ""},
            "spaced": {"type": "string", "x-mcp-header": "Has Space"},
            "first": {"type": "string", "x-mcp-header": "Dup"},
            "second": {"type": "string", "x-mcp-header": "dup"}
        }});
        let found = param_headers(&schema);
        assert_eq!(
            found,
            [ParamHeader {
                name: "Dup".into(),
                path: vec!["first".into()]
            }]
        );
        assert!(param_headers(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn names_of_allowed_characters_and_length_are_valid() {
        for n in [
            "a",
            "run-rerun",
            "git.status_v2",
            "A-Z.0_9",
            &"x".repeat(128),
        ] {
            assert!(is_valid_tool_name(n), "{n}");
        }
    }

    #[test]
    fn empty_long_and_other_characters_are_invalid() {
        for n in [
            "",
            &"x".repeat(129),
            "has space",
            "slash/name",
            "é",
            "tab\t",
            "a:b",
            "a\0",
        ] {
            assert!(!is_valid_tool_name(n), "{n:?}");
        }
    }
}
