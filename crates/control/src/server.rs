//! One control node as a process runs it: the Raft node on its peer port and the public gRPC API
//! (`AdminService` + `ConfigService` + `QuotaService`) on its API port.
//!
//! ```text
//!   raft listener ──▶ RaftNode (peer RPC, storage under data_dir)
//!   api listener  ──▶ tonic Server { AdminService (admin token), ConfigService (no token),
//!                                    QuotaService (sessions on the leader; Show: admin token) }
//! ```
//!
//! Both listeners are bound by the caller (port 0 in tests), so the addresses put in the member
//! list are the ones actually served.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_raft::{NodeError, NodeId, PeerNode, RaftNode};
use tollgate_telemetry::Metrics;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::{
    AdminServiceImpl, AdminToken, ConfigServiceImpl, GatewayRegistry, QuotaOptions,
    QuotaServiceImpl,
};

/// How long [`ControlNode::shutdown`] lets the API server drain open streams.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What a control node needs to start.
pub struct ControlOptions {
    /// The node's Raft id (non-zero).
    pub id: NodeId,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// The bound Raft peer listener.
    pub raft_listener: TcpListener,
    /// The bound public API listener.
    pub api_listener: TcpListener,
    /// The initial member list (the same on every node); empty for a node that joins later
    /// through `AddNode`.
    pub members: Vec<(NodeId, PeerNode)>,
    /// The admin token callers of `AdminService` must present.
    pub admin_token: AdminToken,
}

/// Why a control node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlStartError {
    /// A listener has no local address.
    #[error("the {what} listener has no local address: {source}")]
    LocalAddr {
        /// `raft` or `api`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Raft node did not start.
    #[error(transparent)]
    Node(Box<NodeError>),
}

/// A running control node.
pub struct ControlNode {
    node: Arc<RaftNode>,
    api_addr: SocketAddr,
    gateways: GatewayRegistry,
    admin: AdminServiceImpl,
    config: ConfigServiceImpl,
    quota: QuotaServiceImpl,
    stop_api: oneshot::Sender<()>,
    api: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ControlNode {
    /// Start the Raft node (initializing the cluster if this is the lowest id of an empty log)
    /// and serve the public API.
    pub async fn start(options: ControlOptions) -> Result<Self, ControlStartError> {
        let ControlOptions {
            id,
            data_dir,
            raft_listener,
            api_listener,
            members,
            admin_token,
        } = options;
        let api_addr =
            api_listener
                .local_addr()
                .map_err(|source| ControlStartError::LocalAddr {
                    what: "api",
                    source,
                })?;
        let node = Arc::new(
            RaftNode::start_with_listener(id, &data_dir, raft_listener, &members)
                .await
                .map_err(|e| ControlStartError::Node(Box::new(e)))?,
        );
        let gateways = GatewayRegistry::default();
        let quota =
            QuotaServiceImpl::new(node.clone(), admin_token.clone(), QuotaOptions::default());
        let admin = AdminServiceImpl::new(node.clone(), admin_token, gateways.clone());
        let config = ConfigServiceImpl::new(&node, gateways.clone());
        let (stop_api, stopped) = oneshot::channel::<()>();
        let api = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(admin.clone().into_server())
                .add_service(config.clone().into_server())
                .add_service(quota.clone().into_server())
                .serve_with_incoming_shutdown(incoming(api_listener), async {
                    let _ = stopped.await;
                }),
        );
        info!(node = id, %api_addr, data_dir = %data_dir.display(), "control api listening");
        Ok(Self {
            node,
            api_addr,
            gateways,
            admin,
            config,
            quota,
            stop_api,
            api,
        })
    }

    /// The Raft node.
    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Where the public API is served.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The admin service, for in-process callers (they present the admin token like anyone).
    pub fn admin(&self) -> &AdminServiceImpl {
        &self.admin
    }

    /// The config service, for an in-process gateway (no network hop).
    pub fn config_service(&self) -> &ConfigServiceImpl {
        &self.config
    }

    /// Keeps the control-plane gauges of `metrics` (`tollgate_raft_*`, `tollgate_control_*`)
    /// current until the node stops: updated on every Raft metrics change and once a second.
    pub fn export_metrics(&self, metrics: Arc<Metrics>) -> JoinHandle<()> {
        let mut raft = self.node.metrics();
        let reader = self.node.reader();
        let gateways = self.gateways.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            loop {
                {
                    let m = raft.borrow_and_update();
                    metrics.raft_term.set(as_gauge(m.current_term));
                    metrics
                        .raft_leader
                        .set(i64::from(m.state == openraft::ServerState::Leader));
                    metrics
                        .raft_in_touch
                        .set(i64::from(crate::watch::in_touch(&m)));
                    metrics
                        .raft_last_log_index
                        .set(as_gauge(m.last_log_index.unwrap_or(0)));
                    metrics
                        .raft_applied_index
                        .set(as_gauge(m.last_applied.map_or(0, |l| l.index)));
                    metrics.raft_voters.set(as_gauge(
                        m.membership_config.membership().voter_ids().count() as u64,
                    ));
                }
                metrics
                    .control_revision
                    .set(as_gauge(reader.read(|s| s.revision())));
                metrics
                    .control_watchers
                    .set(as_gauge(gateways.list().len() as u64));
                tokio::select! {
                    changed = raft.changed() => if changed.is_err() { break },
                    _ = tick.tick() => {}
                }
            }
        })
    }

    /// Whether this node is in touch with a working cluster (it hears a leader, or as leader a
    /// quorum): what a control node's `/readyz` answers.
    pub fn in_touch(&self) -> bool {
        crate::watch::in_touch(&self.node.metrics().borrow())
    }

    /// The gateways following this node.
    pub fn gateways(&self) -> &GatewayRegistry {
        &self.gateways
    }

    /// Stop serving the API (open watch streams end; gateways reconnect elsewhere), then stop
    /// Raft and its peer service.
    pub async fn shutdown(self) {
        self.quota.end_sessions("the control node is shutting down");
        let _ = self.stop_api.send(());
        let mut api = self.api;
        match tokio::time::timeout(API_DRAIN_TIMEOUT, &mut api).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "control api server failed"),
            Ok(Err(join)) => warn!(error = %join, "control api task failed"),
            Err(_elapsed) => {
                // Watch streams stay open until their clients go; do not wait for them.
                api.abort();
            }
        }
        drop(self.admin);
        drop(self.config);
        drop(self.quota);
        match Arc::try_unwrap(self.node) {
            Ok(node) => {
                if let Err(error) = node.shutdown().await {
                    warn!(%error, "raft node shutdown failed");
                }
            }
            Err(node) => {
                // A service task still holds the node (an aborted stream's task): stop Raft itself.
                if let Err(error) = node.raft().shutdown().await {
                    warn!(%error, "raft core task failed while shutting down");
                }
            }
        }
    }
}

/// Accepted connections with `TCP_NODELAY` (small RPCs must not wait for Nagle's algorithm and
/// the peer's delayed ACK, about 40 ms each) and TCP keepalive.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}
