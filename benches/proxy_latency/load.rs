//! The load generator: keep-alive HTTP/1.1 connections sending modern `tools/call` requests.
//!
//! Each connection is a bare hyper `client::conn::http1` connection (no pool, no retries), so
//! the client adds the same small, fixed cost to every target. A call is timed from just before
//! the request is handed to hyper until the last byte of the answer's body has arrived; every
//! time goes into an HDR histogram (nanoseconds, 3 significant digits). Every answer is
//! classified, so a run proves the gateway did the work it was timed for.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::upstream::MODERN_VERSION;

/// The largest latency the histograms hold (longer calls are clamped to it).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// Where requests for one target go, and the credentials they carry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's address.
    pub addr: SocketAddr,
    /// The path of the MCP endpoint (`/mcp` or `/mcp/<server>`).
    pub path: String,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    marker: Vec<u8>,
}

impl Endpoint {
    /// An endpoint at `addr` and `path`; with `token`, requests carry `Authorization: Bearer`.
    /// `marker` is text that only the upstream's own `tools/call` result contains.
    pub fn new(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        marker: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            path: path.to_owned(),
            host: HeaderValue::try_from(addr.to_string())?,
            authorization: token
                .map(|token| HeaderValue::try_from(format!("Bearer {token}")))
                .transpose()?,
            marker: marker.as_bytes().to_vec(),
        })
    }
}

/// The `tools/call` a connection sends: its body is `PREFIX id SUFFIX`.
#[derive(Debug, Clone)]
pub struct CallShape {
    tool: HeaderValue,
    suffix: String,
}

impl CallShape {
    /// A modern (2026-07-28, stateless) `tools/call` of `tool` with `arguments`.
    pub fn modern(tool: &str, arguments: &serde_json::Value) -> anyhow::Result<Self> {
        let params = serde_json::json!({
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        });
        Ok(Self {
            tool: HeaderValue::try_from(tool)?,
            suffix: format!(r#","method":"tools/call","params":{params}}}"#),
        })
    }

    fn body(&self, id: u64) -> Bytes {
        let mut text = String::with_capacity(32 + self.suffix.len());
        text.push_str(r#"{"jsonrpc":"2.0","id":"#);
        let _ = write!(text, "{id}");
        text.push_str(&self.suffix);
        Bytes::from(text)
    }
}

/// What an answer turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with the upstream's tool result.
    Upstream,
    /// 200 with the gateway's `rate_limited` refusal (`isError: true`).
    RateLimited,
    /// 200 with another gateway refusal (deny, default deny).
    Denied,
    /// Anything else: a non-200 status, an error, a body nobody expected.
    Other,
}

impl Outcome {
    /// Classifies an answer by its status and body; `marker` is in every upstream result.
    pub fn of(status: StatusCode, body: &[u8], marker: &[u8]) -> Self {
        if status != StatusCode::OK {
            return Self::Other;
        }
        let is_error = contains(body, br#""isError":true"#);
        if contains(body, marker) && !is_error {
            Self::Upstream
        } else if is_error && contains(body, br#""decision":"rate_limited""#) {
            Self::RateLimited
        } else if is_error && contains(body, b"tollgate/decision") {
            Self::Denied
        } else {
            Self::Other
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    next_id: u64,
}

impl Conn {
    /// Connects to `addr` (TCP_NODELAY) and completes the HTTP/1.1 handshake.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("proxy-latency: connection to {addr}: {error}");
            }
        });
        Ok(Self { sender, next_id: 1 })
    }

    /// Sends one call and reads its whole answer; returns the answer and how long it took.
    pub async fn call(
        &mut self,
        endpoint: &Endpoint,
        shape: &CallShape,
    ) -> anyhow::Result<(StatusCode, Bytes, Duration)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut builder = Request::post(endpoint.path.as_str())
            .header(HOST, endpoint.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            )
            .header(
                &MCP_PROTOCOL_VERSION,
                HeaderValue::from_static(MODERN_VERSION),
            )
            .header(&MCP_METHOD, HeaderValue::from_static("tools/call"))
            .header(&MCP_NAME, shape.tool.clone());
        if let Some(authorization) = &endpoint.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let request = builder.body(Full::new(shape.body(id)))?;
        self.sender.ready().await.context("connection closed")?;
        let start = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body, start.elapsed()))
    }
}

/// Everything recorded about one target in one phase.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of every call, nanoseconds.
    pub histogram: Histogram<u64>,
    /// Calls answered with the upstream's result.
    pub upstream: u64,
    /// Calls refused with `rate_limited`.
    pub rate_limited: u64,
    /// Calls refused otherwise.
    pub denied: u64,
    /// Calls answered with anything else.
    pub other: u64,
    /// The first answer of each kind seen (status and start of the body).
    pub samples: Vec<(Outcome, String)>,
    /// Wall-clock time spent sending, in seconds.
    pub wall_secs: f64,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)?,
            upstream: 0,
            rate_limited: 0,
            denied: 0,
            other: 0,
            samples: Vec::new(),
            wall_secs: 0.0,
        })
    }

    /// Every call counted.
    pub fn calls(&self) -> u64 {
        self.upstream + self.rate_limited + self.denied + self.other
    }

    fn record(&mut self, status: StatusCode, body: &[u8], marker: &[u8], elapsed: Duration) {
        let outcome = Outcome::of(status, body, marker);
        match outcome {
            Outcome::Upstream => self.upstream += 1,
            Outcome::RateLimited => self.rate_limited += 1,
            Outcome::Denied => self.denied += 1,
            Outcome::Other => self.other += 1,
        }
        if !self.samples.iter().any(|(seen, _)| *seen == outcome) {
            let text = String::from_utf8_lossy(&body[..body.len().min(600)]);
            self.samples.push((outcome, format!("{status} {text}")));
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(nanos.max(1));
    }

    /// Adds `other`'s calls (not its wall time) to `self`.
    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        self.upstream += other.upstream;
        self.rate_limited += other.rate_limited;
        self.denied += other.denied;
        self.other += other.other;
        for (outcome, sample) in &other.samples {
            if !self.samples.iter().any(|(seen, _)| seen == outcome) {
                self.samples.push((*outcome, sample.clone()));
            }
        }
        Ok(())
    }

    /// The latency at quantile `q`, in microseconds.
    pub fn micros_at(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// Counts, for the report.
    pub fn counts(&self) -> Counts {
        Counts {
            calls: self.calls(),
            upstream_results: self.upstream,
            rate_limited: self.rate_limited,
            denied: self.denied,
            other: self.other,
        }
    }
}

/// How the answers of a phase were classified.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counts {
    /// Every call.
    pub calls: u64,
    /// 200 with the upstream's result.
    pub upstream_results: u64,
    /// 200 with a `rate_limited` refusal.
    pub rate_limited: u64,
    /// 200 with another refusal.
    pub denied: u64,
    /// Anything else.
    pub other: u64,
}

/// Sends calls one after another on `conn` for `duration` (at least one call).
pub async fn sequential(
    conn: &mut Conn,
    endpoint: &Endpoint,
    shape: &CallShape,
    duration: Duration,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        let (status, body, elapsed) = conn.call(endpoint, shape).await?;
        tally.record(status, &body, &endpoint.marker, elapsed);
        if Instant::now() >= deadline {
            break;
        }
    }
    tally.wall_secs += start.elapsed().as_secs_f64();
    Ok(())
}

/// Sends `count` calls one after another on `conn`, recording them in `tally` (for warm-up and
/// fixed-count runs).
pub async fn count(
    conn: &mut Conn,
    endpoint: &Endpoint,
    shape: &CallShape,
    count: u64,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let start = Instant::now();
    for _ in 0..count {
        let (status, body, elapsed) = conn.call(endpoint, shape).await?;
        tally.record(status, &body, &endpoint.marker, elapsed);
    }
    tally.wall_secs += start.elapsed().as_secs_f64();
    Ok(())
}

/// Drives every connection of `conns` in parallel (one task each, closed loop) for `duration`;
/// gives the connections back with what they recorded.
pub async fn parallel(
    conns: Vec<Conn>,
    endpoint: &Endpoint,
    shape: &CallShape,
    duration: Duration,
    tally: &mut Tally,
) -> anyhow::Result<Vec<Conn>> {
    let endpoint = Arc::new(endpoint.clone());
    let shape = Arc::new(shape.clone());
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let endpoint = endpoint.clone();
            let shape = shape.clone();
            tokio::spawn(async move {
                let mut own = Tally::new()?;
                while Instant::now() < deadline {
                    let (status, body, elapsed) = conn.call(&endpoint, &shape).await?;
                    own.record(status, &body, &endpoint.marker, elapsed);
                }
                anyhow::Ok((conn, own))
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (conn, own) = task.await??;
        tally.merge(&own)?;
        back.push(conn);
    }
    tally.wall_secs += start.elapsed().as_secs_f64();
    Ok(back)
}

/// Opens `n` connections to `addr`.
pub async fn open_many(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// A plain GET (admin endpoints): status and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut conn = Conn::open(addr).await?;
    let request = Request::get(path)
        .header(HOST, HeaderValue::try_from(addr.to_string())?)
        .body(Full::new(Bytes::new()))?;
    conn.sender.ready().await?;
    let response = conn.sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::upstream::UPSTREAM_MARKER;

    const MARK: &[u8] = UPSTREAM_MARKER.as_bytes();

    #[test]
    fn the_upstream_result_is_told_from_refusals_and_errors() {
        let ok = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{UPSTREAM_MARKER}"}}],"isError":false}}}}"#
        );
        assert_eq!(
            Outcome::of(StatusCode::OK, ok.as_bytes(), MARK),
            Outcome::Upstream
        );
        assert_eq!(
            Outcome::of(StatusCode::BAD_REQUEST, ok.as_bytes(), MARK),
            Outcome::Other
        );
        let limited = br#"{"result":{"content":[],"isError":true,"_meta":{"tollgate/decision":{"decision":"rate_limited","retry_after":3}}}}"#;
        assert_eq!(
            Outcome::of(StatusCode::OK, limited, MARK),
            Outcome::RateLimited
        );
        let denied = br#"{"result":{"content":[],"isError":true,"_meta":{"tollgate/decision":{"decision":"deny"}}}}"#;
        assert_eq!(Outcome::of(StatusCode::OK, denied, MARK), Outcome::Denied);
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unknown tool"}}"#;
        assert_eq!(Outcome::of(StatusCode::OK, error, MARK), Outcome::Other);
    }

    #[test]
    fn a_call_body_is_a_modern_tools_call_with_its_id() {
        let shape = CallShape::modern("run-rerun", &serde_json::json!({"run_id": "r"})).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&shape.body(42)).unwrap();
        assert_eq!(body["id"], 42);
        assert_eq!(body["method"], "tools/call");
        assert_eq!(body["params"]["name"], "run-rerun");
        assert_eq!(
            body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            MODERN_VERSION
        );
    }

    #[test]
    fn merged_tallies_add_their_calls_and_keep_one_sample_per_outcome() {
        let mut a = Tally::new().unwrap();
        let mut b = Tally::new().unwrap();
        a.record(StatusCode::OK, MARK, MARK, Duration::from_micros(10));
        b.record(StatusCode::OK, MARK, MARK, Duration::from_micros(30));
        b.record(
            StatusCode::BAD_GATEWAY,
            b"",
            MARK,
            Duration::from_micros(50),
        );
        a.merge(&b).unwrap();
        assert_eq!((a.calls(), a.upstream, a.other), (3, 2, 1));
        assert_eq!(a.samples.len(), 2);
        assert!((a.micros_at(1.0) - 50.0).abs() < 0.1);
    }
}
