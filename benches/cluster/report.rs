//! The figures of one `cluster-bench` run, as Markdown or JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::system::Machine;

/// Latency percentiles in milliseconds (from a histogram of microseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1e3;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub writers: usize,
    pub writes: u64,
    pub writes_per_sec: f64,
    pub ack: Latency,
}

/// The failover rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// Kill to first acknowledged write, per round.
    pub rounds_ms: Vec<f64>,
    pub p50_ms: f64,
    pub max_ms: f64,
}

impl Failover {
    /// Summarises the rounds (the p50 of an even count is the lower middle).
    pub fn of(rounds_ms: Vec<f64>) -> Self {
        let mut sorted = rounds_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let p50_ms = sorted
            .get(sorted.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0);
        let max_ms = sorted.last().copied().unwrap_or(0.0);
        Self {
            rounds_ms,
            p50_ms,
            max_ms,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub controls: usize,
    pub gateways: usize,
    /// `PutPolicy` acknowledgement, then enforcement on every gateway.
    pub push: (Latency, Latency),
    pub throughput: Vec<Throughput>,
    pub failover: Failover,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "# cluster-bench\n\n{} control nodes, {} gateways; {} cores (`{}`), Linux {}, load \
             average at start {}\n",
            self.controls, self.gateways, m.cores, m.cpu_model, m.kernel, m.load_at_start
        );
        let (ack, visible) = &self.push;
        let _ = writeln!(
            out,
            "## Push -> enforcement on every gateway ({} pushes)\n\n\
             | measure | p50 ms | p90 ms | p99 ms | max ms |\n|---|--:|--:|--:|--:|",
            ack.count
        );
        for (name, l) in [
            ("PutPolicy acknowledged", ack),
            ("enforced on every gateway", visible),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
        let _ = writeln!(
            out,
            "\nTarget: visible everywhere <= 500 ms p99: **{}**.\n",
            verdict(visible.p99_ms <= 500.0)
        );
        let _ = writeln!(
            out,
            "## Raft write throughput (PutPolicy, closed loop)\n\n\
             | writers | writes | writes/s | ack p50 ms | ack p99 ms | ack max ms |\n\
             |--:|--:|--:|--:|--:|--:|"
        );
        for t in &self.throughput {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
                t.writers, t.writes, t.writes_per_sec, t.ack.p50_ms, t.ack.p99_ms, t.ack.max_ms
            );
        }
        let f = &self.failover;
        let rounds: Vec<String> = f.rounds_ms.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            out,
            "\n## Leader failover (kill -9 to the first acknowledged write)\n\n\
             | rounds ms | p50 ms | max ms |\n|---|--:|--:|\n| {} | {:.0} | {:.0} |\n\n\
             Target: failover <= 1 s: **{}**.",
            rounds.join(", "),
            f.p50_ms,
            f.max_ms,
            verdict(f.max_ms <= 1000.0)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failover_median_is_the_lower_middle_round() {
        let f = Failover::of(vec![900.0, 300.0, 700.0, 500.0]);
        assert_eq!(f.p50_ms, 500.0);
        assert_eq!(f.max_ms, 900.0);
        assert_eq!(Failover::of(Vec::new()).max_ms, 0.0);
    }
}
