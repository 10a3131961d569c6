//! The request path of the [`LeasePool`] with a lease present, against the sharded [`LocalQuota`],
//! side by side; then per-call latency percentiles measured with an HDR histogram.
//!
//! `cargo bench -p tollgate-quota --bench pool`

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use hdrhistogram::Histogram;
use tollgate_quota::{
    Clock, LeaseGrant, LeaseId, LeasePool, LimitSpec, LocalQuota, MAX_LEASE_TOKENS, PoolConfig,
    Quota, QuotaError, SlotHandle, SlotLimit, Window,
};

const RATE_KEY: &str = "grant:0123456789abcdef/run-rerun_rate";
const SERVER_KEY: &str = "server:github/all";

/// Installs a lease as large as the hot path holds, valid for an hour (or until its day ends).
fn fill(pool: &LeasePool, slot: &SlotHandle) {
    let now = Instant::now();
    pool.install(
        slot,
        LeaseGrant {
            id: LeaseId(0),
            window_id: slot.window().id_at(pool.clock().now_unix_ms()),
            tokens: MAX_LEASE_TOKENS,
            ttl: Duration::from_secs(3_600),
            sent_at: now,
            received_at: now,
        },
    );
}

fn pool() -> (LeasePool, SlotHandle, SlotHandle) {
    let pool = LeasePool::new(PoolConfig::default());
    let a = pool.slot(RATE_KEY, Window::Minute);
    let b = pool.slot(SERVER_KEY, Window::Day);
    fill(&pool, &a);
    fill(&pool, &b);
    (pool, a, b)
}

fn one() -> [LimitSpec<'static>; 1] {
    [LimitSpec::new(RATE_KEY, Window::Minute, u64::MAX)]
}

fn two() -> [LimitSpec<'static>; 2] {
    [
        LimitSpec::new(RATE_KEY, Window::Minute, u64::MAX),
        LimitSpec::new(SERVER_KEY, Window::Day, u64::MAX),
    ]
}

/// Reserve and commit; a lease that ended with its minute is replaced (off the measured path in
/// all but one call per minute).
fn spend(pool: &LeasePool, slots: &[&SlotHandle], limits: &[LimitSpec<'_>]) {
    match pool.try_reserve(black_box(limits)) {
        Ok(r) => pool.commit(r),
        Err(QuotaError::NeedsLease { index }) => fill(pool, slots[index]),
        Err(QuotaError::Exhausted(_)) => unreachable!("the leases hold 2^40 tokens"),
    }
}

fn spend_slots(pool: &LeasePool, slot: &SlotHandle) {
    let limit = [SlotLimit {
        slot,
        max: u64::MAX,
        cost: 1,
    }];
    match pool.reserve_slots(black_box(&limit)) {
        Ok(r) => pool.commit(r),
        Err(_) => fill(pool, slot),
    }
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_reserve_commit");
    let (p, a, b) = pool();
    let local = LocalQuota::new();
    let (one, two) = (one(), two());
    g.bench_function("single_limit/handle", |bench| {
        bench.iter(|| spend_slots(&p, &a))
    });
    g.bench_function("single_limit/by_key", |bench| {
        bench.iter(|| spend(&p, &[&a], &one))
    });
    g.bench_function("single_limit/local_quota", |bench| {
        bench.iter(|| {
            local.commit(
                local
                    .reserve(black_box(&one))
                    .unwrap_or_else(|_| unreachable!()),
            )
        })
    });
    g.bench_function("two_limits/by_key", |bench| {
        bench.iter(|| spend(&p, &[&a, &b], &two))
    });
    g.bench_function("two_limits/local_quota", |bench| {
        bench.iter(|| {
            local.commit(
                local
                    .reserve(black_box(&two))
                    .unwrap_or_else(|_| unreachable!()),
            )
        })
    });
    g.finish();
}

/// Two threads on the *same* slots: the worst case for the single atomic.
fn contended(c: &mut Criterion) {
    const THREADS: u32 = 2;
    let mut g = c.benchmark_group("pool_reserve_commit_2_threads_same_key");
    let (p, a, b) = pool();
    let local = LocalQuota::new();
    let run = |iters: u64, op: &(dyn Fn() + Sync)| {
        let barrier = Barrier::new(THREADS as usize);
        let start = Instant::now();
        thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..iters {
                        op();
                    }
                });
            }
        });
        start.elapsed() / THREADS
    };
    let (one, two) = (one(), two());
    g.bench_function("single_limit/by_key", |bench| {
        bench.iter_custom(|iters| run(iters, &|| spend(&p, &[&a], &one)))
    });
    g.bench_function("two_limits/by_key", |bench| {
        bench.iter_custom(|iters| run(iters, &|| spend(&p, &[&a, &b], &two)))
    });
    g.bench_function("two_limits/local_quota", |bench| {
        bench.iter_custom(|iters| {
            run(iters, &|| {
                local.commit(local.reserve(&two).unwrap_or_else(|_| unreachable!()))
            })
        })
    });
    g.finish();
}

/// Per-call latency (each call timed on its own, so the figures include about one `Instant::now`
/// of overhead) over `calls` calls on each of `threads` threads.
fn percentiles(name: &str, threads: usize, calls: usize, op: &(dyn Fn() + Sync)) {
    let barrier = Barrier::new(threads);
    let hists: Vec<Histogram<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                        .unwrap_or_else(|e| panic!("histogram: {e}"));
                    for _ in 0..calls / 10 {
                        op();
                    }
                    barrier.wait();
                    for _ in 0..calls {
                        let t = Instant::now();
                        op();
                        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        h.saturating_record(ns.max(1));
                    }
                    h
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("latency thread panicked"))
            })
            .collect()
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|e| panic!("histogram: {e}"));
    for h in &hists {
        all.add(h).unwrap_or_else(|e| panic!("histogram: {e}"));
    }
    println!(
        "{name:<44} threads={threads} calls={:>8}  p50={:>5}ns  p99={:>5}ns  p99.9={:>6}ns  max={:>8}ns",
        all.len(),
        all.value_at_quantile(0.50),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max(),
    );
}

fn latency() {
    const CALLS: usize = 2_000_000;
    let (p, a, b) = pool();
    let (one, two) = (one(), two());
    println!("\nper-call latency (hdrhistogram, each call timed with Instant):");
    for threads in [1, 2] {
        percentiles("pool single_limit/handle", threads, CALLS, &|| {
            spend_slots(&p, &a)
        });
        percentiles("pool single_limit/by_key", threads, CALLS, &|| {
            spend(&p, &[&a], &one)
        });
        percentiles(
            "pool two_limits/by_key (seed shape)",
            threads,
            CALLS,
            &|| spend(&p, &[&a, &b], &two),
        );
    }
    let timer = Instant::now();
    let mut h = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
    for _ in 0..CALLS {
        let t = Instant::now();
        h.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    black_box(timer);
    println!(
        "{:<44} threads=1 p50={}ns p99={}ns (timer overhead)",
        "empty call",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
}

criterion_group!(benches, single_thread, contended);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only when timing (`cargo bench`), not when CI runs the bench once as a test.
    if std::env::args().any(|a| a == "--bench") {
        latency();
    }
}
