//! Streamable HTTP upstreams, plain or over TLS.
//!
//! A POST's answer is classified by its `Content-Type`: JSON is collected (bounded), SSE is
//! decoded event by event as it arrives and never buffered whole, anything else with a body is an
//! upstream protocol error.
//!
//! # Clients and TLS
//!
//! ```text
//!   HttpClient (built once at start)
//!   ├── default pool ─── http://…  plain TCP, HTTP/1.1 keep-alive (as always)
//!   │                └── https://… rustls, platform trust store, no client certificate
//!   └── one pool per distinct `UpstreamTls` (extra CA, client identity), shared by the
//!       upstreams that have the same settings
//! ```
//!
//! Every pool is a hyper-util legacy client over a `hyper-rustls` connector: connections are
//! pooled per host as before, and an `https://` connection offers ALPN `h2, http/1.1`, so an
//! upstream that speaks HTTP/2 gets it (its requests then share one multiplexed connection) and
//! one that does not keeps HTTP/1.1. TLS is rustls with the `ring` provider, installed as the
//! process default once ([`crypto_provider`]); certificates are verified by webpki against the
//! platform's trust store (`rustls-native-certs`: `/etc/ssl/certs`, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`), plus an upstream's `tls_ca_file`.
//!
//! A failed TLS connection is a [`ProxyError::UpstreamUnavailable`] whose message says what went
//! wrong in words (an unknown issuer, a name mismatch, an expired certificate, a client
//! certificate the upstream wanted) before the raw error chain.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tollgate_mcp::headers::MCP_SESSION_ID as SESSION_ID;
use tollgate_mcp::sse::SseDecoder;

use super::{OutboundRequest, ReplyBody, SessionRef, SseStream, UpstreamReply};
use crate::config::UpstreamTls;
use crate::error::ProxyError;

/// One pooled client: plain HTTP, or HTTPS with one TLS setting.
pub type PooledClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The longest upstream `Mcp-Session-Id` accepted (it is sealed into the client's session id).
pub const MAX_UPSTREAM_SESSION_ID: usize = 1024;

/// The largest JSON answer the gateway collects from an upstream.
pub const MAX_UPSTREAM_JSON_BYTES: usize = 64 * 1024 * 1024;

/// The rustls crypto provider the gateway uses (`ring`).
///
/// The first call installs it as the process default, so that nothing that later asks rustls for
/// "the" provider can panic for want of one; if the embedding program installed a provider first,
/// that one stays the default and is returned. Called at start ([`client`]) and when the
/// configuration loads a client key.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        // Fails only when a provider is already installed: then that one is the default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
    });
    PROVIDER.clone()
}

/// The platform's trust anchors, read once per process. A store that cannot be read is logged,
/// not fatal: `http://` upstreams and those with a `tls_ca_file` still work.
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the platform's trusted certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                "no trusted certificate in the platform's store: https upstreams need `tls_ca_file`"
            );
        }
        tracing::debug!(added, ignored, "platform trust store loaded");
        Arc::new(roots)
    });
    ROOTS.clone()
}

/// The upstream HTTP clients of one gateway: a default pool, and one pool per distinct
/// [`UpstreamTls`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Clients>,
}

struct Clients {
    roots: Arc<RootCertStore>,
    default: PooledClient,
    by_tls: Mutex<Vec<(UpstreamTls, PooledClient)>>,
}

/// Builds the clients (start-up): installs the crypto provider, reads the platform trust store
/// once, and makes the default pool.
pub fn client() -> HttpClient {
    let _ = crypto_provider();
    let roots = platform_roots();
    let default = pooled(tls_config(&roots, None));
    HttpClient {
        inner: Arc::new(Clients {
            roots,
            default,
            by_tls: Mutex::new(Vec::new()),
        }),
    }
}

impl HttpClient {
    /// The pool for an upstream with these TLS settings: the default one for `None`, else the
    /// one made for equal settings, made now if this is the first upstream with them.
    pub fn for_tls(&self, tls: Option<&UpstreamTls>) -> PooledClient {
        let Some(tls) = tls else {
            return self.inner.default.clone();
        };
        let mut by_tls = self.inner.by_tls.lock();
        if let Some((_, client)) = by_tls.iter().find(|(t, _)| t == tls) {
            return client.clone();
        }
        let client = pooled(tls_config(&self.inner.roots, Some(tls)));
        by_tls.push((tls.clone(), client.clone()));
        client
    }

    /// How many distinct pools exist (the default one included).
    pub fn pools(&self) -> usize {
        1 + self.inner.by_tls.lock().len()
    }
}

/// The rustls configuration of one TLS setting: platform roots plus the extra CA certificates,
/// and the client identity if there is one. Cannot fail: the files were checked at load.
fn tls_config(platform: &RootCertStore, tls: Option<&UpstreamTls>) -> ClientConfig {
    let mut roots = platform.clone();
    if let Some(tls) = tls {
        // Each was added to a store once already, at load: none is ignored here.
        roots.add_parsable_certificates(tls.ca_certs.iter().cloned());
    }
    // `builder()` takes the process default provider, which `crypto_provider` installed.
    let builder = ClientConfig::builder().with_root_certificates(roots);
    match tls.and_then(|t| t.client_identity.as_ref()) {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(Identity(identity.certified_key())))
        }
        None => builder.with_no_client_auth(),
    }
}

/// Presents one fixed client certificate to any upstream that asks for one.
#[derive(Debug)]
struct Identity(Arc<CertifiedKey>);

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A pool over `tls`: `http://` and `https://` (ALPN h2 then http/1.1); HTTP/1.1 keep-alive or one
/// multiplexed HTTP/2 connection per upstream host.
fn pooled(tls: ClientConfig) -> PooledClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    // The TLS connector hands `https://` destinations to this one for the TCP part.
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
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
    client: PooledClient,
    timeout: Duration,
}

impl HttpUpstream {
    /// An upstream at `url`, with `headers` injected into every request, reached through `client`
    /// (from [`HttpClient::for_tls`]).
    pub fn new(
        name: String,
        url: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        client: PooledClient,
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
        deadline: tokio::time::Instant,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(error)) => {
                let failure = match tls_problem(&error) {
                    Some(problem) => ProxyError::UpstreamTls(format!(
                        "tls with {} failed: {problem}: {}",
                        self.url.authority().map_or("", |a| a.as_str()),
                        error_chain(&error)
                    )),
                    // Not connected: nothing was sent. Any later failure may come after the
                    // upstream read the request.
                    None if error.is_connect() => {
                        ProxyError::UpstreamUnavailable(error_chain(&error))
                    }
                    None => ProxyError::UpstreamLost(error_chain(&error)),
                };
                tracing::debug!(server = %self.name, error = %failure, "upstream request failed");
                Err(failure)
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
        let deadline = self.deadline();
        let response = self.send(request, deadline).await?;
        self.reply(response, deadline).await
    }

    /// One deadline for the answer's head and, for a JSON answer, its whole body: an upstream that
    /// sends headers and then trickles its body must not hold a request forever. (An SSE body is
    /// a stream with no overall deadline; its consumers bound their own waits.)
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// Opens the GET stream of a session (`Last-Event-ID` travels in `headers`).
    pub async fn get_stream(
        &self,
        session: &SessionRef,
        mut headers: HeaderMap,
    ) -> Result<UpstreamReply, ProxyError> {
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let request = self.request(Method::GET, headers, Some(session), Bytes::new())?;
        let deadline = self.deadline();
        let response = self.send(request, deadline).await?;
        self.reply(response, deadline).await
    }

    /// Ends a session.
    pub async fn delete(
        &self,
        session: &SessionRef,
        headers: HeaderMap,
    ) -> Result<StatusCode, ProxyError> {
        let request = self.request(Method::DELETE, headers, Some(session), Bytes::new())?;
        let response = self.send(request, self.deadline()).await?;
        Ok(response.status())
    }

    async fn reply(
        &self,
        response: http::Response<Incoming>,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamReply, ProxyError> {
        let status = response.status();
        let session_id = match response.headers().get(SESSION_ID) {
            None => None,
            Some(value) => match value.to_str() {
                // The id is sealed into the client's own session id, which must stay openable.
                Ok(id) if !id.is_empty() && id.len() <= MAX_UPSTREAM_SESSION_ID => {
                    Some(id.to_owned())
                }
                _ => {
                    return Err(ProxyError::UpstreamProtocol(format!(
                        "upstream session id is not 1 to {MAX_UPSTREAM_SESSION_ID} visible ASCII characters"
                    )));
                }
            },
        };
        let content_type = tollgate_mcp::headers::media_type(response.headers());
        let body = response.into_body();
        let body = match content_type.as_str() {
            "text/event-stream" => ReplyBody::Sse(sse_stream(body)),
            _ => {
                let collected = tokio::time::timeout_at(
                    deadline,
                    Limited::new(body, MAX_UPSTREAM_JSON_BYTES).collect(),
                )
                .await
                .map_err(|_| ProxyError::UpstreamTimeout)?;
                let bytes = collected
                    .map_err(|e| ProxyError::UpstreamLost(format!("reading body: {e}")))?
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
                            Err(ProxyError::UpstreamLost(format!("stream broke: {error}"))),
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

/// The next cause of `error`. An `io::Error` that wraps another error says that error's text
/// as its own and skips it in `source()`: step into it instead, so that a TLS error inside an
/// I/O error can be found.
fn cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
    {
        return Some(inner);
    }
    error.source()
}

/// `error` and its causes, `: `-separated, each text once.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut next = cause(error);
    while let Some(error) = next {
        let part = error.to_string();
        if part != last {
            text.push_str(": ");
            text.push_str(&part);
            last = part;
        }
        next = cause(error);
    }
    text
}

/// The rustls error somewhere in `error`'s causes.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = cause(error);
    }
    None
}

/// What went wrong with TLS, in words, if `error` is a TLS failure.
///
/// The rustls error is found by type where the chain keeps it. HTTP/2 does not: h2 keeps only
/// the text of an I/O error (its errors are cloneable), and a TLS 1.3 server that refuses the
/// client certificate says so with an alert after the client's side of the handshake is done,
/// when the connection already speaks HTTP/2. Such an alert is found by rustls's wording.
fn tls_problem(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(tls) = tls_error(error) {
        return Some(explain_tls(tls));
    }
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if let Some((_, alert)) = text.split_once("received fatal alert: ") {
            let name = alert
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or_default();
            return Some(explain_alert(name));
        }
        next = cause(error);
    }
    None
}

/// What a TLS alert from the upstream means, by the alert's name (`CertificateRequired`).
fn explain_alert(name: &str) -> &'static str {
    match name {
        "CertificateRequired" | "HandshakeFailure" | "BadCertificate" => {
            "the upstream refused the connection: it requires a client certificate it trusts \
             (`tls_client_cert`, `tls_client_key`)"
        }
        "UnknownCA" => "the upstream does not trust the client certificate's issuer",
        "CertificateExpired" => "the upstream says the client certificate has expired",
        _ => "the upstream ended the TLS connection",
    }
}

/// What a TLS failure means for the operator, in words.
fn explain_tls(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError as Cert;
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer => {
                "the upstream's certificate is not issued by a trusted authority (for a private \
                 CA, set `tls_ca_file`)"
            }
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "the upstream's certificate is not valid for this host name"
            }
            Cert::Expired | Cert::ExpiredContext { .. } => "the upstream's certificate has expired",
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "the upstream's certificate is not valid yet"
            }
            Cert::Revoked => "the upstream's certificate is revoked",
            Cert::BadSignature => "the upstream's certificate has a bad signature",
            _ => "the upstream's certificate was refused",
        },
        rustls::Error::AlertReceived(alert) => explain_alert(&format!("{alert:?}")),
        rustls::Error::NoApplicationProtocol => "no common application protocol (ALPN)",
        rustls::Error::PeerIncompatible(_) => {
            "the upstream's TLS versions or cipher suites are incompatible"
        }
        _ => "tls error",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ca_der(name: &str) -> rustls::pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn with_ca(der: &rustls::pki_types::CertificateDer<'static>) -> UpstreamTls {
        UpstreamTls {
            ca_file: None,
            ca_certs: vec![der.clone()],
            client_identity: None,
        }
    }

    #[test]
    fn upstreams_with_equal_tls_settings_share_one_pool_and_others_get_their_own() {
        let clients = client();
        let (a, b) = (ca_der("a"), ca_der("b"));
        let _ = clients.for_tls(None);
        assert_eq!(clients.pools(), 1, "plain and default https share one pool");
        let _ = clients.for_tls(Some(&with_ca(&a)));
        assert_eq!(clients.pools(), 2);
        let _ = clients.clone().for_tls(Some(&with_ca(&a)));
        assert_eq!(clients.pools(), 2, "equal settings reuse the pool");
        let _ = clients.for_tls(Some(&with_ca(&b)));
        assert_eq!(clients.pools(), 3);
    }

    #[test]
    fn the_crypto_provider_is_installed_as_the_process_default() {
        let provider = crypto_provider();
        let default = CryptoProvider::get_default().expect("installed");
        assert!(Arc::ptr_eq(&provider, default));
        // Asking rustls for "the" provider cannot panic any more.
        let _ = ClientConfig::builder();
    }

    /// An error whose cause is set, like hyper-util's `client error (Connect)`.
    #[derive(Debug)]
    struct Outer(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    /// The shape hyper-rustls produces: the rustls error inside an `io::Error` inside another.
    fn wrapped(tls: rustls::Error) -> Outer {
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        Outer(Box::new(std::io::Error::other(inner)))
    }

    #[test]
    fn a_tls_error_nested_in_io_errors_is_found_and_named_once() {
        let error = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let tls = tls_error(&error).expect("found");
        assert!(explain_tls(tls).contains("tls_ca_file"));
        assert_eq!(
            error_chain(&error),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        let plain = Outer(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(tls_error(&plain).is_none());
    }

    #[test]
    fn an_alert_known_only_by_its_text_is_still_explained() {
        // What h2 leaves of a TLS 1.3 alert: an I/O error rebuilt from the text.
        let error = Outer(Box::new(std::io::Error::other(
            "connection error: received fatal alert: CertificateRequired",
        )));
        assert!(tls_problem(&error).unwrap().contains("tls_client_cert"));
        let error = Outer(Box::new(std::io::Error::other(
            "received fatal alert: DecodeError",
        )));
        assert_eq!(
            tls_problem(&error),
            Some("the upstream ended the TLS connection")
        );
        let refused = Outer(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(tls_problem(&refused), None);
    }

    #[test]
    fn each_certificate_problem_is_explained_in_words() {
        use rustls::CertificateError as Cert;
        for (error, expected) in [
            (
                rustls::Error::InvalidCertificate(Cert::NotValidForName),
                "not valid for this host name",
            ),
            (
                rustls::Error::InvalidCertificate(Cert::Expired),
                "has expired",
            ),
            (
                rustls::Error::InvalidCertificate(Cert::NotValidYet),
                "not valid yet",
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "tls_client_cert",
            ),
        ] {
            assert!(explain_tls(&error).contains(expected), "{error}");
        }
    }
}
