//! Which protocol era an upstream serves, learned by asking it.
//!
//! The gateway never advertises an era its upstream cannot serve. Before it forwards the first
//! modern (2026-07-28) request to an upstream it sends its own `server/discover`; a result listing
//! a modern version means the upstream is modern-capable. Anything else (a -32601, a 400 "Server
//! not initialized", a timeout) means legacy-only, and modern clients get the legacy fallback
//! signal from the gateway itself. The answer is cached for [`PROBE_TTL`]; a failed probe is
//! retried sooner.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a probe's answer is trusted.
pub const PROBE_TTL: Duration = Duration::from_secs(60);
/// How long an inconclusive probe (upstream down) is trusted.
pub const FAILED_PROBE_TTL: Duration = Duration::from_secs(2);

/// What a probe found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModernSupport {
    /// `server/discover` answered with a modern version.
    Yes,
    /// The upstream answered, but not as a modern server.
    No,
    /// The upstream could not be asked (down, timeout): do not conclude, answer per request.
    Unknown,
}

/// The cached modern-era probe of one upstream.
#[derive(Default)]
pub struct EraProbe {
    state: Mutex<Option<(ModernSupport, Instant)>>,
}

impl EraProbe {
    /// The cached answer, if still fresh.
    pub fn cached(&self) -> Option<ModernSupport> {
        let state = self.state.lock();
        let (support, at) = (*state)?;
        let ttl = if support == ModernSupport::Unknown {
            FAILED_PROBE_TTL
        } else {
            PROBE_TTL
        };
        (at.elapsed() < ttl).then_some(support)
    }

    /// Records a probe's answer.
    pub fn store(&self, support: ModernSupport) {
        *self.state.lock() = Some((support, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_answer_is_cached() {
        let probe = EraProbe::default();
        assert_eq!(probe.cached(), None);
        probe.store(ModernSupport::No);
        assert_eq!(probe.cached(), Some(ModernSupport::No));
    }
}
