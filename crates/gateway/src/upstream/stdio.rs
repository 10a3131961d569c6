//! stdio upstreams: MCP servers run as child processes speaking newline-delimited JSON-RPC.
//!
//! A legacy stdio server is exactly one session, so the gateway runs one child per downstream
//! legacy session, plus one shared child for modern (2026-07-28) stateless traffic:
//!
//! ```text
//!   post(initialize, no session) ──▶ new Channel(Session(n)) ──▶ child #n   (local_session = n)
//!   post(.., session.local_id = n) ─▶ sessions[n]            ──▶ child #n
//!   post(.., no session)            ─▶ the shared Channel     ──▶ shared child (started lazily;
//!                                                                  modern, stateless traffic)
//!   get_stream(n)                   ─▶ child #n's unrouted server messages, as SSE
//!   delete(n) / idle timeout        ─▶ session ends, child stopped (close stdin, SIGTERM, SIGKILL)
//! ```
//!
//! Several requests share a child at once (many clients on the shared child; the client and the
//! gateway's own requests on a session child), so every request id and progress token is
//! rewritten to a gateway-unique integer and restored on the way back ([`rewrite`]). The routing
//! of server messages, crash restarts and streaming answers live in [`channel`]; spawning,
//! line framing and the stop sequence in [`process`].
//!
//! Modern requests (the era comes with each request) answered with a JSON-RPC error get
//! the HTTP status the 2026-07-28 Streamable HTTP transport gives that error
//! ([`modern_error_status`]: -32601 is 404; -32020, -32021, -32022 are 400): an HTTP server sets
//! it itself, a child cannot. A modern `initialize` is answered -32601 by the gateway: on stdio
//! the method is the legacy handshake, and forwarded to the shared child it would start a
//! session there.
//!
//! ## `subscriptions/listen` on the shared child
//!
//! Many clients' listen streams share one child, so one pipe. The 2026-07-28 revision ties a
//! notification to its stream on stdio with `params._meta["io.modelcontextprotocol/
//! subscriptionId"]`, the id of the listen request, which on the child's side is the gateway id
//! the request was rewritten to. That id is unique per gateway, so routing by it can never hand
//! one client's notification to another:
//!
//! ```text
//!   listen (filter F) ─▶ pending[gid] { listen: F, acknowledged: no } ─▶ child
//!   child: acknowledged, subscriptionId = gid ─▶ pending[gid]: first message; F ∩= agreed
//!   child: change, subscriptionId = gid       ─▶ pending[gid] if acknowledged and F admits it
//!   child: change, no subscriptionId          ─▶ every acknowledged listen whose F admits it
//!                                                (a server-wide event: a broadcast)
//!   child: notifications/cancelled(gid)       ─▶ that listen stream ends
//!   client closes the stream                  ─▶ notifications/cancelled(gid) to the child
//! ```
//!
//! On the way out the tag is given the client's own listen id back (or added, for a
//! broadcast), so each stream carries exactly its own subscription id. The gateway holds the
//! child to the filter too: a notification the stream did not ask for, or one before its
//! acknowledgement, is dropped, so the acknowledgement is always first. Change notifications of
//! the shared child never ride on an ordinary request's stream, and request-scoped messages
//! (progress, logging) never on a listen stream. A listen stream has no gap timeout: it is
//! quiet for as long as nothing changes.
//!
//! Local session ids start at a random point, so that a session id sealed before this node
//! restarted cannot name a new session by accident.
//!
//! Sessions and their children live on this node only: a sealed session id naming a stdio child
//! can only be served by the node that holds it (`Upstream::node_local_sessions`).

mod channel;
mod process;
mod rewrite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use parking_lot::Mutex;
use tollgate_mcp::Era;
use tollgate_mcp::jsonrpc::codes;
use tollgate_mcp::subscriptions::{self, NotificationFilter};
use tollgate_telemetry::Metrics;
use tollgate_telemetry::metrics::ServerLabels;

use self::channel::{Channel, Role};
use self::process::Process;
use super::{MessageKind, OutboundRequest, ReplyBody, SessionRef, UpstreamReply};
use crate::error::ProxyError;

/// The most children one stdio upstream runs at once (sessions plus the shared child).
pub const MAX_CHILDREN: usize = 256;

/// How to run one stdio upstream.
#[derive(Debug, Clone)]
pub struct StdioOptions {
    /// The upstream's configured name (logs and metric labels).
    pub server: String,
    /// Program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables (on top of the gateway's own environment).
    pub env: Vec<(String, String)>,
    /// A session child with nothing in flight and no GET stream open is stopped after this long.
    pub idle_timeout: Duration,
    /// How long to wait for a child's first answer to a request (and between streamed messages).
    pub request_timeout: Duration,
    /// This gateway node's id (logs).
    pub node_id: String,
}

/// What every channel of one upstream shares.
struct Shared {
    options: StdioOptions,
    metrics: Arc<Metrics>,
    labels: ServerLabels,
    /// Live processes of this upstream.
    children: AtomicUsize,
    max_children: usize,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
}

impl Shared {
    /// A gateway-unique JSON-RPC id (and progress token) for a child.
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn child_started(&self) {
        self.children.fetch_add(1, Ordering::SeqCst);
        self.metrics
            .stdio_children
            .get_or_create(&self.labels)
            .inc();
    }

    fn child_reaped(&self) {
        self.children.fetch_sub(1, Ordering::SeqCst);
        self.metrics
            .stdio_children
            .get_or_create(&self.labels)
            .dec();
    }

    fn count_restart(&self) {
        self.metrics
            .stdio_restarts
            .get_or_create(&self.labels)
            .inc();
    }
}

struct Inner {
    shared: Arc<Shared>,
    sessions: Mutex<HashMap<u64, Arc<Channel>>>,
    stateless: Arc<Channel>,
    next_session: AtomicU64,
}

impl Inner {
    /// Ends a session and stops its child in the background; `false` if it was unknown.
    fn end_session(&self, local_id: u64, why: &str) -> bool {
        let Some(channel) = self.sessions.lock().remove(&local_id) else {
            return false;
        };
        if let Some(process) = channel.end() {
            tracing::info!(server = %self.shared.options.server, session = local_id, pid = process.pid(), why, "stdio session ended");
            process.request_stop();
        }
        true
    }

    fn stop_all(&self) -> Vec<Arc<Process>> {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let mut channels: Vec<_> = self.sessions.lock().drain().map(|(_, c)| c).collect();
        channels.push(self.stateless.clone());
        channels
            .iter()
            .filter_map(|channel| channel.end())
            .inspect(|process| process.request_stop())
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without a shutdown, still stop the children gracefully rather than leave them.
        self.stop_all();
    }
}

/// A stdio upstream: a child per legacy session and a shared child for stateless traffic.
pub struct StdioUpstream {
    inner: Arc<Inner>,
}

impl StdioUpstream {
    /// An upstream that runs `options.command`; nothing is spawned until the first request.
    pub fn new(options: StdioOptions, metrics: Arc<Metrics>) -> Self {
        Self::with_limit(options, metrics, MAX_CHILDREN)
    }

    fn with_limit(options: StdioOptions, metrics: Arc<Metrics>, max_children: usize) -> Self {
        let labels = ServerLabels {
            server: options.server.clone(),
        };
        let shared = Arc::new(Shared {
            options,
            metrics,
            labels,
            children: AtomicUsize::new(0),
            max_children,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        });
        let stateless = Channel::new(shared.clone(), Role::Shared);
        StdioUpstream {
            inner: Arc::new(Inner {
                shared,
                sessions: Mutex::new(HashMap::new()),
                stateless,
                // Below 2^53 so that the id survives a trip through a JavaScript number.
                next_session: AtomicU64::new(rand::random_range(1..(1u64 << 52))),
            }),
        }
    }

    fn session(&self, session: &SessionRef) -> Result<Arc<Channel>, ProxyError> {
        let id = session.local_id.ok_or(ProxyError::SessionNotFound)?;
        self.inner
            .sessions
            .lock()
            .get(&id)
            .cloned()
            .ok_or(ProxyError::SessionNotFound)
    }

    /// Sends one message: `initialize` starts a session child, a session's messages go to its
    /// child, anything else to the shared child. Requests are answered with JSON or SSE (200),
    /// notifications and responses with 202.
    pub async fn post(&self, request: OutboundRequest<'_>) -> Result<UpstreamReply, ProxyError> {
        if self.inner.shared.is_shutting_down() {
            return Err(ProxyError::UpstreamUnavailable(format!(
                "stdio server {} is shutting down",
                self.inner.shared.options.server
            )));
        }
        let body = match rewrite::one_line(&request.body) {
            std::borrow::Cow::Borrowed(_) => request.body.clone(),
            std::borrow::Cow::Owned(line) => Bytes::from(line),
        };
        if request.era == Era::Modern
            && request.kind == MessageKind::Request
            && request.method == Some("initialize")
        {
            // On stdio `initialize` is the legacy handshake: sent to the shared child it would
            // turn a stateless child into a session. The modern revision removed the method,
            // so a modern request naming it is answered as a modern server must answer it.
            return Ok(removed_method(&body, "initialize"));
        }
        let channel = match request.session {
            None if request.kind == MessageKind::Request
                && request.method == Some("initialize") =>
            {
                return self.initialize(body).await;
            }
            None => self.inner.stateless.clone(),
            Some(session) => self.session(session)?,
        };
        match request.kind {
            MessageKind::Request if request.era == Era::Modern => {
                let listen = (request.method == Some(subscriptions::LISTEN_METHOD))
                    .then(|| listen_filter(&body));
                let mut reply = channel.request(&body, listen).await?;
                if let ReplyBody::Json(bytes) = &reply.body
                    && let Some(code) = rewrite::RawMessage::parse(bytes)
                        .ok()
                        .and_then(|m| m.error_code())
                {
                    reply.status = modern_error_status(code);
                }
                Ok(reply)
            }
            MessageKind::Request => channel.request(&body, None).await,
            MessageKind::NoAnswer => {
                channel.notify(request.method, body).await?;
                Ok(UpstreamReply {
                    status: StatusCode::ACCEPTED,
                    session_id: None,
                    local_session: None,
                    body: ReplyBody::Empty,
                })
            }
        }
    }

    async fn initialize(&self, body: Bytes) -> Result<UpstreamReply, ProxyError> {
        let shared = &self.inner.shared;
        let local_id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let channel = Channel::new(shared.clone(), Role::Session(local_id));
        channel.remember_initialize(body.clone());
        let stop = |channel: &Channel| {
            if let Some(process) = channel.end() {
                process.request_stop();
            }
        };
        let mut reply = match channel.request(&body, None).await {
            Ok(reply) => reply,
            Err(error) => {
                stop(&channel);
                return Err(error);
            }
        };
        if let ReplyBody::Json(bytes) = &reply.body
            && rewrite::RawMessage::parse(bytes).is_ok_and(|m| m.error.is_some())
        {
            // The server refused the session: answer its error, keep no child.
            stop(&channel);
            return Ok(reply);
        }
        {
            let mut sessions = self.inner.sessions.lock();
            if shared.is_shutting_down() {
                drop(sessions);
                stop(&channel);
                return Err(ProxyError::UpstreamUnavailable(format!(
                    "stdio server {} is shutting down",
                    shared.options.server
                )));
            }
            sessions.insert(local_id, channel.clone());
        }
        tracing::info!(server = %shared.options.server, node = %shared.options.node_id, session = local_id, "stdio session started");
        tokio::spawn(watch_idle(
            Arc::downgrade(&self.inner),
            Arc::downgrade(&channel),
            local_id,
            shared.options.idle_timeout,
        ));
        reply.local_session = Some(local_id);
        Ok(reply)
    }

    /// Opens a session's stream of server messages that belong to no request.
    pub async fn get_stream(&self, session: &SessionRef) -> Result<UpstreamReply, ProxyError> {
        self.session(session)?.open_get_stream()
    }

    /// Ends a session: its child is stopped (in the background). 404 if unknown.
    pub async fn delete(&self, session: &SessionRef) -> Result<StatusCode, ProxyError> {
        let id = session.local_id.ok_or(ProxyError::SessionNotFound)?;
        if self.inner.end_session(id, "deleted") {
            Ok(StatusCode::OK)
        } else {
            Err(ProxyError::SessionNotFound)
        }
    }

    /// Stops every child (close stdin, SIGTERM, SIGKILL) and waits until all are reaped.
    pub async fn shutdown(&self) {
        let processes = self.inner.stop_all();
        futures_util::future::join_all(processes.iter().map(|p| p.wait_exit())).await;
    }

    /// How many children run now.
    pub fn children(&self) -> usize {
        self.inner.shared.children.load(Ordering::SeqCst)
    }
}

/// The HTTP status of a modern (2026-07-28) request answered with a JSON-RPC error, as the
/// Streamable HTTP transport of that revision requires it of a server:
///
/// | code   | error                                   | status |
/// |--------|-----------------------------------------|--------|
/// | -32601 | Method not found                        | 404    |
/// | -32020 | HeaderMismatch                          | 400    |
/// | -32021 | MissingRequiredClientCapability         | 400    |
/// | -32022 | UnsupportedProtocolVersion              | 400    |
/// | other  | (in the body only)                      | 200    |
///
/// (-32602 for a missing or malformed `_meta` is 400 too, but the gateway answers those itself
/// before anything is forwarded.) An HTTP upstream sets its own status, which the gateway passes
/// on; a stdio child only speaks JSON-RPC, so this is the one place its answers get theirs. An
/// answer that became an SSE stream (the child said something before its response) has
/// committed to 200 already, as it has for an HTTP server.
pub(crate) fn modern_error_status(code: i64) -> StatusCode {
    match code {
        codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        codes::HEADER_MISMATCH | codes::MISSING_CAPABILITY | codes::UNSUPPORTED_VERSION => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::OK,
    }
}

/// A modern -32601 (404) for a method the 2026-07-28 revision removed, with the request's id.
fn removed_method(body: &[u8], method: &str) -> UpstreamReply {
    let id = rewrite::RawMessage::parse(body)
        .ok()
        .and_then(|m| m.id.map(|id| id.get().to_owned()))
        .unwrap_or_else(|| "null".to_owned());
    let error = serde_json::json!({
        "code": codes::METHOD_NOT_FOUND,
        "message": format!("method not found: {method} (removed in 2026-07-28)"),
    });
    let answer = format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#);
    UpstreamReply {
        status: modern_error_status(codes::METHOD_NOT_FOUND),
        session_id: None,
        local_session: None,
        body: ReplyBody::Json(Bytes::from(answer)),
    }
}

/// The notification filter of a `subscriptions/listen` request body (nothing, if unreadable:
/// the child answers such a request itself).
fn listen_filter(body: &[u8]) -> NotificationFilter {
    let params = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("params").map(serde_json::Value::take));
    NotificationFilter::of_listen(params.as_ref())
}

/// Ends the session `local_id` once it has been idle for `idle`.
async fn watch_idle(inner: Weak<Inner>, channel: Weak<Channel>, local_id: u64, idle: Duration) {
    loop {
        let Some(deadline) = channel.upgrade().and_then(|c| c.idle_deadline(idle)) else {
            return;
        };
        tokio::time::sleep_until(deadline).await;
        let Some(current) = channel.upgrade() else {
            return;
        };
        if current.is_ended() {
            return;
        }
        let expired = current
            .idle_deadline(idle)
            .is_some_and(|deadline| deadline <= tokio::time::Instant::now());
        if expired {
            if let Some(inner) = inner.upgrade() {
                inner.end_session(local_id, "idle");
            }
            return;
        }
    }
}
