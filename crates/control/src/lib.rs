//! `tollgate-control`: the public gRPC services of a control node, served over its [`RaftNode`].
//!
//! ```text
//!   operator / CLI ──AdminService──▶ AdminServiceImpl ──client_write──▶ RaftNode (leader)
//!                                        │ reads                           │ apply
//!                                        ▼                                 ▼
//!   gateways ◀──ConfigService.Watch── ConfigServiceImpl ◀── StateReader (applied state, revision watch)
//! ```
//!
//! - [`AdminServiceImpl`] checks the admin token (constant time) before anything else, validates
//!   what the state machine cannot (policy documents with `tollgate-policy`, upstream transports,
//!   that a grant's server and policy exist), then proposes one [`tollgate_raft::Request`]. A node
//!   that is not the leader refuses writes with `UNAVAILABLE` and the leader's API address in the
//!   `tollgate-leader` metadata; reads are answered from the local applied state.
//! - [`ConfigServiceImpl`] streams the applied state of *this* node: a snapshot, then the change
//!   sets of every later revision (see [`watch`]). It needs no leader.
//! - [`convert`] maps the raft crate's state onto the `tollgate.v1` messages, including the
//!   upstream spec JSON stored in the state machine (the gateway config file's upstream keys).
//!
//! What must be agreed on is decided in the log, not by a check before proposing: a policy's
//! `expected_version`, and that a grant's server and policy exist, are checked by the state
//! machine when the entry applies. `PutPolicy`'s early answers (`unchanged`, a version mismatch)
//! come only from the leader after a read barrier (`ensure_linearizable`), so a trailing node
//! never answers them from stale state.
//!
//! [`ControlNode`] assembles a node as a process runs it: the Raft node on its peer port, both
//! services on the API port.

mod admin;
mod auth;
pub mod convert;
mod error;
mod gateways;
#[cfg(feature = "local-cluster")]
pub mod local_cluster;
pub mod quota;
mod server;
pub mod watch;

pub use admin::AdminServiceImpl;
pub use auth::AdminToken;
pub use error::ControlError;
pub use gateways::GatewayRegistry;
#[cfg(feature = "local-cluster")]
pub use local_cluster::{LocalCluster, LocalClusterError};
pub use quota::{QuotaOptions, QuotaServiceImpl};
pub use server::{ControlNode, ControlOptions, ControlStartError};
pub use watch::ConfigServiceImpl;

#[doc(no_inline)]
pub use tollgate_raft::RaftNode;
