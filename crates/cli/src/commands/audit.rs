//! `tollgate audit verify FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that an audit file's hash chain is intact; exit 1 and name the first broken line
    /// otherwise.
    Verify {
        /// The audit file (JSON lines).
        file: PathBuf,
    },
}

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { file } => match tollgate_gateway::audit::verify(&file) {
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                ExitCode::FAILURE
            }
            Ok(report) => match &report.first_break {
                None if report.intact => {
                    println!("{}: intact, {} records", file.display(), report.lines);
                    ExitCode::SUCCESS
                }
                None => {
                    println!("{}: not intact", file.display());
                    ExitCode::FAILURE
                }
                Some(broken) => {
                    println!(
                        "{}: chain broken at line {}: {} ({} lines read)",
                        file.display(),
                        broken.line,
                        broken.reason,
                        report.lines
                    );
                    ExitCode::FAILURE
                }
            },
        },
    }
}
