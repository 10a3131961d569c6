//! The official MCP conformance suite, run differentially: against the testkit's
//! conformance-shaped upstream directly, and against an identical upstream through Tollgate
//! (allow-all policy), in the same run. The same checks must pass, for every era the upstream
//! supports; the test fails listing every check whose status differs.
//!
//! ```text
//! conformance ──────────────────────────────────────────────▶ upstream A     (direct)
//! conformance ─▶ bearer proxy ─▶ tollgate /mcp/conf ─▶ upstream B           (through)
//! ```
//!
//! The suite has no option to send headers (`conformance server --help`), so a loopback proxy in
//! the test adds `Authorization: Bearer <grant token>` and forwards everything else untouched
//! (see [`HeaderProxy`]); the gateway keeps refusing tokenless requests.
//!
//! Suites: 0.1.16 (legacy) and 0.2.0-alpha.12 at `--spec-version` 2025-11-25 and 2026-07-28, as
//! `scripts/conformance.sh` runs them. A legacy-only upstream is run through the modern suite too:
//! the gateway must fail exactly the modern checks the upstream fails, i.e. never advertise an era
//! its upstream cannot serve. The same upstream is also run as a stdio child of the gateway
//! (`tollgate-test-upstream --stdio`), where the differences that need design work are listed
//! exactly ([`STDIO_KNOWN_DIFFERENCES`]). Results stay under `$CARGO_TARGET_TMPDIR/conformance/`
//! for `diff`. The last tests pin, without the suite, the gateway answers the first runs fixed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

use tollgate_testkit::{Eras, Upstream, UpstreamOptions};
use tollgate_tests::interop::{
    HeaderProxy, Suite, count_status, diff_results, run_conformance, tools,
};
use tollgate_tests::{ALLOW_ALL, GatewayBuilder, init_tracing};
use tracing::info;

const TOKEN: &str = "conformance-grant-token-0123456789";

fn out_dir(test: &str, side: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance")
        .join(test)
        .join(side)
}

/// Both result sets of one differential run.
struct Differential {
    direct: Vec<String>,
    through: Vec<String>,
}

/// How the upstream behind the gateway is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Streamable HTTP, the testkit upstream in-process.
    Http,
    /// stdio: the `tollgate-test-upstream --stdio` binary as the gateway's child.
    Stdio,
}

async fn differential(test: &str, suite: Suite, eras: Eras) -> Option<Differential> {
    differential_via(test, suite, eras, Transport::Http).await
}

async fn differential_via(
    test: &str,
    suite: Suite,
    eras: Eras,
    transport: Transport,
) -> Option<Differential> {
    init_tracing();
    tools(
        test,
        &[
            "TOLLGATE_NODE22",
            "TOLLGATE_CONFORMANCE_LEGACY",
            "TOLLGATE_CONFORMANCE_MODERN",
        ],
    )?;

    info!("--- two identical upstreams; tollgate (allow-all) and the bearer proxy before one");
    let direct_upstream = Upstream::start(UpstreamOptions::default().eras(eras))
        .await
        .unwrap();
    let gated_upstream = Upstream::start(UpstreamOptions::default().eras(eras))
        .await
        .unwrap();
    let builder = match transport {
        Transport::Http => GatewayBuilder::new().http_upstream("conf", &gated_upstream.url),
        Transport::Stdio => {
            let bin = tollgate_testkit::test_upstream_bin().unwrap();
            let eras = match eras {
                Eras::Both => "both",
                Eras::LegacyOnly => "legacy",
                Eras::ModernOnly => "modern",
            };
            GatewayBuilder::new().stdio_upstream(
                "conf",
                bin.to_str().unwrap(),
                &["--stdio", "--eras", eras],
            )
        }
    };
    let gateway = builder
        .grant("conformance", TOKEN, "conf", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap();
    let gateway_addr: SocketAddr = gateway
        .url("conf")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = HeaderProxy::start(
        gateway_addr,
        vec![(
            http::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        )],
    )
    .await
    .unwrap();

    info!("--- run the suite against both at once");
    let (direct_dir, through_dir) = (out_dir(test, "direct"), out_dir(test, "through"));
    let through_url = proxy.url("/mcp/conf");
    let started = std::time::Instant::now();
    let (direct, through) = tokio::join!(
        run_conformance(&direct_upstream.url, &direct_dir, suite),
        run_conformance(&through_url, &through_dir, suite),
    );
    let (direct, through) = (direct.unwrap(), through.unwrap());
    info!(elapsed = ?started.elapsed(), "--- both runs finished");
    eprintln!(
        "{test}: direct {} checks ({} success, {} failure), through tollgate {} checks ({} success, {} failure) in {:?}; results in {} and {}",
        direct.len(),
        count_status(&direct, "SUCCESS"),
        count_status(&direct, "FAILURE"),
        through.len(),
        count_status(&through, "SUCCESS"),
        count_status(&through, "FAILURE"),
        started.elapsed(),
        direct_dir.display(),
        through_dir.display(),
    );
    drop(proxy);
    gateway.stop().await;
    direct_upstream.shutdown().await;
    gated_upstream.shutdown().await;
    Some(Differential { direct, through })
}

fn assert_same_checks(test: &str, run: &Differential) {
    assert!(
        count_status(&run.direct, "SUCCESS") > 0,
        "{test}: the suite passed no check directly; did it run? {:?}",
        run.direct
    );
    let differences = diff_results(&run.direct, &run.through);
    assert!(
        differences.is_empty(),
        "{test}: {} check(s) differ between the upstream directly and through tollgate:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

fn runs<'a>(lines: &'a [String], run: &str) -> Vec<&'a String> {
    let prefix = format!("{run}/");
    lines.iter().filter(|l| l.starts_with(&prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_suite_passes_the_same_checks_through_tollgate_as_directly() {
    let test = "legacy_suite";
    let Some(run) = differential(test, Suite::Legacy, Eras::Both).await else {
        return;
    };
    assert_same_checks(test, &run);
    assert_eq!(
        count_status(&run.direct, "FAILURE"),
        0,
        "the testkit upstream fails checks directly: {:?}",
        run.direct
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modern_suite_passes_the_same_checks_through_tollgate_as_directly_in_both_eras() {
    let test = "modern_suite";
    let Some(run) = differential(test, Suite::Modern, Eras::Both).await else {
        return;
    };
    assert_same_checks(test, &run);
    for era in ["2025-11-25", "2026-07-28"] {
        let lines = runs(&run.direct, era);
        assert!(
            !lines.is_empty(),
            "no {era} checks ran directly: {:?}",
            run.direct
        );
        assert_eq!(
            count_status(&lines.into_iter().cloned().collect::<Vec<_>>(), "FAILURE"),
            0,
            "the dual-era testkit upstream fails {era} checks directly"
        );
    }
}

/// Known differences with the testkit upstream as a stdio child. What remains is SSE framing,
/// which a stdio upstream cannot and should not imitate:
///
/// - `server-sse-multiple-streams/server-sse-streams-functional` (SUCCESS -> INFO) and
///   `server-sse-polling/server-sse-content-type` (absent -> INFO): the child answers with one
///   JSON line, which the gateway sends as `application/json`, as the transport allows for any
///   request; the suite reports "SSE is optional" (INFO) instead of exercising SSE, in the
///   2025-11-25 and the 2026-07-28 runs alike. Nothing fails. Wrapping a complete JSON answer
///   into an SSE stream would only add framing.
/// - `server-sse-polling/server-sse-priming-event`, `server-sse-retry-field` and
///   `server-sse-disconnect-resume` (SUCCESS -> absent): priming events, `retry:` and
///   `Last-Event-ID` resumption only make sense where a stream can be resumed, and a stdio
///   child's stream cannot: its messages are routed once and never stored for replay (issue 2
///   asks for resumption "for HTTP upstreams"). Faking a priming event with an id would invite a
///   client to resume a stream the gateway would then have to refuse.
///
/// The 2026-07-28 HTTP statuses, `Mcp-Param-*` validation and `subscriptions/listen` routing
/// differences of the first runs are closed (stdio upstream module docs).
const STDIO_KNOWN_DIFFERENCES: &[&str] = &[
    "/server-server-sse-multiple-streams/server-sse-streams-functional: SUCCESS directly, INFO through tollgate",
    "/server-server-sse-polling/server-sse-content-type: absent directly, INFO through tollgate",
    "/server-server-sse-polling/server-sse-disconnect-resume: SUCCESS directly, absent through tollgate",
    "/server-server-sse-polling/server-sse-priming-event: SUCCESS directly, absent through tollgate",
    "/server-server-sse-polling/server-sse-retry-field: SUCCESS directly, absent through tollgate",
];

fn is_known_stdio_difference(line: &str) -> bool {
    STDIO_KNOWN_DIFFERENCES
        .iter()
        .any(|known| line.ends_with(known))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_suites_pass_the_same_checks_through_tollgate_to_a_stdio_upstream_but_the_known_ones()
{
    let mut seen = Vec::new();
    for (suite, name) in [(Suite::Legacy, "legacy"), (Suite::Modern, "modern")] {
        let test = format!("stdio_upstream_{name}");
        let Some(run) = differential_via(&test, suite, Eras::Both, Transport::Stdio).await else {
            return;
        };
        assert!(
            count_status(&run.direct, "SUCCESS") > 0,
            "{test}: {:?}",
            run.direct
        );
        let differences = diff_results(&run.direct, &run.through);
        eprintln!(
            "{test}: {} known difference(s):\n{}",
            differences.len(),
            differences.join("\n")
        );
        let unexpected: Vec<&String> = differences
            .iter()
            .filter(|d| !is_known_stdio_difference(d))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{test}: {} check(s) differ beyond the known stdio gaps:\n{}",
            unexpected.len(),
            unexpected
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The by-design one is there: stdio answers are JSON, not SSE.
        assert!(
            differences.iter().any(|d| d
                .ends_with("server-sse-priming-event: SUCCESS directly, absent through tollgate")),
            "{test}: stdio answers became SSE? update STDIO_KNOWN_DIFFERENCES: {differences:?}"
        );
        seen.extend(differences);
    }
    // The list stays exactly as long as it must: an entry no run shows any more goes.
    for known in STDIO_KNOWN_DIFFERENCES {
        assert!(
            seen.iter().any(|d| d.ends_with(known)),
            "{known:?} no longer differs: remove it from STDIO_KNOWN_DIFFERENCES"
        );
    }
}

/// The one known difference for a legacy-only upstream, and why it is not a defect: the upstream
/// (like the TypeScript SDK it imitates) answers modern requests with `"id": null` errors, which
/// the 2026-07-28 schema rejects (`wire-schema-valid`, `sep-2575-http-server-error-jsonrpc-id`,
/// once per probe). The gateway answers the same code (400, -32000 "Server not initialized")
/// but echoes the request's id, so those checks pass through it. Every other check must match.
fn is_known_id_echo_difference(line: &str) -> bool {
    let Some((check, _)) = line.split_once(": ") else {
        return false;
    };
    let check = check.split('#').next().unwrap_or(check);
    line.starts_with("2026-07-28/")
        && line.contains(": FAILURE directly, ")
        && (line.ends_with("SUCCESS through tollgate") || line.ends_with("absent through tollgate"))
        && (check.ends_with("/wire-schema-valid")
            || check.ends_with("/sep-2575-http-server-error-jsonrpc-id"))
}

/// Every `wire-schema-valid` failure of a run, as the schema violations the suite reported.
fn schema_violations(raw: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(raw) else {
        return out;
    };
    for dir in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(dir.path().join("checks.json")) else {
            continue;
        };
        let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        for check in checks {
            if check["id"] == "wire-schema-valid" && check["status"] == "FAILURE" {
                for violation in check["details"]["violations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for error in violation["errors"].as_array().into_iter().flatten() {
                        out.push(error.as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_only_upstream_is_not_advertised_as_modern_through_tollgate() {
    let test = "legacy_only_upstream";
    let Some(run) = differential(test, Suite::Modern, Eras::LegacyOnly).await else {
        return;
    };
    let differences = diff_results(&run.direct, &run.through);
    let unexpected: Vec<&String> = differences
        .iter()
        .filter(|d| !is_known_id_echo_difference(d))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{test}: {} check(s) differ beyond the known id echo:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The known difference is exactly the null id: no other schema violation directly.
    let violations = schema_violations(&out_dir(test, "direct").join("raw/2026-07-28"));
    assert!(
        violations
            .iter()
            .all(|v| v.starts_with("JSONRPCErrorResponse/id:")),
        "{violations:?}"
    );
    assert!(
        schema_violations(&out_dir(test, "through").join("raw/2026-07-28")).is_empty(),
        "the gateway's answers violate the 2026-07-28 schema"
    );

    let legacy: Vec<String> = runs(&run.direct, "2025-11-25")
        .into_iter()
        .cloned()
        .collect();
    let modern_direct: Vec<String> = runs(&run.direct, "2026-07-28")
        .into_iter()
        .cloned()
        .collect();
    let modern_through: Vec<String> = runs(&run.through, "2026-07-28")
        .into_iter()
        .cloned()
        .collect();
    assert!(
        count_status(&legacy, "SUCCESS") > 0 && count_status(&legacy, "FAILURE") == 0,
        "a legacy-only upstream passes the 2025-11-25 run: {legacy:?}"
    );
    assert!(
        count_status(&modern_direct, "FAILURE") > 0,
        "the 2026-07-28 run must detect that the upstream is legacy-only: {modern_direct:?}"
    );
    // Not advertised: discover fails through the gateway exactly as it does directly.
    for check in [
        "2026-07-28/server-server-stateless/sep-2575-server-implements-discover: FAILURE",
        "2026-07-28/server-tools-list/tools-list: FAILURE",
    ] {
        assert!(
            modern_direct.iter().any(|l| l == check) && modern_through.iter().any(|l| l == check),
            "expected {check:?} both directly and through tollgate"
        );
    }
}

// -------------------------------------------------------------------------------------------------
// What the differential runs found, pinned without the suite (no external tools needed): the
// gateway's own answers to malformed modern requests, as the suite, the Python SDK server and the
// testkit upstream give them.
// -------------------------------------------------------------------------------------------------

async fn gateway_before(
    eras: Eras,
) -> (tollgate_testkit::RunningUpstream, tollgate_tests::Gateway) {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default().eras(eras))
        .await
        .unwrap();
    let gateway = GatewayBuilder::new()
        .http_upstream("conf", &upstream.url)
        .grant("conformance", TOKEN, "conf", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap();
    (upstream, gateway)
}

fn discover(id: u64, meta: serde_json::Value) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "server/discover",
        "params": {"_meta": meta}})
    .to_string()
}

#[tokio::test]
async fn a_modern_request_without_its_meta_outside_a_session_is_invalid_params() {
    let (_upstream, gateway) = gateway_before(Eras::Both).await;
    let raw = tollgate_tests::Raw::new(&gateway.url("conf"), Some(TOKEN));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 101, "method": "server/discover",
        "params": {}})
    .to_string();
    let reply = raw
        .post(
            body,
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], -32602, "{reply:?}");
    assert_eq!(reply.json()["id"], 101);
}

#[tokio::test]
async fn a_version_header_that_differs_from_meta_is_a_mismatch_even_for_an_unknown_version() {
    let (_upstream, gateway) = gateway_before(Eras::Both).await;
    let raw = tollgate_tests::Raw::new(&gateway.url("conf"), Some(TOKEN));
    let meta = serde_json::json!({"io.modelcontextprotocol/protocolVersion": "v999.0.0",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let reply = raw
        .post(
            discover(302, meta),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], -32020, "{reply:?}");
}

#[tokio::test]
async fn an_unsupported_version_lists_the_versions_discover_reports_and_does_not_spoil_the_probe() {
    let (_upstream, gateway) = gateway_before(Eras::Both).await;
    let raw = tollgate_tests::Raw::new(&gateway.url("conf"), Some(TOKEN));
    info!("--- the first modern request of a fresh gateway names a version nobody speaks");
    let meta = serde_json::json!({"io.modelcontextprotocol/protocolVersion": "v999.0.0",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let reply = raw
        .post(
            discover(301, meta),
            &[
                ("mcp-protocol-version", "v999.0.0"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let error = reply.json()["error"].clone();
    assert_eq!(error["code"], -32022, "{reply:?}");
    assert_eq!(error["data"]["requested"], "v999.0.0");
    info!("--- the era probe was made at a version the upstream speaks: modern still works");
    let discovered = raw
        .modern(1, "server/discover", serde_json::json!({}))
        .await;
    assert_eq!(discovered.status, 200, "{discovered:?}");
    assert_eq!(
        error["data"]["supported"],
        discovered.json()["result"]["supportedVersions"],
        "-32022 must list what server/discover reports"
    );
}

#[tokio::test]
async fn a_legacy_only_upstream_gets_the_fallback_signal_for_any_modern_request() {
    let (_upstream, gateway) = gateway_before(Eras::LegacyOnly).await;
    let raw = tollgate_tests::Raw::new(&gateway.url("conf"), Some(TOKEN));
    let meta = serde_json::json!({"io.modelcontextprotocol/protocolVersion": "v999.0.0",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let reply = raw
        .post(
            discover(301, meta),
            &[
                ("mcp-protocol-version", "v999.0.0"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        reply.json()["error"]["code"],
        -32000,
        "no -32022 naming a modern version the upstream cannot serve: {reply:?}"
    );
    assert_eq!(reply.json()["id"], 301);
}

#[tokio::test]
async fn a_stdio_upstream_answers_modern_errors_and_param_headers_as_an_http_server_does() {
    init_tracing();
    let bin = tollgate_testkit::test_upstream_bin().unwrap();
    let gateway = GatewayBuilder::new()
        .stdio_upstream("conf", bin.to_str().unwrap(), &["--stdio"])
        .grant("conformance", TOKEN, "conf", Some(ALLOW_ALL))
        .start()
        .await
        .unwrap();
    let raw = tollgate_tests::Raw::new(&gateway.url("conf"), Some(TOKEN));

    info!("--- the child's -32601 is a 404, as the 2026-07-28 HTTP transport says");
    let unknown = raw.modern(1, "unknown/method", serde_json::json!({})).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.json()["error"]["code"], -32601);
    assert_eq!(unknown.json()["id"], 1);

    info!("--- Mcp-Param-Region must mirror the x-mcp-header argument: the gateway checks it");
    let call = |region: &str| {
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "test_header_param", "arguments": {"region": region},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string()
    };
    let standard = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "test_header_param"),
    ];
    let with = |region: Option<&'static str>| {
        let mut headers = standard.to_vec();
        if let Some(region) = region {
            headers.push(("mcp-param-region", region));
        }
        headers
    };
    let matching = raw.post(call("eu-west"), &with(Some("eu-west"))).await;
    assert_eq!(matching.status, 200, "{matching:?}");
    assert!(matching.json()["result"].is_object(), "{matching:?}");
    let encoded = raw
        .post(call("Hello"), &with(Some("=?base64?SGVsbG8=?=")))
        .await;
    assert_eq!(encoded.status, 200, "{encoded:?}");
    for (what, region) in [
        ("different", Some("us-east")),
        ("missing", None),
        ("unpadded base64", Some("=?base64?SGVsbG8?=")),
    ] {
        let body = if what == "unpadded base64" {
            call("Hello")
        } else {
            call("eu-west")
        };
        let refused = raw.post(body, &with(region)).await;
        assert_eq!(refused.status, 400, "{what}: {refused:?}");
        assert_eq!(
            refused.json()["error"]["code"],
            -32020,
            "{what}: {refused:?}"
        );
        assert_eq!(refused.json()["id"], 2, "{what}");
    }
    gateway.stop().await;
}
