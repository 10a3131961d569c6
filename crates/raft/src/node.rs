//! One control node: its storage, its openraft instance, and the Raft peer service on its own
//! listener.
//!
//! # Bootstrap
//!
//! Every node starts with the same member list (the way a StatefulSet starts its pods). The node
//! with the lowest id initializes the cluster with that list when its own log is empty; the others
//! wait for it to reach them. A node restarted from its data directory finds its log and does not
//! initialize again, so the member list only matters on first start; later membership changes go
//! through Raft (add a learner, promote, remove). A node that joins a running cluster starts with
//! an empty member list, so it never initializes: it waits until a leader adds it as a learner.
//!
//! # Options
//!
//! [`NodeOptions`] carries what tests change about a node: a [`Faults`] handle that every node of
//! an in-process cluster shares, so that a test can cut, delay or degrade links between them.
//!
//! # Writes
//!
//! [`RaftNode::client_write`] proposes on this node. A follower answers
//! [`NodeError::ForwardToLeader`] naming the leader it knows (id and [`PeerNode`] addresses), so
//! that the public API can answer `UNAVAILABLE` with the leader's API address and clients follow it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, Raft, RaftMetrics};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::faults::Faults;
use crate::network::{Network, RaftServer};
use crate::state_machine::StateReader;
use crate::types::{NodeId, PeerNode, Request, Response, TypeConfig};

/// Heartbeat period of the leader.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Lower bound of a follower's randomized election timeout.
///
/// openraft 0.9 makes a follower that heard a leader wait the leader lease (= the maximum
/// election timeout) *plus* a random election timeout before it stands, so a dead leader is
/// replaced after 400 + 200..400 ms without heartbeats, then one vote round: failover well under
/// a second, while a follower still tolerates six lost heartbeats. The heartbeat interval is
/// also openraft's AppendEntries timeout, so it is not lowered below 100 ms (a loaded machine's
/// fsync must fit in it).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 200;
/// Upper bound of a follower's randomized election timeout (and the leader lease).
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 400;

/// How long [`RaftNode::shutdown`] waits for the peer service to drain its connections.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of a control node's life cycle and writes.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Raft listener could not be bound.
    #[error("cannot bind raft listener on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bound listener has no local address.
    #[error("raft listener has no local address: {0}")]
    LocalAddr(std::io::Error),
    /// The log or the state machine could not be opened.
    #[error("cannot open raft storage: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
    /// The Raft configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    /// Raft stopped (shut down, or a storage failure made it stop).
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<NodeId>),
    /// The cluster could not be initialized from the member list.
    #[error("cannot initialize the cluster: {0}")]
    Initialize(#[from] InitializeError<NodeId, PeerNode>),
    /// This node is not the leader; retry on the leader (if one is known).
    #[error("not the leader; forward to {}", leader_text(.leader_id, .leader))]
    ForwardToLeader {
        /// The leader's id, if known.
        leader_id: Option<NodeId>,
        /// The leader's addresses, if known.
        leader: Option<PeerNode>,
    },
    /// The write failed inside Raft for another reason (for example a membership change racing it).
    #[error("raft write failed: {0}")]
    Write(String),
    /// The peer service stopped with an error.
    #[error("raft peer service failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn leader_text(id: &Option<NodeId>, node: &Option<PeerNode>) -> String {
    match (id, node) {
        (Some(id), Some(node)) => format!("node {id} ({node})"),
        (Some(id), None) => format!("node {id}"),
        _ => "an unknown leader".to_owned(),
    }
}

impl NodeError {
    /// Whether the caller should retry on another node (the leader) rather than give up.
    pub fn is_forward_to_leader(&self) -> bool {
        matches!(self, Self::ForwardToLeader { .. })
    }
}

/// The openraft configuration of a control node: 100 ms heartbeats, 200-400 ms elections.
pub fn raft_config() -> Result<Config, openraft::ConfigError> {
    Config {
        cluster_name: "tollgate".to_owned(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        ..Config::default()
    }
    .validate()
}

/// What can be changed about a node at start, beyond its id, storage, listener and members.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    faults: Option<Faults>,
}

impl NodeOptions {
    /// Subject every Raft RPC this node sends to the faults set on `faults` (for tests).
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }
}

/// A running control node: Raft, its storage and its peer service.
pub struct RaftNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    reader: StateReader,
    network: Network,
    raft_addr: SocketAddr,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RaftNode {
    /// Bind `raft_listen_addr` and start the node; see [`RaftNode::start_with_listener`].
    pub async fn start(
        id: NodeId,
        dir: impl AsRef<Path>,
        raft_listen_addr: SocketAddr,
        members: &[(NodeId, PeerNode)],
    ) -> Result<Self, NodeError> {
        let listener = TcpListener::bind(raft_listen_addr)
            .await
            .map_err(|source| NodeError::Bind {
                addr: raft_listen_addr,
                source,
            })?;
        Self::start_with_listener(id, dir, listener, members).await
    }

    /// Start node `id` with its storage under `dir`, serving the Raft peer protocol on `listener`.
    ///
    /// When `id` is the lowest id of `members` and the log is empty, the cluster is initialized
    /// with `members` as voters; with an empty `members` the node never initializes (it joins a
    /// running cluster when the leader adds it).
    pub async fn start_with_listener(
        id: NodeId,
        dir: impl AsRef<Path>,
        listener: TcpListener,
        members: &[(NodeId, PeerNode)],
    ) -> Result<Self, NodeError> {
        Self::start_with_options(id, dir, listener, members, NodeOptions::default()).await
    }

    /// [`RaftNode::start_with_listener`] with [`NodeOptions`] (a fault handle, for tests).
    pub async fn start_with_options(
        id: NodeId,
        dir: impl AsRef<Path>,
        listener: TcpListener,
        members: &[(NodeId, PeerNode)],
        options: NodeOptions,
    ) -> Result<Self, NodeError> {
        let raft_addr = listener.local_addr().map_err(NodeError::LocalAddr)?;
        let (log, state_machine) = crate::open_storage(dir)?;
        let reader = state_machine.reader();
        let network = match options.faults {
            Some(faults) => Network::with_faults(id, faults),
            None => Network::new(id),
        };
        let raft = Raft::new(
            id,
            Arc::new(raft_config()?),
            network.clone(),
            log,
            state_machine,
        )
        .await?;

        let (stop_server, stopped) = oneshot::channel::<()>();
        let service = RaftServer::new(raft.clone()).into_service();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), async {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                }),
        );
        info!(node = id, %raft_addr, "raft peer service listening");

        let lowest = members.iter().map(|(member, _)| *member).min();
        if lowest == Some(id) && !raft.is_initialized().await? {
            let voters: BTreeMap<NodeId, PeerNode> = members.iter().cloned().collect();
            info!(
                node = id,
                members = voters.len(),
                "initializing the cluster"
            );
            raft.initialize(voters).await.map_err(|e| match e {
                RaftError::APIError(e) => NodeError::Initialize(e),
                RaftError::Fatal(e) => NodeError::Fatal(e),
            })?;
        }

        Ok(Self {
            id,
            raft,
            reader,
            network,
            raft_addr,
            stop_server,
            server,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the Raft peer service is bound to.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// The openraft handle (for membership changes and waiting on metrics).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// A read handle on the applied configuration state.
    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    /// The peer network (one cached channel per peer).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Raft metrics: role, term, leader, applied index, membership.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, PeerNode>> {
        self.raft.metrics()
    }

    /// The leader this node currently knows, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()?;
        Some((leader, node))
    }

    /// Propose `request`; returns the state machine's response once the entry is committed and
    /// applied here. A follower answers [`NodeError::ForwardToLeader`].
    pub async fn client_write(&self, request: Request) -> Result<Response, NodeError> {
        self.client_write_indexed(request)
            .await
            .map(|(_, response)| response)
    }

    /// [`RaftNode::client_write`], also returning the log index of the entry, which other nodes
    /// can wait for (`raft().wait(..).applied_index_at_least(..)`).
    pub async fn client_write_indexed(
        &self,
        request: Request,
    ) -> Result<(u64, Response), NodeError> {
        match self.raft.client_write(request).await {
            Ok(written) => Ok((written.log_id.index, written.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(NodeError::ForwardToLeader {
                    leader_id: forward.leader_id,
                    leader: forward.leader_node,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(NodeError::Write(e.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(NodeError::Fatal(fatal)),
        }
    }

    /// Stop Raft, then the peer service (waiting up to a few seconds for it to drain).
    pub async fn shutdown(self) -> Result<(), NodeError> {
        if let Err(e) = self.raft.shutdown().await {
            warn!(node = self.id, error = %e, "raft core task failed while shutting down");
        }
        let _ = self.stop_server.send(());
        let mut server = self.server;
        match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, &mut server).await {
            Ok(Ok(result)) => result.map_err(NodeError::from),
            Ok(Err(join)) => {
                warn!(node = self.id, error = %join, "raft peer service task failed");
                Ok(())
            }
            Err(_elapsed) => {
                warn!(
                    node = self.id,
                    "raft peer service did not drain in time; aborting it"
                );
                server.abort();
                Ok(())
            }
        }
    }
}

/// Accepted connections with `TCP_NODELAY` (small RPCs must not wait for Nagle's algorithm and
/// the peer's delayed ACK, about 40 ms each) and TCP keepalive.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}
