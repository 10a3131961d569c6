//! Rate-limit windows and exact counters, sans IO.
//!
//! This crate holds the part of Tollgate's quota system that needs neither a network nor a runtime:
//! fixed windows aligned to UTC boundaries ([`Window`]), an injected [`Clock`], and the [`Quota`]
//! interface the gateway enforces limits through.
//!
//! A `tools/call` carries every limit that applies to it. The gateway reserves them all at once and
//! settles the reservation once the upstream has answered:
//!
//! ```text
//!   reserve([A, B, ..]) ──Err(Exhausted{index, retry_after})──> deny, nothing was taken
//!         │
//!         Ok(Reservation)
//!         │
//!   forward upstream ──result──────────> commit(reservation)    tokens stay spent
//!         │
//!         └──JSON-RPC error / not sent──> rollback(reservation)  tokens return to their window
//!
//!   reservation dropped without either ──> counts as spent ("unknown means spent")
//! ```
//!
//! [`LocalQuota`] keeps exact counters in process memory. [`LeasePool`] is the clustered
//! implementation's gateway side (leases cut from Raft-committed chunks, see `QUOTA.md`): `reserve`
//! spends tokens the node already holds with one atomic operation, `commit` and `rollback` become
//! the `consumed` / `returned` reports of the next message to the leader, and
//! [`Quota::try_reserve`] tells a spent window apart from a missing lease
//! ([`QuotaError::NeedsLease`]).

mod clock;
mod local;
mod pool;
mod quota;
mod window;

pub use clock::{Clock, ManualClock, SystemClock};
pub use local::LocalQuota;
pub use pool::{
    CloseReason, Demand, Installed, LeaseGrant, LeaseId, LeasePool, LeaseReport, MAX_LEASE_TOKENS,
    PoolConfig, SlotHandle, SlotLimit, SlotMode, SlotStats,
};
pub use quota::{Exhausted, LimitSpec, Quota, QuotaError, Reservation, ReservedLimit};
pub use window::{Window, WindowId};
