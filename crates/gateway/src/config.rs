//! The gateway's configuration file (TOML), parsed strictly and validated once.
//!
//! Raw serde structs (`Raw*`, `deny_unknown_fields`) mirror the file; [`Config::from_toml`] turns
//! them into validated types so that runtime code only ever sees valid values. Every error names the
//! path of the bad key (`upstreams[1].url`); the binary exits with code 64 on any of them.
//!
//! An `https://` upstream's certificates and keys (`tls_*`) are read and checked here too, so a bad
//! file stops the start rather than the first call: see [`tls`].
//!
//! Precedence: a value in the file wins over the environment, which wins over the default
//! (`TOLLGATE_DATA_ADDR`, `TOLLGATE_ADMIN_ADDR`, `TOLLGATE_AUDIT_PATH`). The complete, commented
//! example is `examples/tollgate.toml`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tollgate_policy::Policy;

pub use self::cluster::{Cluster, Member};
pub use self::tls::{ClientIdentity, UpstreamTls};

pub mod cluster;
mod tls;

/// Environment variable overriding the data-plane listen address when the file has none.
pub const ENV_DATA_ADDR: &str = "TOLLGATE_DATA_ADDR";
/// Environment variable overriding the admin listen address when the file has none.
pub const ENV_ADMIN_ADDR: &str = "TOLLGATE_ADMIN_ADDR";
/// Environment variable overriding the audit path when the file has none.
pub const ENV_AUDIT_PATH: &str = "TOLLGATE_AUDIT_PATH";

const DEFAULT_DATA_ADDR: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const DEFAULT_MAX_JSON_DEPTH: usize = 64;
const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 300;
const DEFAULT_SESSION_TTL_SECS: u64 = 24 * 3600;
const DEFAULT_STDIO_IDLE_SECS: u64 = 600;

/// A configuration problem, with the path of the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted path of the bad key, e.g. `grants[0].policy`; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Raw file format.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    grants: Vec<RawGrant>,
    #[serde(default)]
    cluster: cluster::RawCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    data: Option<String>,
    admin: Option<String>,
    public_url: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    upstream_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    #[serde(default)]
    keys: Vec<RawSessionKey>,
    ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessionKey {
    id: String,
    secret: Option<String>,
    secret_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    headers_from_env: BTreeMap<String, String>,
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    idle_timeout_secs: Option<u64>,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
}

/// The `tls_*` keys of one upstream.
struct RawTls {
    tls_ca_file: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
}

impl RawTls {
    /// The `tls_*` keys that are set, by name.
    fn keys_set(&self) -> impl Iterator<Item = &'static str> {
        [
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_client_cert", self.tls_client_cert.is_some()),
            ("tls_client_key", self.tls_client_key.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    label: String,
    token_sha256: Option<String>,
    token_env: Option<String>,
    server: String,
    policy: Option<PathBuf>,
    policy_inline: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration.

/// The validated configuration of one gateway process.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (audit, node-local sessions). Defaults to the host name or `tollgate`.
    pub node_id: String,
    /// Listen addresses and request-origin rules.
    pub listen: Listen,
    /// Request size and time limits.
    pub limits: Limits,
    /// Keys that seal `Mcp-Session-Id`s, and their lifetime.
    pub sessions: Sessions,
    /// Where audit records go; `None` disables the audit file (records still reach traces).
    pub audit_path: Option<PathBuf>,
    /// Upstream MCP servers by name, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Client credentials.
    pub grants: Vec<GrantConfig>,
    /// This process's place in a cluster (defaults: a single node on loopback).
    pub cluster: Cluster,
}

/// Listen addresses and the Host / Origin rules that protect against DNS rebinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Data plane (`/mcp/{server}`).
    pub data: SocketAddr,
    /// Admin plane (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// The externally visible base URL, used in RFC 9728 metadata; defaults to `http://{data}`.
    pub public_url: String,
    /// `Host` values accepted (`host` for any port, or `host:port`); empty accepts any host.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted when the header is present (`scheme://host[:port]`, port `*` for
    /// any). A request without `Origin` (a non-browser client) is not affected.
    pub allowed_origins: Vec<String>,
}

/// Request size and time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deepest accepted JSON nesting.
    pub max_json_depth: usize,
    /// How long an upstream may take to start answering.
    pub upstream_timeout: Duration,
}

/// Session sealing keys.
#[derive(Clone)]
pub struct Sessions {
    /// `(key id, key)`; the first seals, every one opens (rotation).
    pub keys: Vec<(String, [u8; 32])>,
    /// Lifetime of a session id from its `initialize`.
    pub ttl: Duration,
    /// True when no key was configured and a random one was made at start.
    pub ephemeral: bool,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sessions")
            .field("key_ids", &ids)
            .field("ttl", &self.ttl)
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

/// One upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Name in `/mcp/{name}`.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// The upstream as written (environment variables and files not yet read), which is what
    /// is replicated to the control plane: secrets named by `headers_from_env` and the TLS files
    /// stay on each gateway.
    pub source: UpstreamSource,
}

/// An upstream's keys as the configuration file (or the control plane) states them, before
/// environment variables and files are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamSource {
    /// `url` of an HTTP upstream.
    pub url: Option<String>,
    /// Static headers.
    pub headers: BTreeMap<String, String>,
    /// Header name to the environment variable holding its value.
    pub headers_from_env: BTreeMap<String, String>,
    /// `tls_ca_file`, as written.
    pub tls_ca_file: Option<PathBuf>,
    /// `tls_client_cert`, as written.
    pub tls_client_cert: Option<PathBuf>,
    /// `tls_client_key`, as written.
    pub tls_client_key: Option<PathBuf>,
    /// `command` of a stdio upstream.
    pub command: Option<String>,
    /// Its arguments.
    pub args: Option<Vec<String>>,
    /// Its extra environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Its idle timeout in seconds.
    pub idle_timeout_secs: Option<u64>,
}

impl UpstreamSource {
    fn raw(&self, name: &str) -> RawUpstream {
        RawUpstream {
            name: name.to_owned(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            headers_from_env: self.headers_from_env.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            idle_timeout_secs: self.idle_timeout_secs,
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client_cert: self.tls_client_cert.clone(),
            tls_client_key: self.tls_client_key.clone(),
        }
    }

    fn of(raw: &RawUpstream, resolve: impl Fn(&Path) -> PathBuf) -> Self {
        Self {
            url: raw.url.clone(),
            headers: raw.headers.clone(),
            headers_from_env: raw.headers_from_env.clone(),
            tls_ca_file: raw.tls_ca_file.as_deref().map(&resolve),
            tls_client_cert: raw.tls_client_cert.as_deref().map(&resolve),
            tls_client_key: raw.tls_client_key.as_deref().map(&resolve),
            command: raw.command.clone(),
            args: raw.args.clone(),
            env: raw.env.clone(),
            idle_timeout_secs: raw.idle_timeout_secs,
        }
    }
}

/// Validates one upstream that came from the control plane rather than the file, with the same
/// checks (and the gateway's own environment and files) as `[[upstreams]]`; error paths start
/// with `upstreams.<name>`.
pub fn upstream_from_source(
    name: &str,
    source: &UpstreamSource,
    env: &dyn Env,
) -> Result<UpstreamConfig, ConfigErrors> {
    let mut validator = Validator {
        base: Path::new("/"),
        env,
        errors: Vec::new(),
    };
    let mut out = validator.upstreams(vec![source.raw(name)]);
    if !validator.errors.is_empty() {
        let prefix = format!("upstreams.{name}");
        return Err(ConfigErrors(
            validator
                .errors
                .into_iter()
                .map(|e| ConfigError::new(e.path.replacen("upstreams[0]", &prefix, 1), e.message))
                .collect(),
        ));
    }
    out.pop().ok_or_else(|| {
        ConfigErrors(vec![ConfigError::new(
            format!("upstreams.{name}"),
            "the upstream has no transport",
        )])
    })
}

/// How an upstream is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP, over TLS for an `https://` url.
    Http {
        /// The upstream's MCP endpoint.
        url: Uri,
        /// Static headers injected into every upstream request (the upstream's own credentials).
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Extra trust anchors and a client identity (`tls_*` keys) of an `https://` url; `None`
        /// trusts the platform's store only and presents no client certificate.
        tls: Option<UpstreamTls>,
    },
    /// A child process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio {
        /// Program to run.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: Vec<(String, String)>,
        /// An idle session's child is stopped after this long.
        idle_timeout: Duration,
    },
}

/// One client credential.
#[derive(Clone)]
pub struct GrantConfig {
    /// Stable, non-secret id: `g_` + the first 16 hex digits of the token's SHA-256.
    pub id: String,
    /// Human label.
    pub label: String,
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// The one upstream this grant may reach.
    pub server: String,
    /// The grant's policy; `None` denies every call.
    pub policy: Option<GrantPolicy>,
}

/// A grant's policy as the file names it.
#[derive(Clone)]
pub struct GrantPolicy {
    /// The policy id: a policy file's name without `.json` (characters outside `[A-Za-z0-9._-]`
    /// become `-`, at most 64), or `grant-<grant id>` for `policy_inline`. This is the id it
    /// gets in the cluster.
    pub id: String,
    /// The document as written (what is pushed to the cluster).
    pub document: String,
    /// The compiled policy.
    pub policy: Arc<Policy>,
}

impl fmt::Debug for GrantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantConfig")
            .field("id", &self.id)
            .field("label", &self.label)
            .field("server", &self.server)
            .field(
                "policy",
                &self.policy.as_ref().map(|p| (&p.id, p.policy.digest())),
            )
            .finish()
    }
}

/// Reads environment variables; a seam so tests need not touch the process environment.
pub trait Env {
    /// The variable's value, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Hashes a bearer token the way grants store it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The grant id derived from a token hash.
pub fn grant_id(hash: &[u8; 32]) -> String {
    format!("g_{}", hex::encode(&hash[..8]))
}

impl Config {
    /// Reads and validates a configuration file. Relative policy and `tls_*` paths resolve against
    /// the file's directory.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base, env)
    }

    /// Parses and validates configuration text; `base` is the directory relative paths resolve against.
    pub fn from_toml(text: &str, base: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", e.message().to_owned())]))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigErrors(vec![ConfigError::new(path, e.inner().message().to_owned())])
        })?;
        Validator {
            base,
            env,
            errors: Vec::new(),
        }
        .validate(raw)
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

struct Validator<'a> {
    base: &'a Path,
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let node_id = raw.node_id.unwrap_or_else(default_node_id);
        if node_id.is_empty()
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            self.error("node_id", "must be 1 or more of [A-Za-z0-9._-]");
        }
        let listen = self.listen(raw.listen);
        let limits = self.limits(raw.limits);
        let sessions = self.sessions(raw.sessions);
        let audit_path = raw
            .audit
            .path
            .or_else(|| self.env.var(ENV_AUDIT_PATH).map(PathBuf::from))
            .map(|p| self.resolve(&p));
        let upstreams = self.upstreams(raw.upstreams);
        let grants = self.grants(raw.grants, &upstreams);
        let cluster = self.cluster(raw.cluster);
        match (listen, cluster) {
            (Some(listen), Some(cluster)) if self.errors.is_empty() => Ok(Config {
                node_id,
                listen,
                limits,
                sessions,
                audit_path,
                upstreams,
                grants,
                cluster,
            }),
            _ => Err(ConfigErrors(self.errors)),
        }
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        }
    }

    fn addr(
        &mut self,
        path: &str,
        file: Option<String>,
        env: &str,
        default: &str,
    ) -> Option<SocketAddr> {
        let value = file
            .or_else(|| self.env.var(env))
            .unwrap_or_else(|| default.to_owned());
        match value.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(path, format!("`{value}` is not an ip:port socket address"));
                None
            }
        }
    }

    fn listen(&mut self, raw: RawListen) -> Option<Listen> {
        let data = self.addr("listen.data", raw.data, ENV_DATA_ADDR, DEFAULT_DATA_ADDR);
        let admin = self.addr(
            "listen.admin",
            raw.admin,
            ENV_ADMIN_ADDR,
            DEFAULT_ADMIN_ADDR,
        );
        let public_url = match raw.public_url {
            Some(url) => {
                if url
                    .parse::<Uri>()
                    .map(|u| u.scheme().is_none())
                    .unwrap_or(true)
                {
                    self.error("listen.public_url", "must be an absolute http(s) URL");
                }
                url.trim_end_matches('/').to_owned()
            }
            None => data.map(|a| format!("http://{a}")).unwrap_or_default(),
        };
        let loopback = data.map(|a| a.ip().is_loopback()).unwrap_or(false);
        let allowed_hosts = match raw.allowed_hosts {
            Some(hosts) => {
                for (i, host) in hosts.iter().enumerate() {
                    if host.is_empty() || host.contains('/') || host.contains(' ') {
                        self.error(
                            format!("listen.allowed_hosts[{i}]"),
                            "must be `host` or `host:port`",
                        );
                    }
                }
                hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect()
            }
            None if loopback => vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            None => Vec::new(),
        };
        let allowed_origins = match raw.allowed_origins {
            Some(origins) => {
                for (i, origin) in origins.iter().enumerate() {
                    if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                        self.error(
                            format!("listen.allowed_origins[{i}]"),
                            "must be `http(s)://host[:port]` (port `*` matches any)",
                        );
                    }
                }
                origins
                    .into_iter()
                    .map(|o| o.to_ascii_lowercase())
                    .collect()
            }
            None if loopback => vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ],
            None => Vec::new(),
        };
        Some(Listen {
            data: data?,
            admin: admin?,
            public_url,
            allowed_hosts,
            allowed_origins,
        })
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            self.error("limits.max_body_bytes", "must be at least 1024");
        }
        let max_json_depth = raw.max_json_depth.unwrap_or(DEFAULT_MAX_JSON_DEPTH);
        if !(4..=512).contains(&max_json_depth) {
            self.error("limits.max_json_depth", "must be between 4 and 512");
        }
        let timeout = raw
            .upstream_timeout_secs
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_SECS);
        if timeout == 0 {
            self.error("limits.upstream_timeout_secs", "must be at least 1");
        }
        Limits {
            max_body_bytes,
            max_json_depth,
            upstream_timeout: Duration::from_secs(timeout),
        }
    }

    fn sessions(&mut self, raw: RawSessions) -> Sessions {
        let ttl_secs = raw.ttl_secs.unwrap_or(DEFAULT_SESSION_TTL_SECS);
        if ttl_secs == 0 {
            self.error("sessions.ttl_secs", "must be at least 1");
        }
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            let path = format!("sessions.keys[{i}]");
            if key.id.is_empty()
                || key.id.len() > 16
                || !key
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.error(format!("{path}.id"), "must be 1 to 16 of [A-Za-z0-9_-]");
            }
            if !seen.insert(key.id.clone()) {
                self.error(
                    format!("{path}.id"),
                    format!("duplicate key id `{}`", key.id),
                );
            }
            let secret = match (key.secret, key.secret_env) {
                (Some(secret), None) => Some((format!("{path}.secret"), secret)),
                (None, Some(var)) => match self.env.var(&var) {
                    Some(value) => Some((format!("{path}.secret_env"), value)),
                    None => {
                        self.error(
                            format!("{path}.secret_env"),
                            format!("environment variable `{var}` is not set"),
                        );
                        None
                    }
                },
                _ => {
                    self.error(path.clone(), "set exactly one of `secret` or `secret_env`");
                    None
                }
            };
            if let Some((secret_path, secret)) = secret {
                match decode_key(&secret) {
                    Some(bytes) => keys.push((key.id, bytes)),
                    None => self.error(
                        secret_path,
                        "must be 32 bytes, base64 (standard or url-safe) or 64 hex digits",
                    ),
                }
            }
        }
        let ephemeral = keys.is_empty();
        if ephemeral {
            keys.push(("ephemeral".to_owned(), rand::random::<[u8; 32]>()));
        }
        Sessions {
            keys,
            ttl: Duration::from_secs(ttl_secs),
            ephemeral,
        }
    }

    fn upstreams(&mut self, raw: Vec<RawUpstream>) -> Vec<UpstreamConfig> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (i, up) in raw.into_iter().enumerate() {
            let path = format!("upstreams[{i}]");
            let source = UpstreamSource::of(&up, |p| self.resolve(p));
            if up.name.is_empty()
                || up.name.len() > 64
                || !up
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                self.error(format!("{path}.name"), "must be 1 to 64 of [A-Za-z0-9._-]");
            }
            if !names.insert(up.name.clone()) {
                self.error(
                    format!("{path}.name"),
                    format!("duplicate upstream `{}`", up.name),
                );
            }
            let tls = RawTls {
                tls_ca_file: up.tls_ca_file,
                tls_client_cert: up.tls_client_cert,
                tls_client_key: up.tls_client_key,
            };
            let transport = match (up.url, up.command) {
                (Some(url), None) => {
                    for key in ["args", "env", "idle_timeout_secs"] {
                        let set = match key {
                            "args" => up.args.is_some(),
                            "env" => up.env.is_some(),
                            _ => up.idle_timeout_secs.is_some(),
                        };
                        if set {
                            self.error(
                                format!("{path}.{key}"),
                                "only valid for a stdio upstream (`command`)",
                            );
                        }
                    }
                    self.http_transport(&path, &url, up.headers, up.headers_from_env, tls)
                }
                (None, Some(command)) => {
                    if !up.headers.is_empty() {
                        self.error(
                            format!("{path}.headers"),
                            "only valid for an HTTP upstream (`url`)",
                        );
                    }
                    if !up.headers_from_env.is_empty() {
                        self.error(
                            format!("{path}.headers_from_env"),
                            "only valid for an HTTP upstream (`url`)",
                        );
                    }
                    for key in tls.keys_set() {
                        self.error(
                            format!("{path}.{key}"),
                            "only valid for an HTTP upstream with an `https://` url",
                        );
                    }
                    if command.is_empty() {
                        self.error(format!("{path}.command"), "must not be empty");
                    }
                    let idle = up.idle_timeout_secs.unwrap_or(DEFAULT_STDIO_IDLE_SECS);
                    if idle == 0 {
                        self.error(format!("{path}.idle_timeout_secs"), "must be at least 1");
                    }
                    Some(Transport::Stdio {
                        command,
                        args: up.args.unwrap_or_default(),
                        env: up.env.unwrap_or_default().into_iter().collect(),
                        idle_timeout: Duration::from_secs(idle),
                    })
                }
                (Some(_), Some(_)) => {
                    self.error(
                        path.clone(),
                        "set either `url` (HTTP) or `command` (stdio), not both",
                    );
                    None
                }
                (None, None) => {
                    self.error(path.clone(), "set `url` (HTTP) or `command` (stdio)");
                    None
                }
            };
            if let Some(transport) = transport {
                out.push(UpstreamConfig {
                    name: up.name,
                    transport,
                    source,
                });
            }
        }
        out
    }

    fn http_transport(
        &mut self,
        path: &str,
        url: &str,
        headers: BTreeMap<String, String>,
        headers_from_env: BTreeMap<String, String>,
        tls: RawTls,
    ) -> Option<Transport> {
        let uri = match url.parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() =>
            {
                Some(uri)
            }
            _ => {
                self.error(
                    format!("{path}.url"),
                    format!("`{url}` is not an absolute http:// or https:// URL"),
                );
                None
            }
        };
        let https = uri
            .as_ref()
            .is_some_and(|u| u.scheme_str() == Some("https"));
        let tls = if https {
            self.upstream_tls(path, tls)
        } else {
            if uri.is_some() {
                for key in tls.keys_set() {
                    self.error(
                        format!("{path}.{key}"),
                        "only valid with an `https://` url: an `http://` upstream is reached \
                         without TLS",
                    );
                }
            }
            None
        };
        let mut out = Vec::new();
        let mut values: Vec<(String, String, String)> = headers
            .into_iter()
            .map(|(k, v)| (format!("{path}.headers.{k}"), k, v))
            .collect();
        for (k, var) in headers_from_env {
            let key_path = format!("{path}.headers_from_env.{k}");
            match self.env.var(&var) {
                Some(value) => values.push((key_path, k, value)),
                None => self.error(key_path, format!("environment variable `{var}` is not set")),
            }
        }
        for (key_path, name, value) in values {
            let Ok(header) = HeaderName::try_from(name.as_str()) else {
                self.error(key_path, "not a valid header name");
                continue;
            };
            if is_reserved_header(&header) {
                self.error(
                    key_path,
                    "this header is set by the gateway and cannot be injected",
                );
                continue;
            }
            match HeaderValue::try_from(value) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    out.push((header, v));
                }
                Err(_) => self.error(key_path, "not a valid header value"),
            }
        }
        uri.map(|url| Transport::Http {
            url,
            headers: out,
            tls,
        })
    }

    /// Reads and checks the `tls_*` files of an `https://` upstream; `None` when none is set (or
    /// one is bad: the error is recorded).
    fn upstream_tls(&mut self, path: &str, raw: RawTls) -> Option<UpstreamTls> {
        // No `tls_*` key at all: the defaults (platform store, no client certificate).
        raw.keys_set().next()?;
        let mut ok = true;
        let ca_file = raw.tls_ca_file.map(|p| self.resolve(&p));
        let ca_certs = match &ca_file {
            Some(file) => match tls::load_ca_file(file) {
                Ok(certs) => certs,
                Err(message) => {
                    self.error(format!("{path}.tls_ca_file"), message);
                    ok = false;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let client_identity = match (raw.tls_client_cert, raw.tls_client_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.resolve(&cert), self.resolve(&key));
                match tls::load_client_identity(&cert, &key) {
                    Ok(identity) => Some(identity),
                    Err((which, message)) => {
                        let key = match which {
                            tls::IdentityKey::Cert => "tls_client_cert",
                            tls::IdentityKey::Key => "tls_client_key",
                        };
                        self.error(format!("{path}.{key}"), message);
                        ok = false;
                        None
                    }
                }
            }
            (Some(_), None) => {
                self.error(
                    format!("{path}.tls_client_cert"),
                    "needs `tls_client_key` too (the certificate's private key)",
                );
                ok = false;
                None
            }
            (None, Some(_)) => {
                self.error(
                    format!("{path}.tls_client_key"),
                    "needs `tls_client_cert` too (the key's certificate chain)",
                );
                ok = false;
                None
            }
            (None, None) => None,
        };
        ok.then_some(UpstreamTls {
            ca_file,
            ca_certs,
            client_identity,
        })
    }

    fn grants(&mut self, raw: Vec<RawGrant>, upstreams: &[UpstreamConfig]) -> Vec<GrantConfig> {
        let mut out = Vec::new();
        let mut hashes = HashSet::new();
        let mut policy_files: std::collections::HashMap<String, PathBuf> =
            std::collections::HashMap::new();
        for (i, grant) in raw.into_iter().enumerate() {
            let path = format!("grants[{i}]");
            if grant.label.trim().is_empty() {
                self.error(format!("{path}.label"), "must not be empty");
            }
            if !upstreams.iter().any(|u| u.name == grant.server) {
                self.error(
                    format!("{path}.server"),
                    format!("no upstream named `{}`", grant.server),
                );
            }
            let hash = match (grant.token_sha256, grant.token_env) {
                (Some(hex_hash), None) => {
                    let mut bytes = [0u8; 32];
                    match hex::decode_to_slice(hex_hash.trim(), &mut bytes) {
                        Ok(()) => Some(bytes),
                        Err(_) => {
                            self.error(format!("{path}.token_sha256"), "must be 64 hex digits");
                            None
                        }
                    }
                }
                (None, Some(var)) => match self.env.var(&var) {
                    Some(token) if token.len() >= 16 => Some(token_hash(&token)),
                    Some(_) => {
                        self.error(
                            format!("{path}.token_env"),
                            format!("the token in `{var}` is shorter than 16 characters"),
                        );
                        None
                    }
                    None => {
                        self.error(
                            format!("{path}.token_env"),
                            format!("environment variable `{var}` is not set"),
                        );
                        None
                    }
                },
                _ => {
                    self.error(
                        path.clone(),
                        "set exactly one of `token_sha256` or `token_env`",
                    );
                    None
                }
            };
            if let Some(hash) = hash
                && !hashes.insert(hash)
            {
                self.error(path.clone(), "another grant has the same token");
            }
            let policy = match (grant.policy, grant.policy_inline) {
                (Some(file), None) => {
                    let resolved = self.resolve(&file);
                    let id = policy_id_of_file(&resolved);
                    match policy_files.get(&id) {
                        Some(other) if *other != resolved => self.error(
                            format!("{path}.policy"),
                            format!(
                                "policy id `{id}` (from the file name) is already used by {}",
                                other.display()
                            ),
                        ),
                        _ => {
                            policy_files.insert(id.clone(), resolved.clone());
                        }
                    }
                    match read_policy(&resolved) {
                        Ok((document, policy)) => Some(GrantPolicy {
                            id,
                            document,
                            policy: Arc::new(policy),
                        }),
                        Err(message) => {
                            self.error(format!("{path}.policy"), message);
                            None
                        }
                    }
                }
                (None, Some(text)) => match Policy::from_json(text.as_bytes()) {
                    Ok(policy) => Some(GrantPolicy {
                        id: format!("grant-{}", hash.map(|h| grant_id(&h)).unwrap_or_default()),
                        document: text,
                        policy: Arc::new(policy),
                    }),
                    Err(errors) => {
                        self.error(
                            format!("{path}.policy_inline"),
                            format!("invalid policy:\n{}", indent(&errors.to_string())),
                        );
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    self.error(
                        path.clone(),
                        "set at most one of `policy` or `policy_inline`",
                    );
                    None
                }
                (None, None) => None,
            };
            if let Some(hash) = hash {
                out.push(GrantConfig {
                    id: grant_id(&hash),
                    label: grant.label,
                    token_hash: hash,
                    server: grant.server,
                    policy,
                });
            }
        }
        out
    }
}

/// The cluster policy id of a policy file: its name without `.json`, with characters outside
/// `[A-Za-z0-9._-]` replaced by `-`, at most 64 characters.
pub fn policy_id_of_file(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "policy".to_owned()
    } else {
        id
    }
}

/// Reads one policy file as text and compiles it.
fn read_policy(path: &Path) -> Result<(String, Policy), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
    let policy = Policy::from_json(text.as_bytes()).map_err(|errors| {
        format!(
            "invalid policy {}:\n{}",
            path.display(),
            indent(&errors.to_string())
        )
    })?;
    Ok((text, policy))
}

/// Reads and compiles one policy file; the error lists every problem with its JSON pointer.
pub fn load_policy(path: &Path) -> Result<Policy, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
    Policy::from_json(&bytes).map_err(|errors| {
        format!(
            "invalid policy {}:\n{}",
            path.display(),
            indent(&errors.to_string())
        )
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new random grant token: `tg_` and 32 random bytes, base64url.
pub fn new_token() -> String {
    format!(
        "tg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

fn is_reserved_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "accept"
            | "mcp-session-id"
            | "mcp-protocol-version"
            | "mcp-method"
            | "mcp-name"
            | "last-event-id"
            | "traceparent"
            | "tracestate"
    )
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?
    };
    bytes.try_into().ok()
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "tollgate".to_owned())
}

#[cfg(test)]
mod tests;
