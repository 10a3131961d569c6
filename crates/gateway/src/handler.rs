//! The data-plane endpoint `/mcp/{server}`: POST, GET and DELETE in both protocol eras.
//!
//! ```text
//!  request ─▶ guard (Host, Origin, bearer grant, grant ⇄ server)
//!          ─▶ strict parse (size, depth, duplicate keys, one JSON-RPC message)
//!          ─▶ era ─┬─ modern: header cross-check, upstream must speak modern (else fallback signal)
//!                  └─ legacy: initialize seals a new session; anything else opens the sealed one
//!          ─▶ method ─┬─ tools/call ─▶ call::handle   (policy, quota, forward, settle, audit)
//!                     ├─ tools/list ─▶ list::handle   (forward, all pages, filter, catalog)
//!                     └─ other      ─▶ forward unchanged (v1 passes other methods through)
//! ```
//!
//! The bytes forwarded are the client's bytes, unchanged: policy judged the value parsed from
//! exactly those bytes, and the strict parser guarantees there is only one way to read them.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};
use tollgate_mcp::era::{self, Era};
use tollgate_mcp::headers::{
    self as mcp_headers, MCP_PROTOCOL_VERSION as PROTOCOL_VERSION, MCP_SESSION_ID as SESSION_ID,
};
use tollgate_mcp::jsonrpc::{Frame, FrameError, RequestId, codes};
use tollgate_mcp::session::SessionClaims;
use tollgate_mcp::sse::SseEvent;
use tollgate_telemetry::semconv;
use tracing::{Instrument as _, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::audit::{AuditRecord, Decision as AuditDecision, session_hash};
use crate::eras::ModernSupport;
use crate::error::ProxyError;
use crate::gateway::{Grant, Server, Shared};
use crate::upstream::{
    MessageKind, OutboundRequest, ReplyBody, SessionRef, SseStream, UpstreamReply,
};

/// Everything a request handler needs once the caller is admitted.
pub(crate) struct RequestCtx {
    pub shared: Arc<Shared>,
    pub server: Arc<Server>,
    pub grant: Arc<Grant>,
    pub era: Era,
    /// The legacy session, when the request belongs to one.
    pub session: Option<SessionRef>,
    /// A short digest of the sealed session id (audit, spans); never the id itself.
    pub session_tag: Option<String>,
    /// Headers to forward upstream (filtered; trace context injected).
    pub forward: HeaderMap,
    /// Gateway request id (audit).
    pub request_id: String,
    pub span: Span,
}

impl RequestCtx {
    /// An audit record pre-filled with who, where and what.
    pub fn audit_record(&self, method: &str, tool: Option<&str>) -> AuditRecord {
        let mut record = AuditRecord::new(
            self.request_id.clone(),
            self.server.name.clone(),
            method,
            AuditDecision::Allow,
        );
        record.grant_id = Some(self.grant.id.clone());
        record.grant_label = Some(self.grant.label.clone());
        record.session = self.session_tag.clone();
        record.tool = tool.map(str::to_owned);
        record.policy_id = self.grant.policy_id.clone();
        record.policy_version = self.grant.policy_version;
        record.policy_digest = Some(self.grant.policy.digest().to_owned());
        record
    }

    /// Hands a record to the audit log (if one is configured).
    pub fn audit(&self, record: AuditRecord) {
        if let Some(audit) = &self.shared.audit {
            audit.record(record);
        }
    }

    /// Forwards one message upstream, timing it.
    pub async fn forward(
        &self,
        body: Bytes,
        kind: MessageKind,
        method: Option<&str>,
    ) -> Result<(UpstreamReply, f64), ProxyError> {
        self.forward_with(body, kind, method, self.forward.clone())
            .await
    }

    /// Forwards one message upstream with explicit headers.
    pub async fn forward_with(
        &self,
        body: Bytes,
        kind: MessageKind,
        method: Option<&str>,
        headers: HeaderMap,
    ) -> Result<(UpstreamReply, f64), ProxyError> {
        let started = Instant::now();
        let result = self
            .server
            .upstream
            .post(OutboundRequest {
                body,
                kind,
                method,
                session: self.session.as_ref(),
                era: self.era,
                headers,
            })
            .instrument(tracing::debug_span!("upstream", "tollgate.server" = %self.server.name))
            .await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => self
                .shared
                .metrics
                .observe_upstream(&self.server.name, seconds),
            Err(error) => self
                .shared
                .metrics
                .count_upstream_error(&self.server.name, error.kind()),
        }
        result.map(|reply| (reply, seconds))
    }
}

/// The data-plane router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/mcp/{server}",
            post(post_mcp).get(get_mcp).delete(delete_mcp),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server}",
            get(resource_metadata),
        )
        .with_state(shared)
}

/// RFC 9728 protected-resource metadata for `/mcp/{server}`.
async fn resource_metadata(
    State(shared): State<Arc<Shared>>,
    Path(server): Path<String>,
) -> Response {
    if !shared.runtime.load().servers.contains_key(&server) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let base = &shared.config.listen.public_url;
    axum::Json(json!({
        "resource": format!("{base}/mcp/{server}"),
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Tollgate: {server}"),
    }))
    .into_response()
}

fn resource_metadata_url(shared: &Shared, server: &str) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp/{server}",
        shared.config.listen.public_url
    )
}

/// Host, Origin and bearer-token checks; returns the caller's grant and the server.
fn admit(
    shared: &Shared,
    server: &str,
    headers: &HeaderMap,
) -> Result<(Arc<Grant>, Arc<Server>), ProxyError> {
    check_host(&shared.config.listen.allowed_hosts, headers)?;
    check_origin(&shared.config.listen.allowed_origins, headers)?;
    let unauthorized = || ProxyError::Unauthorized {
        resource_metadata: resource_metadata_url(shared, server),
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let runtime = shared.runtime.load();
    let grant = runtime
        .grants
        .get(&crate::config::token_hash(token))
        .cloned()
        .ok_or_else(unauthorized)?;
    if grant.server != server {
        return Err(ProxyError::WrongServer {
            server: server.to_owned(),
        });
    }
    let server = runtime
        .servers
        .get(server)
        .ok_or(ProxyError::NoSuchServer)?;
    Ok((grant, server.clone()))
}

/// A foreign `Host` is refused (DNS rebinding); an empty allow-list accepts any host.
pub(crate) fn check_host(allowed: &[String], headers: &HeaderMap) -> Result<(), ProxyError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .ok_or(ProxyError::ForbiddenOrigin("missing Host header"))?;
    let bare = strip_port(&host);
    if allowed.iter().any(|a| *a == host || *a == bare) {
        Ok(())
    } else {
        Err(ProxyError::ForbiddenOrigin("Host is not allowed"))
    }
}

/// A present `Origin` must be allowed; an absent one (non-browser client) is fine.
pub(crate) fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| ProxyError::ForbiddenOrigin("Origin is not allowed"))?
        .to_ascii_lowercase();
    let ok = allowed.iter().any(|pattern| {
        if let Some(prefix) = pattern.strip_suffix(":*") {
            origin == prefix
                || origin
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|port| {
                        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                    })
        } else {
            *pattern == origin
        }
    });
    if ok {
        Ok(())
    } else {
        Err(ProxyError::ForbiddenOrigin("Origin is not allowed"))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }
}

/// The client request that forwarded headers come with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// A POSTed message of this era.
    Post(Era),
    /// The GET of a legacy session's stream (the only request that resumes one).
    Get,
    /// The DELETE of a legacy session.
    Delete,
}

/// Headers worth forwarding: the MCP ones and `Mcp-Param-*`; never `Authorization` or cookies.
///
/// `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` only go with a modern request, the only kind whose
/// headers the gateway cross-checks against the body: on a legacy request they would reach the
/// upstream (and whatever routes on them in front of it) unchecked. `Last-Event-ID` only goes
/// with a GET, the one request that resumes a stream: a replayed stream is passed through, not
/// answered by the gateway's own handlers (see [`watch_stream`]).
fn forward_headers(client: &HeaderMap, carrier: Carrier, span: &Span) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in client {
        let modern_only = name.as_str() == "mcp-method"
            || name.as_str() == "mcp-name"
            || name.as_str().starts_with("mcp-param-");
        let keep = name == PROTOCOL_VERSION
            || (name.as_str() == "last-event-id" && carrier == Carrier::Get)
            || (modern_only && carrier == Carrier::Post(Era::Modern));
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    inject_trace_context(span, &mut out);
    out
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

fn inject_trace_context(span: &Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

fn request_span(server: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "gateway",
        otel.name = field::Empty,
        otel.kind = "server",
        { semconv::MCP_METHOD } = field::Empty,
        { semconv::MCP_TOOL_NAME } = field::Empty,
        { semconv::MCP_ERA } = field::Empty,
        { semconv::MCP_REQUEST_ID } = field::Empty,
        { semconv::MCP_SESSION } = field::Empty,
        { semconv::TOLLGATE_SERVER } = server,
        { semconv::TOLLGATE_GRANT } = field::Empty,
        { semconv::TOLLGATE_DECISION } = field::Empty,
        { semconv::TOLLGATE_RULE } = field::Empty,
        { semconv::TOLLGATE_POLICY_ID } = field::Empty,
        { semconv::TOLLGATE_POLICY_VERSION } = field::Empty,
        { semconv::TOLLGATE_POLICY_DIGEST } = field::Empty,
        { semconv::TOLLGATE_UPSTREAM_STATUS } = field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
    span
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Opens the sealed session of a legacy request and checks it belongs to this grant and server.
fn open_session(
    shared: &Shared,
    grant: &Grant,
    server: &Server,
    headers: &HeaderMap,
) -> Result<(SessionRef, String), ProxyError> {
    let sealed = headers
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ProxyError::bad_request(
                codes::INVALID_REQUEST,
                "missing Mcp-Session-Id header",
                None,
            )
        })?;
    let claims = shared.sealer.open(sealed, now_unix()).map_err(|error| {
        tracing::debug!(%error, "session id refused");
        ProxyError::SessionNotFound
    })?;
    if claims.server != server.name || claims.grant != grant.id {
        return Err(ProxyError::SessionNotFound);
    }
    if let Some(node) = &claims.node
        && *node != shared.config.node_id
    {
        // A stdio session lives in one node's child process: another node cannot serve it.
        return Err(ProxyError::SessionNotFound);
    }
    Ok((
        SessionRef {
            upstream_session: claims.upstream_session,
            local_id: claims.local_id,
        },
        session_hash(sealed),
    ))
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError> {
    if let Some(length) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ProxyError::PayloadTooLarge { limit }
            } else {
                ProxyError::bad_request(codes::PARSE_ERROR, "could not read the request body", None)
            }
        })
}

fn frame_error(error: FrameError) -> ProxyError {
    let code = error.code();
    ProxyError::bad_request(code, error.to_string(), None)
}

async fn post_mcp(
    State(shared): State<Arc<Shared>>,
    Path(server_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = request_span(&server_name, &headers);
    // Not instrumented as a whole: the OpenTelemetry span starts when first entered, and its name
    // (`tools/call run-rerun`) is only known once the body is parsed.
    let response = handle_post(
        shared.clone(),
        server_name.clone(),
        headers,
        body,
        span.clone(),
    )
    .await;
    match response {
        Ok(response) => response,
        Err((error, id, method)) => {
            span.record(semconv::TOLLGATE_DECISION, error.kind());
            shared.metrics.count_request(
                &server_name,
                method.as_deref().map_or("-", method_label),
                error.kind(),
            );
            if error.fault() != crate::error::Fault::Client {
                tracing::warn!(parent: &span, %error, "request failed");
            }
            error.response(id.as_ref())
        }
    }
}

type PostError = (ProxyError, Option<RequestId>, Option<String>);

async fn handle_post(
    shared: Arc<Shared>,
    server_name: String,
    headers: HeaderMap,
    body: Body,
    span: Span,
) -> Result<Response, PostError> {
    let plain = |e: ProxyError| (e, None, None);
    let (grant, server) = admit(&shared, &server_name, &headers).map_err(plain)?;
    span.record(semconv::TOLLGATE_GRANT, grant.label.as_str());
    if mcp_headers::media_type(&headers) != "application/json" {
        return Err(plain(ProxyError::UnsupportedMediaType));
    }
    if !mcp_headers::accepts_json_and_sse(&headers) {
        return Err(plain(ProxyError::NotAcceptable(
            "both application/json and text/event-stream",
        )));
    }
    let bytes = read_body(body, &headers, shared.json_limits.max_bytes)
        .await
        .map_err(plain)?;
    let frame = Frame::parse(bytes, &shared.json_limits).map_err(|e| plain(frame_error(e)))?;
    let id = frame.id().cloned();
    let method = frame.method().map(str::to_owned);
    let fail = |e: ProxyError| (e, id.clone(), method.clone());
    let era = mcp_headers::request_era(&headers, &frame);
    span.record(
        semconv::MCP_ERA,
        if era == Era::Modern {
            "modern"
        } else {
            "legacy"
        },
    );
    if let Some(method) = &method {
        span.record(semconv::MCP_METHOD, method.as_str());
        let name = match frame.tool_name() {
            Some(tool) => {
                span.record(semconv::MCP_TOOL_NAME, tool);
                format!("{method} {tool}")
            }
            None => method.clone(),
        };
        span.record("otel.name", name.as_str());
    }
    if let Some(id) = &id {
        span.record(semconv::MCP_REQUEST_ID, field::display(id_text(id)));
    }
    span.record(semconv::TOLLGATE_POLICY_DIGEST, grant.policy.digest());
    if let Some(id) = &grant.policy_id {
        span.record(semconv::TOLLGATE_POLICY_ID, id.as_str());
    }
    if let Some(version) = grant.policy_version {
        span.record(semconv::TOLLGATE_POLICY_VERSION, version);
    }
    dispatch(shared, headers, frame, grant, server, era, span.clone())
        .instrument(span)
        .await
        .map_err(fail)
}

async fn dispatch(
    shared: Arc<Shared>,
    headers: HeaderMap,
    frame: Frame,
    grant: Arc<Grant>,
    server: Arc<Server>,
    era: Era,
    span: Span,
) -> Result<Response, ProxyError> {
    let id = frame.id().cloned();
    let method = frame.method().map(str::to_owned);
    if frame.is_notification()
        && !method
            .as_deref()
            .is_some_and(|m| m.starts_with("notifications/"))
    {
        // JSON-RPC servers run a notification's method and only skip the answer: a
        // `tools/call` without an id would run unjudged, and a `tools/list` one could be answered
        // unfiltered. Every MCP notification is named `notifications/...`.
        return Err(ProxyError::bad_request(
            codes::INVALID_REQUEST,
            "a notification's method must start with notifications/",
            None,
        ));
    }
    let mut ctx = RequestCtx {
        forward: forward_headers(&headers, Carrier::Post(era), &span),
        shared: shared.clone(),
        server,
        grant,
        era,
        session: None,
        session_tag: None,
        request_id: shared.next_request_id(),
        span: span.clone(),
    };

    match era {
        Era::Modern => {
            // The upstream's era first: for a legacy-only upstream every modern request gets the
            // fallback signal, whatever else is wrong with it, exactly as the upstream itself
            // would answer; the gateway never claims an era (not even in a -32022 list) that its
            // upstream cannot serve.
            if modern_support(&ctx, &frame).await == ModernSupport::No {
                return Err(legacy_fallback(id.clone()));
            }
            if let Err(error) = mcp_headers::check_modern_headers(&headers, &frame) {
                return Err(ProxyError::bad_request_with_data(
                    error.code(),
                    error.message(),
                    error.data(),
                    id.clone(),
                ));
            }
        }
        Era::Legacy => {
            let initialize = frame.is_request() && method.as_deref() == Some("initialize");
            if initialize {
                return initialize_session(&ctx, frame).await;
            }
            let (session, tag) = open_session(&shared, &ctx.grant, &ctx.server, &headers)?;
            span.record(semconv::MCP_SESSION, tag.as_str());
            ctx.session = Some(session);
            ctx.session_tag = Some(tag);
            if let Err(error) = mcp_headers::check_legacy_protocol_header(&headers) {
                return Err(ProxyError::bad_request_with_data(
                    error.code(),
                    error.message(),
                    error.data(),
                    id.clone(),
                ));
            }
        }
    }

    if !frame.is_request() {
        // Notifications and the client's answers to server requests: forward, answer as upstream did.
        let (reply, _) = ctx
            .forward(
                frame.raw().clone(),
                MessageKind::NoAnswer,
                method.as_deref(),
            )
            .await?;
        shared.metrics.count_request(
            &ctx.server.name,
            method.as_deref().map_or("response", method_label),
            "forwarded",
        );
        return Ok(reply_response(&ctx, reply, None));
    }
    match method.as_deref() {
        Some("tools/call") => crate::call::handle(&ctx, frame).await,
        Some("tools/list") => crate::list::handle(&ctx, frame).await,
        _ => pass_through(&ctx, frame).await,
    }
}

/// Methods of the MCP revisions the gateway speaks, client to server.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];

/// The `method` label of a request metric: a known MCP method, else `other`. Each label value
/// is a time series kept for the life of the process, so a client must not be able to mint them.
pub(crate) fn method_label(method: &str) -> &str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

fn id_text(id: &RequestId) -> String {
    id.to_value().to_string()
}

/// The answer to a modern request for an upstream that only speaks the legacy era: what a legacy
/// Streamable HTTP server answers, so that a dual-era client falls back to `initialize`.
fn legacy_fallback(id: Option<RequestId>) -> ProxyError {
    ProxyError::bad_request(
        -32000,
        "Bad Request: Server not initialized (this upstream speaks only the \
         initialize-based protocol versions)",
        id,
    )
}

/// Whether the upstream speaks the modern era; asks it once and caches the answer.
async fn modern_support(ctx: &RequestCtx, frame: &Frame) -> ModernSupport {
    if let Some(known) = ctx.server.eras.cached() {
        return known;
    }
    // Probe at the client's version only when it is one we speak: a probe at an unknown version
    // would be refused and cached as "not modern".
    let version = era::meta_protocol_version(frame.message())
        .filter(|v| era::is_modern_version(v))
        .unwrap_or(era::LATEST_MODERN)
        .to_owned();
    let params = json!({
        "_meta": {
            era::META_PROTOCOL_VERSION: version,
            era::META_CLIENT_CAPABILITIES: {},
        }
    });
    let support = match internal_request(ctx, "server/discover", params, Some(&version)).await {
        Ok(result) => {
            let modern = result
                .get("supportedVersions")
                .and_then(Value::as_array)
                .is_some_and(|versions| {
                    versions
                        .iter()
                        .filter_map(Value::as_str)
                        .any(era::is_modern_version)
                });
            if modern {
                ModernSupport::Yes
            } else {
                ModernSupport::No
            }
        }
        Err(InternalError::Answered) => ModernSupport::No,
        Err(InternalError::Proxy(error)) => {
            tracing::debug!(%error, server = %ctx.server.name, "era probe inconclusive");
            ModernSupport::Unknown
        }
    };
    tracing::info!(server = %ctx.server.name, ?support, "probed the upstream for the modern era");
    ctx.server.eras.store(support);
    support
}

/// Why a gateway-made request produced no result.
pub(crate) enum InternalError {
    /// The upstream answered, but with an error or a non-success status.
    Answered,
    /// The upstream could not be asked.
    Proxy(ProxyError),
}

/// Sends a request the gateway itself makes (catalog refresh, pagination, era probe) on the same
/// path as the client's request (same session, same era) and returns its `result`.
pub(crate) async fn internal_request(
    ctx: &RequestCtx,
    method: &str,
    params: Value,
    modern_version: Option<&str>,
) -> Result<Value, InternalError> {
    let id = format!(
        "tollgate-{}",
        ctx.shared
            .request_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut headers = HeaderMap::new();
    if let Some(version) = ctx.forward.get(PROTOCOL_VERSION) {
        headers.insert(PROTOCOL_VERSION, version.clone());
    }
    if let Some(version) = modern_version {
        if let Ok(value) = HeaderValue::try_from(version) {
            headers.insert(PROTOCOL_VERSION, value);
        }
        if let Ok(value) = HeaderValue::try_from(method) {
            headers.insert(HeaderName::from_static("mcp-method"), value);
        }
    }
    inject_trace_context(&ctx.span, &mut headers);
    let (reply, _) = ctx
        .forward_with(
            Bytes::from(body.to_string()),
            MessageKind::Request,
            Some(method),
            headers,
        )
        .await
        .map_err(InternalError::Proxy)?;
    if !reply.status.is_success() {
        return Err(InternalError::Answered);
    }
    let id = Value::String(id);
    let response = match reply.body {
        ReplyBody::Json(bytes) => serde_json::from_slice::<Value>(&bytes).ok(),
        ReplyBody::Sse(mut stream) => {
            // The upstream's timeout covers its response headers only; an event stream that
            // never answers must not hold the client's request (and its catalog refresh) forever.
            let deadline = tokio::time::Instant::now() + ctx.shared.config.limits.upstream_timeout;
            let mut found = None;
            loop {
                let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => return Err(InternalError::Proxy(ProxyError::UpstreamTimeout)),
                    Ok(None) | Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(event))) => event,
                };
                if let Ok(value) = serde_json::from_str::<Value>(&event.data)
                    && value.get("id") == Some(&id)
                {
                    found = Some(value);
                    break;
                }
            }
            found
        }
        ReplyBody::Empty => None,
    };
    match response {
        Some(mut value) => match value.get_mut("result") {
            Some(result) => Ok(result.take()),
            None => Err(InternalError::Answered),
        },
        None => Err(InternalError::Proxy(ProxyError::UpstreamProtocol(
            "no response to a gateway request".into(),
        ))),
    }
}

/// `initialize`: forwarded without a session; the answer gets a new sealed session id.
async fn initialize_session(ctx: &RequestCtx, frame: Frame) -> Result<Response, ProxyError> {
    let requested = frame
        .params()
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str)
        .unwrap_or(era::LATEST_LEGACY)
        .to_owned();
    let (reply, latency) = ctx
        .forward(
            frame.raw().clone(),
            MessageKind::Request,
            Some("initialize"),
        )
        .await?;
    let mut record = ctx.audit_record("initialize", None);
    record.upstream_status = Some(reply.status.as_u16());
    record.upstream_latency_ms = Some(latency * 1000.0);
    if !reply.status.is_success() {
        record.decision = AuditDecision::Error;
        ctx.audit(record);
        ctx.shared
            .metrics
            .count_request(&ctx.server.name, "initialize", "upstream_error");
        return Ok(reply_response(ctx, reply, None));
    }
    let now = now_unix();
    let local = ctx.server.upstream.node_local_sessions();
    let claims = SessionClaims {
        server: ctx.server.name.clone(),
        grant: ctx.grant.id.clone(),
        upstream_session: reply.session_id.clone(),
        protocol_version: requested,
        issued_at: now,
        expires_at: now + ctx.shared.config.sessions.ttl.as_secs(),
        node: local.then(|| ctx.shared.config.node_id.clone()),
        local_id: reply.local_session,
    };
    let sealed = ctx.shared.sealer.seal(&claims);
    let tag = session_hash(&sealed);
    ctx.span.record(semconv::MCP_SESSION, tag.as_str());
    record.session = Some(tag);
    ctx.audit(record);
    ctx.shared
        .metrics
        .count_request(&ctx.server.name, "initialize", "allow");
    let value = HeaderValue::try_from(sealed)
        .map_err(|_| ProxyError::Internal("sealed session id is not a header value".into()))?;
    Ok(reply_response(ctx, reply, Some(value)))
}

/// Any other request: forwarded and answered unchanged (policy v1 passes other methods through).
async fn pass_through(ctx: &RequestCtx, frame: Frame) -> Result<Response, ProxyError> {
    let method = frame.method().unwrap_or_default().to_owned();
    let (reply, latency) = ctx
        .forward(frame.raw().clone(), MessageKind::Request, Some(&method))
        .await?;
    let mut record = ctx.audit_record(&method, None);
    record.upstream_status = Some(reply.status.as_u16());
    record.upstream_latency_ms = Some(latency * 1000.0);
    ctx.audit(record);
    ctx.span
        .record(semconv::TOLLGATE_UPSTREAM_STATUS, reply.status.as_u16());
    ctx.span.record(semconv::TOLLGATE_DECISION, "allow");
    ctx.shared
        .metrics
        .count_request(&ctx.server.name, method_label(&method), "allow");
    Ok(reply_response(ctx, reply, None))
}

/// Turns an upstream reply into the client's response, unchanged but for the session id.
pub(crate) fn reply_response(
    ctx: &RequestCtx,
    reply: UpstreamReply,
    session: Option<HeaderValue>,
) -> Response {
    let mut response = match reply.body {
        ReplyBody::Empty => Response::new(Body::empty()),
        ReplyBody::Json(bytes) => {
            let policy = &ctx.grant.policy;
            let redacted = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| crate::list::redact_tool_list(policy, text));
            json_response(redacted.map_or(bytes, Bytes::from))
        }
        ReplyBody::Sse(stream) => sse_response(watch_stream(ctx, stream)),
    };
    *response.status_mut() = reply.status;
    if let Some(session) = session {
        response.headers_mut().insert(SESSION_ID, session);
    }
    response
}

pub(crate) fn json_response(bytes: Bytes) -> Response {
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Ends `stream` when `grant` is revoked: a revoked credential keeps no open stream.
pub(crate) fn until_revoked(grant: &Grant, stream: SseStream) -> SseStream {
    Box::pin(stream.take_until(grant.revoked.clone().cancelled_owned()))
}

pub(crate) fn sse_response(stream: SseStream) -> Response {
    let body = Body::from_stream(
        stream
            .take_while(|event| std::future::ready(event.is_ok()))
            .filter_map(|event| std::future::ready(event.ok()))
            .map(|event: SseEvent| Ok::<_, std::convert::Infallible>(event.encode())),
    );
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Passes events through, dropping the catalog when the upstream says its tool list changed,
/// and removing hidden tools from any tool list that goes by. A stream that is not the answer to
/// a `tools/list` the gateway handled can still carry one: an upstream that supports resumption
/// replays a past stream, the list's answer included, to a GET with `Last-Event-ID`, and the
/// gateway's own page requests ran in the same session.
fn watch_stream(ctx: &RequestCtx, stream: SseStream) -> SseStream {
    let server = ctx.server.clone();
    let grant = ctx.grant.clone();
    let stream = until_revoked(&grant, stream);
    Box::pin(stream.map(move |event| {
        let mut event = event?;
        if event.data.contains("notifications/tools/list_changed") {
            let changed = serde_json::from_str::<Value>(&event.data)
                .ok()
                .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_owned))
                .is_some_and(|m| m == "notifications/tools/list_changed");
            if changed {
                tracing::debug!(server = %server.name, "upstream tool list changed");
                server.catalog.invalidate();
            }
        }
        if let Some(redacted) = crate::list::redact_tool_list(&grant.policy, &event.data) {
            event.data = redacted;
        }
        Ok(event)
    }))
}

async fn get_mcp(
    State(shared): State<Arc<Shared>>,
    Path(server_name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let span = request_span(&server_name, &headers);
    span.record(semconv::MCP_METHOD, "GET");
    let result = async {
        let (grant, server) = admit(&shared, &server_name, &headers)?;
        if !mcp_headers::accepts_sse(&headers) {
            return Err(ProxyError::NotAcceptable("text/event-stream"));
        }
        if headers.get(SESSION_ID).is_none() {
            // Modern servers have no standalone stream; legacy ones need a session.
            return Err(ProxyError::MethodNotAllowed);
        }
        let (session, tag) = open_session(&shared, &grant, &server, &headers)?;
        span.record(semconv::MCP_SESSION, tag.as_str());
        let forward = forward_headers(&headers, Carrier::Get, &span);
        let reply = server
            .upstream
            .get_stream(&session, forward.clone())
            .await?;
        let ctx = RequestCtx {
            shared: shared.clone(),
            server,
            grant,
            era: Era::Legacy,
            session: Some(session),
            session_tag: Some(tag),
            forward,
            request_id: shared.next_request_id(),
            span: span.clone(),
        };
        Ok(reply_response(&ctx, reply, None))
    }
    .instrument(span.clone())
    .await;
    let outcome = match &result {
        Ok(r) if r.status().is_success() => "stream",
        Ok(_) => "upstream_error",
        Err(e) => e.kind(),
    };
    shared.metrics.count_request(&server_name, "GET", outcome);
    result.unwrap_or_else(|e| e.response(None))
}

async fn delete_mcp(
    State(shared): State<Arc<Shared>>,
    Path(server_name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let span = request_span(&server_name, &headers);
    span.record(semconv::MCP_METHOD, "DELETE");
    let result = async {
        let (grant, server) = admit(&shared, &server_name, &headers)?;
        if headers.get(SESSION_ID).is_none() {
            return Err(ProxyError::MethodNotAllowed);
        }
        let (session, _) = open_session(&shared, &grant, &server, &headers)?;
        let forward = forward_headers(&headers, Carrier::Delete, &span);
        let status = server.upstream.delete(&session, forward).await?;
        Ok(status.into_response())
    }
    .instrument(span.clone())
    .await;
    let outcome = match &result {
        Ok(r) if r.status().is_success() => "allow",
        Ok(_) => "upstream_error",
        Err(e) => e.kind(),
    };
    shared
        .metrics
        .count_request(&server_name, "DELETE", outcome);
    result.unwrap_or_else(|e| e.response(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        map
    }

    #[test]
    fn loopback_hosts_are_accepted_with_any_port_and_foreign_ones_refused() {
        let allowed = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        assert!(check_host(&allowed, &headers(&[("host", "127.0.0.1:8080")])).is_ok());
        assert!(check_host(&allowed, &headers(&[("host", "[::1]:9")])).is_ok());
        assert!(check_host(&allowed, &headers(&[("host", "evil.example:8080")])).is_err());
        assert!(check_host(&allowed, &headers(&[])).is_err());
        assert!(check_host(&[], &headers(&[("host", "anything")])).is_ok());
    }

    #[test]
    fn a_present_origin_must_match_and_an_absent_one_passes() {
        let allowed = vec![
            "http://localhost:*".to_owned(),
            "https://app.example".to_owned(),
        ];
        assert!(check_origin(&allowed, &headers(&[])).is_ok());
        assert!(check_origin(&allowed, &headers(&[("origin", "http://localhost:6274")])).is_ok());
        assert!(check_origin(&allowed, &headers(&[("origin", "https://app.example")])).is_ok());
        assert!(
            check_origin(&allowed, &headers(&[("origin", "http://localhost.evil:1")])).is_err()
        );
        assert!(check_origin(&allowed, &headers(&[("origin", "http://evil.example")])).is_err());
    }

    #[test]
    fn the_clients_authorization_and_cookies_are_never_forwarded() {
        let client = headers(&[
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-param-region", "eu"),
        ]);
        let out = forward_headers(&client, Carrier::Post(Era::Modern), &Span::none());
        assert!(out.get(AUTHORIZATION).is_none());
        assert!(out.get("cookie").is_none());
        assert_eq!(
            out.get("mcp-protocol-version").map(|v| v.as_bytes()),
            Some(&b"2025-11-25"[..])
        );
        assert_eq!(
            out.get("mcp-param-region").map(|v| v.as_bytes()),
            Some(&b"eu"[..])
        );
    }
}
