//! The openraft type configuration and the replicated command model.
//!
//! Every [`Request`] is one log entry's application payload; the state machine answers each with a
//! [`Response`]. Both are serde types because they travel in log entries, snapshots and (later) the
//! peer gRPC protocol.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::ledger::{QuotaOp, QuotaOpResult};
use crate::state::Rejection;

/// Raft node id of a control node.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the Tollgate control plane.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Addresses of one control node, stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `host:port` of the Raft peer gRPC service.
    pub raft_addr: String,
    /// `host:port` of the public gRPC API (admin and config watch).
    pub api_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// A SHA-256 digest of a grant token; serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", hex::encode(self.0))
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Self(out))
    }
}

/// One replicated change request. The caller validates payloads (for example a policy document
/// with the policy crate) before proposing; the state machine only enforces what must be agreed on
/// (version numbers and expected versions, unique ids, existence of what a request refers to), so
/// that those checks are decided in log order rather than racily before proposing.
///
/// Time stamps come inside the request, stamped by the leader that proposed it, so that applying
/// never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Store a new version of a policy document (JSON text, already validated).
    PutPolicy {
        /// Policy id.
        id: String,
        /// The policy document as JSON text.
        document: String,
        /// Refuse the put ([`Rejection::VersionMismatch`]) unless the policy's serving version is
        /// this one when the entry is applied (0: the policy does not exist yet).
        #[serde(default)]
        expected_version: Option<u64>,
        /// Acceptance time (unix milliseconds), stamped by the proposer.
        #[serde(default)]
        created_at_unix_ms: u64,
    },
    /// Make an old version current again by storing it as a new version.
    RollbackPolicy {
        /// Policy id.
        id: String,
        /// The version whose document becomes the new version.
        to_version: u64,
        /// Acceptance time (unix milliseconds), stamped by the proposer.
        #[serde(default)]
        created_at_unix_ms: u64,
    },
    /// Create a grant (a client credential); only the token's hash is stored.
    CreateGrant {
        /// Grant id (unique).
        id: String,
        /// Human-readable label.
        label: String,
        /// SHA-256 of the bearer token.
        token_sha256: TokenHash,
        /// The one upstream server the grant may reach.
        server: String,
        /// The policy that applies to calls made with this grant.
        policy_id: String,
        /// Creation time (unix milliseconds), stamped by the proposer.
        created_at_unix_ms: u64,
    },
    /// Mark a grant revoked; it stays listed with its revoked flag.
    RevokeGrant {
        /// Grant id.
        id: String,
    },
    /// Insert or replace an upstream server definition.
    PutUpstream {
        /// Upstream name (what grants refer to as `server`).
        name: String,
        /// The upstream's definition, as the gateway's config schema describes it.
        spec: serde_json::Value,
    },
    /// Remove an upstream server definition.
    RemoveUpstream {
        /// Upstream name.
        name: String,
    },
    /// A batch of quota ledger operations, coalesced by the leader from one tick of gateway
    /// demands and reports (see [`crate::ledger`]). Not a configuration change: it leaves the
    /// configuration revision and change log alone, so config watchers do not wake for it.
    Quota {
        /// The proposing leader's time (unix milliseconds); window ids come from it.
        now_unix_ms: u64,
        /// The operations, applied in order.
        ops: Vec<QuotaOp>,
    },
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Response {
    /// The change was applied and raised the revision.
    Applied {
        /// The configuration revision after this change.
        revision: u64,
        /// The new policy version, for `PutPolicy` and `RollbackPolicy`.
        policy_version: Option<u64>,
    },
    /// The request was refused deterministically (on every node alike); nothing changed.
    Rejected {
        /// The unchanged configuration revision.
        revision: u64,
        /// Why.
        reason: Rejection,
    },
    /// A Raft-internal entry (blank or membership) that carries no configuration change.
    Internal {
        /// The unchanged configuration revision.
        revision: u64,
    },
    /// The answer to [`Request::Quota`]: one result per op, in order.
    Quota {
        /// The unchanged configuration revision.
        revision: u64,
        /// The result of each op.
        results: Vec<QuotaOpResult>,
    },
}

impl Response {
    /// The configuration revision after the entry was applied.
    pub fn revision(&self) -> u64 {
        match self {
            Self::Applied { revision, .. }
            | Self::Rejected { revision, .. }
            | Self::Internal { revision }
            | Self::Quota { revision, .. } => *revision,
        }
    }
}
