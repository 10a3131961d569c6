//! MCP's HTTP headers: names, the `=?base64?…?=` value encoding, and the cross-checks between
//! headers and body.
//!
//! The gateway enforces policy on the body. Headers are only cross-checked, because a load
//! balancer or a server behind the gateway may route on them: a header that says something the
//! body does not is refused, never believed.
//!
//! Modern (2026-07-28) request checks, in this order (first failure wins):
//!
//! | check                                                     | code   | JSON-RPC name        |
//! |-----------------------------------------------------------|--------|----------------------|
//! | `_meta` protocol version present and a string             | -32602 | Invalid params       |
//! | `MCP-Protocol-Version` present, single, equal to `_meta`  | -32020 | HeaderMismatch       |
//! | that version is a modern one this crate supports          | -32022 | UnsupportedProtocolVersion, `data: {supported, requested}` |
//! | `_meta` client capabilities present and an object         | -32602 | Invalid params       |
//! | `Mcp-Method` present, single, equal to `method`           | -32020 | HeaderMismatch       |
//! | `Mcp-Name` (decoded) equal to `params.name` / `params.uri`| -32020 | HeaderMismatch       |
//!
//! The header is compared with `_meta` before the version is judged, as the conformance suite
//! and the SDKs do: a request whose header and body disagree is a mismatch (-32020) even when
//! the body names a version nobody knows. A consistent request naming an unknown version gets
//! the negotiable -32022, whose `data.supported` lists only the modern revisions: the versions
//! a modern request can name, which are what `server/discover` reports (a legacy revision is
//! negotiated with `initialize`, never in `_meta`). A missing
//! `clientCapabilities` is -32602, not -32021: the spec reserves -32021
//! (`MissingRequiredClientCapability`) for a request that *needs* a capability the client did not
//! declare; [`check_client_capabilities`] builds that error for callers that know what they need
//! (for example an approval flow that wants `elicitation`). All of these are HTTP 400.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use http::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::era::{
    Era, LEGACY_DEFAULT_VERSION, LEGACY_VERSIONS, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION,
    MODERN_VERSIONS, detect_era, is_legacy_version, is_modern_version,
};
use crate::jsonrpc::{Frame, Message, codes};
use crate::tool::ParamHeader;

/// `Mcp-Session-Id` (legacy sessions).
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// `MCP-Protocol-Version`.
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// `Mcp-Method` (modern).
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// `Mcp-Name` (modern; `tools/call`, `prompts/get`, `resources/read`).
pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// `Last-Event-ID` (legacy SSE resumption).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Prefix of `Mcp-Param-{Name}` headers, lowercase as `http` stores names.
pub const MCP_PARAM_PREFIX: &str = "mcp-param-";

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

/// Standard alphabet, canonical padding required: the SEP-2243 test-case table (and the
/// conformance suite after it) has a server reject `=?base64?SGVsbG8?=` for its missing padding.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Why a header value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderValueError {
    /// Bytes outside visible ASCII and space (control characters, obs-text).
    #[error("header value contains characters outside printable ascii")]
    InvalidCharacters,
    /// The `=?base64?…?=` payload is not standard base64.
    #[error("invalid base64 in encoded header value")]
    InvalidBase64,
    /// The decoded bytes are not UTF-8.
    #[error("encoded header value is not utf-8")]
    InvalidUtf8,
}

/// Decodes an MCP header value: `=?base64?{standard base64 of UTF-8}?=` (markers lowercase and
/// case-sensitive, padding required), otherwise the value itself, which must then be printable
/// ASCII (0x20-0x7E).
pub fn decode_header_value(value: &HeaderValue) -> Result<String, HeaderValueError> {
    let bytes = value.as_bytes();
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(HeaderValueError::InvalidCharacters);
    }
    // Only printable ASCII from here on, so this cannot fail; stay total anyway.
    let text = std::str::from_utf8(bytes).map_err(|_| HeaderValueError::InvalidCharacters)?;
    match sentinel_payload(text) {
        Some(payload) => {
            let raw = DECODER
                .decode(payload)
                .map_err(|_| HeaderValueError::InvalidBase64)?;
            String::from_utf8(raw).map_err(|_| HeaderValueError::InvalidUtf8)
        }
        None => Ok(text.to_owned()),
    }
}

fn sentinel_payload(text: &str) -> Option<&str> {
    text.strip_prefix(SENTINEL_PREFIX)?
        .strip_suffix(SENTINEL_SUFFIX)
}

/// Encodes a value for `Mcp-Name` / `Mcp-Param-*`: as-is when it is printable ASCII without
/// leading or trailing whitespace and does not look like the sentinel, otherwise
/// `=?base64?…?=` with standard, padded base64.
pub fn encode_header_value(value: &str) -> HeaderValue {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim_matches(' ') == value
        && sentinel_payload(value).is_none();
    let text = if plain {
        value.to_owned()
    } else {
        format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            STANDARD.encode(value)
        )
    };
    // Every byte is printable ASCII at this point, which `HeaderValue` always accepts.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A request whose headers or `_meta` fail the MCP transport checks. Always HTTP 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderCheckError {
    /// A required header is absent (-32020).
    #[error("header mismatch: required header {header} is missing")]
    Missing {
        /// Header name.
        header: &'static str,
    },
    /// A header that must appear once appears several times (-32020).
    #[error("header mismatch: header {header} appears more than once")]
    Repeated {
        /// Header name.
        header: &'static str,
    },
    /// A header value has invalid characters or encoding (-32020).
    #[error("header mismatch: header {header} is malformed: {reason}")]
    Malformed {
        /// Header name.
        header: &'static str,
        /// What is wrong with it.
        reason: HeaderValueError,
    },
    /// A header says something the body does not (-32020).
    #[error(
        "header mismatch: {header} header value {header_value:?} does not match body value {body_value:?}"
    )]
    Mismatch {
        /// Header name.
        header: &'static str,
        /// Decoded header value.
        header_value: String,
        /// Body value.
        body_value: String,
    },
    /// An `Mcp-Param-{Name}` header disagrees with the argument its tool declares for it:
    /// missing, repeated, malformed, different, or present without the argument (-32020).
    #[error("header mismatch: {header} header {problem}")]
    Param {
        /// `Mcp-Param-{Name}`, as the tool declares the name.
        header: String,
        /// What is wrong.
        problem: String,
    },
    /// The requested protocol version is not supported (-32022).
    #[error("unsupported protocol version {requested:?}")]
    UnsupportedVersion {
        /// What the client asked for.
        requested: String,
        /// What we support, newest first.
        supported: Vec<&'static str>,
    },
    /// A required `_meta` field or body field is missing or has the wrong type (-32602).
    #[error("invalid params: {0}")]
    InvalidParams(&'static str),
    /// The request needs client capabilities the client did not declare (-32021).
    #[error("missing required client capability")]
    MissingCapability {
        /// The missing part of the capabilities, as a `ClientCapabilities` object.
        required: Value,
    },
}

impl HeaderCheckError {
    /// JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            HeaderCheckError::Missing { .. }
            | HeaderCheckError::Repeated { .. }
            | HeaderCheckError::Malformed { .. }
            | HeaderCheckError::Mismatch { .. }
            | HeaderCheckError::Param { .. } => codes::HEADER_MISMATCH,
            HeaderCheckError::UnsupportedVersion { .. } => codes::UNSUPPORTED_VERSION,
            HeaderCheckError::InvalidParams(_) => codes::INVALID_PARAMS,
            HeaderCheckError::MissingCapability { .. } => codes::MISSING_CAPABILITY,
        }
    }

    /// JSON-RPC error message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// JSON-RPC error `data`: `{supported, requested}` for -32022, `{requiredCapabilities}` for
    /// -32021, nothing otherwise.
    pub fn data(&self) -> Option<Value> {
        match self {
            HeaderCheckError::UnsupportedVersion {
                requested,
                supported,
            } => Some(json!({ "supported": supported, "requested": requested })),
            HeaderCheckError::MissingCapability { required } => {
                Some(json!({ "requiredCapabilities": required }))
            }
            _ => None,
        }
    }

    /// HTTP status to answer with (400 for every case).
    pub fn http_status(&self) -> http::StatusCode {
        http::StatusCode::BAD_REQUEST
    }
}

/// Cross-checks a modern (2026-07-28) message against its headers; see the module docs for the
/// rules and their order.
///
/// For a notification only the headers that are present are cross-checked: the revision
/// defines no header requirements for notification POSTs. Responses are not checked (a client
/// must not POST them in this revision; refusing them is the caller's decision).
pub fn check_modern_headers(headers: &HeaderMap, frame: &Frame) -> Result<(), HeaderCheckError> {
    let (method, strict) = match frame.message() {
        Message::Request { method, .. } => (method.as_str(), true),
        Message::Notification { method, .. } => (method.as_str(), false),
        _ => return Ok(()),
    };
    let meta = frame.meta();
    let version = match meta.and_then(|m| m.get(META_PROTOCOL_VERSION)) {
        Some(Value::String(v)) => Some(v.as_str()),
        Some(_) => {
            return Err(HeaderCheckError::InvalidParams(
                "_meta protocol version must be a string",
            ));
        }
        None if strict => {
            return Err(HeaderCheckError::InvalidParams(
                "_meta is missing io.modelcontextprotocol/protocolVersion",
            ));
        }
        None => None,
    };
    // The header against `_meta` before the version itself: a header that says something the
    // body does not is a mismatch whatever the version, known or not.
    compare_plain(
        headers,
        &MCP_PROTOCOL_VERSION,
        "MCP-Protocol-Version",
        version,
        strict,
    )?;
    if let Some(v) = version
        && !is_modern_version(v)
    {
        return Err(HeaderCheckError::UnsupportedVersion {
            requested: v.to_owned(),
            supported: MODERN_VERSIONS.iter().rev().copied().collect(),
        });
    }
    if strict
        && !meta
            .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
            .is_some_and(Value::is_object)
    {
        return Err(HeaderCheckError::InvalidParams(
            "_meta is missing io.modelcontextprotocol/clientCapabilities",
        ));
    }
    compare_plain(headers, &MCP_METHOD, "Mcp-Method", Some(method), strict)?;
    if let Some(source) = frame.name_header_source() {
        let body = source.ok_or(HeaderCheckError::InvalidParams(
            "params.name or params.uri is missing or not a string",
        ))?;
        let value = single(headers, &MCP_NAME, "Mcp-Name")?
            .ok_or(HeaderCheckError::Missing { header: "Mcp-Name" })?;
        let decoded = decode_header_value(value).map_err(|reason| HeaderCheckError::Malformed {
            header: "Mcp-Name",
            reason,
        })?;
        if decoded != body {
            return Err(HeaderCheckError::Mismatch {
                header: "Mcp-Name",
                header_value: decoded,
                body_value: body.to_owned(),
            });
        }
    }
    Ok(())
}

/// The era of one POSTed message. Modern when `_meta` carries a protocol version
/// ([`crate::era::detect_era`]), and also, outside a session, for a request whose
/// `MCP-Protocol-Version` header names a revision that is not a legacy one: that is a modern
/// request with a bad `_meta`, to be answered as the modern era says (-32602 from
/// [`check_modern_headers`]), not a legacy request without its session (the MCP SDKs and the
/// conformance suite route it so).
pub fn request_era(headers: &HeaderMap, frame: &Frame) -> Era {
    let era = detect_era(frame.message());
    if era == Era::Legacy
        && frame.is_request()
        && !headers.contains_key(MCP_SESSION_ID)
        && headers
            .get(MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !is_legacy_version(v))
    {
        return Era::Modern;
    }
    era
}

/// Compares a header that carries a plain (never base64) value with the body's value. A header
/// is required when `required`; an absent body value with a present header is a mismatch.
fn compare_plain(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
    body: Option<&str>,
    required: bool,
) -> Result<(), HeaderCheckError> {
    let Some(value) = single(headers, name, label)? else {
        return if required {
            Err(HeaderCheckError::Missing { header: label })
        } else {
            Ok(())
        };
    };
    let text = plain_text(value, label)?;
    if Some(text) != body {
        return Err(HeaderCheckError::Mismatch {
            header: label,
            header_value: text.to_owned(),
            body_value: body.unwrap_or_default().to_owned(),
        });
    }
    Ok(())
}

fn plain_text<'a>(
    value: &'a HeaderValue,
    label: &'static str,
) -> Result<&'a str, HeaderCheckError> {
    let malformed = || HeaderCheckError::Malformed {
        header: label,
        reason: HeaderValueError::InvalidCharacters,
    };
    if !value.as_bytes().iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(malformed());
    }
    value.to_str().map_err(|_| malformed())
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a HeaderValue>, HeaderCheckError> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(HeaderCheckError::Repeated { header: label });
    }
    Ok(first)
}

/// Checks the legacy `MCP-Protocol-Version` header and returns the revision it selects.
///
/// Absent means 2025-03-26, as the 2025-06-18 and 2025-11-25 transports say for clients that
/// predate the header. Present but not a legacy revision: -32022 with the legacy revisions as
/// `supported` (the gateway answers 400). Whether it also equals the version negotiated at
/// `initialize` is the session's business.
pub fn check_legacy_protocol_header(headers: &HeaderMap) -> Result<&'static str, HeaderCheckError> {
    let label = "MCP-Protocol-Version";
    let Some(value) = single(headers, &MCP_PROTOCOL_VERSION, label)? else {
        return Ok(LEGACY_DEFAULT_VERSION);
    };
    let text = plain_text(value, label)?;
    LEGACY_VERSIONS
        .iter()
        .find(|v| **v == text)
        .copied()
        .ok_or_else(|| HeaderCheckError::UnsupportedVersion {
            requested: text.to_owned(),
            supported: LEGACY_VERSIONS.iter().rev().copied().collect(),
        })
}

/// Checks that the client declared (at least) `required` in the request's `_meta` client
/// capabilities, by key presence at every level: `{"elicitation":{"url":{}}}` needs
/// `elicitation` and `elicitation.url`. The error carries exactly the missing part (-32021).
pub fn check_client_capabilities(frame: &Frame, required: &Value) -> Result<(), HeaderCheckError> {
    let declared = frame
        .meta()
        .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
        .unwrap_or(&Value::Null);
    match missing_capabilities(declared, required) {
        None => Ok(()),
        Some(missing) => Err(HeaderCheckError::MissingCapability { required: missing }),
    }
}

fn missing_capabilities(declared: &Value, required: &Value) -> Option<Value> {
    let Value::Object(req) = required else {
        return None;
    };
    let mut missing = Map::new();
    for (k, sub) in req {
        match declared.get(k) {
            None => {
                missing.insert(k.clone(), sub.clone());
            }
            Some(have) => {
                if let Some(m) = missing_capabilities(have, sub) {
                    missing.insert(k.clone(), m);
                }
            }
        }
    }
    (!missing.is_empty()).then_some(Value::Object(missing))
}

/// The `Mcp-Param-{Name}` headers of a request, decoded: `(name as sent after the prefix,
/// lowercase; value)`. Callers that know a tool's `x-mcp-header` annotations compare them with
/// the arguments; unknown ones must be forwarded untouched.
pub fn mcp_param_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, HeaderCheckError> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if let Some(suffix) = name.as_str().strip_prefix(MCP_PARAM_PREFIX) {
            let decoded =
                decode_header_value(value).map_err(|reason| HeaderCheckError::Malformed {
                    header: "Mcp-Param-*",
                    reason,
                })?;
            out.push((suffix.to_owned(), decoded));
        }
    }
    Ok(out)
}

/// Cross-checks a modern `tools/call`'s `Mcp-Param-{Name}` headers with its `arguments`, for
/// the `x-mcp-header` annotations `declared` by the tool's input schema
/// ([`crate::tool::param_headers`]), as the 2026-07-28 Streamable HTTP transport requires of a
/// server that processes the body:
///
/// | argument at the declared path | header          | outcome                        |
/// |-------------------------------|-----------------|--------------------------------|
/// | present, not `null`           | absent          | -32020 (non-conforming client) |
/// | present, not `null`           | present         | decoded, must equal the value  |
/// | absent or `null`              | absent          | fine                           |
/// | absent or `null`              | present         | -32020 (says what the body does not) |
///
/// A header value is decoded first (`=?base64?…?=`; invalid base64, UTF-8 or characters are
/// -32020). Strings compare as they are, booleans as `true` / `false`, numbers numerically (`42`
/// and `42.0` are equal); an object or array never matches. A header that appears twice is
/// refused. `Mcp-Param-*` headers no annotation names are not looked at: they are forwarded
/// untouched.
pub fn check_param_headers(
    headers: &HeaderMap,
    declared: &[ParamHeader],
    arguments: Option<&Value>,
) -> Result<(), HeaderCheckError> {
    for param in declared {
        let problem = |problem: String| HeaderCheckError::Param {
            header: format!("Mcp-Param-{}", param.name),
            problem,
        };
        let Ok(name) = HeaderName::try_from(format!(
            "{MCP_PARAM_PREFIX}{}",
            param.name.to_ascii_lowercase()
        )) else {
            continue;
        };
        let mut values = headers.get_all(&name).iter();
        let (value, repeated) = (values.next(), values.next().is_some());
        if repeated {
            return Err(problem("appears more than once".to_owned()));
        }
        let body = arguments
            .and_then(|args| param.path.iter().try_fold(args, |v, key| v.get(key)))
            .filter(|v| !v.is_null());
        let argument = param.path.join(".");
        match (body, value) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(problem(format!(
                    "is missing but argument {argument} is present"
                )));
            }
            (None, Some(_)) => {
                return Err(problem(format!(
                    "is present but argument {argument} is not"
                )));
            }
            (Some(body), Some(value)) => {
                let decoded = decode_header_value(value)
                    .map_err(|reason| problem(format!("is malformed: {reason}")))?;
                if !same_argument(&decoded, body) {
                    return Err(problem(format!(
                        "value {decoded:?} does not match argument {argument}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn same_argument(header: &str, body: &Value) -> bool {
    match body {
        Value::String(text) => header == text,
        Value::Bool(flag) => header == if *flag { "true" } else { "false" },
        Value::Number(number) => match (header.parse::<f64>(), number.as_f64()) {
            (Ok(h), Some(b)) => h == b,
            _ => false,
        },
        // `x-mcp-header` is only allowed on primitive arguments: an object or array never
        // matches a header.
        _ => false,
    }
}

/// The POST `Accept` rule: true when the client accepts both `application/json` and
/// `text/event-stream` (otherwise answer 406).
///
/// Media ranges count as RFC 9110 defines them: `*/*` accepts both, `application/*` accepts
/// JSON, `text/*` accepts SSE; a range with `q=0` accepts nothing. The MCP transport text asks
/// clients to list both types but says nothing about wildcards; refusing `*/*` (which curl and
/// many HTTP stacks send) would be stricter than HTTP itself for no safety gain. Several
/// `Accept` headers are combined.
pub fn accepts_json_and_sse(headers: &HeaderMap) -> bool {
    let (json_ok, sse_ok) = accepted_media(headers);
    json_ok && sse_ok
}

/// Whether `Accept` admits `text/event-stream` (the GET stream's rule; 406 otherwise), with the
/// same media-range rules as [`accepts_json_and_sse`].
pub fn accepts_sse(headers: &HeaderMap) -> bool {
    accepted_media(headers).1
}

/// The media type of a `Content-Type` header, lowercased, without parameters (`""` if absent).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// `(JSON accepted, SSE accepted)` by the `Accept` headers.
fn accepted_media(headers: &HeaderMap) -> (bool, bool) {
    let mut json_ok = false;
    let mut sse_ok = false;
    for value in headers.get_all(ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for range in text.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match media.as_str() {
                "*/*" => {
                    json_ok = true;
                    sse_ok = true;
                }
                "application/json" | "application/*" => json_ok = true,
                "text/event-stream" | "text/*" => sse_ok = true,
                _ => {}
            }
        }
    }
    (json_ok, sse_ok)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
