//! Streamable HTTP upstreams.
//!
//! One pooled hyper client is shared by every HTTP upstream. A POST's answer is classified by its
//! `Content-Type`: JSON is collected (bounded), SSE is decoded event by event as it arrives and
//! never buffered whole, anything else with a body is an upstream protocol error.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tollgate_mcp::headers::MCP_SESSION_ID as SESSION_ID;
use tollgate_mcp::sse::SseDecoder;

use super::{OutboundRequest, ReplyBody, SessionRef, SseStream, UpstreamReply};
use crate::error::ProxyError;

/// The shared, pooled HTTP client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The largest JSON answer the gateway collects from an upstream.
pub const MAX_UPSTREAM_JSON_BYTES: usize = 64 * 1024 * 1024;

/// Builds the shared client: HTTP/1.1 and h2c by prior knowledge are not mixed; HTTP/1.1 keep-alive
/// with a pool per upstream host.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// One Streamable HTTP upstream.
pub struct HttpUpstream {
    name: String,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: HttpClient,
    timeout: Duration,
}

impl HttpUpstream {
    /// An upstream at `url`, with `headers` injected into every request.
    pub fn new(
        name: String,
        url: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        client: HttpClient,
        timeout: Duration,
    ) -> Self {
        Self {
            name,
            url,
            headers,
            client,
            timeout,
        }
    }

    fn request(
        &self,
        method: Method,
        mut headers: HeaderMap,
        session: Option<&SessionRef>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ProxyError> {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(id) = session.and_then(|s| s.upstream_session.as_deref()) {
            let value = HeaderValue::try_from(id).map_err(|_| {
                ProxyError::UpstreamProtocol("upstream session id is not a header value".into())
            })?;
            headers.insert(SESSION_ID, value);
        }
        let mut request = Request::builder()
            .method(method)
            .uri(self.url.clone())
            .body(Full::new(body))
            .map_err(|e| ProxyError::Internal(format!("building upstream request: {e}")))?;
        *request.headers_mut() = headers;
        Ok(request)
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(error)) => {
                tracing::debug!(server = %self.name, %error, "upstream request failed");
                Err(ProxyError::UpstreamUnavailable(error_chain(&error)))
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends one POST.
    pub async fn post(&self, outbound: OutboundRequest<'_>) -> Result<UpstreamReply, ProxyError> {
        let mut headers = outbound.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let request = self.request(Method::POST, headers, outbound.session, outbound.body)?;
        let response = self.send(request).await?;
        self.reply(response).await
    }

    /// Opens the GET stream of a session (`Last-Event-ID` travels in `headers`).
    pub async fn get_stream(
        &self,
        session: &SessionRef,
        mut headers: HeaderMap,
    ) -> Result<UpstreamReply, ProxyError> {
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let request = self.request(Method::GET, headers, Some(session), Bytes::new())?;
        let response = self.send(request).await?;
        self.reply(response).await
    }

    /// Ends a session.
    pub async fn delete(
        &self,
        session: &SessionRef,
        headers: HeaderMap,
    ) -> Result<StatusCode, ProxyError> {
        let request = self.request(Method::DELETE, headers, Some(session), Bytes::new())?;
        let response = self.send(request).await?;
        Ok(response.status())
    }

    async fn reply(&self, response: http::Response<Incoming>) -> Result<UpstreamReply, ProxyError> {
        let status = response.status();
        let session_id = response
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let body = response.into_body();
        let body = match content_type.as_str() {
            "text/event-stream" => ReplyBody::Sse(sse_stream(body)),
            _ => {
                let bytes = Limited::new(body, MAX_UPSTREAM_JSON_BYTES)
                    .collect()
                    .await
                    .map_err(|e| ProxyError::UpstreamUnavailable(format!("reading body: {e}")))?
                    .to_bytes();
                if bytes.is_empty() {
                    ReplyBody::Empty
                } else if content_type == "application/json" || content_type.ends_with("+json") {
                    ReplyBody::Json(bytes)
                } else if status.is_success() {
                    return Err(ProxyError::UpstreamProtocol(format!(
                        "unexpected content type `{content_type}`"
                    )));
                } else {
                    // An error page: the status says enough; do not forward foreign bodies.
                    ReplyBody::Empty
                }
            }
        };
        Ok(UpstreamReply {
            status,
            session_id,
            local_session: None,
            body,
        })
    }
}

/// Decodes an SSE body into events as its chunks arrive.
fn sse_stream(body: Incoming) -> SseStream {
    let state = (body, SseDecoder::new(), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut body, mut decoder, mut ended)| async move {
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => return Some((Ok(event), (body, decoder, ended))),
                    Ok(None) if ended => return None,
                    Ok(None) => {}
                    Err(error) => {
                        return Some((
                            Err(ProxyError::UpstreamProtocol(format!(
                                "bad event stream: {error}"
                            ))),
                            (body, decoder, true),
                        ));
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            decoder.push(&data);
                        }
                    }
                    Some(Err(error)) => {
                        return Some((
                            Err(ProxyError::UpstreamUnavailable(format!(
                                "stream broke: {error}"
                            ))),
                            (body, decoder, true),
                        ));
                    }
                    // An event not ended by a blank line is incomplete and dropped (SSE rules).
                    None => ended = true,
                }
            }
        },
    ))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
