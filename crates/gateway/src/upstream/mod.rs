//! Upstream transports: Streamable HTTP and stdio children, behind one request/reply shape.
//!
//! ```text
//!   handler ──OutboundRequest──▶ Upstream::post ──▶ HttpUpstream  ──POST──▶ MCP server
//!                                               └─▶ StdioUpstream ──line──▶ child process
//!   handler ◀──UpstreamReply (status, session, Empty | Json | Sse stream)──┘
//! ```
//!
//! A reply body is already classified: a JSON body is collected (the gateway inspects every
//! answer to a call it judged: rollback, list filtering), an SSE body is a stream of decoded
//! events that the handler passes on one by one.

pub mod http;
pub mod stdio;

use std::pin::Pin;
use std::sync::Arc;

use ::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::Stream;
use tollgate_mcp::Era;
use tollgate_mcp::sse::SseEvent;

use crate::config::{Transport, UpstreamConfig};
use crate::error::ProxyError;

pub use self::http::HttpUpstream;
pub use self::stdio::StdioUpstream;

/// A stream of SSE events from an upstream.
pub type SseStream = Pin<Box<dyn Stream<Item = Result<SseEvent, ProxyError>> + Send>>;

/// What an upstream answered.
pub struct UpstreamReply {
    /// HTTP status (stdio answers are 200, or 202 for notifications and responses).
    pub status: StatusCode,
    /// The upstream's own session id, on an `initialize` answer.
    pub session_id: Option<String>,
    /// The stdio child that now serves the session, on an `initialize` answer of a stdio upstream.
    pub local_session: Option<u64>,
    /// The body.
    pub body: ReplyBody,
}

/// An upstream answer's body.
pub enum ReplyBody {
    /// No body (202 Accepted, 404...).
    Empty,
    /// One JSON value, collected.
    Json(Bytes),
    /// A server-sent event stream.
    Sse(SseStream),
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Json(b) => write!(f, "Json({} bytes)", b.len()),
            Self::Sse(_) => f.write_str("Sse(..)"),
        }
    }
}

/// Which upstream session a request belongs to.
#[derive(Debug, Clone, Default)]
pub struct SessionRef {
    /// The HTTP upstream's `Mcp-Session-Id`, if it issued one.
    pub upstream_session: Option<String>,
    /// The stdio child serving this session on this node.
    pub local_id: Option<u64>,
}

/// What kind of JSON-RPC message is being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request: an answer is expected.
    Request,
    /// A notification or a response to a server request: answered with 202.
    NoAnswer,
}

/// One message for an upstream.
pub struct OutboundRequest<'a> {
    /// The exact bytes to send (the client's bytes, unchanged, unless the gateway made the message).
    pub body: Bytes,
    /// Request or not.
    pub kind: MessageKind,
    /// The JSON-RPC method (for stdio routing and logs); `None` for responses.
    pub method: Option<&'a str>,
    /// Session of a legacy request; `None` for `initialize` and modern requests.
    pub session: Option<&'a SessionRef>,
    /// The era of the client's request (a stdio child has no headers to tell it by).
    pub era: Era,
    /// Headers to forward (already filtered: never the client's `Authorization`).
    pub headers: HeaderMap,
}

/// A configured upstream server.
// One value per configured server, built once and never moved: the size difference is harmless.
#[allow(clippy::large_enum_variant)]
pub enum Upstream {
    /// Streamable HTTP.
    Http(HttpUpstream),
    /// A stdio child per session, plus a shared one for modern stateless traffic.
    Stdio(StdioUpstream),
}

impl Upstream {
    /// Builds the transport for one configured upstream.
    pub fn new(
        config: &UpstreamConfig,
        client: http::HttpClient,
        limits: &crate::config::Limits,
        node_id: &str,
        metrics: Arc<tollgate_telemetry::Metrics>,
    ) -> Self {
        match &config.transport {
            Transport::Http { url, headers, tls } => Upstream::Http(HttpUpstream::new(
                config.name.clone(),
                url.clone(),
                headers.clone(),
                client.for_tls(tls.as_ref()),
                limits.upstream_timeout,
            )),
            Transport::Stdio {
                command,
                args,
                env,
                idle_timeout,
            } => Upstream::Stdio(StdioUpstream::new(
                stdio::StdioOptions {
                    server: config.name.clone(),
                    command: command.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    idle_timeout: *idle_timeout,
                    request_timeout: limits.upstream_timeout,
                    node_id: node_id.to_owned(),
                },
                metrics,
            )),
        }
    }

    /// Whether sessions of this upstream live on this node only (stdio children).
    pub fn node_local_sessions(&self) -> bool {
        matches!(self, Upstream::Stdio(_))
    }

    /// Sends one POST-shaped message.
    pub async fn post(&self, request: OutboundRequest<'_>) -> Result<UpstreamReply, ProxyError> {
        match self {
            Upstream::Http(http) => http.post(request).await,
            Upstream::Stdio(stdio) => stdio.post(request).await,
        }
    }

    /// Opens the standalone server-to-client stream of a legacy session.
    pub async fn get_stream(
        &self,
        session: &SessionRef,
        headers: HeaderMap,
    ) -> Result<UpstreamReply, ProxyError> {
        match self {
            Upstream::Http(http) => http.get_stream(session, headers).await,
            Upstream::Stdio(stdio) => stdio.get_stream(session).await,
        }
    }

    /// Ends a legacy session.
    pub async fn delete(
        &self,
        session: &SessionRef,
        headers: HeaderMap,
    ) -> Result<StatusCode, ProxyError> {
        match self {
            Upstream::Http(http) => http.delete(session, headers).await,
            Upstream::Stdio(stdio) => stdio.delete(session).await,
        }
    }

    /// Stops every child process (stdio) and waits for them.
    pub async fn shutdown(&self) {
        if let Upstream::Stdio(stdio) = self {
            stdio.shutdown().await;
        }
    }
}
