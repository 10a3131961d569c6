//! The control-plane commands against an in-process 3-node cluster: the real binary, pointed at a
//! follower, so that every write follows the leader's address in `tollgate-leader`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tollgate_control::{AdminToken, ControlNode, ControlOptions};
use tollgate_raft::PeerNode;
use tracing::info;

const ADMIN_TOKEN: &str = "admin-s3cret";
const WAIT: Duration = Duration::from_secs(20);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

struct Cluster {
    nodes: Vec<ControlNode>,
    leader: u64,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=3u64 {
            let raft = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.push((
                id,
                PeerNode {
                    raft_addr: raft.local_addr().unwrap().to_string(),
                    api_addr: api.local_addr().unwrap().to_string(),
                },
            ));
            listeners.push((id, raft, api));
        }
        let mut nodes = Vec::new();
        for (id, raft_listener, api_listener) in listeners {
            let node = ControlNode::start(ControlOptions {
                id,
                data_dir: dir.path().join(format!("node-{id}")),
                raft_listener,
                api_listener,
                members: members.clone(),
                admin_token: AdminToken::new(ADMIN_TOKEN).unwrap(),
            })
            .await
            .unwrap();
            nodes.push(node);
        }
        let metrics = nodes[0]
            .node()
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .unwrap();
        let leader = metrics.current_leader.unwrap();
        for node in &nodes {
            node.node()
                .raft()
                .wait(Some(WAIT))
                .current_leader(leader, "every node follows the same leader")
                .await
                .unwrap();
        }
        info!(leader, "--- cluster up");
        Self {
            nodes,
            leader,
            _dir: dir,
        }
    }

    fn follower(&self) -> String {
        self.nodes
            .iter()
            .find(|n| n.node().id() != self.leader)
            .unwrap()
            .api_addr()
            .to_string()
    }

    /// Wait until every node has applied what the leader has, so that a read from the follower
    /// sees the writes made before it.
    async fn settle(&self) {
        let leader = self
            .nodes
            .iter()
            .find(|n| n.node().id() == self.leader)
            .unwrap();
        let applied = leader
            .node()
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index);
        for node in &self.nodes {
            node.node()
                .raft()
                .wait(Some(WAIT))
                .applied_index_at_least(applied, "every node applied the leader's writes")
                .await
                .unwrap();
        }
    }

    async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// Run the binary with the admin token in its environment and `--control` first.
async fn tollgate(control: &str, args: &[&str]) -> Output {
    tollgate_with(control, args, Some(ADMIN_TOKEN)).await
}

async fn tollgate_with(control: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .args(["--control", control])
        .env_remove("TOLLGATE_CONTROL")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("TOLLGATE_ADMIN_TOKEN", token);
    }
    tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("tollgate {args:?} did not finish"))
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A port nothing listens on.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_pushed_listed_diffed_and_rolled_back_through_a_follower() {
    let cluster = Cluster::start().await;
    let control = cluster.follower();
    let files = tempfile::tempdir().unwrap();
    let seed_text = std::fs::read_to_string(examples().join("policies/seed.json")).unwrap();
    let seed = write(files.path(), "seed.json", &seed_text);
    let reformatted = write(
        files.path(),
        "reformatted.json",
        &serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&seed_text).unwrap(),
        )
        .unwrap(),
    );
    let raised = write(
        files.path(),
        "raised.json",
        &seed_text.replace("\"max\":10", "\"max\":20"),
    );
    assert_ne!(seed_text, std::fs::read_to_string(&raised).unwrap());
    let bad = write(
        files.path(),
        "bad.json",
        r#"{"version":"1","default":"perhaps","tools":{"run-rerun":{"limits":[{"counter":"c","window":"fortnight","max":0,"scope":"grant"}]}}}"#,
    );

    info!("--- push the first version");
    let out = assert_ok(
        &tollgate(
            &control,
            &["policy", "push", "--id", "seed", seed.to_str().unwrap()],
        )
        .await,
    );
    assert!(
        out.starts_with("policy seed: version 1 serving (sha256:") && out.contains("revision"),
        "{out}"
    );

    info!("--- the same document, formatted differently, is unchanged");
    let out = assert_ok(
        &tollgate(
            &control,
            &[
                "policy",
                "push",
                "--id",
                "seed",
                reformatted.to_str().unwrap(),
            ],
        )
        .await,
    );
    assert!(
        out.contains("unchanged") && out.contains("version 1"),
        "{out}"
    );

    info!("--- a second version");
    let out = assert_ok(
        &tollgate(
            &control,
            &["policy", "push", "--id", "seed", raised.to_str().unwrap()],
        )
        .await,
    );
    assert!(out.starts_with("policy seed: version 2 serving"), "{out}");

    info!("--- a refused document names every pointer and changes nothing");
    let output = tollgate(
        &control,
        &["policy", "push", "--id", "seed", bad.to_str().unwrap()],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let err = stderr(&output);
    for pointer in [
        "  /default: ",
        "  /tools/run-rerun/limits/0/window: ",
        "  /tools/run-rerun/limits/0/max: ",
    ] {
        assert!(err.contains(pointer), "{pointer} missing from {err}");
    }

    info!("--- a stale expected version is refused");
    let output = tollgate(
        &control,
        &[
            "policy",
            "push",
            "--id",
            "seed",
            "--expected-version",
            "1",
            seed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("failed precondition"),
        "{}",
        stderr(&output)
    );

    cluster.settle().await;
    info!("--- history shows two versions, the second serving");
    let out = assert_ok(&tollgate(&control, &["policy", "history", "seed"]).await);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][0], "1");
    assert_eq!(rows[1][0], "2");
    assert_eq!(rows[1].last(), Some(&"*"), "{out}");
    assert_ne!(rows[0].last(), Some(&"*"), "{out}");

    info!("--- diff: the version before serving against serving");
    let out = assert_ok(&tollgate(&control, &["policy", "diff", "seed"]).await);
    assert!(out.contains("--- seed version 1 (sha256:"), "{out}");
    assert!(out.contains("+++ seed version 2 (sha256:"), "{out}");
    let removed: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let added: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(removed.len(), 1, "{out}");
    assert_eq!(added.len(), 1, "{out}");
    assert!(removed[0].contains("\"max\": 10"), "{out}");
    assert!(added[0].contains("\"max\": 20"), "{out}");

    info!("--- roll back to version 1");
    let out = assert_ok(&tollgate(&control, &["policy", "rollback", "seed", "--to", "1"]).await);
    assert!(out.starts_with("policy seed: version 3 serving"), "{out}");
    cluster.settle().await;
    let out = assert_ok(&tollgate(&control, &["policy", "history", "seed", "--json"]).await);
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history["serving_version"], 3);
    assert_eq!(history["versions"][2]["rolled_back_from"], 1);
    assert_eq!(
        history["versions"][2]["digest"],
        history["versions"][0]["digest"]
    );
    let out = assert_ok(&tollgate(&control, &["policy", "diff", "seed", "1", "3"]).await);
    assert!(out.contains("same document"), "{out}");

    info!("--- an unknown policy is not found");
    let output = tollgate(&control, &["policy", "history", "nope"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not found"), "{}", stderr(&output));

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_upstreams_are_managed_through_a_follower() {
    let cluster = Cluster::start().await;
    let control = cluster.follower();
    let seed = examples().join("policies/seed.json");

    info!("--- register two upstreams and a policy");
    let out = assert_ok(
        &tollgate(
            &control,
            &[
                "upstream",
                "put",
                "files",
                "--url",
                "http://127.0.0.1:9/mcp",
                "--header",
                "x-api-key=very-secret-value",
                "--header-env",
                "authorization=FILES_TOKEN",
            ],
        )
        .await,
    );
    assert!(out.starts_with("upstream files: added"), "{out}");
    let out = assert_ok(
        &tollgate(
            &control,
            &[
                "upstream",
                "put",
                "time",
                "--command",
                "mcp-server-time",
                "--arg",
                "--local-timezone",
                "--arg",
                "UTC",
            ],
        )
        .await,
    );
    assert!(out.starts_with("upstream time: added"), "{out}");
    let out = assert_ok(
        &tollgate(
            &control,
            &[
                "upstream",
                "put",
                "time",
                "--command",
                "mcp-server-time",
                "--idle-timeout",
                "30",
            ],
        )
        .await,
    );
    assert!(out.starts_with("upstream time: replaced"), "{out}");
    assert_ok(
        &tollgate(
            &control,
            &["policy", "push", "--id", "seed", seed.to_str().unwrap()],
        )
        .await,
    );

    cluster.settle().await;
    let out = assert_ok(&tollgate(&control, &["upstream", "list"]).await);
    assert!(
        out.contains("files") && out.contains("http://127.0.0.1:9/mcp"),
        "{out}"
    );
    assert!(
        out.contains("time") && out.contains("idle-timeout=30s"),
        "{out}"
    );
    assert!(
        !out.contains("very-secret-value"),
        "header values stay out of the table: {out}"
    );
    let out = assert_ok(&tollgate(&control, &["upstream", "list", "--json"]).await);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files = listed["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "files")
        .unwrap();
    assert_eq!(
        files["http"]["headers_from_env"]["authorization"],
        "FILES_TOKEN"
    );

    info!("--- create a grant: the token is shown once and its hash is what is listed");
    let output = tollgate(
        &control,
        &[
            "grant", "create", "--label", "agent-1", "--server", "files", "--policy", "seed",
        ],
    )
    .await;
    let out = assert_ok(&output);
    assert!(
        stderr(&output).contains("shown once"),
        "{}",
        stderr(&output)
    );
    let id = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("grant ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .trim()
        .to_owned();
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cluster.settle().await;
    let out = assert_ok(&tollgate(&control, &["grant", "list"]).await);
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in {out}"));
    assert!(row.contains(&hash) && row.contains("active"), "{row}");
    assert!(!out.contains(&token), "the token is never listed: {out}");
    let out = assert_ok(&tollgate(&control, &["grant", "list", "--server", "time"]).await);
    assert!(!out.contains(&id), "{out}");

    info!("--- a grant for an unknown upstream is refused");
    let output = tollgate(
        &control,
        &[
            "grant", "create", "--label", "x", "--server", "nope", "--policy", "seed",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not found"), "{}", stderr(&output));

    info!("--- revoke: listed only with --all");
    let out = assert_ok(&tollgate(&control, &["grant", "revoke", &id]).await);
    assert!(out.contains("revoked"), "{out}");
    let out = assert_ok(&tollgate(&control, &["grant", "revoke", &id]).await);
    assert!(out.contains("already revoked"), "{out}");
    cluster.settle().await;
    let out = assert_ok(&tollgate(&control, &["grant", "list"]).await);
    assert!(!out.contains(&id), "{out}");
    let out = assert_ok(&tollgate(&control, &["grant", "list", "--all", "--json"]).await);
    let grants: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grant = grants["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap();
    assert_eq!(grant["revoked"], true);
    assert_eq!(grant["token_sha256"], hash.as_str());

    info!("--- remove an upstream");
    assert_ok(&tollgate(&control, &["upstream", "remove", "time"]).await);
    cluster.settle().await;
    let out = assert_ok(&tollgate(&control, &["upstream", "list"]).await);
    assert!(
        !out.contains("mcp-server-time") && out.contains("files"),
        "{out}"
    );
    let output = tollgate(&control, &["upstream", "remove", "time"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not found"), "{}", stderr(&output));

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_auth_and_address_fallback() {
    let cluster = Cluster::start().await;
    let control = cluster.follower();

    info!("--- status as text and as json");
    let out = assert_ok(&tollgate(&control, &["cluster", "status"]).await);
    let leader_line = out.lines().find(|l| l.starts_with("leader")).unwrap();
    assert!(leader_line.contains(&cluster.leader.to_string()), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("voter")).count(),
        3,
        "{out}"
    );
    assert!(out.contains("voter (leader)"), "{out}");
    let out = assert_ok(&tollgate(&control, &["cluster", "status", "--json"]).await);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["leader_id"], cluster.leader);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_ne!(status["node_id"], cluster.leader, "the follower answered");

    info!("--- a wrong admin token is refused with exit 1");
    let output = tollgate_with(&control, &["cluster", "status"], Some("wrong")).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("unauthenticated") && err.contains("TOLLGATE_ADMIN_TOKEN"),
        "{err}"
    );

    info!("--- no admin token at all is a usage error");
    let output = tollgate_with(&control, &["cluster", "status"], None).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("TOLLGATE_ADMIN_TOKEN"),
        "{}",
        stderr(&output)
    );

    info!("--- the token from a file");
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(dir.path(), "token", &format!("{ADMIN_TOKEN}\n"));
    let output = tollgate_with(
        &control,
        &[
            "cluster",
            "status",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_ok(&output);

    info!("--- an unreachable first address falls through to the next, for reads and writes");
    let dead = dead_address().await;
    let both = format!("{dead},{control}");
    assert_ok(&tollgate(&both, &["cluster", "status"]).await);
    let out = assert_ok(
        &tollgate(
            &both,
            &[
                "upstream",
                "put",
                "files",
                "--url",
                "http://127.0.0.1:9/mcp",
            ],
        )
        .await,
    );
    assert!(out.contains("added"), "{out}");

    info!("--- only unreachable addresses: exit 1 naming them");
    let output = tollgate(&dead, &["cluster", "status"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(&dead), "{}", stderr(&output));

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_out_the_election_after_the_leader_stops() {
    let mut cluster = Cluster::start().await;
    let followers: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.node().id() != cluster.leader)
        .map(|n| n.api_addr().to_string())
        .collect();
    let control = followers.join(",");

    info!("--- stop the leader: followers name it (unreachable) or no leader until one is elected");
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.node().id() == cluster.leader)
        .unwrap();
    let old_leader = cluster.nodes.remove(index);
    old_leader.shutdown().await;

    let out = assert_ok(
        &tollgate(
            &control,
            &[
                "upstream",
                "put",
                "files",
                "--url",
                "http://127.0.0.1:9/mcp",
                "--timeout",
                "30",
            ],
        )
        .await,
    );
    assert!(out.starts_with("upstream files: added"), "{out}");
    let out = assert_ok(&tollgate(&control, &["cluster", "status", "--json"]).await);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(status["leader_id"], cluster.leader, "a new leader: {out}");
    assert_ne!(status["leader_id"], 0, "{out}");

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_show_reports_a_key_leased_through_a_session() {
    use tollgate_proto::v1::quota_service_client::QuotaServiceClient;
    use tollgate_proto::v1::{QuotaDemand, QuotaHello, QuotaUp, QuotaWindow};
    let cluster = Cluster::start().await;
    let leader = cluster
        .nodes
        .iter()
        .find(|n| n.node().id() == cluster.leader)
        .unwrap()
        .api_addr();
    let key = "grant:g_cli/run-rerun_rate";

    info!("--- a gateway session leases 4 tokens of a 10-per-minute key");
    let mut quota = QuotaServiceClient::connect(format!("http://{leader}"))
        .await
        .unwrap();
    let (up, rx) = tokio::sync::mpsc::channel(4);
    up.send(QuotaUp {
        hello: Some(QuotaHello {
            gateway_id: "gw-cli".into(),
            epoch: 1,
        }),
        seq: 1,
        demands: vec![QuotaDemand {
            demand_id: 1,
            key: key.into(),
            window: QuotaWindow::Minute as i32,
            max: 10,
            want: 4,
            sync: true,
        }],
        reports: vec![],
    })
    .await
    .unwrap();
    let mut down = quota
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Acknowledgements may come first; wait for the message that answers the demand.
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let message = down.message().await.unwrap().unwrap();
            if !message.leases.is_empty() || !message.refusals.is_empty() {
                return message;
            }
        }
    })
    .await
    .expect("the demand is answered");
    let leased: u64 = answer.leases.iter().map(|l| l.tokens).sum();
    assert!((1..=4).contains(&leased), "{answer:?}");

    info!("--- tollgate quota show, on the leader, names the limit and what is leased");
    let shown = assert_ok(&tollgate(&leader.to_string(), &["quota", "show", key, "--json"]).await);
    let value: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let window = &value["windows"][0];
    assert_eq!(window["window"], "minute", "{value}");
    assert_eq!(window["max"], 10, "{value}");
    assert_eq!(window["leased"], leased, "{value}");
    assert!(window["outstanding"].as_u64().unwrap() >= leased, "{value}");
    let text = assert_ok(&tollgate(&leader.to_string(), &["quota", "show", key]).await);
    assert!(text.starts_with(key) && text.contains("LEASED"), "{text}");
    let unknown = assert_ok(&tollgate(&leader.to_string(), &["quota", "show", "nope"]).await);
    assert!(unknown.contains("no live window"), "{unknown}");
    drop(up);
    cluster.shutdown().await;
}
