//! JSON-RPC 2.0 building blocks shared by every transport of the test upstream.

use serde_json::{Value, json};

/// The only protocol revision of the modern (stateless) era.
pub const MODERN_VERSION: &str = "2026-07-28";

/// Legacy (handshake) revisions this upstream negotiates, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// `_meta` key carrying the protocol revision of a modern request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying the client's capabilities on a modern request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key carrying the log level a modern request opts in to.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// `_meta` key identifying the server on modern responses.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `_meta` key tagging notifications delivered on a `subscriptions/listen` stream.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// JSON-RPC and MCP error codes used here.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown or removed method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters (unknown tool, missing `_meta`, tampered state...).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (also what the `fail` tool answers).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Legacy transport-level errors (missing session, server not initialized).
    pub const LEGACY_TRANSPORT: i64 = -32000;
    /// Legacy "session not found".
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// Modern: an HTTP header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// Modern: the request needs a client capability that was not declared.
    pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
    /// Modern: unsupported protocol version.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// A JSON-RPC error together with the HTTP status it travels with.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// Human-readable message.
    pub message: String,
    /// Optional `data` member.
    pub data: Option<Value>,
    /// HTTP status when sent over HTTP (200 when the error lives in the body only).
    pub http_status: u16,
}

impl RpcError {
    /// An error carried in a 200 response.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
            http_status: 200,
        }
    }

    /// Sets the `data` member.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = status;
        self
    }

    /// -32602 in a 200 response.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    /// The error as a JSON-RPC `error` object.
    pub fn to_error_object(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(data), Some(obj)) = (&self.data, error.as_object_mut()) {
            obj.insert("data".into(), data.clone());
        }
        error
    }
}

/// A response message for `id` carrying `result`.
pub fn response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// An error response message for `id`.
pub fn error_response(id: &Value, error: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": error.to_error_object() })
}

/// A notification message.
pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// A request message (server to client).
pub fn request(id: &Value, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// What kind of JSON-RPC message a parsed value is.
#[derive(Debug)]
pub enum Incoming {
    /// A request: has `method` and `id`.
    Request {
        /// Request id.
        id: Value,
        /// Method name.
        method: String,
        /// Params (an empty object when absent).
        params: Value,
    },
    /// A notification: has `method`, no `id`.
    Notification {
        /// Method name.
        method: String,
        /// Params (an empty object when absent).
        params: Value,
    },
    /// A response to a server-to-client request.
    Response {
        /// The id of the server's request.
        id: Value,
        /// `Ok(result)` or `Err(error object)`.
        outcome: Result<Value, Value>,
    },
}

/// Classifies one JSON-RPC message; `Err` is the error to answer with.
pub fn classify(message: Value) -> Result<Incoming, RpcError> {
    let Value::Object(mut obj) = message else {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "invalid request: not a json object",
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "invalid request: jsonrpc must be \"2.0\"",
        ));
    }
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(RpcError::new(
                code::INVALID_REQUEST,
                "invalid request: params must be an object",
            ));
        }
    };
    match (obj.remove("method"), obj.remove("id")) {
        (Some(Value::String(method)), Some(id)) if id.is_string() || id.is_number() => {
            Ok(Incoming::Request { id, method, params })
        }
        (Some(Value::String(_)), Some(_)) => Err(RpcError::new(
            code::INVALID_REQUEST,
            "invalid request: id must be a string or a number",
        )),
        (Some(Value::String(method)), None) => Ok(Incoming::Notification { method, params }),
        (Some(_), _) => Err(RpcError::new(
            code::INVALID_REQUEST,
            "invalid request: method must be a string",
        )),
        (None, Some(id)) => {
            if let Some(result) = obj.remove("result") {
                Ok(Incoming::Response {
                    id,
                    outcome: Ok(result),
                })
            } else if let Some(error) = obj.remove("error") {
                Ok(Incoming::Response {
                    id,
                    outcome: Err(error),
                })
            } else {
                Err(RpcError::new(
                    code::INVALID_REQUEST,
                    "invalid request: no method, result or error",
                ))
            }
        }
        (None, None) => Err(RpcError::new(
            code::INVALID_REQUEST,
            "invalid request: no method",
        )),
    }
}

/// The `_meta` object of a request's params, if any.
pub fn meta(params: &Value) -> Option<&serde_json::Map<String, Value>> {
    params.get("_meta").and_then(Value::as_object)
}

/// The modern protocol version a request declares in `_meta`, if any.
pub fn meta_version(params: &Value) -> Option<&str> {
    meta(params)
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str)
}

/// Picks the legacy version to answer an `initialize` with.
pub fn negotiate_legacy(requested: Option<&str>) -> &'static str {
    match requested {
        Some(v) => LEGACY_VERSIONS
            .iter()
            .copied()
            .find(|known| *known == v)
            .unwrap_or(LEGACY_VERSIONS[0]),
        None => LEGACY_VERSIONS[0],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_method_and_id_is_a_request() {
        let m = classify(json!({"jsonrpc":"2.0","id":7,"method":"tools/list"})).unwrap();
        assert!(matches!(m, Incoming::Request { method, .. } if method == "tools/list"));
    }

    #[test]
    fn a_message_with_result_and_no_method_is_a_response() {
        let m = classify(json!({"jsonrpc":"2.0","id":"s1","result":{}})).unwrap();
        assert!(matches!(m, Incoming::Response { outcome: Ok(_), .. }));
    }

    #[test]
    fn a_batch_is_not_a_valid_message() {
        let e = classify(json!([{"jsonrpc":"2.0","id":1,"method":"ping"}])).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
    }

    #[test]
    fn an_unknown_legacy_version_negotiates_the_newest() {
        assert_eq!(negotiate_legacy(Some("1999-01-01")), "2025-11-25");
        assert_eq!(negotiate_legacy(Some("2025-06-18")), "2025-06-18");
    }
}
