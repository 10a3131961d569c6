//! Fixed windows aligned to UTC boundaries.
//!
//! A window of length `L` seconds with index `n` covers the unix time range
//! `[n * L, (n + 1) * L)` in milliseconds. Because unix time has no leap seconds and the epoch is a
//! UTC midnight, minute, hour and day windows start exactly at the UTC minute, hour and midnight.

use std::fmt;

/// Length of a fixed rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// One second.
    Second,
    /// One minute, starting at second 0 of a UTC minute.
    Minute,
    /// One hour, starting at minute 0 of a UTC hour.
    Hour,
    /// One day, starting at UTC midnight.
    Day,
}

/// Index of a window since the unix epoch (`unix_ms / window length in ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowId(pub u64);

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 4] = [Window::Second, Window::Minute, Window::Hour, Window::Day];

    /// Length of the window in seconds.
    pub fn seconds(&self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// Length of the window in milliseconds.
    pub fn millis(&self) -> u64 {
        self.seconds() * 1_000
    }

    /// The window that contains the instant `unix_ms`.
    pub fn id_at(&self, unix_ms: u64) -> WindowId {
        WindowId(unix_ms / self.millis())
    }

    /// First millisecond of window `id`.
    pub fn start_ms(&self, id: WindowId) -> u64 {
        id.0.saturating_mul(self.millis())
    }

    /// First millisecond after window `id`: the window ends at (and excludes) this instant.
    pub fn end_ms(&self, id: WindowId) -> u64 {
        id.0.saturating_add(1).saturating_mul(self.millis())
    }

    /// Lowercase name, as written in policies (`"minute"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Dense index, used to keep one counter slot per window kind.
    pub(crate) fn index(&self) -> usize {
        match self {
            Window::Second => 0,
            Window::Minute => 1,
            Window::Hour => 2,
            Window::Day => 3,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2024-03-10T00:00:00Z, a UTC midnight.
    const MIDNIGHT_MS: u64 = 1_710_028_800_000;

    #[test]
    fn a_window_ends_exactly_at_its_end_ms() {
        for w in Window::ALL {
            let id = w.id_at(MIDNIGHT_MS + 5);
            let end = w.end_ms(id);
            assert_eq!(w.id_at(end - 1), id, "{w}: last ms belongs to the window");
            assert_eq!(
                w.id_at(end),
                WindowId(id.0 + 1),
                "{w}: end ms opens the next window"
            );
            assert_eq!(w.start_ms(WindowId(id.0 + 1)), end);
            assert_eq!(end - w.start_ms(id), w.millis());
        }
    }

    #[test]
    fn minute_hour_and_day_windows_start_at_utc_midnight() {
        for w in Window::ALL {
            let id = w.id_at(MIDNIGHT_MS);
            assert_eq!(w.start_ms(id), MIDNIGHT_MS, "{w} starts at midnight");
            assert_eq!(
                w.id_at(MIDNIGHT_MS - 1).0 + 1,
                id.0,
                "{w}: the ms before midnight is in the previous window"
            );
        }
        // 2024-03-10T13:47:21.500Z
        let t = MIDNIGHT_MS + (13 * 3600 + 47 * 60 + 21) * 1000 + 500;
        assert_eq!(
            Window::Minute.start_ms(Window::Minute.id_at(t)),
            MIDNIGHT_MS + (13 * 3600 + 47 * 60) * 1000
        );
        assert_eq!(
            Window::Hour.start_ms(Window::Hour.id_at(t)),
            MIDNIGHT_MS + 13 * 3600 * 1000
        );
        assert_eq!(Window::Day.start_ms(Window::Day.id_at(t)), MIDNIGHT_MS);
        assert_eq!(
            Window::Day.id_at(t),
            WindowId(19_792),
            "days since 1970-01-01"
        );
    }

    #[test]
    fn window_lengths_and_names_match() {
        let got: Vec<_> = Window::ALL
            .iter()
            .map(|w| (w.as_str(), w.seconds()))
            .collect();
        assert_eq!(
            got,
            [
                ("second", 1),
                ("minute", 60),
                ("hour", 3600),
                ("day", 86_400)
            ]
        );
    }

    proptest! {
        #[test]
        fn every_instant_lies_inside_its_window(t in 0u64..=4_102_444_800_000, w in prop::sample::select(Window::ALL.to_vec())) {
            let id = w.id_at(t);
            prop_assert!(w.start_ms(id) <= t);
            prop_assert!(t < w.end_ms(id));
            prop_assert_eq!(w.start_ms(id) % w.millis(), 0);
        }
    }
}
