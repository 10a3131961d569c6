//! [`LeasePool`]: the tokens a gateway holds between itself and the quota leader, sans IO.
//!
//! The leader cuts **leases** from its Raft-committed chunks (see `QUOTA.md`) and sends them to the
//! gateway; the gateway spends them on the request path without any network wait. The network agent
//! that talks to the leader is a thin loop around this pool:
//!
//! ```text
//!            request path (hot)                     agent (every tick, off the hot path)
//!   try_reserve ──hit──> Reservation           demands(now)  ──> want tokens for slots running low
//!        │                                     take_reports() ──> consumed/returned per closed lease
//!        ├─miss, leader said spent ─> Exhausted    return_idle(now, idle_for)
//!        └─miss, otherwise ─> NeedsLease ──sync──> agent asks the leader, install(slot, grant), retry
//! ```
//!
//! # Slots and the hot path
//!
//! A **slot** holds the leases of one (counter key, window kind). The tokens of its *current*
//! lease sit in one `AtomicU64`, packed as `generation (24 bits) | tokens (40 bits)`. A spend is
//! one compare-and-swap that lowers the count when it is at least the cost: no lock, no allocation,
//! no await. The generation changes whenever the current lease changes, so a spend can never be
//! charged to a lease other than the one it was decided on: a CAS against a stale generation fails.
//!
//! Leases are installed, rotated and closed under the slot's mutex (rare: once per lease). Closing
//! the current lease *swaps* the atomic to `(next generation, 0)`: the count swapped out is exactly
//! what no spender took and none can take any more, which is why the unused tokens of an expired
//! lease are reported as `returned` and not as spent. (A spend that passed the deadline check just
//! before the deadline and landed its CAS just after it is counted as consumed, as it must be.)
//! The expiry and the window of the current lease are stored in two more atomics written before the
//! tokens; a spender reads them between loading the count and its CAS, so a successful CAS proves
//! it read the expiry of the very lease it spent from.
//!
//! Slots are interned: [`LeasePool::slot`] resolves a key and window once (the gateway does this per
//! policy version) into a [`SlotHandle`] that spends without any lookup. The `&str` path used by
//! [`Quota::try_reserve`] looks the key up in a sharded copy-on-write map (`arc_swap`), lock-free
//! and allocation-free on a hit; inserting a new key copies one shard.
//!
//! # Lease lifetime
//!
//! A lease's expiry is measured from the instant the gateway *sent* its request (`sent_at + ttl`),
//! so the interval in which it spends lies inside the one the leader accounted for, and it never
//! outlives its window: the end of `window_id` is converted to a monotonic deadline when the lease
//! is installed. Leases queue behind the current one (ordered by window) and become current when it
//! expires or runs dry.
//!
//! # Accounting
//!
//! For every lease, `consumed + returned + live == installed` at all times; a lease is reported
//! exactly once, when it closes (expired, its window ended, drained, superseded, returned idle).
//! A rollback gives its tokens back to the lease they came from: into the atomic while that lease
//! is current, into the closed lease's `returned` while its report has not been taken yet, and
//! otherwise they stay counted as consumed ("unknown means spent": under-admission, never
//! over-admission), tallied in [`LeasePool::lost_returns`].
//!
//! # Lowered limits
//!
//! Every reservation records the `max` it was made under in its slot (one relaxed load on the
//! hot path, a store only when it changes), and demands carry it, so the leader always grants
//! against the policy in force. When a call names a *lower* `max` than the slot knew (a policy
//! change), the slot closes its current and queued leases at once: their unused tokens are
//! reported as returned, and the call asks the leader under the new limit, which caps what is
//! left to lease. A lowered limit therefore takes hold on a node with its first call under the
//! new policy, not at the end of the leases' lifetime.
//!
//! # Multi-limit reservations
//!
//! A call with several limits takes them one after the other and gives back what it took if a
//! later one misses. Another call may briefly see those tokens as taken and miss (a false
//! `NeedsLease`, which costs it a round trip); nothing is ever over-admitted.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::quota::{
    Entries, Exhausted, LimitSpec, Origin, Quota, QuotaError, Reservation, ReservedLimit,
    next_issuer,
};
use crate::window::{Window, WindowId};

const TOKEN_BITS: u32 = 40;
/// Most tokens one lease can hold on the hot path; more is returned at once.
pub const MAX_LEASE_TOKENS: u64 = (1 << TOKEN_BITS) - 1;
const GENERATION_MASK: u32 = (1 << (64 - TOKEN_BITS)) - 1;
const MAP_SHARDS: usize = 16;

fn pack(generation: u32, tokens: u64) -> u64 {
    (u64::from(generation & GENERATION_MASK) << TOKEN_BITS) | (tokens & MAX_LEASE_TOKENS)
}

fn generation_of(v: u64) -> u32 {
    // The shift leaves 24 bits.
    (v >> TOKEN_BITS) as u32
}

fn tokens_of(v: u64) -> u64 {
    v & MAX_LEASE_TOKENS
}

/// Id the leader gave a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

/// A lease as received from the leader, with the instants the gateway measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The leader's id for the lease.
    pub id: LeaseId,
    /// The window (by the leader's clock) the tokens count in.
    pub window_id: WindowId,
    /// Tokens granted.
    pub tokens: u64,
    /// Lifetime, counted from `sent_at`.
    pub ttl: Duration,
    /// When the gateway sent the request this lease answers.
    pub sent_at: Instant,
    /// When the gateway received the answer; the lease is usable from then on.
    pub received_at: Instant,
}

/// What [`LeasePool::install`] did with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The lease is the slot's current one: its tokens are spendable now.
    Current,
    /// The lease waits behind the current one.
    Queued,
    /// The lease had already expired or its window had ended: closed at once, every token
    /// returned (it shows in the next [`LeasePool::take_reports`]).
    Dead,
}

/// Why a lease was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `sent_at + ttl` passed.
    Expired,
    /// Its window ended (the lease's expiry was the end of its window).
    WindowEnded,
    /// Every token was spent and the next lease took over (or it was closed while empty).
    Drained,
    /// It held fewer tokens than a call needed and the next lease took over.
    Superseded,
    /// The slot was idle and gave its tokens back ([`LeasePool::return_idle`]).
    Idle,
}

/// The settlement of one closed lease, for the agent's next message to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReport {
    /// The lease.
    pub lease_id: LeaseId,
    /// The slot it was installed in.
    pub slot: SlotHandle,
    /// The window its tokens counted in.
    pub window_id: WindowId,
    /// Tokens granted.
    pub installed: u64,
    /// Tokens spent (or whose fate is unknown): `installed - returned`.
    pub consumed: u64,
    /// Tokens provably unused: give them back to the leader.
    pub returned: u64,
    /// Why it closed.
    pub closed: CloseReason,
}

/// A slot that wants tokens from the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The slot (its key and window kind).
    pub slot: SlotHandle,
    /// The window the tokens are for, by this node's clock (the leader decides by its own).
    pub window_id: WindowId,
    /// Tokens wanted (at least 1).
    pub want: u64,
    /// The limit the slot's latest reservation named (0 if none did yet, e.g. a slot interned
    /// by [`LeasePool::slot`] and never spent from).
    pub max: u64,
    /// Calls are waiting on this answer ([`QuotaError::NeedsLease`] was returned): send now, do
    /// not wait for the next batch.
    pub sync: bool,
}

/// How the leader says a slot must be run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotMode {
    /// Every call needs one synchronously reserved token: the pool never asks ahead, only for the
    /// calls that were answered [`QuotaError::NeedsLease`].
    pub exact: bool,
    /// The window is near its limit: ask for half as much.
    pub endgame: bool,
}

/// Counters of one slot, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotStats {
    /// Tokens spendable now or queued (live leases).
    pub live: u64,
    /// Leases current or queued.
    pub leases: usize,
    /// Tokens installed over the slot's life.
    pub installed: u64,
    /// Tokens returned (in closed leases) over the slot's life.
    pub returned: u64,
    /// Estimated spend rate, tokens per second.
    pub rate: f64,
}

/// Tuning of a [`LeasePool`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Round trip to the leader assumed before the first lease answer is measured.
    pub default_round_trip: Duration,
    /// A lease should last this long at the local spend rate (`want ≈ rate × horizon`).
    pub lease_horizon: Duration,
    /// Time constant of the spend-rate moving average.
    pub rate_time_constant: Duration,
    /// A demand not answered within this time is asked again.
    pub request_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            default_round_trip: Duration::from_millis(1),
            lease_horizon: Duration::from_millis(50),
            rate_time_constant: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        }
    }
}

/// An interned (key, window kind) of a [`LeasePool`]: spends without a lookup. Cheap to clone.
#[derive(Clone)]
pub struct SlotHandle(Arc<Slot>);

impl SlotHandle {
    /// The counter key.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// The window kind.
    pub fn window(&self) -> Window {
        self.0.window
    }

    /// Tokens spendable now from the current lease (ignores its expiry).
    pub fn spendable(&self) -> u64 {
        tokens_of(self.0.hot.current.load(Ordering::Acquire))
    }

    /// The limit (`max`) the slot's demands carry: the latest one a reservation named, or the
    /// one given here. A lower value than before closes the slot's leases (see
    /// "Lowered limits" in the [module docs](self)).
    pub fn set_max(&self, max: u64) {
        let known = self.0.hot.max.load(Ordering::Relaxed);
        if known != max {
            self.0.set_max(known, max);
        }
    }

    /// The limit the slot's demands carry (0 before any reservation or [`SlotHandle::set_max`]).
    pub fn max(&self) -> u64 {
        self.0.hot.max.load(Ordering::Relaxed)
    }
}

impl PartialEq for SlotHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SlotHandle {}

impl fmt::Debug for SlotHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotHandle")
            .field("key", &self.0.key)
            .field("window", &self.0.window)
            .finish()
    }
}

struct Slot {
    key: Arc<str>,
    window: Window,
    hot: Hot,
    state: Mutex<SlotState>,
}

/// What the request path reads, on its own cache line.
#[repr(align(64))]
struct Hot {
    /// `generation | tokens` of the current lease.
    current: AtomicU64,
    /// Expiry of the current lease, ns since the pool's epoch (0 without a lease).
    deadline_ns: AtomicU64,
    /// The limit (`max`) the latest reservation named; 0 before any. Sent with the slot's
    /// demands, so the leader always grants against the policy in force.
    max: AtomicU64,
    /// Window id of the current lease.
    window_id: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    /// Generation of the value in `Hot::current`.
    generation: u32,
    current: Option<Lease>,
    /// Installed, not yet current; ordered by window, then arrival.
    queue: Vec<Lease>,
    /// Closed, not yet reported.
    closed: Vec<Lease>,
    installed_total: u64,
    returned_total: u64,
    /// Tokens of the latest lease installed: a refill is asked once half of that is left.
    last_installed: u64,
    /// `(ns, spent)` at the last rate sample.
    sample: Option<(u64, u64)>,
    rate: f64,
    last_active_ns: u64,
    mode: SlotMode,
    exhausted: Option<WindowId>,
    /// Tokens asked by calls answered `NeedsLease` since the last lease.
    sync_wanted: u64,
    requested_at_ns: Option<u64>,
}

struct Lease {
    id: LeaseId,
    window_id: WindowId,
    installed: u64,
    /// Tokens that can ever be spendable (`installed` capped at [`MAX_LEASE_TOKENS`]).
    spendable: u64,
    deadline_ns: u64,
    /// The deadline is the end of the window (not `sent_at + ttl`).
    ends_with_window: bool,
    /// Set once it has been current: names its tokens in `Hot::current`.
    generation: Option<u32>,
    returned: u64,
    closed: Option<CloseReason>,
}

impl Lease {
    fn report(&self, slot: &SlotHandle) -> LeaseReport {
        LeaseReport {
            lease_id: self.id,
            slot: slot.clone(),
            window_id: self.window_id,
            installed: self.installed,
            consumed: self.installed.saturating_sub(self.returned),
            returned: self.returned,
            closed: self.closed.unwrap_or(CloseReason::Drained),
        }
    }

    fn expiry_reason(&self) -> CloseReason {
        if self.ends_with_window {
            CloseReason::WindowEnded
        } else {
            CloseReason::Expired
        }
    }
}

impl Slot {
    /// Records a new `max` (a policy changed). A lower one closes the slot's leases at once:
    /// their unused tokens go back to the leader with the next report, and the next call asks
    /// for a lease under the new limit, so a lowered limit takes hold within one round trip on
    /// this node instead of at the end of the leases' lifetime.
    fn set_max(&self, known: u64, max: u64) {
        if self
            .hot
            .max
            .compare_exchange(known, max, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
            || known == 0
            || max > known
        {
            return;
        }
        let mut st = self.state.lock();
        if st.current.is_some() {
            self.close_current(&mut st, CloseReason::Superseded);
        }
        for mut lease in std::mem::take(&mut st.queue) {
            close_unused(&mut st, &mut lease, CloseReason::Superseded);
            st.closed.push(lease);
        }
        st.rate = 0.0;
    }

    /// The hot path: takes `cost` from the current lease if it holds that many and has not
    /// expired. Returns the lease's generation and window.
    fn try_take(&self, cost: u64, now_ns: u64) -> Option<(u32, WindowId)> {
        let hot = &self.hot;
        let mut v = hot.current.load(Ordering::Acquire);
        loop {
            if tokens_of(v) < cost {
                return None;
            }
            // Written before the tokens of a lease, so these belong to the lease of `v` whenever
            // the CAS below succeeds.
            if now_ns >= hot.deadline_ns.load(Ordering::Acquire) {
                return None;
            }
            let window_id = hot.window_id.load(Ordering::Acquire);
            match hot.current.compare_exchange_weak(
                v,
                v - cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((generation_of(v), WindowId(window_id))),
                Err(actual) => v = actual,
            }
        }
    }

    /// Gives `cost` back to lease `generation` if it is still current.
    fn try_give_back(&self, generation: u32, cost: u64) -> bool {
        let hot = &self.hot;
        let mut v = hot.current.load(Ordering::Acquire);
        loop {
            if generation_of(v) != generation {
                return false;
            }
            let back = tokens_of(v).saturating_add(cost).min(MAX_LEASE_TOKENS);
            match hot.current.compare_exchange_weak(
                v,
                pack(generation, back),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => v = actual,
            }
        }
    }

    /// Closes the current lease: swaps its tokens out of the hot path and returns them.
    fn close_current(&self, st: &mut SlotState, reason: CloseReason) {
        let Some(mut lease) = st.current.take() else {
            return;
        };
        st.generation = st.generation.wrapping_add(1) & GENERATION_MASK;
        let old = self
            .hot
            .current
            .swap(pack(st.generation, 0), Ordering::AcqRel);
        self.hot.deadline_ns.store(0, Ordering::Release);
        let left = tokens_of(old);
        lease.returned = lease.returned.saturating_add(left);
        st.returned_total = st.returned_total.saturating_add(left);
        lease.closed = Some(reason);
        st.closed.push(lease);
    }

    /// Makes the first queued lease current. The slot must have no current lease.
    fn promote(&self, st: &mut SlotState) -> bool {
        if st.current.is_some() || st.queue.is_empty() {
            return false;
        }
        let mut lease = st.queue.remove(0);
        st.generation = st.generation.wrapping_add(1) & GENERATION_MASK;
        lease.generation = Some(st.generation);
        self.hot
            .deadline_ns
            .store(lease.deadline_ns, Ordering::Release);
        self.hot
            .window_id
            .store(lease.window_id.0, Ordering::Release);
        self.hot
            .current
            .store(pack(st.generation, lease.spendable), Ordering::Release);
        st.current = Some(lease);
        true
    }

    /// Closes every lease past its deadline and makes the next one current.
    fn sweep(&self, st: &mut SlotState, now_ns: u64) {
        if let Some(reason) = st
            .current
            .as_ref()
            .filter(|l| l.deadline_ns <= now_ns)
            .map(Lease::expiry_reason)
        {
            self.close_current(st, reason);
        }
        let mut i = 0;
        while i < st.queue.len() {
            if st.queue[i].deadline_ns <= now_ns {
                let mut lease = st.queue.remove(i);
                let reason = lease.expiry_reason();
                close_unused(st, &mut lease, reason);
                st.closed.push(lease);
            } else {
                i += 1;
            }
        }
        if st.current.is_some()
            && !st.queue.is_empty()
            && tokens_of(self.hot.current.load(Ordering::Acquire)) == 0
        {
            self.close_current(st, CloseReason::Drained);
        }
        self.promote(st);
    }

    /// Tokens of live leases: the current one's count plus the queued ones.
    fn live(&self, st: &SlotState) -> u64 {
        let current = if st.current.is_some() {
            tokens_of(self.hot.current.load(Ordering::Acquire))
        } else {
            0
        };
        st.queue
            .iter()
            .fold(current, |sum, l| sum.saturating_add(l.spendable))
    }

    /// Updates the spend-rate estimate from the tokens spent since the last sample.
    fn sample_rate(&self, st: &mut SlotState, now_ns: u64, time_constant: Duration) {
        let spent = st
            .installed_total
            .saturating_sub(st.returned_total)
            .saturating_sub(self.live(st));
        let Some((at, before)) = st.sample else {
            st.sample = Some((now_ns, spent));
            return;
        };
        let dt_ns = now_ns.saturating_sub(at);
        if dt_ns < 1_000_000 {
            return;
        }
        let delta = spent.saturating_sub(before);
        if delta > 0 {
            st.last_active_ns = now_ns;
        }
        let dt = dt_ns as f64 / 1e9;
        let instant_rate = delta as f64 / dt;
        let alpha = 1.0 - (-dt / time_constant.as_secs_f64().max(1e-3)).exp();
        st.rate += alpha * (instant_rate - st.rate);
        st.sample = Some((now_ns, spent));
    }
}

/// Closes a lease that was never current: all its tokens are returned.
fn close_unused(st: &mut SlotState, lease: &mut Lease, reason: CloseReason) {
    let left = lease.installed.saturating_sub(lease.returned);
    lease.returned = lease.installed;
    st.returned_total = st.returned_total.saturating_add(left);
    lease.closed = Some(reason);
}

type SlotMap = HashMap<Arc<str>, [Option<SlotHandle>; 4]>;

#[derive(Default)]
struct MapShard {
    map: ArcSwap<SlotMap>,
    write: Mutex<()>,
}

/// One limit for [`LeasePool::reserve_slots`]: an interned slot, its `max` and the call's cost.
#[derive(Debug, Clone, Copy)]
pub struct SlotLimit<'a> {
    /// The slot.
    pub slot: &'a SlotHandle,
    /// Tokens allowed per window (a cost above it never fits).
    pub max: u64,
    /// Tokens this call takes.
    pub cost: u64,
}

/// The gateway's lease token pool. See the [module docs](self).
pub struct LeasePool<C: Clock = SystemClock> {
    shards: Box<[MapShard]>,
    clock: C,
    epoch: Instant,
    config: PoolConfig,
    /// Smoothed round trip in ns; 0 until the first sample.
    round_trip_ns: AtomicU64,
    lost_returns: AtomicU64,
    issuer: u64,
}

impl LeasePool<SystemClock> {
    /// A pool on the system clock.
    pub fn new(config: PoolConfig) -> Self {
        Self::with_clock(SystemClock, config)
    }
}

impl<C: Clock> LeasePool<C> {
    /// A pool reading time from `clock`.
    pub fn with_clock(clock: C, config: PoolConfig) -> Self {
        Self {
            shards: (0..MAP_SHARDS).map(|_| MapShard::default()).collect(),
            epoch: clock.now_instant(),
            clock,
            config,
            round_trip_ns: AtomicU64::new(0),
            lost_returns: AtomicU64::new(0),
            issuer: next_issuer(),
        }
    }

    /// The clock this pool reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The slot of `key` and `window`, created on first use (allocates only then).
    pub fn slot(&self, key: &str, window: Window) -> SlotHandle {
        if let Some(slot) = self.find(key, window) {
            return slot;
        }
        let shard = &self.shards[shard_of(key)];
        let _write = shard.write.lock();
        let mut map = SlotMap::clone(&shard.map.load());
        let key_arc: Arc<str> = match map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        let slots = map.entry(key_arc.clone()).or_default();
        if let Some(slot) = &slots[window.index()] {
            return slot.clone();
        }
        let slot = SlotHandle(Arc::new(Slot {
            key: key_arc,
            window,
            hot: Hot {
                current: AtomicU64::new(0),
                deadline_ns: AtomicU64::new(0),
                window_id: AtomicU64::new(0),
                max: AtomicU64::new(0),
            },
            state: Mutex::new(SlotState::default()),
        }));
        slots[window.index()] = Some(slot.clone());
        shard.map.store(Arc::new(map));
        slot
    }

    /// The slot of `key` and `window` if it exists. Lock-free; does not allocate.
    pub fn find(&self, key: &str, window: Window) -> Option<SlotHandle> {
        self.shards[shard_of(key)]
            .map
            .load()
            .get(key)
            .and_then(|slots| slots[window.index()].clone())
    }

    /// Every slot, for the agent's sweeps.
    fn for_each_slot(&self, mut f: impl FnMut(&SlotHandle)) {
        for shard in self.shards.iter() {
            for slots in shard.map.load().values() {
                for slot in slots.iter().flatten() {
                    f(slot);
                }
            }
        }
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        let mut n = 0;
        self.for_each_slot(|_| n += 1);
        n
    }

    /// Nanoseconds since the pool's epoch (earlier instants read as 0).
    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The smoothed round trip to the leader, measured from lease answers
    /// ([`PoolConfig::default_round_trip`] before the first).
    pub fn round_trip(&self) -> Duration {
        match self.round_trip_ns.load(Ordering::Relaxed) {
            0 => self.config.default_round_trip,
            ns => Duration::from_nanos(ns),
        }
    }

    fn record_round_trip(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        // Like TCP's SRTT: new = old + (sample - old) / 8. Racing installs may lose a sample.
        let old = self.round_trip_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old - old / 8).saturating_add(sample / 8).max(1)
        };
        self.round_trip_ns.store(new, Ordering::Relaxed);
    }

    /// Tokens given back by rollbacks after their lease had been reported; they stayed counted
    /// as consumed.
    pub fn lost_returns(&self) -> u64 {
        self.lost_returns.load(Ordering::Relaxed)
    }

    /// Installs a lease the leader granted for `slot`. Also measures the round trip
    /// (`received_at - sent_at`) and answers the slot's outstanding demand.
    pub fn install(&self, slot: &SlotHandle, grant: LeaseGrant) -> Installed {
        self.record_round_trip(grant.received_at.saturating_duration_since(grant.sent_at));
        let now_ns = self.ns(self.clock.now_instant());
        let now_ms = self.clock.now_unix_ms();
        let by_ttl = self
            .ns(grant.sent_at)
            .saturating_add(u64::try_from(grant.ttl.as_nanos()).unwrap_or(u64::MAX));
        let window_left_ms = slot.0.window.end_ms(grant.window_id).saturating_sub(now_ms);
        let by_window = now_ns.saturating_add(window_left_ms.saturating_mul(1_000_000));
        let spendable = grant.tokens.min(MAX_LEASE_TOKENS);
        let mut lease = Lease {
            id: grant.id,
            window_id: grant.window_id,
            installed: grant.tokens,
            spendable,
            deadline_ns: by_ttl.min(by_window),
            ends_with_window: by_window <= by_ttl,
            generation: None,
            // Beyond what the hot path can hold: returned at once.
            returned: grant.tokens - spendable,
            closed: None,
        };

        let s = &slot.0;
        let mut st = s.state.lock();
        st.installed_total = st.installed_total.saturating_add(grant.tokens);
        st.last_installed = grant.tokens;
        st.returned_total = st.returned_total.saturating_add(lease.returned);
        st.requested_at_ns = None;
        st.sync_wanted = st.sync_wanted.saturating_sub(grant.tokens);
        if st.exhausted == Some(grant.window_id) && grant.tokens > 0 {
            st.exhausted = None;
        }
        st.last_active_ns = now_ns;
        if lease.deadline_ns <= now_ns {
            let reason = lease.expiry_reason();
            close_unused(&mut st, &mut lease, reason);
            st.closed.push(lease);
            return Installed::Dead;
        }
        let id = lease.id;
        let at = st
            .queue
            .iter()
            .position(|l| l.window_id > lease.window_id)
            .unwrap_or(st.queue.len());
        st.queue.insert(at, lease);
        s.sweep(&mut st, now_ns);
        if st.current.as_ref().is_some_and(|l| l.id == id) {
            Installed::Current
        } else {
            Installed::Queued
        }
    }

    /// The leader answered that `window_id` of `slot` has no tokens left: until that window ends,
    /// a call that finds no lease is [`Exhausted`], not [`QuotaError::NeedsLease`].
    pub fn mark_exhausted(&self, slot: &SlotHandle, window_id: WindowId) {
        let mut st = slot.0.state.lock();
        st.exhausted = Some(window_id);
        st.requested_at_ns = None;
        st.sync_wanted = 0;
    }

    /// The leader did not answer a demand (stream broke, timeout): it may be asked again at once.
    pub fn request_failed(&self, slot: &SlotHandle) {
        slot.0.state.lock().requested_at_ns = None;
    }

    /// Sets how the leader wants `slot` run (exact mode, endgame).
    pub fn set_mode(&self, slot: &SlotHandle, mode: SlotMode) {
        slot.0.state.lock().mode = mode;
    }

    /// Counters of `slot` (sweeps expired leases first).
    pub fn stats(&self, slot: &SlotHandle) -> SlotStats {
        let now_ns = self.ns(self.clock.now_instant());
        let s = &slot.0;
        let mut st = s.state.lock();
        s.sweep(&mut st, now_ns);
        SlotStats {
            live: s.live(&st),
            leases: usize::from(st.current.is_some()) + st.queue.len(),
            installed: st.installed_total,
            returned: st.returned_total,
            rate: st.rate,
        }
    }

    /// Slots that should ask the leader for tokens now, and how many.
    ///
    /// A slot asks when its live tokens fall under `rate × round trip × 2`, for
    /// `max(1, rate × lease_horizon)` tokens (halved in endgame), or when calls were answered
    /// `NeedsLease` (`sync`, for at least what they need). In exact mode it asks only for the
    /// waiting calls. A slot whose window the leader declared spent, or whose last demand is
    /// still unanswered (within [`PoolConfig::request_timeout`]), does not ask. Also updates the
    /// spend-rate estimates, so call it on a regular tick.
    pub fn demands(&self, now: Instant) -> Vec<Demand> {
        let now_ns = self.ns(now);
        let now_ms = self.clock.now_unix_ms();
        let round_trip = self.round_trip().as_secs_f64();
        let horizon = self.config.lease_horizon.as_secs_f64();
        let timeout_ns = u64::try_from(self.config.request_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        self.for_each_slot(|slot| {
            let s = &slot.0;
            let mut st = s.state.lock();
            s.sweep(&mut st, now_ns);
            s.sample_rate(&mut st, now_ns, self.config.rate_time_constant);
            let window_id = s.window.id_at(now_ms);
            match st.exhausted {
                Some(w) if w >= window_id => return,
                Some(_) => st.exhausted = None,
                None => {}
            }
            if st
                .requested_at_ns
                .is_some_and(|at| now_ns.saturating_sub(at) < timeout_ns)
            {
                return;
            }
            let sync = st.sync_wanted > 0;
            let want = if st.mode.exact {
                if !sync {
                    return;
                }
                st.sync_wanted
            } else {
                // Ask ahead: when what is left would last less than two round trips at the
                // local rate, or once half of the latest lease is spent. The second matters:
                // a refill the leader cannot cut from memory waits for a Raft commit (several
                // ms), far longer than the lease round trip measured on a quiet stream, and a
                // lease of `rate × horizon` tokens leaves half a horizon to cover it.
                // Only for a slot whose spend rate fills at least one token per horizon: a slot
                // gone quiet (its rate estimate decays) whose lease ran out or expired waits for
                // a call before it asks again.
                let busy = st.rate * horizon >= 1.0;
                let half = if busy {
                    st.last_installed as f64 / 2.0
                } else {
                    0.0
                };
                let ahead = (st.rate * round_trip * 2.0).max(half);
                // Less than one token's worth ahead is a slot gone quiet: no refill.
                let low = ahead >= 1.0 && (s.live(&st) as f64) < ahead;
                if !low && !sync {
                    return;
                }
                let mut want = ((st.rate * horizon).ceil() as u64).max(1);
                if st.mode.endgame {
                    want = (want / 2).max(1);
                }
                want.max(st.sync_wanted)
            };
            st.requested_at_ns = Some(now_ns);
            out.push(Demand {
                slot: slot.clone(),
                window_id,
                want,
                max: s.hot.max.load(Ordering::Relaxed),
                sync,
            });
        });
        out
    }

    /// Reports of every lease closed since the last call (each lease exactly once). Closes the
    /// leases that expired or whose window ended first.
    pub fn take_reports(&self) -> Vec<LeaseReport> {
        let now_ns = self.ns(self.clock.now_instant());
        let mut out = Vec::new();
        self.for_each_slot(|slot| {
            let s = &slot.0;
            let mut st = s.state.lock();
            s.sweep(&mut st, now_ns);
            out.extend(st.closed.drain(..).map(|l| l.report(slot)));
        });
        out
    }

    /// Closes every lease of the slots that spent nothing for `idle_for`, so their unused tokens
    /// go back to the leader with the next reports. Returns how many leases it closed.
    pub fn return_idle(&self, now: Instant, idle_for: Duration) -> usize {
        let now_ns = self.ns(now);
        let idle_ns = u64::try_from(idle_for.as_nanos()).unwrap_or(u64::MAX);
        let mut closed = 0;
        self.for_each_slot(|slot| {
            let s = &slot.0;
            let mut st = s.state.lock();
            s.sweep(&mut st, now_ns);
            s.sample_rate(&mut st, now_ns, self.config.rate_time_constant);
            if now_ns.saturating_sub(st.last_active_ns) < idle_ns {
                return;
            }
            if st.current.is_some() {
                s.close_current(&mut st, CloseReason::Idle);
                closed += 1;
            }
            for mut lease in std::mem::take(&mut st.queue) {
                close_unused(&mut st, &mut lease, CloseReason::Idle);
                st.closed.push(lease);
                closed += 1;
            }
            st.rate = 0.0;
            // Idle: ask again only when a call needs it, not to refill the last lease.
            st.last_installed = 0;
        });
        closed
    }

    /// Reserves on interned slots, all or nothing (see [`Quota::try_reserve`]).
    pub fn reserve_slots(&self, limits: &[SlotLimit<'_>]) -> Result<Reservation, QuotaError> {
        let now_ns = self.ns(self.clock.now_instant());
        let mut entries = Entries::new();
        for (index, l) in limits.iter().enumerate() {
            match self.take(index, l.slot, l.max, l.cost, now_ns) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    self.give_back_all(&entries);
                    return Err(e);
                }
            }
        }
        Ok(Reservation {
            issuer: self.issuer,
            entries,
        })
    }

    /// Takes one limit: the hot path, else rotation under the slot lock, else a miss.
    fn take(
        &self,
        index: usize,
        slot: &SlotHandle,
        max: u64,
        cost: u64,
        now_ns: u64,
    ) -> Result<ReservedLimit, QuotaError> {
        let s = &slot.0;
        let entry = |generation, window_id| ReservedLimit {
            origin: Origin::Lease {
                slot: slot.clone(),
                generation,
            },
            window: s.window,
            window_id,
            cost,
        };
        if cost == 0 {
            let now_ms = self.clock.now_unix_ms();
            return Ok(entry(None, s.window.id_at(now_ms)));
        }
        if cost > max || cost > MAX_LEASE_TOKENS {
            return Err(self.exhausted(index, s.window).into());
        }
        let known = s.hot.max.load(Ordering::Relaxed);
        if known != max {
            s.set_max(known, max);
        }
        if let Some((generation, window_id)) = s.try_take(cost, now_ns) {
            return Ok(entry(Some(generation), window_id));
        }
        // Miss: rotate to a queued lease if the current one cannot serve the call.
        let mut st = s.state.lock();
        s.sweep(&mut st, now_ns);
        loop {
            if let Some((generation, window_id)) = s.try_take(cost, now_ns) {
                return Ok(entry(Some(generation), window_id));
            }
            if st.queue.is_empty() {
                break;
            }
            let reason = if s.spendable_now() == 0 {
                CloseReason::Drained
            } else {
                CloseReason::Superseded
            };
            s.close_current(&mut st, reason);
            s.promote(&mut st);
        }
        let now_ms = self.clock.now_unix_ms();
        if st.exhausted == Some(s.window.id_at(now_ms)) {
            return Err(self.exhausted(index, s.window).into());
        }
        st.sync_wanted = st.sync_wanted.saturating_add(cost);
        Err(QuotaError::NeedsLease { index })
    }

    fn exhausted(&self, index: usize, window: Window) -> Exhausted {
        let now_ms = self.clock.now_unix_ms();
        let end = window.end_ms(window.id_at(now_ms));
        Exhausted {
            index,
            retry_after: Duration::from_millis(end.saturating_sub(now_ms)),
        }
    }

    fn give_back_all(&self, entries: &[ReservedLimit]) {
        for entry in entries.iter().rev() {
            let Origin::Lease {
                slot,
                generation: Some(generation),
            } = &entry.origin
            else {
                continue;
            };
            self.give_back(slot, *generation, entry.cost);
        }
    }

    /// Returns `cost` tokens to lease `generation` of `slot`: into the hot path while it is
    /// current, into its pending report once closed, else they stay consumed.
    fn give_back(&self, slot: &SlotHandle, generation: u32, cost: u64) {
        let s = &slot.0;
        if s.try_give_back(generation, cost) {
            return;
        }
        let mut st = s.state.lock();
        // The generation only changes under this lock: check again now that we hold it.
        if s.try_give_back(generation, cost) {
            return;
        }
        if let Some(lease) = st
            .closed
            .iter_mut()
            .find(|l| l.generation == Some(generation))
        {
            let back = cost.min(lease.installed.saturating_sub(lease.returned));
            lease.returned += back;
            st.returned_total = st.returned_total.saturating_add(back);
        } else {
            self.lost_returns.fetch_add(cost, Ordering::Relaxed);
        }
    }
}

impl Slot {
    fn spendable_now(&self) -> u64 {
        tokens_of(self.hot.current.load(Ordering::Acquire))
    }
}

/// FNV-1a, to pick a map shard; the shard's map hashes again with its own seeded hasher.
fn shard_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 60) as usize % MAP_SHARDS
}

impl<C: Clock> Quota for LeasePool<C> {
    /// Fails closed: a limit without tokens is [`Exhausted`] with a zero wait. Use
    /// [`Quota::try_reserve`] to learn that a lease is needed.
    fn reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, Exhausted> {
        self.try_reserve(limits).map_err(QuotaError::into_exhausted)
    }

    fn try_reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, QuotaError> {
        let now_ns = self.ns(self.clock.now_instant());
        let mut entries = Entries::new();
        for (index, spec) in limits.iter().enumerate() {
            let map = self.shards[shard_of(spec.key)].map.load();
            let found = map
                .get(spec.key)
                .and_then(|slots| slots[spec.window.index()].as_ref());
            let taken = match found {
                Some(slot) => self.take(index, slot, spec.max, spec.cost, now_ns),
                None => {
                    drop(map);
                    // First sight of this key: intern it, so that its miss becomes a demand.
                    let slot = self.slot(spec.key, spec.window);
                    self.take(index, &slot, spec.max, spec.cost, now_ns)
                }
            };
            match taken {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    self.give_back_all(&entries);
                    return Err(e);
                }
            }
        }
        Ok(Reservation {
            issuer: self.issuer,
            entries,
        })
    }

    fn commit(&self, reservation: Reservation) {
        // The tokens are already spent from their leases; they show as consumed in the reports.
        drop(reservation);
    }

    fn rollback(&self, reservation: Reservation) {
        if reservation.issuer != self.issuer {
            return;
        }
        self.give_back_all(&reservation.entries);
    }
}

impl<C: Clock + fmt::Debug> fmt::Debug for LeasePool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasePool")
            .field("slots", &self.slot_count())
            .field("round_trip", &self.round_trip())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
