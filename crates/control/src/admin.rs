//! `AdminService`: the operator's API over a [`RaftNode`].
//!
//! Every call first checks the admin token. Writes are proposed on this node and refused with
//! `UNAVAILABLE` (plus the leader's API address in `tollgate-leader`) when it is not the leader;
//! reads come from this node's applied state and carry the revision they were read at.
//!
//! # Checks before proposing, and in the log
//!
//! `PutPolicy`'s `expected_version` and `CreateGrant`'s server and policy are checked twice: here
//! against the applied state, for a fast answer, and again by the state machine when the entry is
//! applied, which decides (two racing puts expecting the same version cannot both win).
//!
//! # Membership
//!
//! ```text
//!   AddNode{promote:false}  ── add_learner ──▶ learner (receives the log, does not vote)
//!   AddNode{promote:true}   ── add_learner if needed, wait until it has caught up (bounded),
//!                              then change_membership(+voter): joint, then uniform config
//!   RemoveNode(voter)       ── change_membership(-voter, not retained): gone from the nodes too
//!   RemoveNode(learner)     ── change_membership(remove node)
//! ```
//!
//! Membership calls are refused on a follower before anything else, like writes; openraft's own
//! blocking `add_learner` waits without a deadline for a learner to catch up, so the wait here is
//! separate and bounded by [`CATCH_UP_TIMEOUT`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, Membership, ServerState};
use sha2::{Digest as _, Sha256};
use tollgate_proto::ADMIN_TOKEN_METADATA_KEY;
use tollgate_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use tollgate_proto::v1::{
    AddNodeRequest, AddNodeResponse, ClusterMember, ClusterStatusRequest, ClusterStatusResponse,
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListPolicyVersionsRequest, ListPolicyVersionsResponse, ListUpstreamsRequest,
    ListUpstreamsResponse, NodeRole, PolicyVersion, PutPolicyRequest, PutPolicyResponse,
    PutUpstreamRequest, PutUpstreamResponse, RemoveNodeRequest, RemoveNodeResponse,
    RemoveUpstreamRequest, RemoveUpstreamResponse, RevokeGrantRequest, RevokeGrantResponse,
    RollbackPolicyRequest, RollbackPolicyResponse, ValidationError,
};
use tollgate_raft::{
    NodeError, NodeId, PeerNode, RaftNode, Rejection, Request as RaftRequest,
    Response as RaftResponse, TokenHash, TypeConfig,
};
use tonic::{Request, Response, Status};

use crate::auth::AdminToken;
use crate::convert;
use crate::error::{membership_status, node_status, rejection_status};
use crate::gateways::{GatewayRegistry, now_unix_ms};

/// The prefix of every grant token, so that leaked tokens are easy to recognize.
pub const GRANT_TOKEN_PREFIX: &str = "tg_";

/// How long `AddNode { promote: true }` waits for the new node to catch up with the log before
/// it gives up (the node stays a learner).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `tollgate.v1.AdminService` of one control node.
#[derive(Clone)]
pub struct AdminServiceImpl {
    node: Arc<RaftNode>,
    token: AdminToken,
    gateways: GatewayRegistry,
}

/// A fresh grant token: `tg_` + base64url (no padding) of 32 random bytes.
pub fn new_grant_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{GRANT_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn valid_policy_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The revision of an applied write, or the status of a refused one.
fn applied(response: RaftResponse) -> Result<(u64, Option<u64>), Status> {
    match response {
        RaftResponse::Applied {
            revision,
            policy_version,
        } => Ok((revision, policy_version)),
        RaftResponse::Rejected { reason, .. } => Err(rejection_status(&reason)),
        RaftResponse::Internal { .. } => Err(Status::internal(
            "the state machine answered a write as a raft-internal entry",
        )),
        RaftResponse::Quota { .. } => Err(Status::internal(
            "the state machine answered a configuration write as a quota entry",
        )),
    }
}

/// The wall clock as the leader stamps it into requests (0 if the clock is before 1970).
fn now_ms() -> u64 {
    u64::try_from(now_unix_ms()).unwrap_or(0)
}

/// How long `ClusterStatus` waits for another member's list of gateways.
const PEER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The gateways another member serves (empty if it does not answer in time).
async fn peer_gateways(
    api_addr: String,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Vec<tollgate_proto::v1::GatewayStatus> {
    let ask = async {
        let endpoint = tollgate_proto::control_endpoint(&api_addr)
            .ok()?
            .connect_timeout(PEER_STATUS_TIMEOUT);
        let channel = endpoint.connect().await.ok()?;
        let mut request = Request::new(ClusterStatusRequest { local_only: true });
        request
            .metadata_mut()
            .insert(ADMIN_TOKEN_METADATA_KEY, authorization);
        let response = tollgate_proto::v1::admin_service_client::AdminServiceClient::new(channel)
            .cluster_status(request)
            .await
            .ok()?;
        Some(response.into_inner().gateways)
    };
    tokio::time::timeout(PEER_STATUS_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl AdminServiceImpl {
    /// Serve the admin API of `node`, for callers that present `token`; `gateways` is the
    /// registry the node's [`crate::ConfigServiceImpl`] records watchers in.
    pub fn new(node: Arc<RaftNode>, token: AdminToken, gateways: GatewayRegistry) -> Self {
        Self {
            node,
            token,
            gateways,
        }
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_server(self) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self)
    }

    /// A linearizable read point: returns once this node is the leader (confirmed by a quorum)
    /// and has applied everything committed before the call.
    async fn read_barrier(&self) -> Result<(), Status> {
        match self.raft().ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(node_status(NodeError::ForwardToLeader {
                    leader_id: forward.leader_id,
                    leader: forward.leader_node,
                }))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(Status::unavailable(format!("no quorum: {e}")))
            }
            Err(RaftError::Fatal(fatal)) => Err(node_status(NodeError::Fatal(fatal))),
        }
    }

    async fn write(&self, request: RaftRequest) -> Result<RaftResponse, Status> {
        self.node.client_write(request).await.map_err(node_status)
    }

    /// The members of the membership this node has applied.
    fn members(&self) -> Vec<ClusterMember> {
        let metrics = self.node.metrics().borrow().clone();
        self.members_of(metrics.membership_config.membership())
    }

    /// The members of `membership`, with the replication progress this node knows (a leader's).
    fn members_of(&self, membership: &Membership<NodeId, PeerNode>) -> Vec<ClusterMember> {
        let metrics = self.node.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map_or(0, |log_id| log_id.index);
                ClusterMember {
                    node_id: *id,
                    raft_addr: node.raft_addr.clone(),
                    api_addr: node.api_addr.clone(),
                    role: if voters.contains(id) {
                        NodeRole::Voter
                    } else {
                        NodeRole::Learner
                    } as i32,
                    matched_index,
                }
            })
            .collect()
    }

    fn raft(&self) -> &openraft::Raft<TypeConfig> {
        self.node.raft()
    }

    /// Refuse a membership change on a node that is not the leader, the way writes are refused.
    fn require_leader(&self) -> Result<(), Status> {
        let metrics = self.node.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            return Ok(());
        }
        let leader = self.node.leader();
        Err(node_status(NodeError::ForwardToLeader {
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader: leader.map(|(_, node)| node),
        }))
    }

    /// Wait until the leader has replicated its log (as of now) to `node_id`, up to
    /// [`CATCH_UP_TIMEOUT`].
    async fn wait_caught_up(&self, node_id: NodeId) -> Result<(), Status> {
        let target = self.node.metrics().borrow().last_log_index;
        self.raft()
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&node_id).cloned().flatten())
                        .map(|log_id| log_id.index);
                    matched >= target
                },
                "the new node has caught up with the log",
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                Status::unavailable(format!(
                    "node {node_id} has not caught up with the log ({e}); it stays a learner"
                ))
            })
    }
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn put_policy(
        &self,
        request: Request<PutPolicyRequest>,
    ) -> Result<Response<PutPolicyResponse>, Status> {
        self.token.authorize(&request)?;
        let PutPolicyRequest {
            policy_id,
            document_json,
            expected_version,
        } = request.into_inner();
        if !valid_policy_id(&policy_id) {
            return Err(Status::invalid_argument(
                "a policy id is 1 to 64 characters of [A-Za-z0-9._-]",
            ));
        }
        let (serving, revision) = self
            .node
            .reader()
            .read(|state| (state.current_policy(&policy_id).cloned(), state.revision()));
        let serving_version = serving.as_ref().map_or(0, |v| v.version);
        let policy = match tollgate_policy::Policy::from_json(document_json.as_bytes()) {
            Ok(policy) => policy,
            Err(errors) => {
                return Ok(Response::new(PutPolicyResponse {
                    errors: errors
                        .iter()
                        .map(|e| ValidationError {
                            pointer: e.pointer.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                    version: serving_version,
                    digest: String::new(),
                    unchanged: false,
                    revision,
                }));
            }
        };
        // The early answers below ("unchanged", a version mismatch) must not come from a node
        // that trails the leader: only the leader answers them, after a read barrier that makes
        // its applied state current (a follower or a deposed leader gets `UNAVAILABLE` and the
        // client follows `tollgate-leader`).
        self.read_barrier().await?;
        let (serving, revision) = self
            .node
            .reader()
            .read(|state| (state.current_policy(&policy_id).cloned(), state.revision()));
        let serving_version = serving.as_ref().map_or(0, |v| v.version);
        if expected_version != 0 && expected_version != serving_version {
            return Err(Status::failed_precondition(format!(
                "policy {policy_id} is at version {serving_version}, not {expected_version}"
            )));
        }
        let digest = policy.digest().to_owned();
        if let Some(serving) = &serving
            && convert::policy_digest(&serving.document) == digest
        {
            return Ok(Response::new(PutPolicyResponse {
                errors: Vec::new(),
                version: serving.version,
                digest,
                unchanged: true,
                revision,
            }));
        }
        let response = self
            .write(RaftRequest::PutPolicy {
                id: policy_id,
                document: document_json,
                expected_version: (expected_version != 0).then_some(expected_version),
                created_at_unix_ms: now_ms(),
            })
            .await?;
        let (revision, version) = applied(response)?;
        Ok(Response::new(PutPolicyResponse {
            errors: Vec::new(),
            version: version.unwrap_or_default(),
            digest,
            unchanged: false,
            revision,
        }))
    }

    async fn list_policy_versions(
        &self,
        request: Request<ListPolicyVersionsRequest>,
    ) -> Result<Response<ListPolicyVersionsResponse>, Status> {
        self.token.authorize(&request)?;
        let ListPolicyVersionsRequest {
            policy_id,
            include_documents,
        } = request.into_inner();
        let (versions, revision) = self.node.reader().read(|state| {
            (
                state.policy_versions(&policy_id).map(<[_]>::to_vec),
                state.revision(),
            )
        });
        let versions =
            versions.ok_or_else(|| Status::not_found(format!("no policy {policy_id}")))?;
        let serving_version = versions.last().map_or(0, |v| v.version);
        Ok(Response::new(ListPolicyVersionsResponse {
            versions: versions
                .into_iter()
                .map(|v| PolicyVersion {
                    version: v.version,
                    digest: convert::policy_digest(&v.document),
                    created_at_unix_ms: i64::try_from(v.created_at_unix_ms).unwrap_or(i64::MAX),
                    rolled_back_from: v.rolled_back_from.unwrap_or(0),
                    document_json: if include_documents {
                        v.document
                    } else {
                        String::new()
                    },
                })
                .collect(),
            serving_version,
            revision,
        }))
    }

    async fn rollback_policy(
        &self,
        request: Request<RollbackPolicyRequest>,
    ) -> Result<Response<RollbackPolicyResponse>, Status> {
        self.token.authorize(&request)?;
        let RollbackPolicyRequest {
            policy_id,
            to_version,
        } = request.into_inner();
        let response = self
            .write(RaftRequest::RollbackPolicy {
                id: policy_id.clone(),
                to_version,
                created_at_unix_ms: now_ms(),
            })
            .await?;
        let (revision, version) = applied(response)?;
        let digest = self.node.reader().read(|state| {
            state
                .current_policy(&policy_id)
                .map(|v| convert::policy_digest(&v.document))
                .unwrap_or_default()
        });
        Ok(Response::new(RollbackPolicyResponse {
            version: version.unwrap_or_default(),
            digest,
            revision,
        }))
    }

    async fn create_grant(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<CreateGrantResponse>, Status> {
        self.token.authorize(&request)?;
        let CreateGrantRequest {
            label,
            server,
            policy_id,
        } = request.into_inner();
        let (has_server, has_policy) = self.node.reader().read(|state| {
            (
                state.upstreams().contains_key(&server),
                state.current_policy(&policy_id).is_some(),
            )
        });
        if !has_server {
            return Err(Status::not_found(format!("no upstream {server}")));
        }
        if !has_policy {
            return Err(Status::not_found(format!("no policy {policy_id}")));
        }
        let token = new_grant_token();
        let token_sha256 = TokenHash(Sha256::digest(token.as_bytes()).into());
        let id_bytes: [u8; 8] = rand::random();
        let id = format!("g_{}", URL_SAFE_NO_PAD.encode(id_bytes));
        let response = self
            .write(RaftRequest::CreateGrant {
                id: id.clone(),
                label,
                token_sha256,
                server,
                policy_id,
                created_at_unix_ms: now_ms(),
            })
            .await?;
        let (revision, _) = applied(response)?;
        let grant = self
            .node
            .reader()
            .read(|state| state.grant(&id).map(convert::grant))
            .ok_or_else(|| Status::internal(format!("created grant {id} is not in the state")))?;
        Ok(Response::new(CreateGrantResponse {
            grant: Some(grant),
            token,
            revision,
        }))
    }

    async fn list_grants(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.token.authorize(&request)?;
        let ListGrantsRequest {
            include_revoked,
            server,
        } = request.into_inner();
        let (grants, revision) = self.node.reader().read(|state| {
            (
                state
                    .grants()
                    .filter(|g| include_revoked || !g.revoked)
                    .filter(|g| server.is_empty() || g.server == server)
                    .map(convert::grant)
                    .collect(),
                state.revision(),
            )
        });
        Ok(Response::new(ListGrantsResponse { grants, revision }))
    }

    async fn revoke_grant(
        &self,
        request: Request<RevokeGrantRequest>,
    ) -> Result<Response<RevokeGrantResponse>, Status> {
        self.token.authorize(&request)?;
        let RevokeGrantRequest { grant_id } = request.into_inner();
        let response = self
            .write(RaftRequest::RevokeGrant { id: grant_id })
            .await?;
        match response {
            RaftResponse::Rejected {
                revision,
                reason: Rejection::AlreadyRevoked { .. },
            } => Ok(Response::new(RevokeGrantResponse {
                already_revoked: true,
                revision,
            })),
            other => {
                let (revision, _) = applied(other)?;
                Ok(Response::new(RevokeGrantResponse {
                    already_revoked: false,
                    revision,
                }))
            }
        }
    }

    async fn put_upstream(
        &self,
        request: Request<PutUpstreamRequest>,
    ) -> Result<Response<PutUpstreamResponse>, Status> {
        self.token.authorize(&request)?;
        let upstream = request
            .into_inner()
            .upstream
            .ok_or_else(|| Status::invalid_argument("the request has no upstream"))?;
        if let Some(problem) = convert::upstream_problem(&upstream) {
            return Err(Status::invalid_argument(problem));
        }
        let Some(transport) = &upstream.transport else {
            return Err(Status::invalid_argument(
                "the upstream needs a transport (http or stdio)",
            ));
        };
        let replaced = self
            .node
            .reader()
            .read(|state| state.upstreams().contains_key(&upstream.name));
        let response = self
            .write(RaftRequest::PutUpstream {
                name: upstream.name.clone(),
                spec: convert::upstream_spec(transport),
            })
            .await?;
        let (revision, _) = applied(response)?;
        Ok(Response::new(PutUpstreamResponse { replaced, revision }))
    }

    async fn remove_upstream(
        &self,
        request: Request<RemoveUpstreamRequest>,
    ) -> Result<Response<RemoveUpstreamResponse>, Status> {
        self.token.authorize(&request)?;
        let RemoveUpstreamRequest { name } = request.into_inner();
        let response = self.write(RaftRequest::RemoveUpstream { name }).await?;
        let (revision, _) = applied(response)?;
        Ok(Response::new(RemoveUpstreamResponse { revision }))
    }

    async fn list_upstreams(
        &self,
        request: Request<ListUpstreamsRequest>,
    ) -> Result<Response<ListUpstreamsResponse>, Status> {
        self.token.authorize(&request)?;
        let (upstreams, revision) = self.node.reader().read(|state| {
            (
                state
                    .upstreams()
                    .iter()
                    .map(|(name, spec)| convert::upstream_from_spec(name, spec))
                    .collect(),
                state.revision(),
            )
        });
        Ok(Response::new(ListUpstreamsResponse {
            upstreams,
            revision,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.token.authorize(&request)?;
        let authorization = request.metadata().get(ADMIN_TOKEN_METADATA_KEY).cloned();
        let local_only = request.into_inner().local_only;
        let metrics = self.node.metrics().borrow().clone();
        let leader = self.node.leader();
        let members = self.members();
        let mut gateways = self.gateways.list();
        if !local_only && let Some(authorization) = authorization {
            let others = members
                .iter()
                .filter(|m| m.node_id != self.node.id())
                .map(|m| peer_gateways(m.api_addr.clone(), authorization.clone()));
            for list in futures_util::future::join_all(others).await {
                gateways.extend(list);
            }
            gateways.sort_by(|a, b| {
                (&a.gateway_id, a.served_by_node_id).cmp(&(&b.gateway_id, b.served_by_node_id))
            });
        }
        Ok(Response::new(ClusterStatusResponse {
            node_id: self.node.id(),
            members,
            leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
            leader_api_addr: leader.map(|(_, node)| node.api_addr).unwrap_or_default(),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            revision: self.node.reader().read(|state| state.revision()),
            gateways,
        }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        self.token.authorize(&request)?;
        let AddNodeRequest {
            node_id,
            raft_addr,
            api_addr,
            promote,
        } = request.into_inner();
        if node_id == 0 || raft_addr.is_empty() || api_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a node needs a non-zero id, a raft address and an api address",
            ));
        }
        self.require_leader()?;
        let members = self.members();
        let membership = match members.iter().find(|m| m.node_id == node_id) {
            None => {
                let node = PeerNode {
                    raft_addr,
                    api_addr,
                };
                self.raft()
                    .add_learner(node_id, node, false)
                    .await
                    .map_err(membership_status)?
                    .membership
            }
            // Already a voter, or a learner that stays one: nothing to change.
            Some(member) if member.role == NodeRole::Voter as i32 || !promote => {
                return Ok(Response::new(AddNodeResponse { members }));
            }
            Some(_) => None,
        };
        self.finish_add(node_id, promote, membership).await
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.token.authorize(&request)?;
        let RemoveNodeRequest { node_id } = request.into_inner();
        self.require_leader()?;
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == node_id) else {
            return Err(Status::not_found(format!("no node {node_id}")));
        };
        let ids = BTreeSet::from([node_id]);
        let change = if member.role == NodeRole::Voter as i32 {
            let voters = members
                .iter()
                .filter(|m| m.role == NodeRole::Voter as i32)
                .count();
            if voters <= 1 {
                return Err(Status::failed_precondition(
                    "cannot remove the last voter of the cluster",
                ));
            }
            // Not retained as a learner: the node leaves the node list with its vote.
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        let changed = self
            .raft()
            .change_membership(change, false)
            .await
            .map_err(membership_status)?;
        let members = match &changed.membership {
            Some(membership) => self.members_of(membership),
            None => self.members(),
        };
        Ok(Response::new(RemoveNodeResponse { members }))
    }
}

impl AdminServiceImpl {
    /// After a node is a learner: promote it if asked (once it has caught up), and answer with
    /// the resulting membership.
    async fn finish_add(
        &self,
        node_id: NodeId,
        promote: bool,
        membership: Option<Membership<NodeId, PeerNode>>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        let membership = if promote {
            self.wait_caught_up(node_id).await?;
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(membership_status)?
                .membership
        } else {
            membership
        };
        let members = match &membership {
            Some(membership) => self.members_of(membership),
            None => self.members(),
        };
        Ok(Response::new(AddNodeResponse { members }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn grant_tokens_are_prefixed_base64url_of_32_bytes_and_differ() {
        let a = new_grant_token();
        let b = new_grant_token();
        assert_ne!(a, b);
        let body = a.strip_prefix(GRANT_TOKEN_PREFIX).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
    }

    #[test]
    fn policy_ids_are_limited_to_a_safe_alphabet_and_length() {
        assert!(valid_policy_id("default.v2_a-b"));
        assert!(!valid_policy_id(""));
        assert!(!valid_policy_id("a/b"));
        assert!(!valid_policy_id(&"a".repeat(65)));
    }
}
