//! The fast upstream: the least an MCP server can do over Streamable HTTP, as fast as it can.
//!
//! It is the baseline the gateway is compared with, so it must cost much less than the gateway:
//! hyper's HTTP/1.1 server directly (no router, no middleware), one current-thread runtime, the
//! request parsed only for its `id` and `method` (borrowed, `params` skipped), and every answer
//! built by concatenating the raw `id` with a fixed JSON text. Answers are always
//! `application/json` (never SSE) and there are no sessions: a stateless server of both eras.
//!
//! ```text
//!   POST /mcp ─▶ {id, method} ─┬─ notification (no id) ─▶ 202
//!                              ├─ initialize / server/discover / ping / tools/list ─▶ fixed result
//!                              ├─ tools/call ─▶ fixed tool result carrying UPSTREAM_MARKER
//!                              └─ anything else ─▶ JSON-RPC -32601
//! ```
//! Modern (2026-07-28) requests, recognised by their `MCP-Protocol-Version` header, get the
//! server's identity in the result's `_meta`, as the revision asks.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

/// Text in every `tools/call` result of this upstream: a response carrying it came from here.
pub const UPSTREAM_MARKER: &str = "fast-upstream: done";

/// The modern protocol revision.
pub const MODERN_VERSION: &str = "2026-07-28";

/// The largest request body read.
const MAX_BODY: usize = 1024 * 1024;

const TOOLS: &str = r#"{"tools":[{"name":"run-rerun","description":"Re-runs a CI run","inputSchema":{"type":"object","properties":{"run_id":{"type":"string"},"failed_only":{"type":"boolean"}},"required":["run_id"]}},{"name":"echo","description":"Echoes its arguments","inputSchema":{"type":"object"}}]"#;
const CALL: &str = r#"{"content":[{"type":"text","text":"fast-upstream: done"}],"isError":false"#;
const DISCOVER: &str = r#"{"supportedVersions":["2026-07-28"],"capabilities":{"tools":{}},"ttlMs":0,"cacheScope":"public""#;
const INITIALIZE: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"fast-upstream","version":"0.1.0"}"#;
const EMPTY: &str = "{";
const MODERN_META: &str = r#","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"fast-upstream","version":"0.1.0"}}}"#;

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[allow(dead_code)]
    params: Option<IgnoredAny>,
}

/// Binds `addr`, prints `listening http://ADDR/mcp` on stdout and serves until killed.
pub fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the upstream's runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("listening http://{}/mcp", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = service_fn(handle);
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("fast-upstream: connection: {error}");
                }
            });
        }
    })
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(answer(request).await)
}

async fn answer(request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let modern = request
        .headers()
        .get("mcp-protocol-version")
        .is_some_and(|v| v.as_bytes() == MODERN_VERSION.as_bytes());
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let Ok(message) = serde_json::from_slice::<Message<'_>>(&body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Some(id) = message.id else {
        // A notification or a client's response: accepted, nothing to say.
        return status(StatusCode::ACCEPTED);
    };
    json(reply(id.get(), message.method, modern))
}

/// The JSON-RPC answer to a request with the raw `id` for `method`.
fn reply(id: &str, method: Option<&str>, modern: bool) -> String {
    let result = match method {
        Some("tools/call") => CALL,
        Some("tools/list") => TOOLS,
        Some("server/discover") => DISCOVER,
        Some("initialize") if !modern => INITIALIZE,
        Some("ping") => EMPTY,
        Some(_) | None => {
            return format!(
                r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32601,"message":"Method not found"}}}}"#
            );
        }
    };
    let mut text = String::with_capacity(64 + result.len() + MODERN_META.len());
    text.push_str(r#"{"jsonrpc":"2.0","id":"#);
    text.push_str(id);
    text.push_str(r#","result":"#);
    text.push_str(result);
    match (modern, result.len() > 1) {
        (true, true) => text.push_str(MODERN_META),
        (true, false) => text.push_str(&MODERN_META[1..]),
        (false, _) => text.push('}'),
    }
    text.push('}');
    text
}

fn json(text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parsed(id: &str, method: &str, modern: bool) -> Value {
        serde_json::from_str(&reply(id, Some(method), modern)).expect("valid JSON")
    }

    #[test]
    fn every_answer_is_a_json_rpc_response_with_the_request_id() {
        for method in [
            "tools/call",
            "tools/list",
            "server/discover",
            "initialize",
            "ping",
            "nope",
        ] {
            for modern in [false, true] {
                let answer = parsed(r#""abc""#, method, modern);
                assert_eq!(answer["jsonrpc"], "2.0", "{method} {modern}");
                assert_eq!(answer["id"], "abc", "{method} {modern}");
            }
        }
        assert_eq!(parsed("7", "ping", false)["id"], 7);
    }

    #[test]
    fn modern_results_name_the_server_in_meta_and_legacy_results_do_not() {
        let modern = parsed("1", "tools/call", true);
        assert_eq!(
            modern["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "fast-upstream"
        );
        assert_eq!(modern["result"]["content"][0]["text"], UPSTREAM_MARKER);
        assert_eq!(
            parsed("1", "ping", true)["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "fast-upstream"
        );
        assert_eq!(parsed("1", "ping", false)["result"], json!({}));
        assert!(
            parsed("1", "tools/call", false)["result"]
                .get("_meta")
                .is_none()
        );
    }

    #[test]
    fn discover_offers_the_modern_revision_and_the_list_offers_run_rerun() {
        let discover = parsed("1", "server/discover", true);
        assert_eq!(
            discover["result"]["supportedVersions"],
            json!([MODERN_VERSION])
        );
        let list = parsed("1", "tools/list", true);
        assert_eq!(list["result"]["tools"][0]["name"], "run-rerun");
    }

    #[test]
    fn unknown_methods_and_modern_initialize_are_not_found() {
        assert_eq!(parsed("1", "resources/list", true)["error"]["code"], -32601);
        assert_eq!(parsed("1", "initialize", true)["error"]["code"], -32601);
    }
}
