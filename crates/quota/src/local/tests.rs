#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;

/// 2024-03-10T00:00:00Z.
const MIDNIGHT_MS: u64 = 1_710_028_800_000;

fn quota_at(ms: u64) -> (LocalQuota<ManualClock>, ManualClock) {
    let clock = ManualClock::new(ms);
    (LocalQuota::with_clock(clock.clone()), clock)
}

/// The count held for `key` in window `id`, if its slot still counts that window.
fn count_in<C: Clock>(q: &LocalQuota<C>, key: &str, window: Window, id: WindowId) -> Option<u64> {
    let shard = q.shards[q.shard_of(key)].0.lock();
    let slot = shard.keys.get(key)?.slots[window.index()];
    (slot.window == id.0).then_some(slot.used)
}

#[test]
fn a_limit_admits_exactly_max_per_window() {
    let (q, _) = quota_at(MIDNIGHT_MS + 10_000);
    let limit = [LimitSpec::new("grant:g/rate", Window::Minute, 3)];
    for _ in 0..3 {
        q.commit(q.reserve(&limit).unwrap());
    }
    let denied = q.reserve(&limit).unwrap_err();
    assert_eq!(denied.index, 0);
    assert_eq!(denied.retry_after, Duration::from_millis(50_000));
    assert_eq!(q.usage("grant:g/rate", Window::Minute), 3);
}

#[test]
fn a_full_second_limit_leaves_the_first_untouched() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    q.commit(q.reserve(&[LimitSpec::new("b", Window::Hour, 1)]).unwrap());
    let both = [
        LimitSpec::new("a", Window::Minute, 5),
        LimitSpec::new("b", Window::Hour, 1),
    ];
    let denied = q.reserve(&both).unwrap_err();
    assert_eq!(denied.index, 1);
    assert_eq!(denied.retry_after, Duration::from_secs(3_600));
    assert_eq!(q.usage("a", Window::Minute), 0);
    assert_eq!(q.usage("b", Window::Hour), 1);
}

#[test]
fn the_first_full_limit_in_slice_order_is_reported() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let limits = [
        LimitSpec::new("a", Window::Day, 9),
        LimitSpec::new("b", Window::Second, 0),
        LimitSpec::new("c", Window::Minute, 0),
    ];
    assert_eq!(q.reserve(&limits).unwrap_err().index, 1);
    assert_eq!(q.usage("a", Window::Day), 0);
}

#[test]
fn a_limit_repeated_in_one_call_counts_twice() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let twice = [
        LimitSpec::new("k", Window::Minute, 3),
        LimitSpec::new("k", Window::Minute, 3),
    ];
    q.commit(q.reserve(&twice).unwrap());
    assert_eq!(q.reserve(&twice).unwrap_err().index, 1);
    assert_eq!(q.usage("k", Window::Minute), 2);
}

#[test]
fn the_same_key_counts_separately_per_window_kind() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    q.commit(
        q.reserve(&[
            LimitSpec::new("k", Window::Minute, 1),
            LimitSpec::new("k", Window::Hour, 2),
        ])
        .unwrap(),
    );
    assert!(
        q.reserve(&[LimitSpec::new("k", Window::Minute, 1)])
            .is_err()
    );
    q.commit(q.reserve(&[LimitSpec::new("k", Window::Hour, 2)]).unwrap());
    assert_eq!(
        (q.usage("k", Window::Minute), q.usage("k", Window::Hour)),
        (1, 2)
    );
}

#[test]
fn rollback_returns_every_token() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let limits = [
        LimitSpec::new("a", Window::Minute, 1),
        LimitSpec::new("b", Window::Day, 5).with_cost(3),
    ];
    let r = q.reserve(&limits).unwrap();
    assert_eq!(
        r.limits()
            .iter()
            .map(ReservedLimit::cost)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(q.reserve(&limits).is_err());
    q.rollback(r);
    assert_eq!(
        (q.usage("a", Window::Minute), q.usage("b", Window::Day)),
        (0, 0)
    );
    q.commit(q.reserve(&limits).unwrap());
}

#[test]
fn rollback_after_the_window_rolled_over_returns_tokens_to_the_original_window() {
    let (q, clock) = quota_at(MIDNIGHT_MS + 59_000);
    let limit = [LimitSpec::new("k", Window::Minute, 2)];
    let first_window = Window::Minute.id_at(MIDNIGHT_MS);
    let kept = q.reserve(&limit).unwrap();
    let early = q.reserve(&limit).unwrap();
    assert_eq!(early.limits()[0].window_id(), first_window);

    clock.advance(Duration::from_secs(1));
    q.rollback(early);
    assert_eq!(
        count_in(&q, "k", Window::Minute, first_window),
        Some(1),
        "given back to the old window"
    );
    assert_eq!(
        q.usage("k", Window::Minute),
        0,
        "the new window is not credited"
    );

    // Once the new window counts, the old one is gone and a late rollback is a no-op.
    let late = {
        clock.set(MIDNIGHT_MS + 59_500);
        let r = q.reserve(&limit).unwrap();
        clock.set(MIDNIGHT_MS + 60_000);
        r
    };
    q.commit(q.reserve(&limit).unwrap());
    q.commit(q.reserve(&limit).unwrap());
    q.rollback(late);
    assert_eq!(
        q.usage("k", Window::Minute),
        2,
        "the new window keeps its count"
    );
    assert!(q.reserve(&limit).is_err());
    q.commit(kept);
}

#[test]
fn a_new_window_admits_again_from_its_first_millisecond() {
    let (q, clock) = quota_at(MIDNIGHT_MS);
    let limit = [LimitSpec::new("k", Window::Second, 1)];
    q.commit(q.reserve(&limit).unwrap());
    clock.set(MIDNIGHT_MS + 999);
    let denied = q.reserve(&limit).unwrap_err();
    assert_eq!(denied.retry_after, Duration::from_millis(1));
    assert_eq!(denied.retry_after_secs(), 1);
    clock.set(MIDNIGHT_MS + 1_000);
    assert_eq!(q.usage("k", Window::Second), 0);
    q.commit(q.reserve(&limit).unwrap());
}

#[test]
fn cost_zero_fits_a_full_limit_and_cost_above_max_never_fits() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let limit = LimitSpec::new("k", Window::Minute, 4);
    assert!(
        q.reserve(&[limit.with_cost(5)]).is_err(),
        "cost > max on an empty counter"
    );
    q.commit(q.reserve(&[limit.with_cost(3)]).unwrap());
    assert!(q.reserve(&[limit.with_cost(2)]).is_err());
    q.commit(q.reserve(&[limit.with_cost(1)]).unwrap());
    q.commit(q.reserve(&[limit.with_cost(0)]).unwrap());
    assert!(
        q.reserve(&[limit.with_cost(u64::MAX)]).is_err(),
        "no overflow"
    );
    assert_eq!(q.usage("k", Window::Minute), 4);
}

#[test]
fn a_dropped_reservation_counts_as_spent() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let limit = [LimitSpec::new("k", Window::Minute, 1)];
    drop(q.reserve(&limit).unwrap());
    assert!(q.reserve(&limit).is_err());
}

#[test]
fn a_reservation_from_another_quota_is_not_given_back() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let (other, _) = quota_at(MIDNIGHT_MS);
    let limit = [LimitSpec::new("k", Window::Minute, 1)];
    q.commit(q.reserve(&limit).unwrap());
    other.rollback(other.reserve(&limit).unwrap());
    let foreign = other.reserve(&limit).unwrap();
    q.rollback(foreign);
    assert_eq!(
        (
            q.usage("k", Window::Minute),
            other.usage("k", Window::Minute)
        ),
        (1, 1)
    );
}

#[test]
fn a_clock_going_backwards_does_not_reopen_a_window() {
    let (q, clock) = quota_at(MIDNIGHT_MS + 60_000);
    let limit = [LimitSpec::new("k", Window::Minute, 1)];
    q.commit(q.reserve(&limit).unwrap());
    clock.set(MIDNIGHT_MS + 30_000);
    let denied = q.reserve(&limit).unwrap_err();
    assert_eq!(
        denied.retry_after,
        Duration::from_secs(90),
        "until the newest window seen ends"
    );
    assert_eq!(q.usage("k", Window::Minute), 1);
}

#[test]
fn prune_removes_keys_whose_windows_all_ended() {
    let (q, clock) = quota_at(MIDNIGHT_MS);
    q.commit(
        q.reserve(&[LimitSpec::new("short", Window::Second, 5)])
            .unwrap(),
    );
    q.commit(
        q.reserve(&[
            LimitSpec::new("both", Window::Second, 5),
            LimitSpec::new("both", Window::Day, 5),
        ])
        .unwrap(),
    );
    q.rollback(
        q.reserve(&[LimitSpec::new("returned", Window::Day, 5)])
            .unwrap(),
    );
    assert_eq!(q.prune(), 1, "a fully returned key holds nothing");
    clock.advance(Duration::from_secs(1));
    assert_eq!(q.prune(), 1);
    assert_eq!(q.len(), 1);
    assert_eq!(q.usage("both", Window::Day), 1);
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(q.prune(), 1);
    assert!(q.is_empty());
}

#[test]
fn lazy_pruning_bounds_the_keys_of_ended_windows() {
    let (q, clock) = quota_at(MIDNIGHT_MS);
    for i in 0..200_000u64 {
        q.commit(
            q.reserve(&[LimitSpec::new(&format!("k{i}"), Window::Second, 1)])
                .unwrap(),
        );
        clock.advance(Duration::from_millis(1));
    }
    // Without pruning 200k keys would be held; keys of ended seconds are dropped as shards grow.
    let held = q.len();
    assert!(held <= SHARDS * MIN_PRUNE_AT, "held {held} keys");
    assert!(
        held >= 1_000,
        "the live second's keys are kept: held {held}"
    );
}

#[test]
fn keys_with_a_common_prefix_spread_over_the_shards() {
    let (q, _) = quota_at(MIDNIGHT_MS);
    let mut per_shard = [0u32; SHARDS];
    for i in 0..6_400 {
        per_shard[q.shard_of(&format!("grant:{i:016x}/run-rerun_rate"))] += 1;
    }
    let (min, max) = (
        per_shard.iter().min().unwrap(),
        per_shard.iter().max().unwrap(),
    );
    assert!(
        *min >= 50 && *max <= 160,
        "100 expected per shard, got {min}..{max}"
    );
}

#[test]
fn concurrent_overlapping_reservations_admit_exactly_max_per_key() {
    const THREADS: usize = 8;
    const ATTEMPTS: usize = 10_000;
    let keys = ["grant:a/x", "grant:b/y", "session:c/z"];
    let max = [7_000u64, 5_000, 3_000];
    let combos: [&[usize]; 6] = [&[0], &[1], &[2], &[0, 1], &[1, 2], &[2, 1, 0]];
    let (q, _) = quota_at(MIDNIGHT_MS);
    let q = Arc::new(q);
    let admitted: Arc<[AtomicU64; 3]> = Arc::new(Default::default());

    thread::scope(|s| {
        for t in 0..THREADS {
            let (q, admitted) = (q.clone(), admitted.clone());
            s.spawn(move || {
                for i in 0..ATTEMPTS {
                    let combo = combos[(t + i) % combos.len()];
                    let specs: Vec<_> = combo
                        .iter()
                        .map(|&k| LimitSpec::new(keys[k], Window::Hour, max[k]))
                        .collect();
                    let Ok(r) = q.reserve(&specs) else { continue };
                    // In the first half some calls fail upstream and give their tokens back; every
                    // thread then makes thousands more single-key attempts, so returned tokens are
                    // taken again before the end.
                    if i < ATTEMPTS / 2 && i % 7 == 0 {
                        q.rollback(r);
                    } else {
                        q.commit(r);
                        for &k in combo {
                            admitted[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    for k in 0..3 {
        assert_eq!(
            admitted[k].load(Ordering::Relaxed),
            max[k],
            "admitted for {}",
            keys[k]
        );
        assert_eq!(q.usage(keys[k], Window::Hour), max[k]);
    }
}

// --- model-based property test

#[derive(Debug, Clone)]
enum Op {
    Reserve(Vec<(usize, usize, u64)>),
    Commit(usize),
    Rollback(usize),
    Advance(u64),
}

const KEYS: [&str; 3] = ["a", "b", "c"];
const WINDOWS: [Window; 2] = [Window::Second, Window::Minute];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0..KEYS.len(), 0..WINDOWS.len(), 0u64..3), 1..4).prop_map(Op::Reserve),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::Rollback),
        1 => (0u64..1_500).prop_map(Op::Advance),
    ]
}

/// (key, window kind, window id, cost) of one reserved limit.
type Taken = (usize, usize, u64, u64);

/// Counts per (key, window kind, window id), with no sharding, slots or pruning.
#[derive(Default)]
struct Model {
    counts: BTreeMap<(usize, usize, u64), u64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_sequence_of_operations_matches_a_sequential_model(
        start in 0u64..200_000,
        max in prop::collection::vec(0u64..5, KEYS.len() * WINDOWS.len()),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let (q, clock) = quota_at(MIDNIGHT_MS + start);
        let mut model = Model::default();
        let mut pending: Vec<(Reservation, Vec<Taken>)> = Vec::new();
        let max_of = |k: usize, w: usize| max[k * WINDOWS.len() + w];

        for op in ops {
            let now = clock.now_unix_ms();
            match op {
                Op::Reserve(limits) => {
                    let specs: Vec<_> = limits.iter()
                        .map(|&(k, w, cost)| LimitSpec::new(KEYS[k], WINDOWS[w], max_of(k, w)).with_cost(cost))
                        .collect();
                    // Model: check in order, counting earlier limits of the same call.
                    let mut taken: BTreeMap<(usize, usize, u64), u64> = BTreeMap::new();
                    let mut expected = Ok(());
                    for (i, &(k, w, cost)) in limits.iter().enumerate() {
                        let id = WINDOWS[w].id_at(now).0;
                        let used = model.counts.get(&(k, w, id)).copied().unwrap_or(0) + taken.get(&(k, w, id)).copied().unwrap_or(0);
                        if used + cost > max_of(k, w) {
                            let wait = WINDOWS[w].end_ms(WindowId(id)) - now;
                            expected = Err(Exhausted { index: i, retry_after: Duration::from_millis(wait) });
                            break;
                        }
                        *taken.entry((k, w, id)).or_default() += cost;
                    }
                    match (q.reserve(&specs), expected) {
                        (Ok(r), Ok(())) => {
                            for (key, n) in &taken {
                                *model.counts.entry(*key).or_default() += n;
                            }
                            let settled = limits.iter().map(|&(k, w, cost)| (k, w, WINDOWS[w].id_at(now).0, cost)).collect();
                            pending.push((r, settled));
                        }
                        (Err(got), Err(want)) => prop_assert_eq!(got, want),
                        (got, want) => prop_assert!(false, "reserve gave {:?}, model {:?}", got, want),
                    }
                }
                Op::Commit(i) if !pending.is_empty() => {
                    let (r, _) = pending.remove(i % pending.len());
                    q.commit(r);
                }
                Op::Rollback(i) if !pending.is_empty() => {
                    let (r, settled) = pending.remove(i % pending.len());
                    q.rollback(r);
                    for (k, w, id, cost) in settled {
                        *model.counts.get_mut(&(k, w, id)).unwrap() -= cost;
                    }
                }
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Commit(_) | Op::Rollback(_) => {}
            }
            let now = clock.now_unix_ms();
            for (k, key) in KEYS.iter().enumerate() {
                for (w, window) in WINDOWS.iter().enumerate() {
                    let want = model.counts.get(&(k, w, window.id_at(now).0)).copied().unwrap_or(0);
                    prop_assert!(want <= max_of(k, w));
                    prop_assert_eq!(q.usage(key, *window), want, "usage of {} per {}", key, window);
                }
            }
        }
    }
}
