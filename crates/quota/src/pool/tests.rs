#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::thread;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;

/// 2024-03-10T00:00:00Z.
const MIDNIGHT_MS: u64 = 1_710_028_800_000;

fn pool_at(ms: u64) -> (LeasePool<ManualClock>, ManualClock) {
    let clock = ManualClock::new(ms);
    (
        LeasePool::with_clock(clock.clone(), PoolConfig::default()),
        clock,
    )
}

fn grant(clock: &ManualClock, id: u64, window: Window, tokens: u64, ttl: Duration) -> LeaseGrant {
    let now = clock.now_instant();
    LeaseGrant {
        id: LeaseId(id),
        window_id: window.id_at(clock.now_unix_ms()),
        tokens,
        ttl,
        sent_at: now,
        received_at: now,
    }
}

fn minute(key: &str, max: u64) -> [LimitSpec<'_>; 1] {
    [LimitSpec::new(key, Window::Minute, max)]
}

const TTL: Duration = Duration::from_secs(10);

#[test]
fn a_lease_admits_exactly_its_tokens_then_a_call_needs_another() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    assert_eq!(
        pool.install(&slot, grant(&clock, 1, Window::Minute, 3, TTL)),
        Installed::Current
    );
    for _ in 0..3 {
        pool.commit(pool.try_reserve(&minute("k", 100)).unwrap());
    }
    assert_eq!(
        pool.try_reserve(&minute("k", 100)).unwrap_err(),
        QuotaError::NeedsLease { index: 0 }
    );
    assert_eq!(slot.spendable(), 0);
}

#[test]
fn plain_reserve_fails_closed_without_a_lease() {
    let (pool, _) = pool_at(MIDNIGHT_MS);
    let denied = pool.reserve(&minute("k", 100)).unwrap_err();
    assert_eq!(denied.index, 0);
    assert_eq!(denied.retry_after, Duration::ZERO);
}

#[test]
fn a_call_without_a_lease_becomes_a_sync_demand_for_its_cost() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let spec = [LimitSpec::new("k", Window::Minute, 100).with_cost(3)];
    assert!(matches!(
        pool.try_reserve(&spec),
        Err(QuotaError::NeedsLease { index: 0 })
    ));
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1);
    let d = &demands[0];
    assert_eq!((d.slot.key(), d.slot.window()), ("k", Window::Minute));
    assert_eq!(d.window_id, Window::Minute.id_at(MIDNIGHT_MS));
    assert!(d.sync);
    assert_eq!(d.want, 3);
    assert!(
        pool.demands(clock.now_instant()).is_empty(),
        "an unanswered demand is not asked twice"
    );
    pool.install(&d.slot, grant(&clock, 1, Window::Minute, 3, TTL));
    pool.commit(pool.try_reserve(&spec).unwrap());
}

#[test]
fn an_unanswered_demand_is_asked_again_after_the_request_timeout() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let _ = pool.try_reserve(&minute("k", 100));
    assert_eq!(pool.demands(clock.now_instant()).len(), 1);
    clock.advance(Duration::from_millis(999));
    assert!(pool.demands(clock.now_instant()).is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(pool.demands(clock.now_instant()).len(), 1);
    pool.request_failed(&pool.slot("k", Window::Minute));
    assert_eq!(pool.demands(clock.now_instant()).len(), 1);
}

#[test]
fn a_window_the_leader_declared_spent_is_exhausted_until_it_ends() {
    let (pool, clock) = pool_at(MIDNIGHT_MS + 10_000);
    let slot = pool.slot("k", Window::Minute);
    let _ = pool.try_reserve(&minute("k", 5));
    pool.mark_exhausted(&slot, Window::Minute.id_at(clock.now_unix_ms()));
    let QuotaError::Exhausted(e) = pool.try_reserve(&minute("k", 5)).unwrap_err() else {
        panic!("expected exhausted");
    };
    assert_eq!(e.retry_after, Duration::from_secs(50));
    assert!(pool.demands(clock.now_instant()).is_empty());
    clock.advance(Duration::from_secs(50));
    assert_eq!(
        pool.try_reserve(&minute("k", 5)).unwrap_err(),
        QuotaError::NeedsLease { index: 0 }
    );
    assert_eq!(pool.demands(clock.now_instant()).len(), 1);
}

#[test]
fn a_cost_above_max_is_exhausted_without_a_lease() {
    let (pool, _) = pool_at(MIDNIGHT_MS);
    let spec = [LimitSpec::new("k", Window::Minute, 2).with_cost(3)];
    assert!(matches!(
        pool.try_reserve(&spec),
        Err(QuotaError::Exhausted(Exhausted { index: 0, .. }))
    ));
}

#[test]
fn a_zero_cost_always_fits() {
    let (pool, _) = pool_at(MIDNIGHT_MS);
    let spec = [LimitSpec::new("k", Window::Minute, 0).with_cost(0)];
    let r = pool.try_reserve(&spec).unwrap();
    assert_eq!(r.limits()[0].key(), "k");
    pool.rollback(r);
    assert_eq!(pool.lost_returns(), 0);
}

#[test]
fn lease_is_not_spent_after_its_ttl_counted_from_sent_at() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    let sent_at = clock.now_instant();
    clock.advance(Duration::from_millis(300));
    pool.install(
        &slot,
        LeaseGrant {
            id: LeaseId(7),
            window_id: Window::Minute.id_at(clock.now_unix_ms()),
            tokens: 10,
            ttl: Duration::from_secs(1),
            sent_at,
            received_at: clock.now_instant(),
        },
    );
    assert_eq!(pool.round_trip(), Duration::from_millis(300));
    pool.commit(pool.try_reserve(&minute("k", 100)).unwrap());
    clock.advance(Duration::from_millis(699));
    pool.commit(pool.try_reserve(&minute("k", 100)).unwrap());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        pool.try_reserve(&minute("k", 100)).unwrap_err(),
        QuotaError::NeedsLease { index: 0 }
    );
    let reports = pool.take_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.lease_id, LeaseId(7));
    assert_eq!((r.installed, r.consumed, r.returned), (10, 2, 8));
    assert_eq!(r.closed, CloseReason::Expired);
    assert!(pool.take_reports().is_empty(), "reported once");
}

#[test]
fn lease_is_not_spent_after_its_window_ends() {
    let (pool, clock) = pool_at(MIDNIGHT_MS + 59_000);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 10, TTL));
    pool.commit(pool.try_reserve(&minute("k", 100)).unwrap());
    clock.advance(Duration::from_secs(1));
    assert!(pool.try_reserve(&minute("k", 100)).is_err());
    let reports = pool.take_reports();
    assert_eq!(reports[0].closed, CloseReason::WindowEnded);
    assert_eq!((reports[0].consumed, reports[0].returned), (1, 9));
}

#[test]
fn a_lease_for_an_ended_window_is_dead_on_arrival() {
    let (pool, clock) = pool_at(MIDNIGHT_MS + 60_000);
    let slot = pool.slot("k", Window::Minute);
    let mut g = grant(&clock, 1, Window::Minute, 10, TTL);
    g.window_id = WindowId(g.window_id.0 - 1);
    assert_eq!(pool.install(&slot, g), Installed::Dead);
    assert!(pool.try_reserve(&minute("k", 100)).is_err());
    let reports = pool.take_reports();
    assert_eq!((reports[0].consumed, reports[0].returned), (0, 10));
}

#[test]
fn a_queued_lease_takes_over_when_the_current_one_runs_dry() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 2, TTL));
    assert_eq!(
        pool.install(&slot, grant(&clock, 2, Window::Minute, 2, TTL)),
        Installed::Queued
    );
    for _ in 0..4 {
        pool.commit(pool.try_reserve(&minute("k", 100)).unwrap());
    }
    assert!(pool.try_reserve(&minute("k", 100)).is_err());
    let reports = pool.take_reports();
    assert_eq!(reports.len(), 1, "the second lease is still current");
    assert_eq!(reports[0].lease_id, LeaseId(1));
    assert_eq!(reports[0].closed, CloseReason::Drained);
    assert_eq!(reports[0].consumed, 2);
}

#[test]
fn a_lease_too_small_for_a_call_is_superseded_and_returns_its_rest() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 1, TTL));
    pool.install(&slot, grant(&clock, 2, Window::Minute, 5, TTL));
    let spec = [LimitSpec::new("k", Window::Minute, 100).with_cost(2)];
    pool.commit(pool.try_reserve(&spec).unwrap());
    let reports = pool.take_reports();
    assert_eq!(reports[0].closed, CloseReason::Superseded);
    assert_eq!((reports[0].consumed, reports[0].returned), (0, 1));
    assert_eq!(slot.spendable(), 3);
}

#[test]
fn rollback_returns_tokens_to_the_live_lease() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 1, TTL));
    let r = pool.try_reserve(&minute("k", 100)).unwrap();
    assert_eq!(slot.spendable(), 0);
    pool.rollback(r);
    assert_eq!(slot.spendable(), 1);
}

#[test]
fn rollback_after_expiry_counts_as_returned_until_the_report_is_taken() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(
        &slot,
        grant(&clock, 1, Window::Minute, 4, Duration::from_secs(1)),
    );
    let a = pool.try_reserve(&minute("k", 100)).unwrap();
    let b = pool.try_reserve(&minute("k", 100)).unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(pool.try_reserve(&minute("k", 100)).is_err(), "expired");
    pool.rollback(a);
    let reports = pool.take_reports();
    assert_eq!((reports[0].consumed, reports[0].returned), (1, 3));
    pool.rollback(b);
    assert_eq!(pool.lost_returns(), 1, "reported already: stays consumed");
}

#[test]
fn a_reservation_from_another_pool_is_not_rolled_back() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let (other, other_clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 1, TTL));
    let theirs = other.slot("k", Window::Minute);
    other.install(&theirs, grant(&other_clock, 1, Window::Minute, 1, TTL));
    pool.rollback(other.try_reserve(&minute("k", 100)).unwrap());
    assert_eq!(slot.spendable(), 1);
    assert_eq!(theirs.spendable(), 0);
}

#[test]
fn a_multi_limit_reservation_takes_nothing_when_one_limit_misses() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let a = pool.slot("a", Window::Minute);
    pool.install(&a, grant(&clock, 1, Window::Minute, 5, TTL));
    let both = [
        LimitSpec::new("a", Window::Minute, 100),
        LimitSpec::new("b", Window::Day, 100),
    ];
    assert_eq!(
        pool.try_reserve(&both).unwrap_err(),
        QuotaError::NeedsLease { index: 1 }
    );
    assert_eq!(a.spendable(), 5);
    let b = pool.slot("b", Window::Day);
    pool.install(&b, grant(&clock, 2, Window::Day, 1, TTL));
    let r = pool.try_reserve(&both).unwrap();
    assert_eq!(
        r.limits()
            .iter()
            .map(|l| (l.key(), l.cost()))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 1)]
    );
    pool.commit(r);
    assert_eq!((a.spendable(), b.spendable()), (4, 0));
}

#[test]
fn interned_slots_spend_without_a_lookup() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    assert!(pool.find("k", Window::Minute).is_none());
    let slot = pool.slot("k", Window::Minute);
    assert_eq!(pool.find("k", Window::Minute), Some(slot.clone()));
    assert_eq!(pool.slot("k", Window::Minute), slot);
    assert!(pool.find("k", Window::Hour).is_none());
    pool.install(&slot, grant(&clock, 1, Window::Minute, 2, TTL));
    let limit = [SlotLimit {
        slot: &slot,
        max: 10,
        cost: 2,
    }];
    pool.commit(pool.reserve_slots(&limit).unwrap());
    assert_eq!(
        pool.reserve_slots(&limit).unwrap_err(),
        QuotaError::NeedsLease { index: 0 }
    );
    assert_eq!(pool.slot_count(), 1);
}

/// A pool whose rate estimate follows the last sample (time constant 1 ms) and whose round trip
/// is 10 ms.
fn measured_pool() -> (LeasePool<ManualClock>, ManualClock, SlotHandle) {
    measured_pool_with(100, Duration::from_millis(10))
}

/// A pool with a fast rate estimate whose first lease, of `tokens`, took `round_trip` to arrive.
fn measured_pool_with(
    tokens: u64,
    round_trip: Duration,
) -> (LeasePool<ManualClock>, ManualClock, SlotHandle) {
    let clock = ManualClock::new(MIDNIGHT_MS);
    let pool = LeasePool::with_clock(
        clock.clone(),
        PoolConfig {
            rate_time_constant: Duration::from_millis(1),
            ..PoolConfig::default()
        },
    );
    let slot = pool.slot("k", Window::Minute);
    let sent_at = clock.now_instant();
    clock.advance(round_trip);
    let mut g = grant(&clock, 1, Window::Minute, tokens, TTL);
    g.sent_at = sent_at;
    pool.install(&slot, g);
    assert_eq!(pool.round_trip(), round_trip);
    assert!(pool.demands(clock.now_instant()).is_empty(), "no rate yet");
    (pool, clock, slot)
}

#[test]
fn a_slot_asks_ahead_once_half_of_its_latest_lease_is_spent() {
    let (pool, clock, slot) = measured_pool();
    // 40 of the 100-token lease in 100 ms: 400/s; two round trips' worth is 8 tokens; 60 left.
    for _ in 0..40 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    clock.advance(Duration::from_millis(100));
    assert!(pool.demands(clock.now_instant()).is_empty(), "60 left");
    let rate = pool.stats(&slot).rate;
    assert!((rate - 400.0).abs() < 1.0, "rate {rate}");
    // 15 more in 10 ms: 1500/s; 45 left, under half of the lease.
    for _ in 0..15 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    clock.advance(Duration::from_millis(10));
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1);
    assert!(!demands[0].sync);
    // 1500/s × 50 ms.
    assert!((75..=76).contains(&demands[0].want), "{:?}", demands[0]);
}

#[test]
fn a_slot_asks_ahead_when_its_tokens_fall_under_rate_times_twice_the_round_trip() {
    // A 1000-token lease that took 100 ms to arrive.
    let (pool, clock, _slot) = measured_pool_with(1_000, Duration::from_millis(100));
    // 300 in 100 ms: 3000/s; two round trips' worth is 600 tokens; 700 left.
    for _ in 0..300 {
        pool.commit(pool.try_reserve(&minute("k", 10_000)).unwrap());
    }
    clock.advance(Duration::from_millis(100));
    assert!(pool.demands(clock.now_instant()).is_empty(), "700 left");
    // 100 more in 25 ms: 4000/s, 800 tokens' worth; 600 left, more than half of the lease.
    for _ in 0..100 {
        pool.commit(pool.try_reserve(&minute("k", 10_000)).unwrap());
    }
    clock.advance(Duration::from_millis(25));
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1, "the round-trip rule asks first");
    assert!(!demands[0].sync);
}

#[test]
fn endgame_halves_what_a_slot_asks_for() {
    let (pool, clock, slot) = measured_pool();
    pool.set_mode(
        &slot,
        SlotMode {
            exact: false,
            endgame: true,
        },
    );
    for _ in 0..95 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    clock.advance(Duration::from_millis(100));
    // 950/s × 50 ms = 47.5 → 48, halved.
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1);
    assert_eq!(demands[0].want, 24);
}

#[test]
fn exact_mode_asks_only_for_the_calls_that_wait() {
    let (pool, clock, slot) = measured_pool();
    pool.set_mode(
        &slot,
        SlotMode {
            exact: true,
            endgame: false,
        },
    );
    for _ in 0..100 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    clock.advance(Duration::from_millis(100));
    assert!(pool.demands(clock.now_instant()).is_empty(), "no one waits");
    for _ in 0..2 {
        assert_eq!(
            pool.try_reserve(&minute("k", 1_000)).unwrap_err(),
            QuotaError::NeedsLease { index: 0 }
        );
    }
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1);
    assert_eq!((demands[0].want, demands[0].sync), (2, true));
    pool.install(&slot, grant(&clock, 2, Window::Minute, 1, TTL));
    pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    pool.request_failed(&slot);
    let demands = pool.demands(clock.now_instant());
    assert_eq!(
        (demands[0].want, demands[0].sync),
        (1, true),
        "one still waits"
    );
}

#[test]
fn an_idle_slot_returns_its_tokens() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let busy = pool.slot("busy", Window::Minute);
    let idle = pool.slot("idle", Window::Minute);
    pool.install(&busy, grant(&clock, 1, Window::Minute, 10, TTL));
    pool.install(&idle, grant(&clock, 2, Window::Minute, 10, TTL));
    pool.install(&idle, grant(&clock, 3, Window::Minute, 5, TTL));
    pool.commit(pool.try_reserve(&minute("idle", 100)).unwrap());
    assert_eq!(
        pool.return_idle(clock.now_instant(), Duration::from_secs(1)),
        0
    );
    clock.advance(Duration::from_millis(1_500));
    pool.commit(pool.try_reserve(&minute("busy", 100)).unwrap());
    assert_eq!(
        pool.return_idle(clock.now_instant(), Duration::from_secs(1)),
        2,
        "both leases of the idle slot"
    );
    let mut reports = pool.take_reports();
    reports.sort_by_key(|r| r.lease_id);
    let got: Vec<_> = reports
        .iter()
        .map(|r| (r.lease_id.0, r.consumed, r.returned, r.closed))
        .collect();
    assert_eq!(
        got,
        [(2, 1, 9, CloseReason::Idle), (3, 0, 5, CloseReason::Idle)]
    );
    assert_eq!(busy.spendable(), 9);
}

#[test]
fn many_threads_on_one_slot_admit_exactly_the_tokens_installed() {
    const TOKENS: u64 = 200_000;
    let pool = LeasePool::new(PoolConfig::default());
    let slot = pool.slot("k", Window::Day);
    let now = Instant::now();
    pool.install(
        &slot,
        LeaseGrant {
            id: LeaseId(1),
            window_id: Window::Day.id_at(pool.clock().now_unix_ms()),
            tokens: TOKENS,
            ttl: Duration::from_secs(3_600),
            sent_at: now,
            received_at: now,
        },
    );
    let admitted = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let spec = [LimitSpec::new("k", Window::Day, u64::MAX)];
                let mut mine = 0;
                while let Ok(r) = pool.try_reserve(&spec) {
                    pool.commit(r);
                    mine += 1;
                }
                admitted.fetch_add(mine, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), TOKENS);
}

#[test]
fn concurrent_installs_rollbacks_and_reports_account_for_every_token() {
    const LEASES: u64 = 300;
    const PER_LEASE: u64 = 40;
    let pool = LeasePool::new(PoolConfig::default());
    let slot = pool.slot("k", Window::Day);
    let done = AtomicBool::new(false);
    let net_admitted = AtomicU64::new(0);
    let reports = Mutex::new(Vec::new());
    thread::scope(|s| {
        s.spawn(|| {
            for id in 0..LEASES {
                let now = Instant::now();
                pool.install(
                    &slot,
                    LeaseGrant {
                        id: LeaseId(id),
                        window_id: Window::Day.id_at(pool.clock().now_unix_ms()),
                        tokens: PER_LEASE,
                        ttl: Duration::from_secs(3_600),
                        sent_at: now,
                        received_at: now,
                    },
                );
                reports.lock().extend(pool.take_reports());
            }
            done.store(true, Ordering::Release);
        });
        for t in 0..3u64 {
            let (pool, done, net_admitted) = (&pool, &done, &net_admitted);
            s.spawn(move || {
                let spec = [LimitSpec::new("k", Window::Day, u64::MAX).with_cost(1 + t % 2)];
                let mut n = 0u64;
                loop {
                    match pool.try_reserve(&spec) {
                        Ok(r) => {
                            n += 1;
                            if n.is_multiple_of(4) {
                                pool.rollback(r);
                            } else {
                                net_admitted.fetch_add(1 + t % 2, Ordering::Relaxed);
                                pool.commit(r);
                            }
                        }
                        Err(_) if done.load(Ordering::Acquire) => break,
                        Err(_) => thread::yield_now(),
                    }
                }
            });
        }
    });
    pool.return_idle(Instant::now(), Duration::ZERO);
    let mut reports = reports.into_inner();
    reports.extend(pool.take_reports());
    let ids: BTreeSet<_> = reports.iter().map(|r| r.lease_id).collect();
    assert_eq!(ids.len(), reports.len(), "each lease reported once");
    assert_eq!(ids.len() as u64, LEASES, "every lease reported");
    for r in &reports {
        assert_eq!(r.consumed + r.returned, r.installed);
    }
    let consumed: u64 = reports.iter().map(|r| r.consumed).sum();
    assert_eq!(
        consumed,
        net_admitted.load(Ordering::Relaxed) + pool.lost_returns()
    );
    assert!(consumed <= LEASES * PER_LEASE);
}

#[derive(Debug, Clone)]
enum Op {
    Install {
        slot: usize,
        tokens: u64,
        ttl_ms: u64,
        window_offset: u64,
    },
    Reserve {
        mask: u8,
        cost: u64,
    },
    Commit(usize),
    Rollback(usize),
    Advance(u64),
    ReturnIdle(u64),
    TakeReports,
    Demands,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..2usize, 0..12u64, 1..3_000u64, 0..3u64).prop_map(
            |(slot, tokens, ttl_ms, window_offset)| Op::Install {
                slot,
                tokens,
                ttl_ms,
                window_offset
            }
        ),
        4 => (1..4u8, 0..3u64).prop_map(|(mask, cost)| Op::Reserve { mask, cost }),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::Rollback),
        1 => (0..1_500u64).prop_map(Op::Advance),
        1 => (0..2_000u64).prop_map(Op::ReturnIdle),
        1 => Just(Op::TakeReports),
        1 => Just(Op::Demands),
    ]
}

const SLOTS: [(&str, Window); 2] = [("a", Window::Second), ("b", Window::Minute)];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_sequence_of_operations_accounts_for_every_installed_token(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        let (pool, clock) = pool_at(MIDNIGHT_MS + 500);
        let slots: Vec<SlotHandle> = SLOTS.iter().map(|(k, w)| pool.slot(k, *w)).collect();
        let mut next_id = 0u64;
        let mut installed: BTreeMap<LeaseId, u64> = BTreeMap::new();
        let mut installed_per_slot = [0u64; 2];
        let mut net_per_slot = [0u64; 2];
        let mut net_total = 0u64;
        let mut open: Vec<Reservation> = Vec::new();
        let mut reports: Vec<LeaseReport> = Vec::new();
        for op in ops {
            match op {
                Op::Install { slot, tokens, ttl_ms, window_offset } => {
                    let (_, w) = SLOTS[slot];
                    let now = clock.now_instant();
                    let current = w.id_at(clock.now_unix_ms()).0;
                    next_id += 1;
                    pool.install(&slots[slot], LeaseGrant {
                        id: LeaseId(next_id),
                        window_id: WindowId((current + window_offset).saturating_sub(1)),
                        tokens,
                        ttl: Duration::from_millis(ttl_ms),
                        sent_at: now,
                        received_at: now,
                    });
                    installed.insert(LeaseId(next_id), tokens);
                    installed_per_slot[slot] += tokens;
                }
                Op::Reserve { mask, cost } => {
                    let specs: Vec<_> = SLOTS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, (k, w))| LimitSpec::new(k, *w, 5).with_cost(cost))
                        .collect();
                    if let Ok(r) = pool.try_reserve(&specs) {
                        for l in r.limits() {
                            let i = SLOTS.iter().position(|(k, _)| *k == l.key()).unwrap();
                            net_per_slot[i] += l.cost();
                            net_total += l.cost();
                        }
                        open.push(r);
                    }
                }
                Op::Commit(i) if !open.is_empty() => {
                    let r = open.swap_remove(i % open.len());
                    pool.commit(r);
                }
                Op::Rollback(i) if !open.is_empty() => {
                    let r = open.swap_remove(i % open.len());
                    let lost_before = pool.lost_returns();
                    let cost: u64 = r.limits().iter().map(ReservedLimit::cost).sum();
                    for l in r.limits() {
                        let i = SLOTS.iter().position(|(k, _)| *k == l.key()).unwrap();
                        net_per_slot[i] -= l.cost();
                    }
                    pool.rollback(r);
                    let lost = pool.lost_returns() - lost_before;
                    net_total -= cost - lost;
                }
                Op::Commit(_) | Op::Rollback(_) => {}
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::ReturnIdle(ms) => {
                    pool.return_idle(clock.now_instant(), Duration::from_millis(ms));
                }
                Op::TakeReports => reports.extend(pool.take_reports()),
                Op::Demands => {
                    pool.demands(clock.now_instant());
                }
            }
            for i in 0..2 {
                prop_assert!(
                    net_per_slot[i] <= installed_per_slot[i],
                    "slot {i} spent more than was installed"
                );
                let stats = pool.stats(&slots[i]);
                prop_assert!(stats.live + stats.returned <= stats.installed);
            }
        }
        for r in open.drain(..) {
            pool.commit(r);
        }
        clock.advance(Duration::from_secs(120));
        reports.extend(pool.take_reports());
        let mut seen = BTreeSet::new();
        for r in &reports {
            prop_assert!(seen.insert(r.lease_id), "lease {:?} reported twice", r.lease_id);
            prop_assert_eq!(Some(&r.installed), installed.get(&r.lease_id));
            prop_assert_eq!(r.consumed + r.returned, r.installed);
        }
        prop_assert_eq!(seen.len(), installed.len(), "every lease reported");
        let consumed: u64 = reports.iter().map(|r| r.consumed).sum();
        prop_assert_eq!(consumed, net_total);
    }
}

#[test]
fn demands_carry_the_limit_the_latest_reservation_named() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    assert!(pool.try_reserve(&minute("k", 100)).is_err());
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands[0].max, 100);
    assert_eq!(demands[0].slot.max(), 100);
}

#[test]
fn a_lowered_limit_closes_the_slots_leases_and_returns_their_tokens() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 50, TTL));
    pool.install(&slot, grant(&clock, 2, Window::Minute, 20, TTL));
    pool.commit(pool.try_reserve(&minute("k", 1000)).unwrap());
    // The same limit again keeps the leases.
    pool.commit(pool.try_reserve(&minute("k", 1000)).unwrap());
    assert_eq!(slot.spendable(), 48);
    // A raised limit keeps them too.
    pool.commit(pool.try_reserve(&minute("k", 2000)).unwrap());
    assert_eq!(slot.spendable(), 47);

    // Lowered: every lease closes, the call asks the leader under the new limit.
    assert_eq!(
        pool.try_reserve(&minute("k", 10)).unwrap_err(),
        QuotaError::NeedsLease { index: 0 }
    );
    assert_eq!(slot.spendable(), 0);
    let mut reports = pool.take_reports();
    reports.sort_by_key(|r| r.lease_id);
    let got: Vec<_> = reports
        .iter()
        .map(|r| (r.lease_id.0, r.consumed, r.returned))
        .collect();
    assert_eq!(got, [(1, 3, 47), (2, 0, 20)]);
    let demands = pool.demands(clock.now_instant());
    assert_eq!((demands[0].max, demands[0].sync), (10, true));
}

#[test]
fn set_max_announces_a_limit_before_any_call() {
    let (pool, clock) = pool_at(MIDNIGHT_MS);
    let slot = pool.slot("k", Window::Minute);
    pool.install(&slot, grant(&clock, 1, Window::Minute, 5, TTL));
    slot.set_max(100);
    assert_eq!(slot.spendable(), 5, "the first limit closes nothing");
    slot.set_max(3);
    assert_eq!(slot.spendable(), 0);
    assert_eq!(slot.max(), 3);
}

#[test]
fn an_idle_slot_that_gave_its_leases_back_asks_for_nothing_until_a_call_needs_it() {
    let (pool, clock, slot) = measured_pool();
    for _ in 0..40 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    assert!(pool.demands(clock.now_instant()).is_empty(), "60 left");
    clock.advance(Duration::from_secs(3));
    assert!(
        pool.demands(clock.now_instant()).is_empty(),
        "idle, 60 left"
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        pool.return_idle(clock.now_instant(), Duration::from_secs(5)),
        1
    );
    assert_eq!(slot.spendable(), 0);
    assert!(
        pool.demands(clock.now_instant()).is_empty(),
        "no refill for a slot nobody spends from"
    );
    assert!(pool.try_reserve(&minute("k", 1_000)).is_err());
    let demands = pool.demands(clock.now_instant());
    assert_eq!(demands.len(), 1);
    assert!(demands[0].sync);
}

#[test]
fn a_lease_that_expires_unspent_is_not_refilled_until_a_call_needs_it() {
    let (pool, clock, slot) = measured_pool();
    for _ in 0..40 {
        pool.commit(pool.try_reserve(&minute("k", 1_000)).unwrap());
    }
    assert!(pool.demands(clock.now_instant()).is_empty(), "60 left");
    // Past the lease's 10 s lifetime: it closes; nobody spends.
    clock.advance(Duration::from_secs(11));
    assert!(pool.demands(clock.now_instant()).is_empty());
    assert_eq!(slot.spendable(), 0);
}
