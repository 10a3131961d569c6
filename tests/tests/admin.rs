//! The admin listener: Prometheus metrics by method and decision, upstream latency, health and
//! readiness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tollgate_testkit::{Upstream, UpstreamOptions};
use tollgate_tests::{GatewayBuilder, Raw, SEED_POLICY, init_tracing};

#[tokio::test]
async fn metrics_count_requests_by_method_and_decision() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("ci", "admin-token-0123456789", "up", Some(SEED_POLICY))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some("admin-token-0123456789"));
    let ok = raw
        .modern(
            1,
            "tools/call",
            json!({"name": "run-rerun", "arguments": {"run_id": "1"}}),
        )
        .await;
    assert_eq!(ok.status, 200);
    let denied = raw
        .modern(2, "tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    assert_eq!(denied.json()["result"]["isError"], true);
    let unauthorized = Raw::new(&gateway.url("up"), None)
        .modern(3, "tools/list", json!({}))
        .await;
    assert_eq!(unauthorized.status, 401);

    let metrics = reqwest::get(format!("{}/metrics", gateway.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"tollgate_requests_total{server="up",method="tools/call",decision="allow"} 1"#,
        r#"tollgate_requests_total{server="up",method="tools/call",decision="default_deny"} 1"#,
        r#"tollgate_requests_total{server="up",method="-",decision="unauthorized"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(
        metrics.contains(r#"tollgate_upstream_latency_seconds_count{server="up"}"#),
        "{metrics}"
    );
    for path in ["/healthz", "/readyz"] {
        let status = reqwest::get(format!("{}{path}", gateway.admin_url()))
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{path}");
    }
}
