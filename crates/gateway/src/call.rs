//! `tools/call`: decide, reserve, forward, settle, audit.
//!
//! ```text
//!   params ─▶ catalog (known? refresh once on a miss) ─▶ policy.evaluate_call
//!     ├─ UnknownTool ─▶ JSON-RPC -32602 "Unknown tool" (hidden and unknown alike)
//!     ├─ (modern) Mcp-Param-* headers ≠ x-mcp-header arguments ─▶ 400, -32020
//!     ├─ Deny        ─▶ isError result, `_meta["tollgate/decision"]`
//!     └─ Allow       ─▶ limiter.acquire(all limits) ─ full ─▶ isError result with retry_after
//!                              │ no lease, leader unreachable, fail closed ─▶ isError result
//!                              │ reserved
//!                              ▼
//!                      forward ─▶ Settlement: JSON-RPC error / input_required / not sent ─▶ rollback
//!                                             result (even isError: the tool ran)        ─▶ commit
//!                                             stream lost, timeout, 5xx page (unknown)   ─▶ spent
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
use tollgate_policy::{CallInput, Decision, Denial, DenyKind, Limit};
use tollgate_telemetry::semconv;

use tollgate_mcp::headers::check_param_headers;

use crate::audit::{AuditRecord, Decision as AuditDecision};
use crate::catalog::CatalogEntry;
use crate::error::ProxyError;
use crate::handler::{InternalError, RequestCtx, json_response, sse_response};
use crate::limits::{CallLimit, Held, Refused};
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
    let session = ctx.session_tag.as_deref();
    let call_limits: Vec<CallLimit> = limits
        .iter()
        .map(|l| CallLimit::new(l, &ctx.grant.id, &ctx.server.name, session))
        .collect();
    let acquired = ctx.shared.limiter.acquire(&call_limits).await;
    let limited = !call_limits.is_empty();
    record.counters = call_limits.into_iter().map(|l| l.key).collect();
    let reservation = match acquired {
        Ok(held) => {
            record.counter_windows = held.windows().to_vec();
            limited.then_some(held)
        }
        Err(refused) => {
            let index = match refused {
                Refused::Exhausted { index, .. } | Refused::Unavailable { index } => index,
            };
            let limit = limits
                .iter()
                .nth(index)
                .ok_or_else(|| ProxyError::Internal("quota named no limit".into()))?;
            return Ok(match refused {
                Refused::Exhausted {
                    retry_after_secs, ..
                } => rate_limited(ctx, &id, record, limit, retry_after_secs),
                Refused::Unavailable { .. } => limit_unavailable(ctx, &id, record, limit),
            });
        }
    };

    ctx.span.record(semconv::TOLLGATE_DECISION, "allow");
    let mut settlement = Settlement {
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
                ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTls(_) => Outcome::NotSent,
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
            let outcome = outcome_of_status(status, outcome_of(&bytes, &settlement.id));
            settlement.finish(outcome, Some(status.as_u16()), AuditDecision::Allow);
            json_response(bytes)
        }
        ReplyBody::Empty => {
            let outcome = outcome_of_status(status, None);
            settlement.finish(outcome, Some(status.as_u16()), AuditDecision::Allow);
            Response::new(axum::body::Body::empty())
        }
        ReplyBody::Sse(stream) => {
            settlement.status = Some(status.as_u16());
            sse_response(settle_stream(
                crate::handler::until_revoked(&ctx.grant, stream),
                settlement,
            ))
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
    let catalog = &ctx.server.catalog;
    if let Some(entry) = catalog.lookup(tool) {
        return Ok(Some(entry));
    }
    let attempts = catalog.attempts();
    let _gate = catalog.refresh_gate().await;
    // A refresh that ran while this call waited has answered for it too.
    if let Some(entry) = catalog.lookup(tool) {
        return Ok(Some(entry));
    }
    if catalog.attempts() != attempts || !catalog.begin_refresh(tool) {
        return Ok(None);
    }
    match crate::list::fetch_all(ctx, frame).await {
        Ok(tools) => catalog.replace(&tools),
        Err(InternalError::Answered) => {
            tracing::debug!(server = %ctx.server.name, "upstream refused the catalog refresh")
        }
        Err(InternalError::Proxy(error)) => {
            tracing::debug!(server = %ctx.server.name, %error, "catalog refresh failed");
            return Err(error);
        }
    }
    Ok(catalog.lookup(tool))
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
        "policy_digest".into(),
        Value::from(ctx.grant.policy.digest()),
    );
    if let Some(version) = ctx.grant.policy_version {
        meta.insert("policy_version".into(), Value::from(version));
    }
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

/// No lease, no answer from the quota leader, and the limit fails closed.
fn limit_unavailable(
    ctx: &RequestCtx,
    id: &RequestId,
    mut record: AuditRecord,
    limit: &Limit,
) -> Response {
    let message = format!(
        "The rate-limit service is unavailable, so this call (limited to {} per {}) was refused \
         to keep the limit exact. Try again in a few seconds.",
        limit.max, limit.window
    );
    record.decision = AuditDecision::LimitUnavailable;
    record.rule_id = Some(limit.rule_id.clone());
    record.message = Some(message.clone());
    finish_refusal(ctx, record);
    let mut meta = Map::new();
    meta.insert(
        "decision".into(),
        Value::from(AuditDecision::LimitUnavailable.as_str()),
    );
    meta.insert("rule_id".into(), Value::from(limit.rule_id.as_str()));
    meta.insert("retry_after".into(), Value::from(1));
    denial_result(ctx, id, &format!("[POLICY DENIED] {message}"), meta)
}

/// How a forwarded call ended, for the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A result: the tool ran (an `isError` result too).
    Completed,
    /// A JSON-RPC error or a refused request: nothing happened.
    NotSent,
    /// An `input_required` result: the call waits for the client's retry, which is counted.
    InputRequired,
    /// The answer was lost: the call may have happened.
    Unknown,
}

#[derive(Deserialize)]
struct Peek {
    id: Option<Value>,
    method: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
    result: Option<PeekResult>,
}

#[derive(Deserialize)]
struct PeekResult {
    #[serde(rename = "resultType")]
    result_type: Option<String>,
}

/// The outcome of a collected (non-stream) answer with HTTP `status`, whose body is the
/// response `answer` (see [`outcome_of`]) or none.
///
/// A JSON-RPC error for the call means it did not run, whatever the status. Otherwise a 4xx
/// means the upstream refused the request (bad request, unknown session: nothing ran), but a
/// 5xx without a JSON-RPC error is unknown: a proxy in front of the upstream answers 502 or 504
/// after the tool may well have run, and unknown means spent.
fn outcome_of_status(status: http::StatusCode, answer: Option<Outcome>) -> Outcome {
    match answer {
        Some(Outcome::NotSent) => Outcome::NotSent,
        Some(outcome) if status.is_success() => outcome,
        _ if status.is_client_error() => Outcome::NotSent,
        _ => Outcome::Unknown,
    }
}

/// The outcome if `data` is the response to request `id`. A message with a `method` is a
/// request or a notification of the upstream's, never the answer, whatever its `id` says.
fn outcome_of(data: &[u8], id: &Value) -> Option<Outcome> {
    let peek: Peek = serde_json::from_slice(data).ok()?;
    if peek.id.as_ref() != Some(id) || peek.method.is_some() {
        return None;
    }
    if peek.error.is_some() {
        return Some(Outcome::NotSent);
    }
    let result = peek.result?;
    if result.result_type.as_deref() == Some("input_required") {
        Some(Outcome::InputRequired)
    } else {
        Some(Outcome::Completed)
    }
}

/// Settles a call's reservation and writes its audit record exactly once; a settlement dropped
/// before the answer was seen counts the call as spent.
struct Settlement {
    reservation: Option<Held>,
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
        let returned = match (self.reservation.take(), outcome) {
            (Some(held), Outcome::NotSent | Outcome::InputRequired) => {
                held.rollback();
                "; reservation returned"
            }
            (Some(held), Outcome::Completed | Outcome::Unknown) => {
                held.commit();
                ""
            }
            (None, _) => "",
        };
        record.decision = decision;
        record.upstream_status = status.or(self.status);
        record.upstream_latency_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        if decision == AuditDecision::Allow {
            record.message = match outcome {
                Outcome::NotSent => Some(format!("upstream answered with an error{returned}")),
                Outcome::InputRequired => Some(format!(
                    "upstream asked for input (input_required){returned}"
                )),
                Outcome::Completed | Outcome::Unknown => None,
            };
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
        Outcome::InputRequired => "input_required",
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
            Some("input_required")
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

    #[test]
    fn an_upstream_request_reusing_the_calls_id_settles_nothing() {
        let id = json!(7);
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","id":7,"method":"elicitation/create","error":{"code":1,"message":"x"}}"#,
                &id
            ),
            None
        );
        assert_eq!(
            peek_outcome(
                br#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","result":{}}"#,
                &id
            ),
            None
        );
    }

    #[test]
    fn a_server_error_without_a_jsonrpc_error_counts_the_call_as_spent() {
        use http::StatusCode;
        let error = Some(Outcome::NotSent);
        assert_eq!(
            outcome_of_status(StatusCode::BAD_GATEWAY, None),
            Outcome::Unknown
        );
        assert_eq!(
            outcome_of_status(StatusCode::GATEWAY_TIMEOUT, Some(Outcome::Completed)),
            Outcome::Unknown
        );
        assert_eq!(
            outcome_of_status(StatusCode::INTERNAL_SERVER_ERROR, error),
            Outcome::NotSent,
            "the upstream said the call failed"
        );
        assert_eq!(
            outcome_of_status(StatusCode::NOT_FOUND, None),
            Outcome::NotSent
        );
        assert_eq!(
            outcome_of_status(StatusCode::OK, Some(Outcome::Completed)),
            Outcome::Completed
        );
        assert_eq!(outcome_of_status(StatusCode::OK, None), Outcome::Unknown);
    }
}
