//! Request-id and progress-token rewriting, with every other byte left alone.
//!
//! A stdio child is one id space shared by everything the gateway sends it: several clients on
//! the shared child, or a client and the gateway's own requests on a session child. So each
//! request gets a gateway-unique integer id on the way in and its original id (the raw token,
//! string or number, exactly as the client wrote it) back on the way out. A progress token in
//! `params._meta.progressToken` gets the same treatment, reusing the request's gateway id as the
//! token, since the token is what routes `notifications/progress` back to its request.
//!
//! Members are handled as [`RawValue`]s: `params` (which may carry an opaque `requestState`) and a
//! response's `result` / `error` are copied byte for byte. Only when a progress token must be
//! replaced are `params` and `params._meta` split into their members, and then only those two
//! objects are re-serialised, their other members still raw.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tollgate_mcp::subscriptions::META_SUBSCRIPTION_ID;

/// A JSON-RPC message with its members kept raw. Unknown members are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct RawMessage<'a> {
    /// `id`, as written (`null` reads as `None`).
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    /// `method`.
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    /// `params`.
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    /// `result`.
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    /// `error`.
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

impl<'a> RawMessage<'a> {
    /// Parses one message.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The id as a gateway-assigned integer, when it is one.
    pub fn gateway_id(&self) -> Option<u64> {
        self.id.and_then(|id| serde_json::from_str(id.get()).ok())
    }

    /// `error.code`, when the message is an error response with an integer code.
    pub fn error_code(&self) -> Option<i64> {
        let error = RawMap::parse(self.error?)?;
        serde_json::from_str(error.get("code")?.get()).ok()
    }

    /// `params._meta["io.modelcontextprotocol/subscriptionId"]` as a gateway-assigned integer:
    /// the listen request a notification belongs to. `Some(None)` when the tag is there but is
    /// not one of ours.
    pub fn subscription_id(&self) -> Option<Option<u64>> {
        let params = RawMap::parse(self.params?)?;
        let meta = RawMap::parse(params.get("_meta")?)?;
        let tag = meta.get(META_SUBSCRIPTION_ID)?;
        Some(serde_json::from_str(tag.get()).ok())
    }

    /// `params` parsed, for the few notifications the gateway must look into.
    pub fn params_value(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.params?.get()).ok()
    }

    /// `params.progressToken` as a gateway-assigned integer (for `notifications/progress`).
    pub fn progress_token(&self) -> Option<u64> {
        let params = RawMap::parse(self.params?)?;
        serde_json::from_str(params.get("progressToken")?.get()).ok()
    }
}

/// A JSON object split into its members, in order, each value raw.
struct RawMap<'a>(Vec<(String, Cow<'a, RawValue>)>);

impl<'a> RawMap<'a> {
    fn parse(raw: &'a RawValue) -> Option<Self> {
        serde_json::from_str(raw.get()).ok()
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `key` to `value`, in place when present, else as the last member.
    fn set(&mut self, key: &str, value: Box<RawValue>) {
        if self.replace(key, value.clone()).is_none() {
            self.0.push((key.to_owned(), Cow::Owned(value)));
        }
    }

    /// Replaces the value of `key`; returns the old value, or `None` (and changes nothing) when
    /// the key is absent.
    fn replace(&mut self, key: &str, value: Box<RawValue>) -> Option<Box<RawValue>> {
        let slot = self.0.iter_mut().find(|(k, _)| k == key)?;
        let old = std::mem::replace(&mut slot.1, Cow::Owned(value));
        Some(old.into_owned())
    }

    fn to_raw(&self) -> Result<Box<RawValue>, serde_json::Error> {
        RawValue::from_string(serde_json::to_string(self)?)
    }
}

impl<'de> Deserialize<'de> for RawMap<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = RawMap<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, Cow::Borrowed(value)));
                }
                Ok(RawMap(members))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

impl Serialize for RawMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value.as_ref())?;
        }
        map.end()
    }
}

/// Why a message could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub(super) enum RewriteError {
    /// Not a JSON-RPC message.
    #[error("not a json-rpc message: {0}")]
    Json(#[from] serde_json::Error),
    /// A request without `id` or `method`.
    #[error("a request needs an id and a method")]
    NotARequest,
}

/// A request made ready for a child.
#[derive(Debug)]
pub(super) struct Rewritten {
    /// The line to write (no newline yet).
    pub line: Vec<u8>,
    /// The client's id, as written.
    pub original_id: Box<RawValue>,
    /// The client's progress token, when it sent one (it became the gateway id).
    pub original_token: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Request<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Response<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Notification<'a> {
    jsonrpc: &'static str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
}

fn integer(value: u64) -> Result<Box<RawValue>, serde_json::Error> {
    RawValue::from_string(value.to_string())
}

/// Gives the request in `body` the id `gateway_id`, and its progress token too when it has one.
pub(super) fn rewrite_request(body: &[u8], gateway_id: u64) -> Result<Rewritten, RewriteError> {
    let message = RawMessage::parse(body)?;
    let (Some(id), Some(method)) = (message.id, message.method.as_deref()) else {
        return Err(RewriteError::NotARequest);
    };
    let mut original_token = None;
    let mut new_params = None;
    if let Some(mut params) = message.params.and_then(RawMap::parse)
        && let Some(mut meta) = params.get("_meta").and_then(RawMap::parse)
        && let Some(token) = meta.replace("progressToken", integer(gateway_id)?)
    {
        original_token = Some(token);
        let meta = meta.to_raw()?;
        params.replace("_meta", meta);
        new_params = Some(params.to_raw()?);
    }
    let line = serde_json::to_vec(&Request {
        jsonrpc: "2.0",
        id: gateway_id,
        method,
        params: new_params.as_deref().or(message.params),
    })?;
    Ok(Rewritten {
        line,
        original_id: id.to_owned(),
        original_token,
    })
}

/// The child's response `message`, given back its original id.
pub(super) fn restore_response(
    message: &RawMessage<'_>,
    original_id: &RawValue,
) -> Result<Vec<u8>, serde_json::Error> {
    let null;
    let result = match (message.result, message.error) {
        (None, None) => {
            null = RawValue::from_string("null".to_owned())?;
            Some(&*null)
        }
        (result, _) => result,
    };
    serde_json::to_vec(&Response {
        jsonrpc: "2.0",
        id: original_id,
        result: if message.error.is_some() {
            None
        } else {
            result
        },
        error: message.error,
    })
}

/// The child's `notifications/progress` given back the client's token.
pub(super) fn restore_progress(
    message: &RawMessage<'_>,
    original_token: &RawValue,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let (Some(method), Some(raw)) = (message.method.as_deref(), message.params) else {
        return Ok(None);
    };
    let Some(mut params) = RawMap::parse(raw) else {
        return Ok(None);
    };
    if params
        .replace("progressToken", original_token.to_owned())
        .is_none()
    {
        return Ok(None);
    }
    let params = params.to_raw()?;
    Ok(Some(serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params: Some(&params),
    })?))
}

/// The notification `message` tagged for the listen stream whose client-side id is
/// `subscription`: `params._meta["io.modelcontextprotocol/subscriptionId"]` set (the child's
/// gateway id given back its original form, or a tag added to an untagged notification), every
/// other member left raw.
pub(super) fn with_subscription_id(
    message: &RawMessage<'_>,
    subscription: &RawValue,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let Some(method) = message.method.as_deref() else {
        return Ok(None);
    };
    let empty = RawValue::from_string("{}".to_owned())?;
    let Some(mut params) = RawMap::parse(message.params.unwrap_or(&empty)) else {
        return Ok(None);
    };
    let Some(mut meta) = RawMap::parse(params.get("_meta").unwrap_or(&empty)) else {
        return Ok(None);
    };
    meta.set(META_SUBSCRIPTION_ID, subscription.to_owned());
    params.set("_meta", meta.to_raw()?);
    let params = params.to_raw()?;
    Ok(Some(serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params: Some(&params),
    })?))
}

/// The client's `notifications/cancelled` pointed at the gateway id of the request it names.
/// `gateway_id_of` maps the client's `requestId` (raw) to a gateway id.
pub(super) fn rewrite_cancelled(
    body: &[u8],
    gateway_id_of: impl FnOnce(&RawValue) -> Option<u64>,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let message = RawMessage::parse(body)?;
    let (Some(method), Some(raw)) = (message.method.as_deref(), message.params) else {
        return Ok(None);
    };
    let Some(mut params) = RawMap::parse(raw) else {
        return Ok(None);
    };
    let Some(gateway_id) = params.get("requestId").and_then(gateway_id_of) else {
        return Ok(None);
    };
    params.replace("requestId", integer(gateway_id)?);
    let params = params.to_raw()?;
    Ok(Some(serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params: Some(&params),
    })?))
}

/// The gateway's own `notifications/cancelled` for the request it sent as `gateway_id`.
pub(super) fn cancelled(gateway_id: u64, reason: &str) -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": gateway_id, "reason": reason },
    })
    .to_string()
    .into_bytes()
}

/// Whether two raw ids are the same JSON-RPC id (same type, same value).
pub(super) fn same_id(a: &RawValue, b: &RawValue) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a.get()),
        serde_json::from_str::<serde_json::Value>(b.get()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Makes a valid JSON text safe to write as one line.
///
/// A raw CR or LF cannot occur inside a JSON string (control characters must be escaped), so in
/// valid JSON every such byte is insignificant whitespace between tokens; replacing it with a
/// space keeps the value, and every other byte, unchanged.
pub(super) fn one_line(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        Cow::Owned(
            bytes
                .iter()
                .map(|&b| if matches!(b, b'\n' | b'\r') { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn request_id_is_replaced_and_params_travel_byte_for_byte() {
        let body = br#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"x", "requestState":"q\u0041z  1.0e0" ,"arguments":{"n":1.50}}}"#;
        let out = rewrite_request(body, 42).unwrap();
        assert_eq!(
            text(&out.line),
            r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"x", "requestState":"q\u0041z  1.0e0" ,"arguments":{"n":1.50}}}"#
        );
        assert_eq!(out.original_id.get(), r#""a-1""#);
        assert!(out.original_token.is_none());
    }

    #[test]
    fn progress_token_becomes_the_gateway_id_and_other_meta_stays_raw() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"x":1.0,"progressToken":"tok"},"name":"slow", "requestState":"s"}}"#;
        let out = rewrite_request(body, 9).unwrap();
        assert_eq!(
            text(&out.line),
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"_meta":{"x":1.0,"progressToken":9},"name":"slow","requestState":"s"}}"#
        );
        assert_eq!(out.original_token.unwrap().get(), r#""tok""#);
    }

    #[test]
    fn response_gets_its_original_id_back_in_its_original_form() {
        let line = br#"{"jsonrpc":"2.0","id":42,"result":{"v":1.50}}"#;
        let message = RawMessage::parse(line).unwrap();
        assert_eq!(message.gateway_id(), Some(42));
        let id = RawValue::from_string(r#""42""#.into()).unwrap();
        assert_eq!(
            text(&restore_response(&message, &id).unwrap()),
            r#"{"jsonrpc":"2.0","id":"42","result":{"v":1.50}}"#
        );
        let line = br#"{"jsonrpc":"2.0","id":42,"error":{"code":-1,"message":"m"}}"#;
        let message = RawMessage::parse(line).unwrap();
        let id = RawValue::from_string("7".into()).unwrap();
        assert_eq!(
            text(&restore_response(&message, &id).unwrap()),
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"m"}}"#
        );
    }

    #[test]
    fn progress_notification_gets_the_client_token_back() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1,"total":2}}"#;
        let message = RawMessage::parse(line).unwrap();
        assert_eq!(message.progress_token(), Some(9));
        let token = RawValue::from_string(r#""tok""#.into()).unwrap();
        assert_eq!(
            text(&restore_progress(&message, &token).unwrap().unwrap()),
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok","progress":1,"total":2}}"#
        );
    }

    #[test]
    fn a_listen_notification_gets_the_clients_subscription_id_back() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":12,"x":1.0},"n":1.50}}"#;
        let message = RawMessage::parse(line).unwrap();
        assert_eq!(message.subscription_id(), Some(Some(12)));
        let original = RawValue::from_string(r#""listen-a""#.into()).unwrap();
        assert_eq!(
            text(&with_subscription_id(&message, &original).unwrap().unwrap()),
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"listen-a","x":1.0},"n":1.50}}"#
        );
    }

    #[test]
    fn an_untagged_notification_is_tagged_for_the_stream_it_is_given_to() {
        let untagged = br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#;
        let message = RawMessage::parse(untagged).unwrap();
        assert_eq!(message.subscription_id(), None);
        let original = RawValue::from_string("3".into()).unwrap();
        assert_eq!(
            text(&with_subscription_id(&message, &original).unwrap().unwrap()),
            r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":3}}}"#
        );
        let foreign = br#"{"jsonrpc":"2.0","method":"m","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"x"}}}"#;
        assert_eq!(
            RawMessage::parse(foreign).unwrap().subscription_id(),
            Some(None)
        );
    }

    #[test]
    fn an_error_responses_code_is_read() {
        let line = br#"{"jsonrpc":"2.0","id":1,"error":{"message":"m","code":-32601}}"#;
        assert_eq!(RawMessage::parse(line).unwrap().error_code(), Some(-32601));
        let line = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(RawMessage::parse(line).unwrap().error_code(), None);
    }

    #[test]
    fn client_cancellation_names_the_gateway_id() {
        let body = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"c1","reason":"r"}}"#;
        let out = rewrite_cancelled(body, |id| (id.get() == r#""c1""#).then_some(77))
            .unwrap()
            .unwrap();
        assert_eq!(
            text(&out),
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77,"reason":"r"}}"#
        );
        assert!(rewrite_cancelled(body, |_| None).unwrap().is_none());
    }

    #[test]
    fn newlines_between_tokens_become_spaces() {
        let body = b"{\"a\":\r\n \"b\\nc\"\n}";
        assert_eq!(&*one_line(body), b"{\"a\":   \"b\\nc\" }");
        assert!(matches!(one_line(b"{}"), Cow::Borrowed(_)));
    }

    #[test]
    fn ids_compare_by_type_and_value() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        assert!(same_id(&raw("1"), &raw("1")));
        assert!(!same_id(&raw("1"), &raw(r#""1""#)));
        assert!(same_id(&raw(r#""\u0061""#), &raw(r#""a""#)));
    }
}
