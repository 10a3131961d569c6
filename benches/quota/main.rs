//! `quota-bench`: exact global rate limits (QUOTA.md, issue 4) measured side by side in one run.
//!
//! ```text
//!   quota-bench (one process, one 2-worker tokio runtime)
//!     ├─ ControlNode x1, then x3 (real Raft on loopback, QuotaService on the API port)
//!     │     ▲ QuotaService.Session (one stream per gateway, follows the leader)
//!     ├─ QuotaAgent + LeasePool per gateway ◀── load: acquire / try_reserve
//!     └─ redis-server (child process, loopback) ◀── INCRBY+EXPIRE pipelines
//! ```
//!
//! 1. **Lease round trip**: `QuotaAgent::acquire` on a 1-node and a 3-node cluster: with a lease
//!    in the pool (a hit), with an empty pool while the leader's chunk has tokens (before each
//!    sample the pool hands its leases back), and on a new key (the leader commits a chunk grant
//!    through Raft before cutting the lease).
//! 2. **No network wait at steady load**: G gateways offer 80 % of a limit together, paced open
//!    loop; a call counts as decided without a wait when its `acquire` finished on the first
//!    poll.
//! 3. **Admitted at 1.2x**: the same at 120 %; admitted per full window / max, and the overshoot
//!    (admitted above max in any window, which must be 0: the run fails otherwise).
//! 4. **Counter operations through Raft**: T tasks per gateway call `try_reserve` in a closed
//!    loop against an unreachable limit; calls per second against Raft entries per second (the
//!    leader's `last_log_index`).
//! 5. **Redis baseline**: the same number of tasks, each a connection doing one INCRBY+EXPIRE
//!    pipeline per call against a real `redis-server` (`scripts/install-redis.sh`); skipped, with
//!    the way to install it, when there is none.

mod cluster;
mod load;
mod redis;
mod report;
#[allow(dead_code)]
#[path = "../proxy_latency/system.rs"]
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate_quota::Window;

use crate::cluster::{Cluster, Gateway, Tuning};
use crate::load::{PacedLoad, RoundTripSamples};
use crate::report::{Report, Skipped};

#[derive(Parser)]
#[command(
    name = "quota-bench",
    about = "Lease round trip, no-wait share, admitted at 1.2x, counter operations through Raft \
             and a Redis baseline, on in-process control clusters"
)]
struct Cli {
    /// Hit samples of the round-trip phase.
    #[arg(long, default_value_t = 100_000)]
    hits: u64,
    /// Miss samples (chunk on the leader) of the round-trip phase.
    #[arg(long, default_value_t = 2_000)]
    misses: u64,
    /// New-key samples (chunk grant through Raft) of the round-trip phase.
    #[arg(long, default_value_t = 300)]
    new_keys: u64,
    /// Gateways (agents) of phases 2-4.
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// The limit of phases 2 and 3, per `--window`.
    #[arg(long, default_value_t = 20_000)]
    limit: u64,
    /// The window of phases 2 and 3: second or minute.
    #[arg(long, default_value = "second", value_parser = parse_window)]
    window: Window,
    /// The window of phase 2 (its limit is `--limit` scaled to the same rate). Minute by
    /// default: the steady-state share is about leases, and a per-second window adds a lease
    /// round trip at every window start (a lease never outlives its window).
    #[arg(long, default_value = "minute", value_parser = parse_window)]
    steady_window: Window,
    /// Offered load of phase 2, as a fraction of the limit.
    #[arg(long, default_value_t = 0.8)]
    steady_load: f64,
    /// Offered load of phase 3, as a fraction of the limit.
    #[arg(long, default_value_t = 1.2)]
    overload: f64,
    /// Seconds of each paced phase.
    #[arg(long, default_value_t = 6.0)]
    paced_secs: f64,
    /// Closed-loop tasks per gateway in phase 4; phase 5 uses as many connections in total.
    #[arg(long, default_value_t = 8)]
    tasks: usize,
    /// Seconds measured in phases 4 and 5 (after the warm-up).
    #[arg(long, default_value_t = 4.0)]
    throughput_secs: f64,
    /// Seconds of warm-up before phases 4 and 5 are counted.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Phase 4 times one call in this many.
    #[arg(long, default_value_t = 16)]
    sample_every: u64,
    /// Diagnosis: the agents' batching tick in microseconds (default: QuotaAgentOptions's).
    #[arg(long)]
    agent_tick_us: Option<u64>,
    /// Diagnosis: the pools' lease horizon in milliseconds (default: PoolConfig's).
    #[arg(long)]
    lease_horizon_ms: Option<u64>,
    /// The redis-server binary (default: $TOLLGATE_REDIS_SERVER, .tools/redis, then PATH).
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

fn parse_window(text: &str) -> Result<Window, String> {
    match text {
        "second" => Ok(Window::Second),
        "minute" => Ok(Window::Minute),
        other => Err(format!("unknown window {other} (second or minute)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.gateways == 0 || cli.tasks == 0 || cli.limit == 0 || cli.sample_every == 0 {
        eprintln!("quota-bench: --gateways, --tasks, --limit and --sample-every must be positive");
        return ExitCode::from(64);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quota-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(run(&cli)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("quota-bench: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("quota-bench: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.markdown());
    }
    if report.exact() {
        ExitCode::SUCCESS
    } else {
        eprintln!("quota-bench: OVERSHOOT: a window admitted more than its limit");
        ExitCode::FAILURE
    }
}

fn progress(message: &str) {
    eprintln!("quota-bench: {message}");
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command =
        "CARGO_INCREMENTAL=0 cargo run --release -p tollgate-benches --bin quota-bench".to_owned();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let machine = system::Machine::describe();
    let samples = RoundTripSamples {
        hits: cli.hits,
        misses: cli.misses,
        new_keys: cli.new_keys,
    };
    let tuning = Tuning {
        agent_tick: cli.agent_tick_us.map(Duration::from_micros),
        lease_horizon: cli.lease_horizon_ms.map(Duration::from_millis),
    };
    let mut round_trips = Vec::new();

    progress("--- 1-node cluster: lease round trip");
    let single = Cluster::start(1).await?;
    let result = load::round_trip(&single, 1, samples, tuning).await;
    single.shutdown().await;
    round_trips.push(result?);

    progress("--- 3-node cluster: lease round trip");
    let cluster = Cluster::start(3).await?;
    let measured = async {
        round_trips.push(load::round_trip(&cluster, 3, samples, tuning).await?);
        progress(&format!("--- {} gateways", cli.gateways));
        let gateways = Gateway::start_many(&cluster, cli.gateways, tuning).await?;
        let result = async {
            let paced = |key, load: f64, window: Window| PacedLoad {
                key,
                window,
                max: cli.limit * window.seconds() / cli.window.seconds(),
                offered_per_sec: cli.limit as f64 * load / cli.window.seconds() as f64,
                secs: cli.paced_secs,
            };
            progress(&format!("--- paced at {:.1}x the limit", cli.steady_load));
            let steady = load::paced(
                &cluster,
                &gateways,
                paced("steady", cli.steady_load, cli.steady_window),
            )
            .await?;
            progress(&format!("--- paced at {:.1}x the limit", cli.overload));
            let overload = load::paced(
                &cluster,
                &gateways,
                paced("overload", cli.overload, cli.window),
            )
            .await?;
            progress("--- closed loop: counter operations through Raft");
            let tollgate = load::throughput(
                &cluster,
                &gateways,
                cli.tasks,
                Duration::from_secs_f64(cli.warmup_secs),
                cli.throughput_secs,
                cli.sample_every,
            )
            .await?;
            anyhow::Ok((steady, overload, tollgate))
        }
        .await;
        for gateway in gateways {
            gateway.shutdown().await;
        }
        result
    }
    .await;
    cluster.shutdown().await;
    let (steady, overload, tollgate) = measured?;

    let mut skipped = Vec::new();
    let redis = match redis::find(cli.redis_server.as_deref()) {
        Some(binary) => {
            let measured = async {
                let server = redis::Server::start(&binary).await?;
                progress(&format!(
                    "--- Redis baseline: {} (pid {}, port {})",
                    binary.display(),
                    server.pid().unwrap_or(0),
                    server.port
                ));
                let result = redis::throughput(
                    &server,
                    cli.gateways * cli.tasks,
                    Duration::from_secs_f64(cli.warmup_secs),
                    cli.throughput_secs,
                )
                .await;
                server.stop().await;
                result
            }
            .await;
            match measured {
                Ok(row) => Some(row),
                Err(error) => {
                    // The Tollgate figures stand on their own: report the failure, keep them.
                    let why = format!("{error:#}");
                    progress(&format!("Redis baseline failed: {why}"));
                    skipped.push(Skipped {
                        what: "Redis baseline".to_owned(),
                        why,
                    });
                    None
                }
            }
        }
        None => {
            let why = "redis-server not found: run scripts/install-redis.sh (or pass \
                       --redis-server PATH, or set TOLLGATE_REDIS_SERVER)";
            progress(why);
            skipped.push(Skipped {
                what: "Redis baseline".to_owned(),
                why: why.to_owned(),
            });
            None
        }
    };
    Ok(Report {
        machine,
        command: command_line(),
        round_trips,
        gateways: cli.gateways,
        steady,
        overload,
        tollgate,
        redis,
        skipped,
    })
}
