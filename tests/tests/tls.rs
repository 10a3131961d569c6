//! HTTPS upstreams through the real gateway: a private CA made at test time, an MCP upstream behind
//! a TLS-terminating front on 127.0.0.1:0, and the gateway's `tls_*` keys.
//!
//! ```text
//!   rmcp / Raw ──http──▶ tollgate ──https (rustls, ALPN h2|http/1.1)──▶ TlsFront ──tcp──▶ testkit Upstream
//! ```
//!
//! The front ([`TlsFront`]) is tokio-rustls in front of the plain testkit upstream: it terminates
//! TLS (optionally requiring a client certificate), records what each handshake negotiated, and
//! pipes the bytes through. The upstream's own server speaks HTTP/1.1 and HTTP/2 (prior knowledge),
//! so whichever protocol ALPN picked reaches it unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tollgate_testkit::{RunningUpstream, Upstream, UpstreamOptions, wait_for};
use tollgate_tests::{ALLOW_ALL, Gateway, GatewayBuilder, Raw, init_tracing};
use tracing::info;

const TOKEN: &str = "tls-grant-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A private PKI, made per test.

/// A CA and the certificates it issues, written as PEM files where the gateway reads them.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, for the TLS front.
struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    /// The CA certificate's PEM file.
    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server(&self, names: &[&str]) -> ServerIdentity {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        self.issue(params)
    }

    /// A server certificate for 127.0.0.1 and localhost that expired in 2021.
    fn expired_server(&self) -> ServerIdentity {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> ServerIdentity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ServerIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A client certificate named `name`, written as `<name>.pem` and `<name>.key`.
    fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{name}.client.test")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

// ---------------------------------------------------------------------------------------------
// The TLS-terminating front.

/// What one TLS handshake at the front came to.
#[derive(Debug, Clone)]
enum Handshake {
    Done {
        alpn: Option<String>,
        client_certificate: bool,
    },
    Failed(String),
}

/// How the front terminates TLS.
struct FrontOptions {
    identity: ServerIdentity,
    /// ALPN protocols offered, in preference order.
    alpn: Vec<&'static str>,
    /// Require a client certificate issued by this CA.
    client_ca: Option<CertificateDer<'static>>,
}

/// tokio-rustls on 127.0.0.1:0 in front of a plain upstream.
struct TlsFront {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    async fn start(options: FrontOptions, backend: SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match options.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(options.identity.chain, options.identity.key)
            .unwrap();
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            seen.lock()
                                .unwrap()
                                .push(Handshake::Failed(error.to_string()));
                            return;
                        }
                    };
                    let (_, connection) = tls.get_ref();
                    seen.lock().unwrap().push(Handshake::Done {
                        alpn: connection
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_certificate: connection.peer_certificates().is_some(),
                    });
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }

    /// `https://<host>:PORT/mcp`.
    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/mcp", self.addr.port())
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    /// Waits until the front has seen a handshake that `pred` accepts.
    async fn wait_for_handshake(&self, what: &str, pred: impl Fn(&Handshake) -> bool) {
        wait_for(WAIT, || self.handshakes().iter().any(&pred))
            .await
            .unwrap_or_else(|_| panic!("no {what} handshake; saw {:?}", self.handshakes()));
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn upstream() -> RunningUpstream {
    Upstream::start(UpstreamOptions::default()).await.unwrap()
}

async fn gateway(builder: GatewayBuilder) -> Gateway {
    builder
        .grant("g", TOKEN, "up", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap()
}

async fn mcp_client(url: &str, modern: bool) -> RunningService<RoleClient, ()> {
    tollgate_tests::mcp_client(url, TOKEN, modern).await
}

fn echo(text: &str) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new("echo");
    params.arguments = json!({ "text": text }).as_object().cloned();
    params
}

/// tools/list and tools/call with an rmcp client in both eras; the upstream sees both calls.
async fn list_and_call_in_both_eras(gateway: &Gateway, upstream: &RunningUpstream) {
    for modern in [false, true] {
        info!("--- rmcp client, modern era: {modern}");
        let client = mcp_client(&gateway.url("up"), modern).await;
        let tools = client.list_all_tools().await.unwrap();
        assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
        let result = client.call_tool(echo("over tls")).await.unwrap();
        let value = serde_json::to_value(&result).unwrap();
        assert_ne!(value["isError"], json!(true), "{value}");
        assert!(value.to_string().contains("over tls"), "{value}");
        client.cancel().await.unwrap();
    }
    assert_eq!(upstream.stats().calls("echo"), 2);
}

/// A modern tools/list through the gateway, which must fail with 502; returns the error message.
async fn failing_list(gateway: &Gateway) -> String {
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let reply = raw.modern(1, "tools/list", json!({})).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("upstream unavailable: tls with"),
        "{message}"
    );
    message
}

/// `tollgate_upstream_errors_total` for server `up` and `kind`.
async fn upstream_errors(gateway: &Gateway, kind: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", gateway.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("tollgate_upstream_errors_total{"))
        .filter(|l| l.contains("server=\"up\"") && l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn done_with(alpn: &str) -> impl Fn(&Handshake) -> bool + '_ {
    move |h| matches!(h, Handshake::Done { alpn: Some(a), .. } if a == alpn)
}

// ---------------------------------------------------------------------------------------------
// The suite.

#[tokio::test]
async fn an_https_upstream_trusted_through_tls_ca_file_serves_both_eras_over_http2() {
    init_tracing();
    info!("--- a private CA, an upstream behind TLS offering h2 and http/1.1");
    let pki = Pki::new("tollgate test ca");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.server(&["127.0.0.1", "localhost"]),
            alpn: vec!["h2", "http/1.1"],
            client_ca: None,
        },
        upstream.addr,
    )
    .await;
    let gateway = gateway(GatewayBuilder::new().https_upstream(
        "up",
        &front.url("127.0.0.1"),
        Some(&pki.ca_file()),
    ))
    .await;

    list_and_call_in_both_eras(&gateway, &upstream).await;
    info!("--- ALPN chose HTTP/2");
    front.wait_for_handshake("h2", done_with("h2")).await;
    assert!(
        front
            .handshakes()
            .iter()
            .all(|h| matches!(h, Handshake::Done { alpn: Some(a), .. } if a == "h2")),
        "{:?}",
        front.handshakes()
    );
}

#[tokio::test]
async fn an_https_upstream_that_speaks_only_http1_keeps_http1() {
    init_tracing();
    let pki = Pki::new("tollgate test ca");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.server(&["127.0.0.1", "localhost"]),
            alpn: vec!["http/1.1"],
            client_ca: None,
        },
        upstream.addr,
    )
    .await;
    info!("--- reached by host name this time");
    let gateway = gateway(GatewayBuilder::new().https_upstream(
        "up",
        &front.url("localhost"),
        Some(&pki.ca_file()),
    ))
    .await;

    list_and_call_in_both_eras(&gateway, &upstream).await;
    front
        .wait_for_handshake("http/1.1", done_with("http/1.1"))
        .await;
    assert!(
        !front.handshakes().iter().any(done_with("h2")),
        "{:?}",
        front.handshakes()
    );
}

#[tokio::test]
async fn without_tls_ca_file_a_private_ca_is_unknown_and_the_call_is_a_502_that_says_so() {
    init_tracing();
    let pki = Pki::new("tollgate test ca");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.server(&["127.0.0.1", "localhost"]),
            alpn: vec!["h2", "http/1.1"],
            client_ca: None,
        },
        upstream.addr,
    )
    .await;
    let gateway =
        gateway(GatewayBuilder::new().https_upstream("up", &front.url("127.0.0.1"), None)).await;

    info!("--- tools/list and tools/call both fail before reaching the upstream");
    let message = failing_list(&gateway).await;
    assert!(
        message.contains("not issued by a trusted authority"),
        "{message}"
    );
    assert!(message.contains("tls_ca_file"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let call = raw
        .modern(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert_eq!(call.status, 502, "{call:?}");
    assert_eq!(upstream.stats().http_requests, 0);
    assert!(upstream_errors(&gateway, "upstream_tls").await >= 2);
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused() {
    init_tracing();
    let pki = Pki::new("tollgate test ca");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.server(&["other.example.test"]),
            alpn: vec!["h2", "http/1.1"],
            client_ca: None,
        },
        upstream.addr,
    )
    .await;
    let gateway = gateway(GatewayBuilder::new().https_upstream(
        "up",
        &front.url("127.0.0.1"),
        Some(&pki.ca_file()),
    ))
    .await;

    let message = failing_list(&gateway).await;
    assert!(
        message.contains("not valid for this host name"),
        "{message}"
    );
    assert!(message.contains("other.example.test"), "{message}");
    assert_eq!(upstream.stats().http_requests, 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    init_tracing();
    let pki = Pki::new("tollgate test ca");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.expired_server(),
            alpn: vec!["h2", "http/1.1"],
            client_ca: None,
        },
        upstream.addr,
    )
    .await;
    let gateway = gateway(GatewayBuilder::new().https_upstream(
        "up",
        &front.url("127.0.0.1"),
        Some(&pki.ca_file()),
    ))
    .await;

    let message = failing_list(&gateway).await;
    assert!(message.contains("has expired"), "{message}");
    assert_eq!(upstream.stats().http_requests, 0);
}

#[tokio::test]
async fn an_upstream_requiring_a_client_certificate_accepts_the_configured_one_and_refuses_none() {
    init_tracing();
    let pki = Pki::new("tollgate test ca");
    let (cert, key) = pki.client_files("gateway");
    let upstream = upstream().await;
    let front = TlsFront::start(
        FrontOptions {
            identity: pki.server(&["127.0.0.1", "localhost"]),
            alpn: vec!["h2", "http/1.1"],
            client_ca: Some(pki.ca.der().clone()),
        },
        upstream.addr,
    )
    .await;

    info!("--- with tls_client_cert and tls_client_key: served, and the front saw the certificate");
    let with_identity = gateway(GatewayBuilder::new().https_upstream_with(
        "up",
        &front.url("127.0.0.1"),
        &[
            ("tls_ca_file", pki.ca_file().as_path()),
            ("tls_client_cert", cert.as_path()),
            ("tls_client_key", key.as_path()),
        ],
    ))
    .await;
    list_and_call_in_both_eras(&with_identity, &upstream).await;
    front
        .wait_for_handshake("client-authenticated", |h| {
            matches!(
                h,
                Handshake::Done {
                    client_certificate: true,
                    ..
                }
            )
        })
        .await;
    let requests = upstream.stats().http_requests;

    info!("--- without them: refused at the handshake, a 502 that names the client certificate");
    let without = gateway(GatewayBuilder::new().https_upstream(
        "up",
        &front.url("127.0.0.1"),
        Some(&pki.ca_file()),
    ))
    .await;
    let message = failing_list(&without).await;
    assert!(message.contains("client certificate"), "{message}");
    assert!(message.contains("tls_client_cert"), "{message}");
    front
        .wait_for_handshake(
            "refused for want of a client certificate",
            |h| matches!(h, Handshake::Failed(why) if why.contains("no certificates")),
        )
        .await;
    assert_eq!(upstream.stats().http_requests, requests);
    assert!(upstream_errors(&without, "upstream_tls").await >= 1);
}
