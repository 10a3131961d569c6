//! `tollgate policy validate FILE...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tollgate_policy::Policy;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: exit 0 with a one-line summary each when all are valid; otherwise
    /// exit 1 and list every error with its JSON pointer.
    Validate {
        /// Policy files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Validate { files } => {
            let mut ok = true;
            for file in &files {
                match std::fs::read(file) {
                    Err(error) => {
                        eprintln!("{}: cannot read: {error}", file.display());
                        ok = false;
                    }
                    Ok(bytes) => match Policy::from_json(&bytes) {
                        Ok(policy) => println!("{}: {}", file.display(), policy.summary()),
                        Err(errors) => {
                            ok = false;
                            eprintln!(
                                "{}: invalid policy ({} errors)",
                                file.display(),
                                errors.0.len()
                            );
                            for error in errors.iter() {
                                eprintln!("  {error}");
                            }
                        }
                    },
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
