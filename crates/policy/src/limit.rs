//! Rate limits a permitted call must reserve.
//!
//! The quota key of a limit is `(scope key, counter, window)`: two tools that name the same counter
//! with the same window and scope share one count. A call reserves every limit of its
//! [`LimitSet`] atomically (that is the quota crate's job); this crate only says which.

use std::fmt;

/// One counter that must have room for a call to go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Counter name as written in the policy (non-empty).
    pub counter: String,
    /// Fixed window, aligned to UTC boundaries.
    pub window: Window,
    /// Calls allowed per window, at least 1.
    pub max: u64,
    /// Who shares the count.
    pub scope: Scope,
    /// What a call does when the cluster's limit service cannot be reached and the gateway holds
    /// no tokens for this limit (version 2; version 1 always fails closed).
    pub on_unavailable: OnUnavailable,
    /// JSON pointer naming the limit by counter, e.g. `/tools/run-rerun/limits/run-rerun_rate` or
    /// `/all_tools/limits/<counter>` (the counter is escaped as a pointer token).
    pub rule_id: String,
}

/// Length of a fixed limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// 1 second (version 2; meant for tests and bursts).
    Second,
    /// 60 seconds.
    Minute,
    /// 3600 seconds.
    Hour,
    /// 86400 seconds.
    Day,
}

impl Window {
    /// Length of the window in seconds.
    pub fn seconds(&self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// The name used in policy documents: `"second"`, `"minute"`, `"hour"` or `"day"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "second" => Some(Window::Second),
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            _ => None,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who shares a counter. Version 1 only knows `grant`: one count per grant token, shared by
/// everyone using it. Version 2 adds `session`, `server` and `global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// One counter per grant, cluster-wide.
    Grant,
    /// One counter per MCP session, kept by the gateway node serving the session.
    Session,
    /// One counter per upstream server, shared by every grant, cluster-wide.
    Server,
    /// One counter per counter name, shared by every grant and server, cluster-wide.
    Global,
}

impl Scope {
    /// The name used in policy documents.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Server => "server",
            Scope::Global => "global",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "grant" => Some(Scope::Grant),
            "session" => Some(Scope::Session),
            "server" => Some(Scope::Server),
            "global" => Some(Scope::Global),
            _ => None,
        }
    }
}

/// What a limited call does when the gateway holds no tokens for the limit and cannot reach the
/// cluster's limit service (the quota leader) in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnUnavailable {
    /// Refuse the call with an `isError` result saying the limit service is unavailable
    /// (`"fail_closed"`, the default): the limit is never exceeded.
    #[default]
    FailClosed,
    /// Admit the call if the gateway's own count for the window, kept while the service is
    /// unreachable, is under `max` (`"fail_open"`). Bound: each gateway cut off admits at most
    /// `max` calls per window on its own, on top of what the cluster admits.
    FailOpen,
}

impl OnUnavailable {
    /// The name used in policy documents.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnUnavailable::FailClosed => "fail_closed",
            OnUnavailable::FailOpen => "fail_open",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "fail_closed" => Some(OnUnavailable::FailClosed),
            "fail_open" => Some(OnUnavailable::FailOpen),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits an allowed call must reserve: `all_tools.limits` first, then the tool's own limits.
/// Borrows from the [`crate::Policy`]; building one never allocates.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitSet<'p> {
    all_tools: &'p [Limit],
    tool: &'p [Limit],
}

impl<'p> LimitSet<'p> {
    pub(crate) fn new(all_tools: &'p [Limit], tool: &'p [Limit]) -> Self {
        Self { all_tools, tool }
    }

    /// Every limit, `all_tools` ones first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'p Limit> + DoubleEndedIterator + 'p {
        // Chain is not ExactSizeIterator; the two slices are small, so index through them.
        let (a, t) = (self.all_tools, self.tool);
        (0..a.len() + t.len()).map(move |i| if i < a.len() { &a[i] } else { &t[i - a.len()] })
    }

    /// Limits from `all_tools.limits`.
    pub fn all_tools(&self) -> &'p [Limit] {
        self.all_tools
    }

    /// Limits of the tool's own rules.
    pub fn tool(&self) -> &'p [Limit] {
        self.tool
    }

    /// Number of limits.
    pub fn len(&self) -> usize {
        self.all_tools.len() + self.tool.len()
    }

    /// True when the call reserves nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'p> IntoIterator for LimitSet<'p> {
    type Item = &'p Limit;
    type IntoIter = std::iter::Chain<std::slice::Iter<'p, Limit>, std::slice::Iter<'p, Limit>>;
    fn into_iter(self) -> Self::IntoIter {
        self.all_tools.iter().chain(self.tool.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(counter: &str) -> Limit {
        Limit {
            counter: counter.into(),
            window: Window::Minute,
            max: 1,
            scope: Scope::Grant,
            on_unavailable: OnUnavailable::FailClosed,
            rule_id: format!("/x/{counter}"),
        }
    }

    #[test]
    fn windows_have_their_lengths_and_names() {
        assert_eq!(
            (Window::Minute.seconds(), Window::Minute.as_str()),
            (60, "minute")
        );
        assert_eq!(
            (Window::Hour.seconds(), Window::Hour.as_str()),
            (3600, "hour")
        );
        assert_eq!(
            (Window::Day.seconds(), Window::Day.as_str()),
            (86400, "day")
        );
        for w in [Window::Minute, Window::Hour, Window::Day] {
            assert_eq!(Window::parse(w.as_str()), Some(w));
        }
        assert_eq!(Window::parse("second"), Some(Window::Second));
        assert_eq!(Window::parse("week"), None);
    }

    #[test]
    fn limit_sets_list_all_tools_limits_before_the_tools_own() {
        let all = [limit("a"), limit("b")];
        let own = [limit("c")];
        let set = LimitSet::new(&all, &own);
        let names: Vec<&str> = set.iter().map(|l| l.counter.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let names: Vec<&str> = set.into_iter().map(|l| l.counter.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(set.iter().len(), 3);
        assert_eq!(
            set.iter().next_back().map(|l| l.counter.as_str()),
            Some("c")
        );
        assert!(!set.is_empty());
        assert!(LimitSet::default().is_empty());
    }
}
