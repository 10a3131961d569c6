//! The `tollgate` command line.
//!
//! ```text
//! tollgate serve [--config FILE]        run the gateway (embedded default without a file)
//! tollgate policy validate FILE...      check policy files; every error with its JSON pointer
//! tollgate audit verify FILE            check an audit file's hash chain
//! tollgate token new                    make a grant token and the hash to put in the config
//! ```
//!
//! Exit codes: 0 success, 1 failure (invalid policy, broken chain, runtime error), 64 bad usage or
//! bad configuration (EX_USAGE), 2 for argument errors reported by the parser.

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
    /// Work with policy files.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Work with audit files.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Make grant tokens.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Policy(command) => commands::policy::run(command),
        Command::Audit(command) => commands::audit::run(command),
        Command::Token(command) => commands::token::run(command),
    }
}
