//! `tollgate grant create|list|revoke`: client credentials, kept by the control plane.
//!
//! `create` prints the new token once: the cluster stores only its SHA-256 (the hash `list`
//! shows), so a lost token cannot be shown again, only revoked and replaced.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tollgate_proto::v1::{CreateGrantRequest, ListGrantsRequest, RevokeGrantRequest};

use super::client::{AdminClient, AdminError, CallKind, ControlArgs, block_on};
use super::output::{Table, grant_json, print_json};

/// `tollgate grant ...`
#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Create a grant and print its token, once (the cluster keeps only its hash).
    Create {
        /// A human label for audit and listings (for example the agent's name).
        #[arg(long, value_name = "LABEL")]
        label: String,
        /// The upstream the grant may reach.
        #[arg(long, value_name = "SERVER")]
        server: String,
        /// The policy that judges the grant's calls.
        #[arg(long, value_name = "POLICY")]
        policy: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List grants (never their tokens).
    List {
        /// Include revoked grants.
        #[arg(long)]
        all: bool,
        /// Only grants for this upstream.
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Revoke a grant: gateways refuse its token from the resulting revision on.
    Revoke {
        /// The grant's id.
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Run a `grant` subcommand.
pub fn run(command: GrantCommand) -> ExitCode {
    match command {
        GrantCommand::Create {
            label,
            server,
            policy,
            control,
        } => block_on(create(
            CreateGrantRequest {
                label,
                server,
                policy_id: policy,
            },
            control,
        )),
        GrantCommand::List {
            all,
            server,
            control,
        } => block_on(list(
            ListGrantsRequest {
                include_revoked: all,
                server: server.unwrap_or_default(),
            },
            control,
        )),
        GrantCommand::Revoke { id, control } => block_on(revoke(id, control)),
    }
}

const TOKEN_WARNING: &str = "warning: this token is shown once and is not stored anywhere: the cluster keeps only its \
     SHA-256; keep it now or revoke the grant and create another";

async fn create(request: CreateGrantRequest, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.create_grant(request).await }
        })
        .await?;
    let grant = response
        .grant
        .ok_or_else(|| AdminError::Failed("the control plane returned no grant".to_owned()))?;
    eprintln!("{TOKEN_WARNING}");
    if control.json {
        print_json(&json!({
            "grant": grant_json(&grant),
            "token": response.token,
            "revision": response.revision,
        }));
    } else {
        println!(
            "grant {} created (label {}, server {}, policy {}), revision {}",
            grant.id, grant.label, grant.server, grant.policy_id, response.revision
        );
        println!("token: {}", response.token);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(request: ListGrantsRequest, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = client
        .call(CallKind::Read, |mut admin| {
            let request = request.clone();
            async move { admin.list_grants(request).await }
        })
        .await?;
    if control.json {
        print_json(&json!({
            "grants": response.grants.iter().map(grant_json).collect::<Vec<_>>(),
            "revision": response.revision,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "LABEL", "SERVER", "POLICY", "STATE", "TOKEN SHA-256"]);
    for grant in &response.grants {
        table.row(vec![
            grant.id.clone(),
            grant.label.clone(),
            grant.server.clone(),
            grant.policy_id.clone(),
            if grant.revoked { "revoked" } else { "active" }.to_owned(),
            hex::encode(&grant.token_sha256),
        ]);
    }
    if table.is_empty() {
        println!("no grants (revision {})", response.revision);
    } else {
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(id: String, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let request = RevokeGrantRequest {
        grant_id: id.clone(),
    };
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.revoke_grant(request).await }
        })
        .await?;
    if control.json {
        print_json(&json!({
            "grant_id": id,
            "already_revoked": response.already_revoked,
            "revision": response.revision,
        }));
    } else if response.already_revoked {
        println!("grant {id}: already revoked");
    } else {
        println!(
            "grant {id}: revoked; gateways refuse its token from revision {}",
            response.revision
        );
    }
    Ok(ExitCode::SUCCESS)
}
