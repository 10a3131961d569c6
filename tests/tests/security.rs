//! The data plane's refusals: who may call, from where, with what. Every malformed request is
//! refused and never reaches the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tollgate_testkit::{Upstream, UpstreamOptions};
use tollgate_tests::{ALLOW_ALL, Gateway, GatewayBuilder, Raw, init_tracing, one_upstream};

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

/// The `id:` lines of an SSE body, in order.
fn sse_event_ids(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn resuming_a_stream_never_replays_an_unfiltered_tool_list() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let policy = r#"{"version":"1","default":"allow","hide":["run-rerun"]}"#;
    let gateway = one_upstream(&upstream.url, TOKEN, policy).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();

    tracing::info!("--- a filtered tools/list on an SSE stream with resumable event ids");
    let list = raw.legacy(&session, 1, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.body.contains("echo"), "{list:?}");
    assert!(!list.body.contains("run-rerun"), "{list:?}");
    let ids = sse_event_ids(&list.body);
    let first = ids
        .first()
        .expect("the upstream primes its streams")
        .clone();

    tracing::info!("--- resume the list's stream from its first event");
    let resumed = raw
        .client
        .get(&raw.url)
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status().as_u16(), 200);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.text())
        .await
        .expect("the replayed stream ends")
        .unwrap();
    assert!(
        body.contains("\"tools\""),
        "the upstream replayed the list's answer: {body}"
    );
    assert!(
        !body.contains("run-rerun"),
        "a hidden tool leaked through a resumed stream: {body}"
    );
}

/// A scripted legacy-era HTTP upstream for answers the conformance-shaped one never gives:
/// event streams that never answer, 5xx error pages, notifications it would run.
mod scripted {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};

    /// What the upstream answers to `tools/list` or `tools/call`.
    #[derive(Clone, Debug)]
    pub enum Answer {
        /// The normal answer: one tool (`work`) listed, a text result for a call.
        Normal,
        /// This HTTP status and no body (an error page the gateway does not forward).
        Status(u16),
        /// An event stream of `events` logging notifications of `pad` bytes each, then
        /// silence, never the answer.
        Stall { events: usize, pad: usize },
        /// A JSON answer whose head arrives and whose body never ends.
        TrickleJson,
    }

    pub struct Scripted {
        pub url: String,
        /// HTTP requests received.
        pub requests: Arc<AtomicU64>,
        /// `tools/call` messages received (requests or not).
        pub calls: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[derive(Clone)]
    struct Script {
        list: Answer,
        call: Answer,
        session_id: String,
        requests: Arc<AtomicU64>,
        calls: Arc<AtomicU64>,
    }

    type Reply = hyper::Response<BoxBody<Bytes, Infallible>>;

    impl Scripted {
        pub async fn start(list: Answer, call: Answer) -> Scripted {
            Self::start_with_session(list, call, "scripted-session").await
        }

        /// Like [`Scripted::start`], answering `initialize` with `session_id`.
        pub async fn start_with_session(list: Answer, call: Answer, session_id: &str) -> Scripted {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let script = Script {
                list,
                call,
                session_id: session_id.to_owned(),
                requests: Arc::default(),
                calls: Arc::default(),
            };
            let (requests, calls) = (script.requests.clone(), script.calls.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let script = script.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let script = script.clone();
                            async move { Ok::<_, Infallible>(answer(&script, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Scripted {
                url: format!("http://{addr}/mcp"),
                requests,
                calls,
                task,
            }
        }
    }

    fn json_reply(status: u16, body: Value) -> Reply {
        json_reply_in(status, body, "scripted-session")
    }

    fn json_reply_in(status: u16, body: Value, session: &str) -> Reply {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("mcp-session-id", session)
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .unwrap()
    }

    fn status_reply(status: u16) -> Reply {
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }

    fn stall(events: usize, pad: usize) -> Reply {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let padding = "x".repeat(pad);
            for _ in 0..events {
                let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "data": padding}});
                let event = Bytes::from(format!("data: {note}\n\n"));
                if tx.send(Ok(Frame::data(event))).await.is_err() {
                    return;
                }
            }
            // Keep the stream open without ever answering, until the reader goes away.
            tx.closed().await;
        });
        hyper::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
            .unwrap()
    }

    fn trickle_json() -> Reply {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(
                    b"{\"jsonrpc\":\"2.0\",",
                ))))
                .await;
            tx.closed().await;
        });
        hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
            .unwrap()
    }

    async fn answer(script: &Script, req: hyper::Request<Incoming>) -> Reply {
        script.requests.fetch_add(1, Ordering::SeqCst);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let Ok(message) = serde_json::from_slice::<Value>(&body) else {
            return status_reply(400);
        };
        let id = message.get("id").cloned();
        let method = message["method"].as_str().unwrap_or_default().to_owned();
        if method == "tools/call" {
            script.calls.fetch_add(1, Ordering::SeqCst);
        }
        let Some(id) = id else {
            // Notifications and responses.
            return status_reply(202);
        };
        let given = match method.as_str() {
            "tools/list" => &script.list,
            "tools/call" => &script.call,
            "initialize" => {
                return json_reply_in(
                    200,
                    json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                        "serverInfo": {"name": "scripted", "version": "0"}}}),
                    &script.session_id,
                );
            }
            _ => {
                return json_reply(
                    200,
                    json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32601, "message": "method not found"}}),
                );
            }
        };
        match given {
            Answer::Status(status) => status_reply(*status),
            Answer::Stall { events, pad } => stall(*events, *pad),
            Answer::TrickleJson => trickle_json(),
            Answer::Normal if method == "tools/list" => json_reply(
                200,
                json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                    {"name": "work", "inputSchema": {"type": "object"}}]}}),
            ),
            Answer::Normal => json_reply(
                200,
                json!({"jsonrpc": "2.0", "id": id, "result": {
                    "content": [{"type": "text", "text": "done"}]}}),
            ),
        }
    }
}

#[tokio::test]
async fn a_notification_that_names_a_request_method_is_refused_and_never_forwarded() {
    init_tracing();
    let upstream =
        scripted::Scripted::start(scripted::Answer::Normal, scripted::Answer::Normal).await;
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant(
            "g",
            TOKEN,
            "up",
            Some(r#"{"version":"1","default":"deny"}"#),
        )
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let before = upstream.requests.load(std::sync::atomic::Ordering::SeqCst);
    for method in ["tools/call", "tools/list", "resources/read"] {
        let notification = json!({"jsonrpc": "2.0", "method": method,
            "params": {"name": "work", "arguments": {}}});
        let reply = raw
            .post(
                notification.to_string(),
                &[
                    ("mcp-session-id", &session),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
            )
            .await;
        assert_eq!(reply.status, 400, "{method}: {reply:?}");
        assert_eq!(reply.json()["error"]["code"], -32600, "{reply:?}");
    }
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no unjudged tools/call reached the upstream"
    );
    assert_eq!(upstream.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    let cancelled = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 1}});
    let reply = raw
        .post(
            cancelled.to_string(),
            &[
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
        .await;
    assert_eq!(reply.status, 202, "MCP notifications still pass: {reply:?}");
}

#[tokio::test]
async fn a_tool_list_stream_that_never_answers_times_out() {
    init_tracing();
    let upstream = scripted::Scripted::start(
        scripted::Answer::Stall { events: 5, pad: 10 },
        scripted::Answer::Normal,
    )
    .await;
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .extra_toml("[limits]\nupstream_timeout_secs = 1")
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        raw.legacy(&session, 1, "tools/list", json!({})),
    )
    .await
    .expect("the gateway gives up on a stream that never answers");
    assert_eq!(list.status, 504, "{list:?}");
    let call = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        raw.legacy(
            &session,
            2,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        ),
    )
    .await
    .expect("the catalog refresh of a call gives up too");
    assert_eq!(call.status, 504, "{call:?}");
}

#[tokio::test]
async fn events_held_before_a_tool_list_answer_are_bounded() {
    init_tracing();
    // 48 MiB of events before an answer that never comes: the gateway stops holding them at
    // its bound, long before the (long) upstream timeout.
    let upstream = scripted::Scripted::start(
        scripted::Answer::Stall {
            events: 192,
            pad: 256 * 1024,
        },
        scripted::Answer::Normal,
    )
    .await;
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .extra_toml("[limits]\nupstream_timeout_secs = 60")
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        raw.legacy(&session, 1, "tools/list", json!({})),
    )
    .await
    .expect("the gateway stops holding events at its bound");
    assert_eq!(list.status, 502, "{list:?}");
}

#[tokio::test]
async fn a_call_answered_by_a_5xx_error_page_keeps_its_token() {
    init_tracing();
    let upstream =
        scripted::Scripted::start(scripted::Answer::Normal, scripted::Answer::Status(504)).await;
    let policy = r#"{"version":"1","default":"allow","all_tools":{"limits":[
        {"counter":"calls","window":"minute","max":1,"scope":"grant"}]}}"#;
    let clock = tollgate_quota::ManualClock::new(1_795_000_025_000);
    let gateway = GatewayBuilder::new()
        .quota_clock(&clock)
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(policy))
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let first = raw
        .legacy(
            &session,
            1,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    assert_eq!(first.status, 504, "{first:?}");
    let second = raw
        .legacy(
            &session,
            2,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    assert_eq!(
        second.json()["result"]["_meta"]["tollgate/decision"]["decision"],
        "rate_limited",
        "a proxy's 504 may come after the tool ran: unknown means spent: {second:?}"
    );
    assert_eq!(upstream.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_legacy_post_never_carries_unchecked_routing_or_resumption_headers_upstream() {
    let (upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}}});
    let reply = raw
        .post(
            body.to_string(),
            &[
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "run-rerun"),
                ("mcp-param-region", "elsewhere"),
                ("last-event-id", "1-0"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.stats().calls("echo"), 1);
    for header in [
        "mcp-method",
        "mcp-name",
        "mcp-param-region",
        "last-event-id",
    ] {
        assert_eq!(
            upstream.stats().last_header(header),
            None,
            "{header} means nothing on a legacy POST and is not forwarded"
        );
    }
}

#[tokio::test]
async fn a_client_cannot_mint_metric_label_values_with_made_up_methods() {
    let (_upstream, gateway) = setup().await;
    let raw = Raw::new(&gateway.url("main"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let made_up = "x-made-up-method-0123456789";
    let request = raw.legacy(&session, 1, made_up, json!({})).await;
    assert_eq!(request.status, 200, "passed through: {request:?}");
    let unsessioned = raw
        .post(
            json!({"jsonrpc": "2.0", "id": 2, "method": format!("{made_up}-2")}).to_string(),
            &[],
        )
        .await;
    assert_eq!(unsessioned.status, 400, "{unsessioned:?}");
    let metrics = reqwest::get(format!("{}/metrics", gateway.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(made_up), "{metrics}");
    assert!(
        metrics.contains(
            r#"tollgate_requests_total{server="main",method="other",decision="allow"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_json_answer_whose_body_never_ends_times_out() {
    init_tracing();
    let upstream =
        scripted::Scripted::start(scripted::Answer::Normal, scripted::Answer::TrickleJson).await;
    let gateway = GatewayBuilder::new()
        .http_upstream("up", &upstream.url)
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .extra_toml("[limits]\nupstream_timeout_secs = 1")
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let session = raw.initialize().await.unwrap();
    let call = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        raw.legacy(
            &session,
            1,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        ),
    )
    .await
    .expect("the gateway gives up on a body that never ends");
    assert_eq!(call.status, 504, "{call:?}");
}

#[tokio::test]
async fn an_upstream_session_id_too_long_to_seal_is_refused_at_initialize() {
    init_tracing();
    let long = "s".repeat(5000);
    let upstream = scripted::Scripted::start_with_session(
        scripted::Answer::Normal,
        scripted::Answer::Normal,
        &long,
    )
    .await;
    let gateway = one_upstream(&upstream.url, TOKEN, ALLOW_ALL).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let reply = raw.post(body.to_string(), &[]).await;
    assert_eq!(
        reply.status, 502,
        "a session the client could never use: {reply:?}"
    );
    assert!(reply.header("mcp-session-id").is_none());
}
