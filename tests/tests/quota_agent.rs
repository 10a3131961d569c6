//! The gateway's quota agent against real 1- and 3-node control clusters (`ControlNode`, loopback
//! listeners bound to port 0): two agents (two pools, two gateway ids) hammer the same limit from
//! several tasks each, and the sum of what they admitted per window never exceeds the limit.
//!
//! Every wait is on a condition with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use tokio::net::TcpListener;
use tollgate_control::LocalCluster;
use tollgate_gateway::quota_agent::{AcquireError, QuotaAgent, QuotaAgentOptions};
use tollgate_quota::{LeasePool, LimitSpec, PoolConfig, Quota as _, Window};
use tollgate_testkit::wait_for;
use tracing::info;

const WAIT: Duration = Duration::from_secs(15);
const WORKERS: usize = 4;

fn agent(endpoints: Vec<String>, id: &str) -> Arc<QuotaAgent> {
    let pool = Arc::new(LeasePool::new(PoolConfig::default()));
    let (agent, _task) =
        QuotaAgent::start(pool, endpoints, id.into(), QuotaAgentOptions::default());
    agent
}

/// Calls admitted per window id, over every agent.
#[derive(Default)]
struct Tally {
    per_window: Mutex<HashMap<u64, u64>>,
    admitted: AtomicU64,
    stop: AtomicBool,
}

impl Tally {
    fn total(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst)
    }

    fn windows(&self) -> HashMap<u64, u64> {
        self.per_window.lock().unwrap().clone()
    }
}

/// Acquires one token at a time until the window is spent or `until`; `pace` simulates the time a
/// call takes. Stops early when the tally says so. Returns whether it saw the window exhausted.
async fn hammer(
    agent: Arc<QuotaAgent>,
    key: &'static str,
    max: u64,
    tally: Arc<Tally>,
    until: Instant,
    pace: Option<Duration>,
) -> bool {
    while Instant::now() < until && !tally.stop.load(Ordering::SeqCst) {
        match agent
            .acquire(&[LimitSpec::new(key, Window::Minute, max)])
            .await
        {
            Ok(reservation) => {
                let window = reservation.limits()[0].window_id().0;
                *tally.per_window.lock().unwrap().entry(window).or_default() += 1;
                tally.admitted.fetch_add(1, Ordering::SeqCst);
                agent.pool().commit(reservation);
                if let Some(pace) = pace {
                    tokio::time::sleep(pace).await;
                }
            }
            Err(AcquireError::Exhausted(_)) => return true,
            Err(AcquireError::Unavailable { .. }) => {}
        }
    }
    false
}

fn spawn_workers(
    agents: &[Arc<QuotaAgent>],
    key: &'static str,
    max: u64,
    tally: &Arc<Tally>,
    until: Instant,
    pace: Option<Duration>,
) -> Vec<tokio::task::JoinHandle<bool>> {
    let mut tasks = Vec::new();
    for agent in agents {
        for _ in 0..WORKERS {
            tasks.push(tokio::spawn(hammer(
                agent.clone(),
                key,
                max,
                tally.clone(),
                until,
                pace,
            )));
        }
    }
    tasks
}

async fn wait_connected(agents: &[Arc<QuotaAgent>]) {
    wait_for(WAIT, || agents.iter().all(|a| a.is_connected()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_never_admit_more_than_the_limit_and_reach_it() {
    tollgate_tests::init_tracing();
    let cluster = LocalCluster::start(1, "admin-secret").await.unwrap();
    let key = "grant:g/agent-one-node";
    let max = 200;
    let agents = [
        agent(cluster.endpoints(), "gw-a"),
        agent(cluster.endpoints(), "gw-b"),
    ];
    wait_connected(&agents).await;

    info!(
        "--- hammer the limit from {} tasks on two gateways",
        2 * WORKERS
    );
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(20);
    let tasks = spawn_workers(&agents, key, max, &tally, until, None);
    for task in tasks {
        assert!(
            task.await.unwrap(),
            "every worker ends on an exhausted window"
        );
    }
    let windows = tally.windows();
    info!(?windows, "admitted per window");
    assert!(
        windows.values().all(|&n| n <= max),
        "over the limit: {windows:?}"
    );
    let best = windows.values().copied().max().unwrap_or(0);
    assert!(best >= 190, "only {best} of {max} admitted: {windows:?}");

    info!("--- a spent window is refused at once on both gateways");
    for agent in &agents {
        let started = Instant::now();
        let answer = agent
            .acquire(&[LimitSpec::new(key, Window::Minute, max)])
            .await;
        assert!(
            matches!(answer, Err(AcquireError::Exhausted(_))),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        let stats = agent.stats();
        info!(?stats, "agent counters");
        assert!(stats.leases_installed > 0);
        assert!(stats.exhausted_refusals > 0);
    }
    for agent in &agents {
        agent.shutdown();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_follow_a_new_leader_and_still_never_admit_more_than_the_limit() {
    tollgate_tests::init_tracing();
    let mut cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
    let key = "grant:g/agent-failover";
    // Large enough that the run outlasts the failover (shutting the leader down takes seconds).
    let max = 20_000;
    let agents = [
        agent(cluster.endpoints(), "gw-a"),
        agent(cluster.endpoints(), "gw-b"),
    ];
    wait_connected(&agents).await;

    info!("--- hammer at a paced rate");
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(30);
    let tasks = spawn_workers(
        &agents,
        key,
        max,
        &tally,
        until,
        Some(Duration::from_millis(5)),
    );
    wait_for(WAIT, || tally.total() >= 300).await.unwrap();

    info!("--- shut the leader down mid-run");
    let leader = cluster.leader_index().unwrap();
    let old_term = cluster.node(leader).node().metrics().borrow().current_term;
    cluster.stop(leader).await;
    let at_kill = tally.total();
    let installed: Vec<u64> = agents.iter().map(|a| a.stats().leases_installed).collect();
    cluster.wait_for_new_leader(old_term).await.unwrap();

    info!("--- both gateways get leases from the new leader and keep admitting");
    wait_for(WAIT, || {
        agents
            .iter()
            .zip(&installed)
            .all(|(a, &before)| a.stats().leases_installed > before && a.stats().reconnects > 0)
    })
    .await
    .unwrap_or_else(|e| {
        let stats: Vec<_> = agents.iter().map(|a| a.stats()).collect();
        panic!(
            "{e}: {stats:?}, admitted {} ({at_kill} at the kill)",
            tally.total()
        )
    });
    let after_new_leases = tally.total();
    wait_for(WAIT, || tally.total() > after_new_leases)
        .await
        .unwrap();
    tally.stop.store(true, Ordering::SeqCst);

    for task in tasks {
        task.await.unwrap();
    }
    let windows = tally.windows();
    let total = tally.total();
    info!(
        ?windows,
        total, at_kill, "admitted per window (the old term's unleased chunk stays spent)"
    );
    assert!(
        windows.values().all(|&n| n <= max),
        "over the limit: {windows:?}"
    );
    assert!(total > at_kill);
    for agent in &agents {
        info!(stats = ?agent.stats(), "agent counters");
        agent.shutdown();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_reachable_control_node_is_unavailable_within_the_timeout() {
    tollgate_tests::init_tracing();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let agent = agent(vec![address], "gw-alone");
    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    let answer = agent
        .acquire_within(
            &[LimitSpec::new("grant:g/alone", Window::Minute, 10)],
            timeout,
        )
        .await;
    let took = started.elapsed();
    assert_eq!(answer.unwrap_err(), AcquireError::Unavailable { index: 0 });
    assert!(took >= timeout, "answered before the timeout: {took:?}");
    assert!(took < timeout + Duration::from_millis(250), "took {took:?}");
    assert!(!agent.is_connected());
    assert_eq!(agent.stats().unavailable, 1);
    assert_eq!(agent.stats().sessions_opened, 0);
    agent.shutdown();
}

/// Admits on `agent` until the window is spent; returns how many calls it admitted per window.
async fn admit_until_spent(agent: &QuotaAgent, key: &str, max: u64) -> HashMap<u64, u64> {
    let mut admitted: HashMap<u64, u64> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match agent
            .acquire(&[LimitSpec::new(key, Window::Hour, max)])
            .await
        {
            Ok(reservation) => {
                *admitted
                    .entry(reservation.limits()[0].window_id().0)
                    .or_default() += 1;
                agent.pool().commit(reservation);
            }
            Err(AcquireError::Exhausted(_)) => return admitted,
            Err(AcquireError::Unavailable { .. }) => {}
        }
    }
    panic!("the window was not spent within {WAIT:?}: {admitted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_gateway_gives_its_unused_lease_tokens_back_to_the_window() {
    tollgate_tests::init_tracing();
    let cluster = LocalCluster::start(1, "admin-secret").await.unwrap();
    let key = "grant:g/agent-drain";
    // Large enough that a lease holds several tokens, small enough to spend quickly.
    let max = 400;
    let a = agent(cluster.endpoints(), "gw-a");
    let b = agent(cluster.endpoints(), "gw-b");
    wait_connected(&[a.clone(), b.clone()]).await;

    info!("--- gateway A takes a lease and spends one token of it");
    let first = a
        .acquire(&[LimitSpec::new(key, Window::Hour, max)])
        .await
        .unwrap();
    let window = first.limits()[0].window_id().0;
    a.pool().commit(first);
    let slot = a.pool().find(key, Window::Hour).unwrap();
    wait_for(WAIT, || slot.spendable() > 0).await.unwrap();
    let held = slot.spendable();
    info!(held, "A holds unused tokens");

    info!("--- A drains: its unused tokens go back; B can spend the whole rest of the window");
    a.drain(Duration::from_secs(5)).await;
    assert_eq!(slot.spendable(), 0);
    let admitted = admit_until_spent(&b, key, max).await;
    info!(?admitted, "B admitted");
    if admitted.keys().all(|w| *w == window) {
        assert_eq!(
            admitted.get(&window).copied().unwrap_or(0),
            max - 1,
            "every token but A's one call reached B"
        );
    }
    b.shutdown();
    cluster.shutdown().await;
}
