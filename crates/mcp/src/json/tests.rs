use super::*;
use serde_json::json;

fn parse(s: &str) -> Result<Value, JsonError> {
    parse_strict(s.as_bytes(), &JsonLimits::default())
}

#[test]
fn plain_documents_parse_to_the_same_value_as_serde_json() {
    let text = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run-rerun","arguments":{"a":[1,-2,3.5,true,null,"x\u00e9\n"],"b":{}}}}"#;
    let ours = parse(text).unwrap();
    let theirs: Value = serde_json::from_str(text).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn key_order_is_preserved() {
    let v = parse(r#"{"z":1,"a":2,"m":3}"#).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["z", "a", "m"]);
}

#[test]
fn duplicate_top_level_key_is_rejected_with_its_pointer() {
    let err = parse(r#"{"a":1,"a":2}"#).unwrap_err();
    match err {
        JsonError::DuplicateKey { pointer, offset } => {
            assert_eq!(pointer, "/a");
            assert!(offset > 6 && offset <= 11, "offset {offset}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn duplicate_key_deep_inside_arrays_and_objects_names_the_full_path() {
    let text = r#"{"params":{"arguments":{"list":[{"ok":1},{"p/a~th":1,"x":2,"p/a~th":3}]}}}"#;
    let err = parse(text).unwrap_err();
    assert_eq!(
        err,
        JsonError::DuplicateKey {
            pointer: "/params/arguments/list/1/p~1a~0th".into(),
            offset: match &err {
                JsonError::DuplicateKey { offset, .. } => *offset,
                _ => 0,
            },
        }
    );
}

#[test]
fn keys_that_differ_only_by_escaping_are_duplicates() {
    let err = parse(r#"{"name":"safe","n\u0061me":"rm"}"#).unwrap_err();
    assert!(matches!(err, JsonError::DuplicateKey { ref pointer, .. } if pointer == "/name"));
}

#[test]
fn same_key_in_sibling_objects_is_not_a_duplicate() {
    parse(r#"{"a":{"k":1},"b":{"k":2},"c":[{"k":1},{"k":2}]}"#).unwrap();
}

#[test]
fn nesting_at_the_limit_is_accepted_and_one_more_level_is_rejected() {
    let limits = JsonLimits {
        max_bytes: 1 << 20,
        max_depth: 5,
    };
    let ok = format!("{}{}", "[".repeat(5), "]".repeat(5));
    parse_strict(ok.as_bytes(), &limits).unwrap();
    let deep = format!("{}{}", "[".repeat(6), "]".repeat(6));
    let err = parse_strict(deep.as_bytes(), &limits).unwrap_err();
    assert!(
        matches!(err, JsonError::TooDeep { max_depth: 5, .. }),
        "{err:?}"
    );

    let objects = r#"{"a":{"b":{"c":{"d":{"e":{}}}}}}"#;
    let err = parse_strict(objects.as_bytes(), &limits).unwrap_err();
    assert!(matches!(err, JsonError::TooDeep { .. }), "{err:?}");
}

#[test]
fn default_depth_limit_triggers_before_serde_json_recursion_limit() {
    // 100 levels: inside serde_json's 128, beyond our 64, so the error must be ours.
    let text = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let err = parse(&text).unwrap_err();
    assert!(
        matches!(err, JsonError::TooDeep { max_depth: 64, .. }),
        "{err:?}"
    );
}

#[test]
fn a_hundred_thousand_open_brackets_are_an_error_not_a_crash() {
    let text = "[".repeat(100_000);
    assert!(matches!(
        parse(&text).unwrap_err(),
        JsonError::TooDeep { .. }
    ));
    let text = r#"{"a":"#.repeat(100_000);
    assert!(matches!(
        parse(&text).unwrap_err(),
        JsonError::TooDeep { .. }
    ));
    // Even a limit above serde_json's own guard fails cleanly.
    let limits = JsonLimits {
        max_bytes: usize::MAX,
        max_depth: 10_000,
    };
    let text = "[".repeat(100_000);
    assert!(parse_strict(text.as_bytes(), &limits).is_err());
}

#[test]
fn oversize_input_is_rejected_before_parsing() {
    let limits = JsonLimits {
        max_bytes: 16,
        max_depth: 64,
    };
    let err = parse_strict(br#"{"a":"0123456789ab"}"#, &limits).unwrap_err();
    assert_eq!(err, JsonError::TooLarge { len: 20, max: 16 });
    assert!(err.is_too_large());
    parse_strict(br#"{"a":"01234567"}"#, &limits).unwrap();
}

#[test]
fn big_documents_within_limits_parse() {
    let items: Vec<Value> = (0..100_000).map(|i| json!({"i": i, "s": "x"})).collect();
    let text = serde_json::to_vec(&json!({ "items": items })).unwrap();
    assert!(text.len() > 1_000_000);
    let v = parse_strict(&text, &JsonLimits::default()).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 100_000);
}

#[test]
fn lone_surrogate_escapes_are_rejected() {
    for text in [
        r#""\ud800""#,
        r#""\udc00""#,
        r#"{"k":"a\ud83dz"}"#,
        r#"{"\ud800":1}"#,
    ] {
        let err = parse(text).unwrap_err();
        assert!(matches!(err, JsonError::Syntax { .. }), "{text}: {err:?}");
    }
    // A proper pair is fine.
    assert_eq!(parse(r#""\ud83d\ude00""#).unwrap(), json!("😀"));
}

#[test]
fn invalid_utf8_is_rejected_with_its_offset() {
    let err = parse_strict(b"{\"a\":\"\xff\"}", &JsonLimits::default()).unwrap_err();
    assert_eq!(err, JsonError::InvalidUtf8 { offset: 6 });
}

#[test]
fn trailing_garbage_is_rejected_but_trailing_whitespace_is_not() {
    parse("{\"a\":1}  \r\n\t").unwrap();
    for text in [r#"{"a":1}x"#, r#"{"a":1}{"b":2}"#, "1 2", r#"{"a":1},"#] {
        let err = parse(text).unwrap_err();
        assert!(matches!(err, JsonError::Syntax { .. }), "{text}: {err:?}");
    }
}

#[test]
fn syntax_errors_report_an_offset_and_a_message_without_line_column() {
    let err = parse("{\n  \"a\": tru }").unwrap_err();
    match err {
        JsonError::Syntax { offset, message } => {
            assert!((8..=14).contains(&offset), "offset {offset}");
            assert!(!message.contains("line"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn integers_beyond_u64_are_rejected_unless_binary64_holds_them_exactly() {
    let err = parse(r#"{"n":18446744073709551617}"#).unwrap_err();
    assert_eq!(err, JsonError::InexactInteger { offset: 5 });
    assert!(parse("-9223372036854775809").is_err());
    // What JSON.stringify(1e20) writes is exact in binary64: accepted.
    assert_eq!(parse("100000000000000000000").unwrap(), json!(1e20));
    // The integer extremes are exact.
    assert_eq!(parse("18446744073709551615").unwrap(), json!(u64::MAX));
    assert_eq!(parse("-9223372036854775808").unwrap(), json!(i64::MIN));
    // Digits inside strings are not numbers.
    parse(r#"{"s":"18446744073709551617 \" 99999999999999999999999"}"#).unwrap();
    // Floats are rounded the way every peer rounds them.
    assert_eq!(parse("0.1").unwrap(), json!(0.1));
}

#[test]
fn out_of_range_floats_are_rejected() {
    assert!(matches!(
        parse("1e400").unwrap_err(),
        JsonError::Syntax { .. }
    ));
}
