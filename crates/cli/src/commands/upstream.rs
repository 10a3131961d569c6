//! `tollgate upstream put|list|remove`: the registry of upstream MCP servers.
//!
//! File paths (`--tls-ca`, `--tls-client-cert`, `--tls-client-key`) are sent as given: each
//! gateway resolves them on its own machine, so certificates and keys stay there. Header values
//! can carry an upstream's credentials, so the text listing shows header names only (`--json`
//! shows the whole message); prefer `--header-env` for secrets, which replicates only the name of
//! an environment variable each gateway reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Subcommand};
use serde_json::json;
use tollgate_proto::v1::{
    HttpTransport, ListUpstreamsRequest, PutUpstreamRequest, RemoveUpstreamRequest, StdioTransport,
    TlsOptions, Upstream, upstream,
};

use super::client::{AdminClient, AdminError, CallKind, ControlArgs, block_on};
use super::output::{Table, print_json, upstream_json};

/// `tollgate upstream ...`
#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Add an upstream, or replace the one with the same name.
    #[command(group(ArgGroup::new("transport").required(true).args(["url", "command"])))]
    Put {
        /// The upstream's unique name (what grants name as their server).
        name: String,
        #[command(flatten)]
        transport: Box<TransportArgs>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List the registered upstreams.
    List {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove an upstream; grants naming it are refused until it comes back.
    Remove {
        /// The upstream's name.
        name: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// How the gateways reach the upstream: `--url ...` (Streamable HTTP) or `--command ...` (a
/// stdio child).
#[derive(Debug, clap::Args)]
pub struct TransportArgs {
    /// The MCP endpoint URL of a Streamable HTTP upstream (`http://` or `https://`).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A header added to every request to the upstream; repeatable.
    #[arg(long = "header", value_name = "K=V", conflicts_with = "command", value_parser = key_value)]
    pub headers: Vec<(String, String)>,
    /// A header whose value each gateway reads from its environment variable VAR; repeatable.
    #[arg(long = "header-env", value_name = "K=VAR", conflicts_with = "command", value_parser = key_value)]
    pub headers_from_env: Vec<(String, String)>,
    /// A PEM file of CA certificates to trust instead of the system's (a path on the gateways).
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate chain for mutual TLS (a path on the gateways).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_client_key",
        conflicts_with = "command"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-client-cert` (a path on the gateways).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_client_cert",
        conflicts_with = "command"
    )]
    pub tls_client_key: Option<PathBuf>,
    /// The program of a stdio upstream (looked up in each gateway's PATH if not absolute).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// An argument of the program; repeatable, in order.
    #[arg(
        long = "arg",
        value_name = "A",
        conflicts_with = "url",
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
    /// An environment variable for the child; repeatable.
    #[arg(long = "env", value_name = "K=V", conflicts_with = "url", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Seconds without traffic after which a gateway stops the child (0: the gateway's default).
    #[arg(long, value_name = "SECS", conflicts_with = "url")]
    pub idle_timeout: Option<u64>,
}

/// `K=V` with a non-empty `K`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Pairs into a map; a key given twice is a usage error.
fn unique(pairs: Vec<(String, String)>, flag: &str) -> Result<HashMap<String, String>, AdminError> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            return Err(AdminError::Usage(format!("{flag} {key} is given twice")));
        }
    }
    Ok(map)
}

fn path_text(path: Option<PathBuf>) -> String {
    path.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl TransportArgs {
    /// The upstream message these flags describe.
    pub fn into_upstream(self, name: String) -> Result<Upstream, AdminError> {
        let transport = match (self.url, self.command) {
            (Some(url), None) => {
                let tls =
                    (self.tls_ca.is_some() || self.tls_client_cert.is_some()).then(|| TlsOptions {
                        ca_file: path_text(self.tls_ca),
                        client_cert_file: path_text(self.tls_client_cert),
                        client_key_file: path_text(self.tls_client_key),
                    });
                upstream::Transport::Http(HttpTransport {
                    url,
                    headers: unique(self.headers, "--header")?,
                    headers_from_env: unique(self.headers_from_env, "--header-env")?,
                    tls,
                })
            }
            (None, Some(command)) => upstream::Transport::Stdio(StdioTransport {
                command,
                args: self.args,
                env: unique(self.env, "--env")?,
                idle_timeout_secs: self.idle_timeout.unwrap_or(0),
            }),
            _ => {
                return Err(AdminError::Usage(
                    "give exactly one of --url and --command".to_owned(),
                ));
            }
        };
        Ok(Upstream {
            name,
            transport: Some(transport),
        })
    }
}

/// Run an `upstream` subcommand.
pub fn run(command: UpstreamCommand) -> ExitCode {
    match command {
        UpstreamCommand::Put {
            name,
            transport,
            control,
        } => block_on(put(name, *transport, control)),
        UpstreamCommand::List { control } => block_on(list(control)),
        UpstreamCommand::Remove { name, control } => block_on(remove(name, control)),
    }
}

async fn put(
    name: String,
    transport: TransportArgs,
    control: ControlArgs,
) -> Result<ExitCode, AdminError> {
    let upstream = transport.into_upstream(name.clone())?;
    let client = AdminClient::new(&control)?;
    let request = PutUpstreamRequest {
        upstream: Some(upstream),
    };
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.put_upstream(request).await }
        })
        .await?;
    if control.json {
        print_json(&json!({
            "name": name,
            "replaced": response.replaced,
            "revision": response.revision,
        }));
    } else {
        println!(
            "upstream {name}: {}, revision {}",
            if response.replaced {
                "replaced"
            } else {
                "added"
            },
            response.revision
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `TARGET` and `DETAILS` cells of one upstream (header names only, never values).
fn describe(up: &Upstream) -> (&'static str, String, String) {
    let sorted_keys = |map: &HashMap<String, String>| {
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys.join(",")
    };
    match &up.transport {
        Some(upstream::Transport::Http(http)) => {
            let mut details = Vec::new();
            if !http.headers.is_empty() {
                details.push(format!("headers={}", sorted_keys(&http.headers)));
            }
            if !http.headers_from_env.is_empty() {
                let mut pairs: Vec<String> = http
                    .headers_from_env
                    .iter()
                    .map(|(k, v)| format!("{k}<${v}"))
                    .collect();
                pairs.sort();
                details.push(format!("headers-env={}", pairs.join(",")));
            }
            if let Some(tls) = &http.tls {
                if !tls.ca_file.is_empty() {
                    details.push(format!("tls-ca={}", tls.ca_file));
                }
                if !tls.client_cert_file.is_empty() {
                    details.push(format!("tls-client-cert={}", tls.client_cert_file));
                }
            }
            ("http", http.url.clone(), details.join(" "))
        }
        Some(upstream::Transport::Stdio(stdio)) => {
            let mut target = stdio.command.clone();
            for arg in &stdio.args {
                target.push(' ');
                target.push_str(arg);
            }
            let mut details = Vec::new();
            if !stdio.env.is_empty() {
                details.push(format!("env={}", sorted_keys(&stdio.env)));
            }
            if stdio.idle_timeout_secs != 0 {
                details.push(format!("idle-timeout={}s", stdio.idle_timeout_secs));
            }
            ("stdio", target, details.join(" "))
        }
        None => ("-", String::new(), String::new()),
    }
}

async fn list(control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Read, |mut admin| async move {
            admin.list_upstreams(ListUpstreamsRequest {}).await
        })
        .await?;
    if control.json {
        print_json(&json!({
            "upstreams": response.upstreams.iter().map(upstream_json).collect::<Vec<_>>(),
            "revision": response.revision,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "TRANSPORT", "TARGET", "DETAILS"]);
    for up in &response.upstreams {
        let (transport, target, details) = describe(up);
        table.row(vec![up.name.clone(), transport.to_owned(), target, details]);
    }
    if table.is_empty() {
        println!("no upstreams (revision {})", response.revision);
    } else {
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(name: String, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let request = RemoveUpstreamRequest { name: name.clone() };
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.remove_upstream(request).await }
        })
        .await?;
    if control.json {
        print_json(&json!({ "name": name, "revision": response.revision }));
    } else {
        println!("upstream {name}: removed, revision {}", response.revision);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Put {
        #[command(subcommand)]
        command: UpstreamCommand,
    }

    fn parse(args: &[&str]) -> Result<Upstream, String> {
        let put = Put::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let UpstreamCommand::Put {
            name, transport, ..
        } = put.command
        else {
            panic!("not a put");
        };
        transport.into_upstream(name).map_err(|e| e.to_string())
    }

    #[test]
    fn http_flags_make_an_http_transport_with_headers_and_tls_paths() {
        let up = parse(&[
            "put",
            "files",
            "--url",
            "https://files.internal/mcp",
            "--header",
            "x-api-key=k=v",
            "--header-env",
            "authorization=FILES_TOKEN",
            "--tls-ca",
            "/etc/ca.pem",
        ])
        .unwrap();
        let Some(upstream::Transport::Http(http)) = up.transport else {
            panic!("not http: {up:?}");
        };
        assert_eq!(http.headers["x-api-key"], "k=v");
        assert_eq!(http.headers_from_env["authorization"], "FILES_TOKEN");
        assert_eq!(http.tls.unwrap().ca_file, "/etc/ca.pem");
    }

    #[test]
    fn stdio_flags_keep_argument_order_and_hyphenated_arguments() {
        let up = parse(&[
            "put",
            "time",
            "--command",
            "mcp-server-time",
            "--arg",
            "--local-timezone",
            "--arg",
            "UTC",
            "--env",
            "LANG=C",
            "--idle-timeout",
            "300",
        ])
        .unwrap();
        let Some(upstream::Transport::Stdio(stdio)) = up.transport else {
            panic!("not stdio: {up:?}");
        };
        assert_eq!(stdio.args, ["--local-timezone", "UTC"]);
        assert_eq!(stdio.env["LANG"], "C");
        assert_eq!(stdio.idle_timeout_secs, 300);
    }

    #[test]
    fn mixing_or_omitting_transports_and_half_a_client_certificate_are_refused() {
        assert!(parse(&["put", "x"]).is_err());
        assert!(parse(&["put", "x", "--url", "http://a", "--command", "b"]).is_err());
        assert!(parse(&["put", "x", "--command", "b", "--header", "a=b"]).is_err());
        assert!(parse(&["put", "x", "--url", "http://a", "--tls-client-cert", "c"]).is_err());
        assert!(parse(&["put", "x", "--url", "http://a", "--header", "novalue"]).is_err());
        let twice = parse(&[
            "put", "x", "--url", "http://a", "--header", "a=1", "--header", "a=2",
        ])
        .unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
    }
}
