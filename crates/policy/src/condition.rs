//! Compiled predicates and conditions, and their evaluation against call arguments.
//!
//! A condition reads one value out of the arguments (`args.a.b`: object keys only in version 1)
//! and tests it. When the path does not resolve (a key is absent, or an intermediate value is not
//! an object) every test is false, except `exists: false`, which is exactly "absent or null".
//! JSON `null` that is present is a value like any other for the other operators.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::{Number, Value};

use crate::json::{cmp_numbers, json_eq};

/// `{"conditions": [...], "on_deny": "..."}` compiled: conditions are ANDed, so an empty list holds.
#[derive(Debug, Clone)]
pub(crate) struct Predicate {
    pub(crate) conditions: Vec<Condition>,
    /// JSON pointer of the predicate, e.g. `/tools/x/deny_if/0`.
    pub(crate) rule_id: String,
    /// `on_deny`, or a generic text naming the rule.
    pub(crate) message: String,
}

impl Predicate {
    pub(crate) fn holds(&self, args: &Value) -> bool {
        self.conditions.iter().all(|c| c.holds(args))
    }
}

/// One leaf test on one argument path.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    /// Object keys below `args`; empty for `args` itself.
    pub(crate) path: Vec<String>,
    pub(crate) test: Test,
}

/// An operator with its already validated operand.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Cmp(CmpOp, Number),
    Regex(Regex),
    Contains(Value),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Condition {
    pub(crate) fn holds(&self, args: &Value) -> bool {
        let actual = resolve(args, &self.path);
        match (&self.test, actual) {
            (Test::Exists(want), actual) => *want == actual.is_some_and(|v| !v.is_null()),
            (_, None) => false,
            (Test::Eq(v), Some(a)) => json_eq(a, v),
            (Test::Neq(v), Some(a)) => !json_eq(a, v),
            (Test::In(set), Some(a)) => set.iter().any(|v| json_eq(a, v)),
            (Test::NotIn(set), Some(a)) => !set.iter().any(|v| json_eq(a, v)),
            (Test::Cmp(op, v), Some(Value::Number(a))) => {
                let ord = cmp_numbers(a, v);
                match op {
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Lte => ord != Ordering::Greater,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Gte => ord != Ordering::Less,
                }
            }
            (Test::Cmp(..), Some(_)) => false,
            (Test::Regex(re), Some(Value::String(s))) => re.is_match(s),
            (Test::Regex(_), Some(_)) => false,
            (Test::Contains(Value::String(needle)), Some(Value::String(s))) => {
                s.contains(needle.as_str())
            }
            (Test::Contains(v), Some(Value::Array(items))) => {
                items.iter().any(|item| json_eq(item, v))
            }
            (Test::Contains(_), Some(_)) => false,
        }
    }
}

fn resolve<'a>(args: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(args, |v, key| match v {
        Value::Object(m) => m.get(key),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
