//! A sandbox of real `tollgate serve` processes on loopback ports: N control nodes
//! (`--role control`, one Raft cluster) and M gateways (`--role gateway --control api1,...`),
//! each a child process that a test can kill (SIGKILL), stop (SIGTERM), pause (SIGSTOP), resume
//! (SIGCONT) and restart from the same data directory and configuration file.
//!
//! ```text
//!   test / bench ──AdminService (gRPC, follows `tollgate-leader`)──▶ control 1..N (Raft)
//!        │                                                             ▲ ConfigService.Watch
//!        └──POST /mcp/{server}, GET /metrics──▶ gateway 1..M ──────────┘
//!                                                  └──▶ upstream (testkit, in-process)
//! ```
//!
//! Shared by `crates/cli/tests/cluster.rs` and the `cluster-bench` binary (`benches/cluster`,
//! which includes this file with `#[path]`), so it returns `anyhow` errors instead of panicking.
//!
//! # Ports
//!
//! A control node's addresses must be written into every member's `[[cluster.members]]` before
//! any of them starts, so they are picked by binding `127.0.0.1:0` and closing the listener. Another
//! process may take such a port in the instant before the node binds it; the node then fails to
//! start and [`Sandbox::start`] reports its log (run again). Gateways bind port 0 themselves and
//! report their addresses on stdout (`tollgate listening ...`), which is read here.
//!
//! Every process is owned by a [`ChildGuard`] and killed by PID when the sandbox drops.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, CreateGrantRequest, HttpTransport,
    PutPolicyRequest, PutPolicyResponse, PutUpstreamRequest, Upstream as UpstreamProto, upstream,
};
use tollgate_proto::{ADMIN_TOKEN_METADATA_KEY, LEADER_METADATA_KEY};
use tollgate_testkit::{ChildGuard, wait_for};
use tonic::transport::{Channel, Endpoint};

/// The admin token every control node of a sandbox reads from `TOLLGATE_ADMIN_TOKEN`.
pub const ADMIN_TOKEN: &str = "sandbox-admin-token-0123456789";

/// How long one admin RPC may take before it is given up (a paused node never answers).
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a control node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause between two attempts at a write when no leader is known (an election is under way).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `tollgate` binary.
    pub binary: PathBuf,
    /// Control nodes (1, 3 or 5).
    pub controls: usize,
    /// Gateways.
    pub gateways: usize,
    /// `RUST_LOG` of every process (its stderr goes to `DIR/<name>.log`).
    pub rust_log: String,
    /// How long a process may take to print its `tollgate listening` line.
    pub start_timeout: Duration,
}

/// The parts of a `tollgate listening role=... data=... admin=... api=... raft=...` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    /// The gateway's data-plane address.
    pub data: Option<SocketAddr>,
    /// The gateway's admin HTTP address (`/metrics`, `/readyz`).
    pub admin: Option<SocketAddr>,
    /// The control node's API address.
    pub api: Option<String>,
    /// The control node's Raft address.
    pub raft: Option<String>,
}

impl Listening {
    /// Parses the line, or `None` if it is not one.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("tollgate listening ")?;
        let mut parsed = Self::default();
        for part in rest.split_whitespace() {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            match key {
                "data" => parsed.data = value.parse().ok(),
                "admin" => parsed.admin = value.parse().ok(),
                "api" => parsed.api = Some(value.to_owned()),
                "raft" => parsed.raft = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(parsed)
    }
}

/// One running `tollgate serve` process.
struct Process {
    guard: ChildGuard,
    listening: watch::Receiver<Option<Listening>>,
}

impl Process {
    fn spawn(binary: &Path, args: &[String], log: &Path, rust_log: &str) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_LOG_FORMAT", "text")
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("TOLLGATE_ROLE")
            .env_remove("TOLLGATE_CONTROL")
            .env_remove("TOLLGATE_DATA_DIR")
            .env_remove("TOLLGATE_RAFT_ADDR")
            .env_remove("TOLLGATE_API_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut guard = ChildGuard::spawn(&mut command)?;
        let stdout = guard
            .child_mut()
            .and_then(|c| c.stdout.take())
            .context("no stdout pipe")?;
        let (tx, rx) = watch::channel(None);
        std::thread::spawn(move || {
            // Keep reading to the end so that the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(listening) = Listening::parse(&line) {
                    tx.send_replace(Some(listening));
                }
            }
        });
        Ok(Self {
            guard,
            listening: rx,
        })
    }

    /// Waits for the `tollgate listening` line; fails early if the process exits.
    async fn listening(&mut self, timeout: Duration, log: &Path) -> anyhow::Result<Listening> {
        let mut exited = false;
        let waited = {
            let guard = &mut self.guard;
            let rx = &self.listening;
            wait_for(timeout, || {
                exited = guard.has_exited();
                exited || rx.borrow().is_some()
            })
            .await
        };
        if let Some(listening) = self.listening.borrow().clone() {
            return Ok(listening);
        }
        bail!(
            "{} did not print `tollgate listening` ({}; a picked port may have been taken). \
             Its log:\n{}",
            log.display(),
            if exited {
                "it exited".to_owned()
            } else {
                format!("{waited:?}")
            },
            log_tail(log)
        )
    }

    /// Sends `signal` and, for a fatal one, waits until the process has exited and is reaped.
    async fn stop(mut self, signal: Signal, timeout: Duration) -> anyhow::Result<()> {
        self.guard.signal(signal)?;
        let guard = &mut self.guard;
        let exited = wait_for(timeout, || guard.has_exited()).await;
        if exited.is_ok() {
            // Reaped: dropping the guard would signal a PID that another process may now hold.
            std::mem::forget(self.guard);
            Ok(())
        } else {
            // Still running: the guard's drop kills it (SIGCONT, SIGKILL).
            bail!("pid {} did not exit after {signal}", self.guard.pid())
        }
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One control node: fixed addresses, its own data directory and configuration file.
pub struct Control {
    /// The Raft id.
    pub id: u64,
    /// The API address (`127.0.0.1:port`).
    pub api: String,
    /// The Raft address.
    pub raft: String,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`) of the running process.
    pub admin: Option<SocketAddr>,
    config: PathBuf,
    log: PathBuf,
    process: Option<Process>,
    paused: bool,
}

impl Control {
    /// Whether the process runs and is not paused (so that it answers).
    pub fn is_live(&self) -> bool {
        self.process.is_some() && !self.paused
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.guard.pid())
    }

    /// Its log file (stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// One gateway.
pub struct Gateway {
    /// Its `node_id` (the `gateway_id` on its watch stream).
    pub name: String,
    /// Data-plane address.
    pub data: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Its audit file (JSON lines).
    pub audit: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl Gateway {
    /// Its log file (stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// The answer to one MCP `tools/call` through a gateway.
#[derive(Debug, Clone)]
pub struct McpAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON-RPC response (from a JSON body, or the last `data:` line of an SSE body).
    pub body: Option<Value>,
}

impl McpAnswer {
    /// A result that the upstream produced (not a refusal, not an error).
    pub fn is_upstream_result(&self) -> bool {
        self.status == 200
            && self
                .body
                .as_ref()
                .is_some_and(|b| b.get("result").is_some() && b["result"]["isError"] != true)
    }

    /// The decision `_meta` of a policy refusal.
    pub fn decision(&self) -> Option<&Value> {
        let body = self.body.as_ref()?;
        (body["result"]["isError"] == true)
            .then(|| body["result"]["_meta"].get("tollgate/decision"))
            .flatten()
    }

    /// The policy version stamped on a policy refusal.
    pub fn denied_by_version(&self) -> Option<u64> {
        self.decision()?.get("policy_version")?.as_u64()
    }
}

/// The running sandbox. Dropping it kills every process and removes its directory.
pub struct Sandbox {
    options: Options,
    /// Control nodes, index `i` has Raft id `i + 1`.
    pub controls: Vec<Control>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    admin: Admin,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A loopback address whose port was free a moment ago (see the module docs for the race).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn toml_string(value: &str) -> String {
    // A TOML basic string has JSON's escapes for the characters that matter here.
    Value::from(value).to_string()
}

impl Sandbox {
    /// Starts the control nodes (all at once, so that they elect a leader), waits for each one's
    /// `tollgate listening` line, then starts the gateways and waits for theirs.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-sandbox-")
            .tempdir()?;
        let mut members = String::new();
        let mut addrs = Vec::new();
        for id in 1..=options.controls as u64 {
            let raft = free_port()?.to_string();
            let api = free_port()?.to_string();
            members.push_str(&format!(
                "\n[[cluster.members]]\nid = {id}\nraft = {}\napi = {}\n",
                toml_string(&raft),
                toml_string(&api)
            ));
            addrs.push((id, raft, api));
        }
        let mut controls = Vec::new();
        for (id, raft, api) in addrs {
            let node_dir = dir.path().join(format!("control-{id}"));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("tollgate.toml");
            std::fs::write(
                &config,
                format!(
                    "node_id = \"control-{id}\"\n\n[listen]\nadmin = \"127.0.0.1:0\"\n\n\
                     [cluster]\nid = {id}\ndata_dir = {}\n\
                     raft_listen = {}\napi_listen = {}\n{members}",
                    toml_string(&node_dir.join("data").display().to_string()),
                    toml_string(&raft),
                    toml_string(&api),
                ),
            )?;
            controls.push(Control {
                id,
                api,
                raft,
                admin: None,
                config,
                log: dir.path().join(format!("control-{id}.log")),
                process: None,
                paused: false,
            });
        }
        let control_apis = controls.iter().map(|c| c.api.clone()).collect();
        let mut sandbox = Self {
            options,
            controls,
            gateways: Vec::new(),
            admin: Admin::new(control_apis),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            dir,
        };
        for i in 0..sandbox.controls.len() {
            sandbox.spawn_control(i)?;
        }
        for i in 0..sandbox.controls.len() {
            sandbox.control_listening(i).await?;
        }
        let control_list: Vec<String> = sandbox.controls.iter().map(|c| c.api.clone()).collect();
        for n in 1..=sandbox.options.gateways {
            let name = format!("gateway-{n}");
            let config = sandbox.dir.path().join(format!("{name}.toml"));
            let audit = sandbox.dir.path().join(format!("{name}.audit.jsonl"));
            std::fs::write(
                &config,
                format!(
                    "node_id = \"{name}\"\n\n[listen]\ndata = \"127.0.0.1:0\"\n\
                     admin = \"127.0.0.1:0\"\n\n[audit]\npath = {}\n",
                    toml_string(&audit.display().to_string())
                ),
            )?;
            let log = sandbox.dir.path().join(format!("{name}.log"));
            let args = vec![
                "serve".to_owned(),
                "--config".to_owned(),
                config.display().to_string(),
                "--role".to_owned(),
                "gateway".to_owned(),
                "--control".to_owned(),
                control_list.join(","),
            ];
            let mut process = Process::spawn(
                &sandbox.options.binary,
                &args,
                &log,
                &sandbox.options.rust_log,
            )?;
            let listening = process
                .listening(sandbox.options.start_timeout, &log)
                .await?;
            sandbox.gateways.push(Gateway {
                name,
                data: listening
                    .data
                    .context("the gateway printed no data address")?,
                admin: listening
                    .admin
                    .context("the gateway printed no admin address")?,
                audit,
                log,
                process: Some(process),
            });
        }
        Ok(sandbox)
    }

    /// The sandbox's directory (configurations, data directories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory after the sandbox drops (for diagnosis); returns its path.
    pub fn keep_dir(self) -> PathBuf {
        let Self {
            controls,
            gateways,
            dir,
            ..
        } = self;
        drop(controls);
        drop(gateways);
        dir.keep()
    }

    fn spawn_control(&mut self, i: usize) -> anyhow::Result<()> {
        let control = &mut self.controls[i];
        anyhow::ensure!(control.process.is_none(), "control {} runs", control.id);
        let args = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            control.config.display().to_string(),
            "--role".to_owned(),
            "control".to_owned(),
        ];
        control.process = Some(Process::spawn(
            &self.options.binary,
            &args,
            &control.log,
            &self.options.rust_log,
        )?);
        control.paused = false;
        Ok(())
    }

    async fn control_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let timeout = self.options.start_timeout;
        let control = &mut self.controls[i];
        let log = control.log.clone();
        let process = control.process.as_mut().context("not running")?;
        let listening = process.listening(timeout, &log).await?;
        control.admin = listening.admin;
        anyhow::ensure!(
            listening.api.as_deref() == Some(control.api.as_str()),
            "control {} listens on {:?}, not {}",
            control.id,
            listening.api,
            control.api
        );
        Ok(())
    }

    /// SIGKILL control node `i` and reap it.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop_control(i, Signal::SIGKILL).await
    }

    /// SIGTERM control node `i` and wait for its clean exit.
    pub async fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop_control(i, Signal::SIGTERM).await
    }

    async fn stop_control(&mut self, i: usize, signal: Signal) -> anyhow::Result<()> {
        let control = &mut self.controls[i];
        let process = control.process.take().context("not running")?;
        if control.paused {
            process.guard.signal(Signal::SIGCONT)?;
            control.paused = false;
        }
        process.stop(signal, Duration::from_secs(20)).await
    }

    /// SIGTERM every running control node at once, then wait for each one's clean exit.
    pub async fn terminate_all(&mut self) -> anyhow::Result<()> {
        for control in &mut self.controls {
            if let Some(process) = &control.process {
                if control.paused {
                    process.guard.signal(Signal::SIGCONT)?;
                    control.paused = false;
                }
                process.guard.signal(Signal::SIGTERM)?;
            }
        }
        for control in &mut self.controls {
            if let Some(process) = control.process.take() {
                process
                    .stop(Signal::SIGTERM, Duration::from_secs(30))
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts control node `i` again from its data directory and configuration file, and waits
    /// for its `tollgate listening` line.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_control(i)?;
        self.control_listening(i).await
    }

    /// Starts control node `i` again without waiting for it (to restart several at once).
    pub fn respawn(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_control(i)
    }

    /// Waits for a respawned control node's `tollgate listening` line.
    pub async fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        self.control_listening(i).await
    }

    /// SIGSTOP control node `i`.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let control = &mut self.controls[i];
        let process = control.process.as_ref().context("not running")?;
        process.guard.signal(Signal::SIGSTOP)?;
        control.paused = true;
        Ok(())
    }

    /// SIGCONT control node `i`.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let control = &mut self.controls[i];
        let process = control.process.as_ref().context("not running")?;
        process.guard.signal(Signal::SIGCONT)?;
        control.paused = false;
        Ok(())
    }

    // --------------------------------------------------------------------------------------------
    // AdminService

    /// The AdminService client of this sandbox (cheap to clone, usable from other tasks while
    /// nodes are killed and restarted).
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// `ClusterStatus` as control node `i` sees it.
    pub async fn status(&self, i: usize) -> anyhow::Result<ClusterStatusResponse> {
        self.admin.status(&self.controls[i].api).await
    }

    /// Waits until the live control nodes agree on a leader that says it is one; returns its
    /// index.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.controls.len())
            .filter(|&i| self.controls[i].is_live())
            .collect();
        let mut leader = None;
        for &i in &live {
            let status = self.status(i).await.ok()?;
            if status.leader_id == 0 || leader.is_some_and(|l| l != status.leader_id) {
                return None;
            }
            leader = Some(status.leader_id);
        }
        let index = usize::try_from(leader?.checked_sub(1)?).ok()?;
        live.contains(&index).then_some(index)
    }

    // --------------------------------------------------------------------------------------------
    // Gateways

    /// One stateless (2026-07-28) `tools/call` of `tool` through gateway `g`.
    pub async fn call(
        &self,
        g: usize,
        server: &str,
        token: &str,
        tool: &str,
    ) -> anyhow::Result<McpAnswer> {
        call_tool(&self.http, self.gateways[g].data, server, token, tool).await
    }

    /// The `tollgate_config_revision` gauge of gateway `g`.
    pub async fn gateway_revision(&self, g: usize) -> anyhow::Result<u64> {
        let url = format!("http://{}/metrics", self.gateways[g].admin);
        let text = self.http.get(url).send().await?.text().await?;
        metric_value(&text, "tollgate_config_revision")
            .context("no tollgate_config_revision in /metrics")
    }

    /// SIGKILL gateway `g` and reap it (it stays down).
    pub async fn kill_gateway(&mut self, g: usize) -> anyhow::Result<()> {
        let process = self.gateways[g].process.take().context("not running")?;
        process.guard.signal(Signal::SIGCONT)?;
        process.stop(Signal::SIGKILL, Duration::from_secs(20)).await
    }

    /// SIGSTOP gateway `g`.
    pub fn pause_gateway(&mut self, g: usize) -> anyhow::Result<()> {
        let process = self.gateways[g].process.as_ref().context("not running")?;
        process.guard.signal(Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONT gateway `g`.
    pub fn resume_gateway(&mut self, g: usize) -> anyhow::Result<()> {
        let process = self.gateways[g].process.as_ref().context("not running")?;
        process.guard.signal(Signal::SIGCONT)?;
        Ok(())
    }

    /// SIGTERM gateway `g` and wait for its clean exit (its audit file is flushed).
    pub async fn terminate_gateway(&mut self, g: usize) -> anyhow::Result<()> {
        let process = self.gateways[g].process.take().context("not running")?;
        process.guard.signal(Signal::SIGCONT)?;
        process.stop(Signal::SIGTERM, Duration::from_secs(20)).await
    }

    /// The HTTP client the sandbox uses.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// An `AdminService` client of every control node: one channel per node, reused, and the last
/// leader seen, shared by clones.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<AdminInner>,
}

struct AdminInner {
    addrs: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    hint: Mutex<Option<String>>,
    next: AtomicUsize,
}

impl Admin {
    /// A client of the control nodes at `addrs` (`host:port`).
    pub fn new(addrs: Vec<String>) -> Self {
        Self {
            inner: Arc::new(AdminInner {
                addrs,
                channels: Mutex::new(HashMap::new()),
                hint: Mutex::new(None),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// A client of the control node at `addr`.
    pub fn client(&self, addr: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        if let Some(channel) = channels.get(addr) {
            return Ok(AdminServiceClient::new(channel.clone()));
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(AdminServiceClient::new(channel))
    }

    /// `message` with the admin token.
    /// Puts policy `id` (any version); the leader's answer.
    pub async fn put_policy(
        &self,
        timeout: Duration,
        id: &str,
        document: &str,
    ) -> anyhow::Result<PutPolicyResponse> {
        let (id, document) = (id.to_owned(), document.to_owned());
        self.write(timeout, |mut client| {
            let request = Admin::request(PutPolicyRequest {
                policy_id: id.clone(),
                document_json: document.clone(),
                expected_version: 0,
            });
            async move { client.put_policy(request).await }
        })
        .await
    }

    /// Puts the HTTP upstream `name` at `url`.
    pub async fn put_upstream(
        &self,
        timeout: Duration,
        name: &str,
        url: &str,
    ) -> anyhow::Result<()> {
        let upstream = UpstreamProto {
            name: name.to_owned(),
            transport: Some(upstream::Transport::Http(HttpTransport {
                url: url.to_owned(),
                ..Default::default()
            })),
        };
        self.write(timeout, |mut client| {
            let request = Admin::request(PutUpstreamRequest {
                upstream: Some(upstream.clone()),
            });
            async move { client.put_upstream(request).await }
        })
        .await?;
        Ok(())
    }

    /// Creates a grant; returns its id and token.
    pub async fn create_grant(
        &self,
        timeout: Duration,
        label: &str,
        server: &str,
        policy: &str,
    ) -> anyhow::Result<(String, String)> {
        let request = CreateGrantRequest {
            label: label.to_owned(),
            server: server.to_owned(),
            policy_id: policy.to_owned(),
        };
        let response = self
            .write(timeout, |mut client| {
                let request = Admin::request(request.clone());
                async move { client.create_grant(request).await }
            })
            .await?;
        let grant = response.grant.context("the answer carries no grant")?;
        Ok((grant.id, response.token))
    }

    pub fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {ADMIN_TOKEN}").parse() {
            request
                .metadata_mut()
                .insert(ADMIN_TOKEN_METADATA_KEY, value);
        }
        request
    }

    /// `ClusterStatus` as the node at `addr` sees it.
    pub async fn status(&self, addr: &str) -> anyhow::Result<ClusterStatusResponse> {
        Ok(self
            .client(addr)?
            .cluster_status(Self::request(ClusterStatusRequest::default()))
            .await?
            .into_inner())
    }

    /// The API address of the leader last seen by a write, if any.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner.hint.lock().ok().and_then(|h| h.clone())
    }

    /// Runs a write on the leader: starts with the last leader seen, follows `tollgate-leader`
    /// on `UNAVAILABLE`, and moves on to the next node when a node does not answer or knows no
    /// leader, until `timeout`. Other errors are returned at once.
    ///
    /// A write whose answer was lost (its node died) is retried: it may then have been applied
    /// twice, which callers that count acknowledgements must allow for.
    pub async fn write<T, F, Fut>(&self, timeout: Duration, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            let addr = match self.leader_hint() {
                Some(addr) => addr,
                None => {
                    let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
                    self.inner.addrs[n % self.inner.addrs.len()].clone()
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(remaining, op(self.client(&addr)?)).await {
                Ok(Ok(response)) => {
                    self.set_hint(Some(addr));
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => bail!("the write did not succeed within {timeout:?}: {last_error:?}"),
            };
            let retryable = matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
            );
            if !retryable {
                return Err(anyhow::Error::new(status).context(format!("write to {addr}")));
            }
            let leader = status
                .metadata()
                .get(LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && *v != addr)
                .map(str::to_owned);
            let known = leader.is_some();
            self.set_hint(leader);
            last_error = Some(status);
            if Instant::now() >= deadline {
                bail!("the write did not succeed within {timeout:?}: {last_error:?}");
            }
            if !known {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    fn set_hint(&self, addr: Option<String>) {
        if let Ok(mut hint) = self.inner.hint.lock() {
            *hint = addr;
        }
    }
}

/// One stateless (2026-07-28) `tools/call` of `tool` at `data/mcp/{server}`.
pub async fn call_tool(
    http: &reqwest::Client,
    data: SocketAddr,
    server: &str,
    token: &str,
    tool: &str,
) -> anyhow::Result<McpAnswer> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": {"text": "x"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let response = http
        .post(format!("http://{data}/mcp/{server}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    // An SSE answer: the response is the last `data:` line.
    let json = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .unwrap_or(text.as_str());
    Ok(McpAnswer {
        status,
        body: serde_json::from_str(json).ok(),
    })
}

/// The value of an unlabelled Prometheus sample `name` in a text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
}

/// A policy that allows everything but `echo`, which it denies with a message carrying `n`, so
/// that every `n` is a distinct document (a distinct version) and a denied `echo` shows which
/// version a gateway enforces.
pub fn deny_echo_policy(n: u64) -> String {
    json!({"version": "1", "default": "allow", "tools": {"echo": {"deny_if": [
        {"conditions": [], "on_deny": format!("echo is off (document {n})")}]}}})
    .to_string()
}

/// A policy that allows every call.
pub const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_parsed_with_its_absent_parts() {
        let gateway =
            Listening::parse("tollgate listening role=gateway data=127.0.0.1:1 admin=127.0.0.1:2");
        assert_eq!(
            gateway,
            Some(Listening {
                data: "127.0.0.1:1".parse().ok(),
                admin: "127.0.0.1:2".parse().ok(),
                api: None,
                raft: None,
            })
        );
        assert_eq!(
            Listening::parse("tollgate gateway listening data_addr=x"),
            None
        );
    }

    #[test]
    fn a_metric_sample_is_found_by_its_exact_name() {
        let text = "# HELP tollgate_config_revision r\n\
                    tollgate_config_revision_total 9\ntollgate_config_revision 42\n";
        assert_eq!(metric_value(text, "tollgate_config_revision"), Some(42));
        assert_eq!(metric_value(text, "absent"), None);
    }
}
