//! The test upstream, driven over plain HTTP and over stdio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{Http, MODERN, sse_ids, sse_messages};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tollgate_testkit::{
    Eras, ExtraTool, ResponseMode, ServerEvent, Upstream, UpstreamOptions,
    spawn_test_upstream_http, wait_for,
};

const LEGACY: &str = "2025-11-25";

fn text_of(response: &Value) -> String {
    response
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_legacy_session_lists_and_calls_tools_and_the_call_is_counted() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let sid = http.initialize(LEGACY, json!({})).await;
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", LEGACY),
    ];

    let list = http
        .post(&h, &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(
        list.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let ids = sse_ids(&list.body);
    assert!(
        list.body.starts_with(&format!("id: {}\nretry: ", ids[0])),
        "priming event first: {}",
        list.body
    );
    let tools = list.last()["result"]["tools"].as_array().unwrap().clone();
    assert_eq!(tools[0]["name"], "test_simple_text");
    assert!(tools.iter().any(|t| t["name"] == "run-rerun"));

    let call = http.post(&h, &json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"a":1}}})).await;
    assert_eq!(text_of(&call.last()), r#"{"a":1}"#);
    let rerun = http
        .post(&h, &json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run-rerun","arguments":{"run_id":"r-42"}}}))
        .await;
    assert_eq!(
        rerun.last()["result"]["structuredContent"]["run_id"],
        "r-42"
    );
    assert_eq!(
        rerun.last()["result"]["structuredContent"]["status"],
        "queued"
    );

    let stats = up.stats();
    assert_eq!(
        (
            stats.calls("echo"),
            stats.calls("run-rerun"),
            stats.calls("fail")
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.sessions_opened, 1);
}

#[tokio::test]
async fn json_response_mode_answers_with_one_json_body() {
    let up = Upstream::start(UpstreamOptions::default().response_mode(ResponseMode::Json))
        .await
        .unwrap();
    let http = Http::new(&up.url);
    let sid = http.initialize(LEGACY, json!({})).await;
    let reply = http
        .post(&[("mcp-session-id", &sid)], &json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"test_simple_text"}}))
        .await;
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        text_of(&reply.last()),
        "This is a simple text response for testing."
    );
}

#[tokio::test]
async fn the_fail_tool_answers_with_an_internal_error() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let reply = Http::new(&up.url)
        .modern(1, "tools/call", json!({"name":"fail","arguments":{}}), &[])
        .await;
    assert_eq!(reply.last()["error"]["code"], -32603);
    assert_eq!(up.stats().calls("fail"), 1);
}

#[tokio::test]
async fn session_rules_give_400_without_a_session_and_404_for_an_unknown_one() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let missing = http
        .post(
            &[("mcp-protocol-version", LEGACY)],
            &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        )
        .await;
    assert_eq!(missing.status, 400);
    let unknown = http
        .post(
            &[("mcp-session-id", "nope")],
            &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        )
        .await;
    assert_eq!(unknown.status, 404);

    let sid = http.initialize(LEGACY, json!({})).await;
    let deleted = http.send("DELETE", &[("mcp-session-id", &sid)], None).await;
    assert_eq!(deleted.status, 200);
    let after = http
        .post(
            &[("mcp-session-id", &sid)],
            &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        )
        .await;
    assert_eq!(after.status, 404);
}

#[tokio::test]
async fn a_legacy_only_upstream_answers_discover_like_the_typescript_sdk() {
    let up = Upstream::start(UpstreamOptions::default().eras(Eras::LegacyOnly))
        .await
        .unwrap();
    let reply = Http::new(&up.url)
        .modern(1, "server/discover", json!({}), &[])
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.last()["error"]["code"], -32000);
    assert_eq!(
        reply.last()["error"]["message"],
        "Bad Request: Server not initialized"
    );
}

#[tokio::test]
async fn a_modern_only_upstream_refuses_the_legacy_handshake() {
    let up = Upstream::start(UpstreamOptions::default().eras(Eras::ModernOnly))
        .await
        .unwrap();
    let http = Http::new(&up.url);
    let init = http.modern(1, "initialize", json!({}), &[]).await;
    assert_eq!(
        (init.status, init.last()["error"]["code"].as_i64()),
        (404, Some(-32601))
    );
    let get = http
        .send("GET", &[("accept", "text/event-stream")], None)
        .await;
    assert_eq!(get.status, 405);
    let discover = http.modern(2, "server/discover", json!({}), &[]).await;
    let result = &discover.last()["result"];
    assert_eq!(result["supportedVersions"], json!([MODERN]));
    assert_eq!(result["resultType"], "complete");
    assert!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].is_string());
}

#[tokio::test]
async fn a_modern_tool_call_with_matching_headers_succeeds() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let reply = Http::new(&up.url)
        .modern(
            7,
            "tools/call",
            json!({"name":"echo","arguments":{"x":"y"}}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    let last = reply.last();
    assert_eq!(last["id"], 7);
    assert_eq!(last["result"]["resultType"], "complete");
    assert_eq!(text_of(&last), r#"{"x":"y"}"#);
    assert_eq!(up.stats().calls("echo"), 1);
}

#[tokio::test]
async fn a_header_that_disagrees_with_the_body_is_refused_with_32020() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    for extra in [
        [("mcp-name", "run-rerun")],
        [("mcp-method", "tools/list")],
        [("mcp-protocol-version", "2025-11-25")],
    ] {
        let reply = http
            .modern(
                3,
                "tools/call",
                json!({"name":"echo","arguments":{}}),
                &extra,
            )
            .await;
        assert_eq!(reply.status, 400, "{extra:?}");
        assert_eq!(reply.last()["error"]["code"], -32020, "{extra:?}");
        assert_eq!(reply.last()["id"], 3);
    }
    assert_eq!(
        up.stats().calls("echo"),
        0,
        "a refused call never reaches the tool"
    );
    let param = http
        .modern(
            4,
            "tools/call",
            json!({"name":"test_header_param","arguments":{"region":"eu"}}),
            &[("mcp-param-region", "us")],
        )
        .await;
    assert_eq!(param.last()["error"]["code"], -32020);
    let param_ok = http
        .modern(
            5,
            "tools/call",
            json!({"name":"test_header_param","arguments":{"region":"eu"}}),
            &[("mcp-param-region", "=?base64?ZXU=?=")],
        )
        .await;
    assert_eq!(text_of(&param_ok.last()), "region=eu");
}

#[tokio::test]
async fn input_required_completes_on_retry_with_the_opaque_request_state() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let tool = "test_input_required_result_request_state";
    let first = http
        .modern(1, "tools/call", json!({"name":tool,"arguments":{}}), &[])
        .await
        .last();
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required");
    assert_eq!(
        result["inputRequests"]["confirm"]["method"],
        "elicitation/create"
    );
    let state = result["requestState"].as_str().unwrap().to_string();

    let answer = json!({"confirm": {"action":"accept","content":{"ok":true}}});
    let retry = http
        .modern(
            2,
            "tools/call",
            json!({"name":tool,"arguments":{},"inputResponses":answer,"requestState":state}),
            &[],
        )
        .await;
    assert_eq!(text_of(&retry.last()), "state-ok: confirmed=true");

    let tampered = format!("{state}x");
    let bad = http
        .modern(
            3,
            "tools/call",
            json!({"name":tool,"arguments":{},"inputResponses":answer,"requestState":tampered}),
            &[],
        )
        .await;
    assert_eq!(bad.last()["error"]["code"], -32602);
}

#[tokio::test]
async fn a_legacy_tool_asks_the_client_on_its_stream_and_uses_the_posted_answer() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let sid = http.initialize(LEGACY, json!({"elicitation":{}})).await;
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", LEGACY),
    ];
    let resp = http
        .open(
            "POST",
            &[("content-type", "application/json"), ("accept", "application/json, text/event-stream"), h[0], h[1]],
            Some(&json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"test_elicitation","arguments":{"message":"who?"}}})),
        )
        .await;
    let mut body = resp.into_body();
    let mut seen = String::new();
    let request = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        if let Some(r) = sse_messages(&seen)
            .into_iter()
            .find(|m| m["method"] == "elicitation/create")
        {
            break r;
        }
    };
    let answer = json!({"jsonrpc":"2.0","id":request["id"],"result":{"action":"accept","content":{"username":"ann","email":"a@b.c"}}});
    assert_eq!(http.post(&h, &answer).await.status, 202);
    let rest = body.collect().await.unwrap().to_bytes();
    seen.push_str(std::str::from_utf8(&rest).unwrap());
    let last = sse_messages(&seen).pop().unwrap();
    assert!(text_of(&last).contains("\"username\":\"ann\""), "{last}");
}

#[tokio::test]
async fn a_closed_post_stream_resumes_on_get_with_last_event_id() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let sid = http.initialize(LEGACY, json!({})).await;
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", LEGACY),
    ];
    let cut = http.post(&h, &json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"test_reconnection"}})).await;
    assert!(
        sse_messages(&cut.body).is_empty(),
        "the stream closes before the result: {}",
        cut.body
    );
    let last_id = sse_ids(&cut.body).pop().expect("a priming event id");

    let resumed = http
        .send(
            "GET",
            &[
                ("accept", "text/event-stream"),
                h[0],
                h[1],
                ("last-event-id", &last_id),
            ],
            None,
        )
        .await;
    assert_eq!(resumed.status, 200);
    let messages = sse_messages(&resumed.body);
    assert_eq!(messages.len(), 1, "{}", resumed.body);
    assert_eq!(messages[0]["id"], 4);
    assert_eq!(text_of(&messages[0]), "Reconnection test completed");
}

#[tokio::test]
async fn listen_streams_start_with_an_acknowledgement_and_carry_the_subscription_id() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let http = Http::new(&up.url);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}});
    let resp = http
        .open(
            "POST",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", MODERN),
                ("mcp-method", "subscriptions/listen"),
            ],
            Some(&json!({"jsonrpc":"2.0","id":"L1","method":"subscriptions/listen","params":{"_meta":meta,"notifications":{"toolsListChanged":true}}})),
        )
        .await;
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut published = false;
    let frames = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        let messages = sse_messages(&seen);
        if !published && !messages.is_empty() {
            up.publish(ServerEvent::PromptsListChanged); // not requested: must not arrive
            up.publish(ServerEvent::ToolsListChanged);
            published = true;
        }
        if messages.len() >= 2 {
            break messages;
        }
    };
    assert_eq!(
        frames[0]["method"],
        "notifications/subscriptions/acknowledged"
    );
    assert_eq!(
        frames[0]["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    assert_eq!(frames[1]["method"], "notifications/tools/list_changed");
    assert_eq!(
        frames[1]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "L1"
    );
}

#[tokio::test]
async fn required_upstream_credentials_are_checked_and_the_last_headers_recorded() {
    let up =
        Upstream::start(UpstreamOptions::default().require_header("x-upstream-token", "s3cret"))
            .await
            .unwrap();
    let http = Http::new(&up.url);
    let denied = http.modern(1, "tools/list", json!({}), &[]).await;
    assert_eq!(denied.status, 401);
    let allowed = http
        .modern(
            2,
            "tools/list",
            json!({}),
            &[("x-upstream-token", "s3cret")],
        )
        .await;
    assert_eq!(allowed.status, 200);
    let stats = up.stats();
    assert_eq!(
        stats.last_header("x-upstream-token").as_deref(),
        Some("s3cret")
    );
    assert_eq!(stats.last_header("authorization"), None);
    assert_eq!(stats.http_requests, 2);
}

#[tokio::test]
async fn a_foreign_origin_is_forbidden() {
    let up = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let reply = Http::new(&up.url)
        .modern(
            1,
            "tools/list",
            json!({}),
            &[("origin", "http://evil.example.com")],
        )
        .await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn progress_notifications_precede_the_result_on_a_modern_stream() {
    let up = Upstream::start(UpstreamOptions::default().response_mode(ResponseMode::Json))
        .await
        .unwrap();
    let params = json!({"name":"slow","arguments":{"ms":20},"_meta":{
        "progressToken":"p1",
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {}}});
    let reply = Http::new(&up.url)
        .modern(1, "tools/call", params, &[])
        .await;
    let messages = reply.messages();
    let progress: Vec<u64> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, vec![0, 10, 20]);
    assert_eq!(text_of(messages.last().unwrap()), "slept 20 ms");
}

#[tokio::test]
async fn extra_tools_are_listed_and_called() {
    let opts = UpstreamOptions::default().extra_tool(ExtraTool::new("deploy", "Deploys", |args| {
        Ok(json!({"content":[{"type":"text","text":format!("deployed {}", args["env"])}]}))
    }));
    let up = Upstream::start(opts).await.unwrap();
    let http = Http::new(&up.url);
    let tools = http.modern(1, "tools/list", json!({}), &[]).await.last();
    assert_eq!(
        tools["result"]["tools"].as_array().unwrap().last().unwrap()["name"],
        "deploy"
    );
    let call = http
        .modern(
            2,
            "tools/call",
            json!({"name":"deploy","arguments":{"env":"prod"}}),
            &[],
        )
        .await;
    assert_eq!(text_of(&call.last()), "deployed \"prod\"");
}

#[tokio::test]
async fn stdio_serves_both_eras_and_routes_client_answers_back() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (server_read, server_write) = tokio::io::split(server);
    let serve = tokio::spawn(tollgate_testkit::upstream::serve_stdio(
        UpstreamOptions::default(),
        server_read,
        server_write,
    ));
    let (client_read, mut client_write) = tokio::io::split(client);
    let mut lines = BufReader::new(client_read).lines();
    let mut send = async |v: Value| {
        client_write
            .write_all(format!("{v}\n").as_bytes())
            .await
            .unwrap();
    };

    send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LEGACY,"capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"0"}}})).await;
    let init: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(init["result"]["protocolVersion"], LEGACY);

    send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"hi"}}})).await;
    let ask: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(ask["method"], "sampling/createMessage");
    send(json!({"jsonrpc":"2.0","id":ask["id"],"result":{"role":"assistant","content":{"type":"text","text":"hello"},"model":"m"}})).await;
    let done: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(text_of(&done), "LLM response: hello");

    let meta = json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}});
    send(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"test_input_required_result_elicitation","_meta":meta}})).await;
    let modern: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        modern["error"]["code"], -32021,
        "no elicitation capability declared: {modern}"
    );

    client_write.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), serve)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_binary_prints_its_url_and_dies_with_its_guard() {
    let (guard, url) = spawn_test_upstream_http(&["--eras", "modern"]).unwrap();
    let reply = Http::new(&url)
        .modern(1, "server/discover", json!({}), &[])
        .await;
    assert_eq!(reply.last()["result"]["supportedVersions"], json!([MODERN]));
    let pid = guard.pid();
    drop(guard);
    let proc_path = format!("/proc/{pid}");
    wait_for(Duration::from_secs(5), || {
        !std::path::Path::new(&proc_path).exists()
    })
    .await
    .unwrap();
}
