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
use tollgate_mcp::Era;
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
        era: if session.is_none() && method != Some("initialize") {
            Era::Modern
        } else {
            Era::Legacy
        },
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
    assert!(matches!(error, ProxyError::UpstreamLost(_)), "{error:?}");
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

// -------------------------------------------------------------------------------------------------
// Modern (2026-07-28) traffic on the shared child: HTTP statuses and `subscriptions/listen`.
// -------------------------------------------------------------------------------------------------

/// A modern stdio server that honours `subscriptions/listen` as the spec says for stdio: the
/// acknowledgement and every notification of a stream carry the listen request's id in
/// `_meta["io.modelcontextprotocol/subscriptionId"]`. It agrees to everything asked but
/// `resourcesListChanged`. `tools/call change {kind, mode, delay}` announces a tools or prompts
/// list change: tagged for the listens that asked (`tagged`), tagged for every listen (`leak`, a
/// misbehaving server), or once untagged (`untagged`); after `delay` seconds in the background
/// when given. `end_listens` ends every listen with `notifications/cancelled`;
/// `needs_sampling` answers -32021; unknown methods -32601, unknown tools -32602.
const MODERN_CHILD: &str = r#"
import json, sys, threading, time
lock = threading.Lock()
listens = {}
KIND = {"tools": "notifications/tools/list_changed", "prompts": "notifications/prompts/list_changed"}
FLAG = {"tools": "toolsListChanged", "prompts": "promptsListChanged"}
def send(m):
    line = json.dumps(m, separators=(",", ":"))
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
def note(method, sub, **params):
    if sub is not None:
        params["_meta"] = {"io.modelcontextprotocol/subscriptionId": sub}
    send({"jsonrpc": "2.0", "method": method, "params": params})
def change(kind, mode, delay):
    time.sleep(delay)
    with lock:
        subs = dict(listens)
    if mode == "untagged":
        note(KIND[kind], None)
        return
    for sub, agreed in subs.items():
        if mode == "leak" or agreed.get(FLAG[kind]):
            note(KIND[kind], sub)
def call(m):
    name = m["params"]["name"]
    a = m["params"].get("arguments") or {}
    if name == "change":
        args = (a["kind"], a.get("mode", "tagged"), a.get("delay", 0))
        if a.get("delay"):
            threading.Thread(target=change, args=args, daemon=True).start()
        else:
            change(*args)
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [], "resultType": "complete"}})
    elif name == "end_listens":
        with lock:
            subs = list(listens)
            listens.clear()
        for sub in subs:
            send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": sub}})
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [], "resultType": "complete"}})
    elif name == "needs_sampling":
        send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32021, "message": "missing capability",
              "data": {"requiredCapabilities": {"sampling": {}}}}})
    else:
        send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32602, "message": "unknown tool"}})
for raw in sys.stdin:
    if not raw.strip():
        continue
    m = json.loads(raw)
    method = m.get("method")
    if "id" not in m:
        if method == "notifications/cancelled":
            with lock:
                listens.pop(m["params"]["requestId"], None)
        continue
    if method == "subscriptions/listen":
        asked = m["params"].get("notifications") or {}
        agreed = {k: v for k, v in asked.items() if k != "resourcesListChanged"}
        with lock:
            listens[m["id"]] = agreed
        note("notifications/subscriptions/acknowledged", m["id"], notifications=agreed)
    elif method == "tools/call":
        threading.Thread(target=call, args=(m,), daemon=True).start()
    else:
        send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32601, "message": "method not found"}})
"#;

fn modern_upstream(request_timeout: Duration) -> StdioUpstream {
    let options = StdioOptions {
        server: SERVER.into(),
        command: "python3".into(),
        args: vec!["-c".into(), MODERN_CHILD.into()],
        env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
        idle_timeout: Duration::from_secs(60),
        request_timeout,
        node_id: "node-1".into(),
    };
    upstream(options).0
}

fn modern_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": {}})
}

async fn modern_request(
    up: &StdioUpstream,
    id: Value,
    method: &str,
    params: Value,
) -> UpstreamReply {
    let mut params = params;
    params["_meta"] = modern_meta();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    send(
        up,
        None,
        MessageKind::Request,
        Some(method),
        body.to_string(),
    )
    .await
    .unwrap()
}

async fn listen(up: &StdioUpstream, id: Value, notifications: Value) -> SseStream {
    let reply = modern_request(
        up,
        id,
        "subscriptions/listen",
        json!({"notifications": notifications}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    sse_body(reply)
}

async fn change(up: &StdioUpstream, kind: &str, mode: &str, delay: f64) {
    let reply = modern_request(
        up,
        json!(format!("change-{kind}-{mode}")),
        "tools/call",
        json!({"name": "change", "arguments": {"kind": kind, "mode": mode, "delay": delay}}),
    )
    .await;
    // A change notification never rides on the stream of the request that caused it.
    assert_eq!(
        json_body(reply)["result"]["resultType"],
        "complete",
        "{kind} {mode}"
    );
}

fn subscription_of(notification: &Value) -> &Value {
    &notification["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"]
}

#[tokio::test]
async fn a_modern_error_answer_gets_the_http_status_of_the_modern_transport() {
    let up = modern_upstream(Duration::from_secs(10));
    info!("--- -32601 is 404, -32021 is 400, any other error stays in a 200 body");
    let unknown = modern_request(&up, json!(1), "unknown/method", json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let missing = modern_request(
        &up,
        json!(2),
        "tools/call",
        json!({"name": "needs_sampling", "arguments": {}}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let answer = json_body(
        modern_request(
            &up,
            json!(3),
            "tools/call",
            json!({"name": "nope", "arguments": {}}),
        )
        .await,
    );
    assert_eq!(answer["error"]["code"], -32602);

    info!("--- a modern initialize never reaches the shared child: it would start a session");
    let body = json!({"jsonrpc": "2.0", "id": "i-1", "method": "initialize",
                      "params": {"_meta": modern_meta()}});
    let reply = up
        .post(OutboundRequest {
            body: Bytes::from(body.to_string()),
            kind: MessageKind::Request,
            method: Some("initialize"),
            session: None,
            era: Era::Modern,
            headers: HeaderMap::new(),
        })
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.local_session.is_none());
    let answer = match reply.body {
        ReplyBody::Json(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    };
    assert_eq!(answer["id"], "i-1");
    assert_eq!(answer["error"]["code"], -32601);
    assert_eq!(up.children(), 1, "only the shared child runs");
    up.shutdown().await;

    info!("--- a legacy session's errors keep their 200: its transport has no such table");
    let (legacy, _metrics) = upstream(options(&[]));
    let session = open_session(&legacy).await;
    let body = json!({"jsonrpc": "2.0", "id": 4, "method": "unknown/method"});
    let reply = send(
        &legacy,
        Some(&session),
        MessageKind::Request,
        Some("unknown/method"),
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(json_body(reply)["error"]["code"], -32601);
    legacy.shutdown().await;
}

#[test]
fn the_modern_status_table_covers_the_codes_the_transport_names() {
    use super::modern_error_status;
    assert_eq!(modern_error_status(-32601), StatusCode::NOT_FOUND);
    for code in [-32020, -32021, -32022] {
        assert_eq!(modern_error_status(code), StatusCode::BAD_REQUEST, "{code}");
    }
    for code in [-32602, -32603, -32000, 1] {
        assert_eq!(modern_error_status(code), StatusCode::OK, "{code}");
    }
}

#[tokio::test]
async fn each_listen_stream_gets_its_acknowledgement_first_and_only_what_it_asked_for() {
    let up = modern_upstream(Duration::from_secs(10));
    info!("--- two clients listen on the shared child, with ids of their own");
    let mut tools = listen(
        &up,
        json!("tools-listener"),
        json!({"toolsListChanged": true}),
    )
    .await;
    let mut prompts = listen(
        &up,
        json!(7),
        json!({"promptsListChanged": true, "resourcesListChanged": true}),
    )
    .await;
    let ack = next_event(&mut tools).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(subscription_of(&ack), "tools-listener");
    let ack = next_event(&mut prompts).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(subscription_of(&ack), 7);
    assert_eq!(
        ack["params"]["notifications"],
        json!({"promptsListChanged": true}),
        "the child's acknowledgement is passed on as it is"
    );

    info!("--- the child tags a tools change for both streams; the prompts stream did not ask");
    change(&up, "tools", "leak", 0.0).await;
    info!("--- a prompts change tagged for the prompts stream only");
    change(&up, "prompts", "tagged", 0.0).await;
    info!("--- an untagged tools change: a server-wide event, for every stream that asked");
    change(&up, "tools", "untagged", 0.0).await;
    info!("--- an untagged prompts change: for the prompts stream");
    change(&up, "prompts", "untagged", 0.0).await;

    for _ in 0..2 {
        let seen = next_event(&mut tools).await;
        assert_eq!(seen["method"], "notifications/tools/list_changed", "{seen}");
        assert_eq!(subscription_of(&seen), "tools-listener");
    }
    for _ in 0..2 {
        let seen = next_event(&mut prompts).await;
        assert_eq!(
            seen["method"], "notifications/prompts/list_changed",
            "{seen}"
        );
        assert_eq!(subscription_of(&seen), 7);
    }

    info!("--- the child ends both subscriptions: both streams end");
    let ended = modern_request(
        &up,
        json!(9),
        "tools/call",
        json!({"name": "end_listens", "arguments": {}}),
    )
    .await;
    assert_eq!(json_body(ended)["id"], 9);
    for stream in [&mut tools, &mut prompts] {
        let end = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the stream did not end");
        assert!(
            !matches!(end, Some(Ok(_))),
            "no notification after the end: {end:?}"
        );
    }
    up.shutdown().await;
}

#[tokio::test]
async fn a_quiet_listen_stream_is_not_cut_off_by_the_request_timeout() {
    // Long enough for a cold python start on a loaded machine; the change comes well after it.
    let up = modern_upstream(Duration::from_millis(800));
    let mut tools = listen(&up, json!(1), json!({"toolsListChanged": true})).await;
    assert_eq!(
        next_event(&mut tools).await["method"],
        "notifications/subscriptions/acknowledged"
    );
    info!("--- the child announces a change well after the request timeout");
    change(&up, "tools", "tagged", 2.0).await;
    let seen = next_event(&mut tools).await;
    assert_eq!(seen["method"], "notifications/tools/list_changed");
    assert_eq!(subscription_of(&seen), 1);
    up.shutdown().await;
}
