//! The crate's error type, and the one place where failures become gRPC statuses.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use tollgate_proto::LEADER_METADATA_KEY;
use tollgate_raft::{NodeError, NodeId, PeerNode, Rejection};
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Errors of setting up the control services.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The configured admin token is empty, which would let anybody in.
    #[error("the admin token must not be empty")]
    EmptyAdminToken,
}

/// A write or membership change that failed inside the Raft node.
pub(crate) fn node_status(error: NodeError) -> Status {
    match error {
        NodeError::ForwardToLeader { leader, .. } => {
            let mut status = Status::unavailable("not the leader; retry on the leader");
            if let Some(leader) = leader
                && let Ok(value) = MetadataValue::try_from(leader.api_addr.as_str())
            {
                status.metadata_mut().insert(LEADER_METADATA_KEY, value);
            }
            status
        }
        NodeError::Fatal(e) => Status::unavailable(format!("raft stopped: {e}")),
        NodeError::Write(e) => Status::unavailable(format!("raft write failed: {e}")),
        other => Status::internal(other.to_string()),
    }
}

/// A request the state machine refused, with its message.
pub(crate) fn rejection_status(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::UnknownPolicy { .. }
        | Rejection::UnknownPolicyVersion { .. }
        | Rejection::UnknownGrant { .. }
        | Rejection::UnknownUpstream { .. } => Status::not_found(message),
        Rejection::DuplicateGrant { .. } | Rejection::DuplicateToken { .. } => {
            Status::already_exists(message)
        }
        Rejection::AlreadyRevoked { .. } | Rejection::VersionMismatch { .. } => {
            Status::failed_precondition(message)
        }
    }
}

/// A membership change (add a learner, promote, remove) that Raft refused.
pub(crate) fn membership_status(
    error: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>,
) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            node_status(NodeError::ForwardToLeader {
                leader_id: forward.leader_id,
                leader: forward.leader_node,
            })
        }
        // Another change is still being committed: retry once it is done.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::InProgress(_),
        )) => Status::aborted(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        RaftError::Fatal(fatal) => node_status(NodeError::Fatal(fatal)),
    }
}
