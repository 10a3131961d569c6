//! Cluster membership through the AdminService: a node joins as a learner, is promoted to voter,
//! a voter is removed; the last voter cannot be; followers send the operator to the leader.
//!
//! Real Raft nodes and both services on loopback listeners bound to port 0. Every wait is on a
//! condition (Raft metrics, the applied revision) with a timeout; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tollgate_control::{ControlNode, LocalCluster};
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::v1::{
    AddNodeRequest, ClusterMember, ClusterStatusRequest, NodeRole, PutPolicyRequest,
    RemoveNodeRequest,
};
use tollgate_proto::{ADMIN_TOKEN_METADATA_KEY, LEADER_METADATA_KEY};
use tollgate_raft::{ConfigState, NodeId, PeerNode};
use tonic::transport::Channel;
use tracing::info;

/// Generous on a loaded 2-core machine; a healthy cluster needs well under a second.
const WAIT: Duration = Duration::from_secs(15);
const ADMIN: &str = "admin-secret";

/// The addresses of a node that never starts, bound on loopback while this lives.
struct Unstarted {
    peer: PeerNode,
    _raft: TcpListener,
    _api: TcpListener,
}

async fn unstarted() -> Unstarted {
    let raft = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = PeerNode {
        raft_addr: raft.local_addr().unwrap().to_string(),
        api_addr: api.local_addr().unwrap().to_string(),
    };
    Unstarted {
        peer,
        _raft: raft,
        _api: api,
    }
}

async fn admin(addr: SocketAddr) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        ADMIN_TOKEN_METADATA_KEY,
        format!("Bearer {ADMIN}").parse().unwrap(),
    );
    request
}

/// Add the node at `index` of `cluster` (as a voter if `promote`).
fn add(cluster: &LocalCluster, index: usize, promote: bool) -> AddNodeRequest {
    let peer = cluster.peer(index);
    AddNodeRequest {
        node_id: cluster.node(index).node().id(),
        raft_addr: peer.raft_addr.clone(),
        api_addr: peer.api_addr.clone(),
        promote,
    }
}

/// Policy `id` with a document that differs from the one of `n - 1` (the default flips).
fn put(id: &str, n: u64) -> PutPolicyRequest {
    let default = if n.is_multiple_of(2) { "allow" } else { "deny" };
    PutPolicyRequest {
        policy_id: id.into(),
        document_json: format!(r#"{{"version":"1","default":"{default}"}}"#),
        expected_version: 0,
    }
}

/// Put a policy through `client` and return the revision it committed at.
async fn write(client: &mut AdminServiceClient<Channel>, n: u64) -> u64 {
    let response = client.put_policy(authed(put("p", n))).await.unwrap();
    let response = response.into_inner();
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    assert!(!response.unchanged);
    response.revision
}

/// Wait until `control` has applied revision `revision`.
async fn wait_revision(control: &ControlNode, revision: u64) {
    let mut revisions = control.node().reader().subscribe_revision();
    tokio::time::timeout(WAIT, revisions.wait_for(|r| *r >= revision))
        .await
        .unwrap_or_else(|_| panic!("node {} never reached {revision}", control.node().id()))
        .unwrap();
}

fn role(members: &[ClusterMember], id: NodeId) -> Option<NodeRole> {
    members
        .iter()
        .find(|m| m.node_id == id)
        .map(|m| NodeRole::try_from(m.role).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_learner_is_promoted_to_voter_and_a_voter_can_be_removed() {
    let mut cluster = LocalCluster::start(3, ADMIN).await.unwrap();
    let leader = cluster.leader_index().unwrap();
    let leader_id = cluster.node(leader).node().id();
    let mut client = admin(cluster.node(leader).api_addr()).await;
    write(&mut client, 1).await;

    info!("--- start node 4 with an empty member list");
    let fourth = cluster.join().await.unwrap();
    assert_eq!(cluster.node(fourth).node().id(), 4);
    assert!(
        !cluster
            .node(fourth)
            .node()
            .raft()
            .is_initialized()
            .await
            .unwrap(),
        "a node with no members must not initialize a cluster of its own"
    );
    let metrics = cluster.node(fourth).node().metrics().borrow().clone();
    assert_eq!(metrics.current_leader, None);
    assert_eq!(metrics.membership_config.membership().nodes().count(), 0);

    info!("--- add node 4 as a learner");
    let added = client
        .add_node(authed(add(&cluster, fourth, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&added.members, 4), Some(NodeRole::Learner));
    assert_eq!(added.members.len(), 4);
    let revision = write(&mut client, 2).await;
    wait_revision(cluster.node(fourth), revision).await;
    assert_eq!(
        cluster
            .node(fourth)
            .node()
            .reader()
            .read(ConfigState::clone),
        cluster
            .node(leader)
            .node()
            .reader()
            .read(ConfigState::clone),
        "the learner holds the leader's state"
    );
    let seen_by_learner = admin(cluster.node(fourth).api_addr())
        .await
        .cluster_status(authed(ClusterStatusRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen_by_learner.leader_id, leader_id);
    assert_eq!(role(&seen_by_learner.members, 4), Some(NodeRole::Learner));

    info!("--- adding it again changes nothing");
    let again = client
        .add_node(authed(add(&cluster, fourth, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.members.len(), 4);
    assert_eq!(role(&again.members, 4), Some(NodeRole::Learner));

    info!("--- promote node 4 to voter");
    let promoted = client
        .add_node(authed(add(&cluster, fourth, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&promoted.members, 4), Some(NodeRole::Voter));
    let status = client
        .cluster_status(authed(ClusterStatusRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let voters = status
        .members
        .iter()
        .filter(|m| m.role == NodeRole::Voter as i32)
        .count();
    assert_eq!(voters, 4);
    assert_eq!(role(&status.members, 4), Some(NodeRole::Voter));
    let revision = write(&mut client, 3).await;
    wait_revision(cluster.node(fourth), revision).await;

    let removed_id = cluster
        .nodes()
        .map(|c| c.node().id())
        .find(|&id| id != leader_id)
        .unwrap();
    info!("--- remove voter {removed_id}");
    let removed = client
        .remove_node(authed(RemoveNodeRequest {
            node_id: removed_id,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&removed.members, removed_id), None);
    assert_eq!(removed.members.len(), 3);
    let status = client
        .cluster_status(authed(ClusterStatusRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&status.members, removed_id), None);
    assert!(
        status
            .members
            .iter()
            .all(|m| m.role == NodeRole::Voter as i32)
    );

    info!("--- writes still commit on the remaining voters");
    let revision = write(&mut client, 4).await;
    // The remaining voters, node 4 among them.
    for control in cluster.nodes().filter(|c| c.node().id() != removed_id) {
        wait_revision(control, revision).await;
    }

    info!("--- an unknown node cannot be removed");
    let unknown = client
        .remove_node(authed(RemoveNodeRequest { node_id: 99 }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn the_last_voter_of_a_cluster_cannot_be_removed() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    let refused = client
        .remove_node(authed(RemoveNodeRequest { node_id: 1 }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let status = client
        .cluster_status(authed(ClusterStatusRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&status.members, 1), Some(NodeRole::Voter));
    write(&mut client, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_sent_to_a_follower_name_the_leader_and_change_nothing() {
    let cluster = LocalCluster::start(3, ADMIN).await.unwrap();
    let leader = cluster.leader_index().unwrap();
    let follower = (0..cluster.len()).find(|&i| i != leader).unwrap();
    let mut client = admin(cluster.node(follower).api_addr()).await;
    let stranger = unstarted().await;

    let refusals = [
        client
            .add_node(authed(AddNodeRequest {
                node_id: 4,
                raft_addr: stranger.peer.raft_addr.clone(),
                api_addr: stranger.peer.api_addr.clone(),
                promote: false,
            }))
            .await
            .unwrap_err(),
        client
            .add_node(authed(add(&cluster, follower, true)))
            .await
            .unwrap_err(),
        client
            .remove_node(authed(RemoveNodeRequest {
                node_id: cluster.node(leader).node().id(),
            }))
            .await
            .unwrap_err(),
    ];
    for refused in refusals {
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        let named = refused
            .metadata()
            .get(LEADER_METADATA_KEY)
            .expect("no leader metadata")
            .to_str()
            .unwrap();
        assert_eq!(named, cluster.peer(leader).api_addr);
    }
    let status = admin(cluster.node(leader).api_addr())
        .await
        .cluster_status(authed(ClusterStatusRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.members.len(), 3);
}

#[tokio::test]
async fn a_learner_that_cannot_be_reached_is_added_at_once_and_can_be_removed() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut client = admin(cluster.node(0).api_addr()).await;
    // Bound and dropped: nothing listens there.
    let gone = unstarted().await;
    let request = AddNodeRequest {
        node_id: 2,
        raft_addr: gone.peer.raft_addr.clone(),
        api_addr: gone.peer.api_addr.clone(),
        promote: false,
    };
    drop(gone);

    info!("--- add an unreachable learner");
    let added = tokio::time::timeout(WAIT, client.add_node(authed(request)))
        .await
        .expect("adding a learner waited for it to catch up")
        .unwrap()
        .into_inner();
    assert_eq!(role(&added.members, 2), Some(NodeRole::Learner));
    assert_eq!(
        added
            .members
            .iter()
            .find(|m| m.node_id == 2)
            .unwrap()
            .matched_index,
        0
    );

    info!("--- the single voter still commits, and the learner can be removed");
    write(&mut client, 1).await;
    let removed = client
        .remove_node(authed(RemoveNodeRequest { node_id: 2 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role(&removed.members, 2), None);
    assert_eq!(removed.members.len(), 1);
}
