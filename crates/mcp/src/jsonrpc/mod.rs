//! JSON-RPC 2.0 as MCP uses it: one message per body, typed just enough to route and judge.
//!
//! ```text
//!  raw bytes ──parse_strict──> Value ──Message::from_value──> Message
//!      │                         │                               │
//!      └─────────────── Frame { raw, value, msg } ───────────────┘
//!                 the gateway judges `msg`/`value` and forwards `raw`
//! ```
//!
//! Decisions (the README has the reasoning):
//! - `"jsonrpc"` must be exactly `"2.0"`.
//! - A JSON array is a batch: [`FrameError::Batch`]. MCP removed batching in 2025-06-18; the
//!   gateway answers HTTP 400.
//! - Unknown top-level members are rejected. JSON-RPC 2.0 lists the complete member set of a
//!   request and of a response; an extra member is either a client bug or an attempt to smuggle
//!   something past the policy to a lenient upstream, and the gateway forwards raw bytes. (The
//!   TypeScript SDK's schemas are `.strict()` for the same reason.) Members *inside* `params`,
//!   `result` and `error` are never checked here: MCP extends those freely.
//! - Request ids are strings or integers that fit i64; `null`, floats, booleans, objects are
//!   invalid. Error responses may have no id (or `null`) when the request's id was unreadable.
//! - `params`, when present, must be an object (MCP never uses positional params).
//! - A response has exactly one of `result` and `error`.

mod frame;

pub use frame::Frame;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

use crate::json::JsonError;

/// JSON-RPC and MCP error codes.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params (MCP also uses it for unknown tools and missing `_meta` fields).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// 2026-07-28 `HeaderMismatch`: headers missing, malformed or contradicting the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28 `MissingRequiredClientCapability`: the request needs an undeclared capability.
    pub const MISSING_CAPABILITY: i64 = -32021;
    /// 2026-07-28 `UnsupportedProtocolVersion`: `data` carries `supported` and `requested`.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// A JSON-RPC request id as MCP allows it: a string or an integer, never null.
///
/// Echo is exact: serde_json yields an integer only for a canonical integer literal (no
/// fraction, exponent or `-0`), so [`RequestId::to_value`] writes the same token the client sent;
/// a string id is written with the same decoded content (escapes may be spelled differently,
/// which JSON defines as the same string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// An integer id.
    Number(i64),
    /// A string id.
    String(String),
}

impl RequestId {
    /// Reads an id; `None` when the value is not a valid MCP request id.
    pub fn from_value(value: &Value) -> Option<RequestId> {
        match value {
            Value::String(s) => Some(RequestId::String(s.clone())),
            Value::Number(n) => n.as_i64().map(RequestId::Number),
            _ => None,
        }
    }

    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            RequestId::Number(n) => Value::from(*n),
            RequestId::String(s) => Value::String(s.clone()),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::String(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Number(n) => serializer.serialize_i64(*n),
            RequestId::String(s) => serializer.serialize_str(s),
        }
    }
}

/// The `error` member of an error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    /// Error code (see [`codes`]).
    pub code: i64,
    /// Short description.
    pub message: String,
    /// Optional structured detail.
    pub data: Option<Value>,
}

impl ErrorObject {
    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), Value::from(self.code));
        m.insert("message".into(), Value::String(self.message.clone()));
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        Value::Object(m)
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: expects a response with the same id.
    Request {
        /// Request id.
        id: RequestId,
        /// Method name.
        method: String,
        /// `params` object, if present.
        params: Option<Value>,
    },
    /// A notification: no id, no response.
    Notification {
        /// Method name.
        method: String,
        /// `params` object, if present.
        params: Option<Value>,
    },
    /// A successful response.
    Response {
        /// Id of the request answered.
        id: RequestId,
        /// The `result` member (any JSON value; MCP uses objects).
        result: Value,
    },
    /// An error response.
    Error {
        /// Id of the request answered; `None` when it could not be read (`null` or absent).
        id: Option<RequestId>,
        /// The error.
        error: ErrorObject,
    },
}

/// Why a JSON body is not one valid JSON-RPC message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Not strict JSON (see [`JsonError`]).
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A JSON array: batches are not part of MCP since 2025-06-18.
    #[error("json-rpc batches are not supported")]
    Batch,
    /// The body is JSON but not an object.
    #[error("json-rpc message must be an object")]
    NotAnObject,
    /// `"jsonrpc"` missing or not `"2.0"`.
    #[error("jsonrpc member must be \"2.0\"")]
    Version,
    /// A top-level member JSON-RPC 2.0 does not define for this kind of message.
    #[error("unknown top-level member {0:?}")]
    UnknownMember(String),
    /// `method` is not a string.
    #[error("method must be a string")]
    Method,
    /// The id is null, a float, out of i64 range or not a string/integer.
    #[error("invalid request id: {0}")]
    Id(&'static str),
    /// `params` present but not an object.
    #[error("params must be an object")]
    Params,
    /// Neither a request, a notification nor a response (e.g. both `result` and `error`).
    #[error("invalid message shape: {0}")]
    Shape(&'static str),
    /// The `error` member is not `{code: integer, message: string, data?}`.
    #[error("invalid error object: {0}")]
    ErrorObject(&'static str),
}

impl FrameError {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            FrameError::Json(_) => codes::PARSE_ERROR,
            _ => codes::INVALID_REQUEST,
        }
    }
}

const REQUEST_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params"];
const RESULT_MEMBERS: &[&str] = &["jsonrpc", "id", "result"];
const ERROR_MEMBERS: &[&str] = &["jsonrpc", "id", "error"];

impl Message {
    /// Classifies a parsed JSON value (see the module docs for the rules).
    pub fn from_value(value: Value) -> Result<Message, FrameError> {
        Self::from_value_ref(&value)
    }

    /// Like [`Message::from_value`], cloning only the parts the message keeps.
    pub fn from_value_ref(value: &Value) -> Result<Message, FrameError> {
        let obj = match value {
            Value::Object(o) => o,
            Value::Array(_) => return Err(FrameError::Batch),
            _ => return Err(FrameError::NotAnObject),
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(FrameError::Version);
        }
        if let Some(method) = obj.get("method") {
            only_members(obj, REQUEST_MEMBERS)?;
            let method = method.as_str().ok_or(FrameError::Method)?.to_owned();
            let params = match obj.get("params") {
                None => None,
                Some(p @ Value::Object(_)) => Some(p.clone()),
                Some(_) => return Err(FrameError::Params),
            };
            return match obj.get("id") {
                None => Ok(Message::Notification { method, params }),
                Some(id) => Ok(Message::Request {
                    id: request_id(id)?,
                    method,
                    params,
                }),
            };
        }
        match (obj.get("result"), obj.get("error")) {
            (Some(_), Some(_)) => Err(FrameError::Shape("both result and error")),
            (Some(result), None) => {
                only_members(obj, RESULT_MEMBERS)?;
                let id = obj.get("id").ok_or(FrameError::Id("missing"))?;
                Ok(Message::Response {
                    id: request_id(id)?,
                    result: result.clone(),
                })
            }
            (None, Some(error)) => {
                only_members(obj, ERROR_MEMBERS)?;
                let id = match obj.get("id") {
                    None | Some(Value::Null) => None,
                    Some(id) => Some(request_id(id)?),
                };
                Ok(Message::Error {
                    id,
                    error: error_object(error)?,
                })
            }
            (None, None) => Err(FrameError::Shape("no method, result or error")),
        }
    }

    /// Rebuilds the JSON value of the message (members in canonical order).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), Value::from("2.0"));
        match self {
            Message::Request { id, method, params } => {
                m.insert("id".into(), id.to_value());
                m.insert("method".into(), Value::String(method.clone()));
                if let Some(p) = params {
                    m.insert("params".into(), p.clone());
                }
            }
            Message::Notification { method, params } => {
                m.insert("method".into(), Value::String(method.clone()));
                if let Some(p) = params {
                    m.insert("params".into(), p.clone());
                }
            }
            Message::Response { id, result } => {
                m.insert("id".into(), id.to_value());
                m.insert("result".into(), result.clone());
            }
            Message::Error { id, error } => {
                if let Some(id) = id {
                    m.insert("id".into(), id.to_value());
                }
                m.insert("error".into(), error.to_value());
            }
        }
        Value::Object(m)
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            _ => None,
        }
    }

    /// The id of a request or response.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Message::Request { id, .. } | Message::Response { id, .. } => Some(id),
            Message::Error { id, .. } => id.as_ref(),
            Message::Notification { .. } => None,
        }
    }

    /// The `params` object of a request or notification.
    pub fn params(&self) -> Option<&Value> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => {
                params.as_ref()
            }
            _ => None,
        }
    }

    /// `params._meta` when it is an object.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.params()?.get("_meta")?.as_object()
    }
}

fn only_members(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), FrameError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FrameError::UnknownMember(k.clone())),
        None => Ok(()),
    }
}

fn request_id(v: &Value) -> Result<RequestId, FrameError> {
    match v {
        Value::Null => Err(FrameError::Id("null")),
        Value::Number(n) if n.is_f64() => Err(FrameError::Id("not an integer")),
        Value::Number(_) => RequestId::from_value(v).ok_or(FrameError::Id("out of range")),
        Value::String(_) => RequestId::from_value(v).ok_or(FrameError::Id("not a string")),
        _ => Err(FrameError::Id("must be a string or an integer")),
    }
}

fn error_object(v: &Value) -> Result<ErrorObject, FrameError> {
    let obj = v
        .as_object()
        .ok_or(FrameError::ErrorObject("not an object"))?;
    let code = obj
        .get("code")
        .and_then(Value::as_i64)
        .ok_or(FrameError::ErrorObject("code must be an integer"))?;
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .ok_or(FrameError::ErrorObject("message must be a string"))?
        .to_owned();
    Ok(ErrorObject {
        code,
        message,
        data: obj.get("data").cloned(),
    })
}

/// Builds an error response. Without an id the `id` member is omitted, as the MCP schema
/// (2025-11-25 and later) has it, rather than JSON-RPC 2.0's `"id": null`, which strict MCP
/// clients reject.
pub fn error_response(
    id: Option<&RequestId>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Bytes {
    let msg = Message::Error {
        id: id.cloned(),
        error: ErrorObject {
            code,
            message: message.to_owned(),
            data,
        },
    };
    Bytes::from(msg.to_value().to_string())
}

/// Builds a result response.
pub fn result_response(id: &RequestId, result: &Value) -> Bytes {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), Value::from("2.0"));
    m.insert("id".into(), id.to_value());
    m.insert("result".into(), result.clone());
    Bytes::from(Value::Object(m).to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
