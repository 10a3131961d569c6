//! A gateway that follows a control plane, fed configuration events by hand: what a snapshot
//! installs, how changes apply, that a revoked grant is refused by the very next request, that
//! decisions carry the cluster's policy id and version, and that a lost stream keeps the last good
//! configuration serving while the follower reconnects from the revision it holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tollgate_gateway::RunningGateway;
use tollgate_gateway::config::{Config, ProcessEnv};
use tollgate_gateway::follow::{EventStream, WatchConnector};
use tollgate_proto::v1::{
    ConfigChange, ConfigChanges, ConfigEvent, ConfigSnapshot, Grant, HttpTransport, Policy,
    Upstream, UpstreamRemoved, WatchRequest, config_change, config_event, upstream,
};
use tollgate_quota::LocalQuota;
use tollgate_telemetry::Metrics;
use tollgate_testkit::{Upstream as TestUpstream, UpstreamOptions, wait_for};
use tollgate_tests::Raw;
use tracing::info;

const TOKEN: &str = "follow-token-0123456789";
const DENY: &str = r#"{"version":"1","default":"deny"}"#;
const ALLOW: &str = r#"{"version":"1","default":"allow"}"#;
const WAIT: Duration = Duration::from_secs(10);

async fn following_gateway() -> RunningGateway {
    following_gateway_with("").await
}

async fn following_gateway_with(extra: &str) -> RunningGateway {
    let config = Config::from_toml(
        &format!("[listen]\ndata = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{extra}"),
        std::path::Path::new("."),
        &ProcessEnv,
    )
    .unwrap();
    tollgate_gateway::start_following(
        config,
        Arc::new(Metrics::new()),
        tollgate_gateway::QuotaBackend::Local(Arc::new(LocalQuota::new())),
    )
    .await
    .unwrap()
}

fn policy(id: &str, version: u64, document: &str) -> Policy {
    Policy {
        id: id.to_owned(),
        version,
        document_json: document.to_owned(),
        digest: tollgate_policy::Policy::from_json(document.as_bytes())
            .map(|p| p.digest().to_owned())
            .unwrap_or_default(),
    }
}

fn grant(id: &str, token: &str, server: &str, policy_id: &str, revoked: bool) -> Grant {
    Grant {
        id: id.to_owned(),
        label: format!("label-{id}"),
        token_sha256: Sha256::digest(token.as_bytes()).to_vec(),
        server: server.to_owned(),
        policy_id: policy_id.to_owned(),
        revoked,
    }
}

fn http_upstream(name: &str, url: &str) -> Upstream {
    Upstream {
        name: name.to_owned(),
        transport: Some(upstream::Transport::Http(HttpTransport {
            url: url.to_owned(),
            ..HttpTransport::default()
        })),
    }
}

fn snapshot(
    revision: u64,
    policies: Vec<Policy>,
    grants: Vec<Grant>,
    upstreams: Vec<Upstream>,
) -> ConfigEvent {
    ConfigEvent {
        revision,
        kind: Some(config_event::Kind::Snapshot(ConfigSnapshot {
            policies,
            grants,
            upstreams,
        })),
    }
}

fn changes(revision: u64, kinds: Vec<config_change::Kind>) -> ConfigEvent {
    ConfigEvent {
        revision,
        kind: Some(config_event::Kind::Changes(ConfigChanges {
            changes: kinds
                .into_iter()
                .map(|kind| ConfigChange { kind: Some(kind) })
                .collect(),
        })),
    }
}

async fn echo(gateway: &RunningGateway, server: &str, token: &str) -> tollgate_tests::RawReply {
    Raw::new(
        &format!("http://{}/mcp/{server}", gateway.data_addr),
        Some(token),
    )
    .modern(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    )
    .await
}

fn decision(reply: &tollgate_tests::RawReply) -> Value {
    reply.json()["result"]["_meta"]["tollgate/decision"].clone()
}

async fn readyz(gateway: &RunningGateway) -> u16 {
    reqwest::get(format!("http://{}/readyz", gateway.admin_addr))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_following_gateway_is_not_ready_until_its_first_configuration() {
    let gateway = following_gateway().await;
    assert_eq!(readyz(&gateway).await, 503);
    assert_eq!(echo(&gateway, "up", TOKEN).await.status, 401);
    gateway
        .follower()
        .unwrap()
        .apply(&snapshot(0, vec![], vec![], vec![]))
        .unwrap();
    assert_eq!(
        readyz(&gateway).await,
        200,
        "an empty cluster is a configuration too"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn snapshots_and_changes_apply_whole_and_decisions_carry_the_cluster_version() {
    tollgate_tests::init_tracing();
    let upstream = TestUpstream::start(UpstreamOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gateway = following_gateway_with(&format!(
        "[audit]\npath = {:?}\n",
        audit.display().to_string()
    ))
    .await;
    let follower = gateway.follower().unwrap();

    info!("--- a snapshot installs the upstream, the policy and the grant");
    let applied = follower
        .apply(&snapshot(
            7,
            vec![policy("p", 3, DENY)],
            vec![grant("g1", TOKEN, "up", "p", false)],
            vec![http_upstream("up", &upstream.url)],
        ))
        .unwrap();
    assert_eq!(
        (applied.revision, applied.grants, applied.upstreams),
        (7, 1, 1)
    );
    assert!(applied.problems.is_empty(), "{applied:?}");
    assert_eq!(gateway.revision(), 7);
    let denied = echo(&gateway, "up", TOKEN).await;
    assert_eq!(denied.json()["result"]["isError"], true, "{denied:?}");
    let meta = decision(&denied);
    assert_eq!(meta["policy_id"], "p", "{meta}");
    assert_eq!(meta["policy_version"], 3, "{meta}");
    assert!(
        meta["policy_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(
        upstream.stats().calls("echo"),
        0,
        "a denied call never reaches the upstream"
    );

    info!("--- a new policy version serves from the next request");
    follower
        .apply(&changes(
            8,
            vec![config_change::Kind::PolicyPut(policy("p", 4, ALLOW))],
        ))
        .unwrap();
    let allowed = echo(&gateway, "up", TOKEN).await;
    assert_answered(&allowed);
    assert_eq!(upstream.stats().calls("echo"), 1);

    info!("--- a revoked grant is refused by the very next request");
    follower
        .apply(&changes(
            9,
            vec![config_change::Kind::GrantPut(grant(
                "g1", TOKEN, "up", "p", true,
            ))],
        ))
        .unwrap();
    assert_eq!(echo(&gateway, "up", TOKEN).await.status, 401);

    info!("--- a removed upstream is refused; its name can come back");
    let other = "other-token-0123456789";
    follower
        .apply(&changes(
            10,
            vec![
                config_change::Kind::GrantPut(grant("g2", other, "up", "p", false)),
                config_change::Kind::UpstreamRemoved(UpstreamRemoved {
                    name: "up".to_owned(),
                }),
            ],
        ))
        .unwrap();
    assert_eq!(echo(&gateway, "up", other).await.status, 404);
    follower
        .apply(&changes(
            11,
            vec![config_change::Kind::UpstreamPut(http_upstream(
                "up",
                &upstream.url,
            ))],
        ))
        .unwrap();
    let back = echo(&gateway, "up", other).await;
    assert_answered(&back);
    assert_eq!(gateway.revision(), 11);
    gateway.shutdown().await;
    upstream.shutdown().await;

    info!("--- every audit line of a call names the policy id and the version that decided");
    let calls: Vec<Value> = tollgate_tests::audit_records(&audit)
        .into_iter()
        .filter(|r| r["tool"] == "echo")
        .collect();
    let versions: Vec<(Value, Value)> = calls
        .iter()
        .map(|r| (r["policy_id"].clone(), r["policy_version"].clone()))
        .collect();
    assert_eq!(
        versions,
        vec![
            (json!("p"), json!(3)),
            (json!("p"), json!(4)),
            (json!("p"), json!(4)),
        ],
        "{calls:#?}"
    );
}

#[tokio::test]
async fn refused_events_change_nothing() {
    let upstream = TestUpstream::start(UpstreamOptions::default())
        .await
        .unwrap();
    let gateway = following_gateway().await;
    let follower = gateway.follower().unwrap();
    follower
        .apply(&snapshot(
            5,
            vec![policy("p", 1, ALLOW)],
            vec![grant("g1", TOKEN, "up", "p", false)],
            vec![http_upstream("up", &upstream.url)],
        ))
        .unwrap();

    // A change set that does not move forward (a replay) is refused.
    let replay = changes(
        5,
        vec![config_change::Kind::GrantPut(grant(
            "g1", TOKEN, "up", "p", true,
        ))],
    );
    assert!(follower.apply(&replay).is_err());
    // A change of a kind this build does not know is refused as a whole, even with a good
    // change beside it.
    let unknown = ConfigEvent {
        revision: 6,
        kind: Some(config_event::Kind::Changes(ConfigChanges {
            changes: vec![
                ConfigChange {
                    kind: Some(config_change::Kind::GrantPut(grant(
                        "g1", TOKEN, "up", "p", true,
                    ))),
                },
                ConfigChange { kind: None },
            ],
        })),
    };
    assert!(follower.apply(&unknown).is_err());
    assert!(
        follower
            .apply(&ConfigEvent {
                revision: 6,
                kind: None
            })
            .is_err()
    );

    assert_eq!(gateway.revision(), 5);
    let still = echo(&gateway, "up", TOKEN).await;
    assert_answered(&still);
    gateway.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_policy_that_does_not_compile_here_fails_closed_and_the_rest_applies() {
    let upstream = TestUpstream::start(UpstreamOptions::default())
        .await
        .unwrap();
    let gateway = following_gateway().await;
    let follower = gateway.follower().unwrap();
    let applied = follower
        .apply(&snapshot(
            2,
            vec![
                policy("broken", 1, r#"{"version":"1","default":"sometimes"}"#),
                policy("fine", 1, ALLOW),
            ],
            vec![
                grant("g1", TOKEN, "up", "broken", false),
                grant("g2", "fine-token-0123456789", "up", "fine", false),
            ],
            vec![http_upstream("up", &upstream.url)],
        ))
        .unwrap();
    assert_eq!(applied.problems.len(), 1, "{applied:?}");
    assert!(applied.problems[0].contains("broken"), "{applied:?}");
    let denied = echo(&gateway, "up", TOKEN).await;
    assert_eq!(denied.json()["result"]["isError"], true, "{denied:?}");
    let fine = echo(&gateway, "up", "fine-token-0123456789").await;
    assert_answered(&fine);
    assert_eq!(upstream.stats().calls("echo"), 1);
    gateway.shutdown().await;
    upstream.shutdown().await;
}

/// A connector that hands out scripted streams and records the revision each connect asked for.
#[derive(Default)]
struct Scripted {
    streams: Mutex<VecDeque<Vec<Result<ConfigEvent, tonic::Status>>>>,
    asked: Mutex<Vec<u64>>,
}

impl WatchConnector for Scripted {
    fn connect(
        &self,
        request: WatchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, tonic::Status>> + Send + '_>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(request.from_revision);
            let next = self.streams.lock().unwrap().pop_front();
            match next {
                // The scripted events, then the stream stays open (a quiet control plane).
                Some(events) => Ok(Box::pin(
                    futures_util::stream::iter(events).chain(futures_util::stream::pending()),
                ) as EventStream),
                None => Err(tonic::Status::unavailable("control plane unreachable")),
            }
        })
    }
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn the_follower_keeps_serving_through_a_lost_stream_and_resumes_from_its_revision() {
    tollgate_tests::init_tracing();
    let upstream = TestUpstream::start(UpstreamOptions::default())
        .await
        .unwrap();
    let mut gateway = following_gateway().await;
    let connector = Arc::new(Scripted::default());
    connector.streams.lock().unwrap().extend([
        // First stream: a snapshot, then the stream fails.
        vec![
            Ok(snapshot(
                3,
                vec![policy("p", 1, ALLOW)],
                vec![grant("g1", TOKEN, "up", "p", false)],
                vec![http_upstream("up", &upstream.url)],
            )),
            Err(tonic::Status::unavailable("control node went away")),
        ],
    ]);
    gateway.follow(connector.clone(), "gw-test".to_owned());

    info!("--- the snapshot arrives, then the stream is lost and reconnecting fails");
    wait_for(WAIT, || connector.asked.lock().unwrap().len() >= 3)
        .await
        .expect("the follower keeps trying to reconnect");
    assert_eq!(gateway.revision(), 3);
    let during = echo(&gateway, "up", TOKEN).await;
    assert_answered(&during);

    info!("--- the control plane comes back: the follower resumes from revision 3");
    connector.streams.lock().unwrap().push_back(vec![Ok(changes(
        4,
        vec![config_change::Kind::GrantPut(grant(
            "g1", TOKEN, "up", "p", true,
        ))],
    ))]);
    wait_for(WAIT, || gateway.revision() == 4)
        .await
        .expect("the change after the reconnect applies");
    let asked = connector.asked.lock().unwrap().clone();
    assert_eq!(asked[0], 0, "the first connect asks for a snapshot");
    assert!(
        asked[1..].iter().all(|r| *r == 3),
        "reconnects resume from 3: {asked:?}"
    );
    assert_eq!(echo(&gateway, "up", TOKEN).await.status, 401);
    gateway.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn revoking_a_grant_ends_its_open_streams_too() {
    tollgate_tests::init_tracing();
    let upstream = TestUpstream::start(UpstreamOptions::default())
        .await
        .unwrap();
    let gateway = following_gateway().await;
    let follower = gateway.follower().unwrap();
    let other = "other-token-0123456789";
    follower
        .apply(&snapshot(
            1,
            vec![policy("p", 1, ALLOW)],
            vec![
                grant("g1", TOKEN, "up", "p", false),
                grant("g2", other, "up", "p", false),
            ],
            vec![http_upstream("up", &upstream.url)],
        ))
        .unwrap();
    let url = format!("http://{}/mcp/up", gateway.data_addr);
    let open_stream = |token: &'static str| {
        let url = url.clone();
        async move {
            let session = Raw::new(&url, Some(token)).initialize().await.unwrap();
            let response = reqwest::Client::new()
                .get(&url)
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response
        }
    };
    let mut revoked = open_stream(TOKEN).await;
    let mut kept = open_stream(other).await;

    info!("--- revoke g1 while both grants hold a GET stream open");
    follower
        .apply(&changes(
            2,
            vec![config_change::Kind::GrantPut(grant(
                "g1", TOKEN, "up", "p", true,
            ))],
        ))
        .unwrap();
    assert!(
        ends_within(&mut revoked, WAIT).await,
        "the revoked grant's stream ends"
    );

    info!("--- the other grant's stream stays open and its calls work");
    assert!(
        !ends_within(&mut kept, Duration::from_millis(300)).await,
        "nothing ended the other grant's stream"
    );
    let call = echo(&gateway, "up", other).await;
    assert_answered(&call);
    drop((revoked, kept));
    gateway.shutdown().await;
    upstream.shutdown().await;
}

/// Whether a streamed body ends (or fails) within `limit`, reading whatever it sends meanwhile.
async fn ends_within(response: &mut reqwest::Response, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await
    .is_ok()
}

/// The upstream answered the call: HTTP 200, a result with content, not a refusal. (Checking only
/// `isError != true` would also pass on a 401 or a JSON-RPC error, where the field is absent.)
#[track_caller]
fn assert_answered(reply: &tollgate_tests::RawReply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let result = &reply.json()["result"];
    assert!(result["content"].is_array(), "{reply:?}");
    assert_ne!(result["isError"], true, "{reply:?}");
}
