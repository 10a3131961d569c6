//! What the gateway asks ([`CallInput`]) and what the policy answers ([`Decision`]).

use std::borrow::Cow;

use serde_json::Value;

use crate::LimitSet;

/// One `tools/call` to decide.
#[derive(Debug, Clone, Copy)]
pub struct CallInput<'a> {
    /// Tool name from the request.
    pub tool: &'a str,
    /// The request's `arguments`; `None` (or JSON `null`) is evaluated as an empty object.
    pub arguments: Option<&'a Value>,
    /// Whether the tool exists in the upstream's current, validated tool list.
    pub tool_known: bool,
}

/// The policy's answer to one `tools/call`.
#[derive(Debug, Clone)]
pub enum Decision<'p> {
    /// Permitted, provided every limit has room (reserved atomically by the caller).
    Allow {
        /// Limits to reserve, possibly none.
        limits: LimitSet<'p>,
    },
    /// Refused by the policy.
    Deny(Denial),
    /// The tool is unknown upstream or hidden by the policy; both answer JSON-RPC -32602
    /// "Unknown tool" so that a hidden tool cannot be told apart from a missing one.
    UnknownTool,
}

impl Decision<'_> {
    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// A policy denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why: default deny, no policy, or a rule.
    pub kind: DenyKind,
    /// `(default deny)`, `(no policy)`, or the JSON pointer of the rule (`/tools/x/deny_if/0`).
    pub rule_id: Cow<'static, str>,
    /// Text for the agent, without the `[POLICY DENIED] ` prefix. Never contains argument values:
    /// it is the predicate's `on_deny`, or generic text naming the rule or the tool.
    pub message: String,
}

/// The reason class of a [`Denial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyKind {
    /// The tool is not listed and the policy's `default` is `deny`.
    DefaultDeny,
    /// The grant has no policy.
    NoPolicy,
    /// A `deny_if` predicate held or a `require` predicate did not.
    Rule,
}

impl DenyKind {
    /// The audit record's `decision` value: `default_deny` or `deny`.
    pub fn audit_decision(&self) -> &'static str {
        match self {
            DenyKind::DefaultDeny => "default_deny",
            DenyKind::NoPolicy | DenyKind::Rule => "deny",
        }
    }
}
