//! `tools/call`: decide, reserve, forward, settle, audit.
//!
//! ```text
//!   params ─▶ catalog (known? refresh once on a miss) ─▶ policy.evaluate_call
//!     ├─ UnknownTool ─▶ JSON-RPC -32602 "Unknown tool" (hidden and unknown alike)
//!     ├─ (modern) Mcp-Param-* headers ≠ x-mcp-header arguments ─▶ 400, -32020
//!     ├─ Deny        ─▶ isError result, `_meta["tollgate/decision"]`
//!     └─ Allow       ─▶ quota.reserve(all limits) ─ full ─▶ isError result with retry_after
//!                              │ reserved
//!                              ▼
//!                      forward ─▶ Settlement: JSON-RPC error / input_required / not sent ─▶ rollback
//!                                             result (even isError: the tool ran)        ─▶ commit
//!                                             stream lost, timeout (unknown)             ─▶ spent
//! ```
//!
//! An `input_required` result (modern era) is given back: the call has not happened yet, and the
//! client's retry with `inputResponses` is judged and counted as the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use tollgate_mcp::era::Era;
use tollgate_mcp::jsonrpc::{Frame, RequestId, codes, error_response, result_response};
use tollgate_policy::{CallInput, Decision, Denial, DenyKind, Limit, Scope};
use tollgate_quota::{LimitSpec, Quota, Reservation, Window as QuotaWindow};
use tollgate_telemetry::semconv;

use tollgate_mcp::headers::check_param_headers;

use crate::audit::{AuditRecord, Decision as AuditDecision};
use crate::catalog::CatalogEntry;
use crate::error::ProxyError;
use crate::handler::{InternalError, RequestCtx, json_response, sse_response};
use crate::upstream::{MessageKind, ReplyBody, SseStream};

/// Key under a denial result's `_meta` that carries the machine-readable decision.
pub const META_KEY: &str = "tollgate/decision";

pub(crate) async fn handle(ctx: &RequestCtx, frame: Frame) -> Result<Response, ProxyError> {
    let id = frame.id().cloned();
    let params = frame.params().and_then(Value::as_object);
    let invalid = |message: &str| {
        ProxyError::bad_request(codes::INVALID_PARAMS, message.to_owned(), id.clone())
    };
    let Some(params) = params else {
        return Err(invalid("tools/call needs params"));
    };
    let Some(tool) = params.get("name").and_then(Value::as_str) else {
        return Err(invalid("params.name must be a string"));
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => None,
        Some(args @ Value::Object(_)) => Some(args),
        Some(_) => return Err(invalid("params.arguments must be an object")),
    };

    let entry = known_tool(ctx, &frame, tool).await?;
    let digest = entry.as_ref().map(|e| e.digest.clone());
    let decision = ctx.grant.policy.evaluate_call(&CallInput {
        tool,
        arguments,
        tool_known: digest.is_some(),
    });

    let mut record = ctx.audit_record("tools/call", Some(tool));
    record.tool_digest = digest.clone();
    record.arg_keys = arguments
        .and_then(Value::as_object)
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();

    let id = id.ok_or_else(|| ProxyError::Internal("request without id".into()))?;
    let allowed = match decision {
        Decision::UnknownTool => {
            let hidden = digest.is_some();
            record.decision = if hidden {
                AuditDecision::Hidden
            } else {
                AuditDecision::UnknownTool
            };
            record.rule_id = Some("(unknown tool)".to_owned());
            finish_refusal(ctx, record);
            return Ok(json_response(error_response(
                Some(&id),
                codes::INVALID_PARAMS,
                &format!("Unknown tool: {tool}"),
                None,
            )));
        }
        Decision::Deny(denial) => Err(denial),
        Decision::Allow { limits } => Ok(limits),
    };
    // Checked only for a tool the caller may see, so that a hidden tool answers exactly like an
    // unknown one whatever headers come with it. The upstream's own check (an HTTP server sees
    // the same headers) stays in place; a stdio child never sees any, so this is the only one.
    if ctx.era == Era::Modern
        && let Some(entry) = &entry
        && let Err(error) = check_param_headers(&ctx.forward, &entry.param_headers, arguments)
    {
        // A malformed request like any other header mismatch: counted by the handler, and not
        // a policy decision, so not audited.
        return Err(ProxyError::bad_request(
            error.code(),
            error.message(),
            Some(id),
        ));
    }
    let limits = match allowed {
        Err(denial) => return Ok(deny(ctx, &id, record, &denial)),
        Ok(limits) => limits,
    };

    // Reserve every limit at once.
    let keys: Vec<String> = limits.iter().map(|l| counter_key(ctx, l)).collect();
    let specs: Vec<LimitSpec<'_>> = limits
        .iter()
        .zip(&keys)
        .map(|(limit, key)| LimitSpec::new(key, quota_window(limit), limit.max))
        .collect();
    record.counters = keys.clone();
    let reservation = if specs.is_empty() {
        None
    } else {
        match ctx.shared.quota.reserve(&specs) {
            Ok(reservation) => Some(reservation),
            Err(exhausted) => {
                let limit = limits
                    .iter()
                    .nth(exhausted.index)
                    .ok_or_else(|| ProxyError::Internal("quota named no limit".into()))?;
                return Ok(rate_limited(
                    ctx,
                    &id,
                    record,
                    limit,
                    exhausted.retry_after_secs(),
                ));
            }
        }
    };

    ctx.span.record(semconv::TOLLGATE_DECISION, "allow");
    let mut settlement = Settlement {
        quota: ctx.shared.quota.clone(),
        reservation,
        record: Some(record),
        audit: ctx.shared.audit.clone(),
        metrics: ctx.shared.metrics.clone(),
        server: ctx.server.name.clone(),
        id: id.to_value(),
        started: Instant::now(),
        status: None,
    };
    let (reply, latency) = match ctx
        .forward(
            frame.raw().clone(),
            MessageKind::Request,
            Some("tools/call"),
        )
        .await
    {
        Ok(reply) => reply,
        Err(error) => {
            // Refused connections never reached the upstream: give the tokens back. A timeout
            // may have run the tool: unknown means spent.
            let outcome = match error {
                ProxyError::UpstreamUnavailable(_) => Outcome::NotSent,
                _ => Outcome::Unknown,
            };
            settlement.finish(outcome, None, AuditDecision::Error);
            return Err(error);
        }
    };
    ctx.span
        .record(semconv::TOLLGATE_UPSTREAM_STATUS, reply.status.as_u16());
    settlement.started = Instant::now() - Duration::from_secs_f64(latency);
    let status = reply.status;
    let mut response = match reply.body {
        ReplyBody::Json(bytes) => {
            let outcome = if status.is_success() {
                outcome_of(&bytes, &settlement.id).unwrap_or(Outcome::Unknown)
            } else {
                Outcome::NotSent
            };
            settlement.finish(outcome, Some(status.as_u16()), AuditDecision::Allow);
            json_response(bytes)
        }
        ReplyBody::Empty => {
            let outcome = if status.is_success() {
                Outcome::Unknown
            } else {
                Outcome::NotSent
            };
            settlement.finish(outcome, Some(status.as_u16()), AuditDecision::Allow);
            Response::new(axum::body::Body::empty())
        }
        ReplyBody::Sse(stream) => {
            settlement.status = Some(status.as_u16());
            sse_response(settle_stream(stream, settlement))
        }
    };
    *response.status_mut() = status;
    Ok(response)
}

/// The catalog entry of `tool` if the upstream lists it, refreshing the catalog once on a miss.
/// An upstream that cannot be reached is an upstream error, not an unknown tool.
async fn known_tool(
    ctx: &RequestCtx,
    frame: &Frame,
    tool: &str,
) -> Result<Option<CatalogEntry>, ProxyError> {
    if let Some(entry) = ctx.server.catalog.lookup(tool) {
        return Ok(Some(entry));
    }
    if !ctx.server.catalog.begin_refresh(tool) {
        return Ok(None);
    }
    match crate::list::fetch_all(ctx, frame).await {
        Ok(tools) => ctx.server.catalog.replace(&tools),
        Err(InternalError::Answered) => {
            tracing::debug!(server = %ctx.server.name, "upstream refused the catalog refresh")
        }
        Err(InternalError::Proxy(error)) => {
            tracing::debug!(server = %ctx.server.name, %error, "catalog refresh failed");
            return Err(error);
        }
    }
    Ok(ctx.server.catalog.lookup(tool))
}

fn counter_key(ctx: &RequestCtx, limit: &Limit) -> String {
    match limit.scope {
        Scope::Grant => format!("grant:{}/{}", ctx.grant.id, limit.counter),
        // Later scopes (session, server, global) arrive with policy version 2.
        _ => format!("{}:{}/{}", limit.scope, ctx.grant.id, limit.counter),
    }
}

fn quota_window(limit: &Limit) -> QuotaWindow {
    match limit.window {
        tollgate_policy::Window::Minute => QuotaWindow::Minute,
        tollgate_policy::Window::Hour => QuotaWindow::Hour,
        tollgate_policy::Window::Day => QuotaWindow::Day,
    }
}

fn finish_refusal(ctx: &RequestCtx, record: AuditRecord) {
    let decision = record.decision.as_str();
    ctx.span.record(semconv::TOLLGATE_DECISION, decision);
    if let Some(rule) = &record.rule_id {
        ctx.span.record(semconv::TOLLGATE_RULE, rule.as_str());
    }
    ctx.shared
        .metrics
        .count_request(&ctx.server.name, "tools/call", decision);
    ctx.audit(record);
}

/// A denial as a normal result the agent can read and act on.
fn denial_result(
    ctx: &RequestCtx,
    id: &RequestId,
    text: &str,
    mut meta: Map<String, Value>,
) -> Response {
    meta.insert(
        "policy_version".into(),
        Value::from(ctx.grant.policy.digest()),
    );
    if let Some(policy_id) = &ctx.grant.policy_id {
        meta.insert("policy_id".into(), Value::from(policy_id.as_str()));
    }
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": { META_KEY: Value::Object(meta) },
    });
    if ctx.era == Era::Modern {
        result["resultType"] = Value::from("complete");
    }
    json_response(result_response(id, &result))
}

fn deny(ctx: &RequestCtx, id: &RequestId, mut record: AuditRecord, denial: &Denial) -> Response {
    let decision = match denial.kind {
        DenyKind::DefaultDeny => AuditDecision::DefaultDeny,
        _ => AuditDecision::Deny,
    };
    record.decision = decision;
    record.rule_id = Some(denial.rule_id.to_string());
    record.message = Some(denial.message.clone());
    finish_refusal(ctx, record);
    let mut meta = Map::new();
    meta.insert("decision".into(), Value::from(decision.as_str()));
    meta.insert("rule_id".into(), Value::from(denial.rule_id.as_ref()));
    denial_result(
        ctx,
        id,
        &format!("[POLICY DENIED] {}", denial.message),
        meta,
    )
}

fn rate_limited(
    ctx: &RequestCtx,
    id: &RequestId,
    mut record: AuditRecord,
    limit: &Limit,
    retry_after: u64,
) -> Response {
    let message = format!(
        "Rate limit of {} per {} reached. Try again in {retry_after}s.",
        limit.max, limit.window
    );
    record.decision = AuditDecision::RateLimited;
    record.rule_id = Some(limit.rule_id.clone());
    record.message = Some(message.clone());
    finish_refusal(ctx, record);
    let mut meta = Map::new();
    meta.insert("decision".into(), Value::from("rate_limited"));
    meta.insert("rule_id".into(), Value::from(limit.rule_id.as_str()));
    meta.insert("retry_after".into(), Value::from(retry_after));
    denial_result(ctx, id, &format!("[POLICY DENIED] {message}"), meta)
}

/// How a forwarded call ended, for the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A result: the tool ran (an `isError` result too).
    Completed,
    /// A JSON-RPC error, an `input_required` result, or a refused request: nothing happened.
    NotSent,
    /// The answer was lost: the call may have happened.
    Unknown,
}

#[derive(Deserialize)]
struct Peek {
    id: Option<Value>,
    error: Option<IgnoredAny>,
    result: Option<PeekResult>,
}

#[derive(Deserialize)]
struct PeekResult {
    #[serde(rename = "resultType")]
    result_type: Option<String>,
}

/// The outcome if `data` is the response to request `id`.
fn outcome_of(data: &[u8], id: &Value) -> Option<Outcome> {
    let peek: Peek = serde_json::from_slice(data).ok()?;
    if peek.id.as_ref() != Some(id) {
        return None;
    }
    if peek.error.is_some() {
        return Some(Outcome::NotSent);
    }
    let result = peek.result?;
    if result.result_type.as_deref() == Some("input_required") {
        Some(Outcome::NotSent)
    } else {
        Some(Outcome::Completed)
    }
}

/// Settles a call's reservation and writes its audit record exactly once; a settlement dropped
/// before the answer was seen counts the call as spent.
struct Settlement {
    quota: Arc<dyn Quota>,
    reservation: Option<Reservation>,
    record: Option<AuditRecord>,
    audit: Option<crate::audit::AuditLog>,
    metrics: Arc<tollgate_telemetry::Metrics>,
    server: String,
    id: Value,
    started: Instant,
    status: Option<u16>,
}

impl Settlement {
    fn finish(&mut self, outcome: Outcome, status: Option<u16>, decision: AuditDecision) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some(reservation) = self.reservation.take() {
            match outcome {
                Outcome::NotSent => self.quota.rollback(reservation),
                Outcome::Completed | Outcome::Unknown => self.quota.commit(reservation),
            }
        }
        record.decision = decision;
        record.upstream_status = status.or(self.status);
        record.upstream_latency_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        if outcome == Outcome::NotSent && decision == AuditDecision::Allow {
            record.message = Some("upstream answered with an error; reservation returned".into());
        }
        self.metrics
            .count_request(&self.server, "tools/call", decision.as_str());
        if let Some(audit) = &self.audit {
            audit.record(record);
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.finish(Outcome::Unknown, None, AuditDecision::Allow);
    }
}

/// Passes the upstream's events through and settles when the response event goes by.
fn settle_stream(stream: SseStream, settlement: Settlement) -> SseStream {
    Box::pin(futures_util::stream::unfold(
        (stream, settlement),
        |(mut stream, mut settlement)| async move {
            let event = stream.next().await?;
            if let Ok(event) = &event
                && settlement.record.is_some()
                && let Some(outcome) = outcome_of(event.data.as_bytes(), &settlement.id)
            {
                settlement.finish(outcome, None, AuditDecision::Allow);
            }
            Some((event, (stream, settlement)))
        },
    ))
}

/// Bytes of a denial result for tests and documentation.
#[cfg(test)]
pub(crate) fn peek_outcome(data: &[u8], id: &Value) -> Option<&'static str> {
    outcome_of(data, id).map(|o| match o {
        Outcome::Completed => "completed",
        Outcome::NotSent => "not_sent",
        Outcome::Unknown => "unknown",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonrpc_error_returns_the_reservation_and_a_tool_error_keeps_it() {
        let id = json!(7);
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"x"}}"#,
                &id
            ),
            Some("not_sent")
        );
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#,
                &id
            ),
            Some("completed")
        );
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","id":7,"result":{"resultType":"input_required","requestState":"abc"}}"#,
                &id
            ),
            Some("not_sent")
        );
        assert_eq!(
            peek_outcome(br#"{"jsonrpc":"2.0","id":8,"result":{}}"#, &id),
            None,
            "another request's answer settles nothing"
        );
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                &id
            ),
            None
        );
    }
}
