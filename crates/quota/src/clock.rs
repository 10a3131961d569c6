//! Injected time. The quota core never reads the system clock itself, so tests drive windows by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in unix milliseconds, and of monotonic instants.
///
/// Windows are wall-clock ([`Clock::now_unix_ms`]); lease lifetimes are measured on the monotonic
/// clock ([`Clock::now_instant`]) so that a wall-clock step cannot stretch them.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_unix_ms(&self) -> u64;

    /// The monotonic time. Defaults to [`Instant::now`].
    fn now_instant(&self) -> Instant {
        Instant::now()
    }
}

/// The operating system's wall clock. A time before the epoch reads as 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test keeps one clone and
/// hands the other to the quota.
///
/// Its monotonic instant is the real [`Instant`] taken at creation plus how far the wall time has
/// been moved past its starting value (never less than that starting instant).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
    start_ms: u64,
    start: Instant,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(0)
    }
}

impl ManualClock {
    /// A clock reading `unix_ms`.
    pub fn new(unix_ms: u64) -> Self {
        Self {
            now_ms: Arc::new(AtomicU64::new(unix_ms)),
            start_ms: unix_ms,
            start: Instant::now(),
        }
    }

    /// Sets the time (it may go backwards).
    pub fn set(&self, unix_ms: u64) {
        self.now_ms.store(unix_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` (saturating, millisecond precision).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn now_instant(&self) -> Instant {
        self.start + Duration::from_millis(self.now_unix_ms().saturating_sub(self.start_ms))
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now_unix_ms(&self) -> u64 {
        (**self).now_unix_ms()
    }

    fn now_instant(&self) -> Instant {
        (**self).now_instant()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_their_time() {
        let a = ManualClock::new(1_000);
        let b = a.clone();
        a.advance(Duration::from_millis(250));
        assert_eq!(b.now_unix_ms(), 1_250);
        b.set(10);
        assert_eq!(a.now_unix_ms(), 10);
    }

    #[test]
    fn manual_clock_instant_moves_with_its_wall_time() {
        let a = ManualClock::new(1_000);
        let t0 = a.now_instant();
        a.advance(Duration::from_millis(250));
        assert_eq!(a.now_instant() - t0, Duration::from_millis(250));
        a.set(0);
        assert_eq!(a.now_instant(), t0, "never before its starting instant");
    }

    #[test]
    fn system_clock_reads_a_time_after_2020() {
        assert!(SystemClock.now_unix_ms() > 1_577_836_800_000);
    }
}
