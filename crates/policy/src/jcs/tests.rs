use super::*;
use proptest::prelude::*;
use serde_json::json;

fn canon(text: &str) -> String {
    canonical_json(&serde_json::from_str(text).unwrap())
}

#[test]
fn numbers_print_as_ecmascript_does() {
    // RFC 8785 appendix B and section 3.2.2.3 samples.
    let cases = [
        ("0", "0"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("1", "1"),
        ("1.0", "1"),
        ("-1", "-1"),
        ("1e21", "1e+21"),
        ("1e20", "100000000000000000000"),
        ("0.000001", "0.000001"),
        ("0.0000001", "1e-7"),
        ("1E30", "1e+30"),
        ("4.50", "4.5"),
        ("2e-3", "0.002"),
        ("0.000001000", "0.000001"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("5e-324", "5e-324"),
        ("9007199254740992", "9007199254740992"),
        ("9007199254740993", "9007199254740992"),
        ("295147905179352830000", "295147905179352830000"),
        ("-1.5e-10", "-1.5e-10"),
        ("333333333.33333329", "333333333.3333333"),
        ("18446744073709551615", "18446744073709552000"),
    ];
    for (input, want) in cases {
        assert_eq!(canon(input), want, "input {input}");
    }
}

#[test]
fn rfc8785_section_3_2_2_sample_is_reproduced() {
    let input = r#"{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let want = concat!(
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#,
        r#""string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
    assert_eq!(canon(input), want);
}

#[test]
fn strings_escape_only_quote_backslash_and_controls() {
    let v = json!("\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}é/€😀\"\\");
    assert_eq!(
        canonical_json(&v),
        "\"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f \u{7f}é/€😀\\\"\\\\\""
    );
}

#[test]
fn object_keys_sort_by_utf16_code_units() {
    // RFC 8785 section 3.2.3 sample: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",
        "1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
    let v: Value = serde_json::from_str(input).unwrap();
    let keys: Vec<String> = match serde_json::from_str::<Value>(&canonical_json(&v)).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => unreachable!(),
    };
    let want = [
        "\r",
        "1",
        "\u{80}",
        "\u{f6}",
        "\u{20ac}",
        "\u{1f600}",
        "\u{fb33}",
    ];
    assert_eq!(keys, want);
    // A UTF-8 byte order would put U+FB33 (EF AC B3) before U+1F600 (F0 9F 98 80).
    assert!("\u{fb33}".as_bytes() < "\u{1f600}".as_bytes());
}

#[test]
fn nested_structures_have_no_whitespace() {
    assert_eq!(
        canon(r#" { "b" : [ 1 , { "d":null, "c":true } ], "a" : {} } "#),
        r#"{"a":{},"b":[1,{"c":true,"d":null}]}"#
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn canonical_json_is_idempotent_and_parses_back(v in arb_json()) {
        let once = canonical_json(&v);
        let back: Value = serde_json::from_str(&once).unwrap();
        let twice = canonical_json(&back);
        prop_assert_eq!(&once, &twice);
        // Parsing back gives an equal value, numbers compared as the doubles JCS works with.
        prop_assert!(eq_as_doubles(&back, &v), "{} vs {}", back, v);
    }

    #[test]
    fn canonical_json_ignores_key_order(pairs in prop::collection::btree_map(any::<String>(), any::<i32>(), 0..8)) {
        let forward: Map<String, Value> = pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let backward: Map<String, Value> = pairs.iter().rev().map(|(k, v)| (k.clone(), json!(v))).collect();
        prop_assert_eq!(canonical_json(&Value::Object(forward)), canonical_json(&Value::Object(backward)));
    }
}

/// Equality where numbers compare as IEEE doubles (what JCS promises to preserve).
fn eq_as_doubles(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq_as_doubles(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| eq_as_doubles(v, w)))
        }
        _ => a == b,
    }
}
