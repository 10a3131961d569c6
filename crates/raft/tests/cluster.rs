//! Three control nodes talking the Raft peer protocol over real tonic on loopback: election,
//! replication, follower redirection, leader failover, a full restart from disk, and quota ledger
//! entries across a leader change.
//!
//! Every wait is on openraft metrics with a timeout; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tollgate_quota::Window;
use tollgate_raft::{
    NodeError, NodeId, PeerNode, QuotaOp, QuotaOpResult, RaftNode, Request, Response, Source,
};
use tracing::info;

/// Generous on a loaded 2-core machine; a healthy cluster needs well under a second.
const WAIT: Duration = Duration::from_secs(15);

struct Cluster {
    dirs: BTreeMap<NodeId, TempDir>,
    members: Vec<(NodeId, PeerNode)>,
    nodes: BTreeMap<NodeId, RaftNode>,
}

impl Cluster {
    /// Bind three loopback listeners on port 0, then start every node with the same member list.
    async fn start() -> Self {
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=3 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let node = PeerNode {
                raft_addr: listener.local_addr().unwrap().to_string(),
                api_addr: format!("api-{id}.test:7000"),
            };
            members.push((id, node));
            listeners.push((id, listener));
        }
        let mut dirs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let node = RaftNode::start_with_listener(id, dir.path(), listener, &members)
                .await
                .unwrap();
            dirs.insert(id, dir);
            nodes.insert(id, node);
        }
        Self {
            dirs,
            members,
            nodes,
        }
    }

    fn member(&self, id: NodeId) -> PeerNode {
        self.members
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, node)| node.clone())
            .unwrap()
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    /// Wait until every running node names the same running node (other than `not`) as leader.
    async fn wait_for_leader(&self, not: Option<NodeId>) -> NodeId {
        let alive: Vec<NodeId> = self.nodes.keys().copied().collect();
        let first = self.nodes.values().next().unwrap();
        let metrics = first
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| {
                    m.current_leader
                        .is_some_and(|l| alive.contains(&l) && Some(l) != not)
                },
                "a running leader",
            )
            .await
            .unwrap();
        let leader = metrics.current_leader.unwrap();
        for node in self.nodes.values() {
            node.raft()
                .wait(Some(WAIT))
                .current_leader(leader, "every node follows the same leader")
                .await
                .unwrap();
        }
        self.node(leader)
            .raft()
            .wait(Some(WAIT))
            .state(openraft::ServerState::Leader, "the leader knows it leads")
            .await
            .unwrap();
        leader
    }

    /// Wait until every running node has applied up to `index`.
    async fn wait_applied(&self, index: u64) {
        for node in self.nodes.values() {
            node.raft()
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "the write is applied everywhere")
                .await
                .unwrap();
        }
    }

    async fn shutdown(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    /// Start a stopped node again on its old Raft address and data directory.
    async fn restart(&mut self, id: NodeId) {
        let addr: SocketAddr = self.member(id).raft_addr.parse().unwrap();
        let node = RaftNode::start(id, self.dirs[&id].path(), addr, &self.members)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }
}

fn put_policy(id: &str, n: u64) -> Request {
    Request::PutPolicy {
        id: id.to_owned(),
        document: format!(r#"{{"id":"{id}","n":{n}}}"#),
        expected_version: None,
        created_at_unix_ms: n,
    }
}

/// Write through `node` and return the response with the log index now applied on it.
async fn write(node: &RaftNode, request: Request) -> (Response, u64) {
    let (index, response) = node.client_write_indexed(request).await.unwrap();
    (response, index)
}

fn revisions(cluster: &Cluster) -> Vec<u64> {
    cluster
        .nodes
        .values()
        .map(|node| node.reader().read(|state| state.revision()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_apply_writes_on_every_node() {
    info!("--- start three nodes with the same member list");
    let cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;

    info!("--- write through the leader");
    let mut last = None;
    for n in 1..=3 {
        let (response, index) = write(cluster.node(leader), put_policy("p1", n)).await;
        assert!(matches!(response, Response::Applied { policy_version: Some(v), .. } if v == n));
        last = Some((response.revision(), index));
    }
    let (revision, index) = last.unwrap();
    cluster.wait_applied(index).await;
    assert_eq!(revisions(&cluster), vec![revision; 3]);
    for node in cluster.nodes.values() {
        let versions = node
            .reader()
            .read(|state| state.policy_versions("p1").map(<[_]>::len));
        assert_eq!(versions, Some(3), "node {}", node.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_follower_is_refused_naming_the_leader() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = cluster
        .nodes
        .keys()
        .copied()
        .find(|&id| id != leader)
        .unwrap();

    info!("--- write to follower {follower}");
    let error = cluster
        .node(follower)
        .client_write(put_policy("p1", 1))
        .await
        .unwrap_err();
    assert!(error.is_forward_to_leader());
    match error {
        NodeError::ForwardToLeader {
            leader_id,
            leader: node,
        } => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(node, Some(cluster.member(leader)));
        }
        other => panic!("expected forward to leader, got {other}"),
    }
    assert_eq!(
        cluster.node(follower).leader().map(|(id, _)| id),
        Some(leader)
    );
    assert_eq!(revisions(&cluster), vec![0; 3], "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_the_leader_elects_a_new_one_that_accepts_writes() {
    let mut cluster = Cluster::start().await;
    let old = cluster.wait_for_leader(None).await;
    let (_, index) = write(cluster.node(old), put_policy("p1", 1)).await;
    cluster.wait_applied(index).await;

    info!("--- shut down leader {old}");
    cluster.shutdown(old).await;
    let new = cluster.wait_for_leader(Some(old)).await;
    assert_ne!(new, old);

    info!("--- write through new leader {new}");
    let (response, index) = write(cluster.node(new), put_policy("p1", 2)).await;
    assert!(matches!(
        response,
        Response::Applied {
            policy_version: Some(2),
            ..
        }
    ));
    cluster.wait_applied(index).await;
    assert_eq!(revisions(&cluster), vec![response.revision(); 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_from_its_data_dirs_keeps_every_applied_change() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let mut last = None;
    for n in 1..=4 {
        last = Some(write(cluster.node(leader), put_policy(&format!("p{}", n % 2), n)).await);
    }
    let (response, index) = last.unwrap();
    cluster.wait_applied(index).await;
    let before: Vec<_> = cluster
        .nodes
        .values()
        .map(|node| {
            node.reader().read(|state| {
                (
                    state.revision(),
                    state.policy_versions("p0").map(<[_]>::to_vec),
                    state.policy_versions("p1").map(<[_]>::to_vec),
                )
            })
        })
        .collect();
    assert_eq!(before[0].0, response.revision());

    info!("--- stop every node");
    for id in 1..=3 {
        cluster.shutdown(id).await;
    }

    info!("--- start every node again from its data dir");
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.wait_for_leader(None).await;
    cluster.wait_applied(index).await;
    let after: Vec<_> = cluster
        .nodes
        .values()
        .map(|node| {
            node.reader().read(|state| {
                (
                    state.revision(),
                    state.policy_versions("p0").map(<[_]>::to_vec),
                    state.policy_versions("p1").map(<[_]>::to_vec),
                )
            })
        })
        .collect();
    assert_eq!(after, before);

    info!("--- the restarted cluster takes further writes");
    let (next, index) = write(cluster.node(leader), put_policy("p1", 5)).await;
    assert_eq!(next.revision(), response.revision() + 1);
    cluster.wait_applied(index).await;
    assert_eq!(revisions(&cluster), vec![next.revision(); 3]);
}

/// 2024-03-10T00:00:00Z: every quota entry of the test is stamped with it, so all fall in one
/// window whatever the wall clock says.
const T0: u64 = 1_710_028_800_000;

fn quota(ops: Vec<QuotaOp>) -> Request {
    Request::Quota {
        now_unix_ms: T0,
        ops,
    }
}

fn grant(want: u64) -> QuotaOp {
    QuotaOp::Grant {
        key: "k".into(),
        window: Window::Minute,
        max: 10,
        want,
    }
}

fn term_of(node: &RaftNode) -> u64 {
    node.metrics().borrow().current_term
}

/// (term, granted, released) of every chunk of key `k`'s minute window, on every running node.
fn chunks(cluster: &Cluster) -> Vec<Vec<(u64, u64, u64)>> {
    cluster
        .nodes
        .values()
        .map(|node| {
            node.reader().read_quota(|ledger| {
                ledger
                    .window_report("k", Window::Minute, Window::Minute.id_at(T0))
                    .map(|report| {
                        report
                            .per_term
                            .iter()
                            .map(|(term, c)| (*term, c.granted, c.released))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_entries_commit_without_a_config_revision_and_grant_to_the_leaders_term() {
    let mut cluster = Cluster::start().await;
    let old = cluster.wait_for_leader(None).await;
    let (config, index) = write(cluster.node(old), put_policy("p1", 1)).await;
    let revision = config.revision();
    cluster.wait_applied(index).await;
    let mut watches: Vec<_> = cluster
        .nodes
        .values()
        .map(|node| node.reader().subscribe_revision())
        .collect();
    for watch in &mut watches {
        watch.borrow_and_update();
    }

    let old_term = term_of(cluster.node(old));
    info!("--- grant 6 of 10 through leader {old} in term {old_term}");
    let (response, index) = write(cluster.node(old), quota(vec![grant(6)])).await;
    let Response::Quota {
        revision: after,
        results,
    } = response
    else {
        panic!("expected a quota response, got {response:?}");
    };
    assert_eq!(after, revision, "a quota entry leaves the config revision");
    assert!(matches!(
        results.as_slice(),
        [QuotaOpResult::Granted {
            tokens: 6,
            outstanding: 6,
            ..
        }]
    ));
    cluster.wait_applied(index).await;
    assert_eq!(chunks(&cluster), vec![vec![(old_term, 6, 0)]; 3]);
    assert_eq!(revisions(&cluster), vec![revision; 3]);
    for watch in &watches {
        assert!(
            !watch.has_changed().unwrap(),
            "config watchers do not wake for quota entries"
        );
    }

    info!("--- shut down leader {old}");
    cluster.shutdown(old).await;
    let new = cluster.wait_for_leader(Some(old)).await;
    let new_term = term_of(cluster.node(new));
    assert!(new_term > old_term);

    info!("--- leader {new} of term {new_term} releases 2 of term {old_term} and grants");
    let release = QuotaOp::Release {
        key: "k".into(),
        window: Window::Minute,
        window_id: Window::Minute.id_at(T0),
        term: old_term,
        tokens: 2,
        from: Source {
            gateway: "gw-1".into(),
            epoch: 1,
            seq: 1,
        },
    };
    let (response, index) = write(
        cluster.node(new),
        quota(vec![grant(10), release.clone(), grant(10)]),
    )
    .await;
    let Response::Quota { results, .. } = response else {
        panic!("expected a quota response, got {response:?}");
    };
    let tokens: Vec<u64> = results
        .iter()
        .map(|r| match r {
            QuotaOpResult::Granted { tokens, .. } | QuotaOpResult::Released { tokens, .. } => {
                *tokens
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        tokens,
        [4, 2, 2],
        "the old term's chunk stays spent until released"
    );
    cluster.wait_applied(index).await;
    assert_eq!(
        chunks(&cluster),
        vec![vec![(old_term, 6, 2), (new_term, 6, 0)]; 2]
    );

    info!("--- the same report proposed again is a duplicate");
    let (response, _) = write(cluster.node(new), quota(vec![release])).await;
    assert!(matches!(
        response,
        Response::Quota { results, .. } if results == [QuotaOpResult::Duplicate]
    ));
    assert_eq!(revisions(&cluster), vec![revision; 2]);
}
