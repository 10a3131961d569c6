//! `QuotaService`: the quota leader (QUOTA.md, the second level of escrow).
//!
//! ```text
//!   gateway ──QuotaUp──▶ session task ──lock──▶ Book (this term's chunks, leases, sessions)
//!                          │ demand the chunk covers ─▶ QuotaLease at once (no Raft write)
//!                          │ other demands, Settle/Release ops ─▶ queued; a sync demand kicks
//!                          ▼
//!                     batching tick (every `tick`, or at once when kicked)
//!                          │ one Request::Quota { now, [Release.., Settle.., Grant..] }
//!                          ▼ client_write (only one in flight)
//!                     committed in *this* term ─▶ chunk += granted; answer the waiting demands;
//!                                               acked_seq of the reporting sessions advances
//! ```
//!
//! # Rules
//!
//! * Only the leader serves sessions. The book (`quota/book.rs`) belongs to one term, read from Raft's metrics;
//!   granted tokens enter it only once `client_write` returned an entry of that very term and the
//!   metrics still show this node leading it. When the metrics show another term or leader, every
//!   session ends with `UNAVAILABLE` (and the leader's API address when known), and the book is
//!   dropped: its chunks stay spent ("unknown means spent").
//! * Same-term `returned` tokens go back into the chunk in memory (once per lease: the lease
//!   record caps them). Earlier-term `returned` tokens become `Release` ops; every `consumed`
//!   becomes a `Settle` op. Each op carries its own (gateway, epoch, `seq << 16 | position`) so
//!   that the ledger applies a re-sent report once.
//! * Chunk size: about twice what was leased from the key in the last 100 ms, at least what is
//!   waiting, capped at half the window's remaining budget (the ledger caps again).
//! * A failed write ends every session: the gateways reconnect and re-send what was not acked.

mod book;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::Stream;
use openraft::{RaftMetrics, ServerState};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tollgate_proto::v1::quota_service_server::{QuotaService, QuotaServiceServer};
use tollgate_proto::v1::{
    QuotaDown, QuotaLease, QuotaRefusal, QuotaShowRequest, QuotaShowResponse, QuotaUp, QuotaWindow,
    QuotaWindowReport,
};
use tollgate_quota::{Window, WindowId};
use tollgate_raft::{
    NodeError, NodeId, PeerNode, QuotaOp, QuotaOpResult, RaftNode, Request as RaftRequest,
    Response as RaftResponse, Source,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use self::book::{Book, CutRules, PendingOp, Slot, Waiting};
use crate::auth::AdminToken;
use crate::error::node_status;
use crate::gateways::now_unix_ms;

/// Tuning of the quota leader.
#[derive(Debug, Clone, Copy)]
pub struct QuotaOptions {
    /// How long demands and reports are gathered into one Raft entry (sync demands do not wait).
    pub tick: Duration,
    /// Lifetime of a lease (never past its window's end).
    pub lease_ttl: Duration,
    /// A key whose `max / active gateways` is below this runs in exact mode (1-token leases).
    pub min_lease: u64,
    /// Leases carry `endgame` when less than this percentage of `max` is left to grant.
    pub endgame_percent: u64,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(2),
            lease_ttl: Duration::from_secs(1),
            min_lease: 4,
            endgame_percent: 10,
        }
    }
}

/// Positions within one message: ops get `seq << 16 | position`.
const POSITION_BITS: u32 = 16;

/// The `tollgate.v1.QuotaService` of one control node.
#[derive(Clone)]
pub struct QuotaServiceImpl {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<RaftNode>,
    token: AdminToken,
    options: QuotaOptions,
    book: Mutex<Book>,
    /// Something was queued for the next tick.
    work: Notify,
    /// A sync demand is waiting: tick now.
    urgent: Notify,
    /// The node is shutting down: no session is served any more.
    closing: AtomicBool,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<QuotaDown, Status>> + Send + 'static>>;

impl QuotaServiceImpl {
    /// Serve quota sessions over `node` (needs a tokio runtime: starts the batching task, which
    /// ends when the last handle of the service is dropped or Raft stops).
    pub fn new(node: Arc<RaftNode>, token: AdminToken, options: QuotaOptions) -> Self {
        let inner = Arc::new(Inner {
            node,
            token,
            options,
            book: Mutex::new(Book::default()),
            work: Notify::new(),
            urgent: Notify::new(),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(batcher(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Ends every open session now with `UNAVAILABLE` (the node is going away): gateways move
    /// to the next leader at once instead of waiting for the API to drain. Leases already out
    /// stay spent until their holders report them to the next leader.
    pub fn end_sessions(&self, reason: &str) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.end_all(&Status::unavailable(reason.to_owned()));
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_server(self) -> QuotaServiceServer<Self> {
        QuotaServiceServer::new(self)
    }
}

/// The tonic window enum of a ledger window.
pub(crate) fn proto_window(window: Window) -> QuotaWindow {
    match window {
        Window::Second => QuotaWindow::Second,
        Window::Minute => QuotaWindow::Minute,
        Window::Hour => QuotaWindow::Hour,
        Window::Day => QuotaWindow::Day,
    }
}

fn ledger_window(value: i32) -> Result<Window, Status> {
    match QuotaWindow::try_from(value) {
        Ok(QuotaWindow::Second) => Ok(Window::Second),
        Ok(QuotaWindow::Minute) => Ok(Window::Minute),
        Ok(QuotaWindow::Hour) => Ok(Window::Hour),
        Ok(QuotaWindow::Day) => Ok(Window::Day),
        _ => Err(Status::invalid_argument(format!(
            "unknown quota window {value}"
        ))),
    }
}

/// `UNAVAILABLE`, with the leader's API address when `metrics` know it.
fn not_leader(metrics: &RaftMetrics<NodeId, PeerNode>) -> Status {
    let leader = metrics.current_leader.filter(|id| *id != metrics.id);
    node_status(NodeError::ForwardToLeader {
        leader_id: leader,
        leader: leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        }),
    })
}

impl Inner {
    /// This node's term if it leads, or the status to end sessions with.
    fn leadership(&self) -> Result<u64, Status> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Status::unavailable("the control node is shutting down"));
        }
        let metrics = self.node.metrics().borrow().clone();
        if metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id) {
            Ok(metrics.current_term)
        } else {
            Err(not_leader(&metrics))
        }
    }

    /// The leader's time: its clock, never behind the ledger's.
    fn now_ms(&self) -> u64 {
        let own = u64::try_from(now_unix_ms()).unwrap_or(0);
        own.max(self.node.reader().read_quota(|l| l.now_unix_ms()))
    }

    fn rules(&self) -> CutRules {
        CutRules {
            lease_ttl_ms: u64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            min_lease: self.options.min_lease,
            endgame_percent: self.options.endgame_percent,
        }
    }

    /// One message of session `id`: queue its reports, answer what the chunks cover.
    fn handle(&self, id: u64, message: QuotaUp) -> Result<(), Status> {
        if message.seq >= 1 << (64 - POSITION_BITS) {
            return Err(Status::invalid_argument("seq is too large"));
        }
        if message.reports.len() * 2 >= 1 << POSITION_BITS {
            return Err(Status::invalid_argument("too many reports in one message"));
        }
        // Check the whole message before the book changes: a bad window or a report from a term
        // this node has not reached refuses the message as a whole, and nothing is half-applied.
        for window in message
            .reports
            .iter()
            .map(|r| r.window)
            .chain(message.demands.iter().map(|d| d.window))
        {
            ledger_window(window)?;
        }
        let now_ms = self.now_ms();
        let rules = self.rules();
        let mut book = self.book.lock();
        let term = book.term;
        if let Some(report) = message.reports.iter().find(|r| r.term > term) {
            // This node is behind the gateway (it led an older term): acknowledging the report
            // would make the gateway forget it. End the session; the gateway finds the leader.
            return Err(Status::unavailable(format!(
                "a report from term {} is newer than this leader's term {term}",
                report.term
            )));
        }
        let Some(session) = book.sessions.get(&id) else {
            return Err(Status::unavailable("the quota session ended"));
        };
        let (gateway, epoch) = (session.gateway.clone(), session.epoch);
        let mut ops = Vec::new();
        for report in &message.reports {
            let window = ledger_window(report.window)?;
            let source = |position: usize| Source {
                gateway: gateway.clone(),
                epoch,
                seq: message.seq << POSITION_BITS | position as u64,
            };
            if report.consumed > 0 {
                let from = source(ops.len());
                ops.push(QuotaOp::Settle {
                    key: report.key.clone(),
                    window,
                    window_id: WindowId(report.window_id),
                    term: report.term,
                    consumed: report.consumed,
                    from,
                });
            }
            if report.term == term {
                book.report_same_term(
                    report.lease_id,
                    report.consumed,
                    report.returned,
                    report.closed,
                );
            } else if report.returned > 0 {
                let from = source(ops.len());
                ops.push(QuotaOp::Release {
                    key: report.key.clone(),
                    window,
                    window_id: WindowId(report.window_id),
                    term: report.term,
                    tokens: report.returned,
                    from,
                });
            }
        }
        let mut down = QuotaDown {
            term,
            ..QuotaDown::default()
        };
        let mut urgent = false;
        let mut queued = !ops.is_empty();
        let mut waiting = Vec::new();
        for demand in &message.demands {
            let window = ledger_window(demand.window)?;
            let slot: Slot = (demand.key.clone(), window, window.id_at(now_ms).0);
            match book.cut(
                &slot,
                demand.demand_id,
                demand.want,
                demand.max,
                rules,
                now_ms,
            ) {
                Some(lease) => down.leases.push(lease),
                None => {
                    urgent |= demand.sync;
                    queued = true;
                    waiting.push(Waiting {
                        session: id,
                        demand_id: demand.demand_id,
                        key: demand.key.clone(),
                        window,
                        max: demand.max,
                        want: demand.want.max(1),
                    });
                }
            }
        }
        book.waiting.extend(waiting);
        let seq = message.seq;
        let op_count = ops.len();
        book.ops.extend(ops.into_iter().map(|op| PendingOp {
            session: id,
            seq,
            op,
        }));
        if let Some(session) = book.sessions.get_mut(&id) {
            session.max_seen = session.max_seen.max(seq);
            if op_count > 0 {
                *session.unacked.entry(seq).or_default() += op_count;
            }
            down.acked_seq = session.acked();
            if !down.leases.is_empty() || down.acked_seq != session.sent_ack {
                session.sent_ack = down.acked_seq;
                let _ = session.tx.send(Ok(down));
            }
        }
        drop(book);
        if queued {
            self.work.notify_one();
        }
        if urgent {
            self.urgent.notify_one();
        }
        Ok(())
    }

    /// End every session (leadership lost, or a write failed).
    fn end_all(&self, status: &Status) {
        let mut book = self.book.lock();
        if book.term != 0 || !book.sessions.is_empty() {
            debug!(
                term = book.term,
                "ending quota sessions: {}",
                status.message()
            );
            book.end_all(status);
        }
    }

    /// One batching tick: one Raft entry with every queued op and the grants waiting demands need.
    async fn tick(&self) {
        let term = match self.leadership() {
            Ok(term) => term,
            Err(status) => return self.end_all(&status),
        };
        let now_ms = self.now_ms();
        let rules = self.rules();
        let reader = self.node.reader();
        let (ops, reports, grants, waiting) = {
            let mut book = self.book.lock();
            if book.term != term {
                return;
            }
            book.prune(now_ms);
            let pending = std::mem::take(&mut book.ops);
            let mut waiting = Vec::new();
            let mut refusals: HashMap<u64, Vec<QuotaRefusal>> = HashMap::new();
            let mut leases: HashMap<u64, Vec<QuotaLease>> = HashMap::new();
            // Tokens returned since the demand was queued may already cover it.
            for w in std::mem::take(&mut book.waiting) {
                let slot: Slot = (w.key.clone(), w.window, w.window.id_at(now_ms).0);
                match book.cut(&slot, w.demand_id, w.want, w.max, rules, now_ms) {
                    Some(lease) => leases.entry(w.session).or_default().push(lease),
                    None => waiting.push(w),
                }
            }
            // Group what is left per (key, window): one grant each.
            let mut groups: BTreeMap<(String, Window), (u64, u64)> = BTreeMap::new();
            for w in &waiting {
                let group = groups
                    .entry((w.key.clone(), w.window))
                    .or_insert((0, u64::MAX));
                group.0 = group.0.saturating_add(w.want);
                group.1 = group.1.min(w.max);
            }
            // Top up, ahead of need, every chunk of a live window holding less than what was
            // leased from it in the last 100 ms: the next refill is then cut from memory
            // instead of waiting for this Raft write.
            let now = Instant::now();
            let low: Vec<(String, Window, u64, u64)> = book
                .chunks
                .iter()
                .filter(|((key, window, id), chunk)| {
                    *id == window.id_at(now_ms).0
                        && chunk.max > 0
                        && !groups.contains_key(&(key.clone(), *window))
                })
                .map(|((key, window, _), chunk)| (key.clone(), *window, chunk.available, chunk.max))
                .collect();
            for (key, window, available, max) in low {
                if available < book.recent(&key, window, now) {
                    groups.insert((key, window), (0, max));
                }
            }
            let releasing = |key: &str, window: Window| {
                pending.iter().any(|p| {
                    matches!(&p.op, QuotaOp::Release { key: k, window: w, .. } if k == key && *w == window)
                })
            };
            let mut grants = Vec::new();
            let mut limits = Vec::new();
            for ((key, window), (wanted, max)) in groups {
                let id = window.id_at(now_ms);
                let (outstanding, known_max) = reader
                    .read_quota(|l| l.window_report(&key, window, id))
                    .map_or((0, max), |r| (r.outstanding, r.max));
                let remaining = max.saturating_sub(outstanding);
                if remaining == 0 && !releasing(&key, window) {
                    if known_max != max {
                        // No grant will carry the new limit into the ledger: say it, so that
                        // `tollgate quota show` tells the limit in force.
                        limits.push(QuotaOp::SetLimit {
                            key: key.clone(),
                            window,
                            max,
                        });
                    }
                    // Spent: refuse without a write.
                    let retry = window.end_ms(id).saturating_sub(now_ms);
                    waiting.retain(|w| {
                        if w.key == key && w.window == window {
                            refusals.entry(w.session).or_default().push(QuotaRefusal {
                                demand_id: w.demand_id,
                                key: key.clone(),
                                window: proto_window(window) as i32,
                                window_id: id.0,
                                exhausted: true,
                                retry_after_ms: retry,
                            });
                            false
                        } else {
                            true
                        }
                    });
                    continue;
                }
                let recent = book.recent(&key, window, now);
                let cap = (remaining / 2).max(wanted.min(remaining)).max(1);
                let want = wanted.max(recent.saturating_mul(2)).min(cap);
                grants.push(QuotaOp::Grant {
                    key,
                    window,
                    max,
                    want,
                });
            }
            book.send(term, leases, refusals);
            let reports: Vec<(u64, u64)> = pending.iter().map(|p| (p.session, p.seq)).collect();
            let mut ops: Vec<QuotaOp> = pending.into_iter().map(|p| p.op).collect();
            let grant_keys = grants
                .iter()
                .filter_map(|g| match g {
                    QuotaOp::Grant { key, window, .. } => Some((key.clone(), *window)),
                    _ => None,
                })
                .collect::<Vec<_>>();
            ops.extend(limits);
            ops.extend(grants);
            (ops, reports, grant_keys, waiting)
        };
        if ops.is_empty() {
            return;
        }
        let written = self
            .node
            .raft()
            .client_write(RaftRequest::Quota {
                now_unix_ms: now_ms,
                ops,
            })
            .await;
        let (entry_term, results) = match written {
            Ok(written) => match written.data {
                RaftResponse::Quota { results, .. } => (written.log_id.leader_id.term, results),
                other => {
                    warn!(
                        ?other,
                        "a quota entry was answered as another kind of entry"
                    );
                    return self.end_all(&Status::internal("quota entry answered wrongly"));
                }
            },
            Err(error) => {
                warn!(%error, "quota entry failed");
                let status = match self.leadership() {
                    Ok(_) => Status::unavailable(format!("quota entry failed: {error}")),
                    Err(status) => status,
                };
                return self.end_all(&status);
            }
        };
        if entry_term != term || self.leadership().ok() != Some(term) {
            let status = self
                .leadership()
                .err()
                .unwrap_or_else(|| Status::unavailable("the leader's term changed"));
            return self.end_all(&status);
        }
        let mut book = self.book.lock();
        if book.term != term {
            return;
        }
        // Report ops: committed (applied, a duplicate, or refused for good).
        for (session, seq) in reports {
            if let Some(s) = book.sessions.get_mut(&session)
                && let Some(count) = s.unacked.get_mut(&seq)
            {
                *count -= 1;
                if *count == 0 {
                    s.unacked.remove(&seq);
                }
            }
        }
        // Grants: credit this term's chunks, then answer the waiting demands from them.
        let tail = results.len().saturating_sub(grants.len());
        let mut zero: Vec<Slot> = Vec::new();
        let mut slots: HashMap<(String, Window), Slot> = HashMap::new();
        for ((key, window), result) in grants.into_iter().zip(&results[tail..]) {
            if let QuotaOpResult::Granted {
                window_id,
                tokens,
                outstanding,
                max,
            } = result
            {
                let slot: Slot = (key.clone(), window, window_id.0);
                let chunk = book.chunks.entry(slot.clone()).or_default();
                chunk.available += tokens;
                chunk.max = *max;
                chunk.outstanding = *outstanding;
                if *tokens == 0 {
                    zero.push(slot.clone());
                }
                slots.insert((key, window), slot);
            }
        }
        let mut leases: HashMap<u64, Vec<QuotaLease>> = HashMap::new();
        let mut refusals: HashMap<u64, Vec<QuotaRefusal>> = HashMap::new();
        for w in waiting {
            let slot = slots
                .get(&(w.key.clone(), w.window))
                .cloned()
                .unwrap_or_else(|| (w.key.clone(), w.window, w.window.id_at(now_ms).0));
            match book.cut(&slot, w.demand_id, w.want, w.max, rules, now_ms) {
                Some(lease) => leases.entry(w.session).or_default().push(lease),
                None => refusals.entry(w.session).or_default().push(QuotaRefusal {
                    demand_id: w.demand_id,
                    key: w.key,
                    window: proto_window(w.window) as i32,
                    window_id: slot.2,
                    exhausted: zero.contains(&slot),
                    retry_after_ms: w.window.end_ms(WindowId(slot.2)).saturating_sub(now_ms),
                }),
            }
        }
        book.send(term, leases, refusals);
    }
}

/// The batching task: waits for work, gathers for one tick (unless kicked), then writes.
async fn batcher(inner: Weak<Inner>) {
    let (mut metrics, tick) = match inner.upgrade() {
        Some(inner) => (inner.node.metrics(), inner.options.tick),
        None => return,
    };
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tokio::select! {
            () = strong.work.notified() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    strong.end_all(&Status::unavailable("raft stopped"));
                    return;
                }
                // A new term or leader ends the sessions of the old one.
                let lost = {
                    let book = strong.book.lock();
                    book.term != 0 && strong.leadership().ok() != Some(book.term)
                };
                if lost && let Err(status) = strong.leadership() {
                    strong.end_all(&status);
                } else if lost {
                    strong.end_all(&Status::unavailable("the leader's term changed"));
                }
                continue;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = strong.urgent.notified() => {}
        }
        strong.tick().await;
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaServiceImpl {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<QuotaUp>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let term = self.inner.leadership()?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the session ended before its hello"))?;
        let hello = first
            .hello
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first message must carry hello"))?;
        if hello.gateway_id.is_empty() {
            return Err(Status::invalid_argument("hello needs a gateway id"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut book = self.inner.book.lock();
            book.ensure_term(term, &Status::unavailable("the leader's term changed"));
            book.open(hello.gateway_id.clone(), hello.epoch, tx.clone())
        };
        debug!(gateway = %hello.gateway_id, epoch = hello.epoch, term, "quota session opened");
        if let Err(status) = self.inner.handle(id, first) {
            self.inner.book.lock().close(id);
            return Err(status);
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = tx.closed() => break,
                };
                match message {
                    Ok(Some(message)) => {
                        if let Err(status) = inner.handle(id, message) {
                            let _ = tx.send(Err(status));
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            inner.book.lock().close(id);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn show(
        &self,
        request: Request<QuotaShowRequest>,
    ) -> Result<Response<QuotaShowResponse>, Status> {
        self.inner.token.authorize(&request)?;
        let QuotaShowRequest { key } = request.into_inner();
        if key.is_empty() {
            return Err(Status::invalid_argument("a key is needed"));
        }
        let reader = self.inner.node.reader();
        let current_term = self.inner.node.metrics().borrow().current_term;
        let reports = reader.read_quota(|l| l.key_report(&key));
        let applied_index = reader.last_applied().map_or(0, |l| l.index);
        let leading = self.inner.leadership().ok();
        let book = self.inner.book.lock();
        let windows = reports
            .into_iter()
            .map(|r| {
                let stranded = r.per_term.range(..current_term).fold(0u64, |sum, (_, c)| {
                    sum.saturating_add(
                        c.granted
                            .saturating_sub(c.released)
                            .saturating_sub(c.consumed),
                    )
                });
                let leased = if leading.is_some() && leading == Some(book.term) {
                    book.chunks
                        .get(&(key.clone(), r.window, r.window_id.0))
                        .map_or(0, |c| c.leased)
                } else {
                    0
                };
                QuotaWindowReport {
                    window: proto_window(r.window) as i32,
                    window_id: r.window_id.0,
                    max: r.max,
                    outstanding: r.outstanding,
                    consumed: r.consumed,
                    stranded,
                    leased,
                }
            })
            .collect();
        Ok(Response::new(QuotaShowResponse {
            windows,
            applied_index,
        }))
    }
}
