//! `tollgate cluster status|add|remove`: the control plane's Raft membership, and the gateways
//! following the answering node.
//!
//! `status` is a read: it shows the cluster as the node that answered sees it (matched indexes
//! are known only on the leader, so point `--control` at the leader to see replication).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tollgate_proto::v1::{
    AddNodeRequest, ClusterMember, ClusterStatusRequest, ClusterStatusResponse, RemoveNodeRequest,
};

use super::client::{AdminClient, AdminError, CallKind, ControlArgs, block_on};
use super::output::{Table, gateway_json, member_json, members_table, print_json, rfc3339_ms};

/// `tollgate cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, term, applied index, revision, members and following gateways.
    Status {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Add a control node as a learner, or with --promote make it a voter.
    Add {
        /// The node's Raft id (non-zero).
        id: u64,
        /// Its Raft peer address (`host:port`).
        #[arg(long, value_name = "ADDR")]
        raft: String,
        /// Its public API address (`host:port`).
        #[arg(long, value_name = "ADDR")]
        api: String,
        /// Make it a voter once it has caught up (adding it as a learner first if needed).
        #[arg(long)]
        promote: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove a control node (learner or voter); the last voter cannot be removed.
    Remove {
        /// The node's Raft id.
        id: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Run a `cluster` subcommand.
pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Status { control } => block_on(status(control)),
        ClusterCommand::Add {
            id,
            raft,
            api,
            promote,
            control,
        } => block_on(add(
            AddNodeRequest {
                node_id: id,
                raft_addr: raft,
                api_addr: api,
                promote,
            },
            control,
        )),
        ClusterCommand::Remove { id, control } => block_on(remove(id, control)),
    }
}

fn status_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "node_id": status.node_id,
        "leader_id": status.leader_id,
        "leader_api_addr": status.leader_api_addr,
        "term": status.term,
        "applied_index": status.applied_index,
        "revision": status.revision,
        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
        "gateways": status.gateways.iter().map(|g| {
            let mut value = gateway_json(g);
            value["lag"] = json!(status.revision.saturating_sub(g.revision));
            value
        }).collect::<Vec<_>>(),
    })
}

fn status_text(status: &ClusterStatusResponse) -> String {
    let leader = match (status.leader_id, status.leader_api_addr.as_str()) {
        (0, _) => "none known (an election may be under way)".to_owned(),
        (id, "") => id.to_string(),
        (id, addr) => format!("{id} (api {addr})"),
    };
    let mut summary = Table::new(&["", ""]);
    for (key, value) in [
        ("node", status.node_id.to_string()),
        ("leader", leader),
        ("term", status.term.to_string()),
        ("applied index", status.applied_index.to_string()),
        ("revision", status.revision.to_string()),
    ] {
        summary.row(vec![key.to_owned(), value]);
    }
    // The empty header line of the summary is dropped.
    let mut out: String = summary
        .render()
        .lines()
        .skip(1)
        .map(|line| format!("{line}\n"))
        .collect();
    out.push('\n');
    out.push_str(&members_table(&status.members, status.leader_id).render());
    out.push('\n');
    if status.gateways.is_empty() {
        out.push_str("no gateways are watching this node\n");
    } else {
        let mut gateways = Table::new(&["GATEWAY", "REVISION", "LAG", "SERVED BY", "LAST SEEN"]);
        for g in &status.gateways {
            gateways.row(vec![
                g.gateway_id.clone(),
                g.revision.to_string(),
                status.revision.saturating_sub(g.revision).to_string(),
                g.served_by_node_id.to_string(),
                rfc3339_ms(g.last_seen_unix_ms),
            ]);
        }
        out.push_str(&gateways.render());
    }
    out
}

async fn status(control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Read, |mut admin| async move {
            admin.cluster_status(ClusterStatusRequest::default()).await
        })
        .await?;
    if control.json {
        print_json(&status_json(&response));
    } else {
        print!("{}", status_text(&response));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_members(members: &[ClusterMember], json: bool) {
    if json {
        print_json(&json!({
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        }));
    } else {
        print!("{}", members_table(members, 0).render());
    }
}

async fn add(request: AddNodeRequest, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.add_node(request).await }
        })
        .await?;
    print_members(&response.members, control.json);
    Ok(ExitCode::SUCCESS)
}

async fn remove(id: u64, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Write, |mut admin| async move {
            admin.remove_node(RemoveNodeRequest { node_id: id }).await
        })
        .await?;
    print_members(&response.members, control.json);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_proto::v1::{GatewayStatus, NodeRole};

    fn sample() -> ClusterStatusResponse {
        ClusterStatusResponse {
            node_id: 2,
            members: vec![
                ClusterMember {
                    node_id: 1,
                    raft_addr: "10.0.0.1:7071".into(),
                    api_addr: "10.0.0.1:7070".into(),
                    role: NodeRole::Voter as i32,
                    matched_index: 0,
                },
                ClusterMember {
                    node_id: 2,
                    raft_addr: "10.0.0.2:7071".into(),
                    api_addr: "10.0.0.2:7070".into(),
                    role: NodeRole::Learner as i32,
                    matched_index: 0,
                },
            ],
            leader_id: 1,
            leader_api_addr: "10.0.0.1:7070".into(),
            term: 4,
            applied_index: 17,
            revision: 9,
            gateways: vec![GatewayStatus {
                gateway_id: "gw-a".into(),
                revision: 7,
                served_by_node_id: 2,
                last_seen_unix_ms: 0,
            }],
        }
    }

    #[test]
    fn status_text_names_the_leader_roles_and_gateway_lag() {
        let text = status_text(&sample());
        assert!(
            text.contains("leader         1 (api 10.0.0.1:7070)"),
            "{text}"
        );
        assert!(text.contains("voter (leader)"), "{text}");
        assert!(text.contains("learner"), "{text}");
        let gateway = text.lines().find(|l| l.starts_with("gw-a")).unwrap();
        let cells: Vec<&str> = gateway.split_whitespace().collect();
        assert_eq!(cells, ["gw-a", "7", "2", "2", "-"]);
    }

    #[test]
    fn status_json_has_snake_case_keys_and_the_lag() {
        let value = status_json(&sample());
        assert_eq!(value["leader_api_addr"], "10.0.0.1:7070");
        assert_eq!(value["members"][1]["role"], "learner");
        assert_eq!(value["gateways"][0]["lag"], 2);
    }
}
