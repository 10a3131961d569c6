//! `tools/list`: every page fetched, the catalog refreshed, hidden tools removed.
//!
//! A filtering gateway must not leak upstream cursors or page sizes it changed (MCP.md), so the
//! gateway follows the upstream's `nextCursor` itself and answers with the whole filtered list in
//! one result without a cursor. It never hands out a cursor, so any cursor a client sends is
//! invalid (-32602). Tool objects are forwarded as the upstream wrote them (fields the gateway does
//! not know are kept). Modern results are marked `cacheScope: "private"`: the list is per caller.

use axum::response::Response;
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use tollgate_mcp::era::{self, Era};
use tollgate_mcp::jsonrpc::{Frame, codes};
use tollgate_mcp::sse::SseEvent;
use tollgate_policy::Policy;
use tollgate_telemetry::semconv;

use crate::error::ProxyError;
use crate::handler::{
    InternalError, RequestCtx, internal_request, json_response, reply_response, sse_response,
};
use crate::upstream::{MessageKind, ReplyBody};

/// The most pages the gateway follows for one list.
pub const MAX_PAGES: usize = 100;

/// The most event bytes held back while waiting for a `tools/list` answer on an event stream.
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// What one held event costs besides its data (its id, type, the event itself).
const EVENT_OVERHEAD: usize = 256;

pub(crate) async fn handle(ctx: &RequestCtx, frame: Frame) -> Result<Response, ProxyError> {
    let id = frame
        .id()
        .cloned()
        .ok_or_else(|| ProxyError::Internal("request without id".into()))?;
    if frame
        .params()
        .and_then(|p| p.get("cursor"))
        .is_some_and(|c| !c.is_null())
    {
        return Err(ProxyError::bad_request(
            codes::INVALID_PARAMS,
            "invalid cursor",
            Some(id),
        ));
    }
    let (reply, latency) = ctx
        .forward(
            frame.raw().clone(),
            MessageKind::Request,
            Some("tools/list"),
        )
        .await?;
    let status = reply.status;
    let id_value = id.to_value();
    // Events that came before the answer (progress, logging) are passed on in order.
    let mut before: Vec<SseEvent> = Vec::new();
    let mut answer_event: Option<SseEvent> = None;
    let answer: Option<Value> = match reply.body {
        ReplyBody::Json(bytes) if status.is_success() => serde_json::from_slice(&bytes).ok(),
        ReplyBody::Sse(mut stream) if status.is_success() => {
            // Everything before the answer is held until the list is complete: bounded in time
            // (the upstream's timeout covers its response headers only) and in size.
            let deadline = tokio::time::Instant::now() + ctx.shared.config.limits.upstream_timeout;
            let mut held = 0usize;
            let mut found = None;
            loop {
                let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => return Err(ProxyError::UpstreamTimeout),
                    Ok(None) => break,
                    Ok(Some(event)) => event?,
                };
                match serde_json::from_str::<Value>(&event.data) {
                    Ok(value)
                        if value.get("id") == Some(&id_value) && value.get("method").is_none() =>
                    {
                        found = Some(value);
                        answer_event = Some(event);
                        break;
                    }
                    _ => {
                        held = held.saturating_add(event.data.len() + EVENT_OVERHEAD);
                        if held > MAX_HELD_BYTES {
                            return Err(ProxyError::UpstreamProtocol(format!(
                                "more than {MAX_HELD_BYTES} bytes of events before the tools/list answer"
                            )));
                        }
                        let mut event = event;
                        if let Some(redacted) = redact_tool_list(&ctx.grant.policy, &event.data) {
                            event.data = redacted;
                        }
                        before.push(event);
                    }
                }
            }
            found
        }
        body => {
            return Ok(reply_response(
                ctx,
                crate::upstream::UpstreamReply {
                    status,
                    session_id: None,
                    local_session: None,
                    body,
                },
                None,
            ));
        }
    };
    let Some(answer) = answer else {
        return Err(ProxyError::UpstreamProtocol(
            "tools/list answer is not a JSON-RPC response".into(),
        ));
    };
    let Some(result) = answer.get("result").and_then(Value::as_object) else {
        // A JSON-RPC error: the client gets it unchanged.
        return Ok(finish(&before, answer_event, answer, status));
    };
    let mut result = result.clone();
    let mut tools = match result.remove("tools") {
        Some(Value::Array(tools)) => tools,
        _ => {
            return Err(ProxyError::UpstreamProtocol(
                "tools/list result has no tools array".into(),
            ));
        }
    };
    let mut cursor = result.remove("nextCursor");
    let mut pages = 1;
    while let Some(Value::String(next)) = cursor.take() {
        if pages >= MAX_PAGES {
            tracing::warn!(server = %ctx.server.name, "tools/list has more than {MAX_PAGES} pages; truncated");
            break;
        }
        let page = fetch_page(ctx, &frame, Some(next))
            .await
            .map_err(|e| match e {
                InternalError::Proxy(error) => error,
                InternalError::Answered => {
                    ProxyError::UpstreamProtocol("upstream refused a tools/list page".into())
                }
            })?;
        pages += 1;
        if let Some(Value::Array(more)) = page.get("tools") {
            tools.extend(more.iter().cloned());
        }
        cursor = page.get("nextCursor").cloned();
    }
    ctx.server.catalog.replace(&tools);
    let total = tools.len();
    let policy = &ctx.grant.policy;
    tools.retain(|tool| is_visible_tool(policy, tool));
    let visible = tools.len();
    result.insert("tools".into(), Value::Array(tools));
    if ctx.era == Era::Modern {
        result.insert("cacheScope".into(), Value::from("private"));
    }
    let mut record = ctx.audit_record("tools/list", None);
    record.upstream_status = Some(status.as_u16());
    record.upstream_latency_ms = Some(latency * 1000.0);
    record.message = Some(format!("{visible} of {total} tools visible"));
    ctx.audit(record);
    ctx.span.record(semconv::TOLLGATE_DECISION, "allow");
    ctx.shared
        .metrics
        .count_request(&ctx.server.name, "tools/list", "allow");
    let answer = json!({"jsonrpc": "2.0", "id": id_value, "result": Value::Object(result)});
    Ok(finish(&before, answer_event, answer, status))
}

/// Whether a listed tool definition may be shown: it has a string name the policy shows.
fn is_visible_tool(policy: &Policy, tool: &Value) -> bool {
    tool.get("name")
        .and_then(Value::as_str)
        .is_some_and(|name| policy.is_visible(name))
}

/// The JSON-RPC response `data` with the tools `policy` hides removed from its `result.tools`
/// (and the upstream's `nextCursor` dropped), or `None` when `data` is not a response carrying a
/// tool list. For answers the gateway passes through without knowing they answer a `tools/list`:
/// a replayed stream, a page the gateway itself asked for.
pub(crate) fn redact_tool_list(policy: &Policy, data: &str) -> Option<String> {
    // Cheap test first; an escaped key (`"\u0074ools"`) still gets parsed.
    if !data.contains("tools") && !data.contains("\\u") {
        return None;
    }
    let mut message: Value = serde_json::from_str(data).ok()?;
    if message.get("method").is_some() {
        return None;
    }
    let result = message.get_mut("result")?.as_object_mut()?;
    let Some(Value::Array(tools)) = result.get_mut("tools") else {
        return None;
    };
    tools.retain(|tool| is_visible_tool(policy, tool));
    result.remove("nextCursor");
    Some(message.to_string())
}

fn finish(
    before: &[SseEvent],
    answer_event: Option<SseEvent>,
    answer: Value,
    status: http::StatusCode,
) -> Response {
    let mut response = match answer_event {
        None => json_response(bytes::Bytes::from(answer.to_string())),
        Some(mut event) => {
            event.data = answer.to_string();
            let events: Vec<Result<SseEvent, ProxyError>> =
                before.iter().cloned().chain([event]).map(Ok).collect();
            sse_response(Box::pin(futures_util::stream::iter(events)))
        }
    };
    *response.status_mut() = status;
    response
}

/// Every tool the upstream lists, fetched by the gateway itself on the client's path.
pub(crate) async fn fetch_all(
    ctx: &RequestCtx,
    frame: &Frame,
) -> Result<Vec<Value>, InternalError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let page = fetch_page(ctx, frame, cursor.take()).await?;
        if let Some(Value::Array(more)) = page.get("tools") {
            tools.extend(more.iter().cloned());
        }
        match page.get("nextCursor") {
            Some(Value::String(next)) => cursor = Some(next.clone()),
            _ => break,
        }
    }
    Ok(tools)
}

/// One `tools/list` page, made by the gateway with the client's era (and `_meta`) and session.
async fn fetch_page(
    ctx: &RequestCtx,
    frame: &Frame,
    cursor: Option<String>,
) -> Result<Value, InternalError> {
    let mut params = Map::new();
    if let Some(cursor) = cursor {
        params.insert("cursor".into(), Value::String(cursor));
    }
    let modern_version = if ctx.era == Era::Modern {
        let meta = frame.meta().cloned().unwrap_or_default();
        let version = meta
            .get(era::META_PROTOCOL_VERSION)
            .and_then(Value::as_str)
            .unwrap_or(era::LATEST_MODERN)
            .to_owned();
        let mut own_meta = Map::new();
        for key in [era::META_PROTOCOL_VERSION, era::META_CLIENT_CAPABILITIES] {
            if let Some(value) = meta.get(key) {
                own_meta.insert(key.to_owned(), value.clone());
            }
        }
        params.insert("_meta".into(), Value::Object(own_meta));
        Some(version)
    } else {
        None
    };
    internal_request(
        ctx,
        "tools/list",
        Value::Object(params),
        modern_version.as_deref(),
    )
    .await
}
