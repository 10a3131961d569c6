//! In-process control clusters on loopback, for tests and benchmarks (feature `local-cluster`).
//!
//! [`LocalCluster::start`] runs `n` [`ControlNode`]s in the calling Tokio runtime, the way the
//! control tests, the end-to-end quota suites and `quota-bench` need them:
//!
//! ```text
//!   bind every listener first        start every node             wait on every node
//!   127.0.0.1:0 raft + api  ──▶  ControlNode::start(id 1..=n, ──▶  a leader is known and its
//!   (member list = the bound       same member list, own           first entry applied
//!    addresses)                    temporary data dir)
//! ```
//!
//! Every listener is bound to port 0 on `127.0.0.1` before any node starts, so the member list
//! holds the addresses actually served and nothing else on the machine is ever reached. Each node
//! keeps its Raft data in its own temporary directory, removed when the cluster is dropped. Waits
//! are on Raft metrics with a timeout, never sleeps.
//!
//! Nodes keep their index for the life of the cluster: [`LocalCluster::take`] and
//! [`LocalCluster::stop`] leave a hole, so index `i` always names node id `i + 1` (and a node
//! started by [`LocalCluster::join`] gets the next index and id).
//!
//! This is harness code, not something a deployment runs: `tollgate` starts one [`ControlNode`]
//! per process.

use std::time::Duration;

use openraft::metrics::WaitError;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tollgate_raft::{NodeId, PeerNode};

use crate::{AdminToken, ControlError, ControlNode, ControlOptions, ControlStartError};

/// How long [`LocalCluster::start`] and [`LocalCluster::wait_for_new_leader`] wait on each node
/// unless told otherwise: generous on a loaded 2-core machine, where a healthy cluster needs well
/// under a second.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);

/// Why a local cluster could not start, or a wait on it failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// A loopback listener could not be bound, or has no local address.
    #[error("cannot bind a loopback listener: {0}")]
    Bind(std::io::Error),
    /// A node's temporary data directory could not be created.
    #[error("cannot create a data directory: {0}")]
    DataDir(std::io::Error),
    /// The admin token was refused.
    #[error("the admin token is refused: {0}")]
    AdminToken(ControlError),
    /// A control node did not start.
    #[error("control node {id} did not start: {source}")]
    Start {
        /// The node's Raft id.
        id: NodeId,
        /// Why.
        source: ControlStartError,
    },
    /// A node did not reach the awaited state in time (or shut down while waited on).
    #[error("control node {id}: {source}")]
    Wait {
        /// The node's Raft id.
        id: NodeId,
        /// The timeout (it names what was awaited) or the shutdown.
        source: WaitError,
    },
}

/// `n` control nodes on loopback, one Raft cluster, started in this process.
///
/// Fields drop in order: the nodes before their data directories.
pub struct LocalCluster {
    /// By index; `None` once taken or stopped.
    nodes: Vec<Option<ControlNode>>,
    /// The addresses of every node ever started, by index.
    peers: Vec<(NodeId, PeerNode)>,
    /// The member list the first nodes started with.
    members: Vec<(NodeId, PeerNode)>,
    admin_token: AdminToken,
    wait: Duration,
    dirs: Vec<TempDir>,
}

/// A node's listeners, bound before it starts.
struct Bound {
    id: NodeId,
    raft: TcpListener,
    api: TcpListener,
}

impl Bound {
    async fn new(id: NodeId) -> Result<(Self, PeerNode), LocalClusterError> {
        let raft = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LocalClusterError::Bind)?;
        let api = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LocalClusterError::Bind)?;
        let peer = PeerNode {
            raft_addr: raft
                .local_addr()
                .map_err(LocalClusterError::Bind)?
                .to_string(),
            api_addr: api
                .local_addr()
                .map_err(LocalClusterError::Bind)?
                .to_string(),
        };
        Ok((Self { id, raft, api }, peer))
    }
}

impl LocalCluster {
    /// Starts `n` control nodes (ids `1..=n`, index `id - 1`) that present `admin_token`, and
    /// waits until each knows a leader and has applied its first entry ([`DEFAULT_WAIT`] per
    /// node).
    pub async fn start(n: u64, admin_token: &str) -> Result<Self, LocalClusterError> {
        Self::start_with_wait(n, admin_token, DEFAULT_WAIT).await
    }

    /// [`LocalCluster::start`] with another wait per node, also used by
    /// [`LocalCluster::wait_for_new_leader`].
    pub async fn start_with_wait(
        n: u64,
        admin_token: &str,
        wait: Duration,
    ) -> Result<Self, LocalClusterError> {
        let admin_token = AdminToken::new(admin_token).map_err(LocalClusterError::AdminToken)?;
        let mut bound = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let (listeners, peer) = Bound::new(id).await?;
            bound.push(listeners);
            members.push((id, peer));
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            peers: members.clone(),
            members,
            admin_token,
            wait,
            dirs: Vec::new(),
        };
        for listeners in bound {
            let members = cluster.members.clone();
            cluster.start_node(listeners, members).await?;
        }
        for node in cluster.nodes() {
            node.node()
                .raft()
                .wait(Some(wait))
                .metrics(
                    |m| m.current_leader.is_some() && m.last_applied.is_some(),
                    "a leader is known and its first entry applied",
                )
                .await
                .map_err(|source| LocalClusterError::Wait {
                    id: node.node().id(),
                    source,
                })?;
        }
        Ok(cluster)
    }

    /// Starts one more node (the next id) with an empty member list, so it never initializes a
    /// cluster of its own: it waits to be added through `AddNode` (its addresses are
    /// [`LocalCluster::peer`]). Returns its index. Nothing is awaited.
    pub async fn join(&mut self) -> Result<usize, LocalClusterError> {
        let id = self.peers.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        let (listeners, peer) = Bound::new(id).await?;
        self.peers.push((id, peer));
        self.start_node(listeners, Vec::new()).await
    }

    async fn start_node(
        &mut self,
        listeners: Bound,
        members: Vec<(NodeId, PeerNode)>,
    ) -> Result<usize, LocalClusterError> {
        let Bound { id, raft, api } = listeners;
        let dir = tempfile::tempdir().map_err(LocalClusterError::DataDir)?;
        let node = ControlNode::start(ControlOptions {
            id,
            data_dir: dir.path().to_path_buf(),
            raft_listener: raft,
            api_listener: api,
            members,
            admin_token: self.admin_token.clone(),
        })
        .await
        .map_err(|source| LocalClusterError::Start { id, source })?;
        self.nodes.push(Some(node));
        self.dirs.push(dir);
        Ok(self.nodes.len() - 1)
    }

    /// How many nodes were started, running or not (indices are `0..len()`).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was started (a cluster of 0 nodes).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The running node at `index`, if it is still running.
    pub fn get(&self, index: usize) -> Option<&ControlNode> {
        self.nodes.get(index).and_then(Option::as_ref)
    }

    /// The running node at `index`.
    ///
    /// # Panics
    ///
    /// If there is no such index or the node was taken or stopped: a harness caller's mistake.
    pub fn node(&self, index: usize) -> &ControlNode {
        match self.get(index) {
            Some(node) => node,
            None => panic!("no running control node at index {index}"),
        }
    }

    /// The running nodes, in index order.
    pub fn nodes(&self) -> impl Iterator<Item = &ControlNode> {
        self.nodes.iter().flatten()
    }

    /// The Raft and API addresses of the node at `index` (kept after it stops).
    ///
    /// # Panics
    ///
    /// If no node was ever started at `index`.
    pub fn peer(&self, index: usize) -> &PeerNode {
        &self.peers[index].1
    }

    /// The member list the cluster started with (not nodes started later by
    /// [`LocalCluster::join`]).
    pub fn members(&self) -> &[(NodeId, PeerNode)] {
        &self.members
    }

    /// The API addresses (`host:port`) of the running nodes, in index order: what a gateway's
    /// quota agent or config client is given.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes()
            .map(|node| node.api_addr().to_string())
            .collect()
    }

    /// The index of the leader, as the first running node knows it; `None` if it knows none, or
    /// the leader is not a running node of this cluster.
    pub fn leader_index(&self) -> Option<usize> {
        let (leader, _) = self.nodes().next()?.node().leader()?;
        self.nodes
            .iter()
            .position(|node| node.as_ref().is_some_and(|n| n.node().id() == leader))
    }

    /// The leader, as the first running node knows it (see [`LocalCluster::leader_index`]).
    pub fn leader(&self) -> Option<&ControlNode> {
        self.leader_index().and_then(|index| self.get(index))
    }

    /// Waits until every running node knows a leader of a term after `after_term` (after the
    /// old leader was stopped, say).
    pub async fn wait_for_new_leader(&self, after_term: u64) -> Result<(), LocalClusterError> {
        for node in self.nodes() {
            node.node()
                .raft()
                .wait(Some(self.wait))
                .metrics(
                    |m| m.current_term > after_term && m.current_leader.is_some(),
                    "a new leader is elected",
                )
                .await
                .map_err(|source| LocalClusterError::Wait {
                    id: node.node().id(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Takes the node at `index` out of the cluster, running, for the caller to shut down (in a
    /// task of its own, say); its index stays empty. `None` if it was already taken or stopped.
    pub fn take(&mut self, index: usize) -> Option<ControlNode> {
        self.nodes.get_mut(index).and_then(Option::take)
    }

    /// Shuts the node at `index` down ([`ControlNode::shutdown`]); its index stays empty and its
    /// data directory stays until the cluster is dropped. Nothing if it was not running.
    pub async fn stop(&mut self, index: usize) {
        if let Some(node) = self.take(index) {
            node.shutdown().await;
        }
    }

    /// Shuts every running node down, in index order, then removes the data directories.
    pub async fn shutdown(mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_leader_leaves_its_index_empty_and_the_rest_elect_a_new_one() {
        let mut cluster = LocalCluster::start(3, "admin-secret").await.unwrap();
        assert_eq!(cluster.len(), 3);
        assert_eq!(cluster.endpoints().len(), 3);
        for (index, (id, peer)) in cluster.members().iter().enumerate() {
            assert_eq!(*id, index as u64 + 1);
            assert_eq!(cluster.node(index).node().id(), *id);
            assert_eq!(peer.api_addr, cluster.node(index).api_addr().to_string());
            assert!(peer.raft_addr.starts_with("127.0.0.1:"), "{peer:?}");
        }

        let leader = cluster.leader_index().unwrap();
        let term = cluster.node(leader).node().metrics().borrow().current_term;
        cluster.stop(leader).await;
        assert!(cluster.get(leader).is_none());
        assert!(cluster.take(leader).is_none());
        assert_eq!(cluster.len(), 3);
        assert_eq!(cluster.endpoints().len(), 2);

        cluster.wait_for_new_leader(term).await.unwrap();
        let new_leader = cluster.leader_index().unwrap();
        assert_ne!(new_leader, leader);
        assert!(
            cluster
                .leader()
                .unwrap()
                .node()
                .metrics()
                .borrow()
                .current_term
                > term
        );
        cluster.shutdown().await;
    }

    #[tokio::test]
    async fn a_joining_node_gets_the_next_id_and_no_cluster_of_its_own() {
        let mut cluster = LocalCluster::start(1, "admin-secret").await.unwrap();
        let joined = cluster.join().await.unwrap();
        assert_eq!(joined, 1);
        let node = cluster.node(joined).node();
        assert_eq!(node.id(), 2);
        assert!(!node.raft().is_initialized().await.unwrap());
        assert_eq!(cluster.members().len(), 1);
        assert_eq!(
            cluster.peer(joined).api_addr,
            cluster.node(joined).api_addr().to_string()
        );
        cluster.shutdown().await;
    }

    #[tokio::test]
    async fn an_empty_admin_token_is_refused_before_anything_binds() {
        let refused = LocalCluster::start(1, "").await.err().unwrap();
        assert!(
            matches!(refused, LocalClusterError::AdminToken(_)),
            "{refused}"
        );
    }
}
