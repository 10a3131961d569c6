//! Pushing the configuration file's upstreams, policies and grants into the cluster.
//!
//! Run by the leader at start and on SIGHUP (roles `all` and `control`). The file *adds and
//! updates* what it declares, and never deletes:
//!
//! - an upstream is put when the cluster has none of that name or a different one;
//! - a grant's policy is pushed (a new version only when the document's digest differs from the
//!   serving version; the policy id is the file's name, see `policy_id_of_file`);
//! - a grant is created when no grant in the cluster has its token; a grant the cluster revoked
//!   is not re-created, and one whose server or policy differs is reported, not changed (revoke
//!   it and let the file create it again).
//!
//! Policies and upstreams go through the `AdminService` in-process, so they are validated exactly
//! like `tollgate policy push` and `tollgate upstream put`. Grants are proposed to Raft directly:
//! the admin API mints tokens, while a file brings its own token hash.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_control::ControlNode;
use tollgate_gateway::config::{Config, UpstreamSource};
use tollgate_proto::ADMIN_TOKEN_METADATA_KEY;
use tollgate_proto::v1::admin_service_server::AdminService as _;
use tollgate_proto::v1::{
    HttpTransport, PutPolicyRequest, PutUpstreamRequest, StdioTransport, TlsOptions, Upstream,
    upstream,
};
use tollgate_raft::{Request as RaftRequest, Response as RaftResponse, TokenHash};
use tracing::{info, warn};

/// The policy of a file grant without one.
pub const DENY_ALL_ID: &str = "deny-all";
const DENY_ALL_DOCUMENT: &str = r#"{"version":"1","default":"deny"}"#;

/// How long to wait for a leader before giving up on seeding.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct SeedReport {
    /// False when this node is not the leader (another node seeds).
    pub leader: bool,
    pub upstreams_put: usize,
    pub policy_versions: usize,
    pub grants_created: usize,
    /// Everything refused or left alone on purpose, one line each.
    pub problems: Vec<String>,
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request
            .metadata_mut()
            .insert(ADMIN_TOKEN_METADATA_KEY, value);
    }
    request
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The proto form of an upstream as the file states it.
pub fn upstream_proto(name: &str, source: &UpstreamSource) -> Upstream {
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let transport = if let Some(url) = &source.url {
        let tls = TlsOptions {
            ca_file: path(&source.tls_ca_file),
            client_cert_file: path(&source.tls_client_cert),
            client_key_file: path(&source.tls_client_key),
        };
        upstream::Transport::Http(HttpTransport {
            url: url.clone(),
            headers: source.headers.clone().into_iter().collect(),
            headers_from_env: source.headers_from_env.clone().into_iter().collect(),
            tls: (tls != TlsOptions::default()).then_some(tls),
        })
    } else {
        upstream::Transport::Stdio(StdioTransport {
            command: source.command.clone().unwrap_or_default(),
            args: source.args.clone().unwrap_or_default(),
            env: source.env.clone().unwrap_or_default().into_iter().collect(),
            idle_timeout_secs: source.idle_timeout_secs.unwrap_or(0),
        })
    };
    Upstream {
        name: name.to_owned(),
        transport: Some(transport),
    }
}

/// Waits for a leader; true if it is this node.
async fn is_leader(control: &ControlNode) -> bool {
    let node = control.node();
    let mut metrics = node.metrics();
    let waited = tokio::time::timeout(LEADER_WAIT, async {
        loop {
            if let Some(leader) = metrics.borrow().current_leader {
                return leader;
            }
            if metrics.changed().await.is_err() {
                return 0;
            }
        }
    })
    .await;
    matches!(waited, Ok(leader) if leader == node.id())
}

/// Pushes the file's declarations into the cluster if this node leads it.
pub async fn reconcile(control: &ControlNode, config: &Config, admin_token: &str) -> SeedReport {
    let mut report = SeedReport::default();
    if !is_leader(control).await {
        info!("not the leader: the leader pushes the configuration file into the cluster");
        return report;
    }
    report.leader = true;
    let admin = control.admin();
    let reader = control.node().reader();

    for up in &config.upstreams {
        let proto = upstream_proto(&up.name, &up.source);
        let wanted = proto
            .transport
            .as_ref()
            .map(tollgate_control::convert::upstream_spec);
        let stored = reader.read(|state| state.upstreams().get(&up.name).cloned());
        if stored.is_some() && stored == wanted {
            continue;
        }
        match admin
            .put_upstream(authorized(
                PutUpstreamRequest {
                    upstream: Some(proto),
                },
                admin_token,
            ))
            .await
        {
            Ok(_) => report.upstreams_put += 1,
            Err(status) => {
                report
                    .problems
                    .push(format!("upstream {}: {}", up.name, status.message()))
            }
        }
    }

    let mut policies: Vec<(String, String)> = Vec::new();
    for grant in &config.grants {
        let (id, document) = match &grant.policy {
            Some(p) => (p.id.clone(), p.document.clone()),
            None => (DENY_ALL_ID.to_owned(), DENY_ALL_DOCUMENT.to_owned()),
        };
        if !policies.iter().any(|(known, _)| *known == id) {
            policies.push((id, document));
        }
    }
    for (id, document) in &policies {
        let request = PutPolicyRequest {
            policy_id: id.clone(),
            document_json: document.clone(),
            expected_version: 0,
        };
        match admin.put_policy(authorized(request, admin_token)).await {
            Ok(response) => {
                let response = response.into_inner();
                if !response.errors.is_empty() {
                    for error in response.errors {
                        report
                            .problems
                            .push(format!("policy {id}: {}: {}", error.pointer, error.message));
                    }
                } else if !response.unchanged {
                    report.policy_versions += 1;
                    info!(policy = %id, version = response.version, "policy version pushed from the configuration file");
                }
            }
            Err(status) => report
                .problems
                .push(format!("policy {id}: {}", status.message())),
        }
    }

    for grant in &config.grants {
        let hash = TokenHash(grant.token_hash);
        let policy_id = grant
            .policy
            .as_ref()
            .map_or(DENY_ALL_ID.to_owned(), |p| p.id.clone());
        let existing = reader.read(|state| state.grant_by_token(&hash).cloned());
        match existing {
            Some(existing) if existing.revoked => report.problems.push(format!(
                "grant {} ({}) was revoked in the cluster; the file does not re-create it",
                existing.id, grant.label
            )),
            Some(existing)
                if existing.server != grant.server || existing.policy_id != policy_id =>
            {
                report.problems.push(format!(
                    "grant {} ({}) differs from the file (server {}, policy {}); revoke it to \
                     let the file create it again",
                    existing.id, grant.label, existing.server, existing.policy_id
                ));
            }
            Some(_) => {}
            None => {
                let request = RaftRequest::CreateGrant {
                    id: grant.id.clone(),
                    label: grant.label.clone(),
                    token_sha256: hash,
                    server: grant.server.clone(),
                    policy_id,
                    created_at_unix_ms: now_unix_ms(),
                };
                match control.node().client_write(request).await {
                    Ok(RaftResponse::Applied { .. }) => report.grants_created += 1,
                    Ok(RaftResponse::Rejected { reason, .. }) => report
                        .problems
                        .push(format!("grant {} ({}): {reason}", grant.id, grant.label)),
                    Ok(RaftResponse::Internal { .. } | RaftResponse::Quota { .. }) => {}
                    Err(error) => report
                        .problems
                        .push(format!("grant {} ({}): {error}", grant.id, grant.label)),
                }
            }
        }
    }

    for problem in &report.problems {
        warn!(%problem, "configuration file not fully applied to the cluster");
    }
    info!(
        upstreams = report.upstreams_put,
        policy_versions = report.policy_versions,
        grants = report.grants_created,
        problems = report.problems.len(),
        "configuration file pushed into the cluster"
    );
    report
}
