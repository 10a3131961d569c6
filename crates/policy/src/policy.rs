//! [`Policy`]: a compiled, immutable policy and its evaluation.
//!
//! ```text
//! evaluate_call(tool, arguments, tool_known)
//!   │
//!   ├─ no policy ─────────────────────────► tool_known ? Deny (no policy) : UnknownTool
//!   ├─ !tool_known, or hidden ────────────► UnknownTool
//!   ├─ listed under `tools` ──► its rules
//!   ├─ not listed, default deny ──────────► Deny (default deny)
//!   ├─ not listed, default allow ──► no tool rules
//!   ├─ tool deny_if (any holds) ──────────► Deny /tools/<t>/deny_if/<i>
//!   ├─ tool require (first failing) ──────► Deny /tools/<t>/require/<i>
//!   ├─ all_tools deny_if, then require ───► Deny /all_tools/...
//!   └─ Allow { all_tools.limits ++ tool limits }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::compile::{CompiledV1, Rules, compile_v1, type_name};
use crate::json::parse_strict;
use crate::{
    CallInput, Decision, Denial, DenyKind, Limit, LimitSet, PolicyError, PolicyErrors,
    canonical_json,
};

/// The [`Policy::digest`] of [`Policy::deny_all`], which has no document to hash.
pub const NO_POLICY_DIGEST: &str = "(no policy)";

/// Policy language version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyVersion {
    /// `"version": "1"`, PolicyLayer's hosted format.
    V1,
    /// `"version": "2"`, Tollgate's superset. This build knows part of it: version 1 plus the
    /// limit extensions (scopes `session`, `server`, `global`; window `second`;
    /// `on_unavailable`). Other version 2 fields are refused as unknown.
    V2,
}

impl PolicyVersion {
    /// The `version` string of the document.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyVersion::V1 => "1",
            PolicyVersion::V2 => "2",
        }
    }
}

/// A compiled policy: immutable, `Send + Sync`, meant to be shared in an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    digest: String,
    version: PolicyVersion,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// A grant without a policy: every call is denied.
    NoPolicy,
    Rules(Box<Compiled>),
}

#[derive(Debug, Clone)]
struct Compiled {
    default_allow: bool,
    hide_all: bool,
    /// One lookup per call: listed tools and hidden names.
    tools: HashMap<Box<str>, ToolEntry>,
    all_tools: Rules,
    counts: Counts,
}

#[derive(Debug, Clone, Default)]
struct ToolEntry {
    hidden: bool,
    /// `Some` when listed under `tools`.
    rules: Option<Rules>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    tool_rules: usize,
    limits: usize,
    predicates: usize,
    hidden: usize,
}

/// Arguments of a call that has none: `{}`.
static EMPTY_ARGS: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

impl Policy {
    /// Strict parse, validation and compilation. Every problem is reported, each at the JSON
    /// pointer of its field: syntax errors, duplicate keys, unknown fields, wrong types, missing
    /// required fields, bad values, invalid regexes, bad tool names, duplicate counters.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, PolicyErrors> {
        let mut errors = Vec::new();
        let Some(doc) = parse_strict(bytes, &mut errors) else {
            return Err(PolicyErrors(errors));
        };
        let Value::Object(map) = &doc else {
            errors.push(PolicyError::new(
                "",
                format!("a policy must be a json object, got {}", type_name(&doc)),
            ));
            return Err(PolicyErrors(errors));
        };
        let version = match map.get("version") {
            Some(Value::String(s)) if s == "1" => Some(PolicyVersion::V1),
            Some(Value::String(s)) if s == "2" => Some(PolicyVersion::V2),
            Some(Value::String(s)) => {
                // Another version's fields cannot be judged by these rules: stop here.
                errors.push(PolicyError::new(
                    "/version",
                    format!("unknown policy version \"{s}\": this build accepts \"1\" and \"2\""),
                ));
                return Err(PolicyErrors(errors));
            }
            Some(Value::Number(n)) => {
                errors.push(PolicyError::new(
                    "/version",
                    format!(
                        "version must be a string: write \"{n}\", not {n} (only \"1\" is accepted)"
                    ),
                ));
                None
            }
            Some(other) => {
                errors.push(PolicyError::new(
                    "/version",
                    format!("version must be the string \"1\", got {}", type_name(other)),
                ));
                None
            }
            None => {
                errors.push(PolicyError::new(
                    "/version",
                    "missing required field (use \"1\")",
                ));
                None
            }
        };
        // A missing or mistyped version is still checked as version 1, so that every other error
        // shows up in the same run.
        let compiled = compile_v1(map, version.unwrap_or(PolicyVersion::V1), &mut errors);
        match version {
            Some(version) if errors.is_empty() => Ok(Policy {
                digest: digest_of(&doc),
                version,
                body: Body::Rules(Box::new(Compiled::from_v1(compiled))),
            }),
            _ => Err(PolicyErrors(errors)),
        }
    }

    /// The policy of a grant without one: every call to a known tool is denied with rule id
    /// `(no policy)`. Tools stay visible (a `tools/list` is filtered, never blocked), so that an
    /// agent is told why its calls fail instead of seeing an empty server.
    pub fn deny_all() -> Policy {
        Policy {
            digest: NO_POLICY_DIGEST.to_owned(),
            version: PolicyVersion::V1,
            body: Body::NoPolicy,
        }
    }

    /// True for [`Policy::deny_all`].
    pub fn is_deny_all(&self) -> bool {
        matches!(self.body, Body::NoPolicy)
    }

    /// `sha256:<64 lowercase hex>` over the RFC 8785 canonical JSON of the document, so formatting
    /// and key order do not change it. [`NO_POLICY_DIGEST`] for [`Policy::deny_all`].
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The document's language version.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// One line for `tollgate policy validate`, e.g.
    /// `valid policy v1: default deny, 1 tool rule, 1 limit, 0 predicates, 0 hidden (sha256:0123456789ab…)`.
    pub fn summary(&self) -> String {
        let Body::Rules(c) = &self.body else {
            return "no policy: every tool call is denied".to_owned();
        };
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut s = format!(
            "valid policy v{}: default {}, {}, {}, {}, ",
            self.version.as_str(),
            if c.default_allow { "allow" } else { "deny" },
            plural(c.counts.tool_rules, "tool rule", "tool rules"),
            plural(c.counts.limits, "limit", "limits"),
            plural(c.counts.predicates, "predicate", "predicates"),
        );
        if c.hide_all {
            s.push_str("unlisted tools hidden");
            if c.counts.hidden > 0 {
                let _ = write!(s, " + {} more", c.counts.hidden);
            }
        } else {
            let _ = write!(s, "{} hidden", c.counts.hidden);
        }
        let short = self.digest.get(..19).unwrap_or(&self.digest);
        let _ = write!(s, " ({short}…)");
        s
    }

    /// `tools/list` filtering: whether the caller may see this upstream tool. A tool named in
    /// `hide` is invisible even when listed under `tools`; with `"*"` in `hide`, only tools listed
    /// under `tools` (and not named in `hide`) are visible. A tool that `default: deny` would
    /// refuse stays visible: only `hide` filters.
    pub fn is_visible(&self, tool: &str) -> bool {
        match &self.body {
            Body::NoPolicy => true,
            Body::Rules(c) => match c.tools.get(tool) {
                Some(entry) => !entry.hidden,
                None => !c.hide_all,
            },
        }
    }

    /// Decides one `tools/call`. Does not allocate when the call is allowed.
    pub fn evaluate_call(&self, call: &CallInput<'_>) -> Decision<'_> {
        let c = match &self.body {
            Body::NoPolicy if call.tool_known => {
                return Decision::Deny(Denial {
                    kind: DenyKind::NoPolicy,
                    rule_id: Cow::Borrowed("(no policy)"),
                    message: "this grant has no policy, so every tool call is denied".to_owned(),
                });
            }
            Body::NoPolicy => return Decision::UnknownTool,
            Body::Rules(c) => c,
        };
        if !call.tool_known {
            return Decision::UnknownTool;
        }
        let tool_rules = match c.tools.get(call.tool) {
            Some(entry) if entry.hidden => return Decision::UnknownTool,
            Some(ToolEntry {
                rules: Some(rules), ..
            }) => Some(rules),
            Some(ToolEntry { rules: None, .. }) | None if c.hide_all => {
                return Decision::UnknownTool;
            }
            _ if c.default_allow => None,
            _ => {
                return Decision::Deny(Denial {
                    kind: DenyKind::DefaultDeny,
                    rule_id: Cow::Borrowed("(default deny)"),
                    message: format!("tool '{}' is not allowed by this policy", call.tool),
                });
            }
        };
        let args = match call.arguments {
            None | Some(Value::Null) => &*EMPTY_ARGS,
            Some(v) => v,
        };
        let rule_sets = tool_rules.into_iter().chain(std::iter::once(&c.all_tools));
        for rules in rule_sets {
            if let Some(p) = rules.deny_if.iter().find(|p| p.holds(args)) {
                return Decision::Deny(rule_denial(&p.rule_id, &p.message));
            }
            if let Some(p) = rules.require.iter().find(|p| !p.holds(args)) {
                return Decision::Deny(rule_denial(&p.rule_id, &p.message));
            }
        }
        let own: &[Limit] = tool_rules.map(|r| r.limits.as_slice()).unwrap_or_default();
        Decision::Allow {
            limits: LimitSet::new(&c.all_tools.limits, own),
        }
    }

    /// Every limit the policy declares: `all_tools` ones first, then the tools' (in no particular order).
    pub fn limits(&self) -> impl Iterator<Item = &Limit> {
        let c = match &self.body {
            Body::NoPolicy => None,
            Body::Rules(c) => Some(c),
        };
        c.into_iter().flat_map(|c| {
            c.all_tools.limits.iter().chain(
                c.tools
                    .values()
                    .filter_map(|e| e.rules.as_ref())
                    .flat_map(|r| &r.limits),
            )
        })
    }
}

fn rule_denial(rule_id: &str, message: &str) -> Denial {
    Denial {
        kind: DenyKind::Rule,
        rule_id: Cow::Owned(rule_id.to_owned()),
        message: message.to_owned(),
    }
}

fn digest_of(doc: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(doc).as_bytes()))
    )
}

impl Compiled {
    fn from_v1(v1: CompiledV1) -> Self {
        let mut counts = Counts {
            tool_rules: v1.tools.len(),
            limits: v1.all_tools.limits.len(),
            predicates: v1.all_tools.predicate_count(),
            hidden: v1.hidden.len(),
        };
        let mut tools: HashMap<Box<str>, ToolEntry> =
            HashMap::with_capacity(v1.tools.len() + v1.hidden.len());
        for (name, rules) in v1.tools {
            counts.limits += rules.limits.len();
            counts.predicates += rules.predicate_count();
            tools.insert(
                name.into_boxed_str(),
                ToolEntry {
                    hidden: false,
                    rules: Some(rules),
                },
            );
        }
        for name in v1.hidden {
            tools.entry(name.into_boxed_str()).or_default().hidden = true;
        }
        Compiled {
            default_allow: v1.default_allow,
            hide_all: v1.hide_all,
            tools,
            all_tools: v1.all_tools,
            counts,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
