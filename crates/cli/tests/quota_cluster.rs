//! Exact global limits from real processes (issue 4): three control nodes and three gateways
//! (`common/sandbox.rs`), a load generator hitting all three gateways with the seed's policy plus
//! a global limit, while the Raft leader is killed (SIGKILL), a gateway is killed (SIGKILL) and
//! another is paused (SIGSTOP) and resumed. The oracle reads every gateway's audit file: for
//! each window of the global counter, the calls admitted across all gateways never exceed the
//! limit; the seed's per-grant `run-rerun` limit (10 per minute) holds too.
//!
//! The window is one second so that a short run has many windows, each with demand above the
//! limit. Audit records of the killed gateway that were still queued in its process when it died
//! are lost: the test measures that gap against what the upstream received and bounds it (a few
//! records in practice), so the per-window check covers all but those few calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbox::{Options, Sandbox, call_tool};
use serde_json::{Value, json};
use tollgate_testkit::{ExtraTool, Upstream, UpstreamOptions};
use tracing::info;

const SERVER: &str = "up";
const WAIT: Duration = Duration::from_secs(20);
/// The global limit, per second.
const MAX: u64 = 150;
/// The seed's per-grant limit of `run-rerun`, per minute.
const RERUN_MAX: u64 = 10;
const GLOBAL_KEY: &str = "global:all_calls";
/// Concurrent client tasks.
const CLIENTS: usize = 24;

/// The seed's policy (`examples/policies/seed.json`) plus an allowed `echo` and a global limit on
/// every call, as policy version 2.
fn policy() -> String {
    let mut seed: Value =
        serde_json::from_str(include_str!("../../../examples/policies/seed.json")).unwrap();
    seed["version"] = json!("2");
    seed["tools"]["echo"] = json!({});
    seed["all_tools"] = json!({"limits": [
        {"counter": "all_calls", "window": "second", "max": MAX, "scope": "global"}]});
    seed.to_string()
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[derive(Default)]
struct Load {
    admitted: AtomicU64,
    rate_limited: AtomicU64,
    unavailable: AtomicU64,
    failed: AtomicU64,
}

/// One client: round-robin over the gateways, `run-rerun` every 20th call, each call bounded
/// (a paused gateway never answers).
async fn client(
    http: reqwest::Client,
    gateways: Vec<SocketAddr>,
    tokens: Vec<String>,
    n: usize,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) {
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let gateway = gateways[i % gateways.len()];
        let token = &tokens[i % tokens.len()];
        let tool = if i.is_multiple_of(20) {
            "run-rerun"
        } else {
            "echo"
        };
        let call = call_tool(&http, gateway, SERVER, token, tool);
        match tokio::time::timeout(Duration::from_millis(500), call).await {
            Ok(Ok(answer)) if answer.is_upstream_result() => {
                load.admitted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(answer)) => match answer.decision().and_then(|d| d["decision"].as_str()) {
                Some("rate_limited") => {
                    load.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                Some("limit_unavailable") => {
                    load.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the audit files say.
#[derive(Default, Debug)]
struct Audited {
    /// Admitted calls per window of the global counter.
    global: BTreeMap<u64, u64>,
    /// Admitted `run-rerun` calls per (grant, minute window).
    rerun: HashMap<(String, u64), u64>,
    /// Admitted calls in all.
    admitted: u64,
    /// Rate-limited calls of the global counter, per window of their time stamp.
    limited: BTreeMap<u64, u64>,
}

fn read_audits(paths: &[std::path::PathBuf]) -> Audited {
    let mut audited = Audited::default();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                // The last line of a killed gateway's file may be cut short.
                continue;
            };
            if record["method"] != "tools/call" {
                continue;
            }
            let counters: Vec<&str> = record["counters"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let windows: Vec<u64> = record["counter_windows"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            match record["decision"].as_str() {
                Some("allow") => {
                    audited.admitted += 1;
                    for (counter, window) in counters.iter().zip(&windows) {
                        if *counter == GLOBAL_KEY {
                            *audited.global.entry(*window).or_default() += 1;
                        } else if counter.ends_with("/run-rerun_rate") {
                            *audited
                                .rerun
                                .entry(((*counter).to_owned(), *window))
                                .or_default() += 1;
                        }
                    }
                }
                Some("rate_limited") if record["rule_id"] == "/all_tools/limits/all_calls" => {
                    let time = record["time"].as_str().unwrap_or_default();
                    if let Ok(t) = time::OffsetDateTime::parse(
                        time,
                        &time::format_description::well_known::Rfc3339,
                    ) {
                        let second = u64::try_from(t.unix_timestamp()).unwrap_or(0);
                        *audited.limited.entry(second).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    audited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_is_never_exceeded_while_the_leader_and_gateways_fail() {
    tollgate_tests::init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default().extra_tool(ExtraTool::new(
        "run-rerun",
        "re-runs a job",
        |_| Ok(json!({"content": [{"type": "text", "text": "rerun queued"}]})),
    )))
    .await
    .unwrap();
    let mut sandbox = Sandbox::start(Options {
        binary: env!("CARGO_BIN_EXE_tollgate").into(),
        controls: 3,
        gateways: 3,
        rust_log: "info".to_owned(),
        start_timeout: WAIT,
    })
    .await
    .unwrap();
    let admin = sandbox.admin();
    admin
        .put_upstream(WAIT, SERVER, &upstream.url)
        .await
        .unwrap();
    admin.put_policy(WAIT, "seed", &policy()).await.unwrap();
    let mut tokens = Vec::new();
    for n in 0..3 {
        let (_, token) = admin
            .create_grant(WAIT, &format!("agent-{n}"), SERVER, "seed")
            .await
            .unwrap();
        tokens.push(token);
    }
    // Every gateway serves the grants before the load starts.
    for g in 0..3 {
        let data = sandbox.gateways[g].data;
        let http = sandbox.http().clone();
        let token = tokens[2].clone();
        tollgate_testkit::wait_for_async(WAIT, || {
            let http = http.clone();
            let token = token.clone();
            async move {
                call_tool(&http, data, SERVER, &token, "echo")
                    .await
                    .is_ok_and(|a| a.is_upstream_result())
            }
        })
        .await
        .unwrap();
    }

    info!("--- load on all three gateways");
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<SocketAddr> = sandbox.gateways.iter().map(|g| g.data).collect();
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        clients.push(tokio::spawn(client(
            sandbox.http().clone(),
            addrs.clone(),
            tokens.clone(),
            n,
            load.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = sandbox.leader(WAIT).await.unwrap();
    let killed_at = unix_ms();
    info!(leader, "--- kill -9 the Raft leader");
    sandbox.kill(leader).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gateway_killed_at = unix_ms();
    info!("--- kill -9 gateway-3");
    sandbox.kill_gateway(2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    info!("--- SIGSTOP gateway-2 for 2 s");
    sandbox.pause_gateway(1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sandbox.resume_gateway(1).unwrap();
    let resumed_at = unix_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    // Flush the audit files of the gateways still running.
    sandbox.terminate_gateway(0).await.unwrap();
    sandbox.terminate_gateway(1).await.unwrap();

    let audits: Vec<_> = sandbox.gateways.iter().map(|g| g.audit.clone()).collect();
    let audited = read_audits(&audits);
    let received = upstream.stats().total_calls();
    let seen = load.admitted.load(Ordering::Relaxed);
    info!(
        admitted_seen_by_clients = seen,
        rate_limited = load.rate_limited.load(Ordering::Relaxed),
        limit_unavailable = load.unavailable.load(Ordering::Relaxed),
        failed = load.failed.load(Ordering::Relaxed),
        upstream_received = received,
        audited_admitted = audited.admitted,
        "load finished"
    );
    info!(per_window = ?audited.global, "admitted per one-second window of {GLOBAL_KEY}");
    // The readiness calls above went to the upstream too; every admitted call is audited, except
    // those the killed gateway still had queued when it died.
    let lost = received.saturating_sub(audited.admitted);
    info!(
        lost,
        kill_window = gateway_killed_at / 1000,
        "admitted calls missing from the killed gateway's audit file"
    );
    assert!(
        lost <= 50,
        "{lost} admitted calls are missing from the audit files"
    );
    for (&window, &admitted) in &audited.global {
        assert!(
            admitted <= MAX,
            "window {window}: {admitted} calls admitted over a limit of {MAX}"
        );
    }
    for ((counter, window), admitted) in &audited.rerun {
        assert!(
            *admitted <= RERUN_MAX,
            "{counter} admitted {admitted} in minute {window}"
        );
    }

    // Demand exceeded the limit in the windows where calls were refused (a call is refused as
    // rate limited only once the leader said the window is spent). Away from the faults (whole
    // windows before the leader kill, or from 1.5 s after the paused gateway resumed: its leases
    // have expired by then) those windows reach the limit, less the tokens left in leases that
    // a gateway held when the window ended.
    let calm = |w: u64| {
        let ms = w * 1000;
        ms + 1000 <= killed_at || ms >= resumed_at + 1500
    };
    let full: Vec<(u64, u64)> = audited
        .global
        .iter()
        .filter(|(w, _)| audited.limited.get(w).copied().unwrap_or(0) > 0 && calm(**w))
        .map(|(w, n)| (*w, *n))
        .collect();
    info!(?full, "calm windows with demand over the limit");
    assert!(
        !full.is_empty(),
        "the load never exceeded the limit in a calm window: {audited:?}"
    );
    for (window, admitted) in &full {
        assert!(
            admitted * 100 >= MAX * 90,
            "window {window}: only {admitted} of {MAX} admitted while calls were refused"
        );
    }
}
