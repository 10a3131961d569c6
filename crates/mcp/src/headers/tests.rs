use super::*;
use crate::json::JsonLimits;
use bytes::Bytes;

fn frame(v: Value) -> Frame {
    Frame::parse(Bytes::from(v.to_string()), &JsonLimits::default()).unwrap()
}

fn modern_call(name: &str) -> Frame {
    frame(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name": name, "arguments": {},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
        }}}),
    )
}

fn hdrs(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append((*k).clone(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn good_headers(name: &str) -> HeaderMap {
    let mut h = hdrs(&[
        (&MCP_PROTOCOL_VERSION, "2026-07-28"),
        (&MCP_METHOD, "tools/call"),
    ]);
    h.insert(MCP_NAME, encode_header_value(name));
    h
}

#[test]
fn matching_headers_pass() {
    check_modern_headers(&good_headers("get_weather"), &modern_call("get_weather")).unwrap();
}

#[test]
fn a_non_ascii_tool_name_passes_in_base64_form() {
    let h = good_headers("météo");
    assert!(h[&MCP_NAME].to_str().unwrap().starts_with("=?base64?"));
    check_modern_headers(&h, &modern_call("météo")).unwrap();
}

#[test]
fn each_missing_required_header_is_a_header_mismatch() {
    let f = modern_call("t");
    for drop in [&MCP_PROTOCOL_VERSION, &MCP_METHOD, &MCP_NAME] {
        let mut h = good_headers("t");
        h.remove(drop);
        let err = check_modern_headers(&h, &f).unwrap_err();
        assert!(
            matches!(err, HeaderCheckError::Missing { .. }),
            "{drop}: {err:?}"
        );
        assert_eq!(err.code(), codes::HEADER_MISMATCH);
        assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(err.data(), None);
    }
}

#[test]
fn mismatched_method_name_or_version_is_a_header_mismatch() {
    let f = modern_call("delete_everything");
    let cases: [(&HeaderName, &str); 4] = [
        (&MCP_NAME, "read_only_tool"),
        (&MCP_NAME, "=?base64?cmVhZF9vbmx5X3Rvb2w=?="),
        (&MCP_METHOD, "tools/list"),
        (&MCP_PROTOCOL_VERSION, "2025-11-25"),
    ];
    for (name, value) in cases {
        let mut h = good_headers("delete_everything");
        h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        let err = check_modern_headers(&h, &f).unwrap_err();
        assert!(
            matches!(err, HeaderCheckError::Mismatch { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(err.code(), codes::HEADER_MISMATCH);
        assert!(err.message().starts_with("header mismatch"));
    }
}

#[test]
fn header_values_are_case_sensitive() {
    let mut h = good_headers("t");
    h.insert(MCP_METHOD, HeaderValue::from_static("Tools/Call"));
    assert!(check_modern_headers(&h, &modern_call("t")).is_err());
}

#[test]
fn a_repeated_header_is_refused_rather_than_picking_one() {
    let mut h = good_headers("evil");
    h.append(MCP_NAME, HeaderValue::from_static("good"));
    let err = check_modern_headers(&h, &modern_call("evil")).unwrap_err();
    assert_eq!(err, HeaderCheckError::Repeated { header: "Mcp-Name" });
}

#[test]
fn malformed_base64_in_mcp_name_is_a_header_mismatch() {
    let mut h = good_headers("t");
    h.insert(MCP_NAME, HeaderValue::from_static("=?base64?!!!?="));
    let err = check_modern_headers(&h, &modern_call("t")).unwrap_err();
    assert!(matches!(err, HeaderCheckError::Malformed { .. }));
    assert_eq!(err.code(), codes::HEADER_MISMATCH);
}

#[test]
fn resources_read_compares_mcp_name_with_the_uri() {
    let f = frame(
        json!({"jsonrpc":"2.0","id":2,"method":"resources/read","params":{
        "uri":"file:///projects/a b.txt",
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                 "io.modelcontextprotocol/clientCapabilities":{}}}}),
    );
    let mut h = hdrs(&[
        (&MCP_PROTOCOL_VERSION, "2026-07-28"),
        (&MCP_METHOD, "resources/read"),
        (&MCP_NAME, "file:///projects/a b.txt"),
    ]);
    check_modern_headers(&h, &f).unwrap();
    h.insert(MCP_NAME, HeaderValue::from_static("file:///etc/passwd"));
    assert!(check_modern_headers(&h, &f).is_err());
}

#[test]
fn methods_without_a_name_do_not_need_mcp_name() {
    let f = frame(
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                 "io.modelcontextprotocol/clientCapabilities":{}}}}),
    );
    let h = hdrs(&[
        (&MCP_PROTOCOL_VERSION, "2026-07-28"),
        (&MCP_METHOD, "tools/list"),
    ]);
    check_modern_headers(&h, &f).unwrap();
}

#[test]
fn an_unsupported_version_answers_32022_with_the_supported_list() {
    let f = frame(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{
        "_meta":{"io.modelcontextprotocol/protocolVersion":"1900-01-01",
                 "io.modelcontextprotocol/clientCapabilities":{}}}}),
    );
    let h = hdrs(&[
        (&MCP_PROTOCOL_VERSION, "1900-01-01"),
        (&MCP_METHOD, "tools/list"),
    ]);
    let err = check_modern_headers(&h, &f).unwrap_err();
    assert_eq!(err.code(), codes::UNSUPPORTED_VERSION);
    let data = err.data().unwrap();
    assert_eq!(data["requested"], json!("1900-01-01"));
    assert_eq!(
        data["supported"],
        json!(["2026-07-28"]),
        "only the modern revisions, as server/discover reports them"
    );
}

#[test]
fn a_version_header_that_differs_from_meta_is_a_mismatch_even_when_meta_names_an_unknown_version() {
    let f = frame(
        json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{
        "_meta":{"io.modelcontextprotocol/protocolVersion":"v999.0.0",
                 "io.modelcontextprotocol/clientCapabilities":{}}}}),
    );
    let h = hdrs(&[
        (&MCP_PROTOCOL_VERSION, "2026-07-28"),
        (&MCP_METHOD, "server/discover"),
    ]);
    let err = check_modern_headers(&h, &f).unwrap_err();
    assert_eq!(err.code(), codes::HEADER_MISMATCH, "{err:?}");
    let missing = hdrs(&[(&MCP_METHOD, "server/discover")]);
    let err = check_modern_headers(&missing, &f).unwrap_err();
    assert_eq!(
        err.code(),
        codes::HEADER_MISMATCH,
        "a missing header too: {err:?}"
    );
}

#[test]
fn missing_meta_fields_are_invalid_params() {
    for meta in [
        json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28"}),
        json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
               "io.modelcontextprotocol/clientCapabilities":"all"}),
        json!({"io.modelcontextprotocol/protocolVersion":20260728,
               "io.modelcontextprotocol/clientCapabilities":{}}),
        json!({}),
    ] {
        let f =
            frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":meta}}));
        let h = hdrs(&[
            (&MCP_PROTOCOL_VERSION, "2026-07-28"),
            (&MCP_METHOD, "tools/list"),
        ]);
        let err = check_modern_headers(&h, &f).unwrap_err();
        assert_eq!(err.code(), codes::INVALID_PARAMS, "{meta}: {err:?}");
    }
}

#[test]
fn tools_call_without_a_name_is_invalid_params() {
    let f = frame(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                 "io.modelcontextprotocol/clientCapabilities":{}}}}),
    );
    let err = check_modern_headers(&good_headers("x"), &f).unwrap_err();
    assert_eq!(err.code(), codes::INVALID_PARAMS);
}

#[test]
fn notifications_are_only_checked_on_headers_they_carry() {
    let f =
        frame(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}));
    check_modern_headers(&HeaderMap::new(), &f).unwrap();
    let h = hdrs(&[(&MCP_METHOD, "notifications/other")]);
    assert!(check_modern_headers(&h, &f).is_err());
}

#[test]
fn client_capability_requirements_report_exactly_what_is_missing() {
    let f = modern_call("t");
    check_client_capabilities(&f, &json!({"elicitation": {}})).unwrap();
    check_client_capabilities(&f, &json!({"elicitation": {"form": {}}})).unwrap();
    let err = check_client_capabilities(&f, &json!({"elicitation": {"url": {}}, "sampling": {}}))
        .unwrap_err();
    assert_eq!(err.code(), codes::MISSING_CAPABILITY);
    assert_eq!(
        err.data().unwrap(),
        json!({"requiredCapabilities": {"elicitation": {"url": {}}, "sampling": {}}})
    );
}

#[test]
fn legacy_header_absent_means_2025_03_26() {
    assert_eq!(
        check_legacy_protocol_header(&HeaderMap::new()).unwrap(),
        "2025-03-26"
    );
}

#[test]
fn legacy_header_with_a_known_version_is_returned() {
    for v in ["2025-06-18", "2025-11-25"] {
        let h = hdrs(&[(&MCP_PROTOCOL_VERSION, v)]);
        assert_eq!(check_legacy_protocol_header(&h).unwrap(), v);
    }
}

#[test]
fn legacy_header_with_an_unknown_version_is_refused() {
    for v in ["2099-01-01", "2026-07-28", ""] {
        let h = hdrs(&[(&MCP_PROTOCOL_VERSION, v)]);
        let err = check_legacy_protocol_header(&h).unwrap_err();
        assert_eq!(err.code(), codes::UNSUPPORTED_VERSION, "{v}");
        assert_eq!(err.data().unwrap()["supported"][0], json!("2025-11-25"));
    }
}

#[test]
fn plain_values_decode_to_themselves() {
    for v in ["get_weather", "file:///a b", "us-west1", "=?base64?", ""] {
        assert_eq!(
            decode_header_value(&HeaderValue::from_str(v).unwrap()).unwrap(),
            v
        );
    }
}

#[test]
fn spec_examples_decode_and_encode() {
    let cases = [
        ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
        (" padded ", "=?base64?IHBhZGRlZCA=?="),
        ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
        ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
    ];
    for (plain, encoded) in cases {
        assert_eq!(encode_header_value(plain), encoded);
        let decoded = decode_header_value(&HeaderValue::from_static(encoded)).unwrap();
        assert_eq!(decoded, plain);
    }
    assert_eq!(encode_header_value("us-west1"), "us-west1");
}

#[test]
fn unpadded_or_url_safe_base64_is_refused() {
    let v = HeaderValue::from_static("=?base64?IHBhZGRlZCA?=");
    assert_eq!(
        decode_header_value(&v),
        Err(HeaderValueError::InvalidBase64)
    );
    // "PT9iYXNlNjQ/bGl0ZXJhbD89" in the url-safe alphabet
    let v = HeaderValue::from_static("=?base64?PT9iYXNlNjQ_bGl0ZXJhbD89?=");
    assert_eq!(
        decode_header_value(&v),
        Err(HeaderValueError::InvalidBase64)
    );
}

#[test]
fn sentinel_markers_are_case_sensitive() {
    let v = HeaderValue::from_static("=?BASE64?SGk=?=");
    assert_eq!(decode_header_value(&v).unwrap(), "=?BASE64?SGk=?=");
}

#[test]
fn control_and_non_ascii_bytes_in_plain_values_are_refused() {
    let v = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
    assert_eq!(
        decode_header_value(&v),
        Err(HeaderValueError::InvalidCharacters)
    );
    let v = HeaderValue::from_bytes(b"a\tb").unwrap();
    assert_eq!(
        decode_header_value(&v),
        Err(HeaderValueError::InvalidCharacters)
    );
    let v = HeaderValue::from_static("=?base64?//79?=");
    assert_eq!(decode_header_value(&v), Err(HeaderValueError::InvalidUtf8));
}

#[test]
fn param_headers_are_listed_decoded() {
    let mut h = hdrs(&[(&MCP_METHOD, "tools/call")]);
    h.insert(
        HeaderName::from_static("mcp-param-region"),
        HeaderValue::from_static("us-west1"),
    );
    h.insert(
        HeaderName::from_static("mcp-param-greeting"),
        encode_header_value("Hello, 世界"),
    );
    let mut got = mcp_param_headers(&h).unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            ("greeting".to_owned(), "Hello, 世界".to_owned()),
            ("region".to_owned(), "us-west1".to_owned())
        ]
    );
}

#[test]
fn accept_needs_both_json_and_sse() {
    let yes = [
        "application/json, text/event-stream",
        "text/event-stream;q=0.9,application/json",
        "*/*",
        "application/*, text/*",
        "Application/JSON, Text/Event-Stream",
    ];
    for a in yes {
        assert!(accepts_json_and_sse(&hdrs(&[(&ACCEPT, a)])), "{a}");
    }
    let no = [
        "application/json",
        "text/event-stream",
        "text/html, application/xml",
        "application/json, text/event-stream;q=0",
        "*/*;q=0",
    ];
    for a in no {
        assert!(!accepts_json_and_sse(&hdrs(&[(&ACCEPT, a)])), "{a}");
    }
    assert!(!accepts_json_and_sse(&HeaderMap::new()));
    let split = hdrs(&[
        (&ACCEPT, "application/json"),
        (&ACCEPT, "text/event-stream"),
    ]);
    assert!(accepts_json_and_sse(&split));
}

fn region_and_count() -> Vec<crate::tool::ParamHeader> {
    crate::tool::param_headers(&json!({"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"}
    }}))
}

fn params(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn param_headers_that_mirror_their_arguments_pass() {
    let declared = region_and_count();
    let args = json!({"region": "Hello", "count": 42, "dry": true, "query": "x"});
    for h in [
        params(&[
            ("mcp-param-region", "Hello"),
            ("mcp-param-count", "42"),
            ("mcp-param-dry", "true"),
        ]),
        params(&[
            ("mcp-param-region", "=?base64?SGVsbG8=?="),
            ("mcp-param-count", "42.0"),
            ("mcp-param-dry", "true"),
            ("mcp-param-unknown", "forwarded, never judged"),
        ]),
    ] {
        check_param_headers(&h, &declared, Some(&args)).unwrap();
    }
    check_param_headers(&HeaderMap::new(), &declared, Some(&json!({"region": null}))).unwrap();
    check_param_headers(&HeaderMap::new(), &declared, None).unwrap();
}

#[test]
fn a_param_header_that_is_missing_different_malformed_repeated_or_unfounded_is_a_mismatch() {
    let declared = region_and_count();
    let args = json!({"region": "Hello"});
    let cases = [
        (params(&[]), "missing"),
        (params(&[("mcp-param-region", "Bye")]), "different"),
        (
            params(&[("mcp-param-region", "=?base64?SGVsbG8?=")]),
            "bad padding",
        ),
        (
            params(&[("mcp-param-region", "=?base64?SGVs!!!bG8=?=")]),
            "bad characters",
        ),
        (
            params(&[("mcp-param-region", "Hello"), ("mcp-param-region", "Hello")]),
            "repeated",
        ),
        (
            params(&[("mcp-param-region", "Hello"), ("mcp-param-count", "1")]),
            "no such argument",
        ),
    ];
    for (h, case) in cases {
        let err = check_param_headers(&h, &declared, Some(&args)).unwrap_err();
        assert_eq!(err.code(), codes::HEADER_MISMATCH, "{case}: {err:?}");
        assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST);
        assert!(err.message().starts_with("header mismatch"), "{case}");
    }
}

#[test]
fn a_literal_value_that_only_looks_like_base64_is_compared_as_it_is() {
    let declared = region_and_count();
    let literal = "=?base64?SGVsbG8=";
    let h = params(&[("mcp-param-region", literal)]);
    check_param_headers(&h, &declared, Some(&json!({"region": literal}))).unwrap();
    let h = params(&[("mcp-param-region", "SGVsbG8=")]);
    check_param_headers(&h, &declared, Some(&json!({"region": "SGVsbG8="}))).unwrap();
}

#[test]
fn a_request_is_modern_by_its_meta_or_outside_a_session_by_a_non_legacy_version_header() {
    let bare = frame(json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}));
    let modern_header = hdrs(&[(&MCP_PROTOCOL_VERSION, "2026-07-28")]);
    assert_eq!(request_era(&modern_header, &bare), Era::Modern);
    assert_eq!(
        check_modern_headers(&modern_header, &bare)
            .unwrap_err()
            .code(),
        codes::INVALID_PARAMS,
        "answered as a modern request without its _meta"
    );
    let legacy_header = hdrs(&[(&MCP_PROTOCOL_VERSION, "2025-11-25")]);
    assert_eq!(request_era(&legacy_header, &bare), Era::Legacy);
    assert_eq!(request_era(&HeaderMap::new(), &bare), Era::Legacy);
    let mut in_session = modern_header.clone();
    in_session.insert(MCP_SESSION_ID, HeaderValue::from_static("s"));
    assert_eq!(request_era(&in_session, &bare), Era::Legacy);
    assert_eq!(
        request_era(&HeaderMap::new(), &modern_call("x")),
        Era::Modern
    );
}
