//! Validation and compilation of a parsed version 1 document, and of the part of version 2 this
//! build knows: everything of version 1, plus the limit fields of issue 4 (`scope` `session`,
//! `server`, `global`; `window` `second`; `on_unavailable`). Other version 2 fields are refused
//! as unknown, each at its own pointer, so a document never half-applies.
//!
//! This is a hand-written walk rather than `#[serde(deny_unknown_fields)]` structs because serde
//! stops at the first error, and an operator fixing a policy should see every problem at once,
//! each with the JSON pointer of the field. The walk never stops early: a bad field is reported and
//! skipped, and the rest of the document is still checked. Only when no error was found is the
//! result used.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use crate::condition::{CmpOp, Condition, Predicate, Test};
use crate::{Limit, OnUnavailable, PolicyError, PolicyVersion, Scope, Window, push_token};

/// Per-tool (or `all_tools`) rules, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    pub(crate) deny_if: Vec<Predicate>,
    pub(crate) require: Vec<Predicate>,
    pub(crate) limits: Vec<Limit>,
}

impl Rules {
    pub(crate) fn predicate_count(&self) -> usize {
        self.deny_if.len() + self.require.len()
    }
}

/// A validated version 1 document.
#[derive(Debug, Clone)]
pub(crate) struct CompiledV1 {
    pub(crate) default_allow: bool,
    /// `"*"` was in `hide`.
    pub(crate) hide_all: bool,
    /// Named entries of `hide`, without `"*"`, deduplicated.
    pub(crate) hidden: Vec<String>,
    pub(crate) all_tools: Rules,
    pub(crate) tools: Vec<(String, Rules)>,
}

const TOP_FIELDS: &[&str] = &["version", "default", "hide", "all_tools", "tools"];
const RULES_FIELDS: &[&str] = &["require", "deny_if", "limits"];
const PREDICATE_FIELDS: &[&str] = &["conditions", "on_deny"];
const CONDITION_FIELDS: &[&str] = &["path", "op", "value"];
const LIMIT_FIELDS: &[&str] = &["counter", "window", "max", "scope"];
const LIMIT_FIELDS_V2: &[&str] = &["counter", "window", "max", "scope", "on_unavailable"];
const OPS: &str = "eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists";

/// Maximum length of an MCP tool name.
pub(crate) const MAX_TOOL_NAME: usize = 128;

/// MCP tool names: 1 to 128 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Compiles a version 1 document. Appends every problem to `errors`; the result is meaningful only
/// if nothing was appended.
pub(crate) fn compile_v1(
    doc: &Map<String, Value>,
    version: PolicyVersion,
    errors: &mut Vec<PolicyError>,
) -> CompiledV1 {
    let mut cx = Cx { errors, version };
    cx.unknown_fields(doc, "", TOP_FIELDS);

    let default_allow = match cx.required(doc, "", "default").map(|v| (v, v.as_str())) {
        Some((_, Some("allow"))) => true,
        Some((_, Some("deny"))) => false,
        Some((_, Some(_))) => {
            cx.err("/default", "must be \"allow\" or \"deny\"");
            false
        }
        Some((v, None)) => {
            cx.err(
                "/default",
                format!(
                    "must be the string \"allow\" or \"deny\", got {}",
                    type_name(v)
                ),
            );
            false
        }
        None => false,
    };

    let (hide_all, hidden) = match doc.get("hide") {
        Some(v) => cx.hide(v),
        None => (false, Vec::new()),
    };

    let all_tools = match doc.get("all_tools") {
        Some(v) => cx.rules(v, "/all_tools", &[]),
        None => Rules::default(),
    };
    let all_tools_counters: Vec<&str> = all_tools
        .limits
        .iter()
        .map(|l| l.counter.as_str())
        .collect();

    let mut tools = Vec::new();
    if let Some(map) = doc.get("tools").and_then(|v| cx.object(v, "/tools")) {
        for (name, rules) in map {
            let ptr = push_token("/tools", name);
            if !is_valid_tool_name(name) {
                cx.err(
                    ptr.as_str(),
                    format!("invalid tool name: must be 1 to {MAX_TOOL_NAME} characters of A-Z a-z 0-9 _ . -"),
                );
            }
            let compiled = cx.rules(rules, &ptr, &all_tools_counters);
            tools.push((name.clone(), compiled));
        }
    }

    CompiledV1 {
        default_allow,
        hide_all,
        hidden,
        all_tools,
        tools,
    }
}

struct Cx<'e> {
    errors: &'e mut Vec<PolicyError>,
    version: PolicyVersion,
}

impl Cx<'_> {
    fn err(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PolicyError::new(pointer, message));
    }

    fn object<'v>(&mut self, v: &'v Value, ptr: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.err(ptr, format!("expected an object, got {}", type_name(other)));
                None
            }
        }
    }

    fn array<'v>(&mut self, v: &'v Value, ptr: &str) -> Option<&'v [Value]> {
        match v {
            Value::Array(a) => Some(a),
            other => {
                self.err(ptr, format!("expected an array, got {}", type_name(other)));
                None
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value, ptr: &str) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.err(ptr, format!("expected a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// An object whose fields must all be in `allowed`.
    fn strict_object<'v>(
        &mut self,
        v: &'v Value,
        ptr: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let m = self.object(v, ptr)?;
        self.unknown_fields(m, ptr, allowed);
        Some(m)
    }

    fn unknown_fields(&mut self, m: &Map<String, Value>, ptr: &str, allowed: &[&str]) {
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                let what = match self.version {
                    PolicyVersion::V1 => "unknown field",
                    PolicyVersion::V2 => {
                        "unknown field (or a version 2 feature this build does not support yet)"
                    }
                };
                self.err(
                    push_token(ptr, key),
                    format!("{what}, expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn required<'v>(
        &mut self,
        m: &'v Map<String, Value>,
        ptr: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let v = m.get(key);
        if v.is_none() {
            self.err(push_token(ptr, key), "missing required field");
        }
        v
    }

    fn hide(&mut self, v: &Value) -> (bool, Vec<String>) {
        let mut hide_all = false;
        let mut names: Vec<String> = Vec::new();
        for (i, item) in self
            .array(v, "/hide")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let ptr = format!("/hide/{i}");
            match self.string(item, &ptr) {
                Some("*") => hide_all = true,
                Some(name) if !is_valid_tool_name(name) => self.err(
                    ptr,
                    format!("invalid tool name: must be \"*\" or 1 to {MAX_TOOL_NAME} characters of A-Z a-z 0-9 _ . -"),
                ),
                Some(name) if !names.iter().any(|n| n == name) => names.push(name.to_owned()),
                Some(_) | None => {}
            }
        }
        (hide_all, names)
    }

    /// `{require, deny_if, limits}` at `ptr`. `shared_counters` are the `all_tools` counters, which
    /// a tool may not declare again.
    fn rules(&mut self, v: &Value, ptr: &str, shared_counters: &[&str]) -> Rules {
        let Some(m) = self.strict_object(v, ptr, RULES_FIELDS) else {
            return Rules::default();
        };
        let mut rules = Rules::default();
        if let Some(v) = m.get("deny_if") {
            rules.deny_if = self.predicates(v, &format!("{ptr}/deny_if"));
        }
        if let Some(v) = m.get("require") {
            rules.require = self.predicates(v, &format!("{ptr}/require"));
        }
        if let Some(v) = m.get("limits") {
            rules.limits = self.limits(v, &format!("{ptr}/limits"), shared_counters);
        }
        rules
    }

    fn predicates(&mut self, v: &Value, ptr: &str) -> Vec<Predicate> {
        let items = self.array(v, ptr).unwrap_or_default();
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.predicate(item, format!("{ptr}/{i}")))
            .collect()
    }

    fn predicate(&mut self, v: &Value, ptr: String) -> Option<Predicate> {
        let m = self.strict_object(v, &ptr, PREDICATE_FIELDS)?;
        let message = match m.get("on_deny") {
            Some(v) => self.string(v, &format!("{ptr}/on_deny")).map(str::to_owned),
            None => Some(format!("denied by rule {ptr}")),
        };
        let conditions = self.required(m, &ptr, "conditions").and_then(|v| {
            let cptr = format!("{ptr}/conditions");
            let items = self.array(v, &cptr)?;
            let compiled: Vec<Option<Condition>> = items
                .iter()
                .enumerate()
                .map(|(i, c)| self.condition(c, &format!("{cptr}/{i}")))
                .collect();
            compiled.into_iter().collect::<Option<Vec<_>>>()
        });
        Some(Predicate {
            conditions: conditions?,
            rule_id: ptr,
            message: message?,
        })
    }

    pub(crate) fn condition(&mut self, v: &Value, ptr: &str) -> Option<Condition> {
        let m = self.strict_object(v, ptr, CONDITION_FIELDS)?;
        let path = self
            .required(m, ptr, "path")
            .and_then(|p| self.path(p, &format!("{ptr}/path")));
        let op = self
            .required(m, ptr, "op")
            .and_then(|op| self.string(op, &format!("{ptr}/op")));
        let value = self.required(m, ptr, "value");
        let (op, value) = (op?, value?);
        let vptr = format!("{ptr}/value");
        let test = match op {
            "eq" => Some(Test::Eq(value.clone())),
            "neq" => Some(Test::Neq(value.clone())),
            "in" | "not_in" => self.array(value, &vptr).map(|set| {
                if op == "in" {
                    Test::In(set.to_vec())
                } else {
                    Test::NotIn(set.to_vec())
                }
            }),
            "lt" | "lte" | "gt" | "gte" => {
                let cmp = match op {
                    "lt" => CmpOp::Lt,
                    "lte" => CmpOp::Lte,
                    "gt" => CmpOp::Gt,
                    _ => CmpOp::Gte,
                };
                match value {
                    Value::Number(n) => Some(Test::Cmp(cmp, n.clone())),
                    other => {
                        self.err(
                            vptr,
                            format!("operator {op} needs a number, got {}", type_name(other)),
                        );
                        None
                    }
                }
            }
            "regex" => match value {
                Value::String(s) => match Regex::new(s) {
                    Ok(re) => Some(Test::Regex(re)),
                    Err(e) => {
                        // The regex crate's message spans several lines; keep one error per line.
                        let text = e.to_string();
                        let detail = text.lines().last().unwrap_or_default().trim();
                        let detail = detail.strip_prefix("error: ").unwrap_or(detail).to_owned();
                        self.err(vptr, format!("invalid regex: {detail}"));
                        None
                    }
                },
                other => {
                    self.err(
                        vptr,
                        format!("operator regex needs a string, got {}", type_name(other)),
                    );
                    None
                }
            },
            "contains" => Some(Test::Contains(value.clone())),
            "exists" => match value {
                Value::Bool(b) => Some(Test::Exists(*b)),
                other => {
                    self.err(
                        vptr,
                        format!(
                            "operator exists needs true or false, got {}",
                            type_name(other)
                        ),
                    );
                    None
                }
            },
            _ => {
                self.err(
                    format!("{ptr}/op"),
                    format!("unknown operator, expected one of: {OPS}"),
                );
                None
            }
        };
        Some(Condition {
            path: path?,
            test: test?,
        })
    }

    /// `args` or `args.<key>.<key>...`; returns the keys below `args`.
    fn path(&mut self, v: &Value, ptr: &str) -> Option<Vec<String>> {
        let s = self.string(v, ptr)?;
        let mut segments = s.split('.');
        if segments.next() != Some("args") {
            self.err(
                ptr,
                "path must be `args` or start with `args.` (e.g. `args.a.b`)",
            );
            return None;
        }
        let keys: Vec<String> = segments.map(str::to_owned).collect();
        if keys.iter().any(String::is_empty) {
            self.err(ptr, "path has an empty segment");
            return None;
        }
        Some(keys)
    }

    fn limits(&mut self, v: &Value, ptr: &str, shared_counters: &[&str]) -> Vec<Limit> {
        let items = self.array(v, ptr).unwrap_or_default();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let lptr = format!("{ptr}/{i}");
            // Duplicates are checked on the raw counter so that they are found even when another
            // field of the same limit is bad.
            if let Some(Value::String(c)) = item.get("counter") {
                if let Some(first) = seen.get(c.as_str()) {
                    self.err(
                        format!("{lptr}/counter"),
                        format!("duplicate counter, first declared at {ptr}/{first}"),
                    );
                } else {
                    seen.insert(c, i);
                }
                if shared_counters.contains(&c.as_str()) {
                    self.err(
                        format!("{lptr}/counter"),
                        "counter is also declared in /all_tools/limits: a call would reserve it twice",
                    );
                }
            }
            if let Some(limit) = self.limit(item, &lptr, ptr) {
                out.push(limit);
            }
        }
        out
    }

    fn limit(&mut self, v: &Value, ptr: &str, list_ptr: &str) -> Option<Limit> {
        let v2 = self.version == PolicyVersion::V2;
        let fields = if v2 { LIMIT_FIELDS_V2 } else { LIMIT_FIELDS };
        let m = self.strict_object(v, ptr, fields)?;
        let counter = self.required(m, ptr, "counter").and_then(|c| {
            let cptr = format!("{ptr}/counter");
            let s = self.string(c, &cptr)?;
            if s.is_empty() {
                self.err(cptr, "counter must not be empty");
                return None;
            }
            Some(s)
        });
        let window = self.required(m, ptr, "window").and_then(|w| {
            let wptr = format!("{ptr}/window");
            let parsed = Window::parse(self.string(w, &wptr)?);
            match parsed {
                Some(Window::Second) if !v2 => {
                    self.err(
                        wptr,
                        "window must be \"minute\", \"hour\" or \"day\" in policy version 1 \
                         (\"second\" needs version \"2\")",
                    );
                    None
                }
                None if v2 => {
                    self.err(
                        wptr,
                        "window must be \"second\", \"minute\", \"hour\" or \"day\"",
                    );
                    None
                }
                None => {
                    self.err(wptr, "window must be \"minute\", \"hour\" or \"day\"");
                    None
                }
                Some(w) => Some(w),
            }
        });
        let max = self.required(m, ptr, "max").and_then(|v| {
            let parsed = parse_max(v);
            if parsed.is_none() {
                self.err(
                    format!("{ptr}/max"),
                    format!("max must be an integer >= 1, got {}", describe_number(v)),
                );
            }
            parsed
        });
        let scope = self.required(m, ptr, "scope").and_then(|s| {
            let sptr = format!("{ptr}/scope");
            let parsed = Scope::parse(self.string(s, &sptr)?);
            match parsed {
                Some(Scope::Grant) => parsed,
                Some(_) if v2 => parsed,
                _ if v2 => {
                    self.err(
                        sptr,
                        "scope must be \"grant\", \"session\", \"server\" or \"global\"",
                    );
                    None
                }
                _ => {
                    self.err(sptr, "scope must be \"grant\" in policy version 1");
                    None
                }
            }
        });
        let on_unavailable = match m.get("on_unavailable") {
            None => Some(OnUnavailable::FailClosed),
            Some(v) => {
                let optr = format!("{ptr}/on_unavailable");
                self.string(v, &optr).and_then(|s| {
                    let parsed = OnUnavailable::parse(s);
                    if parsed.is_none() {
                        self.err(
                            optr,
                            "on_unavailable must be \"fail_closed\" or \"fail_open\"",
                        );
                    }
                    parsed
                })
            }
        };
        let (counter, window, max, scope, on_unavailable) =
            (counter?, window?, max?, scope?, on_unavailable?);
        Some(Limit {
            counter: counter.to_owned(),
            window,
            max,
            scope,
            on_unavailable,
            rule_id: push_token(list_ptr, counter),
        })
    }
}

/// `max`: an integer >= 1. A double with no fraction (`10.0`, `1e3`) counts as an integer, as it
/// does for the JavaScript validators version 1 documents were written against, up to 2^53.
fn parse_max(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(u) = n.as_u64() {
        return (u >= 1).then_some(u);
    }
    let f = n.as_f64()?;
    const MAX_SAFE: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && (1.0..=MAX_SAFE).contains(&f)).then_some(f as u64)
}

fn describe_number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => type_name(other).to_owned(),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Compiles one condition on its own (for tests of the operators).
#[cfg(test)]
pub(crate) fn compile_condition(v: &Value) -> Result<Condition, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let c = Cx {
        errors: &mut errors,
        version: PolicyVersion::V1,
    }
    .condition(v, "");
    match c {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(errors),
    }
}
