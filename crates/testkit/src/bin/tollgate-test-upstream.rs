//! `tollgate-test-upstream`: the testkit's MCP upstream as a process.
//!
//! ```text
//! tollgate-test-upstream --http 127.0.0.1:0 [--eras both|legacy|modern] [--json]
//!                        [--require-header NAME:VALUE] [--no-origin-check]
//! tollgate-test-upstream --stdio [--eras ...]
//! ```
//! HTTP mode prints `listening http://ADDR/mcp` on stdout once bound; logs go to stderr.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tollgate_testkit::{Eras, ResponseMode, Upstream, UpstreamOptions};

enum Mode {
    Http(SocketAddr),
    Stdio,
}

fn parse_args() -> anyhow::Result<(Mode, UpstreamOptions)> {
    let mut mode = None;
    let mut opts = UpstreamOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => {
                mode = Some(Mode::Http(
                    args.next().context("--http needs an address")?.parse()?,
                ))
            }
            "--stdio" => mode = Some(Mode::Stdio),
            "--eras" => {
                opts.eras = match args.next().as_deref() {
                    Some("both") => Eras::Both,
                    Some("legacy") => Eras::LegacyOnly,
                    Some("modern") => Eras::ModernOnly,
                    other => bail!("--eras takes both, legacy or modern, not {other:?}"),
                }
            }
            "--json" => opts.response_mode = ResponseMode::Json,
            "--no-origin-check" => opts.validate_origin = false,
            "--require-header" => {
                let spec = args.next().context("--require-header needs NAME:VALUE")?;
                let (name, value) = spec
                    .split_once(':')
                    .context("--require-header needs NAME:VALUE")?;
                opts.required_headers
                    .push((name.trim().parse()?, value.trim().parse()?));
            }
            "--name" => opts.name = args.next().context("--name needs a value")?,
            "-h" | "--help" => {
                println!(
                    "usage: tollgate-test-upstream (--http ADDR | --stdio) [--eras both|legacy|modern] [--json] [--require-header NAME:VALUE] [--no-origin-check] [--name NAME]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok((mode.context("pass --http ADDR or --stdio")?, opts))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (mode, opts) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("tollgate-test-upstream: {e:#}");
            std::process::exit(64);
        }
    };
    match mode {
        Mode::Http(addr) => {
            let running = Upstream::start_on(addr, opts).await?;
            println!("listening {}", running.url);
            tokio::signal::ctrl_c().await?;
            running.shutdown().await;
        }
        Mode::Stdio => {
            tollgate_testkit::upstream::serve_stdio(opts, tokio::io::stdin(), tokio::io::stdout())
                .await?;
        }
    }
    Ok(())
}
