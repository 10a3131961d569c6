//! [`LocalQuota`]: exact counters in process memory.
//!
//! # Layout
//!
//! Counters live in 64 shards, each a `parking_lot::Mutex<HashMap<key, Counters>>`, the shard chosen
//! by a hash of the key. A key holds one slot per window kind (`second`, `minute`, `hour`, `day`),
//! and a slot remembers only the newest window it counted in: `(window id, used)`.
//!
//! ```text
//!   reserve([A, B, C]) ── hash keys ──> shards {3, 17}  (deduplicated, ascending)
//!        lock 3, lock 17                               (fixed order: no deadlock)
//!        for each limit: used + cost <= max ? add : undo what this call added, fail
//!        unlock
//! ```
//!
//! Check and add happen under the locks of every shard involved, so a multi-limit reservation is
//! atomic: no other thread can observe a token taken by a reservation that then fails, and no
//! false denial can result from one. Limits repeated within one call add up.
//!
//! # Windows and time
//!
//! A slot whose window has ended is reset when the key is next reserved in a newer window. If the
//! clock goes backwards, the slot keeps counting in the newest window it has seen (never a reset),
//! so a clock step cannot grant a second budget for the same window.
//!
//! `rollback` returns tokens to the window they were taken from. When that window has already been
//! replaced by a newer one, or the key was pruned, the rollback is a no-op: the old window can no
//! longer admit anything, so its count no longer matters.
//!
//! # Pruning
//!
//! Keys whose every window has ended are removed in two ways: lazily, when inserting a new key makes
//! a shard twice as large as after its last pruning (amortised O(1) per insert), and by
//! [`LocalQuota::prune`], which the gateway may call on a timer to release memory sooner.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::quota::{
    Entries, Exhausted, LimitSpec, Origin, Quota, Reservation, ReservedLimit, next_issuer,
};
use crate::window::{Window, WindowId};

const SHARDS: usize = 64;
/// A shard is not pruned lazily before it holds this many keys.
const MIN_PRUNE_AT: usize = 1_024;
/// Limits per call handled without a heap allocation for shard indexes.
const INLINE_LIMITS: usize = 8;

/// Exact in-memory quota, safe to share between threads.
///
/// Never admits more than `max` tokens per (key, window), under any concurrency. Settling a
/// reservation issued by another quota is ignored (its tokens count as spent).
pub struct LocalQuota<C: Clock = SystemClock> {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    shard_seed: u64,
    clock: C,
    issuer: u64,
}

/// Keeps each shard's lock on its own cache line so that threads on different shards do not
/// invalidate each other's lines.
#[repr(align(64))]
struct CachePadded<T>(T);

#[derive(Default)]
struct Shard {
    keys: HashMap<Arc<str>, Counters>,
    prune_at: usize,
}

struct Counters {
    /// The map's key again, so a reservation can hold it without allocating.
    key: Arc<str>,
    slots: [Slot; 4],
}

#[derive(Clone, Copy, Default)]
struct Slot {
    window: u64,
    used: u64,
}

impl Slot {
    /// `(window id, used)` as seen at window `now`: an ended window counts as empty.
    fn current(self, now: u64) -> (u64, u64) {
        if self.window >= now {
            (self.window, self.used)
        } else {
            (now, 0)
        }
    }
}

impl Counters {
    fn is_live(&self, now_ms: u64) -> bool {
        Window::ALL.iter().any(|w| {
            let slot = self.slots[w.index()];
            slot.used > 0 && slot.window >= w.id_at(now_ms).0
        })
    }
}

impl LocalQuota<SystemClock> {
    /// A quota on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }
}

impl Default for LocalQuota<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> LocalQuota<C> {
    /// A quota reading time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    CachePadded(Mutex::new(Shard {
                        keys: HashMap::new(),
                        prune_at: MIN_PRUNE_AT,
                    }))
                })
                .collect(),
            shard_seed: RandomState::new().hash_one(0x7011_6a7e_u64),
            clock,
            issuer: next_issuer(),
        }
    }

    /// The clock this quota reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Tokens counted for `key` in the current `window`.
    pub fn usage(&self, key: &str, window: Window) -> u64 {
        let now = window.id_at(self.clock.now_unix_ms()).0;
        let shard = self.shards[self.shard_of(key)].0.lock();
        shard
            .keys
            .get(key)
            .map_or(0, |c| c.slots[window.index()].current(now).1)
    }

    /// Removes every key whose windows have all ended; returns how many were removed. Work is
    /// proportional to the number of keys; locks one shard at a time.
    pub fn prune(&self) -> usize {
        let now_ms = self.clock.now_unix_ms();
        self.shards
            .iter()
            .map(|s| prune_shard(&mut s.0.lock(), now_ms))
            .sum()
    }

    /// Number of keys held (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().keys.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every limit, in order, from the shards in `locked` (sorted by shard index), or none.
    fn take_all<G: DerefMut<Target = Shard>>(
        &self,
        limits: &[LimitSpec<'_>],
        shard_of: &[usize],
        locked: &mut [(usize, G)],
    ) -> Result<Entries, Exhausted> {
        fn find<G: DerefMut<Target = Shard>>(
            locked: &mut [(usize, G)],
            s: usize,
        ) -> Option<&mut Shard> {
            let at = locked.binary_search_by_key(&s, |(i, _)| *i).ok()?;
            Some(&mut *locked[at].1)
        }
        // Read under the locks, so that every reservation sees time move forward with the counts.
        let now_ms = self.clock.now_unix_ms();
        let mut entries = Entries::with_capacity(limits.len());
        for (index, (spec, &s)) in limits.iter().zip(shard_of).enumerate() {
            let taken = match find(locked, s) {
                Some(shard) => take(shard, spec, now_ms, index, s),
                // Every involved shard is locked; should that ever not hold, fail closed rather
                // than panic on the request path.
                None => Err(Exhausted {
                    index,
                    retry_after: Duration::ZERO,
                }),
            };
            match taken {
                Ok(entry) => entries.push(entry),
                Err(exhausted) => {
                    for entry in entries.iter().rev() {
                        let Origin::Local { shard: s, .. } = entry.origin else {
                            continue;
                        };
                        if let Some(shard) = find(locked, s) {
                            give_back(shard, entry);
                        }
                    }
                    return Err(exhausted);
                }
            }
        }
        Ok(entries)
    }

    /// Picks the shard of `key` with a seeded multiply-rotate hash, a few times cheaper than the
    /// maps' SipHash. Someone able to choose keys could crowd one shard; that only costs speed
    /// (down to one global lock), never exactness or memory.
    fn shard_of(&self, key: &str) -> usize {
        let mut h = self.shard_seed;
        for chunk in key.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        // The top bits are the best mixed by the multiply; SHARDS is 2^6.
        (h >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

fn prune_shard(shard: &mut Shard, now_ms: u64) -> usize {
    let before = shard.keys.len();
    shard.keys.retain(|_, c| c.is_live(now_ms));
    shard.prune_at = (shard.keys.len() * 2).max(MIN_PRUNE_AT);
    before - shard.keys.len()
}

/// Takes `spec` in `shard` at `now_ms`, or reports it full.
fn take(
    shard: &mut Shard,
    spec: &LimitSpec<'_>,
    now_ms: u64,
    index: usize,
    shard_index: usize,
) -> Result<ReservedLimit, Exhausted> {
    let now = spec.window.id_at(now_ms).0;
    let w = spec.window.index();
    let check = |(window, used): (u64, u64)| {
        let total = used
            .checked_add(spec.cost)
            .filter(|total| *total <= spec.max);
        total.map(|total| (window, total)).ok_or_else(|| {
            let end = spec.window.end_ms(WindowId(window));
            Exhausted {
                index,
                retry_after: Duration::from_millis(end.saturating_sub(now_ms)),
            }
        })
    };
    // One hash lookup on the common path: the key is already known.
    let counters = if let Some(c) = shard.keys.get_mut(spec.key) {
        let (window, total) = check(c.slots[w].current(now))?;
        c.slots[w] = Slot {
            window,
            used: total,
        };
        c
    } else {
        let (window, total) = check((now, 0))?;
        if shard.keys.len() >= shard.prune_at {
            prune_shard(shard, now_ms);
        }
        let key: Arc<str> = Arc::from(spec.key);
        let mut slots = [Slot::default(); 4];
        slots[w] = Slot {
            window,
            used: total,
        };
        shard
            .keys
            .entry(key.clone())
            .or_insert(Counters { key, slots })
    };
    Ok(ReservedLimit {
        origin: Origin::Local {
            key: counters.key.clone(),
            shard: shard_index,
        },
        window: spec.window,
        window_id: WindowId(counters.slots[w].window),
        cost: spec.cost,
    })
}

/// Gives `entry`'s tokens back if its window is still the one its slot counts.
fn give_back(shard: &mut Shard, entry: &ReservedLimit) {
    let Origin::Local { key, .. } = &entry.origin else {
        return;
    };
    if let Some(c) = shard.keys.get_mut(&**key) {
        let slot = &mut c.slots[entry.window.index()];
        if slot.window == entry.window_id.0 {
            slot.used = slot.used.saturating_sub(entry.cost);
        }
    }
}

impl<C: Clock> Quota for LocalQuota<C> {
    fn reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, Exhausted> {
        let mut inline = [0usize; INLINE_LIMITS];
        let mut heap = Vec::new();
        let shard_of: &mut [usize] = if limits.len() <= INLINE_LIMITS {
            &mut inline[..limits.len()]
        } else {
            heap.resize(limits.len(), 0);
            &mut heap
        };
        let mut involved = 0u64;
        for (slot, spec) in shard_of.iter_mut().zip(limits) {
            *slot = self.shard_of(spec.key);
            involved |= 1 << *slot;
        }

        let entries = if involved.count_ones() <= 1 {
            // One shard (always so for a single limit): no lock ordering to do.
            let s = involved.trailing_zeros() as usize % SHARDS;
            let mut locked = [(s, self.shards[s].0.lock())];
            self.take_all(limits, shard_of, &mut locked)?
        } else {
            // Lock every involved shard once, in ascending order: two reservations can never
            // wait on each other.
            let mut locked = Vec::with_capacity(involved.count_ones() as usize);
            let mut rest = involved;
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                locked.push((i, self.shards[i].0.lock()));
                rest &= rest - 1;
            }
            self.take_all(limits, shard_of, &mut locked)?
        };
        Ok(Reservation {
            issuer: self.issuer,
            entries,
        })
    }

    fn commit(&self, reservation: Reservation) {
        // The tokens are already counted; committing only ends the reservation.
        drop(reservation);
    }

    fn rollback(&self, reservation: Reservation) {
        if reservation.issuer != self.issuer {
            return;
        }
        for entry in &reservation.entries {
            if let Origin::Local { shard, .. } = entry.origin {
                give_back(&mut self.shards[shard].0.lock(), entry);
            }
        }
    }
}

impl<C: Clock + std::fmt::Debug> std::fmt::Debug for LocalQuota<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQuota")
            .field("shards", &SHARDS)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
