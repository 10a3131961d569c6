//! `tollgate policy validate FILE...` (local, no cluster), and the policy commands of the control
//! plane: `push`, `history`, `rollback`, `diff`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tollgate_policy::Policy;
use tollgate_proto::v1::{
    ListPolicyVersionsRequest, ListPolicyVersionsResponse, PutPolicyRequest, RollbackPolicyRequest,
};

use super::client::{AdminClient, AdminError, CallKind, ControlArgs, block_on};
use super::diff;
use super::output::{Table, print_json, rfc3339_ms};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: exit 0 with a one-line summary each when all are valid; otherwise
    /// exit 1 and list every error with its JSON pointer.
    Validate {
        /// Policy files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Store a policy file as the policy's next version, which then serves on every gateway; a
    /// refused document lists every error with its JSON pointer and exits 1.
    Push {
        /// The policy's id (1 to 64 characters of `[A-Za-z0-9._-]`); a new id creates it.
        #[arg(long = "id", value_name = "ID")]
        id: String,
        /// The policy file (JSON).
        file: PathBuf,
        /// Refuse unless this is the version serving now (optimistic concurrency).
        #[arg(long, value_name = "N")]
        expected_version: Option<u64>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List every version of a policy, oldest first.
    History {
        /// The policy's id.
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Make an earlier version's document serve again, as a new version.
    Rollback {
        /// The policy's id.
        id: String,
        /// The version whose document should serve again.
        #[arg(long = "to", value_name = "N")]
        to: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Show what changed between two versions (default: the one before the serving version, and
    /// the serving version; with one version given, that one and the serving version).
    Diff {
        /// The policy's id.
        id: String,
        /// The old version.
        from: Option<u64>,
        /// The new version.
        to: Option<u64>,
        #[command(flatten)]
        control: ControlArgs,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Validate { files } => validate(&files),
        PolicyCommand::Push {
            id,
            file,
            expected_version,
            control,
        } => block_on(push(id, file, expected_version, control)),
        PolicyCommand::History { id, control } => block_on(history(id, control)),
        PolicyCommand::Rollback { id, to, control } => block_on(rollback(id, to, control)),
        PolicyCommand::Diff {
            id,
            from,
            to,
            control,
        } => block_on(show_diff(id, from, to, control)),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
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

async fn push(
    id: String,
    file: PathBuf,
    expected_version: Option<u64>,
    control: ControlArgs,
) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let document_json = std::fs::read_to_string(&file).map_err(|source| AdminError::Read {
        path: file.clone(),
        source,
    })?;
    let request = PutPolicyRequest {
        policy_id: id.clone(),
        document_json,
        expected_version: expected_version.unwrap_or(0),
    };
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.put_policy(request).await }
        })
        .await?;
    let accepted = response.errors.is_empty();
    if control.json {
        print_json(&json!({
            "policy_id": id,
            "accepted": accepted,
            "errors": response.errors.iter().map(|e| json!({
                "pointer": e.pointer,
                "message": e.message,
            })).collect::<Vec<_>>(),
            "version": response.version,
            "digest": response.digest,
            "unchanged": response.unchanged,
            "revision": response.revision,
        }));
    } else if !accepted {
        eprintln!(
            "{}: refused ({} errors); policy {id} still serves {}",
            file.display(),
            response.errors.len(),
            match response.version {
                0 => "nothing (it does not exist)".to_owned(),
                v => format!("version {v}"),
            }
        );
        for error in &response.errors {
            eprintln!("  {}: {}", error.pointer, error.message);
        }
    } else if response.unchanged {
        println!(
            "policy {id}: unchanged, version {} serving ({})",
            response.version, response.digest
        );
    } else {
        println!(
            "policy {id}: version {} serving ({}), revision {}",
            response.version, response.digest, response.revision
        );
    }
    Ok(if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn versions(
    client: &AdminClient,
    id: &str,
    include_documents: bool,
) -> Result<ListPolicyVersionsResponse, AdminError> {
    let request = ListPolicyVersionsRequest {
        policy_id: id.to_owned(),
        include_documents,
    };
    client
        .call(CallKind::Read, |mut admin| {
            let request = request.clone();
            async move { admin.list_policy_versions(request).await }
        })
        .await
}

async fn history(id: String, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = versions(&client, &id, false).await?;
    if control.json {
        print_json(&json!({
            "policy_id": id,
            "serving_version": response.serving_version,
            "revision": response.revision,
            "versions": response.versions.iter().map(|v| json!({
                "version": v.version,
                "digest": v.digest,
                "created_at_unix_ms": v.created_at_unix_ms,
                "rolled_back_from": v.rolled_back_from,
                "serving": v.version == response.serving_version,
            })).collect::<Vec<_>>(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "VERSION",
        "DIGEST",
        "CREATED",
        "ROLLED BACK FROM",
        "SERVING",
    ]);
    for v in &response.versions {
        table.row(vec![
            v.version.to_string(),
            v.digest.clone(),
            rfc3339_ms(v.created_at_unix_ms),
            match v.rolled_back_from {
                0 => "-".to_owned(),
                from => from.to_string(),
            },
            if v.version == response.serving_version {
                "*".to_owned()
            } else {
                String::new()
            },
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

async fn rollback(id: String, to: u64, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let request = RollbackPolicyRequest {
        policy_id: id.clone(),
        to_version: to,
    };
    let response = client
        .call(CallKind::Write, |mut admin| {
            let request = request.clone();
            async move { admin.rollback_policy(request).await }
        })
        .await?;
    if control.json {
        print_json(&json!({
            "policy_id": id,
            "to_version": to,
            "version": response.version,
            "digest": response.digest,
            "revision": response.revision,
        }));
    } else {
        println!(
            "policy {id}: version {} serving ({}, the document of version {to}), revision {}",
            response.version, response.digest, response.revision
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The versions `policy diff` compares: `from` defaults to the one before `to`, `to` to the
/// serving version.
fn diff_versions(
    serving: u64,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<(u64, u64), AdminError> {
    match (from, to) {
        (Some(from), Some(to)) => Ok((from, to)),
        (Some(from), None) => Ok((from, serving)),
        (None, _) if serving >= 2 => Ok((serving - 1, serving)),
        (None, _) => Err(AdminError::Failed(format!(
            "the policy has {serving} version(s), nothing to compare; name two versions"
        ))),
    }
}

async fn show_diff(
    id: String,
    from: Option<u64>,
    to: Option<u64>,
    control: ControlArgs,
) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let response = versions(&client, &id, true).await?;
    let (from, to) = diff_versions(response.serving_version, from, to)?;
    let document = |n: u64| {
        response
            .versions
            .iter()
            .find(|v| v.version == n)
            .ok_or_else(|| AdminError::Failed(format!("policy {id} has no version {n}")))
    };
    let (old, new) = (document(from)?, document(to)?);
    let text = diff::unified(
        &diff::normalize(&old.document_json),
        &diff::normalize(&new.document_json),
        &format!("{id} version {from} ({})", old.digest),
        &format!("{id} version {to} ({})", new.digest),
        3,
    );
    if control.json {
        print_json(&json!({
            "policy_id": id,
            "from": { "version": from, "digest": old.digest },
            "to": { "version": to, "digest": new.digest },
            "identical": text.is_empty(),
            "diff": text,
        }));
    } else if text.is_empty() {
        println!(
            "policy {id}: versions {from} and {to} are the same document ({})",
            new.digest
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn diff_compares_the_version_before_serving_with_serving_by_default() {
        assert_eq!(diff_versions(5, None, None).unwrap(), (4, 5));
        assert_eq!(diff_versions(5, Some(2), None).unwrap(), (2, 5));
        assert_eq!(diff_versions(5, Some(3), Some(1)).unwrap(), (3, 1));
        assert!(diff_versions(1, None, None).is_err());
    }
}
