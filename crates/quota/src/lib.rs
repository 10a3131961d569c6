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
//! [`LocalQuota`] keeps exact counters in process memory. The clustered implementation (leases cut
//! from Raft-committed chunks, see `QUOTA.md`) will implement the same trait: `reserve` spends
//! tokens the node already holds, `commit` and `rollback` become the `consumed` / `returned` reports
//! of the next message to the leader.

mod clock;
mod local;
mod quota;
mod window;

pub use clock::{Clock, ManualClock, SystemClock};
pub use local::LocalQuota;
pub use quota::{Exhausted, LimitSpec, Quota, Reservation, ReservedLimit};
pub use window::{Window, WindowId};
