use super::*;
use crate::json::JsonLimits;
use serde_json::json;

fn frame(text: &str) -> Result<Frame, FrameError> {
    Frame::parse(
        Bytes::copy_from_slice(text.as_bytes()),
        &JsonLimits::default(),
    )
}

fn msg(v: Value) -> Result<Message, FrameError> {
    Message::from_value(v)
}

#[test]
fn a_tools_call_request_exposes_method_id_tool_name_and_meta() {
    let text = r#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"run-rerun","arguments":{},"_meta":{"progressToken":5}}}"#;
    let f = frame(text).unwrap();
    assert!(f.is_request());
    assert_eq!(f.method(), Some("tools/call"));
    assert_eq!(f.id(), Some(&RequestId::String("a-1".into())));
    assert_eq!(f.tool_name(), Some("run-rerun"));
    assert_eq!(f.meta().unwrap()["progressToken"], json!(5));
    assert_eq!(f.raw().as_ref(), text.as_bytes());
    assert_eq!(f.value()["params"]["name"], json!("run-rerun"));
    assert_eq!(f.name_header_source(), Some(Some("run-rerun")));
}

#[test]
fn tool_name_is_only_reported_for_tools_call() {
    let f =
        frame(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#).unwrap();
    assert_eq!(f.tool_name(), None);
    assert_eq!(f.name_header_source(), Some(Some("p")));
    let f =
        frame(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#)
            .unwrap();
    assert_eq!(f.name_header_source(), Some(Some("file:///x")));
    let f = frame(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).unwrap();
    assert_eq!(f.name_header_source(), Some(None));
    let f = frame(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
    assert_eq!(f.name_header_source(), None);
}

#[test]
fn integer_and_string_ids_are_accepted() {
    for (id, want) in [
        (json!(0), RequestId::Number(0)),
        (json!(-7), RequestId::Number(-7)),
        (json!(i64::MAX), RequestId::Number(i64::MAX)),
        (json!(""), RequestId::String(String::new())),
        (json!("x"), RequestId::String("x".into())),
    ] {
        let m = msg(json!({"jsonrpc":"2.0","id":id,"method":"ping"})).unwrap();
        assert_eq!(m.id(), Some(&want));
    }
}

#[test]
fn null_float_bool_object_and_out_of_range_ids_are_rejected() {
    for id in [
        json!(null),
        json!(1.5),
        json!(1.0),
        json!(true),
        json!({}),
        json!([1]),
        json!(u64::MAX),
    ] {
        let err = msg(json!({"jsonrpc":"2.0","id":id,"method":"ping"})).unwrap_err();
        assert!(matches!(err, FrameError::Id(_)), "{id}: {err:?}");
        assert_eq!(err.code(), codes::INVALID_REQUEST);
    }
    // The spelled-out forms serde_json turns into floats are rejected too.
    for text in [
        r#"{"jsonrpc":"2.0","id":1e0,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":-0,"method":"ping"}"#,
    ] {
        assert!(
            matches!(frame(text).unwrap_err(), FrameError::Id(_)),
            "{text}"
        );
    }
}

#[test]
fn ids_echo_exactly_in_built_responses() {
    let f = frame(r#"{"jsonrpc":"2.0","id":-9007199254740993,"method":"ping"}"#).unwrap();
    let out = result_response(f.id().unwrap(), &json!({}));
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"jsonrpc":"2.0","id":-9007199254740993,"result":{}}"#
    );
}

#[test]
fn a_batch_is_rejected_as_such() {
    let err = frame(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err();
    assert_eq!(err, FrameError::Batch);
    assert_eq!(err.code(), codes::INVALID_REQUEST);
    assert_eq!(frame("[]").unwrap_err(), FrameError::Batch);
}

#[test]
fn the_jsonrpc_member_must_be_exactly_2_0() {
    for v in [
        json!({"id":1,"method":"ping"}),
        json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
        json!({"jsonrpc":2.0,"id":1,"method":"ping"}),
    ] {
        assert_eq!(msg(v).unwrap_err(), FrameError::Version);
    }
}

#[test]
fn scalars_are_not_messages() {
    assert_eq!(frame("42").unwrap_err(), FrameError::NotAnObject);
    assert_eq!(frame(r#""x""#).unwrap_err(), FrameError::NotAnObject);
}

#[test]
fn unknown_top_level_members_are_rejected_but_unknown_params_members_are_not() {
    let err = msg(json!({"jsonrpc":"2.0","id":1,"method":"ping","extra":1})).unwrap_err();
    assert_eq!(err, FrameError::UnknownMember("extra".into()));
    let err = msg(json!({"jsonrpc":"2.0","id":1,"result":{},"method":"x"})).unwrap_err();
    assert!(matches!(err, FrameError::UnknownMember(_)), "{err:?}");
    let err = msg(json!({"jsonrpc":"2.0","id":1,"result":{},"params":{}})).unwrap_err();
    assert_eq!(err, FrameError::UnknownMember("params".into()));
    msg(json!({"jsonrpc":"2.0","id":1,"method":"x","params":{"anything":[1],"_meta":{}}})).unwrap();
}

#[test]
fn notifications_have_no_id() {
    let m = msg(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap();
    assert_eq!(
        m,
        Message::Notification {
            method: "notifications/initialized".into(),
            params: None
        }
    );
    assert_eq!(m.id(), None);
}

#[test]
fn params_must_be_an_object_and_method_a_string() {
    for p in [json!([1, 2]), json!(null), json!("x")] {
        let err = msg(json!({"jsonrpc":"2.0","id":1,"method":"m","params":p})).unwrap_err();
        assert_eq!(err, FrameError::Params);
    }
    let err = msg(json!({"jsonrpc":"2.0","id":1,"method":7})).unwrap_err();
    assert_eq!(err, FrameError::Method);
}

#[test]
fn responses_carry_result_xor_error() {
    let m = msg(json!({"jsonrpc":"2.0","id":3,"result":{"ok":true}})).unwrap();
    assert_eq!(
        m,
        Message::Response {
            id: RequestId::Number(3),
            result: json!({"ok":true})
        }
    );
    let err = msg(json!({"jsonrpc":"2.0","id":3,"result":{},"error":{"code":1,"message":"m"}}))
        .unwrap_err();
    assert!(matches!(err, FrameError::Shape(_)));
    let err = msg(json!({"jsonrpc":"2.0","id":3})).unwrap_err();
    assert!(matches!(err, FrameError::Shape(_)));
    let err = msg(json!({"jsonrpc":"2.0","result":{}})).unwrap_err();
    assert!(matches!(err, FrameError::Id(_)));
}

#[test]
fn error_responses_may_lack_an_id_but_need_a_proper_error_object() {
    for id in [None, Some(json!(null))] {
        let mut v = json!({"jsonrpc":"2.0","error":{"code":-32700,"message":"parse"}});
        if let Some(id) = id {
            v["id"] = id;
        }
        let m = msg(v).unwrap();
        assert!(matches!(m, Message::Error { id: None, ref error } if error.code == -32700));
    }
    let m =
        msg(json!({"jsonrpc":"2.0","id":"q","error":{"code":-32601,"message":"no","data":[1]}}))
            .unwrap();
    assert_eq!(
        m,
        Message::Error {
            id: Some(RequestId::String("q".into())),
            error: ErrorObject {
                code: -32601,
                message: "no".into(),
                data: Some(json!([1]))
            }
        }
    );
    for e in [
        json!("boom"),
        json!({"code":"x","message":"m"}),
        json!({"code":1.5,"message":"m"}),
        json!({"code":1}),
    ] {
        let err = msg(json!({"jsonrpc":"2.0","id":1,"error":e})).unwrap_err();
        assert!(matches!(err, FrameError::ErrorObject(_)), "{err:?}");
    }
}

#[test]
fn json_errors_map_to_parse_error() {
    let err = frame(r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"x"}"#).unwrap_err();
    assert!(matches!(
        err,
        FrameError::Json(JsonError::DuplicateKey { .. })
    ));
    assert_eq!(err.code(), codes::PARSE_ERROR);
}

#[test]
fn error_response_omits_a_missing_id_and_keeps_data() {
    let out = error_response(None, codes::PARSE_ERROR, "parse error", None);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error"}})
    );
    let id = RequestId::String("r".into());
    let out = error_response(
        Some(&id),
        codes::UNSUPPORTED_VERSION,
        "unsupported protocol version",
        Some(json!({"supported":["2026-07-28"]})),
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], json!("r"));
    assert_eq!(v["error"]["code"], json!(-32022));
    assert_eq!(v["error"]["data"]["supported"][0], json!("2026-07-28"));
    // What we build, we parse back.
    let m = Message::from_value(v).unwrap();
    assert_eq!(m.id(), Some(&id));
}

#[test]
fn to_value_round_trips_every_kind_of_message() {
    for v in [
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"c"}}),
        json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"p":1}}),
        json!({"jsonrpc":"2.0","id":"x","result":{"tools":[]}}),
        json!({"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"m","data":{}}}),
        json!({"jsonrpc":"2.0","error":{"code":-1,"message":"m"}}),
    ] {
        assert_eq!(Message::from_value(v.clone()).unwrap().to_value(), v);
    }
}
