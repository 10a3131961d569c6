//! Telemetry end to end: spans exported over OTLP to an in-process collector, W3C trace context
//! continued from the client and propagated to the HTTP upstream, and the Prometheus and health
//! endpoints on the admin listener.
//!
//! This file is its own test binary because the tracing subscriber is process-global.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tokio::sync::Mutex;
use tollgate_testkit::{Upstream, UpstreamOptions, wait_for_async};
use tollgate_tests::{GatewayBuilder, Raw, SEED_POLICY};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().await;
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_trace_context_reaches_the_upstream() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let guard = tollgate_telemetry::init(&tollgate_telemetry::TelemetryOptions {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..Default::default()
    })
    .unwrap();
    assert!(guard.exporting());

    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("ci", "telemetry-token-0123456789", "up", Some(SEED_POLICY))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some("telemetry-token-0123456789"));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run-rerun", "arguments": {"run_id": "7"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let reply = raw
        .post(
            body.to_string(),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "run-rerun"),
                ("traceparent", &traceparent),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // The upstream saw a traceparent of the same trace, with the gateway's own span as parent.
    let seen = upstream
        .stats()
        .last_header("traceparent")
        .expect("traceparent forwarded");
    assert!(seen.starts_with(&format!("00-{trace_id}-")), "{seen}");
    assert_ne!(
        seen, traceparent,
        "the gateway's span is the upstream's parent"
    );

    // The gateway's server span reaches the collector with its attributes (shutting the exporter
    // down flushes it).
    gateway.stop().await;
    drop(guard);
    let spans = collector.spans.clone();
    wait_for_async(Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            spans
                .lock()
                .await
                .iter()
                .any(|s| s.name == "tools/call run-rerun")
        }
    })
    .await
    .unwrap_or_else(|e| {
        let names: Vec<String> = collector
            .spans
            .try_lock()
            .map(|s| s.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        panic!("the gateway span is exported: {e}; spans seen: {names:?}")
    });
    let spans = collector.spans.lock().await;
    let span = spans
        .iter()
        .find(|s| s.name == "tools/call run-rerun")
        .unwrap();
    assert_eq!(
        hex(&span.trace_id),
        trace_id,
        "the client's trace continues"
    );
    assert_eq!(
        attribute(span, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(
        attribute(span, "mcp.tool.name").as_deref(),
        Some("run-rerun")
    );
    assert_eq!(
        attribute(span, "tollgate.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(attribute(span, "tollgate.grant").as_deref(), Some("ci"));
    assert!(attribute(span, "tollgate.policy.digest").is_some_and(|v| v.starts_with("sha256:")));
    drop(spans);

    server.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
