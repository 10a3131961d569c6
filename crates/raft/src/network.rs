//! The Raft peer transport over tonic: the client side ([`Network`], openraft's
//! `RaftNetworkFactory`) and the server side ([`RaftServer`], the `tollgate.raft.v1.RaftService`).
//!
//! # Wire format
//!
//! `proto/tollgate/raft/v1/raft.proto` has one request message and one reply message for all three
//! RPCs. Each carries an openraft request or response (or the `RaftError` the receiving node
//! returned) as serde JSON bytes: openraft's types are serde types already, and only control nodes
//! of the same build speak this protocol, so a field-by-field protobuf model would duplicate
//! openraft's for no gain. JSON is not compact (a snapshot chunk's bytes become a number array), so
//! [`MAX_MESSAGE_SIZE`] leaves room: a 64 MiB message holds a default 3 MiB snapshot chunk many
//! times over.
//!
//! # Channels
//!
//! [`Network`] keeps one lazily connected tonic [`Channel`] per peer, keyed by node id and Raft
//! address, shared by every client openraft creates for that peer (openraft makes a new client per
//! replication stream and per election). A `Channel` reconnects by itself after the peer restarts,
//! so a cached channel stays usable; a peer whose address changes in the membership gets a new one.
//!
//! # Fault injection
//!
//! A network made with [`Network::with_faults`] asks its [`Faults`] handle about every outgoing
//! RPC (from its own node to the target) and blocks, drops, delays it or loses its reply
//! accordingly; see [`crate::faults`]. Without a handle nothing is consulted.
//!
//! # Errors
//!
//! A gRPC `UNAVAILABLE` (connection refused, reset, no route) becomes openraft's [`Unreachable`],
//! which makes openraft back off before retrying that peer; a deadline becomes [`Timeout`]; any
//! other transport or encoding failure becomes [`NetworkError`]. An error the remote Raft returned
//! travels back inside the reply and becomes a [`RemoteError`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::faults::{Faults, RpcPlan};
use crate::pb;
use crate::pb::raft_reply::Result as ReplyResult;
use crate::pb::raft_service_client::RaftServiceClient;
use crate::pb::raft_service_server::{RaftService, RaftServiceServer};
use crate::types::{NodeId, PeerNode, TypeConfig};

/// The largest Raft message either side encodes or decodes (64 MiB).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How long a peer connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long openraft waits before retrying a peer it found unreachable.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Why one peer RPC failed on this side of the wire (wrapped in openraft's error types).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer's Raft address is not a valid `host:port`.
    #[error("invalid raft address {addr}: {source}")]
    InvalidAddress {
        /// The address from the membership.
        addr: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// The gRPC call failed.
    #[error("raft rpc to node {target} failed: {status}")]
    Transport {
        /// The peer.
        target: NodeId,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// A request or reply could not be (de)serialized.
    #[error("raft message encoding failed: {0}")]
    Codec(#[from] serde_json::Error),
    /// The reply carried neither a response nor an error.
    #[error("raft reply from node {target} is empty")]
    EmptyReply {
        /// The peer.
        target: NodeId,
    },
    /// A fault injected by a test's [`Faults`] handle.
    #[error("injected fault on the link to node {target}: {fault}")]
    Injected {
        /// The peer.
        target: NodeId,
        /// What was injected: `blocked`, `request dropped` or `reply lost`.
        fault: &'static str,
    },
}

/// openraft's network factory: one cached tonic channel per peer, shared by every client.
#[derive(Clone)]
pub struct Network {
    id: NodeId,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    faults: Option<Faults>,
}

impl Network {
    /// A network for the node `id` (used in timeout reports), with no connection yet.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            channels: Arc::new(Mutex::new(HashMap::new())),
            faults: None,
        }
    }

    /// [`Network::new`], with every outgoing RPC subject to the faults set on `faults`.
    pub fn with_faults(id: NodeId, faults: Faults) -> Self {
        Self {
            faults: Some(faults),
            ..Self::new(id)
        }
    }

    /// The fault handle this network consults, if it was made with one.
    pub fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    /// The channel to `target` at `addr`: the cached one, or a new lazily connected one.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some((cached_addr, channel)) = channels.get(&target)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| PeerError::InvalidAddress {
                addr: addr.to_owned(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// How many peer channels are cached (one per peer ever contacted).
    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        let client = self.channel(target, &node.raft_addr).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE)
        });
        PeerClient {
            source: self.id,
            target,
            client: client.map_err(Arc::new),
            faults: self.faults.clone(),
        }
    }
}

/// The RPC client for one peer, over the peer's shared channel.
pub struct PeerClient {
    source: NodeId,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, Arc<PeerError>>,
    faults: Option<Faults>,
}

impl PeerClient {
    /// Send one RPC of `kind` and decode the reply, within the option's hard deadline.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let plan = self
            .faults
            .as_ref()
            .map_or_else(RpcPlan::default, |faults| {
                faults.plan(self.source, self.target)
            });
        let injected = |fault| PeerError::Injected {
            target: self.target,
            fault,
        };
        if plan.blocked {
            return Err(RPCError::Unreachable(Unreachable::new(&injected(
                "blocked",
            ))));
        }
        if plan.dropped {
            return Err(network_error(injected("request dropped")));
        }
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(error) => return Err(RPCError::Unreachable(Unreachable::new(error.as_ref()))),
        };
        let data = serde_json::to_vec(request).map_err(|e| network_error(PeerError::from(e)))?;
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(pb::RaftRequest { data });
        request.set_timeout(ttl);
        let call = async {
            if !plan.request_delay.is_zero() {
                tokio::time::sleep(plan.request_delay).await;
            }
            let reply = match kind {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
                RPCTypes::Vote => client.vote(request).await,
            };
            if !plan.reply_delay.is_zero() {
                tokio::time::sleep(plan.reply_delay).await;
            }
            reply
        };
        let timeout = || {
            RPCError::Timeout(Timeout {
                action: kind,
                id: self.source,
                target: self.target,
                timeout: ttl,
            })
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => return Err(timeout()),
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable => {
                        RPCError::Unreachable(Unreachable::new(&PeerError::Transport {
                            target: self.target,
                            status,
                        }))
                    }
                    tonic::Code::DeadlineExceeded => timeout(),
                    _ => network_error(PeerError::Transport {
                        target: self.target,
                        status,
                    }),
                });
            }
            Ok(Ok(_)) if plan.lose_reply => return Err(network_error(injected("reply lost"))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match reply.result {
            Some(ReplyResult::Ok(bytes)) => {
                serde_json::from_slice(&bytes).map_err(|e| network_error(PeerError::from(e)))
            }
            Some(ReplyResult::Error(bytes)) => {
                let error: E = serde_json::from_slice(&bytes)
                    .map_err(|e| network_error(PeerError::from(e)))?;
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            None => Err(network_error(PeerError::EmptyReply {
                target: self.target,
            })),
        }
    }
}

fn network_error<E: std::error::Error>(error: PeerError) -> RPCError<NodeId, PeerNode, E> {
    RPCError::Network(NetworkError::new(&error))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

/// The `RaftService` server: decodes each request, hands it to the local Raft, and encodes its
/// answer (or the `RaftError` it returned) into the reply.
#[derive(Clone)]
pub struct RaftServer {
    raft: Raft<TypeConfig>,
}

impl RaftServer {
    /// A server for the local Raft handle.
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        Self { raft }
    }

    /// The tonic service, with [`MAX_MESSAGE_SIZE`] as the decoding and encoding limit.
    pub fn into_service(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

fn decode<T: DeserializeOwned>(
    request: tonic::Request<pb::RaftRequest>,
) -> Result<T, tonic::Status> {
    serde_json::from_slice(&request.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft request: {e}")))
}

fn reply<T: Serialize, E: Serialize>(
    result: Result<T, E>,
) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
    let encoded = match &result {
        Ok(value) => serde_json::to_vec(value).map(ReplyResult::Ok),
        Err(error) => serde_json::to_vec(error).map(ReplyResult::Error),
    }
    .map_err(|e| tonic::Status::internal(format!("unencodable raft reply: {e}")))?;
    Ok(tonic::Response::new(pb::RaftReply {
        result: Some(encoded),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        reply(self.raft.install_snapshot(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        reply(self.raft.vote(rpc).await)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use openraft::Vote;

    use super::*;

    fn peer(raft_addr: &str) -> PeerNode {
        PeerNode {
            raft_addr: raft_addr.to_owned(),
            api_addr: String::new(),
        }
    }

    fn vote_request() -> VoteRequest<NodeId> {
        VoteRequest {
            vote: Vote::new(1, 1),
            last_log_id: None,
        }
    }

    #[tokio::test]
    async fn clients_for_one_peer_share_a_channel_until_its_address_changes() {
        let mut network = Network::new(1);
        network.new_client(2, &peer("127.0.0.1:7001")).await;
        network.new_client(2, &peer("127.0.0.1:7001")).await;
        assert_eq!(network.channel_count(), 1);
        network.new_client(3, &peer("127.0.0.1:7002")).await;
        assert_eq!(network.channel_count(), 2);
        network.new_client(2, &peer("127.0.0.1:7003")).await;
        assert_eq!(network.channel_count(), 2);
        let cached = network
            .channels
            .lock()
            .get(&2)
            .map(|(addr, _)| addr.clone());
        assert_eq!(cached.as_deref(), Some("127.0.0.1:7003"));
    }

    #[tokio::test]
    async fn a_peer_with_an_invalid_address_is_unreachable() {
        let mut network = Network::new(1);
        let mut client = network.new_client(2, &peer("not an address")).await;
        let option = RPCOption::new(Duration::from_secs(1));
        let error = client.vote(vote_request(), option).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_blocked_link_is_unreachable_and_a_dropped_request_is_a_network_error() {
        let faults = Faults::new();
        let mut network = Network::with_faults(1, faults.clone());
        let mut client = network.new_client(2, &peer("127.0.0.1:9")).await;
        let option = RPCOption::new(Duration::from_secs(1));

        faults.block(1, 2);
        let blocked = client
            .vote(vote_request(), option.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&blocked, RPCError::Unreachable(e) if e.to_string().contains("blocked")),
            "{blocked:?}"
        );

        faults.heal();
        faults.drop_rate(1, 2, 1.0);
        let dropped = client.vote(vote_request(), option).await.unwrap_err();
        assert!(
            matches!(&dropped, RPCError::Network(e) if e.to_string().contains("request dropped")),
            "{dropped:?}"
        );
        assert_eq!(faults.stats().blocked, 1);
        assert_eq!(faults.stats().dropped, 1);
    }

    #[tokio::test]
    async fn a_peer_that_refuses_connections_is_unreachable() {
        // Bind then drop a listener so that the port is (almost certainly) closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut network = Network::new(1);
        let mut client = network.new_client(2, &peer(&addr)).await;
        let option = RPCOption::new(Duration::from_secs(5));
        let error = client.vote(vote_request(), option).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    }
}
