//! MCP wire model for Tollgate: strict JSON, JSON-RPC frames, protocol eras, HTTP header rules,
//! an SSE codec and sealed session ids. Sans-IO: nothing here opens a socket or needs a runtime.
//!
//! ```text
//!  POST body ──json::parse_strict──> Value ──jsonrpc::Message──> jsonrpc::Frame
//!                                                                    │
//!            era::detect_era ──┬── Modern: headers::check_modern_headers
//!                              └── Legacy: headers::check_legacy_protocol_header
//!                                          + session::SessionSealer (Mcp-Session-Id)
//!  upstream SSE bytes ──sse::SseDecoder──> SseEvent ──(judge)──> SseEvent::encode
//! ```
//!
//! The crate README records the wire decisions and why they were taken.

pub mod era;
pub mod headers;
pub mod json;
pub mod jsonrpc;
pub mod session;
pub mod sse;
pub mod subscriptions;
pub mod tool;

pub use era::Era;
pub use json::{JsonError, JsonLimits};
pub use jsonrpc::{ErrorObject, Frame, FrameError, Message, RequestId};
