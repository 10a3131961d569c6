//! The stdio transport: newline-delimited JSON-RPC, both eras on one pipe.
//!
//! Each line is one message. `initialize` opens the (single) legacy session; a request whose
//! `_meta` names a protocol version is modern and stateless; any other request is served as
//! legacy, like the npm SDK's stdio servers do. Requests run concurrently so that a legacy tool
//! waiting for the client's answer to `sampling/createMessage` does not block the reader.
//! Logs go to stderr, never stdout.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::engine::{Ctx, Engine, EraKind, LogLevel, Outbound, Pending};
use super::rpc::{self, Incoming, MODERN_VERSION, RpcError, code};
use super::{StatsInner, UpstreamOptions};

struct LegacyState {
    client_caps: Value,
    log_level: Option<LogLevel>,
}

/// Serves MCP over `input`/`output` until `input` ends.
pub async fn serve_stdio<R, W>(opts: UpstreamOptions, input: R, output: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let stats = Arc::new(Mutex::new(StatsInner::default()));
    let engine = Arc::new(Engine::new(
        opts.name.clone(),
        opts.extra_tools.clone(),
        stats,
    ));
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(message) = out_rx.recv().await {
            let mut line = message.to_string();
            line.push('\n');
            if output.write_all(line.as_bytes()).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    let legacy = Arc::new(Mutex::new(LegacyState {
        client_caps: json!({}),
        log_level: None,
    }));
    let pending = Arc::new(Pending::default());
    let mut tasks = JoinSet::new();
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = out_tx.send(rpc::error_response(
                    &Value::Null,
                    &RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
                ));
                continue;
            }
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        match rpc::classify(message) {
            Err(e) => {
                let _ = out_tx.send(rpc::error_response(&id, &e));
            }
            Ok(Incoming::Response { id, outcome }) => {
                pending.resolve(&id, outcome);
            }
            Ok(Incoming::Notification { .. }) => {}
            Ok(Incoming::Request { id, method, params }) => {
                let engine = engine.clone();
                let out_tx = out_tx.clone();
                let legacy = legacy.clone();
                let pending = pending.clone();
                tasks.spawn(async move {
                    let reply =
                        serve_request(&engine, &legacy, &pending, &out_tx, &id, &method, &params)
                            .await;
                    if let Some(reply) = reply {
                        let _ = out_tx.send(reply);
                    }
                });
            }
        }
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!("stdin closed, stopping");
    tasks.shutdown().await;
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

async fn serve_request(
    engine: &Arc<Engine>,
    legacy: &Mutex<LegacyState>,
    pending: &Arc<Pending>,
    out_tx: &mpsc::UnboundedSender<Value>,
    id: &Value,
    method: &str,
    params: &Value,
) -> Option<Value> {
    if method == "initialize" {
        let version = rpc::negotiate_legacy(params.get("protocolVersion").and_then(Value::as_str));
        legacy.lock().client_caps = params
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({}));
        return Some(rpc::response(id, engine.initialize_result(version)));
    }
    let modern = rpc::meta_version(params).is_some();
    if modern {
        if let Err(e) = check_meta(params) {
            return Some(rpc::error_response(id, &e));
        }
        if method == "subscriptions/listen" {
            listen(engine, out_tx, id, params).await;
            return None;
        }
    } else if method == "logging/setLevel" {
        match params
            .get("level")
            .and_then(Value::as_str)
            .and_then(LogLevel::parse)
        {
            Some(level) => legacy.lock().log_level = Some(level),
            None => {
                return Some(rpc::error_response(
                    id,
                    &RpcError::invalid_params("invalid log level"),
                ));
            }
        }
    }
    let meta = rpc::meta(params);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = if modern {
        Ctx {
            era: EraKind::Modern,
            out: Some(tx),
            pending: None,
            client_caps: meta
                .and_then(|m| m.get(rpc::META_CLIENT_CAPABILITIES))
                .cloned()
                .unwrap_or_else(|| json!({})),
            log_level: meta
                .and_then(|m| m.get(rpc::META_LOG_LEVEL))
                .and_then(Value::as_str)
                .and_then(LogLevel::parse),
            progress_token: meta.and_then(|m| m.get("progressToken")).cloned(),
        }
    } else {
        let state = legacy.lock();
        Ctx {
            era: EraKind::Legacy,
            out: Some(tx),
            pending: Some(pending.clone()),
            client_caps: state.client_caps.clone(),
            log_level: Some(state.log_level.unwrap_or(LogLevel::Debug)),
            progress_token: meta.and_then(|m| m.get("progressToken")).cloned(),
        }
    };
    let forward_tx = out_tx.clone();
    let forward = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if let Outbound::Message(m) = out {
                let _ = forward_tx.send(m);
            }
        }
    });
    let outcome = engine.handle(method, params, &ctx).await;
    drop(ctx);
    let _ = forward.await;
    Some(match outcome {
        Ok(result) => rpc::response(id, result),
        Err(e) => rpc::error_response(id, &e),
    })
}

fn check_meta(params: &Value) -> Result<(), RpcError> {
    let meta = rpc::meta(params);
    if meta
        .and_then(|m| m.get(rpc::META_CLIENT_CAPABILITIES))
        .is_none()
    {
        return Err(RpcError::invalid_params(
            "invalid params: missing _meta keys: io.modelcontextprotocol/clientCapabilities",
        ));
    }
    let version = rpc::meta_version(params).unwrap_or("");
    if version != MODERN_VERSION {
        return Err(
            RpcError::new(code::UNSUPPORTED_VERSION, "Unsupported protocol version")
                .with_data(json!({ "supported": [MODERN_VERSION], "requested": version })),
        );
    }
    Ok(())
}

async fn listen(
    engine: &Arc<Engine>,
    out_tx: &mpsc::UnboundedSender<Value>,
    id: &Value,
    params: &Value,
) {
    let (ack, filter) = engine.listen_ack(id, params.get("notifications").unwrap_or(&Value::Null));
    let mut events = engine.subscribe();
    if out_tx.send(ack).is_err() {
        return;
    }
    loop {
        match events.recv().await {
            Ok(event) if filter.wants(&event) => {
                let mut n = event.to_notification();
                if let Some(p) = n.get_mut("params").and_then(Value::as_object_mut) {
                    p.insert("_meta".into(), json!({ rpc::META_SUBSCRIPTION_ID: id }));
                }
                if out_tx.send(n).is_err() {
                    return;
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}
