//! `proxy-latency`: a fast MCP upstream called directly and through Tollgate, side by side.
//!
//! Three kinds of process, so that none shares a runtime with another:
//!
//! ```text
//!   proxy-latency (this process: load generator, one current-thread runtime)
//!     ├─ direct ─────────────────────────────────────────▶ proxy-latency upstream  (fast upstream)
//!     └─ Bearer <grant> ─▶ tollgate serve --config DIR ──▶ (the same upstream)
//!                          grants: allow-all, seed-shaped, seed; audit file on
//! ```
//!
//! The phases, each over the four targets `direct`, `allow-all`, `seed-shaped` (the seed's
//! policy with its limit raised so that it never refuses: the limit path on allowed calls) and
//! `seed` (the seed's policy unchanged: ten calls a minute, then refusals):
//!
//! 1. warm-up: a fixed number of calls per target (the seed target calls `echo`, which its policy
//!    denies by default, so its ten allowed calls are left for the measured phase);
//! 2. latency: one connection per target, calls one after another, in short blocks that rotate
//!    over the targets so that drift on a shared machine hits every target alike;
//! 3. throughput: N connections per target in a closed loop, also in rotating blocks; the
//!    gateway's CPU time (`/proc/<pid>/stat`) is read around each block, giving calls per second
//!    of gateway CPU, that is calls/s per gateway core.
//!
//! Every answer is classified (upstream result, `rate_limited`, other refusal, anything else)
//! and checked, so a fast figure can never come from a gateway that skipped the work.

mod load;
mod processes;
mod report;
mod system;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::load::{CallShape, Conn, Endpoint, Tally};
use crate::processes::{
    ALLOW_ALL, GatewayProcess, GatewaySpec, Grant, SEED, SEED_SHAPED, SERVER, UpstreamProcess,
};
use crate::report::{Check, Report, Row, Settings};
use crate::system::{CpuSample, Machine};

/// The seed's policy in this repository.
const SEED_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/policies/seed.json"
);

/// The seed's limit: calls per minute per grant.
const SEED_MAX_PER_MINUTE: u64 = 10;

#[derive(Parser)]
#[command(
    name = "proxy-latency",
    about = "A fast MCP upstream called directly and through Tollgate, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Serve the fast upstream (the bench starts it by itself; this is for running it by hand).
    Upstream {
        /// Address to bind; prints `listening http://ADDR/mcp` once bound.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UpstreamKind {
    /// This crate's fast upstream (`proxy-latency upstream`).
    Fast,
    /// The testkit's conformance-shaped upstream in JSON mode (`tollgate-test-upstream --json`).
    Testkit,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum TargetKind {
    Direct,
    AllowAll,
    SeedShaped,
    Seed,
}

#[derive(Args)]
struct RunArgs {
    /// The `tollgate` binary; default: next to this executable (target/release/tollgate).
    #[arg(long)]
    tollgate: Option<PathBuf>,
    /// Run the gateway under this command, split on spaces (e.g. "valgrind --tool=callgrind").
    #[arg(long, default_value = "")]
    gateway_wrapper: String,
    /// Which upstream to start.
    #[arg(long, value_enum, default_value = "fast")]
    upstream: UpstreamKind,
    /// The seed's policy file.
    #[arg(long, default_value = SEED_POLICY)]
    seed_policy: PathBuf,
    /// The limit of the seed-shaped policy (per minute; high enough never to refuse).
    #[arg(long, default_value_t = 100_000_000)]
    seed_shaped_max: u64,
    /// The targets to drive, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,allow-all,seed-shaped,seed"
    )]
    targets: Vec<TargetKind>,
    /// Calls per target before measuring.
    #[arg(long, default_value_t = 300)]
    warmup_calls: u64,
    /// Latency phase: blocks per target (0 skips the phase).
    #[arg(long, default_value_t = 5)]
    blocks: u32,
    /// Latency phase: seconds per block.
    #[arg(long, default_value_t = 1.5)]
    block_secs: f64,
    /// Throughput phase: connections per target.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Throughput phase: blocks per target (0 skips the phase).
    #[arg(long, default_value_t = 2)]
    throughput_blocks: u32,
    /// Throughput phase: seconds per block.
    #[arg(long, default_value_t = 2.0)]
    throughput_block_secs: f64,
    /// Seconds to wait for the gateway's /readyz (raise it under valgrind).
    #[arg(long, default_value_t = 30.0)]
    ready_timeout_secs: f64,
    /// Leave the audit file off (diagnosis only: the audit is part of the real cost).
    #[arg(long)]
    no_audit: bool,
    /// Keep the temporary directory (configuration, audit file, gateway log) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

/// One thing the load generator calls.
struct Target {
    kind: TargetKind,
    name: &'static str,
    endpoint: Endpoint,
    /// Through the gateway, or straight to the upstream.
    gateway: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Sub::Upstream { listen }) => upstream::run(listen).map(|()| true),
        None => run(&cli.run),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("proxy-latency: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench; says whether every check held.
fn run(args: &RunArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    let report = runtime.block_on(bench(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.markdown());
    }
    Ok(report.passed())
}

fn progress(message: &str) {
    eprintln!("proxy-latency: {message}");
}

async fn bench(args: &RunArgs) -> anyhow::Result<Report> {
    let machine = Machine::describe();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned());
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin_dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let tollgate = args
        .tollgate
        .clone()
        .unwrap_or_else(|| bin_dir.join("tollgate"));
    anyhow::ensure!(
        tollgate.exists(),
        "{} not found: run `cargo build --release -p tollgate -p tollgate-benches` (or pass --tollgate)",
        tollgate.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;

    progress("starting the upstream");
    let (upstream, marker, upstream_name) = match args.upstream {
        UpstreamKind::Fast => {
            let mut command = Command::new(&exe);
            command.args(["upstream", "--listen", "127.0.0.1:0"]);
            (
                UpstreamProcess::start(command)?,
                upstream::UPSTREAM_MARKER,
                "proxy-latency upstream (hyper, 1 thread, JSON answers)",
            )
        }
        UpstreamKind::Testkit => {
            let mut command = Command::new(tollgate_testkit::test_upstream_bin()?);
            command.args(["--http", "127.0.0.1:0", "--json"]);
            (
                UpstreamProcess::start(command)?,
                r#""status":"queued""#,
                "tollgate-test-upstream --json (axum, multi-thread)",
            )
        }
    };
    progress(&format!("upstream at {}", upstream.url));

    let spec = GatewaySpec {
        tollgate,
        wrapper: args
            .gateway_wrapper
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        upstream_url: upstream.url.clone(),
        seed_policy: args.seed_policy.clone(),
        seed_shaped_max: args.seed_shaped_max,
        dir: dir.path().to_path_buf(),
        ready_timeout: Duration::from_secs_f64(args.ready_timeout_secs),
        audit: !args.no_audit,
    };
    progress("starting the gateway");
    let gateway = GatewayProcess::start(&spec).await?;
    progress(&format!(
        "gateway at {} (admin {}), pid {}",
        gateway.data,
        gateway.admin,
        gateway.pid()
    ));

    let result = measure(args, &upstream, &gateway, marker).await;
    let pre_stop = match &result {
        Ok(_) => Some((
            gateway.metric("tollgate_audit_dropped_total").await,
            gateway.metric("tollgate_requests_total").await,
        )),
        Err(_) => None,
    };
    let log = gateway.log.clone();
    let audit_path = gateway.audit.clone();
    let grace = Duration::from_secs_f64(args.ready_timeout_secs);
    let clean_exit = gateway.stop(grace).await;
    drop(upstream);
    let (latency, throughput, mut checks, samples, gateway_calls, seed_elapsed) =
        result.with_context(|| format!("gateway log:\n{}", processes::log_tail(&log)))?;

    checks.push(Check {
        what: "the gateway stopped cleanly on SIGTERM".to_owned(),
        ok: clean_exit,
        detail: format!("log: {} (kept with --keep-dir)", log.display()),
    });
    let audit_lines = std::fs::read_to_string(&audit_path)
        .map(|text| text.lines().count() as u64)
        .unwrap_or(0);
    if let Some((dropped, requests)) = pre_stop {
        let dropped = dropped.unwrap_or(f64::NAN);
        checks.push(Check {
            what: "every gateway call was audited".to_owned(),
            ok: args.no_audit || (audit_lines >= gateway_calls && dropped == 0.0),
            detail: format!(
                "{}{audit_lines} audit lines for {gateway_calls} calls through the gateway; \
                 tollgate_audit_dropped_total {dropped}; tollgate_requests_total {}",
                if args.no_audit {
                    "audit off (--no-audit); "
                } else {
                    ""
                },
                requests.map_or_else(|e| format!("unreadable: {e}"), |n| n.to_string())
            ),
        });
    }
    let seed_rows: Vec<&Row> = latency
        .iter()
        .chain(&throughput)
        .filter(|row| row.target == SEED.label)
        .collect();
    if !seed_rows.is_empty() {
        let allowed: u64 = seed_rows
            .iter()
            .map(|row| row.answers.upstream_results)
            .sum();
        let windows = 1 + (seed_elapsed / 60.0).ceil() as u64;
        checks.push(Check {
            what: "the seed's limit held (10 per minute per grant)".to_owned(),
            ok: allowed <= SEED_MAX_PER_MINUTE * windows,
            detail: format!(
                "{allowed} seed calls reached the upstream in {seed_elapsed:.0} s \
                 (at most {windows} minute windows)"
            ),
        });
    }
    if args.keep_dir {
        let kept = dir.keep();
        progress(&format!("kept {}", kept.display()));
    }

    Ok(Report {
        date,
        machine,
        settings: Settings {
            upstream: upstream_name.to_owned(),
            latency_blocks: args.blocks,
            latency_block_secs: args.block_secs,
            connections: args.connections,
            throughput_blocks: args.throughput_blocks,
            throughput_block_secs: args.throughput_block_secs,
            warmup_calls: args.warmup_calls,
            seed_shaped_max: args.seed_shaped_max,
            audit: !args.no_audit,
        },
        latency,
        throughput,
        checks,
        samples,
    })
}

/// What [`measure`] found: latency rows, throughput rows, checks, sample answers, calls made
/// through the gateway, and seconds from the first to the last seed call.
type Measured = (
    Vec<Row>,
    Vec<Row>,
    Vec<Check>,
    Vec<(String, String)>,
    u64,
    f64,
);

async fn measure(
    args: &RunArgs,
    upstream: &UpstreamProcess,
    gateway: &GatewayProcess,
    marker: &str,
) -> anyhow::Result<Measured> {
    let path = format!("/mcp/{SERVER}");
    let through = |grant: Grant, kind: TargetKind| -> anyhow::Result<Target> {
        Ok(Target {
            kind,
            name: grant.label,
            endpoint: Endpoint::new(gateway.data, &path, Some(grant.token), marker)?,
            gateway: true,
        })
    };
    let mut targets = Vec::new();
    for kind in &args.targets {
        if targets.iter().any(|t: &Target| t.kind == *kind) {
            continue;
        }
        targets.push(match kind {
            TargetKind::Direct => Target {
                kind: *kind,
                name: "direct",
                endpoint: Endpoint::new(upstream.addr()?, upstream.path(), None, marker)?,
                gateway: false,
            },
            TargetKind::AllowAll => through(ALLOW_ALL, *kind)?,
            TargetKind::SeedShaped => through(SEED_SHAPED, *kind)?,
            TargetKind::Seed => through(SEED, *kind)?,
        });
    }
    anyhow::ensure!(!targets.is_empty(), "no target to drive");
    let call = CallShape::modern("run-rerun", &json!({"run_id": "bench-1"}))?;
    // The seed's policy denies `echo` by default: warming up with it spends none of the ten.
    let denied_call = CallShape::modern("echo", &json!({"text": "warm-up"}))?;
    let gateway_pid = Some(gateway.pid());
    let upstream_pid = Some(upstream.pid());
    let mut checks = Vec::new();
    let mut samples: Vec<(String, String)> = Vec::new();
    let mut gateway_calls = 0u64;

    progress("warming up");
    let mut latency_conns = Vec::new();
    for target in &targets {
        let mut conn = Conn::open(target.endpoint.addr).await?;
        let mut warm = Tally::new()?;
        let (shape, expected) = if target.kind == TargetKind::Seed {
            (&denied_call, warm_denied as fn(&Tally) -> bool)
        } else {
            (&call, warm_upstream as fn(&Tally) -> bool)
        };
        load::count(
            &mut conn,
            &target.endpoint,
            shape,
            args.warmup_calls,
            &mut warm,
        )
        .await?;
        checks.push(Check {
            what: format!("{}: warm-up answers", target.name),
            ok: expected(&warm),
            detail: format!("{:?}", warm.counts()),
        });
        if target.gateway {
            gateway_calls += warm.calls();
        }
        latency_conns.push(conn);
    }

    let mut seed_first: Option<Instant> = None;
    let n = targets.len();
    let mut latency_tallies = (0..n)
        .map(|_| Tally::new())
        .collect::<Result<Vec<_>, _>>()?;
    let mut latency_cpu = vec![CpuSample::default(); n];
    if args.blocks > 0 {
        progress(&format!(
            "latency: {} blocks x {} s x {n} targets, 1 connection",
            args.blocks, args.block_secs
        ));
    }
    let block = Duration::from_secs_f64(args.block_secs);
    for round in 0..args.blocks as usize {
        for step in 0..n {
            let i = (round + step) % n;
            if targets[i].kind == TargetKind::Seed {
                seed_first.get_or_insert_with(Instant::now);
            }
            let before = CpuSample::take(gateway_pid, upstream_pid)?;
            load::sequential(
                &mut latency_conns[i],
                &targets[i].endpoint,
                &call,
                block,
                &mut latency_tallies[i],
            )
            .await?;
            let after = CpuSample::take(gateway_pid, upstream_pid)?;
            latency_cpu[i].add(&after.since(&before));
        }
    }
    drop(latency_conns);

    let mut throughput_tallies = (0..n)
        .map(|_| Tally::new())
        .collect::<Result<Vec<_>, _>>()?;
    let mut throughput_cpu = vec![CpuSample::default(); n];
    if args.throughput_blocks > 0 && args.connections > 0 {
        progress(&format!(
            "throughput: {} blocks x {} s x {n} targets, {} connections",
            args.throughput_blocks, args.throughput_block_secs, args.connections
        ));
        let mut pools = Vec::with_capacity(n);
        for target in &targets {
            pools.push(load::open_many(target.endpoint.addr, args.connections).await?);
        }
        let block = Duration::from_secs_f64(args.throughput_block_secs);
        for round in 0..args.throughput_blocks as usize {
            for step in 0..n {
                let i = (round + step) % n;
                if targets[i].kind == TargetKind::Seed {
                    seed_first.get_or_insert_with(Instant::now);
                }
                let conns = std::mem::take(&mut pools[i]);
                let before = CpuSample::take(gateway_pid, upstream_pid)?;
                pools[i] = load::parallel(
                    conns,
                    &targets[i].endpoint,
                    &call,
                    block,
                    &mut throughput_tallies[i],
                )
                .await?;
                let after = CpuSample::take(gateway_pid, upstream_pid)?;
                throughput_cpu[i].add(&after.since(&before));
            }
        }
    }
    let seed_elapsed = seed_first.map_or(0.0, |at| at.elapsed().as_secs_f64());

    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        for (tally, cpu, rows, phase) in [
            (
                &latency_tallies[i],
                &latency_cpu[i],
                &mut latency,
                "latency",
            ),
            (
                &throughput_tallies[i],
                &throughput_cpu[i],
                &mut throughput,
                "throughput",
            ),
        ] {
            if tally.calls() == 0 {
                continue;
            }
            if target.gateway {
                gateway_calls += tally.calls();
            }
            checks.push(answers_check(target, phase, tally));
            for (outcome, sample) in &tally.samples {
                let key = format!("{} {outcome:?}", target.name);
                if !samples.iter().any(|(seen, _)| *seen == key) {
                    samples.push((key, sample.clone()));
                }
            }
            rows.push(Row::new(target.name, tally, cpu, target.gateway, true));
        }
    }
    for rows in [&mut latency, &mut throughput] {
        if let Some(direct) = rows.iter().find(|row| row.target == "direct").cloned() {
            for row in rows.iter_mut().filter(|row| row.target != "direct") {
                row.compare_with(&direct);
            }
        }
    }
    Ok((
        latency,
        throughput,
        checks,
        samples,
        gateway_calls,
        seed_elapsed,
    ))
}

fn warm_upstream(tally: &Tally) -> bool {
    tally.calls() > 0 && tally.upstream == tally.calls()
}

fn warm_denied(tally: &Tally) -> bool {
    tally.calls() > 0 && tally.denied == tally.calls()
}

/// Every answer of `target` in a phase was what its policy says.
fn answers_check(target: &Target, phase: &str, tally: &Tally) -> Check {
    let counts = tally.counts();
    let ok = match target.kind {
        // The seed: at most ten results a minute, every other call refused as rate_limited.
        TargetKind::Seed => {
            tally.other == 0
                && tally.denied == 0
                && tally.rate_limited > 0
                && tally.upstream + tally.rate_limited == tally.calls()
        }
        _ => tally.upstream == tally.calls(),
    };
    Check {
        what: format!(
            "{} {phase}: every answer is what the policy says",
            target.name
        ),
        ok,
        detail: format!(
            "{} calls: {} upstream results, {} rate_limited, {} denied, {} other",
            counts.calls, counts.upstream_results, counts.rate_limited, counts.denied, counts.other
        ),
    }
}
