//! `tollgate-raft`: the Raft side of the control plane: the openraft type configuration, a durable
//! log store, and the replicated configuration state machine (policies with every version, grants,
//! upstreams, one config revision, a bounded change log for watch resumption).
//!
//! # Why openraft 0.9 (0.9.25)
//!
//! * **A storage test suite that runs.** `openraft::testing::Suite::test_all` ships in the
//!   published 0.9 crate, not behind a feature, and takes a `StoreBuilder`; this crate runs it
//!   against the real on-disk store (`tests/storage_suite.rs`). 0.10 moved the suite
//!   (`testing::log::Suite`) and keeps changing its builder and trait bounds between alphas.
//! * **Stable storage traits.** 0.9's `RaftLogStorage` / `RaftStateMachine` (with the
//!   `storage-v2` feature, which unseals them) are the released API; the 0.10 alphas rename and
//!   reshape them (`IOFlushed`, `EntryResponder`, stream-based apply) from one alpha to the next,
//!   and an alpha would have to be pinned with `=` anyway.
//! * **Builds here.** 0.9.25 resolves and builds offline with the workspace's tokio 1.54 and
//!   serde (it brings its own small set: `anyerror`, `byte-unit`, `chrono`, `clap`, `derive_more`,
//!   `maplit`, `rand` 0.8, `thiserror` 1, `validit`).
//!
//! What 0.10 would add (batched writes through one `IOFlushed`, streaming append) is not needed
//! for a control plane whose entries are coalesced by the proposer (QUOTA.md batches `Vec<Op>` per
//! entry); group commit already happens per `append` call here. The openraft types are used only
//! in this crate, so a later move to 0.10 stays inside it.
//!
//! # Storage choice
//!
//! A single append-only log file with a CRC-32 per record (see [`log_store`]) rather than redb:
//! the Raft log is written sequentially and read mostly at the tail, so a B-tree buys nothing;
//! one `write` + one `fdatasync` per `append` gives group commit for free, and recovery is a
//! linear scan that cuts off a torn tail. Snapshots are one JSON file replaced atomically (see
//! [`state_machine`]).
//!
//! # Peer RPC and nodes
//!
//! [`network`] carries Raft's three RPCs over tonic on a port of their own (one reused channel per
//! peer, 64 MiB message limit); [`node`] ties storage, Raft and that service into a
//! [`RaftNode`] that bootstraps from a fixed member list and redirects writes to the leader.
//! [`faults`] lets in-process test clusters block, delay and degrade the links between nodes
//! (openraft's own test router does the same), see `tests/partition.rs`.
//!
//! # Layout
//!
//! ```text
//!   openraft core ──append/truncate/purge/vote──▶ LogStore      (<dir>/raft.log, vote.json)
//!        │
//!        └──apply/snapshot/install──────────────▶ StateMachineStore (<dir>/snapshot.json)
//!                                                   ├─ ConfigState::apply (pure, deterministic)
//!                                                   ├─ QuotaLedger::apply (pure, term of the entry)
//!                                                   └─ StateReader (read handle + revision watch)
//! ```
//!
//! The quota ledger of QUOTA.md ([`ledger`]: chunk grants, releases and settlements per term) is
//! another field of [`StateMachineData`], fed by [`Request::Quota`] entries and applied by the
//! same pure `apply` with the entry's term; the leader stamps its time into each request so
//! applying never reads a clock. Window math is `tollgate-quota`'s [`tollgate_quota::Window`], so
//! the gateways and the ledger compute the same window ids.

// openraft's storage traits return its `StorageError` (about 224 bytes); the store's own helpers
// return the same type so errors pass through unchanged rather than being boxed and unboxed.
#![allow(clippy::result_large_err)]

pub mod faults;
mod fsio;
pub mod ledger;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state;
pub mod state_machine;
pub mod types;

pub use faults::{FaultStats, Faults, LinkFault, RpcPlan};
pub use ledger::{
    Chunk, QuotaLedger, QuotaOp, QuotaOpResult, QuotaRefusal, SOURCE_RETENTION_MS, Source,
    WindowReport,
};
pub use log_store::LogStore;
pub use network::{MAX_MESSAGE_SIZE, Network, PeerError, RaftServer};
pub use node::{NodeError, NodeOptions, RaftNode};
pub use state::{
    CHANGE_LOG_CAPACITY, Change, ChangeRecord, ConfigState, Grant, PolicyVersion, Rejection,
};
pub use state_machine::{SnapshotBuilder, StateMachineData, StateMachineStore, StateReader};
pub use types::{NodeId, PeerNode, Request, Response, TokenHash, TypeConfig};

/// The Raft peer protocol (protobuf package `tollgate.raft.v1`), generated from
/// `proto/tollgate/raft/v1/raft.proto`; see [`network`] for how openraft's types travel in it.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod pb {
    tonic::include_proto!("tollgate.raft.v1");
}

/// Open the log store and the state machine of one node, both under `dir`.
pub fn open_storage(
    dir: impl AsRef<std::path::Path>,
) -> Result<(LogStore, StateMachineStore), openraft::StorageError<NodeId>> {
    let dir = dir.as_ref();
    Ok((
        LogStore::open(dir.join("log"))?,
        StateMachineStore::open(dir.join("sm"))?,
    ))
}
