//! The [`Quota`] interface and the values that cross it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use crate::pool::SlotHandle;
use crate::window::{Window, WindowId};

static NEXT_ISSUER: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a quota, so that it can recognise the reservations it issued.
pub(crate) fn next_issuer() -> u64 {
    NEXT_ISSUER.fetch_add(1, Ordering::Relaxed)
}

/// Limits per reservation kept inline (no heap allocation): the seed's calls carry two.
pub(crate) const INLINE_ENTRIES: usize = 2;

/// The entries of a reservation, inline up to [`INLINE_ENTRIES`].
pub(crate) type Entries = SmallVec<[ReservedLimit; INLINE_ENTRIES]>;

/// One limit a call must fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec<'a> {
    /// Full counter key built by the gateway, e.g. `"grant:<id>/run-rerun_rate"`. Two specs with the
    /// same key and window share one count.
    pub key: &'a str,
    /// The fixed window the count resets in.
    pub window: Window,
    /// Tokens allowed per window.
    pub max: u64,
    /// Tokens this call takes: normally 1; 0 is allowed (always fits); more than `max` never fits.
    pub cost: u64,
}

impl<'a> LimitSpec<'a> {
    /// A limit of `max` per `window` on `key`, costing one token.
    pub fn new(key: &'a str, window: Window, max: u64) -> Self {
        Self {
            key,
            window,
            max,
            cost: 1,
        }
    }

    /// The same limit with another cost.
    pub fn with_cost(self, cost: u64) -> Self {
        Self { cost, ..self }
    }
}

/// Exact rate limits: reserve all or nothing, then commit or roll back.
///
/// Implementations must never admit more than `max` tokens per (key, window) in total, whatever the
/// concurrency.
///
/// # Two ways to reserve
///
/// [`Quota::reserve`] answers yes or no. That is all an implementation that holds its whole budget
/// can say ([`LocalQuota`](crate::LocalQuota)). An implementation that holds only part of the
/// budget (the [`LeasePool`](crate::LeasePool), which spends leases cut by the quota leader) has a
/// third answer: "I hold no tokens for this limit right now, but the leader may still have some".
/// [`Quota::try_reserve`] carries it as [`QuotaError::NeedsLease`]; the caller asks the leader
/// synchronously (one round trip) and calls `try_reserve` again. Through plain `reserve` the same
/// case fails closed as [`Exhausted`] with a zero `retry_after`, so a caller that never learnt
/// about leases stays exact (it under-admits, never over-admits). `try_reserve` has a default that
/// maps `reserve`'s answer, so existing implementations need not change.
pub trait Quota: Send + Sync {
    /// Reserve every limit atomically: either all are taken or none is.
    ///
    /// On failure, [`Exhausted::index`] names the first limit (in slice order) that had no room.
    fn reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, Exhausted>;

    /// Like [`Quota::reserve`], but tells "exhausted" apart from "ask the quota leader first"
    /// ([`QuotaError::NeedsLease`]). Nothing is taken on any error.
    fn try_reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, QuotaError> {
        self.reserve(limits).map_err(QuotaError::Exhausted)
    }

    /// The call went through: keep what was reserved.
    fn commit(&self, reservation: Reservation);

    /// The upstream answered with a JSON-RPC error (or the call never left): give every token back,
    /// to the window it was taken from, even if that window has ended since.
    fn rollback(&self, reservation: Reservation);
}

impl<Q: Quota + ?Sized> Quota for Arc<Q> {
    fn reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, Exhausted> {
        (**self).reserve(limits)
    }
    fn try_reserve(&self, limits: &[LimitSpec<'_>]) -> Result<Reservation, QuotaError> {
        (**self).try_reserve(limits)
    }
    fn commit(&self, reservation: Reservation) {
        (**self).commit(reservation);
    }
    fn rollback(&self, reservation: Reservation) {
        (**self).rollback(reservation);
    }
}

/// A reservation was refused because one limit had no room. Nothing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit {index} is exhausted, retry after {}s", self.retry_after_secs())]
pub struct Exhausted {
    /// Index, in the slice given to [`Quota::reserve`], of the limit that was full.
    pub index: usize,
    /// Time until the full window ends (millisecond precision). A cost above `max` never fits; it
    /// still reports the end of the current window.
    pub retry_after: Duration,
}

impl Exhausted {
    /// [`Exhausted::retry_after`] rounded up to whole seconds and at least 1, as told to clients.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        };
        rounded.max(1)
    }
}

/// Why [`Quota::try_reserve`] took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// A limit has no room left in its window; deny the call.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// The node holds no tokens for a limit and does not know that its window is spent: ask the
    /// quota leader for a lease (synchronously, one round trip) and try again. In exact mode every
    /// call takes this path.
    #[error("limit {index} needs a lease from the quota leader")]
    NeedsLease {
        /// Index, in the slice given to [`Quota::try_reserve`], of the limit without tokens.
        index: usize,
    },
}

impl QuotaError {
    /// Index of the limit the error is about.
    pub fn index(&self) -> usize {
        match self {
            QuotaError::Exhausted(e) => e.index,
            QuotaError::NeedsLease { index } => *index,
        }
    }

    /// The answer plain [`Quota::reserve`] gives: a missing lease fails closed, with no wait.
    pub fn into_exhausted(self) -> Exhausted {
        match self {
            QuotaError::Exhausted(e) => e,
            QuotaError::NeedsLease { index } => Exhausted {
                index,
                retry_after: Duration::ZERO,
            },
        }
    }
}

/// Tokens taken by a successful [`Quota::reserve`], to be settled with [`Quota::commit`] or
/// [`Quota::rollback`] on the quota that issued it.
///
/// Dropping a reservation without settling it counts as spent: when the fate of a call is unknown,
/// its tokens stay consumed ("unknown means spent"), which can under-admit but never over-admit.
#[must_use = "settle a reservation with commit or rollback; dropping it counts as spent"]
#[derive(Debug)]
pub struct Reservation {
    pub(crate) issuer: u64,
    pub(crate) entries: Entries,
}

impl Reservation {
    /// What was reserved, one entry per limit, in the order given to `reserve`.
    pub fn limits(&self) -> &[ReservedLimit] {
        &self.entries
    }
}

/// One limit inside a [`Reservation`]: the window it was counted in and the tokens taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLimit {
    pub(crate) origin: Origin,
    pub(crate) window: Window,
    pub(crate) window_id: WindowId,
    pub(crate) cost: u64,
}

/// Where the tokens of a [`ReservedLimit`] came from, so they can be given back there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A [`LocalQuota`](crate::LocalQuota) counter.
    Local { key: Arc<str>, shard: usize },
    /// A lease of a [`LeasePool`](crate::LeasePool) slot; `generation` names the lease that was
    /// current in the slot when the tokens were taken. `None` for a zero cost (nothing taken).
    Lease {
        slot: SlotHandle,
        generation: Option<u32>,
    },
}

impl ReservedLimit {
    /// The counter key.
    pub fn key(&self) -> &str {
        match &self.origin {
            Origin::Local { key, .. } => key,
            Origin::Lease { slot, .. } => slot.key(),
        }
    }
    /// The window kind.
    pub fn window(&self) -> Window {
        self.window
    }
    /// The window the tokens were counted in.
    pub fn window_id(&self) -> WindowId {
        self.window_id
    }
    /// Tokens taken.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_never_below_one() {
        let secs = |ms| {
            Exhausted {
                index: 0,
                retry_after: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1), 1);
        assert_eq!(secs(1_000), 1);
        assert_eq!(secs(1_001), 2);
        assert_eq!(secs(22_500), 23);
    }

    #[test]
    fn exhausted_message_names_the_limit_and_the_wait() {
        let e = Exhausted {
            index: 1,
            retry_after: Duration::from_millis(22_500),
        };
        assert_eq!(e.to_string(), "limit 1 is exhausted, retry after 23s");
    }
}
