//! The data plane's errors and their one mapping to HTTP statuses and JSON-RPC codes.
//!
//! Every error says who is at fault ([`Fault`]) and whether retrying the same request can help, so
//! logs, metrics and clients can tell a bad request from a broken upstream. The gateway's own
//! JSON-RPC codes lie outside the range the JSON-RPC and MCP specifications reserve
//! (-32768..=-32000).

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use tollgate_mcp::jsonrpc::{RequestId, codes, error_response};

/// JSON-RPC code: the upstream could not be reached or broke the connection.
pub const UPSTREAM_UNAVAILABLE: i64 = -31001;
/// JSON-RPC code: the upstream did not answer in time.
pub const UPSTREAM_TIMEOUT: i64 = -31002;
/// JSON-RPC code: the upstream answered with something that is not MCP.
pub const UPSTREAM_PROTOCOL: i64 = -31003;
/// JSON-RPC code: the gateway itself failed.
pub const GATEWAY_INTERNAL: i64 = -31000;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was bad; retrying it unchanged fails again.
    Client,
    /// The upstream failed; a retry may succeed.
    Upstream,
    /// The gateway failed.
    Internal,
}

/// The JSON-RPC error of a 400 answer.
#[derive(Debug)]
pub struct BadRequest {
    /// JSON-RPC error code.
    pub code: i64,
    /// Human message.
    pub message: String,
    /// Optional `error.data`.
    pub data: Option<Value>,
    /// The request id, when it could be read.
    pub id: Option<RequestId>,
}

/// A request the data plane refuses or cannot complete.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No or unknown bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized {
        /// The RFC 9728 metadata URL for `WWW-Authenticate`.
        resource_metadata: String,
    },
    /// The grant may not reach this server.
    #[error("this grant may not use server {server}")]
    WrongServer {
        /// The server named in the URL.
        server: String,
    },
    /// `Origin` present and not allowed, or a foreign `Host` (DNS rebinding protection).
    #[error("{0}")]
    ForbiddenOrigin(&'static str),
    /// `Accept` does not list both JSON and SSE (or SSE for GET).
    #[error("the Accept header must list {0}")]
    NotAcceptable(&'static str),
    /// `Content-Type` is not `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A malformed request, answered with HTTP 400 and a JSON-RPC error.
    #[error("{}", .0.message)]
    BadRequest(Box<BadRequest>),
    /// The session id is unknown, expired, or belongs to another grant or server.
    #[error("session not found")]
    SessionNotFound,
    /// The HTTP method is not served on this endpoint for this request.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No upstream by that name.
    #[error("no such server")]
    NoSuchServer,
    /// The upstream could not be reached: the request was not delivered.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The connection to the upstream broke after the request was sent: the call may have run
    /// (for the quota, "unknown means spent"). Told to the client like [`Self::UpstreamUnavailable`].
    #[error("upstream unavailable: {0}")]
    UpstreamLost(String),
    /// The TLS handshake with the upstream failed (untrusted or expired certificate, wrong host
    /// name, client certificate refused): a configuration problem, not a passing fault.
    #[error("upstream unavailable: {0}")]
    UpstreamTls(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream answered with something that is not MCP.
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    /// The gateway failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// A 400 with a JSON-RPC error.
    pub fn bad_request(code: i64, message: impl Into<String>, id: Option<RequestId>) -> Self {
        Self::bad_request_with_data(code, message, None, id)
    }

    /// A 400 with a JSON-RPC error carrying `data`.
    pub fn bad_request_with_data(
        code: i64,
        message: impl Into<String>,
        data: Option<Value>,
        id: Option<RequestId>,
    ) -> Self {
        Self::BadRequest(Box::new(BadRequest {
            code,
            message: message.into(),
            data,
            id,
        }))
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UpstreamUnavailable(_)
            | Self::UpstreamLost(_)
            | Self::UpstreamTls(_)
            | Self::UpstreamTimeout
            | Self::UpstreamProtocol(_) => Fault::Upstream,
            Self::Internal(_) => Fault::Internal,
            _ => Fault::Client,
        }
    }

    /// Whether the same request may succeed when retried.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::UpstreamUnavailable(_) | Self::UpstreamTimeout)
    }

    /// Short label for metrics and audit (`upstream_timeout`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::WrongServer { .. } => "wrong_server",
            Self::ForbiddenOrigin(_) => "forbidden_origin",
            Self::NotAcceptable(_) => "not_acceptable",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::SessionNotFound => "session_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NoSuchServer => "no_such_server",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamLost(_) => "upstream_lost",
            Self::UpstreamTls(_) => "upstream_tls",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol(_) => "upstream_protocol",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::WrongServer { .. } | Self::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::SessionNotFound | Self::NoSuchServer => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamUnavailable(_)
            | Self::UpstreamLost(_)
            | Self::UpstreamTls(_)
            | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::BadRequest(bad) => bad.code,
            Self::SessionNotFound => -32001,
            Self::UpstreamUnavailable(_) | Self::UpstreamLost(_) | Self::UpstreamTls(_) => {
                UPSTREAM_UNAVAILABLE
            }
            Self::UpstreamTimeout => UPSTREAM_TIMEOUT,
            Self::UpstreamProtocol(_) => UPSTREAM_PROTOCOL,
            Self::Internal(_) => GATEWAY_INTERNAL,
            _ => codes::INVALID_REQUEST,
        }
    }

    /// The JSON-RPC error body, for the request `id` when known.
    pub fn body(&self, id: Option<&RequestId>) -> Bytes {
        let (id, data) = match self {
            Self::BadRequest(bad) => (bad.id.as_ref().or(id), bad.data.clone()),
            _ => (id, None),
        };
        error_response(id, self.jsonrpc_code(), &self.to_string(), data)
    }

    /// The full HTTP response for the request `id` when known.
    pub fn response(&self, id: Option<&RequestId>) -> Response {
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(id),
        )
            .into_response();
        match self {
            Self::Unauthorized { resource_metadata } => {
                let value = format!(
                    "Bearer resource_metadata=\"{resource_metadata}\", error=\"invalid_token\""
                );
                if let Ok(value) = HeaderValue::try_from(value) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Self::WrongServer { .. } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                );
            }
            Self::MethodNotAllowed => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
            }
            _ => {}
        }
        response
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        self.response(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_codes_stay_outside_the_reserved_jsonrpc_range() {
        for code in [
            UPSTREAM_UNAVAILABLE,
            UPSTREAM_TIMEOUT,
            UPSTREAM_PROTOCOL,
            GATEWAY_INTERNAL,
        ] {
            assert!(!(-32768..=-32000).contains(&code), "{code}");
        }
    }

    #[test]
    fn unauthorized_points_at_the_resource_metadata() {
        let response = ProxyError::Unauthorized {
            resource_metadata: "http://gw/.well-known/oauth-protected-resource/mcp/x".into(),
        }
        .response(None);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or("");
        assert!(
            challenge.starts_with("Bearer resource_metadata=\"http://gw/"),
            "{challenge}"
        );
    }

    #[test]
    fn upstream_failures_are_retryable_and_blamed_on_the_upstream() {
        assert_eq!(ProxyError::UpstreamTimeout.fault(), Fault::Upstream);
        assert!(ProxyError::UpstreamTimeout.retryable());
        assert!(!ProxyError::SessionNotFound.retryable());
        assert_eq!(ProxyError::SessionNotFound.status(), StatusCode::NOT_FOUND);
    }
}
