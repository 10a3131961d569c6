//! The servers under test, each a real process guarded by PID.
//!
//! ```text
//!   proxy-latency (load) ──▶ tollgate serve --config DIR/tollgate.toml ──▶ upstream process
//!                 └───────────────────────── direct ─────────────────────▶ (same upstream)
//! ```
//! The gateway does not print the ports it bound, so the bench picks them: it binds
//! `127.0.0.1:0`, reads the port the kernel chose, closes the socket and writes the port into the
//! configuration. Another process could take the port in between (a small race on a shared
//! machine); the gateway then fails to start and the bench says so, and a second run picks new
//! ports.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::StatusCode;
use nix::sys::signal::Signal;
use serde_json::Value;
use tollgate_testkit::{ChildGuard, wait_for, wait_for_async};

use crate::load;

/// The upstream's name in the gateway (`/mcp/fast`).
pub const SERVER: &str = "fast";

/// A grant of the bench's gateway configuration.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// The grant's label (and the target's name in the report).
    pub label: &'static str,
    /// The environment variable the gateway reads the token from.
    pub env: &'static str,
    /// The bearer token.
    pub token: &'static str,
}

/// `{"version":"1","default":"allow"}`.
pub const ALLOW_ALL: Grant = Grant {
    label: "allow-all",
    env: "BENCH_TOKEN_ALLOW_ALL",
    token: "bench-allow-all-token-0001",
};
/// The seed's policy with a limit too high to refuse.
pub const SEED_SHAPED: Grant = Grant {
    label: "seed-shaped",
    env: "BENCH_TOKEN_SEED_SHAPED",
    token: "bench-seed-shaped-token-0002",
};
/// The seed's policy, unchanged.
pub const SEED: Grant = Grant {
    label: "seed",
    env: "BENCH_TOKEN_SEED",
    token: "bench-seed-token-0003",
};

/// An upstream process that prints `listening http://ADDR/mcp` once bound.
pub struct UpstreamProcess {
    guard: ChildGuard,
    /// The URL it serves MCP at.
    pub url: String,
}

impl UpstreamProcess {
    /// Starts `command` and waits for its `listening` line.
    pub fn start(mut command: Command) -> anyhow::Result<Self> {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(&mut command)?;
        let stdout = guard
            .child_mut()
            .and_then(|child| child.stdout.take())
            .context("upstream has no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the upstream did not say where it listens")?;
        let url = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("unexpected first line from the upstream: {line:?}"))?
            .to_owned();
        Ok(Self { guard, url })
    }

    /// The upstream's PID.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The address in its URL.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        let rest = self
            .url
            .strip_prefix("http://")
            .context("the upstream URL is not http://")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        authority
            .parse()
            .with_context(|| format!("the upstream URL {} has no IP:port", self.url))
    }

    /// The path in its URL.
    pub fn path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.find('/').map_or("/", |at| &rest[at..])
    }
}

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `tollgate` binary (release build).
    pub tollgate: PathBuf,
    /// A command the gateway runs under (e.g. `valgrind --tool=callgrind`), possibly empty.
    pub wrapper: Vec<String>,
    /// The upstream's MCP URL.
    pub upstream_url: String,
    /// The seed's policy file.
    pub seed_policy: PathBuf,
    /// The `max` of every limit in the seed-shaped policy.
    pub seed_shaped_max: u64,
    /// The directory for the configuration, policies, audit file and log.
    pub dir: PathBuf,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
    /// Whether the audit file is on (it is, except to measure what it costs).
    pub audit: bool,
}

/// The running gateway.
pub struct GatewayProcess {
    guard: ChildGuard,
    /// Data-plane address.
    pub data: SocketAddr,
    /// Admin address (`/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Its audit file.
    pub audit: PathBuf,
}

impl GatewayProcess {
    /// Writes the configuration, starts `tollgate serve` and waits until `/readyz` answers 200.
    pub async fn start(spec: &GatewaySpec) -> anyhow::Result<Self> {
        let data = free_port()?;
        let admin = free_port()?;
        let seed_text = std::fs::read_to_string(&spec.seed_policy)
            .with_context(|| format!("reading {}", spec.seed_policy.display()))?;
        let mut shaped: Value = serde_json::from_str(&seed_text)
            .with_context(|| format!("parsing {}", spec.seed_policy.display()))?;
        let raised = raise_limits(&mut shaped, spec.seed_shaped_max);
        anyhow::ensure!(raised > 0, "the seed policy has no limit to raise");
        let shaped_path = spec.dir.join("seed-shaped.json");
        std::fs::write(&shaped_path, serde_json::to_string(&shaped)?)?;
        let seed_path = spec.dir.join("seed.json");
        std::fs::write(&seed_path, &seed_text)?;
        let audit = spec.dir.join("audit.jsonl");
        let config = config_text(data, admin, &spec.upstream_url, spec.audit)?;
        let config_path = spec.dir.join("tollgate.toml");
        std::fs::write(&config_path, config)?;

        let log = spec.dir.join("tollgate.log");
        let log_file = std::fs::File::create(&log)?;
        let mut command = match spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&spec.tollgate);
                command
            }
            None => Command::new(&spec.tollgate),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        for grant in [ALLOW_ALL, SEED_SHAPED, SEED] {
            command.env(grant.env, grant.token);
        }
        let mut guard = ChildGuard::spawn(&mut command)?;
        let ready = wait_for_async(spec.ready_timeout, || async {
            matches!(load::get(admin, "/readyz").await, Ok((StatusCode::OK, _)))
        })
        .await;
        if let Err(error) = ready {
            let exited = guard.has_exited();
            let tail = log_tail(&log);
            bail!(
                "the gateway is not ready ({error}; exited: {exited}; a port may have been \
                 taken between the bench's pick and the gateway's bind). Its log:\n{tail}"
            );
        }
        Ok(Self {
            guard,
            data,
            admin,
            log,
            audit,
        })
    }

    /// The gateway's PID (the wrapper's, when it runs under one).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The sum of every sample of the Prometheus metric family `name` in `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = load::get(self.admin, "/metrics").await?;
        anyhow::ensure!(status == StatusCode::OK, "/metrics answered {status}");
        Ok(sum_metric(&String::from_utf8_lossy(&body), name))
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (the audit file is flushed then);
    /// SIGKILL after that. Says whether it exited by itself.
    pub async fn stop(mut self, grace: Duration) -> bool {
        if self.guard.signal(Signal::SIGTERM).is_err() {
            return false;
        }
        let guard = &mut self.guard;
        wait_for(grace, || guard.has_exited()).await.is_ok()
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Sets `max` of every limit (any object in a `limits` array) to `max`; returns how many.
fn raise_limits(policy: &mut Value, max: u64) -> usize {
    match policy {
        Value::Object(map) => {
            let mut raised = 0;
            for (key, value) in map.iter_mut() {
                if key == "limits"
                    && let Value::Array(limits) = value
                {
                    for limit in limits.iter_mut() {
                        if let Some(slot) = limit.get_mut("max") {
                            *slot = Value::from(max);
                            raised += 1;
                        }
                    }
                } else {
                    raised += raise_limits(value, max);
                }
            }
            raised
        }
        Value::Array(items) => items.iter_mut().map(|item| raise_limits(item, max)).sum(),
        _ => 0,
    }
}

/// The gateway's configuration: one HTTP upstream, one grant per policy, the audit file on.
fn config_text(
    data: SocketAddr,
    admin: SocketAddr,
    upstream_url: &str,
    audit: bool,
) -> anyhow::Result<String> {
    let mut text = format!(
        "# Written by proxy-latency.\nnode_id = \"bench\"\n\n[listen]\ndata = \"{data}\"\n\
         admin = \"{admin}\"\n\n\
         # Role `all` runs a one-node control plane too: its ports are picked by the kernel.\n\
         [cluster]\napi_listen = \"127.0.0.1:0\"\nraft_listen = \"127.0.0.1:0\"\n\
         data_dir = \"tollgate-data\"\n\n"
    );
    if audit {
        text.push_str("[audit]\npath = \"audit.jsonl\"\n\n");
    }
    text.push_str(&format!(
        "[[upstreams]]\nname = \"{SERVER}\"\nurl = {}\n",
        toml_string(upstream_url)?
    ));
    for (grant, policy) in [
        (
            ALLOW_ALL,
            r#"policy_inline = '{"version":"1","default":"allow"}'"#,
        ),
        (SEED_SHAPED, r#"policy = "seed-shaped.json""#),
        (SEED, r#"policy = "seed.json""#),
    ] {
        text.push_str(&format!(
            "\n[[grants]]\nlabel = \"{}\"\ntoken_env = \"{}\"\nserver = \"{SERVER}\"\n{policy}\n",
            grant.label, grant.env
        ));
    }
    Ok(text)
}

/// A TOML basic string.
fn toml_string(value: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !value.chars().any(char::is_control),
        "control character in {value:?}"
    );
    Ok(format!(
        "\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let family = series.split('{').next()?;
            (family == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_seed_shaped_policy_is_the_seed_with_every_max_raised() {
        let mut seed: Value = serde_json::from_str(
            r#"{"version":"1","default":"deny","tools":{"run-rerun":{"limits":[
                {"counter":"run-rerun_rate","window":"minute","max":10,"scope":"grant"}]}}}"#,
        )
        .unwrap();
        assert_eq!(raise_limits(&mut seed, 100_000_000), 1);
        assert_eq!(
            seed,
            json!({"version":"1","default":"deny","tools":{"run-rerun":{"limits":[
                {"counter":"run-rerun_rate","window":"minute","max":100_000_000,"scope":"grant"}]}}})
        );
    }

    #[test]
    fn the_configuration_names_one_upstream_and_three_grants() {
        let text = config_text(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "http://127.0.0.1:3/mcp",
            true,
        )
        .unwrap();
        assert_eq!(text.matches("[[upstreams]]").count(), 1);
        assert_eq!(text.matches("[[grants]]").count(), 3);
        assert!(text.contains("url = \"http://127.0.0.1:3/mcp\""));
        assert!(text.contains("[audit]\npath = \"audit.jsonl\""));
    }

    #[test]
    fn metric_families_are_summed_over_their_labels() {
        let text = "# TYPE tollgate_requests counter\n\
                    tollgate_requests_total{method=\"tools/call\",decision=\"allow\"} 3\n\
                    tollgate_requests_total{method=\"tools/call\",decision=\"deny\"} 2\n\
                    tollgate_requests_other_total 9\n";
        assert_eq!(sum_metric(text, "tollgate_requests_total"), 5.0);
        assert_eq!(sum_metric(text, "tollgate_audit_dropped_total"), 0.0);
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(toml_string("a\nb").is_err());
    }
}
