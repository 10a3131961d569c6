//! `tollgate serve [--config FILE] [--role all|gateway|control] [--control ADDR,...]`
//!
//! ```text
//!   --role all (default)   control node (Raft + API) ──in-process watch──▶ gateway
//!   --role control         control node only
//!   --role gateway         gateway ──ConfigService.Watch over gRPC──▶ any of --control
//! ```
//!
//! With roles `all` and `control` the file's `[[upstreams]]`, grants and their policies are
//! pushed into the cluster by its leader at start and on SIGHUP ([`seed`]): the file adds and
//! updates what it declares and never deletes. Role `gateway` takes everything from the control
//! plane and refuses a file that declares grants or upstreams.
//!
//! Without `--config` the embedded single-node default runs (role `all`): the data plane on
//! 127.0.0.1:8080, the admin plane on 127.0.0.1:9090, the control API on 127.0.0.1:7070, one
//! stdio upstream named `time` (the command in `TOLLGATE_DEFAULT_UPSTREAM`, default
//! `mcp-server-time`), and one grant whose token is `TOLLGATE_TOKEN` (or a fresh random token
//! printed at start) under an allow-by-default policy with a per-minute limit. Its Raft state
//! lives in `TOLLGATE_DATA_DIR`, or in a temporary directory removed at exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tollgate_gateway::config::{Config, ProcessEnv};
use tollgate_telemetry::{LogFormat, TelemetryOptions};

use crate::EXIT_CONFIG;

mod admin;
mod local;
mod node;
mod seed;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML). Without it, the embedded single-node default runs.
    #[arg(long, short, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// What this process runs.
    #[arg(long, value_enum, default_value_t = Role::All, env = "TOLLGATE_ROLE")]
    role: Role,
    /// Control nodes to follow (role `gateway`), comma-separated `host:port`; overrides
    /// `cluster.control` and `TOLLGATE_CONTROL`.
    #[arg(long, value_delimiter = ',')]
    control: Vec<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "TOLLGATE_LOG_FORMAT")]
    log_format: Format,
}

/// What a `tollgate serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A control node and a gateway following it, in one process.
    All,
    /// A gateway following remote control nodes.
    Gateway,
    /// A control node alone.
    Control,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// The policy of the embedded default's grant.
pub const DEFAULT_POLICY: &str = r#"{"version":"1","default":"allow","all_tools":{"limits":[{"counter":"all_calls","window":"minute","max":120,"scope":"grant"}]}}"#;

fn embedded_config() -> Result<(Config, Option<String>), String> {
    let command =
        std::env::var("TOLLGATE_DEFAULT_UPSTREAM").unwrap_or_else(|_| "mcp-server-time".to_owned());
    let mut parts = command.split_whitespace();
    let program = parts.next().unwrap_or("mcp-server-time").to_owned();
    let args: Vec<String> = parts.map(str::to_owned).collect();
    let (token, generated) = match std::env::var("TOLLGATE_TOKEN") {
        Ok(token) if !token.is_empty() => (token, None),
        _ => {
            let token = tollgate_gateway::config::new_token();
            (token.clone(), Some(token))
        }
    };
    let hash: String = tollgate_gateway::config::token_hash(&token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let args = format!(
        "[{}]",
        args.iter()
            .map(|a| toml_string(a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = format!(
        r#"
[[upstreams]]
name = "time"
command = {program}
args = {args}

[[grants]]
label = "local"
token_sha256 = "{hash}"
server = "time"
policy_inline = {policy}
"#,
        program = toml_string(&program),
        policy = toml_string(DEFAULT_POLICY),
    );
    let config = Config::from_toml(&text, std::path::Path::new("."), &ProcessEnv)
        .map_err(|errors| errors.to_string())?;
    Ok((config, generated))
}

fn toml_string(s: &str) -> String {
    // A TOML basic string has JSON's escapes for the characters that matter here.
    serde_json::Value::from(s).to_string()
}

pub fn run(args: ServeArgs) -> ExitCode {
    let (mut config, generated) = match &args.config {
        Some(path) => match Config::load(path, &ProcessEnv) {
            Ok(config) => (config, None),
            Err(errors) => {
                eprintln!("tollgate: invalid configuration {}:", path.display());
                for error in &errors.0 {
                    eprintln!("  {error}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => match embedded_config() {
            Ok(pair) => pair,
            Err(error) => {
                eprintln!("tollgate: invalid embedded configuration: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    if !args.control.is_empty() {
        config.cluster.control = args.control.clone();
    }
    if let Err(problems) = check_role(args.role, &config) {
        eprintln!("tollgate: invalid configuration for role {:?}:", args.role);
        for problem in problems {
            eprintln!("  {problem}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let options = TelemetryOptions {
            log_format: match args.log_format {
                Format::Text => LogFormat::Text,
                Format::Json => LogFormat::Json,
            },
            ..TelemetryOptions::default()
        };
        let _telemetry = match tollgate_telemetry::init(&options) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("tollgate: telemetry: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let embedded = args.config.is_none();
        let result = node::serve(node::Plan {
            role: args.role,
            config,
            config_path: args.config.clone(),
            embedded,
            generated_token: generated,
        })
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(node::ServeError::Config(problem)) => {
                eprintln!("tollgate: {problem}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                eprintln!("tollgate: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// What a role needs from the file, with the path of each missing or misplaced key.
fn check_role(role: Role, config: &Config) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    match role {
        Role::Gateway => {
            if config.cluster.control.is_empty() {
                problems.push(
                    "cluster.control: role gateway needs the control nodes to follow \
                     (--control, cluster.control or TOLLGATE_CONTROL)"
                        .to_owned(),
                );
            }
            if !config.upstreams.is_empty() {
                problems.push(
                    "upstreams: a gateway takes its upstreams from the control plane; \
                     declare them on a control node or with `tollgate upstream put`"
                        .to_owned(),
                );
            }
            if !config.grants.is_empty() {
                problems.push(
                    "grants: a gateway takes its grants from the control plane; \
                     declare them on a control node or with `tollgate grant create`"
                        .to_owned(),
                );
            }
        }
        Role::Control | Role::All => {
            if config.cluster.members.len() > 1 && config.cluster.admin_token.is_none() {
                problems.push(format!(
                    "cluster.admin_token_env: a multi-node cluster needs an admin token in `{}`",
                    config.cluster.admin_token_env
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
