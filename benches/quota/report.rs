//! The figures of one `quota-bench` run: a summary table against QUOTA.md's targets, then one
//! table per phase, as Markdown or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use tollgate_quota::{Window, WindowId};

use crate::system::Machine;

/// Latency percentiles in microseconds (from a histogram of nanoseconds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            count: histogram.len(),
            p50_us: us(histogram.value_at_quantile(0.5)),
            p90_us: us(histogram.value_at_quantile(0.9)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// Phase 1 on one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    pub nodes: u64,
    /// `acquire` with a lease in the pool.
    pub hit: Latency,
    /// Hit samples whose lease ran dry so that they waited (left out of `hit`).
    pub hits_that_waited: u64,
    /// `acquire` with an empty pool; the leader's chunk covers the demand.
    pub miss: Latency,
    /// `acquire` on a new key: a chunk grant is committed through Raft first.
    pub new_key: Latency,
    /// Samples (of any case) that got no lease within the agent's acquire timeout.
    pub timeouts: u64,
}

/// Phases 2 and 3: paced load against one limit.
#[derive(Debug, Clone, Serialize)]
pub struct Paced {
    /// Offered load as a multiple of the limit.
    pub load: f64,
    pub max: u64,
    pub window: &'static str,
    pub offered: u64,
    /// Calls whose `acquire` finished on its first poll (no network wait).
    pub no_wait: u64,
    /// Calls that awaited a lease.
    pub waited: u64,
    /// Of `waited`, those that began in the first 20 ms of their window.
    pub waited_at_window_start: u64,
    /// `no_wait / (no_wait + waited)`.
    pub no_wait_share: f64,
    /// The same after the phase's first second (the pools' rate estimate warming up on a new
    /// key): the steady-state figure.
    pub steady_no_wait: u64,
    pub steady_waited: u64,
    pub steady_no_wait_share: f64,
    pub admitted: u64,
    pub denied: u64,
    pub unavailable: u64,
    /// Windows wholly inside the phase.
    pub full_windows: usize,
    /// Admitted / max over the full windows.
    pub admitted_ratio_min: f64,
    pub admitted_ratio_mean: f64,
    /// The largest `admitted - max` over every window touched (0 when exact).
    pub overshoot: u64,
    /// Admitted per window id.
    pub per_window: BTreeMap<u64, u64>,
    pub raft_entries_per_sec: f64,
    /// How long the calls that waited took.
    pub wait: Option<Latency>,
    /// Leases the gateways installed during the phase.
    pub leases_installed: u64,
    /// `acquire` calls that asked the leader synchronously (one call may ask more than once).
    pub sync_demands: u64,
}

impl Paced {
    /// Summarises what the callers counted; `span_ms` is the phase's (start, end) in unix ms.
    #[allow(clippy::too_many_arguments)]
    pub fn summarise(
        load: f64,
        max: u64,
        window: Window,
        offered: u64,
        no_wait: u64,
        waited: u64,
        waited_at_window_start: u64,
        denied: u64,
        unavailable: u64,
        per_window: &BTreeMap<u64, u64>,
        span_ms: (u64, u64),
        raft_entries_per_sec: f64,
    ) -> Self {
        let (start_ms, end_ms) = span_ms;
        let full: Vec<f64> = per_window
            .iter()
            .filter(|(id, _)| {
                window.start_ms(WindowId(**id)) >= start_ms
                    && window.end_ms(WindowId(**id)) <= end_ms
            })
            .map(|(_, admitted)| *admitted as f64 / max.max(1) as f64)
            .collect();
        let decided = no_wait + waited;
        Self {
            load,
            max,
            window: window.as_str(),
            offered,
            no_wait,
            waited,
            waited_at_window_start,
            no_wait_share: if decided == 0 {
                0.0
            } else {
                no_wait as f64 / decided as f64
            },
            // Set by the caller, which knows when the first second ended.
            steady_no_wait: no_wait,
            steady_waited: waited,
            steady_no_wait_share: if decided == 0 {
                0.0
            } else {
                no_wait as f64 / decided as f64
            },
            admitted: per_window.values().sum(),
            denied,
            unavailable,
            full_windows: full.len(),
            admitted_ratio_min: full.iter().copied().fold(f64::NAN, f64::min),
            admitted_ratio_mean: if full.is_empty() {
                f64::NAN
            } else {
                full.iter().sum::<f64>() / full.len() as f64
            },
            overshoot: per_window
                .values()
                .map(|admitted| admitted.saturating_sub(max))
                .max()
                .unwrap_or(0),
            per_window: per_window.clone(),
            raft_entries_per_sec,
            wait: None,
            leases_installed: 0,
            sync_demands: 0,
        }
    }
}

/// Phases 4 and 5: closed-loop calls against an unreachable limit.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub system: String,
    pub tasks: usize,
    pub calls: u64,
    pub calls_per_sec: f64,
    /// Calls that awaited the network (Tollgate: a lease; Redis: every call).
    pub waited: u64,
    /// Per-call decision time.
    pub latency: Latency,
    /// Raft log entries written per second on the leader (Tollgate only).
    pub raft_entries_per_sec: Option<f64>,
}

/// A row that was not measured, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub round_trips: Vec<RoundTrip>,
    pub gateways: usize,
    pub steady: Paced,
    pub overload: Paced,
    pub tollgate: Throughput,
    pub redis: Option<Throughput>,
    pub skipped: Vec<Skipped>,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

impl Report {
    /// Whether every exactness check passed (overshoot is a failure of the run, not a figure).
    pub fn exact(&self) -> bool {
        self.steady.overshoot == 0 && self.overload.overshoot == 0
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "# quota-bench\n\n{} cores (`{}`), Linux {}, load average at start {}; everything \
             (control nodes, gateway agents, load, Redis) on this machine, loopback.\n\n\
             `{}`\n",
            m.cores, m.cpu_model, m.kernel, m.load_at_start, self.command
        );
        self.summary(&mut out);
        self.round_trip_table(&mut out);
        self.paced_table(&mut out);
        self.throughput_table(&mut out);
        for s in &self.skipped {
            let _ = writeln!(out, "\nSkipped: {}: {}", s.what, s.why);
        }
        out
    }

    fn summary(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "## Against the targets (QUOTA.md)\n\n| # | figure | measured | target | verdict |\n\
             |--:|---|--:|--:|---|"
        );
        for rt in &self.round_trips {
            let _ = writeln!(
                out,
                "| 1 | lease round trip p50 / p99, {} node(s), chunk on the leader | {:.0} / {:.0} \
                 us | p50 <= 200 us | {} |",
                rt.nodes,
                rt.miss.p50_us,
                rt.miss.p99_us,
                verdict(rt.miss.p50_us <= 200.0)
            );
            let _ = writeln!(
                out,
                "| 1 | acquire on a hit p50 / p99, {} node(s) | {:.2} / {:.2} us | p99 <= 2 us | \
                 {} |",
                rt.nodes,
                rt.hit.p50_us,
                rt.hit.p99_us,
                verdict(rt.hit.p99_us <= 2.0)
            );
        }
        let s = &self.steady;
        let _ = writeln!(
            out,
            "| 2 | decided with no network wait at {:.0} % of the limit, after the first second \
             (all calls: {:.3} %) | {:.3} % ({} of {}) | >= 99.9 % | {} |",
            s.load * 100.0,
            s.no_wait_share * 100.0,
            s.steady_no_wait_share * 100.0,
            s.steady_no_wait,
            s.steady_no_wait + s.steady_waited,
            verdict(s.steady_no_wait_share >= 0.999)
        );
        let o = &self.overload;
        let _ = writeln!(
            out,
            "| 3 | admitted per full window / max at {:.1}x, min (mean) | {:.2} % ({:.2} %) over \
             {} windows | >= 98 % | {} |",
            o.load,
            o.admitted_ratio_min * 100.0,
            o.admitted_ratio_mean * 100.0,
            o.full_windows,
            verdict(o.full_windows > 0 && o.admitted_ratio_min >= 0.98)
        );
        let _ = writeln!(
            out,
            "| 3 | overshoot (largest admitted - max in any window, both phases) | {} | 0 | {} |",
            s.overshoot.max(o.overshoot),
            verdict(self.exact())
        );
        let t = &self.tollgate;
        let entries = t.raft_entries_per_sec.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| 4 | counter operations through Raft / Raft entries | {:.0}/s / {:.0}/s | >= 200k/s \
             with <= 2k/s | {} |",
            t.calls_per_sec,
            entries,
            verdict(t.calls_per_sec >= 200_000.0 && entries <= 2_000.0)
        );
        match &self.redis {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "| 5 | Redis INCRBY+EXPIRE (pipelined), same tasks: calls/s, p50 / p99 | \
                     {:.0}/s, {:.1} / {:.1} us | (baseline; Tollgate: {:.0}/s, {:.2} / {:.2} us) \
                     | - |",
                    r.calls_per_sec,
                    r.latency.p50_us,
                    r.latency.p99_us,
                    t.calls_per_sec,
                    t.latency.p50_us,
                    t.latency.p99_us
                );
            }
            None => {
                let _ = writeln!(out, "| 5 | Redis baseline | skipped | - | - |");
            }
        }
    }

    fn round_trip_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## 1. Lease round trip (QuotaAgent::acquire, one gateway)\n\n\
             | cluster | case | samples | p50 us | p90 us | p99 us | p99.9 us | max us |\n\
             |--:|---|--:|--:|--:|--:|--:|--:|"
        );
        for rt in &self.round_trips {
            for (case, l) in [
                ("hit (lease in the pool)", &rt.hit),
                ("miss, chunk on the leader (no Raft write)", &rt.miss),
                ("miss, new key (chunk grant through Raft)", &rt.new_key),
            ] {
                let _ = writeln!(
                    out,
                    "| {} node(s) | {case} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    rt.nodes, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
                );
            }
            if rt.timeouts > 0 {
                let _ = writeln!(
                    out,
                    "| {} node(s) | samples with no lease within the acquire timeout (left out) \
                     | {} | | | | | |",
                    rt.nodes, rt.timeouts
                );
            }
            if rt.hits_that_waited > 0 {
                let _ = writeln!(
                    out,
                    "| {} node(s) | hit samples that found the lease dry and waited (left out) \
                     | {} | | | | | |",
                    rt.nodes, rt.hits_that_waited
                );
            }
        }
    }

    fn paced_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## 2-3. Paced load, {} gateways on a 3-node cluster (open loop, 1 ms pacing)\n\n\
             | offered | limit | calls | no wait | waited | waited in a window's first 20 ms | \
             no-wait share | admitted | denied | unavailable | full windows | admitted/max min | \
             mean | overshoot | Raft entries/s |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
            self.gateways
        );
        for p in [&self.steady, &self.overload] {
            let _ = writeln!(
                out,
                "| {:.1}x | {} per {} | {} | {} | {} | {} | {:.3} % | {} | {} | {} | {} | {:.2} % \
                 | {:.2} % | {} | {:.0} |",
                p.load,
                p.max,
                p.window,
                p.offered,
                p.no_wait,
                p.waited,
                p.waited_at_window_start,
                p.no_wait_share * 100.0,
                p.admitted,
                p.denied,
                p.unavailable,
                p.full_windows,
                p.admitted_ratio_min * 100.0,
                p.admitted_ratio_mean * 100.0,
                p.overshoot,
                p.raft_entries_per_sec
            );
        }
        let _ = writeln!(
            out,
            "\n| offered | leases installed | waited calls per lease | sync demands | wait p50 us \
             | wait p90 us | wait p99 us | wait max us |\n|---|--:|--:|--:|--:|--:|--:|--:|"
        );
        for p in [&self.steady, &self.overload] {
            let w = p.wait.unwrap_or(Latency {
                count: 0,
                p50_us: f64::NAN,
                p90_us: f64::NAN,
                p99_us: f64::NAN,
                p999_us: f64::NAN,
                max_us: f64::NAN,
            });
            let _ = writeln!(
                out,
                "| {:.1}x | {} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.load,
                p.leases_installed,
                p.waited as f64 / p.leases_installed.max(1) as f64,
                p.sync_demands,
                w.p50_us,
                w.p90_us,
                w.p99_us,
                w.max_us
            );
        }
        let windows = |p: &Paced| {
            p.per_window
                .values()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "\nAdmitted per window (first and last are partial): {:.1}x: {}; {:.1}x: {}",
            self.steady.load,
            windows(&self.steady),
            self.overload.load,
            windows(&self.overload)
        );
    }

    fn throughput_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## 4-5. Closed loop against an unreachable limit\n\n\
             | system | tasks | calls | calls/s | waited on the network | p50 us | p90 us | \
             p99 us | p99.9 us | Raft entries/s | calls per entry |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for t in std::iter::once(&self.tollgate).chain(self.redis.as_ref()) {
            let (entries, per_entry) = match t.raft_entries_per_sec {
                Some(e) => (format!("{e:.0}"), format!("{:.0}", t.calls_per_sec / e)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {entries} | \
                 {per_entry} |",
                t.system,
                t.tasks,
                t.calls,
                t.calls_per_sec,
                t.waited,
                t.latency.p50_us,
                t.latency.p90_us,
                t.latency.p99_us,
                t.latency.p999_us
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_windows_inside_the_phase_count_toward_the_admitted_ratio() {
        // Second windows 100..=103; the phase ran from 100.5 s to 103.5 s: 101 and 102 are full.
        let per_window = BTreeMap::from([(100, 40), (101, 98), (102, 100), (103, 10)]);
        let p = Paced::summarise(
            1.2,
            100,
            Window::Second,
            300,
            240,
            8,
            2,
            50,
            2,
            &per_window,
            (100_500, 103_500),
            10.0,
        );
        assert_eq!(p.full_windows, 2);
        assert!((p.admitted_ratio_min - 0.98).abs() < 1e-9);
        assert!((p.admitted_ratio_mean - 0.99).abs() < 1e-9);
        assert_eq!(p.admitted, 248);
        assert_eq!(p.overshoot, 0);
        assert!((p.no_wait_share - 240.0 / 248.0).abs() < 1e-9);
    }

    #[test]
    fn a_window_over_its_limit_is_reported_as_overshoot_even_when_partial() {
        let per_window = BTreeMap::from([(100, 103), (101, 100)]);
        let p = Paced::summarise(
            1.2,
            100,
            Window::Second,
            203,
            203,
            0,
            0,
            0,
            0,
            &per_window,
            (100_500, 101_900),
            0.0,
        );
        assert_eq!(p.overshoot, 3);
        assert_eq!(p.full_windows, 0);
        assert!(p.admitted_ratio_min.is_nan());
    }
}
