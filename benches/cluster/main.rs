//! `cluster-bench`: how fast the control plane agrees and how fast gateways follow it, measured
//! on real processes.
//!
//! ```text
//!   cluster-bench ──PutPolicy (gRPC, to the leader)──▶ control 1..3 (--role control, Raft)
//!     │                                                   │ ConfigService.Watch
//!     └─ one poller per gateway: denied tools/call ──▶ gateway 1..2 (--role gateway)
//!        reads _meta["tollgate/decision"].policy_version      └─▶ testkit upstream (in-process)
//! ```
//!
//! The processes are the sandbox of `crates/cli/tests/cluster.rs` (its `common/sandbox.rs` is
//! included here with `#[path]`, so the tests and the bench start clusters the same way), from
//! the release binary. Three phases:
//!
//! 1. **push → enforcement**: K pushes one after another; each is timed from sending `PutPolicy`
//!    to the moment both gateways' pollers first get a refusal stamped with the new version (or a
//!    later one). The pollers call as fast as they can, so the moment is late by at most one
//!    call's round trip. The `PutPolicy` acknowledgement is timed too.
//! 2. **Raft write throughput**: C concurrent writers (each its own small policy) `PutPolicy`
//!    in a closed loop for a fixed time, for each C: writes/s and acknowledgement latency.
//! 3. **leader failover**: R rounds of kill -9 the leader, then `PutPolicy` (following
//!    `tollgate-leader`, moving to the next node when one does not answer or knows no leader,
//!    20 ms between tries when no leader is known) until one is acknowledged: the time from the
//!    kill to that acknowledgement. The killed node is restarted from its data directory and
//!    caught up before the next round.

#[path = "../../crates/cli/tests/common/sandbox.rs"]
mod sandbox;
#[allow(dead_code)]
#[path = "../proxy_latency/system.rs"]
mod system;

mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_proto::v1::{
    CreateGrantRequest, HttpTransport, PutPolicyRequest, PutPolicyResponse, PutUpstreamRequest,
    Upstream as UpstreamProto, upstream,
};
use tollgate_testkit::{Upstream, UpstreamOptions, wait_for_async};

use crate::report::{Failover, Latency, Report, Throughput};
use crate::sandbox::{Admin, Options, Sandbox, deny_echo_policy};

/// The upstream's name in the cluster.
const SERVER: &str = "up";
/// The policy whose versions phase 1 pushes.
const VERSIONS: &str = "versions";
/// Waits for elections, propagation and restarts.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "cluster-bench",
    about = "Push-to-enforcement latency, Raft write throughput and leader failover on a \
             3-control, 2-gateway cluster of real processes"
)]
struct Cli {
    /// The `tollgate` binary (build it with `cargo build --release -p tollgate`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/tollgate"))]
    binary: PathBuf,
    /// Control nodes.
    #[arg(long, default_value_t = 3)]
    controls: usize,
    /// Gateways.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Pushes timed to enforcement on every gateway.
    #[arg(long, default_value_t = 200)]
    pushes: usize,
    /// Concurrent writers of the throughput phase, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    writers: Vec<usize>,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 3.0)]
    write_secs: f64,
    /// Leader kills.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// `RUST_LOG` of the tollgate processes.
    #[arg(long, default_value = "warn")]
    rust_log: String,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Keep the sandbox directory (configurations, data, logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cluster-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("cluster-bench: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.markdown());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cluster-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("cluster-bench: {message}");
}

async fn run(cli: &Cli) -> anyhow::Result<Report> {
    anyhow::ensure!(
        cli.binary.exists(),
        "{} not found: cargo build --release -p tollgate -p tollgate-benches",
        cli.binary.display()
    );
    let machine = system::Machine::describe();
    let upstream = Upstream::start(UpstreamOptions::default()).await?;
    progress(&format!(
        "starting {} control nodes and {} gateways",
        cli.controls, cli.gateways
    ));
    let mut sandbox = Sandbox::start(Options {
        binary: cli.binary.clone(),
        controls: cli.controls,
        gateways: cli.gateways,
        rust_log: cli.rust_log.clone(),
        start_timeout: WAIT,
    })
    .await?;
    sandbox.leader(WAIT).await?;
    let admin = sandbox.admin();
    put_upstream(&admin, &upstream.url).await?;
    put_policy(&admin, VERSIONS, &deny_echo_policy(0)).await?;
    let grant = admin
        .write(WAIT, |mut client| {
            let request = Admin::request(CreateGrantRequest {
                label: "bench".to_owned(),
                server: SERVER.to_owned(),
                policy_id: VERSIONS.to_owned(),
            });
            async move { client.create_grant(request).await }
        })
        .await?;

    let result = async {
        let push = push_to_enforcement(&sandbox, &admin, &grant.token, cli.pushes).await?;
        let mut throughput = Vec::new();
        for &writers in &cli.writers {
            throughput.push(write_throughput(&admin, writers, cli.write_secs).await?);
        }
        let failover = failovers(&mut sandbox, cli.failovers).await?;
        anyhow::Ok((push, throughput, failover))
    }
    .await;
    if cli.keep_dir {
        let dir = sandbox.keep_dir();
        progress(&format!("kept {}", dir.display()));
    }
    let (push, throughput, failover) = result?;
    Ok(Report {
        machine,
        controls: cli.controls,
        gateways: cli.gateways,
        push,
        throughput,
        failover,
    })
}

async fn put_upstream(admin: &Admin, url: &str) -> anyhow::Result<()> {
    let upstream = UpstreamProto {
        name: SERVER.to_owned(),
        transport: Some(upstream::Transport::Http(HttpTransport {
            url: url.to_owned(),
            ..Default::default()
        })),
    };
    admin
        .write(WAIT, |mut client| {
            let request = Admin::request(PutUpstreamRequest {
                upstream: Some(upstream.clone()),
            });
            async move { client.put_upstream(request).await }
        })
        .await?;
    Ok(())
}

async fn put_policy(admin: &Admin, id: &str, document: &str) -> anyhow::Result<PutPolicyResponse> {
    let response = admin
        .write(WAIT, |mut client| {
            let request = Admin::request(PutPolicyRequest {
                policy_id: id.to_owned(),
                document_json: document.to_owned(),
                expected_version: 0,
            });
            async move { client.put_policy(request).await }
        })
        .await?;
    anyhow::ensure!(
        response.errors.is_empty(),
        "policy refused: {:?}",
        response.errors
    );
    Ok(response)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) -> anyhow::Result<()> {
    let us = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    histogram.record(us.min(histogram.high()))?;
    Ok(())
}

/// Phase 1: each push timed to its ack and to enforcement on every gateway.
async fn push_to_enforcement(
    sandbox: &Sandbox,
    admin: &Admin,
    token: &str,
    pushes: usize,
) -> anyhow::Result<(Latency, Latency)> {
    progress(&format!("push -> enforcement: {pushes} pushes"));
    for g in 0..sandbox.gateways.len() {
        wait_for_async(WAIT, || async {
            sandbox
                .call(g, SERVER, token, "echo")
                .await
                .is_ok_and(|a| a.denied_by_version().is_some())
        })
        .await
        .with_context(|| format!("gateway {g} enforces the grant's policy"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Per gateway: the newest version seen and when it was first seen.
    let mut seen = Vec::new();
    let mut pollers = Vec::new();
    for gateway in &sandbox.gateways {
        let (tx, rx) = watch::channel((0u64, Instant::now()));
        seen.push(rx);
        let http = sandbox.http().clone();
        let (data, token, stop) = (gateway.data, token.to_owned(), stop.clone());
        pollers.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let answer = sandbox::call_tool(&http, data, SERVER, &token, "echo").await?;
                let at = Instant::now();
                let version = answer
                    .denied_by_version()
                    .with_context(|| format!("not a stamped refusal: {answer:?}"))?;
                if version > tx.borrow().0 {
                    tx.send_replace((version, at));
                }
                calls += 1;
            }
            anyhow::Ok(calls)
        }));
    }
    let mut ack = histogram()?;
    let mut visible = histogram()?;
    let started = Instant::now();
    for n in 1..=pushes {
        let sent = Instant::now();
        let response = put_policy(admin, VERSIONS, &deny_echo_policy(n as u64)).await?;
        record(&mut ack, sent.elapsed())?;
        let mut last = sent;
        for rx in &mut seen {
            let waited = tokio::time::timeout(WAIT, rx.wait_for(|s| s.0 >= response.version)).await;
            match waited {
                Ok(Ok(seen)) => last = last.max(seen.1),
                // The poller stopped: its error says why.
                Ok(Err(_)) => break,
                Err(_) => anyhow::bail!("version {} never enforced", response.version),
            }
        }
        if pollers.iter().any(|p| p.is_finished()) {
            break;
        }
        record(&mut visible, last - sent)?;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut polls = 0;
    for poller in pollers {
        polls += poller.await?.context("a gateway poller")?;
    }
    anyhow::ensure!(
        visible.len() == pushes as u64,
        "a gateway poller stopped early"
    );
    progress(&format!(
        "  {pushes} pushes in {:.1} s, {polls} polling calls",
        elapsed.as_secs_f64()
    ));
    Ok((Latency::of(&ack), Latency::of(&visible)))
}

/// Phase 2: `writers` closed-loop writers for `secs` seconds.
async fn write_throughput(admin: &Admin, writers: usize, secs: f64) -> anyhow::Result<Throughput> {
    progress(&format!("throughput: {writers} writers for {secs} s"));
    let duration = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram()?;
            let id = format!("throughput-{writers}-{w}");
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let sent = Instant::now();
                put_policy(&admin, &id, &deny_echo_policy(n)).await?;
                record(&mut latencies, sent.elapsed())?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = histogram()?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Throughput {
        writers,
        writes: all.len(),
        writes_per_sec: all.len() as f64 / elapsed,
        ack: Latency::of(&all),
    })
}

/// Phase 3: kill -9 the leader `rounds` times.
async fn failovers(sandbox: &mut Sandbox, rounds: usize) -> anyhow::Result<Failover> {
    let admin = sandbox.admin();
    let mut rounds_ms = Vec::new();
    for round in 1..=rounds {
        let leader = sandbox.leader(WAIT).await?;
        let killed_at = Instant::now();
        sandbox.kill(leader).await?;
        put_policy(
            &admin,
            VERSIONS,
            &deny_echo_policy(1_000_000 + round as u64),
        )
        .await?;
        let took = killed_at.elapsed();
        rounds_ms.push(took.as_secs_f64() * 1e3);
        progress(&format!(
            "failover {round}: node {} killed, a write acknowledged after {:.0} ms",
            sandbox.controls[leader].id,
            took.as_secs_f64() * 1e3
        ));
        sandbox.restart(leader).await?;
        let new_leader = sandbox.leader(WAIT).await?;
        let target = sandbox.status(new_leader).await?.applied_index;
        let caught_up = wait_for_async(WAIT, || async {
            sandbox
                .status(leader)
                .await
                .is_ok_and(|s| s.applied_index >= target)
        })
        .await;
        caught_up.context("the restarted node catches up")?;
    }
    Ok(Failover::of(rounds_ms))
}
