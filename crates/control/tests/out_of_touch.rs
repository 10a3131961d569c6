//! A control node cut off from the cluster ends its watch streams, so that the gateways it serves
//! move to a node that hears the leader instead of enforcing a configuration the cluster has left
//! behind (a revoked grant would stay valid there).
//!
//! In-process nodes with a breakable peer network (`Faults`); the service is called directly,
//! without a listener. Waits are conditions with timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tollgate_control::watch::OUT_OF_TOUCH_GRACE;
use tollgate_control::{ConfigServiceImpl, GatewayRegistry};
use tollgate_proto::v1::WatchRequest;
use tollgate_proto::v1::config_service_server::ConfigService as _;
use tollgate_raft::node::NodeOptions;
use tollgate_raft::{Faults, NodeId, PeerNode, RaftNode, Request};
use tracing::info;

const WAIT: Duration = Duration::from_secs(15);

async fn cluster(faults: &Faults) -> (Vec<Arc<RaftNode>>, Vec<TempDir>) {
    let mut listeners = Vec::new();
    let mut members: Vec<(NodeId, PeerNode)> = Vec::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.push((
            id,
            PeerNode {
                raft_addr: listener.local_addr().unwrap().to_string(),
                api_addr: format!("api-{id}:1"),
            },
        ));
        listeners.push((id, listener));
    }
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let options = NodeOptions::default().with_faults(faults.clone());
        let node = RaftNode::start_with_options(id, dir.path(), listener, &members, options)
            .await
            .unwrap();
        nodes.push(Arc::new(node));
        dirs.push(dir);
    }
    let leader = nodes[0]
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap()
        .current_leader
        .unwrap();
    for node in &nodes {
        node.raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader == Some(leader),
                "everyone knows the leader",
            )
            .await
            .unwrap();
    }
    (nodes, dirs)
}

fn put(n: u64) -> Request {
    Request::PutPolicy {
        id: "p".into(),
        document: format!(r#"{{"version":"1","default":"deny","tools":{{"t{n}":{{}}}}}}"#),
        expected_version: None,
        created_at_unix_ms: n,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_cluster_ends_its_watch_streams_and_healthy_nodes_do_not() {
    let faults = Faults::new();
    let (nodes, _dirs) = cluster(&faults).await;
    let (leader_id, _) = nodes[0].leader().unwrap();
    let follower = nodes.iter().find(|n| n.id() != leader_id).unwrap().clone();
    let healthy = nodes
        .iter()
        .find(|n| n.id() != leader_id && n.id() != follower.id())
        .unwrap()
        .clone();
    let leader = nodes.iter().find(|n| n.id() == leader_id).unwrap().clone();
    let watch = |node: &RaftNode| {
        let service = ConfigServiceImpl::new(node, GatewayRegistry::default());
        async move {
            service
                .watch(tonic::Request::new(WatchRequest {
                    from_revision: 0,
                    gateway_id: "gw".into(),
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut cut = watch(&follower).await;
    let mut fine = watch(&healthy).await;
    assert!(cut.next().await.unwrap().is_ok(), "the snapshot");
    assert!(fine.next().await.unwrap().is_ok(), "the snapshot");

    info!("--- cut the follower off; the cluster goes on and revokes something");
    let cut_at = Instant::now();
    faults.isolate(follower.id());
    let (_, response) = leader.client_write_indexed(put(1)).await.unwrap();
    let revision = response.revision();

    info!("--- the healthy node's stream carries the change");
    let event = tokio::time::timeout(WAIT, fine.next())
        .await
        .expect("the healthy stream delivers")
        .unwrap()
        .unwrap();
    assert_eq!(event.revision, revision);

    info!("--- the cut-off node's stream ends with UNAVAILABLE");
    let ended = tokio::time::timeout(WAIT, cut.next())
        .await
        .expect("the cut-off stream ends")
        .expect("an error item before the end");
    let status = ended.expect_err("no configuration event from a cut-off node");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let took = cut_at.elapsed();
    info!(?took, "cut-off stream ended");
    assert!(took >= OUT_OF_TOUCH_GRACE, "not before the grace: {took:?}");
    assert!(cut.next().await.is_none(), "and the stream is over");

    info!("--- an ordinary stream on a healthy node stays open meanwhile");
    let (_, response) = leader.client_write_indexed(put(2)).await.unwrap();
    let event = tokio::time::timeout(WAIT, fine.next())
        .await
        .expect("still open")
        .unwrap()
        .unwrap();
    assert_eq!(event.revision, response.revision());
    faults.heal();
}
