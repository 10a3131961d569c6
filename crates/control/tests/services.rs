//! The admin and config services over real Raft nodes, on loopback tonic listeners bound to port 0.
//!
//! Every wait is on a condition (Raft metrics, the next stream event) with a timeout; nothing
//! sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_control::{ControlNode, LocalCluster};
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::v1::config_service_client::ConfigServiceClient;
use tollgate_proto::v1::{
    ConfigEvent, CreateGrantRequest, ListGrantsRequest, ListPolicyVersionsRequest,
    PutPolicyRequest, PutUpstreamRequest, RevokeGrantRequest, RollbackPolicyRequest,
    StdioTransport, Upstream, WatchRequest, config_change, config_event, upstream,
};
use tollgate_proto::{ADMIN_TOKEN_METADATA_KEY, LEADER_METADATA_KEY};
use tonic::transport::Channel;
use tracing::info;

/// Generous on a loaded 2-core machine; a healthy cluster needs well under a second.
const WAIT: Duration = Duration::from_secs(15);
const ADMIN: &str = "admin-secret";
const GOOD: &str = r#"{"version":"1","default":"deny"}"#;
const GOOD_2: &str = r#"{"version":"1","default":"allow"}"#;

/// Serves `control`'s config service on a loopback listener of its own with a short catch-up
/// wait, so that a watch from a revision the node never reaches gets its snapshot after 500 ms
/// rather than the default 10 s.
async fn config_with_short_catch_up(control: &ControlNode) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = control
        .config_service()
        .clone()
        .with_catch_up_wait(Duration::from_millis(500));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(config.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn admin(addr: SocketAddr) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn authed<T>(message: T) -> tonic::Request<T> {
    with_token(message, ADMIN)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        ADMIN_TOKEN_METADATA_KEY,
        format!("Bearer {token}").parse().unwrap(),
    );
    request
}

fn put(id: &str, document: &str) -> PutPolicyRequest {
    PutPolicyRequest {
        policy_id: id.into(),
        document_json: document.into(),
        expected_version: 0,
    }
}

async fn next_event(stream: &mut tonic::Streaming<ConfigEvent>) -> ConfigEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
        .expect("stream failed")
}

#[tokio::test]
async fn admin_calls_without_the_right_token_are_unauthenticated() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;

    let missing = client
        .list_grants(tonic::Request::new(ListGrantsRequest {
            include_revoked: true,
            server: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let wrong = client
        .put_policy(with_token(put("p", GOOD), "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let revision = cluster.node(0).node().reader().read(|s| s.revision());
    assert_eq!(revision, 0, "a refused call changed the state");
    client
        .list_grants(authed(ListGrantsRequest {
            include_revoked: true,
            server: String::new(),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bad_policy_is_refused_with_every_pointer_and_changes_nothing() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    client.put_policy(authed(put("p", GOOD))).await.unwrap();
    let before = cluster.node(0).node().reader().read(|s| s.revision());

    let bad = r#"{"version":"1","default":"maybe","bogus":1}"#;
    let response = client
        .put_policy(authed(put("p", bad)))
        .await
        .unwrap()
        .into_inner();
    let pointers: Vec<&str> = response.errors.iter().map(|e| e.pointer.as_str()).collect();
    let expected: Vec<String> = tollgate_policy::Policy::from_json(bad.as_bytes())
        .unwrap_err()
        .iter()
        .map(|e| e.pointer.clone())
        .collect();
    assert!(
        expected.len() >= 2,
        "the fixture should have several errors"
    );
    assert_eq!(pointers, expected);
    assert!(pointers.contains(&"/default") && pointers.contains(&"/bogus"));
    assert_eq!(response.version, 1, "the serving version is reported");
    assert!(response.digest.is_empty());
    assert_eq!(response.revision, before);
    assert_eq!(
        cluster.node(0).node().reader().read(|s| s.revision()),
        before
    );
}

#[tokio::test]
async fn a_pushed_policy_and_a_grant_round_trip_and_the_token_is_shown_once() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;

    info!("--- push a policy twice, then the same document again");
    let first = client
        .put_policy(authed(put("p", GOOD)))
        .await
        .unwrap()
        .into_inner();
    assert!(first.errors.is_empty());
    assert_eq!(first.version, 1);
    assert!(first.digest.starts_with("sha256:"));
    let second = client
        .put_policy(authed(put("p", GOOD_2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.version, 2);
    assert_eq!(second.revision, first.revision + 1);
    let same = client
        .put_policy(authed(put("p", GOOD_2)))
        .await
        .unwrap()
        .into_inner();
    assert!(same.unchanged);
    assert_eq!(same.revision, second.revision);
    let history = client
        .list_policy_versions(authed(ListPolicyVersionsRequest {
            policy_id: "p".into(),
            include_documents: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = history.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(history.versions[0].digest, first.digest);
    assert_eq!(history.versions[1].document_json, GOOD_2);

    info!("--- a grant needs an existing upstream");
    let grant_request = CreateGrantRequest {
        label: "agent".into(),
        server: "time".into(),
        policy_id: "p".into(),
    };
    let missing = client
        .create_grant(authed(grant_request.clone()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    client
        .put_upstream(authed(PutUpstreamRequest {
            upstream: Some(Upstream {
                name: "time".into(),
                transport: Some(upstream::Transport::Stdio(StdioTransport {
                    command: "mcp-server-time".into(),
                    ..StdioTransport::default()
                })),
            }),
        }))
        .await
        .unwrap();

    info!("--- create, list, revoke");
    let created = client
        .create_grant(authed(grant_request))
        .await
        .unwrap()
        .into_inner();
    assert!(created.token.starts_with("tg_"));
    let grant = created.grant.unwrap();
    let hash: [u8; 32] = Sha256::digest(created.token.as_bytes()).into();
    assert_eq!(grant.token_sha256, hash.to_vec());
    let listed = client
        .list_grants(authed(ListGrantsRequest {
            include_revoked: true,
            server: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.grants, vec![grant.clone()]);
    let listed_debug = format!("{listed:?}");
    assert!(
        !listed_debug.contains(&created.token),
        "a listing leaked the token"
    );

    let revoked = client
        .revoke_grant(authed(RevokeGrantRequest {
            grant_id: grant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.already_revoked);
    let again = client
        .revoke_grant(authed(RevokeGrantRequest {
            grant_id: grant.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.revision, revoked.revision);
    let listed = client
        .list_grants(authed(ListGrantsRequest {
            include_revoked: true,
            server: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.grants[0].revoked);
    let active = client
        .list_grants(authed(ListGrantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        active.grants.is_empty(),
        "a revoked grant is listed by default"
    );
    let unknown = client
        .revoke_grant(authed(RevokeGrantRequest {
            grant_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_watch_gets_a_snapshot_then_later_changes_and_resumes_after_its_revision() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    let config_addr = config_with_short_catch_up(cluster.node(0)).await;
    let mut config = ConfigServiceClient::connect(format!("http://{config_addr}"))
        .await
        .unwrap();
    client.put_policy(authed(put("p", GOOD))).await.unwrap();

    info!("--- watch from 0: a snapshot");
    let mut stream = config
        .watch(WatchRequest {
            from_revision: 0,
            gateway_id: "gw-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_event(&mut stream).await;
    let snapshot_revision = snapshot.revision;
    assert_eq!(snapshot_revision, 1);
    let Some(config_event::Kind::Snapshot(body)) = snapshot.kind else {
        panic!("first event is not a snapshot: {snapshot:?}");
    };
    assert_eq!(body.policies.len(), 1);
    assert_eq!(body.policies[0].document_json, GOOD);
    assert_eq!(
        body.policies[0].digest,
        tollgate_policy::Policy::from_json(GOOD.as_bytes())
            .unwrap()
            .digest()
    );

    info!("--- a later push arrives on the same stream");
    let pushed = client
        .put_policy(authed(put("p", GOOD_2)))
        .await
        .unwrap()
        .into_inner();
    let change = next_event(&mut stream).await;
    assert_eq!(change.revision, pushed.revision);
    let Some(config_event::Kind::Changes(changes)) = change.kind else {
        panic!("second event is not a change set: {change:?}");
    };
    let [only] = changes.changes.as_slice() else {
        panic!("expected one change, got {changes:?}");
    };
    assert!(matches!(
        &only.kind,
        Some(config_change::Kind::PolicyPut(p)) if p.version == 2 && p.digest == pushed.digest
    ));

    info!("--- a watch resumed from the snapshot's revision gets only the later change");
    let mut resumed = config
        .watch(WatchRequest {
            from_revision: snapshot_revision,
            gateway_id: "gw-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut resumed).await;
    assert_eq!(first.revision, pushed.revision);
    assert!(matches!(first.kind, Some(config_event::Kind::Changes(ref c)) if c.changes.len() == 1));

    info!("--- a watch one revision ahead of the node waits for it instead of going back");
    let mut waiting = config
        .watch(WatchRequest {
            from_revision: pushed.revision + 1,
            gateway_id: "gw-4".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let push = |document: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .put_policy(authed(put("p", document)))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let reached = push(r#"{"version":"1","default":"deny","tools":{"a":{}}}"#).await;
    assert_eq!(reached.revision, pushed.revision + 1);
    let later = push(r#"{"version":"1","default":"deny","tools":{"b":{}}}"#).await;
    let first = next_event(&mut waiting).await;
    assert_eq!(first.revision, later.revision);
    assert!(
        matches!(first.kind, Some(config_event::Kind::Changes(ref c)) if c.changes.len() == 1),
        "only the change after the revision the gateway holds, never an older snapshot: {first:?}"
    );

    info!("--- a watch from a revision the node never reaches gets a snapshot after the wait");
    let mut ahead = config
        .watch(WatchRequest {
            from_revision: 99,
            gateway_id: "gw-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = next_event(&mut ahead).await;
    assert_eq!(event.revision, later.revision);
    assert!(matches!(event.kind, Some(config_event::Kind::Snapshot(_))));
}

#[tokio::test]
async fn a_write_sent_to_a_follower_names_the_leader_api_address() {
    let cluster = LocalCluster::start(3, ADMIN).await.unwrap();
    let (leader_id, leader) = cluster.node(0).node().leader().unwrap();
    let follower = cluster
        .nodes()
        .find(|c| c.node().id() != leader_id)
        .unwrap();
    let mut client = admin(follower.api_addr()).await;

    let refused = client.put_policy(authed(put("p", GOOD))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let named = refused
        .metadata()
        .get(LEADER_METADATA_KEY)
        .expect("no leader metadata")
        .to_str()
        .unwrap();
    assert_eq!(named, leader.api_addr);

    info!("--- the leader accepts it and the follower's watch sees it");
    let mut config = ConfigServiceClient::connect(format!("http://{}", follower.api_addr()))
        .await
        .unwrap();
    let mut stream = config
        .watch(WatchRequest {
            from_revision: 0,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await;
    let mut leader_client = admin(named.parse().unwrap()).await;
    let pushed = leader_client
        .put_policy(authed(put("p", GOOD)))
        .await
        .unwrap()
        .into_inner();
    let mut reached = first.revision;
    while reached < pushed.revision {
        reached = next_event(&mut stream).await.revision;
    }
    assert_eq!(reached, pushed.revision);

    info!(
        "--- the same document again, on the follower: redirected, never answered from its state"
    );
    let again = client.put_policy(authed(put("p", GOOD))).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    assert!(again.metadata().get(LEADER_METADATA_KEY).is_some());
    let stale = PutPolicyRequest {
        expected_version: 7,
        ..put("p", GOOD_2)
    };
    let again = client.put_policy(authed(stale)).await.unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::Unavailable,
        "a version check is the leader's to answer: {again:?}"
    );
    let unchanged = leader_client
        .put_policy(authed(put("p", GOOD)))
        .await
        .unwrap()
        .into_inner();
    assert!(unchanged.unchanged, "{unchanged:?}");
}

#[tokio::test]
async fn policy_versions_carry_the_time_the_leader_accepted_them() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    client.put_policy(authed(put("p", GOOD))).await.unwrap();
    client.put_policy(authed(put("p", GOOD_2))).await.unwrap();
    client
        .rollback_policy(authed(RollbackPolicyRequest {
            policy_id: "p".into(),
            to_version: 1,
        }))
        .await
        .unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let history = client
        .list_policy_versions(authed(ListPolicyVersionsRequest {
            policy_id: "p".into(),
            include_documents: false,
        }))
        .await
        .unwrap()
        .into_inner();
    let stamps: Vec<i64> = history
        .versions
        .iter()
        .map(|v| v.created_at_unix_ms)
        .collect();
    assert_eq!(stamps.len(), 3);
    for stamp in &stamps {
        let stamp = u128::try_from(*stamp).unwrap();
        assert!(
            (before..=after).contains(&stamp),
            "{stamp} not in {before}..={after}"
        );
    }
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert_eq!(history.versions[2].rolled_back_from, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_puts_expecting_the_same_version_exactly_one_wins() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    client.put_policy(authed(put("p", GOOD))).await.unwrap();

    info!("--- eight puts at once, each expecting version 1");
    let mut racers = Vec::new();
    for n in 0..8 {
        let mut client = client.clone();
        racers.push(tokio::spawn(async move {
            let document =
                format!(r#"{{"version":"1","default":"allow","tools":{{"t{n}":{{}}}}}}"#);
            let mut request = put("p", &document);
            request.expected_version = 1;
            client.put_policy(authed(request)).await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(response) => {
                let response = response.into_inner();
                assert!(response.errors.is_empty(), "{:?}", response.errors);
                assert_eq!(response.version, 2);
                won += 1;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::FailedPrecondition),
        }
    }
    assert_eq!(
        won, 1,
        "puts expecting the same version must not both apply"
    );
    let history = client
        .list_policy_versions(authed(ListPolicyVersionsRequest {
            policy_id: "p".into(),
            include_documents: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.serving_version, 2);
    assert_eq!(history.versions.len(), 2);

    info!("--- a stale expected version is refused");
    let mut stale = put("p", GOOD);
    stale.expected_version = 1;
    let refused = client.put_policy(authed(stale)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
}
