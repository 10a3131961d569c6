//! Cost of one `tools/call` decision.
//!
//! - `seed/allow`: the seed policy, `run-rerun` (listed, one limit). This path must not allocate:
//!   the limit set borrows from the policy.
//! - `seed/default_deny`: the seed policy, an unlisted tool (allocates the denial message).
//! - `guarded/allow`: a tool with two `deny_if` (one a regex) and two `require`, plus `all_tools`
//!   predicates, all evaluated because none fails.
//! - `guarded/deny_regex`: the same policy, denied by the regex.
//! - `hidden`: a hidden tool, answered as unknown.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tollgate_policy::{CallInput, Decision, Policy};

const SEED: &str = include_str!("../../../examples/policies/seed.json");

fn guarded() -> Policy {
    let doc = json!({
        "version": "1", "default": "deny", "hide": ["internal"],
        "all_tools": {
            "require": [{"conditions": [{"path": "args.ticket", "op": "exists", "value": true}]}],
            "limits": [{"counter": "all", "window": "hour", "max": 1000, "scope": "grant"}]
        },
        "tools": {"shell.exec": {
            "deny_if": [
                {"conditions": [{"path": "args.env", "op": "in", "value": ["prod", "production"]}], "on_deny": "not in prod"},
                {"conditions": [{"path": "args.cmd", "op": "regex", "value": "\\brm\\s+-(rf|fr)\\b"}], "on_deny": "no rm -rf"}
            ],
            "require": [
                {"conditions": [{"path": "args.timeout", "op": "lte", "value": 60}]},
                {"conditions": [{"path": "args.user.name", "op": "contains", "value": "@example.com"}]}
            ],
            "limits": [{"counter": "exec", "window": "minute", "max": 10, "scope": "grant"}]
        }}
    });
    match Policy::from_json(doc.to_string().as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("bench policy rejected: {e}"),
    }
}

fn evaluate(c: &mut Criterion) {
    let seed = match Policy::from_json(SEED.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("seed rejected: {e}"),
    };
    let args = json!({"run_id": "r-123"});
    let allowed = CallInput {
        tool: "run-rerun",
        arguments: Some(&args),
        tool_known: true,
    };
    assert!(seed.evaluate_call(&allowed).is_allow());
    c.bench_function("seed/allow", |b| {
        b.iter(|| match seed.evaluate_call(black_box(&allowed)) {
            Decision::Allow { limits } => limits.len(),
            _ => 0,
        })
    });
    let other = CallInput {
        tool: "run-delete",
        arguments: Some(&args),
        tool_known: true,
    };
    c.bench_function("seed/default_deny", |b| {
        b.iter(|| seed.evaluate_call(black_box(&other)))
    });

    let guarded = guarded();
    let ok_args = json!({
        "cmd": "ls -la /srv/app && du -sh /var/log", "env": "staging", "timeout": 30,
        "user": {"name": "ann@example.com"}, "ticket": "OPS-1"
    });
    let ok = CallInput {
        tool: "shell.exec",
        arguments: Some(&ok_args),
        tool_known: true,
    };
    assert!(guarded.evaluate_call(&ok).is_allow());
    c.bench_function("guarded/allow", |b| {
        b.iter(|| match guarded.evaluate_call(black_box(&ok)) {
            Decision::Allow { limits } => limits.len(),
            _ => 0,
        })
    });
    let bad_args = json!({
        "cmd": "cd /tmp && rm -rf build", "env": "staging", "timeout": 30,
        "user": {"name": "ann@example.com"}, "ticket": "OPS-1"
    });
    let bad = CallInput {
        tool: "shell.exec",
        arguments: Some(&bad_args),
        tool_known: true,
    };
    assert!(!guarded.evaluate_call(&bad).is_allow());
    c.bench_function("guarded/deny_regex", |b| {
        b.iter(|| guarded.evaluate_call(black_box(&bad)))
    });
    let hidden = CallInput {
        tool: "internal",
        arguments: None,
        tool_known: true,
    };
    c.bench_function("hidden", |b| {
        b.iter(|| guarded.evaluate_call(black_box(&hidden)))
    });
}

fn load(c: &mut Criterion) {
    c.bench_function("from_json/seed", |b| {
        b.iter(|| Policy::from_json(black_box(SEED.as_bytes())).is_ok())
    });
}

criterion_group!(benches, evaluate, load);
criterion_main!(benches);
