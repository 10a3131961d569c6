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
//! Checks made before proposing (a grant's server and policy exist, `expected_version`) read the
//! leader's applied state, so a concurrent write can slip between the check and the proposal; the
//! state machine itself enforces only what must be agreed on (ids, versions, existence for
//! rollbacks, revocations and removals).

mod admin;
mod auth;
pub mod convert;
mod error;
mod gateways;
mod server;
pub mod watch;

pub use admin::AdminServiceImpl;
pub use auth::AdminToken;
pub use error::ControlError;
pub use gateways::GatewayRegistry;
pub use server::{ControlNode, ControlOptions, ControlStartError};
pub use watch::ConfigServiceImpl;

#[doc(no_inline)]
pub use tollgate_raft::RaftNode;
