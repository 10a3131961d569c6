//! Interop with software nobody here wrote: the Python MCP SDK (`mcp` 2.3) client, in the legacy
//! era and in the modern era, through Tollgate to three upstreams:
//!
//! ```text
//! python client.py (legacy | auto) ─▶ tollgate ─┬─▶ server-everything (node, Streamable HTTP, legacy only)
//!                                               ├─▶ a Python MCPServer  (Streamable HTTP, dual-era)
//!                                               └─▶ mcp-server-time     (stdio child, dual-era)
//! ```
//!
//! The 2.3 client picks the era itself: `ClientSession.initialize()` is the legacy handshake;
//! the SDK's `mode="auto"` policy (`negotiate_auto`) probes `server/discover` at 2026-07-28 and
//! falls back to `initialize` on anything that is not positive modern evidence. Each run lists
//! the tools (filtered by a policy's `hide`), makes an allowed call and a denied one (`isError`,
//! `[POLICY DENIED]`, `_meta["tollgate/decision"]`), and for server-everything exercises SSE
//! pass-through both ways: progress notifications of its long-running operation, and a sampling
//! request the Python client answers. The script prints one JSON line; the assertions are here.
//!
//! Tools come from `scripts/tools-env.sh`; see [`tollgate_tests::interop::tools`] for the skip
//! and fail rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::interop::{
    Process, free_loopback_port, interop_script, run_python_client, tool_file, tools,
    wait_until_listening,
};
use tollgate_tests::{Gateway, GatewayBuilder, audit_records, init_tracing};
use tracing::info;

const TOKEN: &str = "interop-python-grant-token-0123456789";

/// Runs the legacy and the auto (modern-first) client concurrently with the same calls.
async fn both_clients(python: &Path, url: &str, sampling: bool, calls: Value) -> (Value, Value) {
    let plan = |mode: &str| json!({"url": url, "token": TOKEN, "mode": mode, "sampling": sampling, "calls": calls});
    let (legacy_plan, auto_plan) = (plan("legacy"), plan("auto"));
    let (legacy, auto) = tokio::join!(
        run_python_client(python, &legacy_plan),
        run_python_client(python, &auto_plan),
    );
    let (legacy, auto) = (legacy.unwrap(), auto.unwrap());
    info!(%legacy, %auto, "python clients finished");
    (legacy, auto)
}

fn call<'a>(out: &'a Value, name: &str) -> &'a Value {
    out["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no result for {name}: {out}"))
}

fn tool_names(out: &Value) -> Vec<String> {
    out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

fn assert_allowed(out: &Value, name: &str, text_contains: &str) {
    let result = call(out, name);
    assert_eq!(result["is_error"], false, "{name}: {result}");
    assert!(
        result["text"].as_str().unwrap().contains(text_contains),
        "{name}: {result}"
    );
}

fn assert_denied(out: &Value, name: &str, decision: &str, rule_id: &str) {
    let result = call(out, name);
    assert_eq!(result["is_error"], true, "{name}: {result}");
    assert!(
        result["text"]
            .as_str()
            .unwrap()
            .starts_with("[POLICY DENIED]"),
        "{name}: {result}"
    );
    let meta = &result["meta"]["tollgate/decision"];
    assert_eq!(meta["decision"], decision, "{name}: {result}");
    assert_eq!(meta["rule_id"], rule_id, "{name}: {result}");
    assert!(
        meta["policy_digest"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{name}: {result}"
    );
}

/// A hidden tool is unknown: the gateway answers JSON-RPC -32602, which the SDK raises.
fn assert_unknown(out: &Value, name: &str) {
    let result = call(out, name);
    assert_eq!(result["error"]["code"], -32602, "{name}: {result}");
}

fn count_decisions(gateway_audit: &Path, decision: &str) -> usize {
    audit_records(gateway_audit)
        .iter()
        .filter(|r| r["method"] == "tools/call" && r["decision"] == decision)
        .count()
}

async fn stop_and_verify_audit(gateway: Gateway) -> (PathBuf, tempfile::TempDir) {
    let (audit, dir) = gateway.stop().await;
    let report = tollgate_gateway::audit::verify(&audit).unwrap();
    assert!(report.intact, "{report:?}");
    (audit, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_in_both_eras_reach_server_everything_through_tollgate() {
    init_tracing();
    let test = "python_clients_in_both_eras_reach_server_everything_through_tollgate";
    let Some(found) = tools(
        test,
        &["TOLLGATE_NODE22", "TOLLGATE_EVERYTHING", "TOLLGATE_PY"],
    ) else {
        return;
    };
    let (node, everything, python) = (&found[0], &found[1], &found[2]);

    info!(
        "--- start server-everything (it binds every interface; the port is a free loopback one)"
    );
    let port = free_loopback_port();
    let mut cmd = Command::new(node);
    cmd.arg(everything)
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    let server = Process::spawn("server-everything", cmd).unwrap();
    if let Err(e) = wait_until_listening(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(30),
    )
    .await
    {
        panic!("{e:#}; stderr:\n{}", server.stderr());
    }

    info!("--- tollgate before it: get-env denied, gzip-file-as-resource hidden, the rest allowed");
    let policy = json!({"version": "1", "default": "allow",
        "hide": ["gzip-file-as-resource"],
        "tools": {"get-env": {"deny_if": [{"conditions": [],
            "on_deny": "environment variables are off limits"}]}}});
    let gateway = GatewayBuilder::new()
        .http_upstream("everything", &format!("http://127.0.0.1:{port}/mcp"))
        .grant("python", TOKEN, "everything", Some(&policy.to_string()))
        .start()
        .await
        .unwrap();

    info!("--- the legacy and the auto client, concurrently");
    let calls = json!([
        {"name": "echo", "arguments": {"message": "through tollgate"}},
        {"name": "get-sum", "arguments": {"a": 2, "b": 3}},
        {"name": "get-env", "arguments": {}},
        {"name": "gzip-file-as-resource", "arguments": {}},
        {"name": "trigger-long-running-operation", "arguments": {"duration": 1, "steps": 3},
         "progress": true},
        {"name": "trigger-sampling-request", "arguments": {"prompt": "say hi", "maxTokens": 10}},
    ]);
    let (legacy, auto) = both_clients(python, &gateway.url("everything"), true, calls).await;

    for (mode, out) in [("legacy", &legacy), ("auto", &auto)] {
        info!(mode, "--- checking");
        // server-everything is legacy only: the auto client's discover probe must fall back.
        assert_eq!(out["era"], "legacy", "{mode}: {out}");
        assert_eq!(out["protocol_version"], "2025-11-25", "{mode}: {out}");
        assert_eq!(
            out["server_name"], "mcp-servers/everything",
            "{mode}: {out}"
        );
        let names = tool_names(out);
        for visible in [
            "echo",
            "get-sum",
            "get-env",
            "trigger-long-running-operation",
        ] {
            assert!(
                names.iter().any(|n| n == visible),
                "{mode}: {visible} in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n == "gzip-file-as-resource"),
            "{mode}: hidden tool listed: {names:?}"
        );
        assert_allowed(out, "echo", "Echo: through tollgate");
        assert_allowed(out, "get-sum", "5");
        assert_denied(out, "get-env", "deny", "/tools/get-env/deny_if/0");
        assert!(
            !call(out, "get-env")["text"]
                .as_str()
                .unwrap()
                .contains("PATH"),
            "a denied call leaks nothing"
        );
        assert_unknown(out, "gzip-file-as-resource");

        // SSE pass-through, server to client: three progress notifications on the call's stream.
        let long = call(out, "trigger-long-running-operation");
        assert_eq!(long["is_error"], false, "{mode}: {long}");
        assert_eq!(
            long["progress"],
            json!([[1.0, 3.0, null], [2.0, 3.0, null], [3.0, 3.0, null]]),
            "{mode}: {long}"
        );
        // Both ways: a sampling request on the call's stream, answered by the client's POST.
        assert_eq!(out["sampling_requests"], 1, "{mode}: {out}");
        assert_allowed(
            out,
            "trigger-sampling-request",
            "sampled by the tollgate interop client",
        );
    }

    let (audit, _dir) = stop_and_verify_audit(gateway).await;
    assert_eq!(count_decisions(&audit, "deny"), 2);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_in_both_eras_reach_a_python_mcpserver_through_tollgate() {
    init_tracing();
    let test = "python_clients_in_both_eras_reach_a_python_mcpserver_through_tollgate";
    let Some(found) = tools(test, &["TOLLGATE_PY"]) else {
        return;
    };
    let python = &found[0];

    info!("--- start the MCPServer (tests/interop/mcpserver_app.py) on 127.0.0.1:0");
    let mut cmd = Command::new(python);
    cmd.arg(interop_script("mcpserver_app.py"));
    let mut server = Process::spawn("mcpserver_app.py", cmd).unwrap();
    let url = server
        .line_with_prefix("listening ", Duration::from_secs(60))
        .await
        .unwrap();

    info!("--- tollgate before it: run-rerun allowed, default deny, debug-dump hidden");
    let policy = json!({"version": "1", "default": "deny", "hide": ["debug-dump"],
        "tools": {"run-rerun": {}}});
    let gateway = GatewayBuilder::new()
        .http_upstream("py", &url)
        .grant("python", TOKEN, "py", Some(&policy.to_string()))
        .start()
        .await
        .unwrap();

    let calls = json!([
        {"name": "run-rerun", "arguments": {"run_id": "run-7"}, "progress": true},
        {"name": "delete-branch", "arguments": {"branch": "main"}},
        {"name": "debug-dump", "arguments": {}},
    ]);
    let (legacy, auto) = both_clients(python, &gateway.url("py"), false, calls).await;

    // The MCPServer is dual-era: the auto client ends up modern, through the gateway.
    assert_eq!(legacy["era"], "legacy", "{legacy}");
    assert_eq!(legacy["protocol_version"], "2025-11-25", "{legacy}");
    assert_eq!(auto["era"], "modern", "{auto}");
    assert_eq!(auto["protocol_version"], "2026-07-28", "{auto}");
    for (mode, out) in [("legacy", &legacy), ("auto", &auto)] {
        info!(mode, "--- checking");
        assert_eq!(
            out["server_name"], "tollgate-interop-mcpserver",
            "{mode}: {out}"
        );
        assert_eq!(
            tool_names(out),
            ["run-rerun", "delete-branch"],
            "{mode}: {out}"
        );
        assert_allowed(out, "run-rerun", "rerun of run-7 queued");
        assert_eq!(
            call(out, "run-rerun")["progress"],
            json!([[1.0, 2.0, "queued"], [2.0, 2.0, "started"]]),
            "{mode}: {out}"
        );
        assert_denied(out, "delete-branch", "default_deny", "(default deny)");
        assert_unknown(out, "debug-dump");
    }

    let (audit, _dir) = stop_and_verify_audit(gateway).await;
    assert_eq!(count_decisions(&audit, "allow"), 2);
    assert_eq!(count_decisions(&audit, "default_deny"), 2);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_in_both_eras_reach_mcp_server_time_over_stdio_through_tollgate() {
    init_tracing();
    let test = "python_clients_in_both_eras_reach_mcp_server_time_over_stdio_through_tollgate";
    let Some(found) = tools(test, &["TOLLGATE_PY"]) else {
        return;
    };
    let python = &found[0];
    let Some(time_server) = tool_file(test, python.parent().unwrap().join("mcp-server-time"))
    else {
        return;
    };

    info!("--- tollgate runs mcp-server-time as a stdio upstream");
    let policy = json!({"version": "1", "default": "allow", "hide": ["convert_time"],
        "tools": {"get_current_time": {"deny_if": [{"conditions": [
            {"path": "args.timezone", "op": "eq", "value": "Asia/Tokyo"}],
            "on_deny": "Tokyo is out of scope"}]}}});
    let gateway = GatewayBuilder::new()
        .stdio_upstream(
            "time",
            time_server.to_str().unwrap(),
            &["--local-timezone", "UTC"],
        )
        .grant("python", TOKEN, "time", Some(&policy.to_string()))
        .start()
        .await
        .unwrap();

    let calls = json!([
        {"name": "get_current_time", "arguments": {"timezone": "UTC"}},
        {"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}},
        {"name": "convert_time", "arguments": {"source_timezone": "UTC", "time": "12:00",
            "target_timezone": "Europe/Paris"}},
    ]);
    let (legacy, auto) = both_clients(python, &gateway.url("time"), false, calls).await;

    assert_eq!(legacy["era"], "legacy", "{legacy}");
    assert_eq!(auto["era"], "modern", "{auto}");
    assert_eq!(auto["protocol_version"], "2026-07-28", "{auto}");
    for (mode, out) in [("legacy", &legacy), ("auto", &auto)] {
        info!(mode, "--- checking");
        assert_eq!(out["server_name"], "mcp-time", "{mode}: {out}");
        assert_eq!(tool_names(out), ["get_current_time"], "{mode}: {out}");
        let calls = out["calls"].as_array().unwrap();
        let allowed = &calls[0];
        assert_eq!(allowed["is_error"], false, "{mode}: {allowed}");
        assert_eq!(
            allowed["structured"]["timezone"], "UTC",
            "{mode}: {allowed}"
        );
        let denied = &calls[1];
        assert_eq!(denied["is_error"], true, "{mode}: {denied}");
        assert!(
            denied["text"]
                .as_str()
                .unwrap()
                .starts_with("[POLICY DENIED]"),
            "{mode}: {denied}"
        );
        assert_eq!(
            denied["meta"]["tollgate/decision"]["rule_id"], "/tools/get_current_time/deny_if/0",
            "{mode}: {denied}"
        );
        assert_unknown(out, "convert_time");
    }

    let (audit, _dir) = stop_and_verify_audit(gateway).await;
    assert_eq!(count_decisions(&audit, "deny"), 2);
    assert_eq!(count_decisions(&audit, "allow"), 2);
}
