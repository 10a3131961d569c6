//! `tollgate serve [--config FILE]`
//!
//! Without `--config` the embedded single-node default runs: the data plane on 127.0.0.1:8080,
//! the admin plane on 127.0.0.1:9090, one stdio upstream named `time` (the command in
//! `TOLLGATE_DEFAULT_UPSTREAM`, default `mcp-server-time`), and one grant whose token is
//! `TOLLGATE_TOKEN` (or a fresh random token printed at start) under an allow-by-default policy
//! with a per-minute limit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tollgate_gateway::config::{Config, ProcessEnv};
use tollgate_telemetry::{LogFormat, TelemetryOptions};

use crate::EXIT_CONFIG;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML). Without it, the embedded single-node default runs.
    #[arg(long, short, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "TOLLGATE_LOG_FORMAT")]
    log_format: Format,
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
    let (config, generated) = match &args.config {
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
        let running = match tollgate_gateway::start(config).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        if args.config.is_none() {
            let url = format!("http://{}/mcp/time", running.data_addr);
            match &generated {
                Some(token) => eprintln!(
                    "tollgate: embedded default serving {url}\n          bearer token: {token}\n          (set TOLLGATE_TOKEN to choose it)"
                ),
                None => eprintln!("tollgate: embedded default serving {url} (token from TOLLGATE_TOKEN)"),
            }
        }
        match running.run_until_signalled(args.config.clone()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
