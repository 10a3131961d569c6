//! Protocol behaviour through the gateway, both eras: header cross-checks, `input_required`
//! forwarded byte for byte, the legacy fallback signal, list filtering, quota rollback, sealed
//! sessions served by any node, key rotation, DELETE, and stdio upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tollgate_testkit::{Eras, Upstream, UpstreamOptions, test_upstream_bin};
use tollgate_tests::{ALLOW_ALL, GatewayBuilder, Raw, audit_records, init_tracing, one_upstream};
use tracing::info;

const TOKEN: &str = "protocol-grant-token-0123456789";

fn modern_body(id: u64, method: &str, mut params: Value, capabilities: Value) -> String {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

#[tokio::test]
async fn modern_headers_must_match_the_body_and_a_mismatch_is_never_forwarded() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let body = modern_body(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
        json!({}),
    );
    for (what, headers) in [
        (
            "method mismatch",
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "echo"),
            ],
        ),
        (
            "name mismatch",
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "run-rerun"),
            ],
        ),
        (
            "missing name",
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
        ),
        (
            "version mismatch",
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
        ),
    ] {
        let reply = raw.post(body.clone(), &headers).await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_eq!(reply.json()["error"]["code"], -32020, "{what}: {reply:?}");
    }
    // A name sent in the base64 form matches when it decodes to the body's name.
    let reply = raw
        .post(
            body.clone(),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?ZWNobw==?="),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        upstream.stats().calls("echo"),
        1,
        "only the matching request reached the upstream"
    );
    let unsupported = raw
        .post(
            modern_body(2, "tools/list", json!({}), json!({})).replace("2026-07-28", "2099-01-01"),
            &[
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/list"),
            ],
        )
        .await;
    assert_eq!(unsupported.status, 400);
    assert_eq!(unsupported.json()["error"]["code"], -32022);
    assert!(unsupported.json()["error"]["data"]["supported"].is_array());
}

#[tokio::test]
async fn input_required_results_and_request_state_travel_byte_for_byte() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let tool = "test_input_required_result_elicitation";
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    let caps = json!({"elicitation": {}});
    let first = raw
        .post(
            modern_body(
                1,
                "tools/call",
                json!({"name": tool, "arguments": {}}),
                caps.clone(),
            ),
            &headers,
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let result = first.json()["result"].clone();
    assert_eq!(result["resultType"], "input_required", "{first:?}");
    let state = result["requestState"]
        .as_str()
        .expect("requestState")
        .to_owned();
    let key = result["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();

    info!(
        "--- the retry carries the opaque state; the upstream verifies its MAC, so any change would fail"
    );
    let retry = raw
        .post(
            modern_body(
                2,
                "tools/call",
                json!({"name": tool, "arguments": {}, "requestState": state,
                       "inputResponses": {key: {"action": "accept", "content": {"name": "Ada"}}}}),
                caps,
            ),
            &headers,
        )
        .await;
    assert_eq!(retry.status, 200, "{retry:?}");
    let text = retry.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(text, "Hello, Ada!", "{retry:?}");
}

#[tokio::test]
async fn a_modern_client_gets_the_legacy_fallback_signal_from_a_legacy_only_upstream() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default().eras(Eras::LegacyOnly))
        .await
        .unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let discover = raw.modern(1, "server/discover", json!({})).await;
    assert_eq!(discover.status, 400, "{discover:?}");
    let code = discover.json()["error"]["code"].as_i64().unwrap();
    assert!(
        !(-32022..=-32020).contains(&code),
        "not a modern error: {discover:?}"
    );

    info!("--- a dual-era client (rmcp, auto mode) falls back to initialize and works");
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(gateway.url("up")).auth_header(TOKEN),
    );
    let client = ()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: None,
            },
        )
        .await
        .expect("auto client connects");
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn hidden_tools_are_filtered_and_answer_like_unknown_ones() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let policy = r#"{"version":"1","default":"allow","hide":["run-rerun"]}"#;
    let gateway = one_upstream(&upstream.url, TOKEN, policy).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let list = raw.modern(1, "tools/list", json!({})).await;
    let result = list.json()["result"].clone();
    let names: Vec<&str> = result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(!names.contains(&"run-rerun"), "{names:?}");
    assert_eq!(
        result["cacheScope"], "private",
        "a per-caller list is private"
    );
    assert!(result.get("nextCursor").is_none());

    let hidden = raw
        .modern(
            2,
            "tools/call",
            json!({"name": "run-rerun", "arguments": {"run_id": "1"}}),
        )
        .await;
    let unknown = raw
        .modern(3, "tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    let strip = |mut v: Value| {
        v["id"] = Value::Null;
        v["error"]["message"] = Value::Null;
        v
    };
    assert_eq!(hidden.json()["error"]["code"], -32602, "{hidden:?}");
    assert_eq!(
        strip(hidden.json()),
        strip(unknown.json()),
        "hidden and unknown answer identically"
    );
    assert_eq!(upstream.stats().calls("run-rerun"), 0);
    let cursor = raw.modern(4, "tools/list", json!({"cursor": "abc"})).await;
    assert_eq!(
        cursor.json()["error"]["code"],
        -32602,
        "the gateway never issues cursors: {cursor:?}"
    );
    let (audit, _dir) = gateway.stop().await;
    let records = audit_records(&audit);
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "hidden" && r["tool"] == "run-rerun")
    );
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "unknown_tool" && r["tool"] == "nope")
    );
}

#[tokio::test]
async fn a_call_the_upstream_answers_with_a_jsonrpc_error_gives_its_token_back() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let policy = r#"{"version":"1","default":"allow","all_tools":{"limits":[
        {"counter":"calls","window":"minute","max":2,"scope":"grant"}]}}"#;
    // 5 s into a minute on a clock the test holds: no window boundary can fall between calls.
    let clock = tollgate_quota::ManualClock::new(1_795_000_025_000);
    let gateway = GatewayBuilder::new()
        .quota_clock(&clock)
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(policy))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    for id in 0..5 {
        let reply = raw
            .modern(id, "tools/call", json!({"name": "fail", "arguments": {}}))
            .await;
        assert!(
            reply.json()["error"].is_object(),
            "the upstream's error passes through: {reply:?}"
        );
    }
    assert_eq!(
        upstream.stats().calls("fail"),
        5,
        "failed calls consumed nothing"
    );
    for id in 10..12 {
        let reply = raw
            .modern(
                id,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "x"}}),
            )
            .await;
        assert_ne!(reply.json()["result"]["isError"], true, "{reply:?}");
    }
    let third = raw
        .modern(
            12,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert_eq!(third.json()["result"]["isError"], true, "{third:?}");
    assert_eq!(
        third.json()["result"]["_meta"]["tollgate/decision"]["decision"],
        "rate_limited"
    );
}

/// A stdio child that dies after it read the call may have run it: unknown means spent, so the
/// token stays taken (before, a lost answer counted as "never sent" and was given back).
#[tokio::test]
async fn a_call_whose_upstream_dies_after_receiving_it_keeps_its_token_spent() {
    init_tracing();
    // The gateway's stdio fixture: its `crash` tool exits at once, answering nothing.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/gateway/tests/fixtures/stdio_server.py"
    );
    let policy = r#"{"version":"1","default":"allow","all_tools":{"limits":[
        {"counter":"calls","window":"minute","max":1,"scope":"grant"}]}}"#;
    let clock = tollgate_quota::ManualClock::new(1_795_000_025_000);
    let gateway = GatewayBuilder::new()
        .quota_clock(&clock)
        .stdio_upstream("local", "python3", &[fixture])
        .grant("g", TOKEN, "local", Some(policy))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("local"), Some(TOKEN));
    // The fixture speaks the initialize-based era only.
    let session = raw.initialize().await.unwrap();
    let crashed = raw
        .legacy(
            &session,
            1,
            "tools/call",
            json!({"name": "crash", "arguments": {}}),
        )
        .await;
    assert!(
        crashed.status >= 500 || crashed.json()["error"].is_object(),
        "the lost answer is an error: {crashed:?}"
    );
    let next = raw
        .legacy(
            &session,
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
        .await;
    let next_json = next.sse_messages().pop().unwrap_or_else(|| next.json());
    assert_eq!(
        next_json["result"]["_meta"]["tollgate/decision"]["decision"], "rate_limited",
        "the crashed call's token stayed spent: {next:?}"
    );
}

#[tokio::test]
async fn any_node_holding_the_key_serves_an_http_session_and_rotation_keeps_it_open() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let old = [1u8; 32];
    let new = [2u8; 32];
    let a = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .session_keys(&[("old", old)])
        .start()
        .await
        .unwrap();
    let b = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .session_keys(&[("new", new), ("old", old)])
        .start()
        .await
        .unwrap();
    let c = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .session_keys(&[("new", new)])
        .start()
        .await
        .unwrap();
    let session = Raw::new(&a.url("up"), Some(TOKEN))
        .initialize()
        .await
        .unwrap();
    info!("--- node B (rotated: new key first, old key still listed) serves node A's session");
    let on_b = Raw::new(&b.url("up"), Some(TOKEN))
        .legacy(
            &session,
            1,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(on_b.status, 200, "{on_b:?}");
    assert_eq!(
        on_b.json()["result"]["content"][0]["text"],
        r#"{"text":"hi"}"#
    );
    info!("--- node C (old key removed) does not know it: 404, the client re-initializes");
    let on_c = Raw::new(&c.url("up"), Some(TOKEN))
        .legacy(&session, 2, "tools/list", json!({}))
        .await;
    assert_eq!(on_c.status, 404, "{on_c:?}");

    info!("--- DELETE ends the session everywhere: the upstream forgets it");
    let deleted = Raw::new(&b.url("up"), Some(TOKEN))
        .client
        .delete(b.url("up"))
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");
    let after = Raw::new(&a.url("up"), Some(TOKEN))
        .legacy(&session, 3, "tools/list", json!({}))
        .await;
    assert_eq!(after.status, 404, "{after:?}");
}

#[tokio::test]
async fn a_stdio_upstream_serves_both_eras_and_its_sessions_stay_on_their_node() {
    init_tracing();
    let bin = test_upstream_bin().unwrap();
    let bin = bin.to_str().unwrap();
    let a = GatewayBuilder::new()
        .stdio_upstream("local", bin, &["--stdio"])
        .grant("g", TOKEN, "local", Some(tollgate_tests::SEED_POLICY))
        .start()
        .await
        .unwrap();
    let b = GatewayBuilder::new()
        .node_id("node-b")
        .stdio_upstream("local", bin, &["--stdio"])
        .grant("g", TOKEN, "local", Some(tollgate_tests::SEED_POLICY))
        .start()
        .await
        .unwrap();

    for modern in [false, true] {
        info!(modern, "--- an rmcp client through a stdio upstream");
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(a.url("local")).auth_header(TOKEN),
        );
        let client = if modern {
            ().serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .unwrap()
        } else {
            ().serve(transport).await.unwrap()
        };
        let tools = client.list_all_tools().await.unwrap();
        assert!(tools.iter().any(|t| t.name == "run-rerun"));
        let mut call = CallToolRequestParams::new("run-rerun");
        call.arguments = json!({"run_id": "42"}).as_object().cloned();
        let ok = client.call_tool(call).await.unwrap();
        assert_ne!(ok.is_error, Some(true), "{ok:?}");
        let mut call = CallToolRequestParams::new("echo");
        call.arguments = json!({"text": "x"}).as_object().cloned();
        let denied = client.call_tool(call).await.unwrap();
        assert_eq!(denied.is_error, Some(true), "default deny: {denied:?}");
        client.cancel().await.unwrap();
    }

    info!(
        "--- a stdio session lives in node A's child: node B answers 404 (the client re-initializes)"
    );
    let session = Raw::new(&a.url("local"), Some(TOKEN))
        .initialize()
        .await
        .unwrap();
    let on_a = Raw::new(&a.url("local"), Some(TOKEN))
        .legacy(&session, 1, "tools/list", json!({}))
        .await;
    assert_eq!(on_a.status, 200, "{on_a:?}");
    let on_b = Raw::new(&b.url("local"), Some(TOKEN))
        .legacy(&session, 1, "tools/list", json!({}))
        .await;
    assert_eq!(on_b.status, 404, "{on_b:?}");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_bad_gateway_not_an_unknown_tool() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    upstream.shutdown().await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session_less = raw
        .modern(1, "tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    assert_eq!(session_less.status, 502, "{session_less:?}");
    assert_eq!(
        session_less.json()["error"]["code"],
        -31001,
        "{session_less:?}"
    );
}

#[tokio::test]
async fn an_expired_session_is_not_found() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = GatewayBuilder::new()
        .extra_toml("[sessions]\nttl_secs = 1")
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let fresh = raw.legacy(&session, 1, "tools/list", json!({})).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    tollgate_testkit::wait_for_async(std::time::Duration::from_secs(10), || {
        let raw = raw.clone();
        let session = session.clone();
        async move { raw.legacy(&session, 2, "ping", json!({})).await.status == 404 }
    })
    .await
    .expect("the session expires after its ttl");
}

#[tokio::test]
async fn concurrent_first_calls_all_wait_for_the_catalog_instead_of_answering_unknown_tool() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    info!("--- twenty calls to a listed tool before the gateway has seen any list");
    let calls = (0..20).map(|id| {
        let raw = raw.clone();
        async move {
            raw.modern(
                id,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "x"}}),
            )
            .await
        }
    });
    let mut handles = Vec::new();
    for call in calls {
        handles.push(tokio::spawn(call));
    }
    for handle in handles {
        let reply = handle.await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.json()["result"].is_object(),
            "a listed tool is never an unknown one: {reply:?}"
        );
    }
    assert_eq!(upstream.stats().calls("echo"), 20);
}

#[tokio::test]
async fn an_input_required_answer_is_audited_as_such_not_as_an_upstream_error() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let tool = "test_input_required_result_elicitation";
    let first = raw
        .post(
            modern_body(
                1,
                "tools/call",
                json!({"name": tool, "arguments": {}}),
                json!({"elicitation": {}}),
            ),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", tool),
            ],
        )
        .await;
    assert_eq!(
        first.json()["result"]["resultType"],
        "input_required",
        "{first:?}"
    );
    let (audit, _dir) = gateway.stop().await;
    let records = audit_records(&audit);
    let record = records
        .iter()
        .find(|r| r["tool"] == tool)
        .expect("the call is audited");
    assert_eq!(record["decision"], "allow", "{record}");
    let message = record["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("input_required") && !message.contains("error"),
        "{record}"
    );
}
