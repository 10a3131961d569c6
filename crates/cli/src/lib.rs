//! The `tollgate` command line.
//!
//! ```text
//! tollgate serve [--config FILE]        run the gateway (embedded default without a file)
//! tollgate policy validate FILE...      check policy files; every error with its JSON pointer
//! tollgate audit verify FILE            check an audit file's hash chain
//! tollgate token new|hash               make a grant token and the hash to put in the config
//!
//! control plane (over gRPC, following the Raft leader):
//! tollgate policy push --id ID FILE [--expected-version N]   store the policy's next version
//! tollgate policy history ID                                  every version, the serving one marked
//! tollgate policy rollback ID --to N                          serve version N's document again
//! tollgate policy diff ID [A [B]]                             line diff of two versions
//! tollgate grant create --label L --server S --policy P       a grant; its token shown once
//! tollgate grant list [--all] [--server S]                    grants (revoked ones with --all)
//! tollgate grant revoke ID
//! tollgate upstream put NAME (--url URL ... | --command CMD ...)
//! tollgate upstream list | remove NAME
//! tollgate cluster status                                     leader, term, members, gateways
//! tollgate cluster add ID --raft ADDR --api ADDR [--promote]
//! tollgate cluster remove ID
//!
//! every control-plane command takes:
//!   --control ADDR[,ADDR...]  (env TOLLGATE_CONTROL, default 127.0.0.1:7070)
//!   --admin-token-file PATH   (else env TOLLGATE_ADMIN_TOKEN; never a token on the command line)
//!   --timeout SECS            (default 10)   --json (one JSON document)
//! ```
//!
//! Exit codes: 0 success, 1 failure (invalid policy, broken chain, a refusal of the control
//! plane, an unreachable cluster, runtime error), 64 bad usage or bad configuration (EX_USAGE,
//! for example no admin token), 2 for argument errors reported by the parser.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a bad configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Tollgate: a policy gateway for MCP tool calls.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(commands::serve::ServeArgs),
    /// Work with policy files, and with the policies stored on the control plane.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Work with audit files.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Make grant tokens.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// Manage grants (client credentials) on the control plane.
    #[command(subcommand)]
    Grant(commands::grant::GrantCommand),
    /// Manage the upstream registry on the control plane.
    #[command(subcommand)]
    Upstream(commands::upstream::UpstreamCommand),
    /// Inspect and change the control plane's membership.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Inspect cluster-wide rate-limit counters.
    #[command(subcommand)]
    Quota(commands::quota::QuotaCommand),
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Policy(command) => commands::policy::run(command),
        Command::Audit(command) => commands::audit::run(command),
        Command::Token(command) => commands::token::run(command),
        Command::Grant(command) => commands::grant::run(command),
        Command::Upstream(command) => commands::upstream::run(command),
        Command::Cluster(command) => commands::cluster::run(command),
        Command::Quota(command) => commands::quota::run(command),
    }
}
