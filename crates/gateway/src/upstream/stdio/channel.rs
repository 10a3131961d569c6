//! A channel: one logical stdio server (a legacy session's, or the shared modern one) whose
//! process may be replaced after a crash, and the router for everything it says.
//!
//! ```text
//!   request ─▶ ensure_process ─▶ rewrite id/token ─▶ pending[gid] ─▶ write line
//!                                                         │
//!   child line ─▶ response  (id = gid)        ──▶ pending[gid].done      (original id restored)
//!              ─▶ notifications/progress(gid) ──▶ pending[gid].events    (original token restored)
//!              ─▶ tagged subscriptionId = gid ──▶ listen pending[gid], if its filter admits it
//!              ─▶ untagged change (shared)    ──▶ every listen whose filter admits it
//!              ─▶ other notification/request  ──▶ the one in-flight (non-listen) request's
//!                                                 events, or else the GET stream (or its
//!                                                 bounded backlog)
//! ```
//!
//! (The listen routing and why it is safe on a child many clients share: see the parent
//! module's docs.)
//!
//! A request's answer is JSON when the response is the first thing that comes back, and an SSE
//! stream when something else comes first (the response then ends the stream). Dropping the
//! answer before the response (the client went away) sends `notifications/cancelled` to the
//! child. The request timeout bounds the wait for the first message, and then each gap between
//! messages of a stream, so a tool that keeps reporting progress is not cut off.
//!
//! Restart is lazy: a crash fails what was in flight, and the next message for the channel
//! starts a new process, replaying the session's `initialize` (its answer discarded) and
//! `notifications/initialized` before anything else is written.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tollgate_mcp::sse::SseEvent;
use tollgate_mcp::subscriptions::{self, NotificationFilter};

use super::Shared;
use super::process::{Process, Sink};
use super::rewrite::{self, RawMessage};
use crate::error::ProxyError;
use crate::upstream::{ReplyBody, SseStream, UpstreamReply};

/// Server messages queued for one request's stream before it is read.
const REQUEST_QUEUE: usize = 256;
/// Server messages kept for a session's GET stream (queued, or waiting for one to open).
const GET_QUEUE: usize = 256;

/// What a channel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A legacy session: initialize replayed on restart, a GET stream, an idle timeout.
    Session(u64),
    /// The shared child for modern stateless traffic.
    Shared,
}

/// One in-flight request.
struct Pending {
    original_id: Box<RawValue>,
    original_token: Option<Box<RawValue>>,
    /// `None` for the gateway's replayed `initialize`, whose messages nobody reads.
    events: Option<mpsc::Sender<Bytes>>,
    done: oneshot::Sender<Result<Bytes, ProxyError>>,
    /// Set for a `subscriptions/listen` request: its stream carries change notifications.
    listen: Option<Listen>,
}

/// The state of one open `subscriptions/listen` stream.
struct Listen {
    /// What the client asked for, narrowed to what the child acknowledged.
    filter: NotificationFilter,
    /// The child's `notifications/subscriptions/acknowledged` went out first.
    acknowledged: bool,
}

struct State {
    process: Option<Arc<Process>>,
    /// The process has been (re-)initialised and may take traffic.
    ready: bool,
    /// Incremented for every process started; lines and exits of older ones are ignored.
    generation: u64,
    /// The last process died without being asked to.
    crashed: bool,
    /// The session was ended (delete, idle, shutdown): nothing starts again.
    ended: bool,
    pending: HashMap<u64, Pending>,
    get_stream: Option<mpsc::Sender<Bytes>>,
    backlog: VecDeque<Bytes>,
    /// The session's `initialize` and `notifications/initialized`, replayed on restart.
    initialize: Option<Bytes>,
    initialized: Option<Bytes>,
    /// Since when nothing happened (for the idle timeout).
    idle_since: Instant,
}

impl State {
    fn busy(&self) -> bool {
        !self.pending.is_empty() || self.get_stream.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}

/// One logical stdio server.
pub(super) struct Channel {
    shared: Arc<Shared>,
    role: Role,
    state: Mutex<State>,
    /// Serialises starting (and re-initialising) a process.
    start: tokio::sync::Mutex<()>,
}

impl Channel {
    pub(super) fn new(shared: Arc<Shared>, role: Role) -> Arc<Self> {
        Arc::new(Channel {
            shared,
            role,
            state: Mutex::new(State {
                process: None,
                ready: false,
                generation: 0,
                crashed: false,
                ended: false,
                pending: HashMap::new(),
                get_stream: None,
                backlog: VecDeque::new(),
                initialize: None,
                initialized: None,
                idle_since: Instant::now(),
            }),
            start: tokio::sync::Mutex::new(()),
        })
    }

    fn server(&self) -> &str {
        &self.shared.options.server
    }

    fn gone(&self) -> ProxyError {
        match self.role {
            Role::Session(_) => ProxyError::SessionNotFound,
            Role::Shared => ProxyError::UpstreamUnavailable(format!(
                "stdio server {} is shutting down",
                self.server()
            )),
        }
    }

    /// Remembers the session's `initialize` for replay after a crash.
    pub(super) fn remember_initialize(&self, body: Bytes) {
        self.state.lock().initialize = Some(body);
    }

    /// When the channel went idle, or `None` while it is busy or ended.
    pub(super) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let mut state = self.state.lock();
        if state.ended {
            return None;
        }
        if state.busy() {
            state.idle_since = Instant::now();
        }
        Some(state.idle_since + idle)
    }

    /// Whether the channel was ended.
    pub(super) fn is_ended(&self) -> bool {
        self.state.lock().ended
    }

    fn touch(&self) {
        self.state.lock().idle_since = Instant::now();
    }

    /// Ends the channel for good; returns its process so the caller can stop it.
    pub(super) fn end(&self) -> Option<Arc<Process>> {
        let mut state = self.state.lock();
        state.ended = true;
        state.get_stream = None;
        state.backlog.clear();
        state.process.clone()
    }

    /// The running process, starting one (and re-initialising it) if needed. The flag says
    /// whether the session's `notifications/initialized` was just replayed.
    async fn ensure_process(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<(Arc<Process>, bool), ProxyError> {
        if let Some(process) = self.live()? {
            return Ok((process, false));
        }
        let _starting = tokio::time::timeout_at(deadline, self.start.lock())
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?;
        if let Some(process) = self.live()? {
            return Ok((process, false));
        }
        if self.shared.is_shutting_down() {
            return Err(self.gone());
        }
        let at_capacity = self
            .shared
            .children
            .load(std::sync::atomic::Ordering::SeqCst)
            >= self.shared.max_children;
        if at_capacity {
            self.shared
                .metrics
                .count_upstream_error(self.server(), "capacity");
            return Err(ProxyError::UpstreamUnavailable(format!(
                "stdio server {} already runs its limit of {} children",
                self.server(),
                self.shared.max_children
            )));
        }
        let (generation, restart, replay) = {
            let mut state = self.state.lock();
            state.generation += 1;
            let replay = (state.generation > 1)
                .then(|| {
                    state
                        .initialize
                        .clone()
                        .map(|i| (i, state.initialized.clone()))
                })
                .flatten();
            (state.generation, state.crashed, replay)
        };
        let sink: Arc<dyn Sink> = self.clone();
        let process = Process::spawn(&self.shared, generation, sink)?;
        {
            let mut state = self.state.lock();
            if state.ended {
                drop(state);
                process.request_stop();
                return Err(self.gone());
            }
            state.process = Some(process.clone());
            state.ready = replay.is_none();
            state.crashed = false;
        }
        if restart {
            self.shared.count_restart();
            tracing::info!(server = %self.server(), pid = process.pid(), "stdio server restarted");
        }
        let mut replayed_initialized = false;
        if let Some((initialize, initialized)) = replay {
            if let Err(error) = self
                .replay(&process, &initialize, initialized.as_deref(), deadline)
                .await
            {
                tracing::warn!(server = %self.server(), pid = process.pid(), %error, "re-initialising the restarted stdio server failed");
                process.request_stop();
                return Err(error);
            }
            replayed_initialized = initialized.is_some();
            let mut state = self.state.lock();
            if state.generation == process.generation() && state.process.is_some() {
                state.ready = true;
            }
        }
        Ok((process, replayed_initialized))
    }

    fn live(&self) -> Result<Option<Arc<Process>>, ProxyError> {
        let state = self.state.lock();
        if state.ended {
            return Err(self.gone());
        }
        Ok(state.process.clone().filter(|_| state.ready))
    }

    async fn replay(
        self: &Arc<Self>,
        process: &Arc<Process>,
        initialize: &[u8],
        initialized: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(), ProxyError> {
        let (done, answer) = oneshot::channel();
        let (gid, line) = self.register(process, initialize, None, done, None)?;
        let guard = PendingGuard::new(self.clone(), process.clone(), gid);
        write(process, &line, deadline).await?;
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(_)) => return Err(self.lost()),
            Ok(Ok(result)) => {
                result?;
            }
        }
        guard.disarm();
        if let Some(initialized) = initialized {
            write(process, initialized, deadline).await?;
        }
        Ok(())
    }

    /// The child is gone before the request was written.
    fn died(&self) -> ProxyError {
        ProxyError::UpstreamUnavailable(format!("stdio server {} exited", self.server()))
    }

    /// The child went away after the request was written: it may have run the call.
    fn lost(&self) -> ProxyError {
        ProxyError::UpstreamLost(format!(
            "stdio server {} exited before answering",
            self.server()
        ))
    }

    /// Registers a request of `process`: rewrites it and records it as pending.
    fn register(
        &self,
        process: &Process,
        body: &[u8],
        events: Option<mpsc::Sender<Bytes>>,
        done: oneshot::Sender<Result<Bytes, ProxyError>>,
        listen: Option<NotificationFilter>,
    ) -> Result<(u64, Vec<u8>), ProxyError> {
        let gid = self.shared.next_id();
        let rewritten = rewrite::rewrite_request(body, gid)
            .map_err(|e| ProxyError::Internal(format!("forwarding to a stdio server: {e}")))?;
        let mut state = self.state.lock();
        if state.ended {
            return Err(self.gone());
        }
        if state.generation != process.generation() || state.process.is_none() {
            return Err(self.died());
        }
        state.pending.insert(
            gid,
            Pending {
                original_id: rewritten.original_id,
                original_token: rewritten.original_token,
                events,
                done,
                listen: listen.map(|filter| Listen {
                    filter,
                    acknowledged: false,
                }),
            },
        );
        state.idle_since = Instant::now();
        Ok((gid, rewritten.line))
    }

    /// Sends a request and waits for the first thing the child says about it. `listen` is the
    /// notification filter of a `subscriptions/listen` request: its stream stays open with no
    /// gap timeout, and carries the change notifications routed to it (see [`Channel::route`]).
    pub(super) async fn request(
        self: &Arc<Self>,
        body: &[u8],
        listen: Option<NotificationFilter>,
    ) -> Result<UpstreamReply, ProxyError> {
        let timeout = self.shared.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let (process, _) = self.ensure_process(deadline).await?;
        let (events_tx, mut events) = mpsc::channel(REQUEST_QUEUE);
        let (done_tx, mut done) = oneshot::channel();
        let listening = listen.is_some();
        let (gid, line) = self.register(&process, body, Some(events_tx), done_tx, listen)?;
        let guard = PendingGuard::new(self.clone(), process.clone(), gid);
        write(&process, &line, deadline).await?;
        let mut events_open = true;
        loop {
            tokio::select! {
                biased;
                event = events.recv(), if events_open => match event {
                    Some(first) => {
                        let timeout = (!listening).then_some(timeout);
                        let stream = RequestStream { first: Some(first), events, events_open: true, done, guard, timeout, finished: false };
                        return Ok(reply(ReplyBody::Sse(stream.into_stream())));
                    }
                    None => events_open = false,
                },
                answer = &mut done => {
                    guard.disarm();
                    return match answer {
                        Ok(Ok(bytes)) => Ok(reply(ReplyBody::Json(bytes))),
                        Ok(Err(error)) => Err(error),
                        Err(_) => Err(self.lost()),
                    };
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.shared.metrics.count_upstream_error(self.server(), "timeout");
                    return Err(ProxyError::UpstreamTimeout);
                }
            }
        }
    }

    /// Writes a notification or a response to a server request. `method` is `None` for a
    /// response, which is forwarded unchanged (the child's own id space).
    pub(super) async fn notify(
        self: &Arc<Self>,
        method: Option<&str>,
        body: Bytes,
    ) -> Result<(), ProxyError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let mut line = body;
        match method {
            Some("notifications/initialized") if self.role != Role::Shared => {
                self.state.lock().initialized = Some(line.clone());
            }
            Some("notifications/cancelled") => {
                // The client names its own id; the child only knows the gateway's.
                let rewritten = {
                    let state = self.state.lock();
                    rewrite::rewrite_cancelled(&line, |client_id| {
                        state
                            .pending
                            .iter()
                            .find(|(_, p)| rewrite::same_id(&p.original_id, client_id))
                            .map(|(gid, _)| *gid)
                    })
                };
                match rewritten {
                    Ok(Some(rewritten)) => line = Bytes::from(rewritten),
                    _ => {
                        tracing::debug!(server = %self.server(), "cancellation of no request in flight dropped");
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
        let (process, replayed_initialized) = self.ensure_process(deadline).await?;
        if replayed_initialized && method == Some("notifications/initialized") {
            return Ok(());
        }
        self.touch();
        write(&process, &line, deadline).await
    }

    /// Opens the session's GET stream (replacing an earlier one), starting with the backlog.
    pub(super) fn open_get_stream(self: &Arc<Self>) -> Result<UpstreamReply, ProxyError> {
        let (tx, rx) = mpsc::channel(GET_QUEUE);
        {
            let mut state = self.state.lock();
            if state.ended {
                return Err(self.gone());
            }
            while let Some(message) = state.backlog.pop_front() {
                // The queue is as large as the backlog can be.
                let _ = tx.try_send(message);
            }
            state.get_stream = Some(tx);
            state.idle_since = Instant::now();
        }
        let closer = TouchOnDrop(self.clone());
        let stream = futures_util::stream::unfold((rx, closer), |(mut rx, closer)| async move {
            let message = rx.recv().await?;
            Some((Ok(event(message)), (rx, closer)))
        });
        Ok(reply(ReplyBody::Sse(stream.boxed())))
    }

    /// Routes one server message to where it belongs.
    fn route(&self, state: &mut State, line: &[u8], message: &RawMessage<'_>) {
        let method = message.method.as_deref().unwrap_or_default();
        if method == "notifications/progress"
            && let Some(gid) = message.progress_token()
            && let Some(pending) = state.pending.get(&gid)
            && let Some(token) = &pending.original_token
        {
            match rewrite::restore_progress(message, token) {
                Ok(Some(restored)) => {
                    if let Some(events) = &pending.events {
                        deliver(self.server(), events, Bytes::from(restored));
                    }
                }
                _ => {
                    tracing::debug!(server = %self.server(), "unreadable progress notification dropped")
                }
            }
            return;
        }
        if let Some(tag) = message.subscription_id() {
            // Tagged by the child for one listen request: that stream, or nowhere.
            match tag.and_then(|gid| state.pending.get_mut(&gid)) {
                Some(pending) if pending.listen.is_some() => {
                    self.to_listen(pending, message);
                }
                _ => {
                    tracing::debug!(server = %self.server(), method, "notification for no open listen stream dropped");
                }
            }
            return;
        }
        if method == "notifications/cancelled" && self.end_listen(state, message) {
            return;
        }
        if method == subscriptions::ACKNOWLEDGED {
            tracing::warn!(server = %self.server(), "untagged subscription acknowledgement dropped: it names no listen request");
            return;
        }
        if self.role == Role::Shared && subscriptions::is_change_notification(method) {
            self.broadcast(state, message);
            return;
        }
        // Request-scoped messages (logging, progress without a token of ours, server requests)
        // belong to a request's stream, never to a listen stream.
        let mut readers = state
            .pending
            .values()
            .filter(|p| p.listen.is_none())
            .filter_map(|p| p.events.as_ref());
        if let (Some(only), None) = (readers.next(), readers.next()) {
            deliver(self.server(), only, Bytes::copy_from_slice(line));
            return;
        }
        if self.role == Role::Shared {
            tracing::debug!(server = %self.server(), method = ?message.method, "server message with no request to carry it dropped");
            return;
        }
        let message = Bytes::copy_from_slice(line);
        if let Some(tx) = &state.get_stream {
            match tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(server = %self.server(), "GET stream reader too slow; server message dropped");
                }
                Err(mpsc::error::TrySendError::Closed(message)) => {
                    state.get_stream = None;
                    push_backlog(self.server(), &mut state.backlog, message);
                }
            }
        } else {
            push_backlog(self.server(), &mut state.backlog, message);
        }
    }

    /// Delivers a notification the child tagged for the listen stream of `pending`: the
    /// acknowledgement first (which narrows the filter to what the child agreed to), then only
    /// what the filter admits, each given back the client's own subscription id.
    fn to_listen(&self, pending: &mut Pending, message: &RawMessage<'_>) {
        let method = message.method.as_deref().unwrap_or_default();
        let (Some(listen), Some(events)) = (pending.listen.as_mut(), pending.events.as_ref())
        else {
            return;
        };
        let params = matches!(
            method,
            subscriptions::ACKNOWLEDGED | "notifications/resources/updated"
        )
        .then(|| message.params_value())
        .flatten();
        if method == subscriptions::ACKNOWLEDGED {
            if listen.acknowledged {
                tracing::debug!(server = %self.server(), "repeated subscription acknowledgement dropped");
                return;
            }
            let agreed = NotificationFilter::of_listen(params.as_ref());
            listen.filter = listen.filter.intersect(&agreed);
            listen.acknowledged = true;
        } else if !listen.acknowledged {
            tracing::warn!(server = %self.server(), method, "listen notification sent before its acknowledgement dropped");
            return;
        } else if listen.filter.admits(method, params.as_ref()) == Some(false) {
            tracing::debug!(server = %self.server(), method, "notification the listen stream did not ask for dropped");
            return;
        }
        match rewrite::with_subscription_id(message, &pending.original_id) {
            Ok(Some(bytes)) => deliver(self.server(), events, Bytes::from(bytes)),
            _ => {
                tracing::debug!(server = %self.server(), method, "unreadable listen notification dropped")
            }
        }
    }

    /// An untagged change notification of the shared child is a server-wide event: every
    /// acknowledged listen stream whose filter admits it gets a copy tagged with its own id.
    fn broadcast(&self, state: &State, message: &RawMessage<'_>) {
        let method = message.method.as_deref().unwrap_or_default();
        let params = (method == "notifications/resources/updated")
            .then(|| message.params_value())
            .flatten();
        let mut delivered = 0;
        for pending in state.pending.values() {
            let (Some(listen), Some(events)) = (&pending.listen, &pending.events) else {
                continue;
            };
            if !listen.acknowledged || listen.filter.admits(method, params.as_ref()) != Some(true) {
                continue;
            }
            if let Ok(Some(bytes)) = rewrite::with_subscription_id(message, &pending.original_id) {
                deliver(self.server(), events, Bytes::from(bytes));
                delivered += 1;
            }
        }
        if delivered == 0 {
            tracing::debug!(server = %self.server(), method, "change notification no listen stream asked for dropped");
        }
    }

    /// The child's `notifications/cancelled` naming a listen request: it ended that stream
    /// (stdio has no other way to close one). The downstream stream ends. `false` when the
    /// notification names no open listen stream.
    fn end_listen(&self, state: &mut State, message: &RawMessage<'_>) -> bool {
        let Some(gid) = message
            .params_value()
            .and_then(|p| p.get("requestId").and_then(serde_json::Value::as_u64))
        else {
            return false;
        };
        if state.pending.get(&gid).is_none_or(|p| p.listen.is_none()) {
            return false;
        }
        tracing::debug!(server = %self.server(), gid, "the stdio server ended a listen stream");
        // Dropping the entry closes the stream; the guard finds nothing left to cancel.
        state.pending.remove(&gid);
        true
    }

    /// The request `gid` will not be answered to anyone: forget it and tell the child.
    fn abandon(&self, process: &Arc<Process>, gid: u64) {
        let was_pending = {
            let mut state = self.state.lock();
            state.idle_since = Instant::now();
            state.pending.remove(&gid).is_some() && state.generation == process.generation()
        };
        if was_pending && let Ok(handle) = tokio::runtime::Handle::try_current() {
            let process = process.clone();
            let line = rewrite::cancelled(gid, "the client went away or the request timed out");
            handle.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), process.write_line(&line)).await;
            });
        }
    }
}

impl Sink for Channel {
    fn line(&self, generation: u64, line: &[u8]) {
        let message = match RawMessage::parse(line) {
            Ok(message) => message,
            Err(error) => {
                self.shared
                    .metrics
                    .count_upstream_error(self.server(), "protocol");
                tracing::warn!(server = %self.server(), %error, line = %String::from_utf8_lossy(&line[..line.len().min(256)]), "skipped a stdout line that is not JSON-RPC");
                return;
            }
        };
        let mut state = self.state.lock();
        if state.generation != generation {
            return;
        }
        if message.method.is_some() {
            self.route(&mut state, line, &message);
            return;
        }
        let Some(gid) = message.gateway_id() else {
            tracing::warn!(server = %self.server(), line = %String::from_utf8_lossy(&line[..line.len().min(256)]), "response with no id of ours dropped");
            return;
        };
        let Some(pending) = state.pending.remove(&gid) else {
            tracing::debug!(server = %self.server(), gid, "response to no request in flight dropped");
            return;
        };
        state.idle_since = Instant::now();
        drop(state);
        let answer = rewrite::restore_response(&message, &pending.original_id)
            .map(Bytes::from)
            .map_err(|e| ProxyError::UpstreamProtocol(format!("unreadable response: {e}")));
        let _ = pending.done.send(answer);
    }

    fn exited(&self, generation: u64, expected: bool, status: &str) {
        let pending = {
            let mut state = self.state.lock();
            if state.generation != generation {
                return;
            }
            state.process = None;
            state.idle_since = Instant::now();
            if !expected && !state.ended {
                state.crashed = true;
                self.shared
                    .metrics
                    .count_upstream_error(self.server(), "exit");
            }
            std::mem::take(&mut state.pending)
        };
        for (_, request) in pending {
            let _ = request.done.send(Err(ProxyError::UpstreamLost(format!(
                "stdio server {} exited ({status}) before answering",
                self.server()
            ))));
        }
    }
}

async fn write(process: &Process, line: &[u8], deadline: Instant) -> Result<(), ProxyError> {
    match tokio::time::timeout_at(deadline, process.write_line(line)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Err(error)) => Err(ProxyError::UpstreamUnavailable(format!(
            "writing to the stdio server: {error}"
        ))),
        Ok(Ok(())) => Ok(()),
    }
}

fn deliver(server: &str, events: &mpsc::Sender<Bytes>, message: Bytes) {
    if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(message) {
        tracing::warn!(
            server,
            "request stream reader too slow; server message dropped"
        );
    }
}

fn push_backlog(server: &str, backlog: &mut VecDeque<Bytes>, message: Bytes) {
    if backlog.len() >= GET_QUEUE {
        backlog.pop_front();
        tracing::warn!(
            server,
            "no GET stream open; oldest buffered server message dropped"
        );
    }
    backlog.push_back(message);
}

fn event(message: Bytes) -> SseEvent {
    // A parsed line is valid UTF-8 (JSON text), so this never replaces anything.
    SseEvent::message(String::from_utf8_lossy(&message).into_owned())
}

fn reply(body: ReplyBody) -> UpstreamReply {
    UpstreamReply {
        status: StatusCode::OK,
        session_id: None,
        local_session: None,
        body,
    }
}

/// Cancels a request still in flight when dropped (unless disarmed).
struct PendingGuard {
    channel: Arc<Channel>,
    process: Arc<Process>,
    gid: u64,
    armed: bool,
}

impl PendingGuard {
    fn new(channel: Arc<Channel>, process: Arc<Process>, gid: u64) -> Self {
        PendingGuard {
            channel,
            process,
            gid,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.armed {
            self.channel.abandon(&self.process, self.gid);
        }
    }
}

/// Marks the channel active when a GET stream closes, so the idle clock starts then.
struct TouchOnDrop(Arc<Channel>);

impl Drop for TouchOnDrop {
    fn drop(&mut self) {
        self.0.touch();
    }
}

/// The SSE answer of one request: its server messages, then its response.
struct RequestStream {
    first: Option<Bytes>,
    events: mpsc::Receiver<Bytes>,
    events_open: bool,
    done: oneshot::Receiver<Result<Bytes, ProxyError>>,
    guard: PendingGuard,
    /// The longest gap between two messages; `None` for a listen stream, which may stay quiet
    /// for as long as nothing changes.
    timeout: Option<Duration>,
    finished: bool,
}

impl RequestStream {
    fn into_stream(self) -> SseStream {
        futures_util::stream::unfold(self, |mut this| async move {
            if let Some(first) = this.first.take() {
                return Some((Ok(event(first)), this));
            }
            if this.finished {
                return None;
            }
            let item = this.next_item().await;
            Some((item, this))
        })
        .boxed()
    }

    async fn next_item(&mut self) -> Result<SseEvent, ProxyError> {
        let gap = self.timeout;
        let deadline = Instant::now() + gap.unwrap_or(Duration::ZERO);
        loop {
            tokio::select! {
                biased;
                message = self.events.recv(), if self.events_open => match message {
                    Some(message) => return Ok(event(message)),
                    None => self.events_open = false,
                },
                answer = &mut self.done => {
                    self.finished = true;
                    self.guard.armed = false;
                    return match answer {
                        Ok(Ok(bytes)) => Ok(event(bytes)),
                        Ok(Err(error)) => Err(error),
                        Err(_) => Err(self.guard.channel.lost()),
                    };
                }
                () = tokio::time::sleep_until(deadline), if gap.is_some() => {
                    self.finished = true;
                    self.guard.armed = false;
                    let channel = &self.guard.channel;
                    channel.shared.metrics.count_upstream_error(channel.server(), "timeout");
                    channel.abandon(&self.guard.process, self.guard.gid);
                    return Err(ProxyError::UpstreamTimeout);
                }
            }
        }
    }
}
