//! Chaos tests with an oracle for exact global rate limits (QUOTA.md, "Failure semantics").
//!
//! Every test runs real control clusters in-process (`ControlNode`, loopback, port 0) and real
//! quota agents (`QuotaAgent` around a `LeasePool`), breaks something mid-window, and checks what
//! was admitted against an **oracle** kept outside the code under test:
//!
//! ```text
//!   worker ──acquire──▶ QuotaAgent ──Ok(reservation)──▶ Oracle: admitted[(window id, gateway)] += 1
//!     ▲  paced (Load)          └──Exhausted / Unavailable──▶ Oracle: refusals per window / gateway
//!     └── the scenario kills a leader, crashes a gateway, cuts a TCP proxy, spikes the load or
//!         lowers the limit, and reads what that destroyed (tokens held, old-term chunks)
//! ```
//!
//! The window id of an admission is the one in the `Reservation` (the leader's window). Checked in
//! every window of every test: `admitted <= max` (overshoot 0). Where demand exceeded the limit,
//! `admitted >= max - bound`, with the bound computed from what the scenario destroyed plus a slack
//! stated (and justified) next to each assertion.
//!
//! Windows: scenarios that need many windows use `Window::Second` (each window is its own trial).
//! Scenarios that must keep one window open across a failure that takes seconds (a leader's
//! shutdown drains its API for up to 3 s) use `Window::Hour`, not `Minute`: a minute would roll
//! over inside a run one time in six; an hour almost never does, and [`wait_for_room`] waits for
//! the next window in that rare case. The code under test treats every window kind alike.
//!
//! Load is paced (at least 1 ms between calls of one worker) so the workers never starve the
//! cluster's tasks on a 2-core machine; "unpaced" in the scenarios means 1 ms per worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tollgate_control::LocalCluster;
use tollgate_gateway::quota_agent::{AcquireError, QuotaAgent, QuotaAgentOptions};
use tollgate_quota::{LeasePool, LimitSpec, PoolConfig, Quota as _, Window, WindowId};
use tollgate_raft::WindowReport;
use tollgate_testkit::wait_for;
use tracing::info;

const WAIT: Duration = Duration::from_secs(15);
const WORKERS: usize = 3;
/// The quota leader's default lease lifetime (`QuotaOptions::lease_ttl`).
const LEASE_TTL: Duration = Duration::from_secs(1);
/// Most tokens one lease answer in flight can carry: the pool keeps one demand per slot, for
/// about `rate x horizon` tokens (twice, for the estimate's noise), or what waiting calls asked
/// (one per worker, twice: a call that misses again after a wake asks again).
fn one_lease(rate: f64, horizon: Duration) -> u64 {
    2 * (rate * horizon.as_secs_f64()).ceil() as u64 + 2 * WORKERS as u64
}

/// The slowest acceptable failover, from the moment the gateways lose their sessions to the
/// first lease of the new leader. The design target is 1 s; elections take 200-400 ms and the
/// agents' reconnection backoff doubles up to 1 s, so CI on a loaded 2-core machine gets 5 s.
const FAILOVER_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Cluster and agents
// ---------------------------------------------------------------------------------------------

/// What the ledger of the node at `index` knows about one window.
fn window_report(
    cluster: &LocalCluster,
    index: usize,
    key: &str,
    window: Window,
    id: u64,
) -> WindowReport {
    cluster
        .node(index)
        .node()
        .reader()
        .read_quota(|l| l.window_report(key, window, WindowId(id)))
        .unwrap_or_else(|| panic!("no ledger entry for {key} {window:?} window {id}"))
}

struct Gateway {
    agent: Arc<QuotaAgent>,
    task: JoinHandle<()>,
}

fn gateway(endpoints: Vec<String>, id: &str) -> Gateway {
    gateway_with(endpoints, id, PoolConfig::default())
}

fn gateway_with(endpoints: Vec<String>, id: &str, config: PoolConfig) -> Gateway {
    let pool = Arc::new(LeasePool::new(config));
    let (agent, task) = QuotaAgent::start(pool, endpoints, id.into(), QuotaAgentOptions::default());
    Gateway { agent, task }
}

impl Gateway {
    /// The pool's spend-rate estimate for the load's slot, tokens per second.
    fn rate(&self, load: &Load) -> f64 {
        self.agent
            .pool()
            .find(load.key, load.window)
            .map_or(0.0, |slot| self.agent.pool().stats(&slot).rate)
    }

    /// Tokens the gateway can still spend (current and queued leases).
    fn live(&self, load: &Load) -> u64 {
        self.agent
            .pool()
            .find(load.key, load.window)
            .map_or(0, |slot| self.agent.pool().stats(&slot).live)
    }

    /// Ends the agent's task and waits for it (its session closes; leases held stay spent).
    async fn stop(self) {
        self.agent.shutdown();
        self.task.await.unwrap();
    }
}

async fn wait_connected(gateways: &[&Gateway]) {
    wait_for(WAIT, || gateways.iter().all(|g| g.agent.is_connected()))
        .await
        .unwrap();
}

/// Two gateways on the cluster, connected, each running the load's workers.
async fn two_loaded_gateways(
    cluster: &LocalCluster,
    load: &Arc<Load>,
) -> ([Gateway; 2], Vec<Workers>) {
    let gateways = [
        gateway(cluster.endpoints(), "gw-a"),
        gateway(cluster.endpoints(), "gw-b"),
    ];
    wait_connected(&gateways.iter().collect::<Vec<_>>()).await;
    let workers = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| Workers::spawn(load, i, &g.agent))
        .collect();
    (gateways, workers)
}

/// Stops the gateways, then the cluster.
async fn teardown(gateways: impl IntoIterator<Item = Gateway>, cluster: LocalCluster) {
    for g in gateways {
        g.stop().await;
    }
    cluster.shutdown().await;
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// If the current `window` has less than `need` left, waits for the next one, so that a scenario
/// that must stay inside one window does.
async fn wait_for_room(window: Window, need: Duration) {
    let now = now_ms();
    let id = window.id_at(now);
    let left = window.end_ms(id) - now;
    if u128::from(left) < need.as_millis() {
        info!(left_ms = left, "--- wait for the next {window:?} window");
        wait_for(need + Duration::from_secs(2), || {
            window.id_at(now_ms()) != id
        })
        .await
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle and the load
// ---------------------------------------------------------------------------------------------

/// What was admitted and refused, per window id and gateway, as the callers saw it.
#[derive(Default)]
struct Oracle {
    /// (window id from the reservation, gateway) -> calls admitted.
    admitted: Mutex<BTreeMap<(u64, usize), u64>>,
    /// (window id by the caller's clock, gateway) -> calls refused `Exhausted`.
    exhausted: Mutex<BTreeMap<(u64, usize), u64>>,
    /// (window id by the caller's clock, gateway) -> calls answered `Unavailable`.
    unavailable: Mutex<BTreeMap<(u64, usize), u64>>,
    total: AtomicU64,
}

impl Oracle {
    fn record(map: &Mutex<BTreeMap<(u64, usize), u64>>, window: u64, gateway: usize) {
        *map.lock().unwrap().entry((window, gateway)).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    fn sum_by_window(map: &Mutex<BTreeMap<(u64, usize), u64>>) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for (&(w, _), &n) in map.lock().unwrap().iter() {
            *out.entry(w).or_default() += n;
        }
        out
    }

    /// Admitted per window, over every gateway.
    fn windows(&self) -> BTreeMap<u64, u64> {
        Self::sum_by_window(&self.admitted)
    }

    fn admitted_in(&self, window: u64) -> u64 {
        self.windows().get(&window).copied().unwrap_or(0)
    }

    /// Admitted by one gateway, per window.
    fn windows_of(&self, gateway: usize) -> BTreeMap<u64, u64> {
        self.admitted
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, g), _)| *g == gateway)
            .map(|((w, _), n)| (*w, *n))
            .collect()
    }

    fn admitted_by(&self, gateway: usize) -> u64 {
        self.windows_of(gateway).values().sum()
    }

    /// Windows in which some call was refused `Exhausted`: demand exceeded the limit there.
    fn exhausted_windows(&self) -> BTreeMap<u64, u64> {
        Self::sum_by_window(&self.exhausted)
    }

    fn exhausted_by(&self, gateway: usize, window: u64) -> u64 {
        self.exhausted
            .lock()
            .unwrap()
            .get(&(window, gateway))
            .copied()
            .unwrap_or(0)
    }

    fn unavailable_by(&self, gateway: usize) -> u64 {
        self.unavailable
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, g), _)| *g == gateway)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The invariant of every chaos test: no window admitted more than `max`.
    fn assert_never_over(&self, max: u64) {
        let windows = self.windows();
        let over: Vec<_> = windows.iter().filter(|(_, n)| **n > max).collect();
        assert!(
            over.is_empty(),
            "over the limit {max}: {over:?} (all: {windows:?})"
        );
    }
}

/// One limited key under load: what the workers ask for and how fast.
struct Load {
    key: &'static str,
    window: Window,
    /// The `max` the workers put in their `LimitSpec`s.
    max: AtomicU64,
    /// Microseconds between two calls of one worker.
    pace_us: AtomicU64,
    oracle: Oracle,
}

impl Load {
    fn new(key: &'static str, window: Window, max: u64, pace: Duration) -> Arc<Self> {
        Arc::new(Self {
            key,
            window,
            max: AtomicU64::new(max),
            pace_us: AtomicU64::new(u64::try_from(pace.as_micros()).unwrap()),
            oracle: Oracle::default(),
        })
    }

    fn set_pace(&self, pace: Duration) {
        self.pace_us
            .store(u64::try_from(pace.as_micros()).unwrap(), Ordering::SeqCst);
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }
}

/// Workers of one gateway; stopped together.
struct Workers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    fn spawn(load: &Arc<Load>, gateway: usize, agent: &Arc<QuotaAgent>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WORKERS)
            .map(|_| tokio::spawn(work(load.clone(), gateway, agent.clone(), stop.clone())))
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// One worker: acquire, tally, commit, then wait for its next slot (pacing, not a wait on a
/// condition: it is the offered load).
async fn work(load: Arc<Load>, gateway: usize, agent: Arc<QuotaAgent>, stop: Arc<AtomicBool>) {
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let spec = [LimitSpec::new(load.key, load.window, load.max())];
        match agent.acquire(&spec).await {
            Ok(reservation) => {
                let window = reservation.limits()[0].window_id().0;
                Oracle::record(&load.oracle.admitted, window, gateway);
                load.oracle.total.fetch_add(1, Ordering::SeqCst);
                agent.pool().commit(reservation);
            }
            Err(AcquireError::Exhausted(_)) => {
                let window = load.window.id_at(now_ms()).0;
                Oracle::record(&load.oracle.exhausted, window, gateway);
            }
            Err(AcquireError::Unavailable { .. }) => {
                let window = load.window.id_at(now_ms()).0;
                Oracle::record(&load.oracle.unavailable, window, gateway);
            }
        }
        let pace = Duration::from_micros(load.pace_us.load(Ordering::SeqCst).max(1_000));
        let now = tokio::time::Instant::now();
        next = (next + pace).max(now);
        tokio::time::sleep_until(next).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can be cut
// ---------------------------------------------------------------------------------------------

/// A loopback TCP proxy to one address. [`Proxy::cut`] drops every connection and closes each new
/// one at once (a partition the gateway notices); [`Proxy::heal`] forwards again.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    connections: Vec<AbortHandle>,
    accepted: u64,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.cut {
                    drop(inbound);
                    continue;
                }
                state.accepted += 1;
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(task.abort_handle());
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    fn heal(&self) {
        self.state.lock().unwrap().cut = false;
    }

    fn accepted(&self) -> u64 {
        self.state.lock().unwrap().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.state.lock().unwrap().connections.drain(..) {
            connection.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The leader is killed mid-window
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_window_never_overshoots_and_loses_at_most_the_old_terms_chunks() {
    tollgate_tests::init_tracing();
    let window = Window::Hour;
    // Kill (up to 3 s of API drain) + election + reconnect + draining the rest of the window.
    wait_for_room(window, Duration::from_secs(30)).await;
    let mut cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    // Paced at 3 workers x 2 gateways x 100/s, about 600/s: the window lasts through the kill.
    let max = 6_000;
    let load = Load::new("chaos:leader-kill", window, max, Duration::from_millis(10));
    let (gateways, workers) = two_loaded_gateways(&cluster, &load).await;
    wait_for(WAIT, || load.oracle.total() >= 300).await.unwrap();
    let w = window.id_at(now_ms()).0;

    info!("--- kill the leader mid-window");
    let old = cluster.take(cluster.leader_index().unwrap()).unwrap();
    let old_term = old.node().metrics().borrow().current_term;
    let sessions: Vec<u64> = gateways
        .iter()
        .map(|g| g.agent.stats().sessions_opened)
        .collect();
    let admitted_at_kill = load.oracle.admitted_in(w);
    let kill_started = Instant::now();
    let killing = tokio::spawn(old.shutdown());
    // The old leader serves until its API stops; then every gateway loses its session.
    wait_for(WAIT, || gateways.iter().all(|g| !g.agent.is_connected()))
        .await
        .unwrap();
    let disconnected = Instant::now();
    let admitted_at_disconnect = load.oracle.admitted_in(w);
    let no_new_session = gateways
        .iter()
        .zip(&sessions)
        .all(|(g, &before)| g.agent.stats().sessions_opened == before);
    // Every call admitted before a gateway opened a session with a later leader spent a lease of
    // an old term. If a session opened while we looked, fall back to the count at the kill.
    let admitted_old_terms = if no_new_session {
        admitted_at_disconnect
    } else {
        admitted_at_kill
    };
    let installed: Vec<u64> = gateways
        .iter()
        .map(|g| g.agent.stats().leases_installed)
        .collect();
    killing.await.unwrap();
    let dead = Instant::now();
    cluster.wait_for_new_leader(old_term).await.unwrap();

    info!("--- leases flow again from the new leader");
    wait_for(WAIT, || {
        gateways
            .iter()
            .zip(&installed)
            .all(|(g, &before)| g.agent.stats().leases_installed > before)
    })
    .await
    .unwrap_or_else(|e| {
        let stats: Vec<_> = gateways.iter().map(|g| g.agent.stats()).collect();
        panic!("{e}: {stats:?}")
    });
    let flowing = Instant::now();
    let failover = flowing - disconnected;
    info!(
        from_kill_ms = (flowing - kill_started).as_millis(),
        from_sessions_lost_ms = failover.as_millis(),
        from_shutdown_done_ms = flowing.saturating_duration_since(dead).as_millis(),
        "failover: leases flow again"
    );
    assert!(
        failover <= FAILOVER_LIMIT,
        "leases flowed again only {failover:?} after the sessions were lost"
    );

    info!("--- drain the window at full speed");
    load.set_pace(Duration::from_millis(1));
    wait_for(WAIT, || {
        gateways
            .iter()
            .enumerate()
            .all(|(i, g)| load.oracle.exhausted_by(i, w) > 0 && g.live(&load) == 0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: admitted {:?}", load.oracle.windows()));
    for w in workers {
        w.stop().await;
    }

    let leader = cluster.leader_index().unwrap();
    let new_term = cluster.node(leader).node().metrics().borrow().current_term;
    let report = window_report(&cluster, leader, load.key, window, w);
    let admitted = load.oracle.admitted_in(w);
    // Budget of every term before the serving one that still counts against the limit.
    let old_outstanding: u64 = report
        .per_term
        .range(..new_term)
        .map(|(_, c)| c.granted - c.released)
        .sum();
    let stranded: u64 = report
        .per_term
        .range(..new_term)
        .map(|(_, c)| c.granted - c.released - c.consumed)
        .sum();
    info!(
        windows = ?load.oracle.windows(),
        admitted,
        admitted_at_kill,
        admitted_old_terms,
        old_outstanding,
        stranded,
        per_term = ?report.per_term,
        "after the failover"
    );
    load.oracle.assert_never_over(max);
    // What the kill destroyed: old-term tokens not yet admitted when the gateways lost the old
    // leader (its unleased chunk, leases in flight, reports it never committed). Old-term calls
    // admitted after that only make the real loss smaller. The slack covers the new term: a
    // worker's last call racing the exhaustion of the window (one per worker).
    let slack = 2 * WORKERS as u64;
    let bound = old_outstanding.saturating_sub(admitted_old_terms) + slack;
    assert!(
        admitted + bound >= max,
        "admitted {admitted} of {max}; the kill can explain {bound} (old terms outstanding \
         {old_outstanding}, {admitted_old_terms} admitted from them before the kill)"
    );
    assert!(report.outstanding <= max);

    teardown(gateways, cluster).await;
}

// ---------------------------------------------------------------------------------------------
// 2. A gateway crashes holding leases
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_gateways_leases_stay_spent_and_are_all_the_window_loses() {
    tollgate_tests::init_tracing();
    let window = Window::Hour;
    wait_for_room(window, Duration::from_secs(20)).await;
    let cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    let max = 3_000;
    // 3 workers x 2 gateways at 2 ms: about 3000/s offered.
    let load = Load::new("chaos:gateway-crash", window, max, Duration::from_millis(2));
    // A asks for leases that last 500 ms of its spend rate (ten times the default), so that it
    // holds a real share of the window when it dies.
    let a_config = PoolConfig {
        lease_horizon: Duration::from_millis(500),
        ..PoolConfig::default()
    };
    let a = gateway_with(cluster.endpoints(), "gw-crash", a_config);
    let b = gateway(cluster.endpoints(), "gw-survivor");
    wait_connected(&[&a, &b]).await;
    let a_workers = Workers::spawn(&load, 0, &a.agent);
    let b_workers = Workers::spawn(&load, 1, &b.agent);
    wait_for(WAIT, || load.oracle.admitted_by(0) >= 300)
        .await
        .unwrap();
    let w = window.id_at(now_ms()).0;

    info!("--- crash gateway A while it holds leases");
    a_workers.stop().await;
    let slot = a.agent.pool().find(load.key, window).unwrap();
    // A's spend rate sizes the one demand that may be in flight when it dies (see below).
    let a_rate = a.agent.pool().stats(&slot).rate;
    let pool = a.agent.pool().clone();
    a.stop().await;
    // Nothing spends from or installs into A's pool any more. Reports taken around the read of
    // the live tokens: a lease that expires in between shows in the second batch.
    let unsent_before: u64 = pool.take_reports().iter().map(|r| r.returned).sum();
    let held = pool.stats(&slot).live;
    let unsent_after: u64 = pool.take_reports().iter().map(|r| r.returned).sum();
    let unsent = unsent_before + unsent_after;
    drop(pool);
    info!(held, unsent, a_rate, "gateway A crashed");
    assert!(held > 0, "A held no tokens: the scenario destroyed nothing");

    info!("--- B drains the rest of the window");
    wait_for(WAIT, || {
        load.oracle.exhausted_by(1, w) > 0 && b.live(&load) == 0
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: admitted {:?}", load.oracle.windows()));
    b_workers.stop().await;

    let admitted = load.oracle.admitted_in(w);
    info!(
        windows = ?load.oracle.windows(),
        by_a = load.oracle.admitted_by(0),
        by_b = load.oracle.admitted_by(1),
        held,
        unsent,
        "after the crash"
    );
    load.oracle.assert_never_over(max);
    // "Unknown means spent": the leader cannot tell a crashed gateway from a cut-off one that
    // still spends, so A's tokens are never handed out again.
    assert!(
        admitted + held + unsent <= max,
        "A's {held} held + {unsent} unreported tokens were handed out again: admitted {admitted} of {max}"
    );
    // And they are all the window loses, but for one lease answer in flight to A when it died.
    let in_flight = one_lease(a_rate, a_config.lease_horizon);
    let bound = held + unsent + in_flight;
    assert!(
        admitted + bound >= max,
        "admitted {admitted} of {max}; the crash explains {bound} ({held} held, {unsent} \
         unreported, {in_flight} in flight)"
    );

    b.stop().await;
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. A gateway is partitioned from the leader
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_gateway_spends_what_it_holds_then_fails_closed() {
    tollgate_tests::init_tracing();
    let window = Window::Second;
    let cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    // Per second: 2 x 3 workers at 1 ms offer several times the limit.
    let max = 400;
    let load = Load::new("chaos:partition", window, max, Duration::from_millis(1));
    // One proxy per control node, the leader's first: the partitioned gateway only ever reaches
    // the cluster through them (a redirect would point around the proxies; it connects to the
    // leader first and needs none).
    let leader = cluster.leader_index().unwrap();
    let mut order: Vec<usize> = (0..cluster.len()).collect();
    order.swap(0, leader);
    let mut proxies = Vec::new();
    for i in order {
        proxies.push(Proxy::start(cluster.node(i).api_addr()).await);
    }
    let p = gateway(
        proxies.iter().map(|p| p.addr.to_string()).collect(),
        "gw-partitioned",
    );
    let q = gateway(cluster.endpoints(), "gw-connected");
    wait_connected(&[&p, &q]).await;
    assert!(
        proxies[0].accepted() > 0,
        "P reached the leader around its proxy"
    );
    let p_workers = Workers::spawn(&load, 0, &p.agent);
    let q_workers = Workers::spawn(&load, 1, &q.agent);
    wait_for(WAIT, || {
        load.oracle.windows_of(0).len() >= 2 && load.oracle.windows_of(1).len() >= 2
    })
    .await
    .unwrap();

    info!("--- cut the partitioned gateway off");
    let held_at_cut = p.live(&load);
    let rate_at_cut = p.rate(&load);
    let installed_at_cut = p.agent.stats().leases_installed;
    let cut_ms = now_ms();
    for proxy in &proxies {
        proxy.cut();
    }
    wait_for(WAIT, || !p.agent.is_connected())
        .await
        .expect("the partitioned gateway still has a session: did it go around the proxy?");
    // Leases never outlive their window nor their TTL: P has nothing left after both.
    wait_for(WAIT, || p.live(&load) == 0).await.unwrap();
    let unavailable_before = load.oracle.unavailable_by(0);
    // Keep the partition for two more whole windows.
    let until = window.end_ms(window.id_at(now_ms())) + 2 * window.millis();
    wait_for(WAIT, || now_ms() >= until).await.unwrap();
    let heal_ms = now_ms();
    assert!(
        load.oracle.unavailable_by(0) > unavailable_before,
        "a partitioned gateway without tokens answers Unavailable (fails closed)"
    );
    assert_eq!(
        p.agent.stats().leases_installed,
        installed_at_cut,
        "no lease reached P through the partition"
    );

    info!("--- heal the partition");
    for proxy in &proxies {
        proxy.heal();
    }
    let admitted_by_p = load.oracle.admitted_by(0);
    wait_for(WAIT, || load.oracle.admitted_by(0) > admitted_by_p)
        .await
        .unwrap();
    let healed_ms = now_ms();
    // Two more windows after the heal.
    let until = window.end_ms(window.id_at(now_ms())) + window.millis();
    wait_for(WAIT, || now_ms() >= until).await.unwrap();
    p_workers.stop().await;
    q_workers.stop().await;

    // One lease answer lost in the cut (see the bound below).
    let destroyed_at_cut =
        held_at_cut + one_lease(rate_at_cut, PoolConfig::default().lease_horizon);
    let windows = load.oracle.windows();
    let exhausted = load.oracle.exhausted_windows();
    let p_windows = load.oracle.windows_of(0);
    info!(
        ?windows,
        ?p_windows,
        ?exhausted,
        held_at_cut,
        destroyed_at_cut,
        heal_after_ms = heal_ms - cut_ms,
        reconnected_after_ms = healed_ms - heal_ms,
        p_stats = ?p.agent.stats(),
        "after the partition"
    );
    load.oracle.assert_never_over(max);
    // Fail closed: P admits nothing in the windows that start once its leases are gone (their
    // TTL, 1 s, from the cut) and end before the heal; there is at least one such window.
    let ttl_ms = u64::try_from(LEASE_TTL.as_millis()).unwrap();
    let dark: Vec<u64> = (window.id_at(cut_ms).0..=window.id_at(heal_ms).0)
        .filter(|&w| {
            window.start_ms(WindowId(w)) >= cut_ms + ttl_ms && window.end_ms(WindowId(w)) <= heal_ms
        })
        .collect();
    assert!(!dark.is_empty(), "the partition outlasted no whole window");
    for w in &dark {
        let n = p_windows.get(w).copied().unwrap_or(0);
        assert_eq!(
            n, 0,
            "P admitted {n} calls in window {w}, inside the partition"
        );
    }
    // Where demand exceeded the limit (some call was refused Exhausted), the window reached the
    // limit but for what the partition destroyed: P's tokens at the cut (they die with their
    // window) and one lease answer lost in the cut, in the window of the cut (or the next one,
    // for an answer cut in the window's last instants; and P's reports of them are re-sent after
    // the heal with nothing returned). Elsewhere the slack is one call per worker racing the
    // window's end. The first and last windows of the run saw demand for part of the window only
    // and are skipped.
    let first = *windows.keys().next().unwrap();
    let last = *windows.keys().next_back().unwrap();
    let cut_window = window.id_at(cut_ms).0;
    let slack = 2 * WORKERS as u64;
    let mut checked = 0;
    for (&w, &n) in &windows {
        if w == first || w == last || !exhausted.contains_key(&w) {
            continue;
        }
        let destroyed = if w == cut_window || w == cut_window + 1 {
            destroyed_at_cut
        } else {
            0
        };
        assert!(
            n + destroyed + slack >= max,
            "window {w} admitted {n} of {max} (bound {destroyed} + {slack}): {windows:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "too few windows where demand exceeded the limit: {exhausted:?}"
    );

    p.stop().await;
    q.stop().await;
    drop(proxies);
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. A 10x load spike
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenfold_load_spike_reaches_the_limit_and_never_passes_it() {
    tollgate_tests::init_tracing();
    let window = Window::Second;
    let cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    let max = 400;
    // Steady: 2 gateways x 3 workers at 75 ms = 80/s, 20% of the limit. Spike: 7.5 ms, ten
    // times as much, 200% of the limit (nominal: a loaded machine paces slower).
    let steady = Duration::from_millis(75);
    let spike = Duration::from_micros(7_500);
    let load = Load::new("chaos:spike", window, max, steady);
    let (gateways, workers) = two_loaded_gateways(&cluster, &load).await;
    // Three whole windows of steady load.
    let spike_ms = window.end_ms(window.id_at(now_ms())) + 3 * window.millis();
    wait_for(WAIT, || now_ms() >= spike_ms).await.unwrap();

    info!("--- spike to ten times the load");
    let spike_started = now_ms();
    load.set_pace(spike);
    let until = window.end_ms(window.id_at(now_ms())) + 3 * window.millis();
    wait_for(WAIT, || now_ms() >= until).await.unwrap();
    for w in workers {
        w.stop().await;
    }

    let windows = load.oracle.windows();
    let exhausted = load.oracle.exhausted_windows();
    let spike_window = window.id_at(spike_started).0;
    let unavailable = Oracle::sum_by_window(&load.oracle.unavailable);
    info!(
        ?windows,
        ?exhausted,
        ?unavailable,
        spike_window,
        "after the spike"
    );
    load.oracle.assert_never_over(max);
    // Steady load stays under the limit: nothing is refused as spent.
    let steady_refused: Vec<_> = exhausted.range(..spike_window).collect();
    assert!(
        steady_refused.is_empty(),
        "calls refused as over the limit under steady load at 15%: {steady_refused:?}"
    );
    // Every window in which the spike's demand exceeded the limit (a call was refused Exhausted)
    // reaches it, within 2%: the design's target is at least 98% of the limit admitted at 1.2x
    // the offered load, and nothing was destroyed here; the spike's first leases are small
    // (the gateway's rate estimate lags the spike), which costs round trips, not tokens.
    let bound = max / 50;
    let spiking: Vec<_> = windows
        .range(spike_window..)
        .filter(|(w, _)| exhausted.contains_key(w))
        .collect();
    for &(w, &n) in &spiking {
        assert!(
            n + bound >= max,
            "window {w} of the spike admitted {n} of {max}: {windows:?}"
        );
    }
    // The spike lasted three whole windows at twice the limit: demand exceeded it in most of
    // them even when the machine is too loaded to pace the load exactly.
    assert!(
        spiking.len() >= 2,
        "demand exceeded the limit in only {spiking:?}"
    );

    teardown(gateways, cluster).await;
}

// ---------------------------------------------------------------------------------------------
// 5. The limit is lowered mid-window
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_caps_every_window_that_starts_after_the_change() {
    tollgate_tests::init_tracing();
    let window = Window::Second;
    let cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    let (high, low) = (1_000, 300);
    let load = Load::new("chaos:lowered", window, high, Duration::from_millis(1));
    let (gateways, workers) = two_loaded_gateways(&cluster, &load).await;
    wait_for(WAIT, || load.oracle.windows().len() >= 3)
        .await
        .unwrap();

    info!("--- lower the limit from {high} to {low}");
    let change_ms = now_ms();
    for g in &gateways {
        g.agent.set_limit(load.key, window, low);
    }
    load.max.store(low, Ordering::SeqCst);
    let until = window.end_ms(window.id_at(now_ms())) + 3 * window.millis();
    wait_for(WAIT, || now_ms() >= until).await.unwrap();
    for w in workers {
        w.stop().await;
    }

    let windows = load.oracle.windows();
    let exhausted = load.oracle.exhausted_windows();
    let change_window = window.id_at(change_ms).0;
    info!(?windows, ?exhausted, change_window, "after the change");
    load.oracle.assert_never_over(high);
    let before: Vec<_> = windows.range(..change_window).skip(1).collect();
    assert!(
        before.iter().any(|(_, n)| **n > low),
        "the old limit was never used above the new one: {windows:?}"
    );
    // Every window that starts after the change admits at most the new limit, and reaches it
    // when demand exceeds it (slack: one call per worker racing the window's end).
    let after: Vec<_> = windows.range(change_window + 1..).collect();
    assert!(after.len() >= 3, "{windows:?}");
    let last = *windows.keys().next_back().unwrap();
    for &(w, &n) in &after {
        assert!(
            n <= low,
            "window {w} admitted {n} after the limit was lowered to {low}"
        );
        if *w != last && exhausted.contains_key(w) {
            assert!(
                n + 2 * WORKERS as u64 >= low,
                "window {w} admitted only {n} of {low}"
            );
        }
    }

    teardown(gateways, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_stops_refills_at_once_and_drains_within_the_lease_ttl() {
    tollgate_tests::init_tracing();
    let window = Window::Hour;
    wait_for_room(window, Duration::from_secs(20)).await;
    let cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    let (high, low) = (1_000, 300);
    let load = Load::new("chaos:lowered-hour", window, high, Duration::from_millis(5));
    let (gateways, workers) = two_loaded_gateways(&cluster, &load).await;
    // Past the new limit already, and well under the old one.
    wait_for(WAIT, || load.oracle.total() >= low + 100)
        .await
        .unwrap();
    for w in workers {
        w.stop().await;
    }
    let w = window.id_at(now_ms()).0;

    info!("--- lower the limit from {high} to {low}");
    let admitted_at_change = load.oracle.admitted_in(w);
    let held: u64 = gateways.iter().map(|g| g.live(&load)).sum();
    for g in &gateways {
        g.agent.set_limit(load.key, window, low);
    }
    load.max.store(low, Ordering::SeqCst);
    let installed_at_change: u64 = gateways
        .iter()
        .map(|g| g.agent.stats().leases_installed)
        .sum();
    // Every lease out at the change ends within its TTL (nobody spends here meanwhile). The
    // promise is about time, so the wait is for time to pass, with a margin for the tick.
    let drained_at = Instant::now() + LEASE_TTL + Duration::from_millis(200);
    wait_for(WAIT, || Instant::now() >= drained_at)
        .await
        .unwrap();
    let installed_after_ttl: u64 = gateways
        .iter()
        .map(|g| g.agent.stats().leases_installed)
        .sum();
    let live_after_ttl: u64 = gateways.iter().map(|g| g.live(&load)).sum();

    info!("--- call again after the lease TTL");
    let workers: Vec<_> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| Workers::spawn(&load, i, &g.agent))
        .collect();
    wait_for(WAIT, || {
        (0..gateways.len()).all(|i| load.oracle.exhausted_by(i, w) > 0)
    })
    .await
    .unwrap();
    for w in workers {
        w.stop().await;
    }
    let admitted = load.oracle.admitted_in(w);
    let leader = cluster.leader_index().unwrap();
    let report = window_report(&cluster, leader, load.key, window, w);
    info!(
        admitted_at_change,
        admitted,
        held,
        installed_at_change,
        installed_after_ttl,
        live_after_ttl,
        ledger_max = report.max,
        ledger_outstanding = report.outstanding,
        "after the change"
    );
    assert!(
        held > 0,
        "the gateways held no lease at the change: nothing to drain"
    );
    load.oracle.assert_never_over(high);
    // The window had admitted more than the new limit when it changed; refills stop at once and
    // the leases out drained (unspent) within their TTL: nothing may be admitted any more.
    assert_eq!(
        admitted,
        admitted_at_change,
        "{} calls admitted after the limit was lowered to {low} below the {admitted_at_change} \
         already admitted (gateways held {held} tokens at the change)",
        admitted - admitted_at_change
    );

    teardown(gateways, cluster).await;
}
