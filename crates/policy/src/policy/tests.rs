use super::*;
use serde_json::json;

const SEED: &str = include_str!("../../../../examples/policies/seed.json");

fn policy(doc: Value) -> Policy {
    match Policy::from_json(doc.to_string().as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("policy rejected:\n{e}"),
    }
}

fn errors(text: &str) -> PolicyErrors {
    match Policy::from_json(text.as_bytes()) {
        Ok(_) => panic!("policy accepted: {text}"),
        Err(e) => e,
    }
}

fn pointers(e: &PolicyErrors) -> Vec<&str> {
    e.iter().map(|e| e.pointer.as_str()).collect()
}

fn call<'p>(p: &'p Policy, tool: &str, args: Value) -> Decision<'p> {
    p.evaluate_call(&CallInput {
        tool,
        arguments: Some(&args),
        tool_known: true,
    })
}

fn denial(d: Decision<'_>) -> Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn limit_ids(d: &Decision<'_>) -> Vec<String> {
    match d {
        Decision::Allow { limits } => limits.iter().map(|l| l.rule_id.clone()).collect(),
        other => panic!("expected allow, got {other:?}"),
    }
}

// --- the seed

#[test]
fn seed_policy_is_accepted_unchanged() {
    let p = Policy::from_json(SEED.as_bytes()).unwrap();
    assert_eq!(p.version(), PolicyVersion::V1);
    assert!(p.digest().starts_with("sha256:"));
    assert_eq!(p.digest().len(), "sha256:".len() + 64);
    assert!(p.summary().starts_with(
        "valid policy v1: default deny, 1 tool rule, 1 limit, 0 predicates, 0 hidden (sha256:"
    ));
}

#[test]
fn the_example_allow_all_policy_allows_everything_without_limits() {
    let p = Policy::from_json(include_bytes!(
        "../../../../examples/policies/allow-all.json"
    ))
    .unwrap();
    let d = call(&p, "anything", json!({"x": 1}));
    let Decision::Allow { limits } = d else {
        panic!("{d:?}")
    };
    assert!(limits.is_empty());
    assert!(
        p.summary()
            .starts_with("valid policy v1: default allow, 0 tool rules, 0 limits"),
        "{}",
        p.summary()
    );
}

#[test]
fn seed_policy_allows_run_rerun_with_its_rate_limit() {
    let p = Policy::from_json(SEED.as_bytes()).unwrap();
    let d = p.evaluate_call(&CallInput {
        tool: "run-rerun",
        arguments: None,
        tool_known: true,
    });
    let Decision::Allow { limits } = d else {
        panic!("expected allow, got {d:?}")
    };
    let all: Vec<&Limit> = limits.iter().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].counter, "run-rerun_rate");
    assert_eq!(all[0].window, crate::Window::Minute);
    assert_eq!(all[0].max, 10);
    assert_eq!(all[0].scope, crate::Scope::Grant);
    assert_eq!(all[0].rule_id, "/tools/run-rerun/limits/run-rerun_rate");
}

#[test]
fn seed_policy_denies_every_other_tool_by_default() {
    let p = Policy::from_json(SEED.as_bytes()).unwrap();
    let d = denial(call(&p, "run-delete", json!({})));
    assert_eq!(d.kind, DenyKind::DefaultDeny);
    assert_eq!(d.rule_id, "(default deny)");
    assert_eq!(d.message, "tool 'run-delete' is not allowed by this policy");
    assert_eq!(d.kind.audit_decision(), "default_deny");
    assert!(p.is_visible("run-delete"));
    assert!(p.is_visible("run-rerun"));
}

// --- visibility and unknown tools

#[test]
fn unknown_tools_are_unknown_whatever_the_policy_says() {
    let p = Policy::from_json(SEED.as_bytes()).unwrap();
    let d = p.evaluate_call(&CallInput {
        tool: "run-rerun",
        arguments: None,
        tool_known: false,
    });
    assert!(matches!(d, Decision::UnknownTool));
    let open = policy(json!({"version": "1", "default": "allow"}));
    let d = open.evaluate_call(&CallInput {
        tool: "x",
        arguments: None,
        tool_known: false,
    });
    assert!(matches!(d, Decision::UnknownTool));
}

#[test]
fn a_hidden_tool_is_invisible_and_unknown_even_when_listed() {
    let p = policy(
        json!({"version": "1", "default": "allow", "hide": ["secret", "listed"], "tools": {"listed": {}}}),
    );
    for tool in ["secret", "listed"] {
        assert!(!p.is_visible(tool), "{tool}");
        assert!(
            matches!(call(&p, tool, json!({})), Decision::UnknownTool),
            "{tool}"
        );
    }
    assert!(p.is_visible("other"));
    assert!(call(&p, "other", json!({})).is_allow());
    assert!(p.summary().contains("2 hidden"), "{}", p.summary());
}

#[test]
fn hide_star_shows_only_tools_listed_under_tools() {
    let p = policy(
        json!({"version": "1", "default": "allow", "hide": ["*", "b"], "tools": {"a": {}, "b": {}}}),
    );
    assert!(p.is_visible("a"));
    assert!(!p.is_visible("b"));
    assert!(!p.is_visible("c"));
    assert!(call(&p, "a", json!({})).is_allow());
    assert!(matches!(call(&p, "b", json!({})), Decision::UnknownTool));
    assert!(matches!(call(&p, "c", json!({})), Decision::UnknownTool));
    assert!(
        p.summary().contains("unlisted tools hidden + 1 more"),
        "{}",
        p.summary()
    );
}

// --- default

#[test]
fn default_allow_lets_unlisted_tools_through_with_only_all_tools_rules() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "global", "window": "hour", "max": 100, "scope": "grant"}]},
        "tools": {"t": {"limits": [{"counter": "t_rate", "window": "day", "max": 5, "scope": "grant"}]}}
    }));
    assert_eq!(
        limit_ids(&call(&p, "other", json!({}))),
        ["/all_tools/limits/global"]
    );
    assert_eq!(
        limit_ids(&call(&p, "t", json!({}))),
        ["/all_tools/limits/global", "/tools/t/limits/t_rate"]
    );
}

#[test]
fn a_listed_empty_tool_is_allowed_with_no_limits_under_default_deny() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"t": {}}}));
    let d = call(&p, "t", json!({"anything": 1}));
    let Decision::Allow { limits } = d else {
        panic!("{d:?}")
    };
    assert!(limits.is_empty());
    assert_eq!(denial(call(&p, "u", json!({}))).kind, DenyKind::DefaultDeny);
}

// --- rules

fn guarded() -> Policy {
    policy(json!({
        "version": "1", "default": "deny",
        "all_tools": {
            "deny_if": [{"conditions": [{"path": "args.dry_run", "op": "eq", "value": false}], "on_deny": "dry runs only"}],
            "require": [{"conditions": [{"path": "args.ticket", "op": "exists", "value": true}]}]
        },
        "tools": {
            "run.x": {
                "deny_if": [
                    {"conditions": [{"path": "args.env", "op": "eq", "value": "prod"}], "on_deny": "not in prod"},
                    {"conditions": [{"path": "args.cmd", "op": "regex", "value": "rm\\s+-rf"}]}
                ],
                "require": [
                    {"conditions": [{"path": "args.amount", "op": "lte", "value": 500}], "on_deny": "too much"},
                    {"conditions": [{"path": "args.user", "op": "in", "value": ["ann", "bob"]}]}
                ]
            },
            "always-no": {"deny_if": [{"conditions": []}]},
            "always-yes": {"require": [{"conditions": []}]}
        }
    }))
}

#[test]
fn deny_if_wins_before_require_and_names_its_rule() {
    let p = guarded();
    // Fails both a deny_if and a require: deny_if is evaluated first.
    let d = denial(call(
        &p,
        "run.x",
        json!({"env": "prod", "amount": 1000, "ticket": 1}),
    ));
    assert_eq!(
        (d.kind, d.rule_id.as_ref(), d.message.as_str()),
        (DenyKind::Rule, "/tools/run.x/deny_if/0", "not in prod")
    );
    assert_eq!(d.kind.audit_decision(), "deny");
    let d = denial(call(
        &p,
        "run.x",
        json!({"cmd": "sudo rm  -rf /", "amount": 1000}),
    ));
    assert_eq!(d.rule_id, "/tools/run.x/deny_if/1");
    assert_eq!(d.message, "denied by rule /tools/run.x/deny_if/1");
}

#[test]
fn the_first_failing_require_is_reported() {
    let p = guarded();
    let d = denial(call(&p, "run.x", json!({"amount": 1000, "user": "eve"})));
    assert_eq!(
        (d.rule_id.as_ref(), d.message.as_str()),
        ("/tools/run.x/require/0", "too much")
    );
    let d = denial(call(&p, "run.x", json!({"amount": 10, "user": "eve"})));
    assert_eq!(d.rule_id, "/tools/run.x/require/1");
    // A missing amount makes `lte` false, so the require fails.
    let d = denial(call(&p, "run.x", json!({"user": "ann"})));
    assert_eq!(d.rule_id, "/tools/run.x/require/0");
}

#[test]
fn all_tools_predicates_run_after_the_tools_own_deny_if_then_require() {
    let p = guarded();
    let ok = json!({"amount": 10, "user": "ann", "ticket": "T-1"});
    assert!(call(&p, "run.x", ok.clone()).is_allow());
    let mut wet = ok.clone();
    wet["dry_run"] = json!(false);
    let d = denial(call(&p, "run.x", wet));
    assert_eq!(
        (d.rule_id.as_ref(), d.message.as_str()),
        ("/all_tools/deny_if/0", "dry runs only")
    );
    let mut no_ticket = ok;
    no_ticket.as_object_mut().unwrap().remove("ticket");
    assert_eq!(
        denial(call(&p, "run.x", no_ticket)).rule_id,
        "/all_tools/require/0"
    );
}

#[test]
fn empty_conditions_always_hold() {
    let p = guarded();
    assert_eq!(
        denial(call(&p, "always-no", json!({"ticket": 1}))).rule_id,
        "/tools/always-no/deny_if/0"
    );
    assert!(call(&p, "always-yes", json!({"ticket": 1})).is_allow());
}

#[test]
fn missing_or_null_arguments_are_an_empty_object() {
    let p = guarded();
    for arguments in [None, Some(&Value::Null)] {
        let d = p.evaluate_call(&CallInput {
            tool: "run.x",
            arguments,
            tool_known: true,
        });
        assert_eq!(denial(d).rule_id, "/tools/run.x/require/0");
    }
    let args_exists = policy(json!({"version": "1", "default": "deny", "tools": {
        "t": {"require": [{"conditions": [{"path": "args", "op": "eq", "value": {}}]}]}
    }}));
    assert!(
        args_exists
            .evaluate_call(&CallInput {
                tool: "t",
                arguments: None,
                tool_known: true
            })
            .is_allow()
    );
}

#[test]
fn denial_messages_never_echo_argument_values() {
    let p = guarded();
    let secret = "hunter2-secret-value";
    let attempts = [
        ("run.x", json!({"env": "prod", "token": secret})),
        ("run.x", json!({"cmd": format!("rm -rf {secret}")})),
        ("run.x", json!({"amount": secret})),
        ("run.x", json!({"amount": 1, "user": secret})),
        (
            "run.x",
            json!({"amount": 1, "user": "ann", "ticket": 1, "dry_run": false, "x": secret}),
        ),
        ("unlisted", json!({"x": secret})),
    ];
    for (tool, args) in attempts {
        let d = denial(call(&p, tool, args));
        assert!(
            !d.message.contains(secret) && !d.rule_id.contains(secret),
            "{d:?}"
        );
    }
}

#[test]
fn limits_are_all_tools_first_then_the_tools_with_ids_by_counter_name() {
    let p = policy(json!({
        "version": "1", "default": "deny",
        "all_tools": {"limits": [
            {"counter": "g/1", "window": "minute", "max": 1, "scope": "grant"},
            {"counter": "g~2", "window": "day", "max": 2, "scope": "grant"}
        ]},
        "tools": {"t": {"limits": [
            {"counter": "t", "window": "hour", "max": 3, "scope": "grant"},
            {"counter": "shared", "window": "hour", "max": 4, "scope": "grant"}
        ]}, "u": {"limits": [{"counter": "shared", "window": "hour", "max": 4, "scope": "grant"}]}}
    }));
    assert_eq!(
        limit_ids(&call(&p, "t", json!({}))),
        [
            "/all_tools/limits/g~11",
            "/all_tools/limits/g~02",
            "/tools/t/limits/t",
            "/tools/t/limits/shared"
        ]
    );
    let Decision::Allow { limits } = call(&p, "t", json!({})) else {
        panic!()
    };
    let maxes: Vec<u64> = limits.iter().map(|l| l.max).collect();
    assert_eq!(maxes, [1, 2, 3, 4]);
    assert_eq!(
        limit_ids(&call(&p, "u", json!({}))),
        [
            "/all_tools/limits/g~11",
            "/all_tools/limits/g~02",
            "/tools/u/limits/shared"
        ]
    );
    assert_eq!(p.limits().count(), 5);
    assert!(
        p.summary().contains("3 tool rules") || p.summary().contains("2 tool rules"),
        "{}",
        p.summary()
    );
    assert!(p.summary().contains("5 limits"), "{}", p.summary());
}

#[test]
fn a_policy_without_a_document_denies_every_known_call() {
    let p = Policy::deny_all();
    assert!(p.is_deny_all());
    let d = denial(call(&p, "run-rerun", json!({})));
    assert_eq!(
        (d.kind, d.rule_id.as_ref()),
        (DenyKind::NoPolicy, "(no policy)")
    );
    assert_eq!(d.kind.audit_decision(), "deny");
    let d = p.evaluate_call(&CallInput {
        tool: "run-rerun",
        arguments: None,
        tool_known: false,
    });
    assert!(matches!(d, Decision::UnknownTool));
    assert!(p.is_visible("run-rerun"));
    assert_eq!(p.digest(), NO_POLICY_DIGEST);
    assert!(p.limits().next().is_none());
}

#[test]
fn policies_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
}

// --- digest

#[test]
fn digest_ignores_whitespace_and_key_order() {
    let a = Policy::from_json(SEED.as_bytes()).unwrap();
    let reordered = r#"
    {
      "tools": { "run-rerun": { "limits": [ { "scope": "grant", "max": 10.0, "window": "minute", "counter": "run-rerun_rate" } ] } },
      "default": "deny",
      "version": "1"
    }"#;
    let b = Policy::from_json(reordered.as_bytes()).unwrap();
    assert_eq!(a.digest(), b.digest());
    let expected = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(
            &serde_json::from_str(SEED).unwrap()
        )))
    );
    assert_eq!(a.digest(), expected);
}

#[test]
fn digest_changes_with_meaning() {
    let a = Policy::from_json(SEED.as_bytes()).unwrap();
    let b = Policy::from_json(SEED.replace("\"max\":10", "\"max\":11").as_bytes()).unwrap();
    let c = Policy::from_json(SEED.replace("\"deny\"", "\"allow\"").as_bytes()).unwrap();
    assert_ne!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
    assert_ne!(b.digest(), c.digest());
}

// --- strictness

#[test]
fn unknown_fields_are_reported_at_every_depth() {
    let e = errors(
        r#"{"version":"1","default":"deny","defualt":"allow",
            "all_tools":{"limit":[]},
            "tools":{"run-rerun":{"limits":[{"counter":"c","windw":"minute","window":"minute","max":1,"scope":"grant"}],
                                  "deny_if":[{"conditions":[{"path":"args.a","op":"eq","value":1,"note":"x"}],"message":"m"}],
                                  "action":"allow"}}}"#,
    );
    let mut got = pointers(&e);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "/all_tools/limit",
            "/defualt",
            "/tools/run-rerun/action",
            "/tools/run-rerun/deny_if/0/conditions/0/note",
            "/tools/run-rerun/deny_if/0/message",
            "/tools/run-rerun/limits/0/windw",
        ]
    );
    assert!(e.iter().all(|e| e.message.starts_with("unknown field")));
    assert!(
        e.to_string()
            .lines()
            .any(|l| l.starts_with("/tools/run-rerun/limits/0/windw: unknown field"))
    );
}

#[test]
fn every_error_is_collected_in_one_pass() {
    let e = errors(
        r#"{"version":"1","default":"maybe","hide":["ok","bad name!",3],
            "tools":{
              "":{},
              "t":{"limits":[
                {"counter":"","window":"week","max":0,"scope":"session"},
                {"counter":"c","window":"minute","max":1.5,"scope":"grant"},
                {"counter":"c","window":"hour","max":-1,"scope":"grant"},
                {"window":"minute"}
              ],
              "require":[{"conditions":[{"path":"args.a","op":"regex","value":"("}]}, {"on_deny":1}],
              "deny_if":{}}}}"#,
    );
    let got = pointers(&e);
    let want = [
        "/default",
        "/hide/1",
        "/hide/2",
        "/tools/",
        "/tools/t/deny_if",
        "/tools/t/require/0/conditions/0/value",
        "/tools/t/require/1/on_deny",
        "/tools/t/require/1/conditions",
        "/tools/t/limits/0/counter",
        "/tools/t/limits/0/window",
        "/tools/t/limits/0/max",
        "/tools/t/limits/0/scope",
        "/tools/t/limits/1/max",
        "/tools/t/limits/2/counter",
        "/tools/t/limits/2/max",
        "/tools/t/limits/3/counter",
        "/tools/t/limits/3/max",
        "/tools/t/limits/3/scope",
    ];
    for w in want {
        assert!(got.contains(&w), "missing {w} in:\n{e}");
    }
    assert_eq!(got.len(), want.len(), "{e}");
    let dup = e
        .iter()
        .find(|e| e.pointer == "/tools/t/limits/2/counter")
        .unwrap();
    assert_eq!(
        dup.message,
        "duplicate counter, first declared at /tools/t/limits/1"
    );
}

#[test]
fn duplicate_json_keys_are_rejected_with_their_pointer() {
    let text = r#"{"version":"1","default":"deny","tools":{"run-rerun":{"limits":[
        {"counter":"a","window":"minute","max":10,"max":1000,"scope":"grant"}]}},"default":"allow"}"#;
    let e = errors(text);
    assert_eq!(pointers(&e), ["/tools/run-rerun/limits/0/max", "/default"]);
    assert!(e.iter().all(|e| e.message == "duplicate key"));
}

#[test]
fn other_versions_are_rejected_with_a_clear_message() {
    let e = errors(r#"{"version":"3","default":"deny","mode":"audit"}"#);
    assert_eq!(pointers(&e), ["/version"]);
    assert!(
        e.0[0].message.contains("unknown policy version \"3\""),
        "{e}"
    );

    // Version 2 features this build does not have are refused at their own pointer.
    let e = errors(r#"{"version":"2","default":"deny","mode":"audit"}"#);
    assert_eq!(pointers(&e), ["/mode"]);
    assert!(e.0[0].message.contains("does not support yet"), "{e}");

    let e = errors(r#"{"version":1,"default":"deny"}"#);
    assert_eq!(pointers(&e), ["/version"]);
    assert!(e.0[0].message.contains("must be a string"), "{e}");

    let e = errors(r#"{"default":"deny","bogus":1}"#);
    assert_eq!(pointers(&e), ["/version", "/bogus"]);

    let e = errors(r#"{"version":"1.0","default":"deny"}"#);
    assert!(e.0[0].message.contains("unknown policy version"), "{e}");
}

#[test]
fn a_policy_must_be_a_json_object_of_known_shape() {
    assert_eq!(pointers(&errors("[]")), [""]);
    assert_eq!(pointers(&errors("{")), [""]);
    assert_eq!(pointers(&errors(r#"{"version":"1"}"#)), ["/default"]);
    assert_eq!(
        pointers(&errors(r#"{"version":"1","default":"deny","tools":[]}"#)),
        ["/tools"]
    );
    assert_eq!(
        pointers(&errors(r#"{"version":"1","default":"deny","hide":"*"}"#)),
        ["/hide"]
    );
    assert_eq!(
        pointers(&errors(
            r#"{"version":"1","default":"deny","tools":{"t":null}}"#
        )),
        ["/tools/t"]
    );
    assert_eq!(
        pointers(&errors(
            r#"{"version":"1","default":"deny","all_tools":{"deny_if":[{}]}}"#
        )),
        ["/all_tools/deny_if/0/conditions"]
    );
    let long = "a".repeat(129);
    assert_eq!(
        pointers(&errors(&format!(
            r#"{{"version":"1","default":"deny","tools":{{"{long}":{{}}}}}}"#
        ))),
        [format!("/tools/{long}")]
    );
    let ok = "a".repeat(128);
    assert!(
        Policy::from_json(
            format!(r#"{{"version":"1","default":"deny","tools":{{"{ok}":{{}}}}}}"#).as_bytes()
        )
        .is_ok()
    );
}

#[test]
fn max_accepts_integers_from_one_up() {
    let with_max = |max: &str| {
        format!(
            r#"{{"version":"1","default":"deny","tools":{{"t":{{"limits":[{{"counter":"c","window":"day","max":{max},"scope":"grant"}}]}}}}}}"#
        )
    };
    for ok in ["1", "18446744073709551615", "10.0", "1e3"] {
        let p = Policy::from_json(with_max(ok).as_bytes()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(p.limits().all(|l| l.max >= 1));
    }
    for bad in ["0", "-1", "1.5", "\"10\"", "null", "1e300", "true"] {
        assert_eq!(
            pointers(&errors(&with_max(bad))),
            ["/tools/t/limits/0/max"],
            "{bad}"
        );
    }
}

#[test]
fn a_counter_shared_with_all_tools_is_rejected() {
    let e = errors(
        r#"{"version":"1","default":"deny",
            "all_tools":{"limits":[{"counter":"c","window":"minute","max":1,"scope":"grant"}]},
            "tools":{"t":{"limits":[{"counter":"c","window":"hour","max":1,"scope":"grant"}]}}}"#,
    );
    assert_eq!(pointers(&e), ["/tools/t/limits/0/counter"]);
}

#[test]
fn version_2_limits_take_every_scope_the_second_window_and_a_failure_mode() {
    let p = Policy::from_json(
        br#"{"version":"2","default":"allow","all_tools":{"limits":[
            {"counter":"g","window":"second","max":5,"scope":"global","on_unavailable":"fail_open"},
            {"counter":"s","window":"minute","max":7,"scope":"session"},
            {"counter":"v","window":"hour","max":9,"scope":"server","on_unavailable":"fail_closed"}]}}"#,
    )
    .unwrap();
    assert_eq!(p.version(), PolicyVersion::V2);
    let Decision::Allow { limits } = p.evaluate_call(&CallInput {
        tool: "any",
        arguments: None,
        tool_known: true,
    }) else {
        panic!("allowed by default")
    };
    let got: Vec<_> = limits
        .iter()
        .map(|l| (l.counter.as_str(), l.window, l.scope, l.on_unavailable))
        .collect();
    assert_eq!(
        got,
        [
            (
                "g",
                crate::Window::Second,
                crate::Scope::Global,
                crate::OnUnavailable::FailOpen
            ),
            (
                "s",
                crate::Window::Minute,
                crate::Scope::Session,
                crate::OnUnavailable::FailClosed
            ),
            (
                "v",
                crate::Window::Hour,
                crate::Scope::Server,
                crate::OnUnavailable::FailClosed
            ),
        ]
    );
}

#[test]
fn version_1_keeps_its_own_limit_rules_with_clear_pointers() {
    let e = errors(
        r#"{"version":"1","default":"deny","all_tools":{"limits":[
            {"counter":"a","window":"second","max":5,"scope":"global","on_unavailable":"fail_open"}]}}"#,
    );
    assert_eq!(
        pointers(&e),
        [
            "/all_tools/limits/0/on_unavailable",
            "/all_tools/limits/0/window",
            "/all_tools/limits/0/scope"
        ]
    );
    assert!(e.0[1].message.contains("needs version \"2\""), "{e}");
    let e = errors(
        r#"{"version":"2","default":"deny","all_tools":{"limits":[
            {"counter":"a","window":"week","max":5,"scope":"team","on_unavailable":"maybe"}]}}"#,
    );
    assert_eq!(
        pointers(&e),
        [
            "/all_tools/limits/0/window",
            "/all_tools/limits/0/scope",
            "/all_tools/limits/0/on_unavailable"
        ]
    );
}

#[test]
fn the_example_global_limits_policy_compiles_with_every_scope() {
    let p = Policy::from_json(include_bytes!(
        "../../../../examples/policies/global-limits.json"
    ))
    .unwrap();
    assert_eq!(p.version(), PolicyVersion::V2);
    let Decision::Allow { limits } = call(&p, "run-rerun", json!({})) else {
        panic!("run-rerun is listed")
    };
    let scopes: Vec<_> = limits.iter().map(|l| l.scope).collect();
    assert_eq!(
        scopes,
        [
            crate::Scope::Global,
            crate::Scope::Server,
            crate::Scope::Session,
            crate::Scope::Grant
        ]
    );
    assert!(matches!(call(&p, "other", json!({})), Decision::Deny(_)));
}
