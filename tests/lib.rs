//! End-to-end harness: the real gateway on loopback port 0 in front of real upstreams.
//!
//! The suites live in `tests/tests/*.rs`. [`Gateway`] starts `tollgate_gateway` in-process from a
//! configuration written the way an operator writes it (TOML, policy files on disk), so the
//! configuration path is exercised too; [`Raw`] speaks plain HTTP to it for the checks a real
//! client library would refuse to make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};
use tollgate_gateway::RunningGateway;
use tollgate_gateway::config::Config;

/// The seed's policy, unchanged.
pub const SEED_POLICY: &str = include_str!("../examples/policies/seed.json");
/// A policy that allows everything.
pub const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;

/// One upstream for [`GatewayBuilder`].
pub enum UpstreamSpec {
    /// Streamable HTTP at a URL, with headers to inject.
    Http {
        url: String,
        headers: Vec<(String, String)>,
        /// `tls_*` keys and their file paths (see `https_upstream`).
        tls: Vec<(String, PathBuf)>,
    },
    /// A stdio command.
    Stdio { command: String, args: Vec<String> },
}

/// One grant for [`GatewayBuilder`].
pub struct GrantSpec {
    pub label: String,
    pub token: String,
    pub server: String,
    /// Policy JSON; `None` means a grant without a policy.
    pub policy: Option<String>,
}

/// Builds a gateway configuration in a temporary directory.
pub struct GatewayBuilder {
    upstreams: Vec<(String, UpstreamSpec)>,
    grants: Vec<GrantSpec>,
    session_keys: Vec<(String, [u8; 32])>,
    node_id: String,
    extra: String,
    clock: Option<tollgate_quota::ManualClock>,
    dir: tempfile::TempDir,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    pub fn new() -> Self {
        Self {
            upstreams: Vec::new(),
            grants: Vec::new(),
            session_keys: vec![("k1".to_owned(), [7u8; 32])],
            node_id: "test-node".to_owned(),
            extra: String::new(),
            clock: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn http_upstream(mut self, name: &str, url: &str) -> Self {
        self.upstreams.push((
            name.to_owned(),
            UpstreamSpec::Http {
                url: url.to_owned(),
                headers: Vec::new(),
                tls: Vec::new(),
            },
        ));
        self
    }

    pub fn http_upstream_with_headers(
        mut self,
        name: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        self.upstreams.push((
            name.to_owned(),
            UpstreamSpec::Http {
                url: url.to_owned(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tls: Vec::new(),
            },
        ));
        self
    }

    pub fn stdio_upstream(mut self, name: &str, command: &str, args: &[&str]) -> Self {
        self.upstreams.push((
            name.to_owned(),
            UpstreamSpec::Stdio {
                command: command.to_owned(),
                args: args.iter().map(|a| a.to_string()).collect(),
            },
        ));
        self
    }

    pub fn grant(mut self, label: &str, token: &str, server: &str, policy: Option<&str>) -> Self {
        self.grants.push(GrantSpec {
            label: label.to_owned(),
            token: token.to_owned(),
            server: server.to_owned(),
            policy: policy.map(str::to_owned),
        });
        self
    }

    pub fn session_keys(mut self, keys: &[(&str, [u8; 32])]) -> Self {
        self.session_keys = keys.iter().map(|(id, k)| (id.to_string(), *k)).collect();
        self
    }

    /// Rate-limit windows follow `clock` instead of the system clock, so a test's calls cannot
    /// straddle a window boundary by chance, and a test can move to the next window at will.
    pub fn quota_clock(mut self, clock: &tollgate_quota::ManualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    /// This node's id (node-local sessions are bound to it).
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = id.to_owned();
        self
    }

    /// Raw TOML appended to the generated file (e.g. a `[limits]` table).
    pub fn extra_toml(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// The configuration text this builder writes.
    pub fn toml(&self) -> anyhow::Result<String> {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut text = String::new();
        text.push_str(&format!("node_id = {}\n", q(&self.node_id)));
        text.push_str(&self.extra);
        text.push_str("[listen]\ndata = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n");
        text.push_str("[audit]\npath = \"audit.jsonl\"\n\n");
        for (id, key) in &self.session_keys {
            text.push_str(&format!(
                "[[sessions.keys]]\nid = {}\nsecret = \"{}\"\n\n",
                q(id),
                hex(key)
            ));
        }
        for (name, spec) in &self.upstreams {
            text.push_str(&format!("[[upstreams]]\nname = {}\n", q(name)));
            match spec {
                UpstreamSpec::Http { url, headers, tls } => {
                    text.push_str(&format!("url = {}\n", q(url)));
                    for (key, path) in tls {
                        text.push_str(&format!("{key} = {}\n", q(&path.display().to_string())));
                    }
                    if !headers.is_empty() {
                        let pairs: Vec<String> = headers
                            .iter()
                            .map(|(k, v)| format!("{} = {}", q(k), q(v)))
                            .collect();
                        text.push_str(&format!("headers = {{ {} }}\n", pairs.join(", ")));
                    }
                }
                UpstreamSpec::Stdio { command, args } => {
                    text.push_str(&format!("command = {}\n", q(command)));
                    let args: Vec<String> = args.iter().map(|a| q(a)).collect();
                    text.push_str(&format!("args = [{}]\n", args.join(", ")));
                }
            }
            text.push('\n');
        }
        for (i, grant) in self.grants.iter().enumerate() {
            text.push_str(&format!(
                "[[grants]]\nlabel = {}\ntoken_sha256 = \"{}\"\nserver = {}\n",
                q(&grant.label),
                hex(&tollgate_gateway::config::token_hash(&grant.token)),
                q(&grant.server)
            ));
            if let Some(policy) = &grant.policy {
                let file = format!("policy-{i}.json");
                std::fs::write(self.dir.path().join(&file), policy)?;
                text.push_str(&format!("policy = {}\n", q(&file)));
            }
            text.push('\n');
        }
        Ok(text)
    }

    /// Writes the configuration, loads it exactly as `tollgate serve --config` does, and starts.
    pub async fn start(self) -> anyhow::Result<Gateway> {
        let text = self.toml()?;
        let path = self.dir.path().join("tollgate.toml");
        std::fs::write(&path, &text)?;
        let config = Config::load(&path, &tollgate_gateway::config::ProcessEnv)
            .map_err(|e| anyhow::anyhow!("config rejected:\n{e}\n---\n{text}"))?;
        let running = match &self.clock {
            None => tollgate_gateway::start(config).await,
            Some(clock) => {
                let quota =
                    std::sync::Arc::new(tollgate_quota::LocalQuota::with_clock(clock.clone()));
                let metrics = std::sync::Arc::new(tollgate_telemetry::Metrics::new());
                tollgate_gateway::start_with(config, metrics, quota).await
            }
        }
        .context("starting the gateway")?;
        Ok(Gateway {
            audit_path: self.dir.path().join("audit.jsonl"),
            running: Some(running),
            _dir: self.dir,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running gateway and its files.
pub struct Gateway {
    pub audit_path: PathBuf,
    running: Option<RunningGateway>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn running(&self) -> &RunningGateway {
        self.running.as_ref().expect("running")
    }

    /// `http://127.0.0.1:PORT/mcp/{server}`
    pub fn url(&self, server: &str) -> String {
        format!("http://{}/mcp/{server}", self.running().data_addr)
    }

    /// Rewrites the policy file of grant number `index` (in builder order).
    pub fn write_policy(&self, index: usize, policy: &str) {
        std::fs::write(
            self._dir.path().join(format!("policy-{index}.json")),
            policy,
        )
        .expect("policy written");
    }

    /// Re-reads the configuration file, as SIGHUP does.
    pub fn reload(&self) -> tollgate_gateway::ReloadReport {
        self.running()
            .reload_from(&self._dir.path().join("tollgate.toml"))
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running().admin_addr)
    }

    /// Stops the gateway (flushing the audit log), handing its directory to the caller so the
    /// audit file outlives it.
    pub async fn stop(mut self) -> (PathBuf, tempfile::TempDir) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        (self.audit_path.clone(), self._dir)
    }
}

/// A plain HTTP client for raw protocol checks.
#[derive(Clone)]
pub struct Raw {
    pub client: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
}

/// One raw answer.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl RawReply {
    /// The body as JSON (the last `data:` of an SSE body, if it is one).
    pub fn json(&self) -> Value {
        if let Ok(v) = serde_json::from_str(&self.body) {
            return v;
        }
        self.sse_messages().pop().unwrap_or(Value::Null)
    }

    /// Every `data:` message of an SSE body, parsed.
    pub fn sse_messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for block in self.body.split("\n\n") {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str(&data.join("\n")) {
                out.push(v);
            }
        }
        out
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Raw {
    pub fn new(url: &str, token: Option<&str>) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: url.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    /// POSTs `body` with the standard headers plus `headers`.
    pub async fn post(&self, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> RawReply {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.body(body).send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        RawReply {
            status,
            headers,
            body,
        }
    }

    /// A modern (2026-07-28) request with matching headers.
    pub async fn modern(&self, id: u64, method: &str, mut params: Value) -> RawReply {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        let name = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(name) = &name {
            headers.push(("mcp-name", name.as_str()));
        }
        self.post(body.to_string(), &headers).await
    }

    /// A legacy `initialize`; returns the session id.
    pub async fn initialize(&self) -> anyhow::Result<String> {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}});
        let reply = self.post(body.to_string(), &[]).await;
        anyhow::ensure!(reply.status == 200, "initialize: {reply:?}");
        let session = reply
            .header("mcp-session-id")
            .context("initialize answered without a session id")?;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let reply = self
            .post(
                initialized.to_string(),
                &[
                    ("mcp-session-id", &session),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
            )
            .await;
        anyhow::ensure!(reply.status == 202, "initialized: {reply:?}");
        Ok(session)
    }

    /// A legacy request in `session`.
    pub async fn legacy(&self, session: &str, id: u64, method: &str, params: Value) -> RawReply {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.post(
            body.to_string(),
            &[
                ("mcp-session-id", session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
        .await
    }
}

/// The common case: one HTTP upstream named `up`, one grant `g` with `token` under `policy`.
pub async fn one_upstream(url: &str, token: &str, policy: &str) -> Gateway {
    GatewayBuilder::new()
        .http_upstream("up", url)
        .grant("g", token, "up", Some(policy))
        .start()
        .await
        .expect("the gateway starts")
}

/// A real MCP client (rmcp) through the gateway at `url` with the bearer `token`: the legacy
/// `initialize` handshake, or the modern (2026-07-28) `server/discover` lifecycle.
pub async fn mcp_client(
    url: &str,
    token: &str,
    modern: bool,
) -> rmcp::service::RunningService<rmcp::service::RoleClient, ()> {
    use rmcp::ServiceExt as _;
    use rmcp::service::ClientServiceExt as _;
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.to_owned(),
        )
        .auth_header(token),
    );
    if modern {
        ().serve_with_lifecycle(
            transport,
            rmcp::service::ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("modern client connects")
    } else {
        ().serve(transport).await.expect("legacy client connects")
    }
}

/// Reads every record of an audit file.
pub fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Installs a test subscriber once (logs at `RUST_LOG`, default warn).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

// =================================================================================================
// Interop harness: software nobody here wrote (the Python SDK, server-everything, mcp-server-time,
// the official conformance suite), found through the TOLLGATE_* variables of
// scripts/tools-env.sh, started as guarded child processes on loopback, and a header-injecting
// proxy for clients that cannot send our bearer token.
// =================================================================================================

/// External tools, child processes, the conformance suite and the bearer-injecting proxy.
///
/// Tools are located through environment variables (`source scripts/tools-env.sh`). A missing
/// one makes the calling test fail when `TOLLGATE_REQUIRE_TOOLS=1` (scripts/test.sh, CI), and
/// otherwise print a loud skip line and return early: a developer without `.tools/` can still
/// run `cargo test`, CI cannot silently skip.
pub mod interop {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use http_body_util::BodyExt as _;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use serde_json::Value;
    use tollgate_testkit::{ChildGuard, wait_for};

    /// The repository root.
    pub fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf()
    }

    /// `tests/interop/<name>`: the Python scripts.
    pub fn interop_script(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("interop")
            .join(name)
    }

    /// The files named by `vars`, or `None` (after a loud skip line) when one is unset or
    /// missing. Panics instead when `TOLLGATE_REQUIRE_TOOLS=1`.
    pub fn tools(test: &str, vars: &[&str]) -> Option<Vec<PathBuf>> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for var in vars {
            match std::env::var_os(var).map(PathBuf::from) {
                Some(path) if path.is_file() => found.push(path),
                Some(path) => missing.push(format!("{var}={} (no such file)", path.display())),
                None => missing.push(format!("{var} (unset)")),
            }
        }
        if missing.is_empty() {
            return Some(found);
        }
        skip_or_fail(test, &missing.join(", "));
        None
    }

    /// `Some(path)` when `path` is a file; otherwise the same skip-or-fail rule as [`tools`].
    pub fn tool_file(test: &str, path: PathBuf) -> Option<PathBuf> {
        if path.is_file() {
            return Some(path);
        }
        skip_or_fail(test, &format!("{} (no such file)", path.display()));
        None
    }

    fn skip_or_fail(test: &str, what: &str) {
        if std::env::var("TOLLGATE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!(
                "{test}: TOLLGATE_REQUIRE_TOOLS=1 but {what}: run scripts/install-tools.sh and `source scripts/tools-env.sh`"
            );
        }
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing
        // tests, and a skip must be seen.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED {test}: {what}. Run scripts/install-tools.sh and `source scripts/tools-env.sh` (scripts/test.sh does both and makes this a failure). !!!!!!!!\n"
        );
    }

    /// A loopback port that was free a moment ago: bound on 127.0.0.1:0, then released. Only for
    /// programs that cannot be told to bind port 0 and report it (server-everything).
    pub fn free_loopback_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.local_addr().expect("local addr").port()
    }

    /// A guarded child process in its own process group (so that whatever it starts dies with
    /// it), with its stdout lines and its stderr collected.
    pub struct Process {
        name: String,
        guard: ChildGuard,
        lines: std::sync::mpsc::Receiver<String>,
        stdout: Arc<Mutex<String>>,
        stderr: Arc<Mutex<String>>,
    }

    impl Process {
        /// Spawns `cmd` with piped stdout and stderr.
        pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
            use std::os::unix::process::CommandExt as _;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let mut guard = ChildGuard::spawn(&mut cmd)?;
            let child = guard.child_mut().context("guard without child")?;
            let out = child.stdout.take().context("no stdout")?;
            let err = child.stderr.take().context("no stderr")?;
            let (tx, lines) = std::sync::mpsc::channel();
            let stdout = Arc::new(Mutex::new(String::new()));
            let stdout_copy = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    stdout_copy.lock().unwrap().push_str(&line);
                    stdout_copy.lock().unwrap().push('\n');
                    let _ = tx.send(line);
                }
            });
            let stderr = Arc::new(Mutex::new(String::new()));
            let stderr_copy = stderr.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(err);
                let mut buf = [0u8; 8192];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut text = stderr_copy.lock().unwrap();
                    // Keep the tail only: a chatty server must not grow without bound.
                    if text.len() > 256 * 1024 {
                        let cut = text.len() - 128 * 1024;
                        let cut = (cut..text.len())
                            .find(|i| text.is_char_boundary(*i))
                            .unwrap_or(0);
                        text.drain(..cut);
                    }
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            Ok(Self {
                name: name.to_owned(),
                guard,
                lines,
                stdout,
                stderr,
            })
        }

        /// The process id.
        pub fn pid(&self) -> u32 {
            self.guard.pid()
        }

        /// Waits for a stdout line starting with `prefix` and returns the rest of it.
        pub async fn line_with_prefix(
            &mut self,
            prefix: &str,
            timeout: Duration,
        ) -> anyhow::Result<String> {
            let deadline = Instant::now() + timeout;
            loop {
                match self.lines.try_recv() {
                    Ok(line) => {
                        if let Some(rest) = line.strip_prefix(prefix) {
                            return Ok(rest.trim().to_owned());
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        anyhow::bail!(
                            "{} closed stdout before printing {prefix:?}; stderr:\n{}",
                            self.name,
                            self.stderr()
                        )
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "{} printed no {prefix:?} line within {timeout:?}; stderr:\n{}",
                        self.name,
                        self.stderr()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// Waits for the process to exit; returns its whole stdout.
        pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<String> {
            let name = self.name.clone();
            if wait_for(timeout, || self.guard.has_exited()).await.is_err() {
                anyhow::bail!(
                    "{name} did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            // The reader thread sees EOF right after the exit; wait for it to drain.
            let _ = wait_for(Duration::from_secs(5), || {
                matches!(
                    self.lines.try_recv(),
                    Err(std::sync::mpsc::TryRecvError::Disconnected)
                )
            })
            .await;
            Ok(self.stdout.lock().unwrap().clone())
        }

        /// What the process wrote on stderr so far (its tail).
        pub fn stderr(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }
    }

    impl Drop for Process {
        fn drop(&mut self) {
            // The whole group first (children the process started), then the guard kills and
            // reaps the process itself.
            if let Ok(pid) = i32::try_from(self.guard.pid()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Runs tests/interop/client.py (the Python SDK client) with `plan` and returns the JSON
    /// line it prints.
    pub async fn run_python_client(python: &Path, plan: &Value) -> anyhow::Result<Value> {
        let mut cmd = Command::new(python);
        cmd.arg(interop_script("client.py")).arg(plan.to_string());
        let process = Process::spawn("python client", cmd)?;
        let stderr_handle = process.stderr.clone();
        let stdout = process.finish(Duration::from_secs(120)).await?;
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let stderr = stderr_handle.lock().unwrap().clone();
        let line = line.with_context(|| {
            format!("python client printed no result\nstdout:\n{stdout}\nstderr:\n{stderr}")
        })?;
        serde_json::from_str(line).with_context(|| format!("python client printed {line}"))
    }

    /// Waits until something accepts TCP connections on `addr`.
    pub async fn wait_until_listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        tollgate_testkit::wait_for_async(timeout, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
        .with_context(|| format!("nothing listens on {addr}"))
    }

    /// A loopback HTTP/1.1 proxy that forwards every request unchanged (method, path, query,
    /// every header including `Host` and `Origin`, the body, streamed both ways) to `target`,
    /// adding `headers` (replacing same-named ones).
    ///
    /// It exists because the official conformance suite cannot send an `Authorization` header,
    /// and the gateway, rightly, refuses requests without its grant token. The proxy stands where
    /// an operator's agent would sit: it holds the token, the gateway stays strict.
    pub struct HeaderProxy {
        /// The proxy's address (127.0.0.1, a kernel-chosen port).
        pub addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl HeaderProxy {
        /// Starts the proxy in front of `target`.
        pub async fn start(
            target: SocketAddr,
            headers: Vec<(http::HeaderName, http::HeaderValue)>,
        ) -> anyhow::Result<Self> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let client: hyper_util::client::legacy::Client<_, Incoming> =
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
            let headers = Arc::new(headers);
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let client = client.clone();
                    let headers = headers.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            forward(client.clone(), target, headers.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Ok(Self { addr, task })
        }

        /// `http://ADDR` + `path`.
        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    impl Drop for HeaderProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Hop-by-hop headers (RFC 9110 7.6.1): a proxy does not forward them.
    const HOP_BY_HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    type ProxyClient = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Incoming,
    >;

    async fn forward(
        client: ProxyClient,
        target: SocketAddr,
        headers: Arc<Vec<(http::HeaderName, http::HeaderValue)>>,
        req: hyper::Request<Incoming>,
    ) -> Result<
        hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>>,
        std::convert::Infallible,
    > {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        parts.uri = format!("http://{target}{path}")
            .parse()
            .expect("proxied uri");
        for name in HOP_BY_HOP {
            parts.headers.remove(*name);
        }
        for (name, value) in headers.iter() {
            parts.headers.insert(name.clone(), value.clone());
        }
        match client
            .request(hyper::Request::from_parts(parts, body))
            .await
        {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(*name);
                }
                Ok(hyper::Response::from_parts(parts, body.boxed()))
            }
            Err(e) => {
                let mut response = hyper::Response::new(
                    http_body_util::Full::new(bytes::Bytes::from(format!("proxy error: {e}")))
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                Ok(response)
            }
        }
    }

    /// Which conformance suite `scripts/conformance.sh` runs.
    #[derive(Debug, Clone, Copy)]
    pub enum Suite {
        /// 0.1.16 (2025-06-18 / 2025-11-25).
        Legacy,
        /// 0.2.0-alpha.12, at `--spec-version` 2025-11-25 and 2026-07-28.
        Modern,
    }

    /// Runs `scripts/conformance.sh URL OUT legacy|modern` and returns the lines of its
    /// `results.txt` (`<run>/<scenario>/<check>: STATUS`).
    pub async fn run_conformance(
        url: &str,
        out: &Path,
        suite: Suite,
    ) -> anyhow::Result<Vec<String>> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/conformance.sh"))
            .arg(url)
            .arg(out)
            .arg(match suite {
                Suite::Legacy => "legacy",
                Suite::Modern => "modern",
            });
        let process = Process::spawn(&format!("conformance {suite:?} against {url}"), cmd)?;
        process.finish(Duration::from_secs(240)).await?;
        let text = std::fs::read_to_string(out.join("results.txt"))
            .with_context(|| format!("no results.txt in {}", out.display()))?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// The checks whose status differs between two `results.txt` line sets, one line each:
    /// `<check>: <direct status> directly, <other status> through tollgate` (`absent` when a
    /// side lacks the check).
    pub fn diff_results(direct: &[String], through: &[String]) -> Vec<String> {
        use std::collections::BTreeMap;
        let parse = |lines: &[String]| -> BTreeMap<String, String> {
            lines
                .iter()
                .filter_map(|l| l.rsplit_once(": "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        let (a, b) = (parse(direct), parse(through));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                format!(
                    "{k}: {} directly, {} through tollgate",
                    a.get(k).map_or("absent", String::as_str),
                    b.get(k).map_or("absent", String::as_str)
                )
            })
            .collect()
    }

    /// How many lines end in `: STATUS`.
    pub fn count_status(lines: &[String], status: &str) -> usize {
        let suffix = format!(": {status}");
        lines.iter().filter(|l| l.ends_with(&suffix)).count()
    }
}

// =================================================================================================
// HTTPS upstreams (tests/tests/tls.rs): the builder's `tls_*` keys. The certificates and the
// TLS-terminating upstream live in that suite, which alone needs rcgen and tokio-rustls.
// =================================================================================================

impl GatewayBuilder {
    /// An `https://` upstream trusting `ca_file` (a PEM bundle) besides the platform's store;
    /// `None` trusts the platform's store alone.
    pub fn https_upstream(self, name: &str, url: &str, ca_file: Option<&Path>) -> Self {
        let keys: Vec<(&str, &Path)> = ca_file.map(|f| ("tls_ca_file", f)).into_iter().collect();
        self.https_upstream_with(name, url, &keys)
    }

    /// An `https://` upstream with any `tls_*` keys (`tls_ca_file`, `tls_client_cert`,
    /// `tls_client_key`), each naming a file.
    pub fn https_upstream_with(mut self, name: &str, url: &str, tls: &[(&str, &Path)]) -> Self {
        self.upstreams.push((
            name.to_owned(),
            UpstreamSpec::Http {
                url: url.to_owned(),
                headers: Vec::new(),
                tls: tls
                    .iter()
                    .map(|(k, p)| (k.to_string(), p.to_path_buf()))
                    .collect(),
            },
        ));
        self
    }
}
