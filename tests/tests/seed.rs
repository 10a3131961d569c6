//! The seed's scenario end to end, driven by a real MCP client (rmcp) in both protocol eras: the
//! seed's policy JSON unchanged, an upstream exposing `run-rerun` and other tools; `run-rerun`
//! works ten times in a minute and the eleventh is refused with `isError` and `retry_after`;
//! other tools are refused by default; the audit file verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};
use tollgate_testkit::{Upstream, UpstreamOptions};
use tollgate_tests::{GatewayBuilder, SEED_POLICY, audit_records, init_tracing};
use tracing::info;

const TOKEN: &str = "seed-grant-token-0123456789";

async fn client(url: &str, modern: bool) -> RunningService<RoleClient, ()> {
    tollgate_tests::mcp_client(url, TOKEN, modern).await
}

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name);
    params.arguments = args.as_object().cloned();
    params
}

fn decision_meta(result: &CallToolResult) -> Value {
    let value = serde_json::to_value(result).unwrap();
    value["_meta"]["tollgate/decision"].clone()
}

fn text(result: &CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap();
    value["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn seed_scenario(modern: bool) {
    init_tracing();
    info!(
        "--- start an upstream with run-rerun and other tools, and the gateway with the seed policy"
    );
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    // Windows follow a clock the test holds: 5 s into a UTC minute, so all eleven calls fall in
    // one window whatever the wall clock says, and `retry_after` is known exactly.
    let minute_start_ms = 1_795_000_020_000; // a multiple of 60 000
    let clock = tollgate_quota::ManualClock::new(minute_start_ms + 5_000);
    let gateway = GatewayBuilder::new()
        .quota_clock(&clock)
        .http_upstream("http", &upstream.url)
        .grant("ci", TOKEN, "http", Some(SEED_POLICY))
        .start()
        .await
        .unwrap();
    let client = client(&gateway.url("http"), modern).await;

    info!("--- tools/list shows the upstream's tools (only `hide` filters in v1)");
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "run-rerun"), "{tools:?}");
    assert!(tools.iter().any(|t| t.name == "echo"));

    info!("--- run-rerun works ten times");
    for i in 0..10 {
        let result = client
            .call_tool(call("run-rerun", json!({"run_id": format!("run-{i}")})))
            .await
            .unwrap();
        assert_ne!(result.is_error, Some(true), "call {i}: {result:?}");
    }
    assert_eq!(upstream.stats().calls("run-rerun"), 10);

    info!(
        "--- the eleventh is refused with isError and retry_after, and never reaches the upstream"
    );
    let refused = client
        .call_tool(call("run-rerun", json!({"run_id": "run-11"})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    let text_refused = text(&refused);
    assert!(
        text_refused
            .starts_with("[POLICY DENIED] Rate limit of 10 per minute reached. Try again in "),
        "{text_refused}"
    );
    let meta = decision_meta(&refused);
    assert_eq!(meta["decision"], "rate_limited");
    assert_eq!(meta["rule_id"], "/tools/run-rerun/limits/run-rerun_rate");
    assert_eq!(meta["retry_after"], 55, "the minute window ends in 55 s");
    assert!(
        text_refused.ends_with("Try again in 55s."),
        "{text_refused}"
    );
    assert!(
        meta["policy_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(upstream.stats().calls("run-rerun"), 10);

    info!("--- the next minute window admits run-rerun again");
    clock.set(minute_start_ms + 60_000);
    let next = client
        .call_tool(call("run-rerun", json!({"run_id": "run-12"})))
        .await
        .unwrap();
    assert_ne!(next.is_error, Some(true), "{next:?}");
    assert_eq!(upstream.stats().calls("run-rerun"), 11);

    info!("--- any other tool is refused by default");
    let denied = client
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(decision_meta(&denied)["decision"], "default_deny");
    assert_eq!(decision_meta(&denied)["rule_id"], "(default deny)");
    assert_eq!(upstream.stats().calls("echo"), 0);

    info!("--- an unknown tool answers -32602");
    let unknown = client.call_tool(call("no-such-tool", json!({}))).await;
    let error = format!("{unknown:?}");
    assert!(unknown.is_err(), "{error}");
    assert!(
        error.contains("-32602") || error.contains("Unknown tool"),
        "{error}"
    );

    client.cancel().await.unwrap();
    info!("--- the audit file verifies and holds every decision");
    let (audit, _dir) = gateway.stop().await;
    let report = tollgate_gateway::audit::verify(&audit).unwrap();
    assert!(report.intact, "{report:?}");
    let records = audit_records(&audit);
    let decisions = |d: &str| {
        records
            .iter()
            .filter(|r| r["method"] == "tools/call" && r["decision"] == d)
            .count()
    };
    let summary: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r["method"], r["tool"], r["decision"]))
        .collect();
    assert_eq!(decisions("allow"), 11, "{summary:#?}");
    assert_eq!(decisions("rate_limited"), 1);
    assert_eq!(decisions("default_deny"), 1);
    assert_eq!(decisions("unknown_tool"), 1);
    assert!(records.iter().all(|r| {
        r["policy_digest"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:"))
    }));
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_seed_scenario_holds_for_a_legacy_client() {
    seed_scenario(false).await;
}

#[tokio::test]
async fn the_seed_scenario_holds_for_a_modern_client() {
    seed_scenario(true).await;
}
