//! Method dispatch shared by every transport (legacy HTTP, modern HTTP, stdio).
//!
//! A transport parses a message, decides its era, builds a [`Ctx`] and calls
//! [`Engine::handle`]. Everything a handler wants to say *before* its final answer (progress,
//! log messages, server-to-client requests in the legacy era, "close this SSE stream now") goes
//! through `Ctx::out`; the transport decides where it lands (the POST's SSE stream, the
//! standalone GET stream, stdout).
//!
//! Tools that need something from the client are written once against [`Engine::ask`]:
//!
//! ```text
//!   legacy:  ask -> send elicitation/create on the stream -> await the client's POSTed response
//!   modern:  ask -> inputResponses[key] present?  yes -> use it
//!                                                no  -> return input_required + sealed requestState
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::catalog;
use super::rpc::{self, META_SERVER_INFO, MODERN_VERSION, RpcError, code};
use super::state::StateSealer;
use super::{ExtraTool, StatsInner};

/// How long a legacy server-to-client request waits for the client's answer.
const CLIENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Which protocol era a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraKind {
    /// Handshake era (2025-11-25 and before): sessions, server-to-client requests.
    Legacy,
    /// 2026-07-28: stateless, `_meta` on every request, `input_required`.
    Modern,
}

/// Something a handler emits before its final answer.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON-RPC notification or server-to-client request.
    Message(Value),
    /// Ask the transport to close the request's SSE stream now (the client resumes with GET).
    CloseStream,
}

/// Server-wide events delivered to standalone GET streams and `subscriptions/listen` streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The tool list changed.
    ToolsListChanged,
    /// The prompt list changed.
    PromptsListChanged,
    /// The resource list changed.
    ResourcesListChanged,
    /// One resource changed.
    ResourceUpdated(String),
}

impl ServerEvent {
    /// The notification announcing this event.
    pub fn to_notification(&self) -> Value {
        match self {
            Self::ToolsListChanged => {
                rpc::notification("notifications/tools/list_changed", json!({}))
            }
            Self::PromptsListChanged => {
                rpc::notification("notifications/prompts/list_changed", json!({}))
            }
            Self::ResourcesListChanged => {
                rpc::notification("notifications/resources/list_changed", json!({}))
            }
            Self::ResourceUpdated(uri) => {
                rpc::notification("notifications/resources/updated", json!({ "uri": uri }))
            }
        }
    }
}

/// Waiters for the answers to server-to-client requests (legacy era).
#[derive(Default)]
pub struct Pending {
    next: AtomicU64,
    waiters: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
}

impl Pending {
    /// Allocates a request id and a receiver for its answer.
    pub fn register(&self) -> (Value, oneshot::Receiver<Result<Value, Value>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = Value::String(format!("srv-{n}"));
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id.to_string(), tx);
        (id, rx)
    }

    /// Hands a client's answer to its waiter; false when nobody waits for that id.
    pub fn resolve(&self, id: &Value, outcome: Result<Value, Value>) -> bool {
        match self.waiters.lock().remove(&id.to_string()) {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}

/// Log levels in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// debug
    Debug,
    /// info
    Info,
    /// notice
    Notice,
    /// warning
    Warning,
    /// error
    Error,
    /// critical
    Critical,
    /// alert
    Alert,
    /// emergency
    Emergency,
}

impl LogLevel {
    /// Parses an MCP log level name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "debug" => Self::Debug,
            "info" => Self::Info,
            "notice" => Self::Notice,
            "warning" => Self::Warning,
            "error" => Self::Error,
            "critical" => Self::Critical,
            "alert" => Self::Alert,
            "emergency" => Self::Emergency,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Notice => "notice",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
            Self::Alert => "alert",
            Self::Emergency => "emergency",
        }
    }
}

/// Per-request context built by the transport.
pub struct Ctx {
    /// The request's era.
    pub era: EraKind,
    /// Where intermediate messages go; `None` drops them.
    pub out: Option<mpsc::UnboundedSender<Outbound>>,
    /// Waiters for server-to-client requests (legacy era only).
    pub pending: Option<Arc<Pending>>,
    /// The client's declared capabilities.
    pub client_caps: Value,
    /// Minimum level of log messages to send; `None` sends none.
    pub log_level: Option<LogLevel>,
    /// `params._meta.progressToken`, if any.
    pub progress_token: Option<Value>,
}

impl Ctx {
    fn send(&self, message: Value) {
        if let Some(out) = &self.out {
            // A closed receiver means the client went away; nothing to do about it here.
            let _ = out.send(Outbound::Message(message));
        }
    }

    fn log(&self, level: LogLevel, data: &str) {
        if self.log_level.is_some_and(|min| level >= min) {
            self.send(rpc::notification(
                "notifications/message",
                json!({ "level": level.as_str(), "logger": "tollgate-test-upstream", "data": data }),
            ));
        }
    }

    fn progress(&self, progress: u64, total: u64, message: &str) {
        if let Some(token) = &self.progress_token {
            self.send(rpc::notification(
                "notifications/progress",
                json!({ "progressToken": token, "progress": progress, "total": total, "message": message }),
            ));
        }
    }

    fn has_capability(&self, cap: &str) -> bool {
        self.client_caps.get(cap).is_some_and(Value::is_object)
    }
}

/// How a tool or prompt handler stops short of a normal result.
#[derive(Debug)]
pub enum Flow {
    /// A JSON-RPC error.
    Error(RpcError),
    /// A modern `input_required` result (already complete JSON).
    InputRequired(Value),
    /// A tool execution failure: an `isError` result with this text.
    ToolError(String),
}

impl From<RpcError> for Flow {
    fn from(e: RpcError) -> Self {
        Flow::Error(e)
    }
}

/// One thing a handler needs from the client.
struct Ask {
    key: &'static str,
    method: &'static str,
    params: Value,
}

fn capability_for(method: &str) -> &'static str {
    match method {
        "sampling/createMessage" => "sampling",
        "roots/list" => "roots",
        _ => "elicitation",
    }
}

fn text(s: impl Into<String>) -> Value {
    json!({ "type": "text", "text": s.into() })
}

fn text_result(s: impl Into<String>) -> Value {
    json!({ "content": [text(s)] })
}

fn elicit(message: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "message": message,
        "requestedSchema": { "type": "object", "properties": properties, "required": required }
    })
}

fn sample(prompt: &str, max_tokens: u64) -> Value {
    json!({ "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }], "maxTokens": max_tokens })
}

/// The shared request handler.
pub struct Engine {
    name: String,
    extra_tools: Vec<ExtraTool>,
    sealer: StateSealer,
    events: broadcast::Sender<ServerEvent>,
    stats: Arc<Mutex<StatsInner>>,
}

impl Engine {
    /// A new engine.
    pub fn new(name: String, extra_tools: Vec<ExtraTool>, stats: Arc<Mutex<StatsInner>>) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            name,
            extra_tools,
            sealer: StateSealer::random(),
            events,
            stats,
        }
    }

    /// Subscribes to server-wide events.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    /// Publishes a server-wide event.
    pub fn publish(&self, event: ServerEvent) {
        // No subscriber is fine: nobody listens right now.
        let _ = self.events.send(event);
    }

    /// The shared stats.
    pub fn stats(&self) -> &Arc<Mutex<StatsInner>> {
        &self.stats
    }

    fn server_info(&self) -> Value {
        json!({ "name": self.name, "version": env!("CARGO_PKG_VERSION") })
    }

    fn capabilities() -> Value {
        json!({
            "tools": { "listChanged": true },
            "prompts": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "completions": {},
            "logging": {}
        })
    }

    /// The result of a legacy `initialize` negotiated to `version`.
    pub fn initialize_result(&self, version: &str) -> Value {
        json!({
            "protocolVersion": version,
            "capabilities": Self::capabilities(),
            "serverInfo": self.server_info(),
            "instructions": "Tollgate's conformance-shaped test upstream."
        })
    }

    /// The result of a modern `server/discover` (before modern decoration).
    fn discover_result(&self) -> Value {
        json!({
            "supportedVersions": [MODERN_VERSION],
            "capabilities": Self::capabilities(),
            "instructions": "Tollgate's conformance-shaped test upstream.",
            "ttlMs": 0,
            "cacheScope": "public"
        })
    }

    /// The `notifications/subscriptions/acknowledged` opening a listen stream for `filter`,
    /// and the filter the server agreed to honor.
    pub fn listen_ack(&self, listen_id: &Value, filter: &Value) -> (Value, ListenFilter) {
        let f = ListenFilter::from_request(filter);
        let mut agreed = Map::new();
        if f.tools {
            agreed.insert("toolsListChanged".into(), Value::Bool(true));
        }
        if f.prompts {
            agreed.insert("promptsListChanged".into(), Value::Bool(true));
        }
        if f.resources {
            agreed.insert("resourcesListChanged".into(), Value::Bool(true));
        }
        if !f.resource_uris.is_empty() {
            agreed.insert("resourceSubscriptions".into(), json!(f.resource_uris));
        }
        let ack = rpc::notification(
            "notifications/subscriptions/acknowledged",
            json!({ "notifications": agreed, "_meta": { rpc::META_SUBSCRIPTION_ID: listen_id } }),
        );
        (ack, f)
    }

    /// Handles one request. `logging/setLevel` and `initialize` state lives in the transport.
    pub async fn handle(&self, method: &str, params: &Value, ctx: &Ctx) -> Result<Value, RpcError> {
        let result = self.dispatch(method, params, ctx).await?;
        Ok(match ctx.era {
            EraKind::Legacy => result,
            EraKind::Modern => self.decorate_modern(method, result),
        })
    }

    /// Adds what every modern result carries: `resultType`, caching hints on lists and reads,
    /// and the server's identity in `_meta`.
    fn decorate_modern(&self, method: &str, mut result: Value) -> Value {
        if let Some(obj) = result.as_object_mut() {
            obj.entry("resultType").or_insert_with(|| json!("complete"));
            if matches!(
                method,
                "server/discover"
                    | "tools/list"
                    | "prompts/list"
                    | "resources/list"
                    | "resources/templates/list"
                    | "resources/read"
            ) {
                obj.entry("ttlMs").or_insert_with(|| json!(0));
                obj.entry("cacheScope").or_insert_with(|| json!("public"));
            }
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(META_SERVER_INFO.into(), self.server_info());
            }
        }
        result
    }

    async fn dispatch(&self, method: &str, params: &Value, ctx: &Ctx) -> Result<Value, RpcError> {
        let modern = ctx.era == EraKind::Modern;
        match method {
            "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
                if modern =>
            {
                Err(method_not_found(method))
            }
            "server/discover" if modern => Ok(self.discover_result()),
            "ping" | "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe" => {
                Ok(json!({}))
            }
            "tools/list" => {
                reject_cursor(params)?;
                let mut tools = catalog::builtin_tools();
                tools.extend(self.extra_tools.iter().map(|t| t.definition.clone()));
                Ok(json!({ "tools": tools }))
            }
            "tools/call" => self.call_tool(params, ctx).await,
            "resources/list" => {
                reject_cursor(params)?;
                Ok(json!({ "resources": catalog::resources() }))
            }
            "resources/templates/list" => {
                reject_cursor(params)?;
                Ok(json!({ "resourceTemplates": catalog::resource_templates() }))
            }
            "resources/read" => {
                let uri = params
                    .get("uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| RpcError::invalid_params("missing uri"))?;
                catalog::read_resource(uri).ok_or_else(|| {
                    RpcError::invalid_params("Resource not found").with_data(json!({ "uri": uri }))
                })
            }
            "prompts/list" => {
                reject_cursor(params)?;
                Ok(json!({ "prompts": catalog::prompts() }))
            }
            "prompts/get" => match self.get_prompt(params, ctx).await {
                Ok(v) | Err(Flow::InputRequired(v)) => Ok(v),
                Err(Flow::Error(e)) => Err(e),
                Err(Flow::ToolError(msg)) => Err(RpcError::new(code::INTERNAL_ERROR, msg)),
            },
            "completion/complete" => complete(params),
            _ => Err(method_not_found(method)),
        }
    }

    async fn call_tool(&self, params: &Value, ctx: &Ctx) -> Result<Value, RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("missing tool name"))?;
        *self
            .stats
            .lock()
            .tool_calls
            .entry(name.to_string())
            .or_default() += 1;
        let empty = json!({});
        let args = match params.get("arguments") {
            None | Some(Value::Null) => &empty,
            Some(a @ Value::Object(_)) => a,
            Some(_) => return Err(RpcError::invalid_params("arguments must be an object")),
        };
        let outcome = if let Some(extra) = self.extra_tools.iter().find(|t| t.name() == name) {
            (extra.handler)(args).map_err(Flow::Error)
        } else {
            self.builtin_tool(name, args, params, ctx).await
        };
        match outcome {
            Ok(v) | Err(Flow::InputRequired(v)) => Ok(v),
            Err(Flow::Error(e)) => Err(e),
            Err(Flow::ToolError(msg)) => Ok(json!({ "content": [text(msg)], "isError": true })),
        }
    }

    async fn builtin_tool(
        &self,
        name: &str,
        args: &Value,
        params: &Value,
        ctx: &Ctx,
    ) -> Result<Value, Flow> {
        match name {
            "test_simple_text" => Ok(text_result("This is a simple text response for testing.")),
            "test_image_content" => Ok(
                json!({ "content": [{ "type": "image", "data": catalog::PNG_BASE64, "mimeType": "image/png" }] }),
            ),
            "test_audio_content" => Ok(
                json!({ "content": [{ "type": "audio", "data": catalog::wav_base64(), "mimeType": "audio/wav" }] }),
            ),
            "test_embedded_resource" => Ok(json!({ "content": [{ "type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."
            } }] })),
            "test_multiple_content_types" => Ok(json!({ "content": [
                text("Multiple content types test:"),
                { "type": "image", "data": catalog::PNG_BASE64, "mimeType": "image/png" },
                { "type": "resource", "resource": {
                    "uri": "test://mixed-content-resource", "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"
                } }
            ] })),
            "test_tool_with_logging" | "test_logging_tool" => {
                ctx.log(LogLevel::Info, "Tool execution started");
                tokio::time::sleep(Duration::from_millis(50)).await;
                ctx.log(LogLevel::Info, "Tool processing data");
                tokio::time::sleep(Duration::from_millis(50)).await;
                ctx.log(LogLevel::Info, "Tool execution completed");
                Ok(text_result("Logging test completed"))
            }
            "test_tool_with_progress" => {
                for (i, p) in [0u64, 50, 100].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    ctx.progress(p, 100, &format!("step {}", i + 1));
                }
                Ok(text_result("Progress test completed"))
            }
            "test_error_handling" => Err(Flow::ToolError(
                "This tool intentionally returns an error for testing".into(),
            )),
            "test_sampling" => {
                let prompt = required_str(args, "prompt")?;
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "sampling",
                            method: "sampling/createMessage",
                            params: sample(prompt, 100),
                        }],
                        None,
                        false,
                    )
                    .await?;
                let answer = got
                    .get("sampling")
                    .and_then(|r| r.pointer("/content/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(text_result(format!("LLM response: {answer}")))
            }
            "test_elicitation" => {
                let message = required_str(args, "message")?;
                let schema = elicit(
                    message,
                    json!({
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" }
                    }),
                    &["username", "email"],
                );
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "user_info",
                            method: "elicitation/create",
                            params: schema,
                        }],
                        None,
                        false,
                    )
                    .await?;
                Ok(text_result(format!(
                    "User response: {}",
                    describe_elicit(got.get("user_info"))
                )))
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = elicit(
                    "Please review and update the form fields with defaults",
                    json!({
                        "name": { "type": "string", "description": "User name", "default": "John Doe" },
                        "age": { "type": "integer", "description": "User age", "default": 30 },
                        "score": { "type": "number", "description": "User score", "default": 95.5 },
                        "status": { "type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active" },
                        "verified": { "type": "boolean", "description": "Verification status", "default": true }
                    }),
                    &[],
                );
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "defaults",
                            method: "elicitation/create",
                            params: schema,
                        }],
                        None,
                        false,
                    )
                    .await?;
                Ok(text_result(format!(
                    "Elicitation completed: {}",
                    describe_elicit(got.get("defaults"))
                )))
            }
            "test_elicitation_sep1330_enums" => {
                let schema = elicit(
                    "Please select options from the enum fields",
                    json!({
                        "untitledSingle": { "type": "string", "description": "Untitled single-select", "enum": ["option1", "option2", "option3"] },
                        "titledSingle": { "type": "string", "description": "Titled single-select", "oneOf": [
                            { "const": "value1", "title": "First Option" },
                            { "const": "value2", "title": "Second Option" },
                            { "const": "value3", "title": "Third Option" }
                        ] },
                        "legacyEnum": { "type": "string", "description": "Legacy titled enum", "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"] },
                        "untitledMulti": { "type": "array", "description": "Untitled multi-select",
                            "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
                        "titledMulti": { "type": "array", "description": "Titled multi-select", "items": { "anyOf": [
                            { "const": "value1", "title": "First Choice" },
                            { "const": "value2", "title": "Second Choice" },
                            { "const": "value3", "title": "Third Choice" }
                        ] } }
                    }),
                    &[],
                );
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "enums",
                            method: "elicitation/create",
                            params: schema,
                        }],
                        None,
                        false,
                    )
                    .await?;
                Ok(text_result(format!(
                    "Elicitation completed: {}",
                    describe_elicit(got.get("enums"))
                )))
            }
            "test_streaming_elicitation" => {
                let schema = elicit(
                    "Please confirm to continue",
                    json!({ "confirmed": { "type": "boolean" } }),
                    &["confirmed"],
                );
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "confirm",
                            method: "elicitation/create",
                            params: schema,
                        }],
                        None,
                        false,
                    )
                    .await?;
                Ok(text_result(format!(
                    "Confirmation: {}",
                    describe_elicit(got.get("confirm"))
                )))
            }
            "test_missing_capability" => {
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![Ask {
                            key: "sample",
                            method: "sampling/createMessage",
                            params: sample("Say hello", 20),
                        }],
                        None,
                        false,
                    )
                    .await?;
                let answer = got
                    .get("sample")
                    .and_then(|r| r.pointer("/content/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(text_result(format!("Sampled: {answer}")))
            }
            "test_reconnection" => {
                if let Some(out) = &ctx.out {
                    let _ = out.send(Outbound::CloseStream);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(text_result("Reconnection test completed"))
            }
            "test_trigger_tool_change" => {
                self.publish(ServerEvent::ToolsListChanged);
                Ok(text_result("Tool list change announced"))
            }
            "test_trigger_prompt_change" => {
                self.publish(ServerEvent::PromptsListChanged);
                Ok(text_result("Prompt list change announced"))
            }
            "test_trigger_resource_change" => {
                self.publish(ServerEvent::ResourcesListChanged);
                self.publish(ServerEvent::ResourceUpdated(
                    "test://watched-resource".into(),
                ));
                Ok(text_result("Resource change announced"))
            }
            "test_input_required_result_elicitation" => {
                let state = self.open_state(name, params)?;
                let ask = Ask {
                    key: "user_name",
                    method: "elicitation/create",
                    params: elicit(
                        "What is your name?",
                        json!({ "name": { "type": "string" } }),
                        &["name"],
                    ),
                };
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![ask],
                        Some(json!({ "tool": name, "round": 1 })),
                        false,
                    )
                    .await?;
                let _ = state;
                let name = got
                    .get("user_name")
                    .and_then(|r| r.pointer("/content/name"))
                    .and_then(Value::as_str)
                    .unwrap_or("stranger");
                Ok(text_result(format!("Hello, {name}!")))
            }
            "test_input_required_result_sampling" => {
                self.open_state(name, params)?;
                let ask = Ask {
                    key: "capital_question",
                    method: "sampling/createMessage",
                    params: sample("What is the capital of France?", 100),
                };
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![ask],
                        Some(json!({ "tool": name, "round": 1 })),
                        false,
                    )
                    .await?;
                let answer = got
                    .get("capital_question")
                    .and_then(|r| r.pointer("/content/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(text_result(format!("Sampling response: {answer}")))
            }
            "test_input_required_result_list_roots" => {
                self.open_state(name, params)?;
                let ask = Ask {
                    key: "client_roots",
                    method: "roots/list",
                    params: json!({}),
                };
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![ask],
                        Some(json!({ "tool": name, "round": 1 })),
                        false,
                    )
                    .await?;
                let roots = roots_of(got.get("client_roots"))?;
                Ok(text_result(format!("Client roots: {}", roots.join(", "))))
            }
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                let state = self.open_state(name, params)?;
                let ask = Ask {
                    key: "confirm",
                    method: "elicitation/create",
                    params: elicit(
                        "Please confirm",
                        json!({ "ok": { "type": "boolean" } }),
                        &["ok"],
                    ),
                };
                // The state is required here: responses without it are asked for again.
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![ask],
                        Some(json!({ "tool": name, "round": 1 })),
                        state.is_none(),
                    )
                    .await?;
                let ok = got
                    .get("confirm")
                    .and_then(|r| r.pointer("/content/ok"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Ok(text_result(format!("state-ok: confirmed={ok}")))
            }
            "test_input_required_result_multiple_inputs" => {
                self.open_state(name, params)?;
                let asks = vec![
                    Ask {
                        key: "user_name",
                        method: "elicitation/create",
                        params: elicit(
                            "What is your name?",
                            json!({ "name": { "type": "string" } }),
                            &["name"],
                        ),
                    },
                    Ask {
                        key: "greeting",
                        method: "sampling/createMessage",
                        params: sample("Generate a greeting", 50),
                    },
                    Ask {
                        key: "client_roots",
                        method: "roots/list",
                        params: json!({}),
                    },
                ];
                let got = self
                    .ask(
                        ctx,
                        params,
                        asks,
                        Some(json!({ "tool": name, "round": 1 })),
                        false,
                    )
                    .await?;
                let who = got
                    .get("user_name")
                    .and_then(|r| r.pointer("/content/name"))
                    .and_then(Value::as_str)
                    .unwrap_or("stranger");
                let greeting = got
                    .get("greeting")
                    .and_then(|r| r.pointer("/content/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let roots = roots_of(got.get("client_roots"))?;
                Ok(text_result(format!(
                    "{greeting} {who} (roots: {})",
                    roots.join(", ")
                )))
            }
            "test_input_required_result_multi_round" => self.multi_round(name, params, ctx).await,
            "test_input_required_result_capabilities" => {
                let mut asks = Vec::new();
                if ctx.has_capability("elicitation") {
                    asks.push(Ask {
                        key: "user_name",
                        method: "elicitation/create",
                        params: elicit(
                            "What is your name?",
                            json!({ "name": { "type": "string" } }),
                            &["name"],
                        ),
                    });
                }
                if ctx.has_capability("sampling") {
                    asks.push(Ask {
                        key: "greeting",
                        method: "sampling/createMessage",
                        params: sample("Generate a greeting", 50),
                    });
                }
                if ctx.has_capability("roots") {
                    asks.push(Ask {
                        key: "client_roots",
                        method: "roots/list",
                        params: json!({}),
                    });
                }
                if asks.is_empty() {
                    return Ok(text_result("The client declared no capability to ask with"));
                }
                let got = self.ask(ctx, params, asks, None, false).await?;
                let mut keys: Vec<&String> = got.keys().collect();
                keys.sort();
                Ok(text_result(format!("Received inputs: {keys:?}")))
            }
            "test_header_param" => Ok(text_result(format!(
                "region={}",
                required_str(args, "region")?
            ))),
            "run-rerun" => {
                let run_id = args
                    .get("run_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let Some(run_id) = run_id else {
                    return Err(Flow::ToolError("run_id must be a non-empty string".into()));
                };
                let failed_only = match args.get("failed_only") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(Flow::ToolError("failed_only must be a boolean".into())),
                };
                let structured = json!({
                    "run_id": run_id,
                    "status": "queued",
                    "url": format!("https://ci.example.invalid/runs/{run_id}/rerun"),
                    "failed_only": failed_only
                });
                Ok(
                    json!({ "content": [text(structured.to_string())], "structuredContent": structured }),
                )
            }
            "echo" => Ok(text_result(args.to_string())),
            "fail" => Err(Flow::Error(RpcError::new(
                code::INTERNAL_ERROR,
                "tool failed on purpose",
            ))),
            "slow" => {
                let ms = args
                    .get("ms")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| Flow::ToolError("ms must be a non-negative integer".into()))?;
                let ms = ms.min(600_000);
                ctx.progress(0, ms, "started");
                tokio::time::sleep(Duration::from_millis(ms / 2)).await;
                ctx.progress(ms / 2, ms, "halfway");
                tokio::time::sleep(Duration::from_millis(ms - ms / 2)).await;
                ctx.progress(ms, ms, "done");
                Ok(text_result(format!("slept {ms} ms")))
            }
            _ => Err(Flow::Error(RpcError::invalid_params(format!(
                "unknown tool: {name}"
            )))),
        }
    }

    async fn multi_round(&self, name: &str, params: &Value, ctx: &Ctx) -> Result<Value, Flow> {
        let step1 = || Ask {
            key: "step1",
            method: "elicitation/create",
            params: elicit(
                "Step 1: What is your name?",
                json!({ "name": { "type": "string" } }),
                &["name"],
            ),
        };
        let step2 = || Ask {
            key: "step2",
            method: "elicitation/create",
            params: elicit(
                "Step 2: What is your favorite color?",
                json!({ "color": { "type": "string" } }),
                &["color"],
            ),
        };
        let state = self.open_state(name, params)?;
        let round = state
            .as_ref()
            .and_then(|s| s.get("round"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if round < 2 {
            let got = self
                .ask(
                    ctx,
                    params,
                    vec![step1()],
                    Some(json!({ "tool": name, "round": 1 })),
                    round == 0,
                )
                .await?;
            let who = got
                .get("step1")
                .and_then(|r| r.pointer("/content/name"))
                .and_then(Value::as_str)
                .unwrap_or("stranger")
                .to_string();
            let next_state = json!({ "tool": name, "round": 2, "name": who });
            // In the legacy era both questions are asked in one call; in the modern era the
            // second one always goes back to the client with the updated state.
            let forced = ctx.era == EraKind::Modern;
            let got2 = self
                .ask(ctx, &json!({}), vec![step2()], Some(next_state), forced)
                .await?;
            let color = got2
                .get("step2")
                .and_then(|r| r.pointer("/content/color"))
                .and_then(Value::as_str)
                .unwrap_or("none");
            return Ok(text_result(format!("{who} likes {color}")));
        }
        let who = state
            .as_ref()
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("stranger")
            .to_string();
        let got = self
            .ask(ctx, params, vec![step2()], state.clone(), false)
            .await?;
        let color = got
            .get("step2")
            .and_then(|r| r.pointer("/content/color"))
            .and_then(Value::as_str)
            .unwrap_or("none");
        Ok(text_result(format!("{who} likes {color}")))
    }

    async fn get_prompt(&self, params: &Value, ctx: &Ctx) -> Result<Value, Flow> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("missing prompt name"))?;
        let args = params
            .get("arguments")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let arg = |key: &str| -> Result<String, Flow> {
            args.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    Flow::Error(RpcError::invalid_params(format!(
                        "missing required argument: {key}"
                    )))
                })
        };
        let user = |content: Value| json!({ "role": "user", "content": content });
        let messages = match name {
            "test_simple_prompt" => vec![user(text("This is a simple prompt for testing."))],
            "test_prompt_with_arguments" => {
                let (a1, a2) = (arg("arg1")?, arg("arg2")?);
                vec![user(text(format!(
                    "Prompt with arguments: arg1='{a1}', arg2='{a2}'"
                )))]
            }
            "test_prompt_with_embedded_resource" => {
                let uri = arg("resourceUri")?;
                vec![
                    user(
                        json!({ "type": "resource", "resource": { "uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing." } }),
                    ),
                    user(text("Please process the embedded resource above.")),
                ]
            }
            "test_prompt_with_image" => vec![
                user(
                    json!({ "type": "image", "data": catalog::PNG_BASE64, "mimeType": "image/png" }),
                ),
                user(text("Please analyze the image above.")),
            ],
            "test_input_required_result_prompt" => {
                self.open_state(name, params)?;
                let ask = Ask {
                    key: "user_context",
                    method: "elicitation/create",
                    params: elicit(
                        "What context should the prompt use?",
                        json!({ "context": { "type": "string" } }),
                        &["context"],
                    ),
                };
                let got = self
                    .ask(
                        ctx,
                        params,
                        vec![ask],
                        Some(json!({ "tool": name, "round": 1 })),
                        false,
                    )
                    .await?;
                let context = got
                    .get("user_context")
                    .and_then(|r| r.pointer("/content/context"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                vec![user(text(format!("Use this context: {context}")))]
            }
            _ => {
                return Err(Flow::Error(RpcError::invalid_params(format!(
                    "unknown prompt: {name}"
                ))));
            }
        };
        Ok(json!({ "messages": messages }))
    }

    /// Opens the request's `requestState`, if any: `Ok(None)` when absent, an error when it was
    /// tampered with or belongs to another tool.
    fn open_state(&self, tool: &str, params: &Value) -> Result<Option<Value>, Flow> {
        match params.get("requestState") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(sealed)) => match self.sealer.open(sealed) {
                Some(state) if state.get("tool").and_then(Value::as_str) == Some(tool) => {
                    Ok(Some(state))
                }
                Some(_) => Err(Flow::Error(RpcError::invalid_params(
                    "requestState belongs to another request",
                ))),
                None => Err(Flow::Error(RpcError::invalid_params(
                    "requestState failed integrity verification",
                ))),
            },
            Some(_) => Err(Flow::Error(RpcError::invalid_params(
                "requestState must be a string",
            ))),
        }
    }

    /// Gets every `asks` answer from the client (see the module doc). `force` ignores the
    /// request's `inputResponses` and asks again (modern era).
    async fn ask(
        &self,
        ctx: &Ctx,
        params: &Value,
        asks: Vec<Ask>,
        state: Option<Value>,
        force: bool,
    ) -> Result<Map<String, Value>, Flow> {
        match ctx.era {
            EraKind::Modern => self.ask_modern(ctx, params, asks, state, force),
            EraKind::Legacy => ask_legacy(ctx, asks).await,
        }
    }

    fn ask_modern(
        &self,
        ctx: &Ctx,
        params: &Value,
        asks: Vec<Ask>,
        state: Option<Value>,
        force: bool,
    ) -> Result<Map<String, Value>, Flow> {
        let missing_caps: Map<String, Value> = asks
            .iter()
            .map(|a| capability_for(a.method))
            .filter(|cap| !ctx.has_capability(cap))
            .map(|cap| (cap.to_string(), json!({})))
            .collect();
        if !missing_caps.is_empty() {
            let names: Vec<&String> = missing_caps.keys().collect();
            return Err(Flow::Error(
                RpcError::new(
                    code::MISSING_CLIENT_CAPABILITY,
                    format!("missing required client capability: {names:?}"),
                )
                .with_data(json!({ "requiredCapabilities": missing_caps }))
                .with_status(400),
            ));
        }
        let responses = match params.get("inputResponses") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(Flow::Error(RpcError::invalid_params(
                    "inputResponses must be an object",
                )));
            }
        };
        let mut got = Map::new();
        if !force {
            for ask in &asks {
                match responses.get(ask.key) {
                    Some(v @ Value::Object(_)) => {
                        got.insert(ask.key.to_string(), v.clone());
                    }
                    Some(_) => {
                        return Err(Flow::Error(RpcError::invalid_params(format!(
                            "input response {} must be an object",
                            ask.key
                        ))));
                    }
                    None => {}
                }
            }
            if got.len() == asks.len() {
                return Ok(got);
            }
        }
        let requests: Map<String, Value> = asks
            .into_iter()
            .map(|a| {
                (
                    a.key.to_string(),
                    json!({ "method": a.method, "params": a.params }),
                )
            })
            .collect();
        let mut result = json!({ "resultType": "input_required", "inputRequests": requests });
        if let (Some(mut state), Some(obj)) = (state, result.as_object_mut()) {
            if let Some(s) = state.as_object_mut() {
                // A nonce makes every state distinct, even for the same round.
                s.insert(
                    "nonce".into(),
                    json!(format!("{:016x}", rand::random::<u64>())),
                );
            }
            obj.insert("requestState".into(), json!(self.sealer.seal(&state)));
        }
        Err(Flow::InputRequired(result))
    }
}

async fn ask_legacy(ctx: &Ctx, asks: Vec<Ask>) -> Result<Map<String, Value>, Flow> {
    let mut got = Map::new();
    for ask in asks {
        let cap = capability_for(ask.method);
        if !ctx.has_capability(cap) {
            return Err(Flow::ToolError(format!(
                "the client does not support {cap}"
            )));
        }
        let (Some(out), Some(pending)) = (&ctx.out, &ctx.pending) else {
            return Err(Flow::ToolError("no channel to reach the client on".into()));
        };
        let (id, rx) = pending.register();
        out.send(Outbound::Message(rpc::request(&id, ask.method, ask.params)))
            .map_err(|_| Flow::ToolError("the client went away".into()))?;
        match tokio::time::timeout(CLIENT_ANSWER_TIMEOUT, rx).await {
            Ok(Ok(Ok(answer))) => {
                got.insert(ask.key.to_string(), answer);
            }
            Ok(Ok(Err(error))) => {
                return Err(Flow::ToolError(format!(
                    "the client answered {} with an error: {error}",
                    ask.method
                )));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(Flow::ToolError(format!(
                    "no answer from the client to {}",
                    ask.method
                )));
            }
        }
    }
    Ok(got)
}

/// What a `subscriptions/listen` stream agreed to deliver.
#[derive(Debug, Clone, Default)]
pub struct ListenFilter {
    tools: bool,
    prompts: bool,
    resources: bool,
    resource_uris: Vec<String>,
}

impl ListenFilter {
    fn from_request(filter: &Value) -> Self {
        let flag = |k: &str| filter.get(k).and_then(Value::as_bool).unwrap_or(false);
        Self {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            resource_uris: filter
                .get("resourceSubscriptions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether this stream wants `event`.
    pub fn wants(&self, event: &ServerEvent) -> bool {
        match event {
            ServerEvent::ToolsListChanged => self.tools,
            ServerEvent::PromptsListChanged => self.prompts,
            ServerEvent::ResourcesListChanged => self.resources,
            ServerEvent::ResourceUpdated(uri) => self.resource_uris.iter().any(|u| u == uri),
        }
    }
}

fn method_not_found(method: &str) -> RpcError {
    RpcError::new(
        code::METHOD_NOT_FOUND,
        format!("method not found: {method}"),
    )
    .with_status(404)
}

fn reject_cursor(params: &Value) -> Result<(), RpcError> {
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(RpcError::invalid_params("invalid cursor")),
    }
}

fn required_str<'a>(args: &'a Value, key: &str) -> Result<&'a str, Flow> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Flow::ToolError(format!("missing required string argument: {key}")))
}

fn describe_elicit(answer: Option<&Value>) -> String {
    match answer {
        Some(a) => format!(
            "action={}, content={}",
            a.get("action").and_then(Value::as_str).unwrap_or("unknown"),
            a.get("content").cloned().unwrap_or_else(|| json!({}))
        ),
        None => "no answer".into(),
    }
}

fn roots_of(answer: Option<&Value>) -> Result<Vec<String>, Flow> {
    let roots = answer
        .and_then(|a| a.get("roots"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Flow::Error(RpcError::invalid_params(
                "roots/list answer must carry a roots array",
            ))
        })?;
    Ok(roots
        .iter()
        .filter_map(|r| r.get("uri").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

fn complete(params: &Value) -> Result<Value, RpcError> {
    let reference = params
        .get("ref")
        .ok_or_else(|| RpcError::invalid_params("missing ref"))?;
    match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            if !catalog::prompts().iter().any(|p| p["name"] == name) {
                return Err(RpcError::invalid_params(format!("unknown prompt: {name}")));
            }
        }
        Some("ref/resource") => {}
        _ => {
            return Err(RpcError::invalid_params(
                "ref.type must be ref/prompt or ref/resource",
            ));
        }
    }
    let argument = params
        .get("argument")
        .ok_or_else(|| RpcError::invalid_params("missing argument"))?;
    let arg_name = argument.get("name").and_then(Value::as_str).unwrap_or("");
    let prefix = argument.get("value").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> = catalog::completions(arg_name)
        .iter()
        .copied()
        .filter(|v| v.starts_with(prefix))
        .collect();
    Ok(json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }))
}
