//! Reserve + commit on the sharded [`LocalQuota`] against a naive single global mutex, side by side.
//!
//! `cargo bench -p tollgate-quota --bench reserve`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use parking_lot::Mutex;
use tollgate_quota::{Clock, LimitSpec, LocalQuota, Quota, SystemClock, Window};

/// The obvious implementation: one `Mutex<HashMap>` for every key, same check-then-add semantics.
struct GlobalMutexQuota {
    keys: Mutex<HashMap<String, [(u64, u64); 4]>>,
    clock: SystemClock,
}

struct NaiveReservation(Vec<(String, Window, u64, u64)>);

fn slot(w: Window) -> usize {
    match w {
        Window::Second => 0,
        Window::Minute => 1,
        Window::Hour => 2,
        Window::Day => 3,
    }
}

impl GlobalMutexQuota {
    fn new() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            clock: SystemClock,
        }
    }

    fn reserve(&self, limits: &[LimitSpec<'_>]) -> Option<NaiveReservation> {
        let now_ms = self.clock.now_unix_ms();
        let mut keys = self.keys.lock();
        let mut taken = Vec::with_capacity(limits.len());
        for l in limits {
            let now = l.window.id_at(now_ms).0;
            let counters = match keys.get_mut(l.key) {
                Some(c) => c,
                None => keys.entry(l.key.to_owned()).or_default(),
            };
            let (id, used) = counters[slot(l.window)];
            let (id, used) = if id >= now { (id, used) } else { (now, 0) };
            if used + l.cost > l.max {
                for (key, w, id, cost) in taken {
                    if let Some(c) = keys.get_mut::<str>(key)
                        && c[slot(w)].0 == id
                    {
                        c[slot(w)].1 -= cost;
                    }
                }
                return None;
            }
            counters[slot(l.window)] = (id, used + l.cost);
            taken.push((l.key, l.window, id, l.cost));
        }
        Some(NaiveReservation(
            taken
                .into_iter()
                .map(|(k, w, id, c)| (k.to_owned(), w, id, c))
                .collect(),
        ))
    }

    fn commit(&self, r: NaiveReservation) {
        drop(black_box(r.0));
    }
}

fn single(key: &str) -> [LimitSpec<'_>; 1] {
    [LimitSpec::new(key, Window::Minute, u64::MAX)]
}

fn two(a: &'static str, b: &'static str) -> [LimitSpec<'static>; 2] {
    [
        LimitSpec::new(a, Window::Minute, u64::MAX),
        LimitSpec::new(b, Window::Day, u64::MAX),
    ]
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("reserve_commit");
    let sharded = LocalQuota::new();
    let global = GlobalMutexQuota::new();
    let one = single("grant:0123456789abcdef/run-rerun_rate");
    let pair = two("grant:0123456789abcdef/run-rerun_rate", "server:github/all");
    g.bench_function("single_limit/sharded", |b| {
        b.iter(|| {
            sharded.commit(
                sharded
                    .reserve(black_box(&one))
                    .unwrap_or_else(|_| unreachable!()),
            )
        })
    });
    g.bench_function("single_limit/global_mutex", |b| {
        b.iter(|| {
            global.commit(
                global
                    .reserve(black_box(&one))
                    .unwrap_or_else(|| unreachable!()),
            )
        })
    });
    g.bench_function("two_limits/sharded", |b| {
        b.iter(|| {
            sharded.commit(
                sharded
                    .reserve(black_box(&pair))
                    .unwrap_or_else(|_| unreachable!()),
            )
        })
    });
    g.bench_function("two_limits/global_mutex", |b| {
        b.iter(|| {
            global.commit(
                global
                    .reserve(black_box(&pair))
                    .unwrap_or_else(|| unreachable!()),
            )
        })
    });
    g.finish();
}

/// Two threads, each on its own grant's key: the case sharding is for.
fn contended(c: &mut Criterion) {
    const THREADS: usize = 2;
    let mut g = c.benchmark_group("reserve_commit_2_threads_distinct_keys");
    let keys: Vec<String> = (0..THREADS)
        .map(|t| format!("grant:{t:016x}/run-rerun_rate"))
        .collect();

    fn run(iters: u64, keys: &[String], op: impl Fn(&str) + Sync) -> Duration {
        let barrier = Barrier::new(keys.len());
        let start = Instant::now();
        thread::scope(|s| {
            for key in keys {
                let (op, barrier) = (&op, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for _ in 0..iters {
                        op(key);
                    }
                });
            }
        });
        // Time per operation across all threads.
        start.elapsed() / THREADS as u32
    }

    let sharded = Arc::new(LocalQuota::new());
    g.bench_function("sharded", |b| {
        b.iter_custom(|iters| {
            run(iters, &keys, |k| {
                sharded.commit(
                    sharded
                        .reserve(&single(k))
                        .unwrap_or_else(|_| unreachable!()),
                )
            })
        })
    });
    let global = Arc::new(GlobalMutexQuota::new());
    g.bench_function("global_mutex", |b| {
        b.iter_custom(|iters| {
            run(iters, &keys, |k| {
                global.commit(global.reserve(&single(k)).unwrap_or_else(|| unreachable!()))
            })
        })
    });
    g.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
