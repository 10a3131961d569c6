//! Starting, running and stopping the parts a role asks for.
//!
//! Start order: the control node first (so that its leader can push the file into the cluster
//! before the gateway takes its first snapshot), then the gateway, which follows the local
//! control node (role `all`) or remote ones (role `gateway`). Stop order is the reverse: the
//! gateway drains its requests, then the control node leaves.
//!
//! Once everything listens, one line goes to stdout for scripts and tests:
//! `tollgate listening role=all data=… admin=… api=… raft=…` (absent parts left out).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tollgate_control::{AdminToken, ControlNode, ControlOptions, ControlStartError};
use tollgate_gateway::QuotaBackend;
use tollgate_gateway::config::{Config, ProcessEnv};
use tollgate_gateway::follow::{RemoteControl, WatchConnector};
use tollgate_gateway::quota_agent::{QuotaAgent, QuotaAgentOptions};
use tollgate_gateway::{RunningGateway, StartError};
use tollgate_quota::{LeasePool, PoolConfig};
use tollgate_raft::PeerNode;
use tollgate_telemetry::Metrics;
use tracing::{error, info, warn};

use super::Role;
use super::local::LocalWatch;
use super::seed;

/// What to run.
pub struct Plan {
    pub role: Role,
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub embedded: bool,
    pub generated_token: Option<String>,
}

/// Why serving stopped or never started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration problem found only at start (exit 64).
    #[error("{0}")]
    Config(String),
    /// The gateway did not start.
    #[error(transparent)]
    Gateway(#[from] StartError),
    /// The control node did not start.
    #[error(transparent)]
    Control(#[from] ControlStartError),
    /// A listener or the data directory could not be set up.
    #[error("{0}")]
    Io(String),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

struct Control {
    node: ControlNode,
    admin_token: String,
    api: String,
    raft: String,
    _tempdir: Option<tempfile::TempDir>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Io(format!("binding the {what} listener {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Io(format!("the {what} listener has no address: {e}")))?;
    Ok((listener, bound))
}

/// The address other nodes and clients should use for a bound listener.
fn advertised(
    what: &str,
    advertise: Option<&String>,
    bound: SocketAddr,
    multi: bool,
) -> Result<String, ServeError> {
    match advertise {
        Some(addr) => Ok(addr.clone()),
        None if multi && bound.ip().is_unspecified() => Err(ServeError::Config(format!(
            "cluster.{what}_advertise: the {what} listener is bound to {bound}; set the address \
             other nodes reach it at"
        ))),
        None => Ok(bound.to_string()),
    }
}

async fn start_control(plan: &Plan) -> Result<Control, ServeError> {
    let cluster = &plan.config.cluster;
    let mut tempdir = None;
    let data_dir = match (&cluster.data_dir, &plan.config_path) {
        (Some(dir), _) => dir.clone(),
        (None, Some(path)) => path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("tollgate-data"),
        (None, None) => {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-data-")
                .tempdir()
                .map_err(|e| ServeError::Io(format!("creating a temporary data directory: {e}")))?;
            warn!(
                data_dir = %dir.path().display(),
                "no TOLLGATE_DATA_DIR: cluster state lives in a temporary directory removed at exit"
            );
            let path = dir.path().to_owned();
            tempdir = Some(dir);
            path
        }
    };
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        ServeError::Io(format!(
            "creating the data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let multi = cluster.members.len() > 1 || cluster.join_later;
    let (raft_listener, raft_bound) = bind("raft", cluster.raft_listen).await?;
    let (api_listener, api_bound) = bind("api", cluster.api_listen).await?;
    let raft = advertised("raft", cluster.raft_advertise.as_ref(), raft_bound, multi)?;
    let api = advertised("api", cluster.api_advertise.as_ref(), api_bound, multi)?;
    let members: Vec<(u64, PeerNode)> = if cluster.members.is_empty() {
        if cluster.join_later {
            Vec::new()
        } else {
            vec![(
                cluster.id,
                PeerNode {
                    raft_addr: raft.clone(),
                    api_addr: api.clone(),
                },
            )]
        }
    } else {
        cluster
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    PeerNode {
                        raft_addr: m.raft.clone(),
                        api_addr: m.api.clone(),
                    },
                )
            })
            .collect()
    };
    let admin_token = match &cluster.admin_token {
        Some(token) => token.clone(),
        None => {
            let token = tollgate_gateway::config::new_token();
            eprintln!(
                "tollgate: no admin token in {}; this run's admin token: {token}",
                cluster.admin_token_env
            );
            token
        }
    };
    let token = AdminToken::new(&admin_token)
        .map_err(|e| ServeError::Config(format!("cluster.admin_token_env: {e}")))?;
    let node = ControlNode::start(ControlOptions {
        id: cluster.id,
        data_dir,
        raft_listener,
        api_listener,
        members,
        admin_token: token,
    })
    .await?;
    Ok(Control {
        node,
        admin_token,
        api,
        raft,
        _tempdir: tempdir,
    })
}

/// Runs the plan until SIGINT or SIGTERM.
pub async fn serve(plan: Plan) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;

    let control = match plan.role {
        Role::Gateway => None,
        Role::All | Role::Control => Some(start_control(&plan).await?),
    };
    if let Some(control) = &control
        && !plan.config.cluster.join_later
    {
        let report = seed::reconcile(&control.node, &plan.config, &control.admin_token).await;
        if report.leader && !report.problems.is_empty() && plan.embedded {
            return Err(ServeError::Config(report.problems.join("; ")));
        }
    }

    let metrics = Arc::new(Metrics::new());
    if let Some(control) = &control {
        control.node.export_metrics(metrics.clone());
    }
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let mut control_admin = None;
    if let (Role::Control, Some(control)) = (plan.role, &control) {
        let (addr, task) = super::admin::serve(
            plan.config.listen.admin,
            &control.node,
            metrics.clone(),
            admin_stopped,
        )
        .await
        .map_err(|e| {
            ServeError::Io(format!(
                "binding the admin listener {}: {e}",
                plan.config.listen.admin
            ))
        })?;
        control_admin = Some((addr, task));
    }

    let mut gateway: Option<RunningGateway> = None;
    if plan.role != Role::Control {
        // Limits are counted by the cluster's quota leader, through the same agent whatever the
        // role: the embedded single node talks to its own control node over loopback.
        let endpoints = match &control {
            Some(control) => vec![control.api.to_string()],
            None => plan.config.cluster.control.clone(),
        };
        let pool = Arc::new(LeasePool::new(PoolConfig::default()));
        let (agent, _agent_task) = QuotaAgent::start(
            pool,
            endpoints,
            plan.config.node_id.clone(),
            QuotaAgentOptions::default(),
        );
        agent.export_metrics(metrics.clone());
        let mut running = tollgate_gateway::start_following(
            plan.config.clone(),
            metrics.clone(),
            QuotaBackend::Cluster(agent),
        )
        .await?;
        let connector: Arc<dyn WatchConnector> = match &control {
            Some(control) => Arc::new(LocalWatch(control.node.config_service().clone())),
            None => Arc::new(RemoteControl::new(plan.config.cluster.control.clone())),
        };
        running.follow(connector, plan.config.node_id.clone());
        gateway = Some(running);
    }

    let mut line = format!("tollgate listening role={:?}", plan.role).to_lowercase();
    if let Some(gateway) = &gateway {
        line.push_str(&format!(
            " data={} admin={}",
            gateway.data_addr, gateway.admin_addr
        ));
    }
    if let Some((addr, _)) = &control_admin {
        line.push_str(&format!(" admin={addr}"));
    }
    if let Some(control) = &control {
        line.push_str(&format!(" api={} raft={}", control.api, control.raft));
    }
    println!("{line}");
    if plan.embedded
        && let Some(gateway) = &gateway
    {
        let url = format!("http://{}/mcp/time", gateway.data_addr);
        match &plan.generated_token {
            Some(token) => eprintln!(
                "tollgate: embedded default serving {url}\n          bearer token: {token}\n          (set TOLLGATE_TOKEN to choose it)"
            ),
            None => {
                eprintln!("tollgate: embedded default serving {url} (token from TOLLGATE_TOKEN)")
            }
        }
    }

    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.map_err(ServeError::Signal)?;
                break;
            }
            _ = term.recv() => break,
            _ = hangup.recv() => reload(&plan, control.as_ref()).await,
        }
    }
    info!("stopping");
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    let _ = stop_admin.send(true);
    if let Some((_, task)) = control_admin {
        let _ = task.await;
    }
    if let Some(control) = control {
        control.node.shutdown().await;
    }
    Ok(())
}

/// SIGHUP: re-read the file and push it into the cluster (roles `all` and `control`).
async fn reload(plan: &Plan, control: Option<&Control>) {
    let (Some(path), Some(control)) = (&plan.config_path, control) else {
        warn!("SIGHUP ignored: only a control node with a configuration file reloads it");
        return;
    };
    match Config::load(path, &ProcessEnv) {
        Err(errors) => {
            for error in &errors.0 {
                error!(path = %error.path, message = %error.message, "configuration reload refused");
            }
        }
        Ok(config) => {
            let report = seed::reconcile(&control.node, &config, &control.admin_token).await;
            if !report.leader {
                warn!(
                    "SIGHUP: this node is not the leader; send SIGHUP to the leader or use \
                     `tollgate policy push`"
                );
            }
        }
    }
}
