//! Test harness for Tollgate.
//!
//! - [`upstream`]: a conformance-shaped MCP server of our own, serving the legacy (2025-11-25 and
//!   earlier) and modern (2026-07-28) eras over Streamable HTTP, and over stdio through the
//!   `tollgate-test-upstream` binary.
//! - [`wait_for`]: wait on a condition with a timeout, never a bare sleep.
//! - [`ChildGuard`]: a spawned process that is killed when the guard drops.

mod child;
pub mod upstream;
mod wait;

pub use child::{ChildGuard, spawn_test_upstream_http, test_upstream_bin};
pub use upstream::{
    Eras, ExtraTool, ResponseMode, RpcError, RunningUpstream, ServerEvent, Upstream,
    UpstreamOptions, UpstreamStats,
};
pub use wait::{wait_for, wait_for_async};
