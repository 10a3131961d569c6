use super::*;
use serde_json::json;

fn parse(text: &str) -> (Option<Value>, Vec<PolicyError>) {
    let mut errors = Vec::new();
    let v = parse_strict(text.as_bytes(), &mut errors);
    (v, errors)
}

#[test]
fn strict_parse_builds_the_same_value_as_serde_json() {
    let text = r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c/d":{"~":18446744073709551615}}"#;
    let (v, errors) = parse(text);
    assert!(errors.is_empty());
    assert_eq!(v.unwrap(), serde_json::from_str::<Value>(text).unwrap());
}

#[test]
fn duplicate_keys_are_reported_at_their_pointer_every_time() {
    let (v, errors) =
        parse(r#"{"tools":{"a/b":{"limits":[{"max":1,"max":2}]}, "a/b":{}}, "x":1, "x":2}"#);
    assert!(v.is_some());
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/tools/a~1b/limits/0/max", "/tools/a~1b", "/x"]);
    assert!(errors.iter().all(|e| e.message == "duplicate key"));
}

#[test]
fn syntax_errors_and_trailing_garbage_are_rejected() {
    for text in ["{", "{} {}", "[1,]", "", "{\"a\":1e400}"] {
        let (v, errors) = parse(text);
        assert!(v.is_none(), "{text}");
        assert_eq!(errors.len(), 1, "{text}");
        assert!(errors[0].message.starts_with("invalid json"), "{text}");
    }
}

#[test]
fn equality_never_coerces_types() {
    assert!(!json_eq(&json!("500"), &json!(500)));
    assert!(!json_eq(&json!(true), &json!("true")));
    assert!(!json_eq(&json!(null), &json!(false)));
    assert!(!json_eq(&json!(0), &json!(false)));
    assert!(!json_eq(&json!([1]), &json!(1)));
    assert!(!json_eq(&json!({"a":1}), &json!({"a":1,"b":2})));
}

#[test]
fn numbers_are_equal_by_value_across_representations() {
    assert!(json_eq(&json!(1), &json!(1.0)));
    assert!(json_eq(&json!(-3), &json!(-3.0)));
    assert!(json_eq(&json!(u64::MAX), &json!(u64::MAX)));
    assert!(!json_eq(&json!(1), &json!(1.5)));
    assert!(json_eq(
        &json!({"a":[1,{"b":2}]}),
        &json!({"a":[1.0,{"b":2.0}]})
    ));
    // 2^53 + 1 is not the double 2^53: compared exactly, not through f64.
    assert!(!json_eq(
        &json!(9_007_199_254_740_993_u64),
        &json!(9_007_199_254_740_992.0)
    ));
    assert!(json_eq(
        &json!(9_007_199_254_740_992_u64),
        &json!(9_007_199_254_740_992.0)
    ));
}

#[test]
fn number_order_is_exact_between_integers_and_doubles() {
    let n = |v: Value| match v {
        Value::Number(n) => n,
        _ => unreachable!(),
    };
    assert_eq!(cmp_numbers(&n(json!(2)), &n(json!(2.5))), Ordering::Less);
    assert_eq!(cmp_numbers(&n(json!(3)), &n(json!(2.5))), Ordering::Greater);
    assert_eq!(cmp_numbers(&n(json!(-3)), &n(json!(-2.5))), Ordering::Less);
    assert_eq!(
        cmp_numbers(&n(json!(-2)), &n(json!(-2.5))),
        Ordering::Greater
    );
    assert_eq!(
        cmp_numbers(&n(json!(u64::MAX)), &n(json!(-1))),
        Ordering::Greater
    );
    assert_eq!(
        cmp_numbers(&n(json!(u64::MAX)), &n(json!(1e300))),
        Ordering::Less
    );
    assert_eq!(
        cmp_numbers(&n(json!(i64::MIN)), &n(json!(-1e300))),
        Ordering::Greater
    );
    assert_eq!(cmp_numbers(&n(json!(0.1)), &n(json!(0.2))), Ordering::Less);
}
