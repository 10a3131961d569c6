//! `tollgate token new`

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random grant token and the `token_sha256` line for the configuration.
    New,
    /// Print the `token_sha256` of a token read from standard input.
    Hash,
}

pub fn run(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::New => {
            let token = tollgate_gateway::config::new_token();
            let hash = hex_hash(&token);
            println!("token:        {token}");
            println!("token_sha256 = \"{hash}\"");
            ExitCode::SUCCESS
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            if let Err(error) = std::io::stdin().read_line(&mut token) {
                eprintln!("reading the token: {error}");
                return ExitCode::FAILURE;
            }
            println!("token_sha256 = \"{}\"", hex_hash(token.trim()));
            ExitCode::SUCCESS
        }
    }
}

fn hex_hash(token: &str) -> String {
    tollgate_gateway::config::token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
