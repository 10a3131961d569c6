//! Streamable HTTP for both eras on one endpoint, `/mcp`.
//!
//! Every request first passes the same gates (stats, DNS-rebinding protection, required
//! credentials). A POST is then routed to an era:
//!
//! ```text
//!   Mcp-Session-Id present ─────────────────────────────► legacy session
//!   no session: _meta protocolVersion, a modern MCP-Protocol-Version header,
//!               or a ModernOnly upstream ───────────────► modern (stateless)
//!   no session, otherwise: initialize ──────────────────► new legacy session
//!                          anything else ───────────────► 400 (-32000)
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::engine::{Ctx, Engine, EraKind, LogLevel, Outbound, Pending, ServerEvent};
use super::rpc::{self, Incoming, LEGACY_VERSIONS, MODERN_VERSION, RpcError, code};
use super::sse::{self, StreamLog};
use super::{Eras, ResponseMode, StatsInner, UpstreamOptions, catalog};

/// Request logs kept per session for resumption.
const KEPT_STREAMS: usize = 64;
/// The standalone GET stream's id inside a session.
const STANDALONE: u64 = 0;

/// State shared by all requests.
pub struct Shared {
    opts: UpstreamOptions,
    engine: Arc<Engine>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Shared state for `opts`.
    pub fn new(opts: UpstreamOptions, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let stats = Arc::new(Mutex::new(StatsInner::default()));
        let engine = Arc::new(Engine::new(
            opts.name.clone(),
            opts.extra_tools.clone(),
            stats,
        ));
        Arc::new(Self {
            opts,
            engine,
            sessions: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// The engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }
}

/// The axum router serving `/mcp`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/mcp", any(handle)).with_state(shared)
}

/// One legacy session.
struct Session {
    version: String,
    client_caps: Value,
    log_level: Mutex<Option<LogLevel>>,
    subscriptions: Mutex<HashSet<String>>,
    pending: Arc<Pending>,
    next_stream: AtomicU64,
    logs: Mutex<VecDeque<Arc<StreamLog>>>,
    standalone: Arc<StreamLog>,
    initialized: AtomicBool,
    forwarder: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    fn primes(&self) -> bool {
        // Priming events (empty data) arrived with 2025-11-25; older clients may choke on them.
        self.version.as_str() >= "2025-11-25"
    }

    fn new_log(&self) -> Arc<StreamLog> {
        let log = StreamLog::new(self.next_stream.fetch_add(1, Ordering::Relaxed));
        let mut logs = self.logs.lock();
        if logs.len() >= KEPT_STREAMS {
            logs.pop_front();
        }
        logs.push_back(log.clone());
        log
    }

    fn find_log(&self, id: u64) -> Option<Arc<StreamLog>> {
        if id == STANDALONE {
            return Some(self.standalone.clone());
        }
        self.logs.lock().iter().find(|l| l.id() == id).cloned()
    }

    fn close(&self) {
        self.standalone.finish();
        for log in self.logs.lock().iter() {
            log.finish();
        }
        if let Some(task) = self.forwarder.lock().take() {
            task.abort();
        }
    }
}

fn json_body(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn rpc_error(id: &Value, error: &RpcError) -> Response {
    let status = StatusCode::from_u16(error.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    json_body(status, &rpc::error_response(id, error))
}

fn transport_error(status: StatusCode, code: i64, message: &str) -> Response {
    json_body(
        status,
        &rpc::error_response(&Value::Null, &RpcError::new(code, message)),
    )
}

fn accepted() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
}

fn sse_response(body: Body, session_id: Option<&str>) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(id) = session_id.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("mcp-session-id", id);
    }
    resp
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            media == mime || media == "*/*"
        })
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(host.clone())
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

/// DNS-rebinding protection: a foreign `Host` or a present but foreign `Origin` gets a 403,
/// returned as `Some(response)`.
fn check_origin(headers: &HeaderMap) -> Option<Response> {
    if let Some(host) = header_str(headers, "host")
        && !is_loopback_host(host)
    {
        return Some(transport_error(
            StatusCode::FORBIDDEN,
            code::LEGACY_TRANSPORT,
            "Forbidden: invalid Host header",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            .unwrap_or("");
        if !is_loopback_host(host) {
            return Some(transport_error(
                StatusCode::FORBIDDEN,
                code::LEGACY_TRANSPORT,
                "Forbidden: invalid Origin header",
            ));
        }
    }
    None
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut stats = shared.engine.stats().lock();
        stats.http_requests += 1;
        stats.last_headers = Some(headers.clone());
    }
    if shared.opts.validate_origin
        && let Some(resp) = check_origin(&headers)
    {
        return resp;
    }
    for (name, value) in &shared.opts.required_headers {
        if headers.get(name) != Some(value) {
            let mut resp = transport_error(
                StatusCode::UNAUTHORIZED,
                code::LEGACY_TRANSPORT,
                &format!("Unauthorized: missing or wrong {name}"),
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    match method {
        Method::POST => post(&shared, &headers, &body).await,
        Method::GET => get(&shared, &headers),
        Method::DELETE => delete(&shared, &headers),
        _ => {
            let mut resp = transport_error(
                StatusCode::METHOD_NOT_ALLOWED,
                code::LEGACY_TRANSPORT,
                "Method not allowed",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            resp
        }
    }
}

async fn post(shared: &Arc<Shared>, headers: &HeaderMap, body: &Bytes) -> Response {
    if !(accepts(headers, "application/json") && accepts(headers, "text/event-stream")) {
        return transport_error(
            StatusCode::NOT_ACCEPTABLE,
            code::LEGACY_TRANSPORT,
            "Not Acceptable: client must accept both application/json and text/event-stream",
        );
    }
    let json_ct =
        header_str(headers, "content-type").is_some_and(|ct| ct.starts_with("application/json"));
    if !json_ct {
        return transport_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::LEGACY_TRANSPORT,
            "Unsupported Media Type: expected application/json",
        );
    }
    let message: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return transport_error(
                StatusCode::BAD_REQUEST,
                code::PARSE_ERROR,
                &format!("Parse error: {e}"),
            );
        }
    };
    if message.is_array() {
        return transport_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            "Invalid Request: batches are not supported",
        );
    }
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let incoming = match rpc::classify(message) {
        Ok(m) => m,
        Err(e) => return rpc_error(&id, &e.with_status(400)),
    };
    let session_id = header_str(headers, "mcp-session-id").map(str::to_string);
    let header_version = header_str(headers, "mcp-protocol-version");
    let params = match &incoming {
        Incoming::Request { params, .. } | Incoming::Notification { params, .. } => Some(params),
        Incoming::Response { .. } => None,
    };
    let modern = match shared.opts.eras {
        Eras::LegacyOnly => false,
        Eras::ModernOnly => true,
        Eras::Both => {
            session_id.is_none()
                && (params.and_then(rpc::meta_version).is_some()
                    || header_version.is_some_and(|v| !LEGACY_VERSIONS.contains(&v)))
        }
    };
    if modern {
        return modern_post(shared, headers, incoming).await;
    }
    match session_id {
        Some(sid) => {
            let Some(session) = shared.sessions.lock().get(&sid).cloned() else {
                return transport_error(
                    StatusCode::NOT_FOUND,
                    code::SESSION_NOT_FOUND,
                    "Session not found",
                );
            };
            if let Some(v) = header_version
                && !LEGACY_VERSIONS.contains(&v)
            {
                return transport_error(
                    StatusCode::BAD_REQUEST,
                    code::LEGACY_TRANSPORT,
                    &format!("Bad Request: unsupported protocol version {v}"),
                );
            }
            legacy_in_session(shared, session, &sid, incoming).await
        }
        None => match incoming {
            Incoming::Request { id, method, params } if method == "initialize" => {
                initialize(shared, id, &params).await
            }
            _ if shared.opts.eras == Eras::LegacyOnly => transport_error(
                StatusCode::BAD_REQUEST,
                code::LEGACY_TRANSPORT,
                "Bad Request: Server not initialized",
            ),
            _ => transport_error(
                StatusCode::BAD_REQUEST,
                code::LEGACY_TRANSPORT,
                "Bad Request: Mcp-Session-Id header is required",
            ),
        },
    }
}

async fn initialize(shared: &Arc<Shared>, id: Value, params: &Value) -> Response {
    let version =
        rpc::negotiate_legacy(params.get("protocolVersion").and_then(Value::as_str)).to_string();
    let session_id = format!("{:032x}", rand::random::<u128>());
    let session = Arc::new(Session {
        version: version.clone(),
        client_caps: params
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})),
        log_level: Mutex::new(None),
        subscriptions: Mutex::new(HashSet::new()),
        pending: Arc::new(Pending::default()),
        next_stream: AtomicU64::new(STANDALONE + 1),
        logs: Mutex::new(VecDeque::new()),
        standalone: StreamLog::new(STANDALONE),
        initialized: AtomicBool::new(false),
        forwarder: Mutex::new(None),
    });
    // Server-wide events reach the session's standalone GET stream.
    let mut events = shared.engine.subscribe();
    let weak = Arc::downgrade(&session);
    let forwarder = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let Some(session) = weak.upgrade() else { break };
            let wanted = match &event {
                ServerEvent::ResourceUpdated(uri) => session.subscriptions.lock().contains(uri),
                _ => true,
            };
            if wanted {
                session.standalone.push(event.to_notification());
            }
        }
    });
    *session.forwarder.lock() = Some(forwarder);
    shared
        .sessions
        .lock()
        .insert(session_id.clone(), session.clone());
    shared.engine.stats().lock().sessions_opened += 1;
    let result = rpc::response(&id, shared.engine.initialize_result(&version));
    match shared.opts.response_mode {
        ResponseMode::Json => {
            let mut resp = json_body(StatusCode::OK, &result);
            if let Ok(v) = HeaderValue::from_str(&session_id) {
                resp.headers_mut().insert("mcp-session-id", v);
            }
            resp
        }
        ResponseMode::Sse => {
            let log = session.new_log();
            if session.primes() {
                log.prime();
            }
            log.push(result);
            log.finish();
            let body = Body::from_stream(log.reader(0, true, false, shared.shutdown.clone()));
            sse_response(body, Some(&session_id))
        }
    }
}

async fn legacy_in_session(
    shared: &Arc<Shared>,
    session: Arc<Session>,
    sid: &str,
    incoming: Incoming,
) -> Response {
    match incoming {
        Incoming::Response { id, outcome } => {
            session.pending.resolve(&id, outcome);
            accepted()
        }
        Incoming::Notification { method, .. } => {
            if method == "notifications/initialized" {
                session.initialized.store(true, Ordering::Relaxed);
            }
            accepted()
        }
        Incoming::Request { id, method, params } => {
            if method == "initialize" {
                return rpc_error(
                    &id,
                    &RpcError::new(
                        code::INVALID_REQUEST,
                        "Invalid Request: session already initialized",
                    ),
                );
            }
            match method.as_str() {
                "logging/setLevel" => match params
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(LogLevel::parse)
                {
                    Some(level) => *session.log_level.lock() = Some(level),
                    None => return rpc_error(&id, &RpcError::invalid_params("invalid log level")),
                },
                "resources/subscribe" | "resources/unsubscribe" => {
                    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
                        return rpc_error(&id, &RpcError::invalid_params("missing uri"));
                    };
                    if method == "resources/subscribe" {
                        session.subscriptions.lock().insert(uri.to_string());
                    } else {
                        session.subscriptions.lock().remove(uri);
                    }
                }
                _ => {}
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Ctx {
                era: EraKind::Legacy,
                out: Some(tx),
                pending: Some(session.pending.clone()),
                client_caps: session.client_caps.clone(),
                log_level: Some(session.log_level.lock().unwrap_or(LogLevel::Debug)),
                progress_token: rpc::meta(&params)
                    .and_then(|m| m.get("progressToken"))
                    .cloned(),
            };
            match shared.opts.response_mode {
                ResponseMode::Json => {
                    // Intermediate messages have no stream of their own: the GET stream gets them.
                    let forward = tokio::spawn(drain_into(rx, session.standalone.clone(), false));
                    let outcome = shared.engine.handle(&method, &params, &ctx).await;
                    drop(ctx);
                    let _ = forward.await;
                    match outcome {
                        Ok(result) => json_body(StatusCode::OK, &rpc::response(&id, result)),
                        Err(e) => json_body(StatusCode::OK, &rpc::error_response(&id, &e)),
                    }
                }
                ResponseMode::Sse => {
                    let log = session.new_log();
                    if session.primes() {
                        log.prime();
                    }
                    let engine = shared.engine.clone();
                    let task_log = log.clone();
                    tokio::spawn(async move {
                        let forward = tokio::spawn(drain_into(rx, task_log.clone(), true));
                        let outcome = engine.handle(&method, &params, &ctx).await;
                        drop(ctx);
                        let _ = forward.await;
                        task_log.push(match outcome {
                            Ok(result) => rpc::response(&id, result),
                            Err(e) => rpc::error_response(&id, &e),
                        });
                        task_log.finish();
                    });
                    sse_response(
                        Body::from_stream(log.reader(0, true, false, shared.shutdown.clone())),
                        Some(sid),
                    )
                }
            }
        }
    }
}

/// Moves a handler's intermediate messages into `log` until the handler drops its sender.
async fn drain_into(
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    log: Arc<StreamLog>,
    honour_close: bool,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outbound::Message(m) => {
                log.push(m);
            }
            Outbound::CloseStream if honour_close => log.cut(),
            Outbound::CloseStream => {}
        }
    }
}

fn get(shared: &Arc<Shared>, headers: &HeaderMap) -> Response {
    if shared.opts.eras == Eras::ModernOnly {
        let mut resp = transport_error(
            StatusCode::METHOD_NOT_ALLOWED,
            code::LEGACY_TRANSPORT,
            "Method not allowed",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if !accepts(headers, "text/event-stream") {
        return transport_error(
            StatusCode::NOT_ACCEPTABLE,
            code::LEGACY_TRANSPORT,
            "Not Acceptable: client must accept text/event-stream",
        );
    }
    let Some(sid) = header_str(headers, "mcp-session-id") else {
        return transport_error(
            StatusCode::BAD_REQUEST,
            code::LEGACY_TRANSPORT,
            "Bad Request: Mcp-Session-Id header is required",
        );
    };
    let Some(session) = shared.sessions.lock().get(sid).cloned() else {
        return transport_error(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            "Session not found",
        );
    };
    let body = match header_str(headers, "last-event-id") {
        Some(last) => {
            let Some((stream, seq)) = sse::parse_event_id(last) else {
                return transport_error(
                    StatusCode::BAD_REQUEST,
                    code::LEGACY_TRANSPORT,
                    "Bad Request: malformed Last-Event-ID",
                );
            };
            let Some(log) = session.find_log(stream) else {
                return transport_error(
                    StatusCode::BAD_REQUEST,
                    code::LEGACY_TRANSPORT,
                    "Bad Request: unknown Last-Event-ID",
                );
            };
            if seq >= log.len() {
                return transport_error(
                    StatusCode::BAD_REQUEST,
                    code::LEGACY_TRANSPORT,
                    "Bad Request: unknown Last-Event-ID",
                );
            }
            Body::from_stream(log.reader(
                seq + 1,
                false,
                stream == STANDALONE,
                shared.shutdown.clone(),
            ))
        }
        None => {
            let log = session.standalone.clone();
            let from = if session.primes() {
                log.prime()
            } else {
                log.len()
            };
            Body::from_stream(log.reader(from, false, true, shared.shutdown.clone()))
        }
    };
    sse_response(body, Some(sid))
}

fn delete(shared: &Arc<Shared>, headers: &HeaderMap) -> Response {
    if shared.opts.eras == Eras::ModernOnly {
        let mut resp = transport_error(
            StatusCode::METHOD_NOT_ALLOWED,
            code::LEGACY_TRANSPORT,
            "Method not allowed",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(sid) = header_str(headers, "mcp-session-id") else {
        return transport_error(
            StatusCode::BAD_REQUEST,
            code::LEGACY_TRANSPORT,
            "Bad Request: Mcp-Session-Id header is required",
        );
    };
    match shared.sessions.lock().remove(sid) {
        Some(session) => {
            session.close();
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::OK;
            resp
        }
        None => transport_error(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            "Session not found",
        ),
    }
}

/// Decodes a header value sent as `=?base64?...?=` (strict base64); other values are literal.
fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_string()),
    }
}

fn header_mismatch(message: impl Into<String>) -> RpcError {
    RpcError::new(code::HEADER_MISMATCH, message).with_status(400)
}

/// The modern era's header and `_meta` checks, in the order the spec's examples imply.
fn check_modern(
    shared: &Shared,
    headers: &HeaderMap,
    method: &str,
    params: &Value,
) -> Result<(), RpcError> {
    let Some(header_version) = header_str(headers, "mcp-protocol-version") else {
        return Err(header_mismatch("missing MCP-Protocol-Version header"));
    };
    let meta = rpc::meta(params);
    let missing: Vec<&str> = [rpc::META_PROTOCOL_VERSION, rpc::META_CLIENT_CAPABILITIES]
        .into_iter()
        .filter(|k| meta.and_then(|m| m.get(*k)).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "invalid params: missing _meta keys: {}",
            missing.join(", ")
        ))
        .with_status(400));
    }
    let meta_version = rpc::meta_version(params).unwrap_or("");
    if meta_version != header_version {
        return Err(header_mismatch(
            "MCP-Protocol-Version header does not match _meta protocolVersion",
        ));
    }
    if meta_version != MODERN_VERSION {
        return Err(
            RpcError::new(code::UNSUPPORTED_VERSION, "Unsupported protocol version")
                .with_data(json!({ "supported": [MODERN_VERSION], "requested": meta_version }))
                .with_status(400),
        );
    }
    if header_str(headers, "mcp-method") != Some(method) {
        return Err(header_mismatch(
            "Mcp-Method header does not match the body's method",
        ));
    }
    let name_key = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(key) = name_key {
        let body_name = params.get(key).and_then(Value::as_str);
        let header_name = header_str(headers, "mcp-name").and_then(decode_header_value);
        if body_name.is_some() && header_name.as_deref() != body_name {
            return Err(header_mismatch(format!(
                "Mcp-Name header does not match params.{key}"
            )));
        }
    }
    if method == "tools/call" {
        check_param_headers(shared, headers, params)?;
    }
    Ok(())
}

/// `Mcp-Param-<Header>` must mirror every argument whose schema has `x-mcp-header`.
fn check_param_headers(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Value,
) -> Result<(), RpcError> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let definition = catalog::builtin_tools()
        .into_iter()
        .chain(shared.opts.extra_tools.iter().map(|t| t.definition.clone()))
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name));
    let Some(props) = definition
        .as_ref()
        .and_then(|d| d.pointer("/inputSchema/properties"))
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    for (prop, schema) in props {
        let Some(header_name) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let header = format!("mcp-param-{}", header_name.to_ascii_lowercase());
        let raw = header_str(headers, &header);
        let expected = params
            .pointer(&format!("/arguments/{prop}"))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        match (expected, raw) {
            (None, None) => {}
            (Some(expected), Some(raw)) => {
                if decode_header_value(raw).as_deref() != Some(expected.as_str()) {
                    return Err(header_mismatch(format!(
                        "Mcp-Param-{header_name} header does not match argument {prop}"
                    )));
                }
            }
            (Some(_), None) => {
                return Err(header_mismatch(format!(
                    "missing Mcp-Param-{header_name} header for argument {prop}"
                )));
            }
            (None, Some(_)) => {
                return Err(header_mismatch(format!(
                    "Mcp-Param-{header_name} header without argument {prop}"
                )));
            }
        }
    }
    Ok(())
}

async fn modern_post(shared: &Arc<Shared>, headers: &HeaderMap, incoming: Incoming) -> Response {
    let (id, method, params) = match incoming {
        // Modern servers send no requests, so there is nothing a response could answer.
        Incoming::Response { .. } => return accepted(),
        Incoming::Notification { method, params } => {
            return match check_modern(shared, headers, &method, &params) {
                Ok(()) => accepted(),
                Err(e) => rpc_error(&Value::Null, &e),
            };
        }
        Incoming::Request { id, method, params } => (id, method, params),
    };
    if let Err(e) = check_modern(shared, headers, &method, &params) {
        return rpc_error(&id, &e);
    }
    let meta = rpc::meta(&params);
    if method == "subscriptions/listen" {
        return listen(shared, id, &params);
    }
    let log_level = meta
        .and_then(|m| m.get(rpc::META_LOG_LEVEL))
        .and_then(Value::as_str)
        .and_then(LogLevel::parse);
    let progress_token = meta.and_then(|m| m.get("progressToken")).cloned();
    let sse_wanted = shared.opts.response_mode == ResponseMode::Sse;
    let streaming = sse_wanted || log_level.is_some() || progress_token.is_some();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Ctx {
        era: EraKind::Modern,
        out: streaming.then_some(tx),
        pending: None,
        client_caps: meta
            .and_then(|m| m.get(rpc::META_CLIENT_CAPABILITIES))
            .cloned()
            .unwrap_or_else(|| json!({})),
        log_level,
        progress_token,
    };
    let engine = shared.engine.clone();
    let mut handler = Box::pin(async move { engine.handle(&method, &params, &ctx).await });
    // The answer's shape is decided lazily: an outcome that arrives before any intermediate
    // message keeps its own HTTP status (404 for unknown methods, 400 for -32021...); the first
    // intermediate message commits the response to an SSE stream.
    let first = tokio::select! {
        outcome = &mut handler => Err(outcome),
        Some(out) = rx.recv() => Ok(out),
    };
    let (frames_tx, frames_rx) = mpsc::unbounded_channel::<Bytes>();
    match first {
        Err(Err(e)) if e.http_status != 200 => return rpc_error(&id, &e),
        Err(outcome) => {
            let last = match outcome {
                Ok(result) => rpc::response(&id, result),
                Err(e) => rpc::error_response(&id, &e),
            };
            let queued: Vec<Value> = std::iter::from_fn(|| rx.try_recv().ok())
                .filter_map(|o| match o {
                    Outbound::Message(m) => Some(m),
                    Outbound::CloseStream => None,
                })
                .collect();
            if !sse_wanted && queued.is_empty() {
                return json_body(StatusCode::OK, &last);
            }
            for m in queued.iter().chain(std::iter::once(&last)) {
                let _ = frames_tx.send(sse::encode_plain(m));
            }
        }
        Ok(first_out) => {
            tokio::spawn(async move {
                if let Outbound::Message(m) = first_out {
                    let _ = frames_tx.send(sse::encode_plain(&m));
                }
                let outcome = loop {
                    tokio::select! {
                        outcome = &mut handler => break outcome,
                        Some(out) = rx.recv() => if let Outbound::Message(m) = out {
                            let _ = frames_tx.send(sse::encode_plain(&m));
                        },
                    }
                };
                while let Ok(out) = rx.try_recv() {
                    if let Outbound::Message(m) = out {
                        let _ = frames_tx.send(sse::encode_plain(&m));
                    }
                }
                let last = match outcome {
                    Ok(result) => rpc::response(&id, result),
                    Err(e) => rpc::error_response(&id, &e),
                };
                let _ = frames_tx.send(sse::encode_plain(&last));
            });
        }
    }
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(frames_rx)
        .map(Ok::<_, std::convert::Infallible>);
    sse_response(Body::from_stream(stream), None)
}

/// `subscriptions/listen`: acknowledge, then deliver the requested events until shutdown or
/// until the client goes away.
fn listen(shared: &Arc<Shared>, id: Value, params: &Value) -> Response {
    let (ack, filter) = shared
        .engine
        .listen_ack(&id, params.get("notifications").unwrap_or(&Value::Null));
    let mut events = shared.engine.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let (frames_tx, frames_rx) = mpsc::unbounded_channel::<Bytes>();
    let _ = frames_tx.send(sse::encode_plain(&ack));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if filter.wants(&event) => {
                        let mut n = event.to_notification();
                        if let Some(p) = n.get_mut("params").and_then(Value::as_object_mut) {
                            p.insert("_meta".into(), json!({ rpc::META_SUBSCRIPTION_ID: id }));
                        }
                        if frames_tx.send(sse::encode_plain(&n)).is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
                _ = frames_tx.closed() => break,
            }
        }
    });
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(frames_rx)
        .map(Ok::<_, std::convert::Infallible>);
    sse_response(Body::from_stream(stream), None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_or_without_port_are_accepted() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:3000",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example.com",
            "evil.example.com:80",
            "127.0.0.2",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn base64_header_values_decode_strictly() {
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8=?="),
            Some("Hello".into())
        );
        assert_eq!(decode_header_value("=?base64?SGVsbG8?="), None);
        assert_eq!(decode_header_value("=?base64?SGVs!!!bG8=?="), None);
        assert_eq!(decode_header_value("SGVsbG8="), Some("SGVsbG8=".into()));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8="),
            Some("=?base64?SGVsbG8=".into())
        );
    }
}
