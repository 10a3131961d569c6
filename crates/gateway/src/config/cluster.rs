//! The `[cluster]` section: this process's place in a Tollgate cluster.
//!
//! ```toml
//! [cluster]
//! id = 1                              # this control node's Raft id (roles `all` and `control`)
//! data_dir = "/var/lib/tollgate"      # Raft log and snapshots
//! raft_listen = "0.0.0.0:7071"        # peer RPC
//! api_listen = "0.0.0.0:7070"         # AdminService + ConfigService
//! raft_advertise = "tg-0.tg:7071"     # what other nodes dial (default: raft_listen)
//! api_advertise = "tg-0.tg:7070"      # what clients are redirected to (default: api_listen)
//! admin_token_env = "TOLLGATE_ADMIN_TOKEN"   # or:
//! admin_token_file = "/etc/tollgate/admin-token"   # a mounted secret; wins over the variable
//! control = ["tg-0.tg:7070", "tg-1.tg:7070"]   # role `gateway`: the control nodes to follow
//!
//! [[cluster.members]]                 # the same list on every node; omitted: this node alone
//! id = 1
//! raft = "tg-0.tg:7071"
//! api = "tg-0.tg:7070"
//! ```
//!
//! Environment (used when the file leaves a key out): `TOLLGATE_DATA_DIR`, `TOLLGATE_RAFT_ADDR`,
//! `TOLLGATE_API_ADDR`, `TOLLGATE_CONTROL` (comma-separated). The admin token is read from the
//! file `admin_token_file` names, else from the variable `admin_token_env` names; it never
//! appears in the configuration file itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Environment variable with the data directory, when the file has none.
pub const ENV_DATA_DIR: &str = "TOLLGATE_DATA_DIR";
/// Environment variable with the Raft listen address, when the file has none.
pub const ENV_RAFT_ADDR: &str = "TOLLGATE_RAFT_ADDR";
/// Environment variable with the control API listen address, when the file has none.
pub const ENV_API_ADDR: &str = "TOLLGATE_API_ADDR";
/// Environment variable with the control nodes a gateway follows (comma-separated).
pub const ENV_CONTROL: &str = "TOLLGATE_CONTROL";
/// The default variable holding the admin token.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
/// The default control API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7070";
/// The default Raft peer address.
pub const DEFAULT_RAFT_ADDR: &str = "127.0.0.1:7071";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    raft_listen: Option<String>,
    api_listen: Option<String>,
    raft_advertise: Option<String>,
    api_advertise: Option<String>,
    admin_token_env: Option<String>,
    admin_token_file: Option<PathBuf>,
    control: Option<Vec<String>>,
    members: Option<Vec<RawMember>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    raft: String,
    api: String,
}

/// One initial member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// Raft peer address (`host:port`).
    pub raft: String,
    /// Control API address (`host:port`).
    pub api: String,
}

/// The validated `[cluster]` section (defaults filled in).
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This node's Raft id.
    pub id: u64,
    /// The data directory, if the file or the environment set one.
    pub data_dir: Option<PathBuf>,
    /// Where the Raft peer service listens.
    pub raft_listen: SocketAddr,
    /// Where the control API listens.
    pub api_listen: SocketAddr,
    /// The Raft address other nodes dial; `None`: the bound `raft_listen` address.
    pub raft_advertise: Option<String>,
    /// The API address clients are redirected to; `None`: the bound `api_listen` address.
    pub api_advertise: Option<String>,
    /// The admin token, read from the environment; `None` if the variable is unset.
    pub admin_token: Option<String>,
    /// Where the admin token came from, or would have (for messages).
    pub admin_token_env: String,
    /// The control nodes a gateway follows.
    pub control: Vec<String>,
    /// The initial members; empty means "this node alone" (filled in at start with the bound
    /// addresses).
    pub members: Vec<Member>,
    /// True when `members = []` was written: the node starts without initializing and waits
    /// to be added with `tollgate cluster add`.
    pub join_later: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("data_dir", &self.data_dir)
            .field("raft_listen", &self.raft_listen)
            .field("api_listen", &self.api_listen)
            .field("members", &self.members)
            .field("control", &self.control)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl super::Validator<'_> {
    pub(super) fn cluster(&mut self, raw: RawCluster) -> Option<Cluster> {
        let id = raw.id.unwrap_or(1);
        if id == 0 {
            self.error("cluster.id", "must be at least 1");
        }
        let data_dir = raw
            .data_dir
            .or_else(|| self.env.var(ENV_DATA_DIR).map(PathBuf::from))
            .map(|p| self.resolve(&p));
        let raft_listen = self.addr(
            "cluster.raft_listen",
            raw.raft_listen,
            ENV_RAFT_ADDR,
            DEFAULT_RAFT_ADDR,
        );
        let api_listen = self.addr(
            "cluster.api_listen",
            raw.api_listen,
            ENV_API_ADDR,
            DEFAULT_API_ADDR,
        );
        for (key, value) in [
            ("raft_advertise", &raw.raft_advertise),
            ("api_advertise", &raw.api_advertise),
        ] {
            if let Some(value) = value
                && !is_host_port(value)
            {
                self.error(format!("cluster.{key}"), "must be `host:port`");
            }
        }
        let admin_token_env = raw
            .admin_token_env
            .unwrap_or_else(|| DEFAULT_ADMIN_TOKEN_ENV.to_owned());
        let (admin_token, token_key, token_source) = match raw.admin_token_file {
            Some(file) => {
                let path = self.resolve(&file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => (
                        Some(text.trim().to_owned()),
                        "cluster.admin_token_file",
                        path.display().to_string(),
                    ),
                    Err(e) => {
                        self.error(
                            "cluster.admin_token_file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        (None, "cluster.admin_token_file", path.display().to_string())
                    }
                }
            }
            None => (
                self.env.var(&admin_token_env).filter(|t| !t.is_empty()),
                "cluster.admin_token_env",
                format!("`{admin_token_env}`"),
            ),
        };
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            self.error(
                token_key,
                format!("the admin token in {token_source} is shorter than 16 characters"),
            );
        }
        let admin_token_env = if token_key == "cluster.admin_token_file" {
            token_source
        } else {
            admin_token_env
        };
        let control = match raw.control {
            Some(list) => list,
            None => self
                .env
                .var(ENV_CONTROL)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        for (i, addr) in control.iter().enumerate() {
            if !is_host_port(addr) {
                self.error(format!("cluster.control[{i}]"), "must be `host:port`");
            }
        }
        let join_later = matches!(&raw.members, Some(list) if list.is_empty());
        let mut members = Vec::new();
        let mut ids = HashSet::new();
        for (i, member) in raw.members.unwrap_or_default().into_iter().enumerate() {
            let path = format!("cluster.members[{i}]");
            if member.id == 0 {
                self.error(format!("{path}.id"), "must be at least 1");
            }
            if !ids.insert(member.id) {
                self.error(
                    format!("{path}.id"),
                    format!("duplicate member id {}", member.id),
                );
            }
            if !is_host_port(&member.raft) {
                self.error(format!("{path}.raft"), "must be `host:port`");
            }
            if !is_host_port(&member.api) {
                self.error(format!("{path}.api"), "must be `host:port`");
            }
            members.push(Member {
                id: member.id,
                raft: member.raft,
                api: member.api,
            });
        }
        if !members.is_empty() && !ids.contains(&id) {
            self.error(
                "cluster.members",
                format!("this node's id {id} is not one of the members"),
            );
        }
        if ![0, 1, 3, 5].contains(&members.len()) {
            self.error(
                "cluster.members",
                "start with 1, 3 or 5 voters (add more later with `tollgate cluster add`)",
            );
        }
        Some(Cluster {
            id,
            data_dir,
            raft_listen: raft_listen?,
            api_listen: api_listen?,
            raft_advertise: raw.raft_advertise,
            api_advertise: raw.api_advertise,
            admin_token,
            admin_token_env,
            control,
            members,
            join_later,
        })
    }
}

fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}
