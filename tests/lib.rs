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
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn http_upstream(mut self, name: &str, url: &str) -> Self {
        self.upstreams.push((
            name.to_owned(),
            UpstreamSpec::Http {
                url: url.to_owned(),
                headers: Vec::new(),
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
                UpstreamSpec::Http { url, headers } => {
                    text.push_str(&format!("url = {}\n", q(url)));
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
        let running = tollgate_gateway::start(config)
            .await
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
