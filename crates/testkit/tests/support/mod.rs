//! A minimal HTTP client for talking MCP to the test upstream in tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub const MODERN: &str = "2026-07-28";

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The JSON-RPC messages of the body: one JSON object, or every SSE `data:` line that parses.
    pub fn messages(&self) -> Vec<Value> {
        if self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"))
        {
            sse_messages(&self.body)
        } else if self.body.is_empty() {
            Vec::new()
        } else {
            vec![serde_json::from_str(&self.body).expect("json body")]
        }
    }

    /// The last message (the final response).
    pub fn last(&self) -> Value {
        self.messages().pop().expect("at least one message")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub fn sse_messages(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

/// SSE event ids in order.
pub fn sse_ids(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().to_string())
        .collect()
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    pub url: String,
}

impl Http {
    pub fn new(url: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            url: url.to_string(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let resp = self.open(method, headers, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("body within 10s")
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn open(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> http::Response<Incoming> {
        let mut req = http::Request::builder().method(method).uri(&self.url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .expect("http request")
    }

    /// POST with the standard content negotiation headers plus `extra`.
    pub async fn post(&self, extra: &[(&str, &str)], body: &Value) -> Reply {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        headers.extend_from_slice(extra);
        self.send("POST", &headers, Some(body)).await
    }

    /// Legacy initialize; returns the session id.
    pub async fn initialize(&self, version: &str, capabilities: Value) -> String {
        let reply = self
            .post(
                &[],
                &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion": version, "capabilities": capabilities,
                "clientInfo": {"name":"testkit-test","version":"0"}}}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let sid = reply.header("mcp-session-id").expect("session id");
        let ack = self
            .post(
                &[("mcp-session-id", &sid), ("mcp-protocol-version", version)],
                &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            )
            .await;
        assert_eq!(ack.status, 202);
        sid
    }

    /// A modern request with consistent headers and `_meta`.
    pub async fn modern(
        &self,
        id: u64,
        method: &str,
        mut params: Value,
        extra: &[(&str, &str)],
    ) -> Reply {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation":{}, "sampling":{}, "roots":{}},
        });
        params
            .as_object_mut()
            .unwrap()
            .entry("_meta")
            .or_insert(meta);
        let name = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut headers: Vec<(&str, &str)> =
            vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
        if let Some(n) = &name {
            headers.push(("mcp-name", n));
        }
        // `extra` overrides the defaults.
        headers.retain(|(k, _)| !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k)));
        headers.extend_from_slice(extra);
        self.post(
            &headers,
            &json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}),
        )
        .await
    }
}
