//! The gateway's quota agent: one `QuotaService.Session` stream to the quota leader, around a
//! [`LeasePool`] (QUOTA.md). The call path reaches it through [`crate::limits::Limiter`].
//!
//! ```text
//!   request path                      agent task (one per gateway process)
//!   acquire ─try_reserve─▶ hit ─▶ Ok     ┌──────────────── connect (rotate endpoints, backoff;
//!      │                                 │                 follow `tollgate-leader` redirects)
//!      ├─ Exhausted ─▶ Err(Exhausted)    ▼
//!      └─ NeedsLease ─▶ kick ──────▶ every tick / at once when kicked:
//!           ▲   wait ≤ timeout          QuotaUp{seq, pool.demands(now), pool.take_reports()}
//!           │                        QuotaDown:
//!           └──── wake ◀──────────────  lease   ─▶ pool.install(sent_at of its demand, now)
//!                                        refusal ─▶ mark_exhausted / request_failed
//!                                        acked_seq ─▶ forget acknowledged reports
//! ```
//!
//! # Reports are counted once
//!
//! Every message that carries lease reports is kept, with its `seq`, until the leader's
//! `acked_seq` covers it. After a reconnect the kept messages are sent again *with their original
//! `seq`* before anything new (the ledger skips what it already applied, by gateway, epoch and
//! seq). One rule guards the "exactly once, to exactly one leader" promise of the design: a report
//! that may have reached the leader of its lease's own term (the stream's term was that term, or
//! was not known yet) may have put its `returned` tokens back into that term's chunk, in memory;
//! sending them again to a later leader would release them a second time. Such a report is re-sent
//! with `returned = 0` (its tokens stay spent: under-admission, never over-admission).
//!
//! # Lease ids
//!
//! The leader's lease ids are unique within a term only, so the pool holds agent-local ids and the
//! agent maps each to the leader's id and term for the reports.
//!
//! # Connection
//!
//! One tonic channel at a time, with HTTP/2 keepalive so a paused or cut-off leader is noticed.
//! `UNAVAILABLE` with the `tollgate-leader` metadata sends the agent straight to that address (a
//! few redirects in a row at most, then backoff); any other failure moves to the next endpoint
//! after a jittered, doubling backoff. When a stream ends, the demands it carried are marked
//! failed in the pool so they are asked again on the next stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tollgate_proto::v1::quota_service_client::QuotaServiceClient;
use tollgate_proto::v1::{
    QuotaDemand, QuotaDown, QuotaHello, QuotaLeaseReport, QuotaUp, QuotaWindow,
};
use tollgate_quota::{
    Exhausted, LeaseGrant, LeaseId, LeasePool, LeaseReport, LimitSpec, Quota as _, QuotaError,
    Reservation, SlotHandle, SlotMode, Window, WindowId,
};
use tollgate_telemetry::Metrics;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

mod outbox;

use self::outbox::Outbox;

/// Tuning of a [`QuotaAgent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaAgentOptions {
    /// How often demands and reports are gathered into one message (sync demands do not wait).
    pub tick: Duration,
    /// How long [`QuotaAgent::acquire`] waits for a lease before answering
    /// [`AcquireError::Unavailable`].
    pub acquire_timeout: Duration,
    /// How often idle slots are checked ([`LeasePool::return_idle`]).
    pub idle_check: Duration,
    /// A slot that spent nothing for this long gives its leases back.
    pub idle_for: Duration,
    /// How long connecting to one control node may take.
    pub connect_timeout: Duration,
    /// The first wait before reconnecting after a failure; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for QuotaAgentOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(2),
            acquire_timeout: Duration::from_millis(50),
            idle_check: Duration::from_secs(1),
            idle_for: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            min_backoff: Duration::from_millis(25),
            // Short: while no leader is known (an election, 200-400 ms), every waiting call
            // fails closed, so the agent looks again often. A connection attempt is cheap.
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// HTTP/2 pings on the session: a leader that stops answering is given up after about
/// interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Redirects followed in a row without opening a session before backing off.
const MAX_REDIRECTS: u32 = 3;
/// An unanswered demand is forgotten after this long (the pool asks again after its own timeout).
const DEMAND_FORGET: Duration = Duration::from_secs(10);

/// Why [`QuotaAgent::acquire`] reserved nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// A limit's window is spent cluster-wide: deny the call.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// No lease arrived within the timeout (no leader reachable, or it did not answer in time):
    /// the caller fails closed or open, as its policy says.
    #[error("no quota lease for limit {index} within the timeout")]
    Unavailable {
        /// Index, in the slice given to `acquire`, of the limit without tokens.
        index: usize,
    },
}

/// Counters of a [`QuotaAgent`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Session streams opened with a leader.
    pub sessions_opened: u64,
    /// Sessions opened after an earlier one ended.
    pub reconnects: u64,
    /// Leases installed in the pool.
    pub leases_installed: u64,
    /// Calls that found no lease and asked the leader synchronously.
    pub sync_demands: u64,
    /// Demands sent ahead of need (refills, not synchronous).
    pub refills: u64,
    /// Demands refused (exhausted or not).
    pub refusals: u64,
    /// Of `refusals`, those that said the window is spent.
    pub exhausted_refusals: u64,
    /// Calls answered [`AcquireError::Unavailable`].
    pub unavailable: u64,
}

#[derive(Default)]
struct Counters {
    sessions_opened: AtomicU64,
    reconnects: AtomicU64,
    leases_installed: AtomicU64,
    sync_demands: AtomicU64,
    refills: AtomicU64,
    refusals: AtomicU64,
    exhausted_refusals: AtomicU64,
    unavailable: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The gateway side of the quota session. See the [module docs](self).
pub struct QuotaAgent {
    pool: Arc<LeasePool>,
    gateway_id: String,
    epoch: u64,
    options: QuotaAgentOptions,
    /// The pool changed (a lease installed, a window marked spent, a stream ended).
    changed: Notify,
    /// A call waits for a lease: send demands now.
    kick: Notify,
    connected: AtomicBool,
    counters: Counters,
    stop: CancellationToken,
    /// [`QuotaAgent::drain`] began: no new demand goes out, and a lease that still arrives is
    /// given back whole instead of installed.
    draining: AtomicBool,
    /// Batches sent so far, and report messages not yet acknowledged (for [`QuotaAgent::drain`]).
    batches_sent: AtomicU64,
    unacked: AtomicU64,
    /// A batch was sent or an ack arrived.
    progress: Notify,
}

impl std::fmt::Debug for QuotaAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaAgent")
            .field("gateway_id", &self.gateway_id)
            .field("epoch", &self.epoch)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl QuotaAgent {
    /// Starts the agent's task: it connects to one of `endpoints` (control nodes' API addresses,
    /// `host:port` or `http://` URLs), follows the leader, and feeds `pool`. The task runs until
    /// [`QuotaAgent::shutdown`]. The epoch is random, chosen here: one agent per process.
    pub fn start(
        pool: Arc<LeasePool>,
        endpoints: Vec<String>,
        gateway_id: String,
        options: QuotaAgentOptions,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let agent = Arc::new(Self {
            pool,
            gateway_id,
            epoch: rand::random::<u64>().max(1),
            options,
            changed: Notify::new(),
            kick: Notify::new(),
            connected: AtomicBool::new(false),
            counters: Counters::default(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            batches_sent: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            progress: Notify::new(),
        });
        let task = tokio::spawn(run(agent.clone(), endpoints));
        (agent, task)
    }

    /// The pool this agent feeds.
    pub fn pool(&self) -> &Arc<LeasePool> {
        &self.pool
    }

    /// This process's epoch, as sent in the hello.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a session with a leader is open now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Stops the task (the session ends; leases held stay spent, "unknown means spent").
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Gives back every lease the pool holds and waits, at most `timeout`, until the leader
    /// acknowledged the reports, then stops the agent. For a clean shutdown: the unused tokens
    /// go back to the window instead of staying spent until it ends.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.draining.store(true, Ordering::Release);
        self.pool.return_idle(Instant::now(), Duration::ZERO);
        let mut before = self.batches_sent.load(Ordering::Acquire);
        while self.is_connected() {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            // A lease whose answer was being handled as the drain began may have landed since.
            if self.pool.return_idle(Instant::now(), Duration::ZERO) > 0 {
                before = self.batches_sent.load(Ordering::Acquire);
            }
            // Two batches: one that may have been under way when the leases closed, and one that
            // surely carried their reports.
            let sent = self.batches_sent.load(Ordering::Acquire) > before + 1;
            if sent && self.unacked.load(Ordering::Acquire) == 0 {
                break;
            }
            self.kick.notify_one();
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                debug!("quota reports not acknowledged before the drain timeout");
                break;
            }
        }
        self.shutdown();
    }

    /// A snapshot of the agent's counters.
    pub fn stats(&self) -> AgentStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentStats {
            sessions_opened: get(&c.sessions_opened),
            reconnects: get(&c.reconnects),
            leases_installed: get(&c.leases_installed),
            sync_demands: get(&c.sync_demands),
            refills: get(&c.refills),
            refusals: get(&c.refusals),
            exhausted_refusals: get(&c.exhausted_refusals),
            unavailable: get(&c.unavailable),
        }
    }

    /// Sets the limit (`max`) in force for `key` and `window`, sent with the demands of that slot
    /// (the leader grants against the lowest it has seen in the window). Every reservation
    /// records its own `max` in the pool, so this is needed only to announce a limit before any
    /// call carries it; a lower limit closes the slot's leases at once.
    pub fn set_limit(&self, key: &str, window: Window, max: u64) {
        self.pool.slot(key, window).set_max(max);
    }

    /// Ask the leader now for the slots whose calls are waiting (the pool knows which: they were
    /// answered `NeedsLease`), without waiting for the next tick.
    pub fn request_sync(&self) {
        self.kick.notify_one();
    }

    /// [`QuotaAgent::acquire_within`] with [`QuotaAgentOptions::acquire_timeout`].
    pub async fn acquire(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, AcquireError> {
        self.acquire_within(limits, self.options.acquire_timeout)
            .await
    }

    /// Reserves every limit, all or nothing, for the call path.
    ///
    /// Tries the pool first (no await on a hit). When a limit has no lease, asks the leader at
    /// once (a sync demand) and waits for the pool to change, then tries again, until `timeout`
    /// has passed since the call: [`AcquireError::Unavailable`] then, and the caller fails closed
    /// or open by its policy. A window the leader declared spent is
    /// [`AcquireError::Exhausted`] at once. Settle the reservation with the pool's
    /// `commit` / `rollback`.
    pub async fn acquire_within(
        &self,
        limits: &[LimitSpec<'_>],
        timeout: Duration,
    ) -> Result<Reservation, AcquireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the pool is read: a wake between the read and the wait counts.
            changed.as_mut().enable();
            match self.pool.try_reserve(limits) {
                Ok(reservation) => return Ok(reservation),
                Err(QuotaError::Exhausted(e)) => return Err(AcquireError::Exhausted(e)),
                Err(QuotaError::NeedsLease { index }) => {
                    bump(&self.counters.sync_demands);
                    self.request_sync();
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        bump(&self.counters.unavailable);
                        return Err(AcquireError::Unavailable { index });
                    }
                }
            }
        }
    }

    fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Copies the agent's counters into `metrics` every second until the agent stops.
    pub fn export_metrics(self: &Arc<Self>, metrics: Arc<Metrics>) -> JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move {
            let mut seen = AgentStats::default();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = agent.stop.cancelled() => return,
                }
                let now = agent.stats();
                let add =
                    |counter: &prometheus_client::metrics::counter::Counter, new: u64, old: u64| {
                        counter.inc_by(new.saturating_sub(old));
                    };
                add(
                    &metrics.quota_leases,
                    now.leases_installed,
                    seen.leases_installed,
                );
                add(&metrics.quota_refills, now.refills, seen.refills);
                add(
                    &metrics.quota_sync_reservations,
                    now.sync_demands,
                    seen.sync_demands,
                );
                add(&metrics.quota_refusals, now.refusals, seen.refusals);
                add(&metrics.quota_reconnects, now.reconnects, seen.reconnects);
                metrics
                    .quota_session_connected
                    .set(i64::from(agent.is_connected()));
                seen = now;
            }
        })
    }
}

fn proto_window(window: Window) -> QuotaWindow {
    match window {
        Window::Second => QuotaWindow::Second,
        Window::Minute => QuotaWindow::Minute,
        Window::Hour => QuotaWindow::Hour,
        Window::Day => QuotaWindow::Day,
    }
}

fn pool_window(value: i32) -> Option<Window> {
    match QuotaWindow::try_from(value).ok()? {
        QuotaWindow::Second => Some(Window::Second),
        QuotaWindow::Minute => Some(Window::Minute),
        QuotaWindow::Hour => Some(Window::Hour),
        QuotaWindow::Day => Some(Window::Day),
        QuotaWindow::Unspecified => None,
    }
}

/// A demand sent and not answered yet.
struct SentDemand {
    slot: SlotHandle,
    sent_at: Instant,
}

/// A lease installed in the pool under an agent-local id.
struct LeaseOrigin {
    leader_id: u64,
    term: u64,
}

/// What the agent remembers across streams.
struct State {
    next_seq: u64,
    next_demand_id: u64,
    next_lease_id: u64,
    demands: HashMap<u64, SentDemand>,
    leases: HashMap<u64, LeaseOrigin>,
    /// Reports of leases the pool never held (an answer to a forgotten demand): returned whole.
    stray: Vec<QuotaLeaseReport>,
    outbox: Outbox,
}

/// Why a stream ended.
enum Ended {
    /// The agent was shut down.
    Stopped,
    /// Go to this address next.
    Redirect(String),
    /// Try the next endpoint after a backoff.
    Failed,
}

async fn run(agent: Arc<QuotaAgent>, endpoints: Vec<String>) {
    if endpoints.is_empty() {
        warn!("the quota agent has no control endpoints");
        return;
    }
    let mut state = State {
        next_seq: 1,
        next_demand_id: 1,
        next_lease_id: 1,
        demands: HashMap::new(),
        leases: HashMap::new(),
        stray: Vec::new(),
        outbox: Outbox::default(),
    };
    let options = agent.options;
    let mut next = 0usize;
    let mut redirect: Option<String> = None;
    let mut redirects = 0u32;
    let mut backoff = options.min_backoff;
    loop {
        let address = match redirect.take() {
            Some(address) => address,
            None => {
                let address = endpoints[next % endpoints.len()].clone();
                next = next.wrapping_add(1);
                address
            }
        };
        let opened_before = agent.counters.sessions_opened.load(Ordering::Relaxed);
        let ended = session(&agent, &mut state, &address).await;
        agent.connected.store(false, Ordering::Relaxed);
        for (_, demand) in state.demands.drain() {
            agent.pool.request_failed(&demand.slot);
        }
        agent.wake();
        if agent.counters.sessions_opened.load(Ordering::Relaxed) > opened_before {
            backoff = options.min_backoff;
            redirects = 0;
        }
        match ended {
            Ended::Stopped => return,
            Ended::Redirect(to) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                debug!(%to, "quota session redirected to the leader");
                redirect = Some(to);
                continue;
            }
            Ended::Redirect(_) | Ended::Failed => {}
        }
        redirects = 0;
        let half = u64::try_from(backoff.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::random::<u64>() % (half + 1));
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = agent.stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

async fn connect(address: &str, options: &QuotaAgentOptions) -> Option<Channel> {
    let endpoint = match tollgate_proto::control_endpoint(address) {
        Ok(endpoint) => endpoint
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
        Err(error) => {
            warn!(%address, %error, "bad quota endpoint");
            return None;
        }
    };
    match endpoint.connect().await {
        Ok(channel) => Some(channel),
        Err(error) => {
            debug!(%address, %error, "cannot reach the control node");
            None
        }
    }
}

fn ended_by(status: &tonic::Status) -> Ended {
    match tollgate_proto::named_leader(status) {
        Some(leader) => Ended::Redirect(leader.to_owned()),
        None => Ended::Failed,
    }
}

/// One session stream, until it ends.
async fn session(agent: &QuotaAgent, state: &mut State, address: &str) -> Ended {
    let options = agent.options;
    let channel = tokio::select! {
        channel = connect(address, &options) => channel,
        () = agent.stop.cancelled() => return Ended::Stopped,
    };
    let Some(channel) = channel else {
        return Ended::Failed;
    };
    let mut client = QuotaServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    let hello = QuotaUp {
        hello: Some(QuotaHello {
            gateway_id: agent.gateway_id.clone(),
            epoch: agent.epoch,
        }),
        ..QuotaUp::default()
    };
    if tx.send(hello).is_err() {
        return Ended::Failed;
    }
    let opened = tokio::select! {
        opened = client.session(UnboundedReceiverStream::new(rx)) => opened,
        () = agent.stop.cancelled() => return Ended::Stopped,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            debug!(%address, %status, "quota session refused");
            return ended_by(&status);
        }
    };
    if agent
        .counters
        .sessions_opened
        .fetch_add(1, Ordering::Relaxed)
        > 0
    {
        bump(&agent.counters.reconnects);
    }
    agent.connected.store(true, Ordering::Relaxed);
    info!(%address, gateway = %agent.gateway_id, "quota session opened");
    // The term of this stream's leader, once a message said it.
    let mut term: Option<u64> = None;
    for message in state.outbox.resend() {
        if tx.send(message).is_err() {
            return Ended::Failed;
        }
    }
    let mut tick = tokio::time::interval(options.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = tokio::time::interval(options.idle_check);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(down)) => {
                    term = Some(down.term);
                    receive(agent, state, down);
                }
                Ok(None) => return Ended::Failed,
                Err(status) => {
                    debug!(%address, %status, "quota session ended");
                    return ended_by(&status);
                }
            },
            _ = tick.tick() => {
                if !send_batch(agent, state, &tx, term) {
                    return Ended::Failed;
                }
            }
            () = agent.kick.notified() => {
                if !send_batch(agent, state, &tx, term) {
                    return Ended::Failed;
                }
            }
            _ = idle.tick() => {
                agent.pool.return_idle(Instant::now(), options.idle_for);
            }
            () = agent.stop.cancelled() => return Ended::Stopped,
        }
    }
}

/// Sends the pool's demands and reports, if any. False when the stream is gone.
fn send_batch(
    agent: &QuotaAgent,
    state: &mut State,
    tx: &mpsc::UnboundedSender<QuotaUp>,
    term: Option<u64>,
) -> bool {
    let now = Instant::now();
    state
        .demands
        .retain(|_, d| now.saturating_duration_since(d.sent_at) < DEMAND_FORGET);
    let demands = if agent.draining.load(Ordering::Acquire) {
        Vec::new()
    } else {
        agent.pool.demands(now)
    };
    let reports = agent.pool.take_reports();
    if demands.is_empty() && reports.is_empty() && state.stray.is_empty() {
        agent.batches_sent.fetch_add(1, Ordering::AcqRel);
        agent.progress.notify_waiters();
        return true;
    }
    let mut up = QuotaUp {
        seq: state.next_seq,
        ..QuotaUp::default()
    };
    state.next_seq += 1;
    for demand in demands {
        let max = demand.max;
        if max == 0 {
            // No reservation nor `set_limit` named a limit for this slot: nothing to ask against.
            agent.pool.request_failed(&demand.slot);
            continue;
        }
        if !demand.sync {
            bump(&agent.counters.refills);
        }
        let id = state.next_demand_id;
        state.next_demand_id += 1;
        up.demands.push(QuotaDemand {
            demand_id: id,
            key: demand.slot.key().to_owned(),
            window: proto_window(demand.slot.window()) as i32,
            max,
            want: demand.want.max(1),
            sync: demand.sync,
        });
        state.demands.insert(
            id,
            SentDemand {
                slot: demand.slot,
                sent_at: now,
            },
        );
    }
    up.reports.append(&mut state.stray);
    for report in reports {
        if let Some(r) = to_proto(state, &report) {
            up.reports.push(r);
        }
    }
    if !up.reports.is_empty() {
        state.outbox.push(up.seq, up.reports.clone(), term);
    }
    let sent = tx.send(up).is_ok();
    agent
        .unacked
        .store(state.outbox.len() as u64, Ordering::Release);
    agent.batches_sent.fetch_add(1, Ordering::AcqRel);
    agent.progress.notify_waiters();
    sent
}

fn to_proto(state: &mut State, report: &LeaseReport) -> Option<QuotaLeaseReport> {
    let origin = state.leases.remove(&report.lease_id.0)?;
    Some(QuotaLeaseReport {
        lease_id: origin.leader_id,
        term: origin.term,
        key: report.slot.key().to_owned(),
        window: proto_window(report.slot.window()) as i32,
        window_id: report.window_id.0,
        consumed: report.consumed,
        returned: report.returned,
        closed: true,
    })
}

/// Applies one message of the leader to the pool.
fn receive(agent: &QuotaAgent, state: &mut State, down: QuotaDown) {
    let now = Instant::now();
    let draining = agent.draining.load(Ordering::Acquire);
    for lease in down.leases {
        let demand = state.demands.remove(&lease.demand_id);
        let Some(demand) = demand.filter(|_| !draining) else {
            // Nobody waits for it (its demand was forgotten, or the agent drains): give it back
            // whole.
            state.stray.push(QuotaLeaseReport {
                lease_id: lease.lease_id,
                term: down.term,
                key: lease.key,
                window: lease.window,
                window_id: lease.window_id,
                consumed: 0,
                returned: lease.tokens,
                closed: true,
            });
            continue;
        };
        let local = state.next_lease_id;
        state.next_lease_id += 1;
        state.leases.insert(
            local,
            LeaseOrigin {
                leader_id: lease.lease_id,
                term: down.term,
            },
        );
        agent.pool.set_mode(
            &demand.slot,
            SlotMode {
                exact: lease.exact,
                endgame: lease.endgame,
            },
        );
        agent.pool.install(
            &demand.slot,
            LeaseGrant {
                id: LeaseId(local),
                window_id: WindowId(lease.window_id),
                tokens: lease.tokens,
                ttl: Duration::from_millis(lease.ttl_ms),
                sent_at: demand.sent_at,
                received_at: now,
            },
        );
        bump(&agent.counters.leases_installed);
    }
    for refusal in down.refusals {
        bump(&agent.counters.refusals);
        let slot = match state.demands.remove(&refusal.demand_id) {
            Some(demand) => demand.slot,
            None => match pool_window(refusal.window) {
                Some(window) => match agent.pool.find(&refusal.key, window) {
                    Some(slot) => slot,
                    None => continue,
                },
                None => continue,
            },
        };
        if refusal.exhausted {
            bump(&agent.counters.exhausted_refusals);
            agent
                .pool
                .mark_exhausted(&slot, WindowId(refusal.window_id));
        } else {
            agent.pool.request_failed(&slot);
        }
    }
    state.outbox.ack(down.acked_seq);
    agent
        .unacked
        .store(state.outbox.len() as u64, Ordering::Release);
    agent.progress.notify_waiters();
    agent.wake();
}
