//! Span attribute keys: the one place they are spelled.
//!
//! `mcp.*` keys follow the MCP semantic conventions of OpenTelemetry where they exist;
//! `tollgate.*` keys are ours.

/// JSON-RPC method of the request (`tools/call`).
pub const MCP_METHOD: &str = "mcp.method.name";
/// Tool name of a `tools/call`.
pub const MCP_TOOL_NAME: &str = "mcp.tool.name";
/// Protocol era of the request: `legacy` or `modern`.
pub const MCP_ERA: &str = "mcp.era";
/// Negotiated protocol version.
pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
/// JSON-RPC request id.
pub const MCP_REQUEST_ID: &str = "mcp.request.id";
/// A short, non-reversible digest of the MCP session id.
pub const MCP_SESSION: &str = "mcp.session.id";
/// Upstream server name (the `{server}` of `/mcp/{server}`).
pub const TOLLGATE_SERVER: &str = "tollgate.server";
/// Grant label of the caller.
pub const TOLLGATE_GRANT: &str = "tollgate.grant";
/// Policy decision (`allow`, `deny`, `rate_limited`...).
pub const TOLLGATE_DECISION: &str = "tollgate.decision";
/// Rule id that decided (a JSON pointer into the policy, or `(default deny)`...).
pub const TOLLGATE_RULE: &str = "tollgate.rule";
/// Id of the policy that decided.
pub const TOLLGATE_POLICY_ID: &str = "tollgate.policy.id";
/// Cluster-assigned version number of the policy that decided.
pub const TOLLGATE_POLICY_VERSION: &str = "tollgate.policy.version";
/// Digest (`sha256:...`) of the policy that decided.
pub const TOLLGATE_POLICY_DIGEST: &str = "tollgate.policy.digest";
/// HTTP status the upstream answered with.
pub const TOLLGATE_UPSTREAM_STATUS: &str = "tollgate.upstream.status";
