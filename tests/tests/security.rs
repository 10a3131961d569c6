//! The data plane's refusals: who may call, from where, with what. Every malformed request is
//! refused and never reaches the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tollgate_testkit::{Upstream, UpstreamOptions};
use tollgate_tests::{ALLOW_ALL, Gateway, GatewayBuilder, Raw, init_tracing};

const TOKEN: &str = "security-grant-token-0123456789";
const OTHER_TOKEN: &str = "other-server-token-0123456789";

async fn setup() -> (tollgate_testkit::RunningUpstream, Gateway) {
    init_tracing();
    let upstream =
        Upstream::start(UpstreamOptions::default().require_header("x-upstream-token", "s3cret"))
            .await
            .unwrap();
    let other = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = GatewayBuilder::new()
        .http_upstream_with_headers("main", &upstream.url, &[("X-Upstream-Token", "s3cret")])
        .http_upstream("other", &other.url)
        .grant("main", TOKEN, "main", Some(ALLOW_ALL))
        .grant("other", OTHER_TOKEN, "other", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap();
    // Keep `other` alive for the test's duration by leaking its handle into the gateway's lifetime.
    std::mem::forget(other);
    (upstream, gateway)
}

fn list_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string()
}

const MODERN_LIST: &[(&str, &str)] = &[
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/list"),
];

#[tokio::test]
async fn a_request_without_a_valid_token_gets_401_with_resource_metadata() {
    let (upstream, gateway) = setup().await;
    for token in [None, Some("wrong-token-wrong-token")] {
        let reply = Raw::new(&gateway.url("main"), token)
            .post(list_body(), MODERN_LIST)
            .await;
        assert_eq!(reply.status, 401, "{reply:?}");
        let challenge = reply.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("resource_metadata=")
                && challenge.contains("/.well-known/oauth-protected-resource/mcp/main"),
            "{challenge}"
        );
    }
    let metadata: serde_json::Value = reqwest::get(
        gateway
            .url("main")
            .replace(
                "/mcp/main",
                "/.well-known/oauth-protected-resource/mcp/main",
            )
            .to_string(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        metadata["resource"]
            .as_str()
            .unwrap()
            .ends_with("/mcp/main")
    );
    assert_eq!(upstream.stats().http_requests, 0);
}

#[tokio::test]
async fn a_grant_may_only_reach_its_own_server() {
    let (upstream, gateway) = setup().await;
    let reply = Raw::new(&gateway.url("main"), Some(OTHER_TOKEN))
        .post(list_body(), MODERN_LIST)
        .await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(upstream.stats().http_requests, 0);
}

#[tokio::test]
async fn foreign_origins_and_hosts_are_refused() {
    let (upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let reply = raw
        .post(
            list_body(),
            &[MODERN_LIST, &[("origin", "http://evil.example")]].concat(),
        )
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    let reply = raw
        .post(
            list_body(),
            &[MODERN_LIST, &[("host", "evil.example")]].concat(),
        )
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    let reply = raw
        .post(
            list_body(),
            &[MODERN_LIST, &[("origin", "http://localhost:6274")]].concat(),
        )
        .await;
    assert_eq!(reply.status, 200, "a loopback origin is allowed: {reply:?}");
    assert!(upstream.stats().http_requests >= 1);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_never_forwarded() {
    let (upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let cases: Vec<(&str, String, u16)> = vec![
        ("not json", "{nope".to_owned(), 400),
        (
            "duplicate keys",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"run-rerun"}}"#.to_owned(),
            400,
        ),
        ("batch", format!("[{}]", list_body()), 400),
        ("too deep", format!("{}{}", "[".repeat(200), "]".repeat(200)), 400),
        ("too large", format!("\"{}\"", "x".repeat(5 * 1024 * 1024)), 413),
        ("not json-rpc", r#"{"id":1,"method":"tools/list"}"#.to_owned(), 400),
    ];
    for (what, body, status) in cases {
        let reply = raw.post(body, MODERN_LIST).await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
    }
    let reply = raw
        .client
        .post(&raw.url)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .body(list_body())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 415);
    let reply = raw
        .client
        .post(&raw.url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(list_body())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 406);
    assert_eq!(
        upstream.stats().http_requests,
        0,
        "nothing malformed reached the upstream"
    );
}

#[tokio::test]
async fn the_clients_authorization_is_never_forwarded_and_upstream_headers_are_injected() {
    let (upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let reply = raw
        .modern(
            1,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        upstream.stats().last_header("x-upstream-token").as_deref(),
        Some("s3cret")
    );
    assert_eq!(upstream.stats().last_header("authorization"), None);
}

#[tokio::test]
async fn a_session_belongs_to_its_grant_and_a_forged_one_is_unknown() {
    let (_upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let ok = raw.legacy(&session, 1, "tools/list", json!({})).await;
    assert_eq!(ok.status, 200, "{ok:?}");

    let mut forged = session.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let reply = raw.legacy(&forged, 2, "tools/list", json!({})).await;
    assert_eq!(reply.status, 404, "{reply:?}");

    let missing = raw
        .post(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string(),
            &[],
        )
        .await;
    assert_eq!(
        missing.status, 400,
        "a legacy request without a session: {missing:?}"
    );
}
