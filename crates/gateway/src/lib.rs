//! The Tollgate data plane: the HTTP server, sealed sessions, upstream transports, policy
//! enforcement and the audit log.
//!
//! [`start`] builds a gateway from a validated [`config::Config`] and binds its listeners; the
//! binary and the tests both go through it.

mod admin;
pub mod audit;
mod call;
pub mod catalog;
pub mod config;
pub mod eras;
pub mod error;
pub mod follow;
mod gateway;
mod handler;
pub mod limits;
mod list;
pub mod quota_agent;
pub mod upstream;

pub use gateway::{ReloadReport, RunningGateway, StartError, start, start_following, start_with};
pub use limits::QuotaBackend;
