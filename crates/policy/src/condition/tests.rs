use super::*;
use crate::compile::compile_condition;
use proptest::prelude::*;
use serde_json::json;

fn cond(path: &str, op: &str, value: Value) -> Condition {
    compile_condition(&json!({"path": path, "op": op, "value": value})).unwrap()
}

fn holds(path: &str, op: &str, value: Value, args: Value) -> bool {
    cond(path, op, value).holds(&args)
}

#[test]
fn eq_is_strict_json_equality() {
    assert!(holds("args.n", "eq", json!(500), json!({"n": 500})));
    assert!(!holds("args.n", "eq", json!(500), json!({"n": "500"})));
    assert!(!holds("args.n", "eq", json!("500"), json!({"n": 500})));
    assert!(holds("args.n", "eq", json!(1), json!({"n": 1.0})));
    assert!(holds("args.n", "eq", json!(1.0), json!({"n": 1})));
    assert!(!holds("args.b", "eq", json!(true), json!({"b": "true"})));
    assert!(holds("args.b", "eq", json!(true), json!({"b": true})));
    assert!(holds(
        "args.o",
        "eq",
        json!({"x": [1, 2]}),
        json!({"o": {"x": [1.0, 2]}})
    ));
    assert!(!holds(
        "args.o",
        "eq",
        json!({"x": [1, 2]}),
        json!({"o": {"x": [2, 1]}})
    ));
    assert!(holds("args.z", "eq", json!(null), json!({"z": null})));
}

#[test]
fn neq_is_the_negation_of_eq_for_present_values() {
    assert!(holds("args.n", "neq", json!(500), json!({"n": "500"})));
    assert!(!holds("args.n", "neq", json!(500), json!({"n": 500.0})));
    assert!(holds("args.b", "neq", json!(true), json!({"b": "true"})));
}

#[test]
fn in_and_not_in_test_membership_by_strict_equality() {
    let set = json!(["prod", 1, true]);
    assert!(holds("args.env", "in", set.clone(), json!({"env": "prod"})));
    assert!(holds("args.env", "in", set.clone(), json!({"env": 1.0})));
    assert!(!holds("args.env", "in", set.clone(), json!({"env": "1"})));
    assert!(!holds(
        "args.env",
        "in",
        set.clone(),
        json!({"env": "true"})
    ));
    assert!(holds(
        "args.env",
        "not_in",
        set.clone(),
        json!({"env": "dev"})
    ));
    assert!(!holds(
        "args.env",
        "not_in",
        set.clone(),
        json!({"env": "prod"})
    ));
    assert!(!holds("args.env", "in", json!([]), json!({"env": "prod"})));
    assert!(holds(
        "args.env",
        "not_in",
        json!([]),
        json!({"env": "prod"})
    ));
}

#[test]
fn numeric_comparisons_need_a_number_on_both_sides() {
    let args = json!({"n": 10, "s": "5", "f": 10.5});
    assert!(cond("args.n", "lt", json!(11)).holds(&args));
    assert!(!cond("args.n", "lt", json!(10)).holds(&args));
    assert!(cond("args.n", "lte", json!(10.0)).holds(&args));
    assert!(!cond("args.n", "lte", json!(9.99)).holds(&args));
    assert!(cond("args.n", "gt", json!(9.5)).holds(&args));
    assert!(!cond("args.n", "gt", json!(10)).holds(&args));
    assert!(cond("args.n", "gte", json!(10)).holds(&args));
    assert!(!cond("args.n", "gte", json!(10.000001)).holds(&args));
    assert!(cond("args.f", "gt", json!(10)).holds(&args));
    assert!(cond("args.n", "gt", json!(-1)).holds(&args));
    // A string that looks like a number is not a number.
    for op in ["lt", "lte", "gt", "gte"] {
        assert!(!cond("args.s", op, json!(5)).holds(&args), "{op}");
    }
}

#[test]
fn regex_is_unanchored_and_only_matches_strings() {
    assert!(holds(
        "args.cmd",
        "regex",
        json!("rm\\s+-rf"),
        json!({"cmd": "sudo rm -rf /"})
    ));
    assert!(!holds(
        "args.cmd",
        "regex",
        json!("^rm"),
        json!({"cmd": "sudo rm -rf /"})
    ));
    assert!(holds(
        "args.cmd",
        "regex",
        json!("^sudo"),
        json!({"cmd": "sudo rm -rf /"})
    ));
    assert!(!holds("args.cmd", "regex", json!("1"), json!({"cmd": 1})));
    assert!(!holds(
        "args.cmd",
        "regex",
        json!("."),
        json!({"cmd": ["a"]})
    ));
}

#[test]
fn invalid_regex_is_reported_at_the_value() {
    let errors = compile_condition(&json!({"path": "args.a", "op": "regex", "value": "(unclosed"}))
        .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].pointer, "/value");
    assert!(
        errors[0].message.starts_with("invalid regex: "),
        "{}",
        errors[0].message
    );
    assert!(!errors[0].message.contains('\n'));
}

#[test]
fn contains_is_substring_on_strings_and_membership_on_arrays() {
    assert!(holds(
        "args.s",
        "contains",
        json!("oo"),
        json!({"s": "food"})
    ));
    assert!(!holds(
        "args.s",
        "contains",
        json!("OO"),
        json!({"s": "food"})
    ));
    assert!(holds(
        "args.tags",
        "contains",
        json!("a"),
        json!({"tags": ["b", "a"]})
    ));
    assert!(!holds(
        "args.tags",
        "contains",
        json!("a"),
        json!({"tags": ["ab"]})
    ));
    assert!(holds(
        "args.tags",
        "contains",
        json!(2),
        json!({"tags": [1, 2.0]})
    ));
    assert!(!holds(
        "args.tags",
        "contains",
        json!("2"),
        json!({"tags": [1, 2]})
    ));
    assert!(!holds("args.n", "contains", json!("1"), json!({"n": 123})));
    assert!(!holds("args.s", "contains", json!(1), json!({"s": "1"})));
    assert!(!holds(
        "args.o",
        "contains",
        json!("k"),
        json!({"o": {"k": 1}})
    ));
}

#[test]
fn exists_means_present_and_not_null() {
    let args = json!({"a": 0, "n": null, "e": ""});
    assert!(cond("args.a", "exists", json!(true)).holds(&args));
    assert!(cond("args.e", "exists", json!(true)).holds(&args));
    assert!(!cond("args.n", "exists", json!(true)).holds(&args));
    assert!(!cond("args.missing", "exists", json!(true)).holds(&args));
    assert!(!cond("args.a", "exists", json!(false)).holds(&args));
    assert!(cond("args.n", "exists", json!(false)).holds(&args));
    assert!(cond("args.missing", "exists", json!(false)).holds(&args));
    assert!(cond("args.a.deeper", "exists", json!(false)).holds(&args));
}

#[test]
fn a_missing_path_makes_every_operator_false_except_exists_false() {
    let cases = [
        ("eq", json!(null)),
        ("neq", json!(1)),
        ("in", json!([null, 1])),
        ("not_in", json!([1])),
        ("lt", json!(1)),
        ("lte", json!(1)),
        ("gt", json!(1)),
        ("gte", json!(1)),
        ("regex", json!("")),
        ("contains", json!("")),
        ("exists", json!(true)),
    ];
    // Absent key, absent intermediate key, and a path through a non-object all count as missing.
    let args = json!({"scalar": 5, "list": [{"x": 1}]});
    for path in [
        "args.missing",
        "args.missing.deeper",
        "args.scalar.x",
        "args.list.x",
        "args.list.0",
    ] {
        for (op, value) in &cases {
            assert!(!cond(path, op, value.clone()).holds(&args), "{path} {op}");
        }
        assert!(cond(path, "exists", json!(false)).holds(&args), "{path}");
    }
}

#[test]
fn paths_walk_nested_objects_and_args_alone_is_the_whole_object() {
    let args = json!({"a": {"b": {"c": "deep"}}, "x.y": 1});
    assert!(holds("args.a.b.c", "eq", json!("deep"), args.clone()));
    assert!(holds("args", "eq", args.clone(), args.clone()));
    assert!(holds("args", "exists", json!(true), json!({})));
    // Keys are split on dots: a key containing a dot cannot be reached in version 1.
    assert!(!holds("args.x.y", "exists", json!(true), args));
}

#[test]
fn operands_are_validated_by_operator() {
    let bad = [
        (
            json!({"path": "args.a", "op": "in", "value": "x"}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "not_in", "value": {}}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "lt", "value": "5"}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "gte", "value": null}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "regex", "value": 1}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "exists", "value": "true"}),
            "/value",
        ),
        (
            json!({"path": "args.a", "op": "matches", "value": 1}),
            "/op",
        ),
        (json!({"path": "args.a", "op": 1, "value": 1}), "/op"),
        (
            json!({"path": "arguments.a", "op": "eq", "value": 1}),
            "/path",
        ),
        (json!({"path": "argsx", "op": "eq", "value": 1}), "/path"),
        (json!({"path": "args..a", "op": "eq", "value": 1}), "/path"),
        (json!({"path": "args.", "op": "eq", "value": 1}), "/path"),
        (json!({"path": ["args"], "op": "eq", "value": 1}), "/path"),
        (json!({"path": "args.a", "op": "eq"}), "/value"),
        (json!({"op": "eq", "value": 1}), "/path"),
        (json!({"path": "args.a", "value": 1}), "/op"),
        (
            json!({"path": "args.a", "op": "eq", "value": 1, "on_deny": "x"}),
            "/on_deny",
        ),
        (json!("args.a == 1"), ""),
    ];
    for (doc, pointer) in bad {
        let errors = compile_condition(&doc).unwrap_err();
        assert_eq!(errors.len(), 1, "{doc}: {errors:?}");
        assert_eq!(errors[0].pointer, pointer, "{doc}");
    }
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|i| json!(i)),
        (-3i64..3).prop_map(|i| json!(i as f64)),
        prop::sample::select(vec!["a", "b", "1", "true"]).prop_map(|s| json!(s)),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["k", "l"]), inner, 0..2)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    })
}

proptest! {
    #[test]
    fn eq_and_neq_are_complementary_when_the_path_exists(actual in arb_value(), expected in arb_value()) {
        let args = json!({"p": actual});
        let eq = cond("args.p", "eq", expected.clone()).holds(&args);
        let neq = cond("args.p", "neq", expected).holds(&args);
        prop_assert_ne!(eq, neq);
    }

    #[test]
    fn in_agrees_with_any_eq_and_not_in_with_its_negation(
        actual in arb_value(),
        set in prop::collection::vec(arb_value(), 0..5),
    ) {
        let args = json!({"p": actual});
        let any_eq = set.iter().any(|v| cond("args.p", "eq", v.clone()).holds(&args));
        prop_assert_eq!(cond("args.p", "in", Value::Array(set.clone())).holds(&args), any_eq);
        prop_assert_eq!(cond("args.p", "not_in", Value::Array(set)).holds(&args), !any_eq);
    }

    #[test]
    fn numeric_operators_agree_with_f64_order_for_small_numbers(a in -1000i64..1000, b in -1000i64..1000, half in any::<bool>()) {
        let av = if half { json!(a as f64 + 0.5) } else { json!(a) };
        let (af, bf) = (av.as_f64().unwrap(), b as f64);
        let args = json!({"n": av});
        prop_assert_eq!(cond("args.n", "lt", json!(b)).holds(&args), af < bf);
        prop_assert_eq!(cond("args.n", "lte", json!(b)).holds(&args), af <= bf);
        prop_assert_eq!(cond("args.n", "gt", json!(b)).holds(&args), af > bf);
        prop_assert_eq!(cond("args.n", "gte", json!(b)).holds(&args), af >= bf);
    }
}
