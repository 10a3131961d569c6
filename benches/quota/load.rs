//! The measured phases against in-process clusters: lease round trip, paced load at a fraction of
//! the limit, and closed-loop throughput.
//!
//! Every call goes through the agent's public request path: [`QuotaAgent::acquire`] (which tries
//! the pool first and awaits only when no lease is held) or, in the closed loop, the pool's
//! `try_reserve` with `acquire` on a miss, as the gateway will call it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tollgate_gateway::quota_agent::{AcquireError, QuotaAgent};
use tollgate_quota::{LimitSpec, Quota as _, QuotaError, Window, WindowId};

use crate::cluster::{Cluster, Gateway, Tuning};
use crate::report::{Latency, Paced, RoundTrip, Throughput};

/// A limit no phase reaches: the pool and the leader size leases by rate alone.
pub const UNLIMITED: u64 = 1_000_000_000_000;
/// Calls of a closed-loop task between two yields to the scheduler.
const BATCH: u64 = 256;
/// How long the hit case runs before it is measured.
const HIT_WARMUP: Duration = Duration::from_millis(1500);

/// A histogram of nanoseconds, from 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How many samples phase 1 takes per case.
#[derive(Debug, Clone, Copy)]
pub struct RoundTripSamples {
    pub hits: u64,
    pub misses: u64,
    pub new_keys: u64,
}

/// Phase 1 on one cluster: `acquire` with a lease present, with an empty pool whose leader holds
/// a chunk for the key, and on a key never seen (the leader writes a chunk grant first).
pub async fn round_trip(
    cluster: &Cluster,
    nodes: u64,
    samples: RoundTripSamples,
    tuning: Tuning,
) -> anyhow::Result<RoundTrip> {
    let gateway = Gateway::start(cluster, "rt", tuning).await?;
    let agent = gateway.agent.clone();
    let result = async {
        let mut timeouts = 0;
        let (hit, hits_that_waited) = hits(&agent, samples.hits, &mut timeouts).await?;
        let miss = misses(&agent, samples.misses, &mut timeouts).await?;
        let new_key = new_keys(&agent, samples.new_keys, &mut timeouts).await?;
        anyhow::Ok(RoundTrip {
            nodes,
            hit,
            hits_that_waited,
            miss,
            new_key,
            timeouts,
        })
    }
    .await;
    gateway.shutdown().await;
    result
}

/// One `acquire`, committed: its duration, or `None` when no lease came within the agent's
/// acquire timeout (counted in `timeouts`, left out of the percentiles).
async fn timed(
    agent: &QuotaAgent,
    limits: &[LimitSpec<'_>],
    timeouts: &mut u64,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    let reservation = agent.acquire(limits).await;
    let took = started.elapsed();
    match reservation {
        Ok(reservation) => {
            agent.pool().commit(reservation);
            Ok(Some(took))
        }
        Err(AcquireError::Unavailable { .. }) => {
            *timeouts += 1;
            Ok(None)
        }
        Err(AcquireError::Exhausted(e)) => {
            anyhow::bail!("the unreachable limit was exhausted: {e}")
        }
    }
}

/// `acquire` on a slot holding a lease. A call that had to wait (the lease ran dry before the
/// next one arrived) is counted apart, not mixed into the hit percentiles.
async fn hits(
    agent: &QuotaAgent,
    samples: u64,
    timeouts: &mut u64,
) -> anyhow::Result<(Latency, u64)> {
    let limits = [LimitSpec::new("rt/hit", Window::Minute, UNLIMITED)];
    // Warm up until the pool's spend-rate estimate (1 s time constant) sizes leases for this
    // rate: before that, leases of a few tokens run dry at once.
    let warm_until = Instant::now() + HIT_WARMUP;
    let mut ignored = 0;
    let mut i = 0u64;
    while Instant::now() < warm_until {
        timed(agent, &limits, &mut ignored).await?;
        i += 1;
        if i.is_multiple_of(BATCH) {
            tokio::task::yield_now().await;
        }
    }
    let mut hist = histogram()?;
    let mut waited = 0;
    for i in 0..samples {
        let before = agent.stats().sync_demands;
        let took = timed(agent, &limits, timeouts).await?;
        match took {
            Some(took) if agent.stats().sync_demands == before => hist.record(nanos(took))?,
            _ => waited += 1,
        }
        if i % BATCH == BATCH - 1 {
            tokio::task::yield_now().await;
        }
    }
    Ok((Latency::of(&hist), waited))
}

/// `acquire` with an empty pool while the leader's chunk for the key has tokens: before each
/// sample the pool gives every lease back (`return_idle` with a zero idle time: the unused tokens
/// go back into the leader's chunk with the next report, and the spend-rate estimate restarts),
/// so the call misses and asks the leader synchronously.
async fn misses(agent: &QuotaAgent, samples: u64, timeouts: &mut u64) -> anyhow::Result<Latency> {
    let limits = [LimitSpec::new("rt/miss", Window::Minute, UNLIMITED)];
    let mut hist = histogram()?;
    // The leader sizes a key's chunk at twice what it leased in the last 100 ms: the first
    // chunks of a new key are tiny and each needs a Raft write; warm up until they are not.
    let mut ignored = 0;
    for _ in 0..(samples / 4).max(1) {
        agent.pool().return_idle(Instant::now(), Duration::ZERO);
        timed(agent, &limits, &mut ignored).await?;
    }
    for _ in 0..samples {
        agent.pool().return_idle(Instant::now(), Duration::ZERO);
        if let Some(took) = timed(agent, &limits, timeouts).await? {
            hist.record(nanos(took))?;
        }
    }
    Ok(Latency::of(&hist))
}

/// `acquire` on a key the cluster has never seen: the leader has no chunk, so the demand waits
/// for a Raft entry granting one (committed on a quorum) before the lease is cut.
async fn new_keys(agent: &QuotaAgent, samples: u64, timeouts: &mut u64) -> anyhow::Result<Latency> {
    let mut hist = histogram()?;
    for i in 0..samples {
        let key = format!("rt/new/{i}");
        let limits = [LimitSpec::new(&key, Window::Minute, UNLIMITED)];
        if let Some(took) = timed(agent, &limits, timeouts).await? {
            hist.record(nanos(took))?;
        }
    }
    Ok(Latency::of(&hist))
}

/// One limit offered to the paced phases.
#[derive(Debug, Clone, Copy)]
pub struct PacedLoad {
    pub key: &'static str,
    pub window: Window,
    pub max: u64,
    /// Calls per second over every gateway together.
    pub offered_per_sec: f64,
    pub secs: f64,
}

/// A call that waited is "at a window start" when it began this soon after its window opened.
const WINDOW_START: u64 = 20;

/// Calls of a paced phase's first second are left out of the steady no-wait share: the pools'
/// spend-rate estimate (1 s time constant) starts from nothing on a new key, so their first
/// leases are sized for a lower rate.
const STEADY_AFTER: Duration = Duration::from_secs(1);

/// What the paced callers counted.
#[derive(Default)]
struct Tally {
    offered: AtomicU64,
    no_wait: AtomicU64,
    /// Of the calls, those of the first [`STEADY_AFTER`]: (no wait, waited).
    warm_no_wait: AtomicU64,
    warm_waited: AtomicU64,
    waited: AtomicU64,
    waited_at_window_start: AtomicU64,
    denied: AtomicU64,
    unavailable: AtomicU64,
    per_window: Mutex<BTreeMap<u64, u64>>,
    /// How long the calls that waited took (ns).
    waits: Mutex<Option<Histogram<u64>>>,
}

/// How one call ended.
enum Outcome {
    Admitted(WindowId),
    Denied,
    Unavailable,
}

impl Tally {
    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Admitted(window) => {
                *self
                    .per_window
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(window.0)
                    .or_default() += 1;
            }
            Outcome::Denied => {
                self.denied.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unavailable => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One call through `acquire`, settled at once (committed: the call "went through").
async fn call(agent: Arc<QuotaAgent>, load: PacedLoad) -> Outcome {
    let limits = [LimitSpec::new(load.key, load.window, load.max)];
    match agent.acquire(&limits).await {
        Ok(reservation) => {
            let window = reservation.limits()[0].window_id();
            agent.pool().commit(reservation);
            Outcome::Admitted(window)
        }
        Err(AcquireError::Exhausted(_)) => Outcome::Denied,
        Err(AcquireError::Unavailable { .. }) => Outcome::Unavailable,
    }
}

/// Polls `future` once in the caller's task: `Some` if it finished without waiting.
async fn poll_once<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send>>) -> Option<T> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(value) => Some(value),
            Poll::Pending => None,
        })
    })
    .await
}

/// Offers calls to one gateway at `per_sec`, open loop: each 1 ms tick issues the calls due by
/// then. A call that finishes on its first poll was decided with no network wait; one that
/// does not goes on in its own task, and the pacing does not wait for it.
async fn pacer(
    agent: Arc<QuotaAgent>,
    load: PacedLoad,
    per_sec: f64,
    start: Instant,
    end: Instant,
    tally: Arc<Tally>,
) {
    let window_ms = load.window.millis();
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= end {
            return;
        }
        let due = (now.duration_since(start).as_secs_f64() * per_sec) as u64;
        while issued < due {
            issued += 1;
            tally.offered.fetch_add(1, Ordering::Relaxed);
            let begun_ms = unix_ms();
            let warm = now.duration_since(start) < STEADY_AFTER;
            let mut future: Pin<Box<dyn Future<Output = Outcome> + Send>> =
                Box::pin(call(agent.clone(), load));
            match poll_once(&mut future).await {
                Some(outcome) => {
                    tally.no_wait.fetch_add(1, Ordering::Relaxed);
                    if warm {
                        tally.warm_no_wait.fetch_add(1, Ordering::Relaxed);
                    }
                    tally.record(outcome);
                }
                None => {
                    tally.waited.fetch_add(1, Ordering::Relaxed);
                    if warm {
                        tally.warm_waited.fetch_add(1, Ordering::Relaxed);
                    }
                    if begun_ms % window_ms < WINDOW_START {
                        tally.waited_at_window_start.fetch_add(1, Ordering::Relaxed);
                    }
                    let tally = tally.clone();
                    let begun = Instant::now();
                    tokio::spawn(async move {
                        let outcome = future.await;
                        if let Some(waits) = tally
                            .waits
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .as_mut()
                        {
                            waits.saturating_record(nanos(begun.elapsed()));
                        }
                        tally.record(outcome);
                    });
                }
            }
        }
    }
}

/// Phases 2 and 3: `gateways` offer `load` together, each an equal share, for `load.secs`.
pub async fn paced(
    cluster: &Cluster,
    gateways: &[Gateway],
    load: PacedLoad,
) -> anyhow::Result<Paced> {
    let tally = Arc::new(Tally {
        waits: Mutex::new(Some(histogram()?)),
        ..Tally::default()
    });
    let stats = || {
        gateways.iter().fold((0, 0), |(leases, sync), g| {
            let s = g.agent.stats();
            (leases + s.leases_installed, sync + s.sync_demands)
        })
    };
    let stats_before = stats();
    let per_gateway = load.offered_per_sec / gateways.len().max(1) as f64;
    let (leader_before, log_before) = cluster.leader_log()?;
    let start_ms = unix_ms();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(load.secs);
    let pacers: Vec<_> = gateways
        .iter()
        .map(|g| {
            tokio::spawn(pacer(
                g.agent.clone(),
                load,
                per_gateway,
                start,
                end,
                tally.clone(),
            ))
        })
        .collect();
    for pacer in pacers {
        pacer.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let end_ms = unix_ms();
    let (leader_after, log_after) = cluster.leader_log()?;
    anyhow::ensure!(
        leader_before == leader_after,
        "the leader changed during the phase ({leader_before} -> {leader_after})"
    );
    // Let the calls that waited finish (each ends within the acquire timeout).
    let settled = tally.clone();
    tollgate_testkit::wait_for(Duration::from_secs(10), move || {
        let counted =
            settled.no_wait.load(Ordering::Relaxed) + settled.waited.load(Ordering::Relaxed);
        let ended = settled
            .per_window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum::<u64>()
            + settled.denied.load(Ordering::Relaxed)
            + settled.unavailable.load(Ordering::Relaxed);
        ended >= counted
    })
    .await?;
    let per_window = tally
        .per_window
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let stats_after = stats();
    let waits = tally
        .waits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .map(|h| Latency::of(&h));
    let mut paced = Paced::summarise(
        load.offered_per_sec / load.max as f64 * load.window.seconds() as f64,
        load.max,
        load.window,
        get(&tally.offered),
        get(&tally.no_wait),
        get(&tally.waited),
        get(&tally.waited_at_window_start),
        get(&tally.denied),
        get(&tally.unavailable),
        &per_window,
        (start_ms, end_ms),
        log_after.saturating_sub(log_before) as f64 / elapsed,
    );
    paced.wait = waits;
    let steady_no_wait = get(&tally.no_wait).saturating_sub(get(&tally.warm_no_wait));
    let steady_waited = get(&tally.waited).saturating_sub(get(&tally.warm_waited));
    paced.steady_no_wait = steady_no_wait;
    paced.steady_waited = steady_waited;
    paced.steady_no_wait_share = if steady_no_wait + steady_waited == 0 {
        0.0
    } else {
        steady_no_wait as f64 / (steady_no_wait + steady_waited) as f64
    };
    paced.leases_installed = stats_after.0.saturating_sub(stats_before.0);
    paced.sync_demands = stats_after.1.saturating_sub(stats_before.1);
    Ok(paced)
}

/// Phase 4: `tasks` tasks per gateway call `try_reserve` in a closed loop (with `acquire` on a
/// miss) against an unreachable limit; calls are counted over `secs` after `warmup`, and every
/// `sample_every`-th call's decision time is recorded.
pub async fn throughput(
    cluster: &Cluster,
    gateways: &[Gateway],
    tasks: usize,
    warmup: Duration,
    secs: f64,
    sample_every: u64,
) -> anyhow::Result<Throughput> {
    let admitted = Arc::new(AtomicU64::new(0));
    let waited = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for gateway in gateways {
        for _ in 0..tasks {
            let agent = gateway.agent.clone();
            let (admitted, waited) = (admitted.clone(), waited.clone());
            let (measuring, stop) = (measuring.clone(), stop.clone());
            handles.push(tokio::spawn(async move {
                hammer(agent, admitted, waited, measuring, stop, sample_every).await
            }));
        }
    }
    tokio::time::sleep(warmup).await;
    let (leader_before, log_before) = cluster.leader_log()?;
    let admitted_before = admitted.load(Ordering::Relaxed);
    let waited_before = waited.load(Ordering::Relaxed);
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let admitted_after = admitted.load(Ordering::Relaxed);
    let waited_after = waited.load(Ordering::Relaxed);
    let (leader_after, log_after) = cluster.leader_log()?;
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram()?;
    for handle in handles {
        hist.add(handle.await??)?;
    }
    anyhow::ensure!(
        leader_before == leader_after,
        "the leader changed during the phase ({leader_before} -> {leader_after})"
    );
    let calls = admitted_after.saturating_sub(admitted_before);
    let entries = log_after.saturating_sub(log_before);
    Ok(Throughput {
        system: format!(
            "Tollgate: {} gateways x {tasks} tasks, try_reserve (+ acquire on a miss), 3-node Raft",
            gateways.len()
        ),
        tasks: gateways.len() * tasks,
        calls,
        calls_per_sec: calls as f64 / elapsed,
        waited: waited_after.saturating_sub(waited_before),
        latency: Latency::of(&hist),
        raft_entries_per_sec: Some(entries as f64 / elapsed),
    })
}

/// One closed-loop caller of phase 4. Returns its histogram of decision times (ns).
async fn hammer(
    agent: Arc<QuotaAgent>,
    admitted: Arc<AtomicU64>,
    waited: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sample_every: u64,
) -> anyhow::Result<Histogram<u64>> {
    let limits = [LimitSpec::new("throughput", Window::Minute, UNLIMITED)];
    let mut hist = histogram()?;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let record = measuring.load(Ordering::Relaxed);
        let mut local_admitted = 0;
        let mut local_waited = 0;
        for _ in 0..BATCH {
            n += 1;
            let started = (record && n.is_multiple_of(sample_every)).then(Instant::now);
            let reservation = match agent.pool().try_reserve(&limits) {
                Ok(reservation) => Some(reservation),
                Err(QuotaError::NeedsLease { .. }) => {
                    local_waited += 1;
                    agent.acquire(&limits).await.ok()
                }
                Err(QuotaError::Exhausted(e)) => {
                    anyhow::bail!("the unreachable limit was exhausted: {e}")
                }
            };
            if let Some(reservation) = reservation {
                agent.pool().commit(reservation);
                local_admitted += 1;
            }
            if let Some(started) = started {
                hist.record(nanos(started.elapsed()))?;
            }
        }
        admitted.fetch_add(local_admitted, Ordering::Relaxed);
        waited.fetch_add(local_waited, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
    Ok(hist)
}
