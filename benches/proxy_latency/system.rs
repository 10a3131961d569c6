//! What the machine is, and how much CPU a process has used (from `/proc`).

use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context as _;
use serde::Serialize;

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores this process may use.
    pub cores: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started (the machine may be shared).
    pub load_at_start: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn describe() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned())
        };
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease"),
            load_at_start: read("/proc/loadavg"),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 if unknown).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// User plus system CPU time, in seconds, used so far by every thread of process `pid`
/// (`"self"` for this process).
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks())
        .with_context(|| format!("{path} has no utime/stime"))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so the fields are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds of several processes, read together.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// The gateway, when it runs.
    pub gateway: f64,
    /// The upstream, when this run started it.
    pub upstream: f64,
    /// This load generator.
    pub load: f64,
}

impl CpuSample {
    /// Reads the CPU time of the gateway and upstream (by PID, when known) and of this process.
    pub fn take(gateway: Option<u32>, upstream: Option<u32>) -> anyhow::Result<Self> {
        let of = |pid: Option<u32>| pid.map_or(Ok(0.0), |pid| cpu_seconds(&pid.to_string()));
        Ok(Self {
            gateway: of(gateway)?,
            upstream: of(upstream)?,
            load: cpu_seconds("self")?,
        })
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            gateway: self.gateway - earlier.gateway,
            upstream: self.upstream - earlier.upstream,
            load: self.load - earlier.load,
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Self) {
        self.gateway += other.gateway;
        self.upstream += other.upstream;
        self.load += other.load;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 935 0 0 0 250 31 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
    }

    #[test]
    fn this_process_cpu_time_grows_while_it_computes() {
        let before = cpu_seconds("self").unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds("self").unwrap() <= before {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no CPU time counted"
            );
            for _ in 0..100_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
        }
        std::hint::black_box(x);
    }

    #[test]
    fn the_machine_has_at_least_one_core() {
        assert!(Machine::describe().cores >= 1);
    }
}
