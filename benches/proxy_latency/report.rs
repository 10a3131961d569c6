//! The figures of a run: rows per target and phase, the checks, and the targets; printed as
//! Markdown tables (for benches/README.md) or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Counts, Tally};
use crate::system::{CpuSample, Machine};

/// Added latency at one connection the project is heading for, p50, microseconds.
pub const TARGET_ADDED_P50_US: f64 = 60.0;
/// Added latency at one connection the project is heading for, p99, microseconds.
pub const TARGET_ADDED_P99_US: f64 = 250.0;
/// Proxied calls per second per gateway core the project is heading for.
pub const TARGET_CALLS_PER_CORE: f64 = 20_000.0;

/// One target in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `direct`, `allow-all`, `seed-shaped` or `seed`.
    pub target: String,
    /// How its answers were classified.
    pub answers: Counts,
    /// Calls per wall-clock second.
    pub calls_per_sec: f64,
    /// Latency percentiles and extremes, microseconds.
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// This target's percentile minus the direct one (gateway targets only).
    pub added_p50_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    /// This target's percentile over the direct one.
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    /// This target's calls/s over the direct one.
    pub ratio_calls_per_sec: Option<f64>,
    /// Gateway CPU per call, microseconds (gateway targets only).
    pub gateway_cpu_us_per_call: Option<f64>,
    /// Calls per second of gateway CPU: calls/s per gateway core.
    pub calls_per_gateway_core: Option<f64>,
    /// Upstream CPU per call, microseconds (when this run started the upstream).
    pub upstream_cpu_us_per_call: Option<f64>,
    /// Load-generator CPU per call, microseconds.
    pub load_cpu_us_per_call: f64,
}

impl Row {
    /// The row of `target` from what was recorded; `gateway` says whether calls went through it.
    pub fn new(
        target: &str,
        tally: &Tally,
        cpu: &CpuSample,
        gateway: bool,
        upstream: bool,
    ) -> Self {
        let calls = tally.calls().max(1) as f64;
        let per_call = |seconds: f64| seconds * 1e6 / calls;
        Self {
            target: target.to_owned(),
            answers: tally.counts(),
            calls_per_sec: tally.calls() as f64 / tally.wall_secs.max(f64::EPSILON),
            mean_us: tally.histogram.mean() / 1000.0,
            p50_us: tally.micros_at(0.50),
            p90_us: tally.micros_at(0.90),
            p99_us: tally.micros_at(0.99),
            p999_us: tally.micros_at(0.999),
            max_us: tally.histogram.max() as f64 / 1000.0,
            added_p50_us: None,
            added_p99_us: None,
            ratio_p50: None,
            ratio_p99: None,
            ratio_calls_per_sec: None,
            gateway_cpu_us_per_call: gateway.then(|| per_call(cpu.gateway)),
            calls_per_gateway_core: (gateway && cpu.gateway > 0.0)
                .then(|| tally.calls() as f64 / cpu.gateway),
            upstream_cpu_us_per_call: upstream.then(|| per_call(cpu.upstream)),
            load_cpu_us_per_call: per_call(cpu.load),
        }
    }

    /// Fills the columns that compare this row with the direct one.
    pub fn compare_with(&mut self, direct: &Row) {
        self.added_p50_us = Some(self.p50_us - direct.p50_us);
        self.added_p99_us = Some(self.p99_us - direct.p99_us);
        self.ratio_p50 = Some(self.p50_us / direct.p50_us.max(f64::EPSILON));
        self.ratio_p99 = Some(self.p99_us / direct.p99_us.max(f64::EPSILON));
        self.ratio_calls_per_sec =
            Some(self.calls_per_sec / direct.calls_per_sec.max(f64::EPSILON));
    }
}

/// A check that the gateway did the work it was timed for.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// The evidence.
    pub detail: String,
}

/// The settings a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub upstream: String,
    pub latency_blocks: u32,
    pub latency_block_secs: f64,
    pub connections: usize,
    pub throughput_blocks: u32,
    pub throughput_block_secs: f64,
    pub warmup_calls: u64,
    pub seed_shaped_max: u64,
    pub audit: bool,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC date and time of the run.
    pub date: String,
    pub machine: Machine,
    pub settings: Settings,
    /// One connection, calls one after another.
    pub latency: Vec<Row>,
    /// `settings.connections` connections in parallel.
    pub throughput: Vec<Row>,
    pub checks: Vec<Check>,
    /// Sample answers (the first of each kind per target), for the eye.
    pub samples: Vec<(String, String)>,
}

impl Report {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.ok)
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(out, "# proxy-latency, {}", self.date);
        let _ = writeln!(
            out,
            "\nMachine: {} cores, {}, Linux {}; load average at start: {}.",
            m.cores, m.cpu_model, m.kernel, m.load_at_start
        );
        let _ = writeln!(
            out,
            "Upstream: {}. Every process shares these cores: load generator (1 thread), \
             upstream, gateway.",
            s.upstream
        );
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\n## Latency: 1 connection, sequential ({} blocks x {} s per target, interleaved)\n",
                s.latency_blocks, s.latency_block_secs
            );
            let _ = writeln!(
                out,
                "| target | answers | calls/s | p50 us | p90 us | p99 us | p99.9 us | max us | added p50 us | added p99 us | x p50 | x p99 | gateway CPU us/call |"
            );
            let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            for r in &self.latency {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} | {} |",
                    r.target,
                    answers(&r.answers),
                    r.calls_per_sec,
                    r.p50_us,
                    r.p90_us,
                    r.p99_us,
                    r.p999_us,
                    r.max_us,
                    opt(r.added_p50_us, 1),
                    opt(r.added_p99_us, 1),
                    opt(r.ratio_p50, 2),
                    opt(r.ratio_p99, 2),
                    opt(r.gateway_cpu_us_per_call, 1),
                );
            }
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(
                out,
                "\n## Throughput: {} connections, closed loop ({} blocks x {} s per target, interleaved)\n",
                s.connections, s.throughput_blocks, s.throughput_block_secs
            );
            let _ = writeln!(
                out,
                "| target | answers | calls/s | x direct | p50 us | p99 us | p99.9 us | gateway CPU us/call | calls/s per gateway core | upstream CPU us/call | load CPU us/call |"
            );
            let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            for r in &self.throughput {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} |",
                    r.target,
                    answers(&r.answers),
                    r.calls_per_sec,
                    opt(r.ratio_calls_per_sec, 2),
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    opt(r.gateway_cpu_us_per_call, 1),
                    opt(r.calls_per_gateway_core, 0),
                    opt(r.upstream_cpu_us_per_call, 1),
                    r.load_cpu_us_per_call,
                );
            }
        }
        let _ = writeln!(out, "\n## Against the targets\n");
        for line in self.target_lines() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n## Checks\n");
        for check in &self.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "- {mark} {}: {}", check.what, check.detail);
        }
        let _ = writeln!(out, "\n## Sample answers\n");
        for (target, sample) in &self.samples {
            let _ = writeln!(out, "- {target}: `{sample}`");
        }
        out
    }

    fn target_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for r in &self.latency {
            if let (Some(p50), Some(p99)) = (r.added_p50_us, r.added_p99_us) {
                lines.push(format!(
                    "{}: added p50 {:.1} us (target <= {TARGET_ADDED_P50_US}: {}), added p99 {:.1} us (target <= {TARGET_ADDED_P99_US}: {})",
                    r.target,
                    p50,
                    verdict(p50 <= TARGET_ADDED_P50_US),
                    p99,
                    verdict(p99 <= TARGET_ADDED_P99_US),
                ));
            }
        }
        for r in &self.throughput {
            if let Some(per_core) = r.calls_per_gateway_core {
                lines.push(format!(
                    "{}: {:.0} calls/s per gateway core (target >= {TARGET_CALLS_PER_CORE}: {})",
                    r.target,
                    per_core,
                    verdict(per_core >= TARGET_CALLS_PER_CORE),
                ));
            }
        }
        lines
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn answers(counts: &Counts) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (counts.upstream_results, "result"),
        (counts.rate_limited, "rate_limited"),
        (counts.denied, "denied"),
        (counts.other, "OTHER"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn row(target: &str, p50: f64, p99: f64, calls_per_sec: f64) -> Row {
        let tally = Tally::new().unwrap();
        let mut row = Row::new(target, &tally, &CpuSample::default(), true, true);
        row.p50_us = p50;
        row.p99_us = p99;
        row.calls_per_sec = calls_per_sec;
        row
    }

    #[test]
    fn added_latency_and_ratios_are_taken_against_the_direct_row() {
        let direct = row("direct", 20.0, 50.0, 40_000.0);
        let mut gateway = row("allow-all", 80.0, 300.0, 10_000.0);
        gateway.compare_with(&direct);
        assert_eq!(gateway.added_p50_us, Some(60.0));
        assert_eq!(gateway.added_p99_us, Some(250.0));
        assert_eq!(gateway.ratio_p50, Some(4.0));
        assert_eq!(gateway.ratio_p99, Some(6.0));
        assert_eq!(gateway.ratio_calls_per_sec, Some(0.25));
    }

    #[test]
    fn answers_name_every_kind_seen() {
        let counts = Counts {
            calls: 12,
            upstream_results: 10,
            rate_limited: 2,
            denied: 0,
            other: 0,
        };
        assert_eq!(answers(&counts), "10 result, 2 rate_limited");
    }

    #[test]
    fn a_gateway_row_reports_calls_per_second_of_gateway_cpu() {
        let tally = Tally::new().unwrap();
        let cpu = CpuSample {
            gateway: 0.0,
            upstream: 0.0,
            load: 0.0,
        };
        assert_eq!(
            Row::new("seed", &tally, &cpu, true, false).calls_per_gateway_core,
            None
        );
        assert_eq!(
            Row::new("direct", &tally, &cpu, false, true).gateway_cpu_us_per_call,
            None
        );
    }
}
