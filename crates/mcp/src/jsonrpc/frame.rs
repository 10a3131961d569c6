//! [`Frame`]: one message with the bytes it came in, so the judged value and the forwarded bytes
//! cannot drift apart.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{FrameError, Message, RequestId};
use crate::json::{JsonLimits, parse_strict};

/// A strictly parsed JSON-RPC message together with its original bytes.
///
/// `raw` is what gets forwarded; `value` and `message` are what gets judged. [`Frame::parse`]
/// guarantees they mean the same thing (see [`crate::json`]). The message duplicates `params`
/// of the value; bodies are bounded by [`JsonLimits::max_bytes`], so that is accepted for
/// simpler accessors.
#[derive(Debug, Clone)]
pub struct Frame {
    raw: Bytes,
    value: Value,
    msg: Message,
}

impl Frame {
    /// Parses one message from a body.
    pub fn parse(raw: Bytes, limits: &JsonLimits) -> Result<Frame, FrameError> {
        let value = parse_strict(&raw, limits)?;
        let msg = Message::from_value_ref(&value)?;
        Ok(Frame { raw, value, msg })
    }

    /// The original bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The parsed JSON value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The classified message.
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Takes the frame apart.
    pub fn into_parts(self) -> (Bytes, Value, Message) {
        (self.raw, self.value, self.msg)
    }

    /// Method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.msg.method()
    }

    /// Id of a request or response.
    pub fn id(&self) -> Option<&RequestId> {
        self.msg.id()
    }

    /// `params` of a request or notification.
    pub fn params(&self) -> Option<&Value> {
        self.msg.params()
    }

    /// `params._meta` when it is an object.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.msg.meta()
    }

    /// True for a request (has an id and a method).
    pub fn is_request(&self) -> bool {
        matches!(self.msg, Message::Request { .. })
    }

    /// True for a notification.
    pub fn is_notification(&self) -> bool {
        matches!(self.msg, Message::Notification { .. })
    }

    /// True for a result or error response.
    pub fn is_response(&self) -> bool {
        matches!(self.msg, Message::Response { .. } | Message::Error { .. })
    }

    /// `params.name` of a `tools/call` request, when it is a string.
    pub fn tool_name(&self) -> Option<&str> {
        match &self.msg {
            Message::Request { method, params, .. } if method == "tools/call" => {
                params.as_ref()?.get("name")?.as_str()
            }
            _ => None,
        }
    }

    /// The body value that `Mcp-Name` mirrors: `params.name` for `tools/call` and
    /// `prompts/get`, `params.uri` for `resources/read`. `Some(None)` when the method needs one
    /// but the body lacks it (or it is not a string); `None` for other messages.
    pub fn name_header_source(&self) -> Option<Option<&str>> {
        let field = match self.msg {
            Message::Request { ref method, .. } => match method.as_str() {
                "tools/call" | "prompts/get" => "name",
                "resources/read" => "uri",
                _ => return None,
            },
            _ => return None,
        };
        Some(
            self.params()
                .and_then(|p| p.get(field))
                .and_then(Value::as_str),
        )
    }
}
