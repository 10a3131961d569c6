//! The real binary as an operator runs it: `tollgate serve --config FILE`, SIGHUP reloads the
//! grants and policies (a bad file is refused and the old policy keeps serving), SIGTERM stops it
//! cleanly with exit code 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tollgate_testkit::{ChildGuard, Upstream, UpstreamOptions, wait_for, wait_for_async};

const TOKEN: &str = "binary-grant-token-0123456789";

fn hex_sha256(token: &str) -> String {
    tollgate_gateway::config::token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn call_echo(url: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"text": "x"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let text = reqwest::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The upstream may answer over SSE: the response is the last `data:` line.
    let json = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .unwrap_or(text.as_str());
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn sighup_reloads_policies_and_sigterm_stops_cleanly() {
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"version":"1","default":"deny"}"#).unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ndata = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [cluster]\napi_listen = \"127.0.0.1:0\"\nraft_listen = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"up\"\nurl = \"{}\"\n\
             [[grants]]\nlabel = \"g\"\ntoken_sha256 = \"{}\"\nserver = \"up\"\npolicy = \"policy.json\"\n",
            upstream.url,
            hex_sha256(TOKEN)
        ),
    )
    .unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(&mut command).unwrap();
    let stderr = guard.child_mut().unwrap().stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let log_has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_for(Duration::from_secs(30), || {
        log_has("tollgate gateway listening")
    })
    .await
    .expect("the gateway starts");
    let data_addr = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let start = l.find("data_addr=")? + "data_addr=".len();
            Some(l[start..].split_whitespace().next()?.to_owned())
        })
        .unwrap();
    let url = format!("http://{data_addr}/mcp/up");
    let pid = Pid::from_raw(i32::try_from(guard.pid()).unwrap());

    let denied = call_echo(&url).await;
    assert_eq!(denied["result"]["isError"], true, "{denied}");

    // A valid new policy, then SIGHUP: the next calls are allowed.
    std::fs::write(&policy, r#"{"version":"1","default":"allow"}"#).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for_async(Duration::from_secs(10), || {
        let url = url.clone();
        async move { call_echo(&url).await["result"]["isError"] != true }
    })
    .await
    .expect("the reloaded policy allows echo");

    // A broken policy, then SIGHUP: refused with its pointer; the allowing policy keeps serving.
    std::fs::write(&policy, r#"{"version":"1","default":"allow","tolls":{}}"#).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for(Duration::from_secs(10), || {
        log_has("configuration reload refused")
    })
    .await
    .expect("the reload is refused");
    assert!(log_has("/tolls"), "the refusal names the bad field");
    let still = call_echo(&url).await;
    assert!(still["result"]["content"].is_array(), "{still}");
    assert_ne!(still["result"]["isError"], true, "{still}");

    // SIGTERM: a clean stop with exit code 0.
    kill(pid, Signal::SIGTERM).unwrap();
    let child = guard.child_mut().unwrap();
    let mut status = None;
    wait_for(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .await
    .expect("the gateway stops");
    assert_eq!(status.unwrap().code(), Some(0));
}

/// Starts `tollgate serve --config FILE`; returns the guard, the gateway's `/mcp/up` URL and its
/// admin address.
async fn start_serve(config: &std::path::Path) -> (ChildGuard, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut guard = ChildGuard::spawn(&mut command).unwrap();
    let stdout = guard.child_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("tollgate listening") {
                let field = |name: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(str::to_owned)
                };
                let _ = tx.send(field("data=").zip(field("admin=")));
            }
        }
    });
    let (data, admin) =
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the node prints its listening line")
            .expect("the line names the data and admin addresses");
    (guard, format!("http://{data}/mcp/up"), admin)
}

/// The value of the sample `name` (with its labels, as exposed) in the node's `/metrics`.
async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

async fn stop(mut guard: ChildGuard) {
    let pid = Pid::from_raw(i32::try_from(guard.pid()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let child = guard.child_mut().unwrap();
    wait_for(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    })
    .await
    .expect("the node stops");
}

fn current_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
}

/// The single node counts limits through the same quota leader and ledger as a cluster: the
/// limit holds exactly, and the count survives a restart of the node (it lives in the Raft log).
#[tokio::test]
async fn the_single_node_enforces_a_limit_through_the_ledger_and_keeps_the_count_across_a_restart()
{
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version":"1","default":"allow","tools":{"echo":{"limits":[
            {"counter":"echo_rate","window":"hour","max":3,"scope":"grant"}]}}}"#,
    )
    .unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ndata = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [cluster]\napi_listen = \"127.0.0.1:0\"\nraft_listen = \"127.0.0.1:0\"\n\
             data_dir = \"{}\"\n\
             [[upstreams]]\nname = \"up\"\nurl = \"{}\"\n\
             [[grants]]\nlabel = \"g\"\ntoken_sha256 = \"{}\"\nserver = \"up\"\npolicy = \"policy.json\"\n",
            dir.path().join("data").display(),
            upstream.url,
            hex_sha256(TOKEN)
        ),
    )
    .unwrap();
    let hour = current_hour();
    let (guard, url, admin) = start_serve(&config).await;
    for n in 1..=3 {
        let answer = call_echo(&url).await;
        assert_ne!(answer["result"]["isError"], true, "call {n}: {answer}");
    }
    let limited = call_echo(&url).await;
    assert_eq!(limited["result"]["isError"], true, "{limited}");
    let meta = &limited["result"]["_meta"]["tollgate/decision"];
    assert_eq!(meta["decision"], "rate_limited", "{limited}");
    assert_eq!(meta["rule_id"], "/tools/echo/limits/echo_rate");
    assert_eq!(
        upstream.stats().calls("echo"),
        3,
        "the fourth call never left"
    );
    // The first call asked the quota leader (sync), the refusal came from it: both are counted,
    // and the agent's session is up.
    let sync = metric(&admin, r#"tollgate_quota_decisions_total{kind="sync"}"#).await;
    assert!(sync.is_some_and(|n| n >= 1.0), "sync decisions: {sync:?}");
    let exhausted = metric(
        &admin,
        r#"tollgate_quota_decisions_total{kind="exhausted"}"#,
    )
    .await;
    assert_eq!(exhausted, Some(1.0));
    wait_for_async(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move { metric(&admin, "tollgate_quota_session_connected").await == Some(1.0) }
    })
    .await
    .expect("the quota session is reported open");

    stop(guard).await;
    let (guard, url, _) = start_serve(&config).await;
    let after = call_echo(&url).await;
    if current_hour() == hour {
        assert_eq!(
            after["result"]["_meta"]["tollgate/decision"]["decision"], "rate_limited",
            "the count of this hour survived the restart: {after}"
        );
        assert_eq!(upstream.stats().calls("echo"), 3);
    } else {
        // The hour turned during the test: a new window, a new count.
        assert_ne!(after["result"]["isError"], true, "{after}");
    }
    stop(guard).await;
}
