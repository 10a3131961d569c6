//! A conformance-shaped MCP server of our own, serving both protocol eras.
//!
//! Tollgate's tests need an upstream they fully control: one that the official conformance
//! suite is happy with (so the suite can be run directly and through the gateway, and the two
//! pass sets compared), that counts what reached it, and that can be configured into corner
//! cases (legacy only, modern only, JSON or SSE answers, required credentials). It is written
//! by hand on axum rather than with an SDK so that both eras' wire details stay under our
//! control.
//!
//! ```text
//!            ┌───────── streamable.rs ─────────┐        ┌── stdio.rs ──┐
//!  POST/GET/ │ origin/host, credentials, era   │        │ line framing │
//!  DELETE ──►│ legacy: sessions + sse.rs logs  │        │ both eras    │
//!            │ modern: header/_meta checks     │        └──────┬───────┘
//!            └───────────────┬─────────────────┘               │
//!                            ▼                                 ▼
//!                 engine.rs (methods, tools, ask) ◄── catalog.rs, state.rs
//! ```
//!
//! Start one in-process with [`Upstream::start`], or run the `tollgate-test-upstream` binary
//! (`--http ADDR` or `--stdio`) when a real child process is needed.

mod catalog;
mod engine;
mod rpc;
mod sse;
mod state;
mod stdio;
mod streamable;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use engine::ServerEvent;
pub use rpc::{LEGACY_VERSIONS, MODERN_VERSION, RpcError};
pub use stdio::serve_stdio;

/// Which protocol eras the upstream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eras {
    /// Handshake era only (2025-11-25, 2025-06-18, ...), like the npm SDK 1.x servers.
    LegacyOnly,
    /// 2026-07-28 only: stateless, no sessions.
    ModernOnly,
    /// Both, chosen per request (like the Python `mcp` 2.x servers).
    #[default]
    Both,
}

/// How POSTed requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseMode {
    /// One JSON body. Legacy-era notifications emitted while handling go to the session's GET
    /// stream; modern requests that opt in to progress or logging still get an SSE stream.
    Json,
    /// An SSE stream (legacy: with a priming event and resumable event ids).
    #[default]
    Sse,
}

/// A handler for an extra tool: gets the call's `arguments`, returns a `CallToolResult` or a
/// JSON-RPC error.
pub type ToolHandler = Arc<dyn Fn(&Value) -> Result<Value, RpcError> + Send + Sync>;

/// A tool added to the built-in ones.
#[derive(Clone)]
pub struct ExtraTool {
    /// The tool definition as listed by `tools/list` (must have `name`).
    pub definition: Value,
    /// What calling it does.
    pub handler: ToolHandler,
}

impl ExtraTool {
    /// A tool named `name` with an empty-object input schema.
    pub fn new(
        name: &str,
        description: &str,
        handler: impl Fn(&Value) -> Result<Value, RpcError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            definition: serde_json::json!({
                "name": name,
                "description": description,
                "inputSchema": { "type": "object", "additionalProperties": true }
            }),
            handler: Arc::new(handler),
        }
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        self.definition
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

impl fmt::Debug for ExtraTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraTool")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

/// Options of an [`Upstream`].
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Eras served.
    pub eras: Eras,
    /// JSON or SSE answers to POSTs.
    pub response_mode: ResponseMode,
    /// Headers every HTTP request must carry with exactly these values, else 401 (used to test
    /// that the gateway injects upstream credentials).
    pub required_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Tools added after the built-in ones.
    pub extra_tools: Vec<ExtraTool>,
    /// Reject foreign `Host` and `Origin` headers (DNS-rebinding protection). On by default.
    pub validate_origin: bool,
    /// `serverInfo.name`.
    pub name: String,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            eras: Eras::Both,
            response_mode: ResponseMode::Sse,
            required_headers: Vec::new(),
            extra_tools: Vec::new(),
            validate_origin: true,
            name: "tollgate-test-upstream".into(),
        }
    }
}

impl UpstreamOptions {
    /// Sets the eras.
    pub fn eras(mut self, eras: Eras) -> Self {
        self.eras = eras;
        self
    }

    /// Sets the response mode.
    pub fn response_mode(mut self, mode: ResponseMode) -> Self {
        self.response_mode = mode;
        self
    }

    /// Requires `name: value` on every request.
    pub fn require_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.required_headers.push((
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        ));
        self
    }

    /// Adds a tool.
    pub fn extra_tool(mut self, tool: ExtraTool) -> Self {
        self.extra_tools.push(tool);
        self
    }
}

/// Counters shared by the transports.
#[derive(Debug, Default)]
pub struct StatsInner {
    tool_calls: BTreeMap<String, u64>,
    last_headers: Option<http::HeaderMap>,
    http_requests: u64,
    sessions_opened: u64,
}

/// A snapshot of what the upstream received.
#[derive(Debug, Clone, Default)]
pub struct UpstreamStats {
    /// `tools/call` requests received, per tool name (unknown names included).
    pub tool_calls: BTreeMap<String, u64>,
    /// Headers of the last HTTP request (any method, accepted or not).
    pub last_headers: Option<http::HeaderMap>,
    /// HTTP requests received.
    pub http_requests: u64,
    /// Legacy sessions opened.
    pub sessions_opened: u64,
}

impl UpstreamStats {
    /// `tools/call` requests received for `tool`.
    pub fn calls(&self, tool: &str) -> u64 {
        self.tool_calls.get(tool).copied().unwrap_or(0)
    }

    /// All `tools/call` requests received.
    pub fn total_calls(&self) -> u64 {
        self.tool_calls.values().sum()
    }

    /// The value of `name` in the last request's headers.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.last_headers
            .as_ref()?
            .get(name)?
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

fn snapshot(stats: &Mutex<StatsInner>) -> UpstreamStats {
    let s = stats.lock();
    UpstreamStats {
        tool_calls: s.tool_calls.clone(),
        last_headers: s.last_headers.clone(),
        http_requests: s.http_requests,
        sessions_opened: s.sessions_opened,
    }
}

/// Entry point: starts upstreams.
pub struct Upstream;

impl Upstream {
    /// Starts an HTTP upstream on `127.0.0.1:0`.
    pub async fn start(opts: UpstreamOptions) -> anyhow::Result<RunningUpstream> {
        Self::start_on("127.0.0.1:0".parse()?, opts).await
    }

    /// Starts an HTTP upstream on `addr` (port 0 picks a free port).
    pub async fn start_on(
        addr: SocketAddr,
        opts: UpstreamOptions,
    ) -> anyhow::Result<RunningUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = streamable::Shared::new(opts, shutdown_rx.clone());
        let engine = shared.engine();
        let app = streamable::router(shared);
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            let graceful = async move {
                // Resolves when `true` is sent or the sender is dropped.
                let _ = stop.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::warn!(error = %e, "test upstream server stopped with an error");
            }
        });
        Ok(RunningUpstream {
            url: format!("http://{addr}/mcp"),
            addr,
            engine,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

/// A running HTTP upstream; shuts down when dropped.
pub struct RunningUpstream {
    /// `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    engine: Arc<engine::Engine>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningUpstream {
    /// What the upstream received so far.
    pub fn stats(&self) -> UpstreamStats {
        snapshot(self.engine.stats())
    }

    /// Announces an event to every open GET and `subscriptions/listen` stream.
    pub fn publish(&self, event: ServerEvent) {
        self.engine.publish(event);
    }

    /// Stops accepting, ends open streams and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningUpstream {
    fn drop(&mut self) {
        // Ends SSE streams and stops the listener; the task finishes on its own.
        let _ = self.shutdown.send(true);
    }
}

impl fmt::Debug for RunningUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningUpstream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}
