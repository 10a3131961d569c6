//! Reloading the configuration (SIGHUP): a valid policy takes effect for the next request; an
//! invalid one is refused with the path of the bad field and the old policy keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tollgate_testkit::{Upstream, UpstreamOptions};
use tollgate_tests::{Raw, SEED_POLICY, init_tracing, one_upstream};
use tracing::info;

const TOKEN: &str = "reload-grant-token-0123456789";

#[tokio::test]
async fn a_bad_policy_is_refused_on_reload_and_the_old_one_keeps_serving() {
    init_tracing();
    let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
    let gateway = one_upstream(&upstream.url, TOKEN, SEED_POLICY).await;
    let raw = Raw::new(&gateway.url("up"), Some(TOKEN));
    let echo = || {
        raw.modern(
            1,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
    };
    assert_eq!(
        echo().await.json()["result"]["isError"],
        true,
        "the seed denies echo"
    );

    info!("--- a policy with a typo is refused with its pointer; the seed keeps serving");
    gateway.write_policy(
        0,
        r#"{"version":"1","default":"allow","tools":{"echo":{"deny_iff":[]}}}"#,
    );
    let report = gateway.reload();
    assert!(!report.applied, "{report:?}");
    let refused = report.refused.join("\n");
    assert!(
        refused.contains("grants[0].policy") && refused.contains("/tools/echo/deny_iff"),
        "{refused}"
    );
    assert_eq!(
        echo().await.json()["result"]["isError"],
        true,
        "still the seed"
    );
    let version_before =
        echo().await.json()["result"]["_meta"]["tollgate/decision"]["policy_digest"].clone();

    info!("--- a valid policy takes effect for the next request, with its own version");
    gateway.write_policy(0, r#"{"version":"1","default":"allow"}"#);
    let report = gateway.reload();
    assert!(report.applied, "{report:?}");
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let allowed = echo().await;
    assert_ne!(allowed.json()["result"]["isError"], true, "{allowed:?}");
    assert_eq!(upstream.stats().calls("echo"), 1);
    let (audit, _dir) = gateway.stop().await;
    let records = tollgate_tests::audit_records(&audit);
    let last = records.iter().rev().find(|r| r["tool"] == "echo").unwrap();
    assert_ne!(
        last["policy_digest"], version_before,
        "audit records carry the new policy version"
    );
}
