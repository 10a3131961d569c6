//! Real-process tests of the stdio upstream against `tests/fixtures/stdio_server.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, StatusCode};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::{Value, json};
use tollgate_telemetry::Metrics;
use tollgate_telemetry::metrics::{ServerLabels, UpstreamErrorLabels};
use tracing::info;

use super::{StdioOptions, StdioUpstream};
use crate::error::ProxyError;
use crate::upstream::{
    MessageKind, OutboundRequest, ReplyBody, SessionRef, SseStream, UpstreamReply,
};

const SERVER: &str = "fixture";
const WAIT: Duration = Duration::from_secs(15);

fn options(extra: &[&str]) -> StdioOptions {
    let mut args = vec![
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stdio_server.py"
        )
        .to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    StdioOptions {
        server: SERVER.into(),
        command: "python3".into(),
        args,
        env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
        idle_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        node_id: "node-1".into(),
    }
}

fn upstream(options: StdioOptions) -> (StdioUpstream, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (StdioUpstream::new(options, metrics.clone()), metrics)
}

fn labels() -> ServerLabels {
    ServerLabels {
        server: SERVER.into(),
    }
}

fn errors(metrics: &Metrics, kind: &str) -> u64 {
    metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            server: SERVER.into(),
            kind: kind.into(),
        })
        .get()
}

fn children_gauge(metrics: &Metrics) -> i64 {
    metrics.stdio_children.get_or_create(&labels()).get()
}

async fn send(
    up: &StdioUpstream,
    session: Option<&SessionRef>,
    kind: MessageKind,
    method: Option<&str>,
    body: impl Into<Bytes>,
) -> Result<UpstreamReply, ProxyError> {
    let request = OutboundRequest {
        body: body.into(),
        kind,
        method,
        session,
        headers: HeaderMap::new(),
    };
    tokio::time::timeout(WAIT, up.post(request))
        .await
        .expect("post timed out")
}

async fn call(
    up: &StdioUpstream,
    session: Option<&SessionRef>,
    id: Value,
    tool: &str,
    arguments: Value,
) -> Result<UpstreamReply, ProxyError> {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments}});
    send(
        up,
        session,
        MessageKind::Request,
        Some("tools/call"),
        body.to_string(),
    )
    .await
}

fn json_body(reply: UpstreamReply) -> Value {
    assert_eq!(reply.status, StatusCode::OK);
    match reply.body {
        ReplyBody::Json(bytes) => serde_json::from_slice(&bytes).unwrap(),
        other => panic!("expected a JSON answer, got {other:?}"),
    }
}

fn sse_body(reply: UpstreamReply) -> SseStream {
    match reply.body {
        ReplyBody::Sse(stream) => stream,
        other => panic!("expected an SSE answer, got {other:?}"),
    }
}

async fn next_event(stream: &mut SseStream) -> Value {
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
        .expect("stream failed");
    serde_json::from_str(&event.data).unwrap()
}

async fn open_session(up: &StdioUpstream) -> SessionRef {
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}});
    let reply = send(
        up,
        None,
        MessageKind::Request,
        Some("initialize"),
        body.to_string(),
    )
    .await
    .unwrap();
    let local_id = reply
        .local_session
        .expect("a stdio initialize names its session");
    let answer = json_body(reply);
    assert_eq!(answer["id"], json!(0));
    assert_eq!(
        answer["result"]["serverInfo"]["name"],
        "tollgate-stdio-fixture"
    );
    let session = SessionRef {
        upstream_session: None,
        local_id: Some(local_id),
    };
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let reply = send(
        up,
        Some(&session),
        MessageKind::NoAnswer,
        Some("notifications/initialized"),
        initialized,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    session
}

/// The fixture's `state` tool: pid, initialize count, initialized flag, cancelled ids.
async fn state(up: &StdioUpstream, session: Option<&SessionRef>) -> Value {
    json_body(
        call(up, session, json!("state"), "state", json!({}))
            .await
            .unwrap(),
    )["result"]
        .clone()
}

fn pid_of(state: &Value) -> i32 {
    i32::try_from(state["pid"].as_i64().unwrap()).unwrap()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_session_gets_its_own_child_process() {
    let (up, metrics) = upstream(options(&[]));
    info!("--- open two sessions");
    let a = open_session(&up).await;
    let b = open_session(&up).await;
    assert_ne!(a.local_id, b.local_id);
    let (state_a, state_b) = (state(&up, Some(&a)).await, state(&up, Some(&b)).await);
    assert_ne!(pid_of(&state_a), pid_of(&state_b));
    for state in [&state_a, &state_b] {
        assert_eq!(state["initializeCount"], 1);
        assert_eq!(state["initialized"], true);
    }
    assert_eq!(children_gauge(&metrics), 2);
    info!("--- shut down");
    up.shutdown().await;
    assert_eq!(children_gauge(&metrics), 0);
    assert!(!alive(pid_of(&state_a)) && !alive(pid_of(&state_b)));
}

#[tokio::test]
async fn concurrent_requests_with_one_client_id_are_kept_apart_on_the_shared_child() {
    let (up, _metrics) = upstream(options(&[]));
    let (first, second) = tokio::join!(
        call(&up, None, json!(1), "echo", json!({"text": "first"})),
        call(&up, None, json!(1), "echo", json!({"text": "second"})),
    );
    let (first, second) = (json_body(first.unwrap()), json_body(second.unwrap()));
    assert_eq!(first["id"], json!(1));
    assert_eq!(second["id"], json!(1));
    assert_eq!(first["result"]["content"][0]["text"], "first");
    assert_eq!(second["result"]["content"][0]["text"], "second");
    let (seen_a, seen_b) = (
        &first["result"]["receivedId"],
        &second["result"]["receivedId"],
    );
    assert!(seen_a.is_u64() && seen_b.is_u64(), "{seen_a} {seen_b}");
    assert_ne!(seen_a, seen_b, "the child saw the same id twice");
    assert_eq!(
        first["result"]["pid"], second["result"]["pid"],
        "one shared child"
    );
    up.shutdown().await;
}

#[tokio::test]
async fn ids_keep_their_form_and_params_reach_the_child_byte_for_byte() {
    let (up, _metrics) = upstream(options(&[]));
    let params = r#"{"name":"echo", "arguments":{"text":"x"} ,"requestState":"q\u0041z 1.50e0"}"#;
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"7\",\"method\":\"tools/call\",\"params\":{params}}}"
    );
    let answer = json_body(
        send(&up, None, MessageKind::Request, Some("tools/call"), body)
            .await
            .unwrap(),
    );
    assert_eq!(answer["id"], json!("7"), "a string id stays a string");
    let raw = answer["result"]["raw"].as_str().unwrap();
    assert!(raw.contains(params), "{raw}");
    info!("--- newlines between tokens do not split the line");
    let body = "{\"jsonrpc\":\"2.0\",\r\n\"id\":7,\n\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\n\"arguments\":{\"text\":\"a\\nb\"}}}";
    let answer = json_body(
        send(&up, None, MessageKind::Request, Some("tools/call"), body)
            .await
            .unwrap(),
    );
    assert_eq!(answer["id"], json!(7), "a number id stays a number");
    assert_eq!(answer["result"]["content"][0]["text"], "a\nb");
    up.shutdown().await;
}

#[tokio::test]
async fn progress_and_logging_arrive_as_events_before_the_response() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let body = json!({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call",
        "params": {"name": "slow", "arguments": {}, "_meta": {"progressToken": "tok-1"}}});
    let reply = send(
        &up,
        Some(&session),
        MessageKind::Request,
        Some("tools/call"),
        body.to_string(),
    )
    .await
    .unwrap();
    let mut stream = sse_body(reply);
    for step in [1, 2] {
        let progress = next_event(&mut stream).await;
        assert_eq!(progress["method"], "notifications/progress");
        assert_eq!(progress["params"]["progressToken"], "tok-1");
        assert_eq!(progress["params"]["progress"], step);
    }
    let log = next_event(&mut stream).await;
    assert_eq!(log["method"], "notifications/message");
    let response = next_event(&mut stream).await;
    assert_eq!(response["id"], "call-1");
    let seen = &response["result"]["receivedToken"];
    assert!(seen.is_u64(), "the child saw a gateway token, not {seen}");
    assert!(
        tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .is_none()
    );
    up.shutdown().await;
}

#[tokio::test]
async fn elicitation_goes_to_the_client_and_its_answer_back_to_the_child() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let reply = call(&up, Some(&session), json!(5), "elicit", json!({}))
        .await
        .unwrap();
    let mut stream = sse_body(reply);
    let request = next_event(&mut stream).await;
    assert_eq!(request["method"], "elicitation/create");
    let answer = json!({"jsonrpc": "2.0", "id": request["id"],
                        "result": {"action": "accept", "content": {"name": "Ada"}}});
    let reply = send(
        &up,
        Some(&session),
        MessageKind::NoAnswer,
        None,
        answer.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let response = next_event(&mut stream).await;
    assert_eq!(response["id"], 5);
    let text = response["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap()["content"]["name"],
        "Ada"
    );
    up.shutdown().await;
}

#[tokio::test]
async fn server_messages_with_no_single_request_wait_for_the_get_stream() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    info!("--- hold one request in flight");
    let mut elicit = sse_body(
        call(&up, Some(&session), json!(1), "elicit", json!({}))
            .await
            .unwrap(),
    );
    let request = next_event(&mut elicit).await;
    info!("--- a second request's log message has two candidates: it goes to the GET backlog");
    let slow = json_body(
        call(&up, Some(&session), json!(2), "slow", json!({}))
            .await
            .unwrap(),
    );
    assert_eq!(slow["id"], 2);
    let mut get = sse_body(up.get_stream(&session).await.unwrap());
    let log = next_event(&mut get).await;
    assert_eq!(log["method"], "notifications/message");
    info!("--- finish the first request");
    let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {"action": "decline"}});
    send(
        &up,
        Some(&session),
        MessageKind::NoAnswer,
        None,
        answer.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut elicit).await["id"], 1);
    up.shutdown().await;
}

#[tokio::test]
async fn a_crashed_session_child_is_restarted_and_reinitialised() {
    let (up, metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let before = pid_of(&state(&up, Some(&session)).await);
    info!("--- crash the child: the request in flight fails");
    let error = call(&up, Some(&session), json!(9), "crash", json!({}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, ProxyError::UpstreamUnavailable(_)),
        "{error:?}"
    );
    info!("--- the next request is served by a fresh, initialised child");
    let after = state(&up, Some(&session)).await;
    assert_ne!(pid_of(&after), before);
    assert_eq!(after["initializeCount"], 1);
    assert_eq!(after["initialized"], true);
    assert_eq!(metrics.stdio_restarts.get_or_create(&labels()).get(), 1);
    assert!(!alive(before));
    assert_eq!(children_gauge(&metrics), 1);
    up.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_ends_and_its_child_stops() {
    let mut options = options(&[]);
    options.idle_timeout = Duration::from_millis(300);
    let (up, metrics) = upstream(options);
    let session = open_session(&up).await;
    let pid = pid_of(&state(&up, Some(&session)).await);
    eventually("the idle child to stop", || async { !alive(pid) }).await;
    let error = state_error(&up, &session).await;
    assert!(matches!(error, ProxyError::SessionNotFound), "{error:?}");
    assert_eq!(children_gauge(&metrics), 0);
}

async fn state_error(up: &StdioUpstream, session: &SessionRef) -> ProxyError {
    call(up, Some(session), json!(1), "state", json!({}))
        .await
        .err()
        .unwrap()
}

#[tokio::test]
async fn a_deleted_session_stops_its_child() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let pid = pid_of(&state(&up, Some(&session)).await);
    assert_eq!(up.delete(&session).await.unwrap(), StatusCode::OK);
    eventually("the deleted session's child to stop", || async {
        !alive(pid)
    })
    .await;
    assert!(matches!(
        state_error(&up, &session).await,
        ProxyError::SessionNotFound
    ));
    assert!(matches!(
        up.delete(&session).await,
        Err(ProxyError::SessionNotFound)
    ));
    assert!(matches!(
        up.get_stream(&session).await,
        Err(ProxyError::SessionNotFound)
    ));
}

#[tokio::test]
async fn shutdown_sends_sigterm_to_a_child_that_ignores_stdin_close() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("term");
    let (up, metrics) = upstream(options(&[
        "--ignore-eof",
        "--marker",
        marker.to_str().unwrap(),
    ]));
    let session = open_session(&up).await;
    let pid = pid_of(&state(&up, Some(&session)).await);
    up.shutdown().await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "TERM");
    assert!(!alive(pid), "the child is reaped");
    assert_eq!(children_gauge(&metrics), 0);
    assert!(matches!(
        call(&up, None, json!(1), "echo", json!({})).await,
        Err(ProxyError::UpstreamUnavailable(_))
    ));
}

#[tokio::test]
async fn a_child_that_exits_on_stdin_close_gets_no_signal() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("term");
    let (up, _metrics) = upstream(options(&["--marker", marker.to_str().unwrap()]));
    let pid = pid_of(&state(&up, None).await);
    up.shutdown().await;
    assert!(!alive(pid));
    assert!(!marker.exists(), "closing stdin was enough");
}

#[tokio::test]
async fn a_stdout_line_that_is_not_json_is_skipped() {
    let (up, metrics) = upstream(options(&[]));
    let answer = json_body(
        call(
            &up,
            None,
            json!(3),
            "echo",
            json!({"text": "ok", "garbage": true}),
        )
        .await
        .unwrap(),
    );
    assert_eq!(answer["result"]["content"][0]["text"], "ok");
    assert_eq!(errors(&metrics, "protocol"), 1);
    up.shutdown().await;
}

#[tokio::test]
async fn a_missing_command_is_reported_unavailable_and_counted() {
    let mut options = options(&[]);
    options.command = "/nonexistent/tollgate-no-such-server".into();
    let (up, metrics) = upstream(options);
    let error = call(&up, None, json!(1), "echo", json!({}))
        .await
        .err()
        .unwrap();
    match error {
        ProxyError::UpstreamUnavailable(message) => {
            assert!(
                message.contains("/nonexistent/tollgate-no-such-server"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(errors(&metrics, "spawn"), 1);
    assert_eq!(children_gauge(&metrics), 0);
}

#[tokio::test]
async fn a_timed_out_request_is_cancelled_at_the_child() {
    let mut options = options(&[]);
    options.request_timeout = Duration::from_millis(500);
    let (up, metrics) = upstream(options);
    let error = call(&up, None, json!("w"), "wait", json!({}))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ProxyError::UpstreamTimeout), "{error:?}");
    assert_eq!(errors(&metrics, "timeout"), 1);
    eventually("the child to see the cancellation", || async {
        let cancelled = state(&up, None).await["cancelled"].clone();
        cancelled
            .as_array()
            .is_some_and(|ids| ids.len() == 1 && ids[0].is_u64())
    })
    .await;
    up.shutdown().await;
}

#[tokio::test]
async fn dropping_a_stream_before_its_response_cancels_the_request() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let mut stream = sse_body(
        call(&up, Some(&session), json!(4), "elicit", json!({}))
            .await
            .unwrap(),
    );
    let request = next_event(&mut stream).await;
    assert_eq!(request["method"], "elicitation/create");
    drop(stream);
    eventually("the child to see the cancellation", || async {
        let cancelled = state(&up, Some(&session)).await["cancelled"].clone();
        cancelled.as_array().is_some_and(|ids| ids.len() == 1)
    })
    .await;
    up.shutdown().await;
}

#[tokio::test]
async fn a_client_cancellation_names_the_id_the_child_saw() {
    let (up, _metrics) = upstream(options(&[]));
    let session = open_session(&up).await;
    let waiting = call(&up, Some(&session), json!("mine"), "wait", json!({}));
    let cancel = async {
        // The cancellation can only be rewritten once the request is in flight; retry until the
        // child has seen it.
        eventually("the child to see the client's cancellation", || async {
            let body = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                              "params": {"requestId": "mine"}});
            send(
                &up,
                Some(&session),
                MessageKind::NoAnswer,
                Some("notifications/cancelled"),
                body.to_string(),
            )
            .await
            .unwrap();
            let cancelled = state(&up, Some(&session)).await["cancelled"].clone();
            cancelled
                .as_array()
                .is_some_and(|ids| ids.len() == 1 && ids[0].is_u64())
        })
        .await;
    };
    tokio::select! {
        result = waiting => panic!("the wait tool answered: {:?}", result.map(|r| r.status)),
        () = cancel => {}
    }
    up.shutdown().await;
}

#[tokio::test]
async fn children_are_capped_per_upstream() {
    let metrics = Arc::new(Metrics::new());
    let up = StdioUpstream::with_limit(options(&[]), metrics.clone(), 1);
    let _session = open_session(&up).await;
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}});
    let error = send(
        &up,
        None,
        MessageKind::Request,
        Some("initialize"),
        body.to_string(),
    )
    .await
    .err()
    .unwrap();
    match error {
        ProxyError::UpstreamUnavailable(message) => assert!(message.contains("limit"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(errors(&metrics, "capacity"), 1);
    up.shutdown().await;
}

#[tokio::test]
async fn an_unknown_session_is_not_found() {
    let (up, _metrics) = upstream(options(&[]));
    let session = SessionRef {
        upstream_session: None,
        local_id: Some(12345),
    };
    assert!(matches!(
        state_error(&up, &session).await,
        ProxyError::SessionNotFound
    ));
    assert_eq!(up.children(), 0, "nothing was spawned");
}
