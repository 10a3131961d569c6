//! In-process control clusters and gateway quota agents on loopback, started the way
//! `tests/tests/quota_agent.rs` starts them: every listener bound to `127.0.0.1:0` before any node
//! starts, so the member list holds the addresses actually served.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_control::{AdminToken, ControlNode, ControlOptions};
use tollgate_gateway::quota_agent::{QuotaAgent, QuotaAgentOptions};
use tollgate_quota::{LeasePool, PoolConfig};
use tollgate_raft::{NodeId, PeerNode};
use tollgate_testkit::wait_for;

/// Waits for elections and sessions.
const WAIT: Duration = Duration::from_secs(30);

/// A running control cluster, its data directories removed when it is dropped.
pub struct Cluster {
    nodes: Vec<ControlNode>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` control nodes (one Raft cluster) and waits until every one knows the leader and
    /// has applied the first entry.
    pub async fn start(n: u64) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        let mut members: Vec<(NodeId, PeerNode)> = Vec::new();
        for id in 1..=n {
            let raft = TcpListener::bind("127.0.0.1:0").await?;
            let api = TcpListener::bind("127.0.0.1:0").await?;
            members.push((
                id,
                PeerNode {
                    raft_addr: raft.local_addr()?.to_string(),
                    api_addr: api.local_addr()?.to_string(),
                },
            ));
            listeners.push((id, raft, api));
        }
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for (id, raft_listener, api_listener) in listeners {
            let dir = tempfile::tempdir()?;
            let node = ControlNode::start(ControlOptions {
                id,
                data_dir: dir.path().to_path_buf(),
                raft_listener,
                api_listener,
                members: members.clone(),
                admin_token: AdminToken::new("quota-bench-admin")
                    .context("the admin token is refused")?,
            })
            .await
            .with_context(|| format!("control node {id} did not start"))?;
            nodes.push(node);
            dirs.push(dir);
        }
        for node in &nodes {
            node.node()
                .raft()
                .wait(Some(WAIT))
                .metrics(
                    |m| m.current_leader.is_some() && m.last_applied.is_some(),
                    "a leader is known and its first entry applied",
                )
                .await
                .context("no leader")?;
        }
        Ok(Self { nodes, _dirs: dirs })
    }

    /// The nodes' API addresses, for the agents.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.api_addr().to_string())
            .collect()
    }

    /// The current leader.
    fn leader(&self) -> anyhow::Result<&ControlNode> {
        let (id, _) = self.nodes[0].node().leader().context("no leader known")?;
        self.nodes
            .iter()
            .find(|n| n.node().id() == id)
            .context("the leader is not one of the nodes")
    }

    /// The leader's id and the index of its last log entry (Raft entries written so far).
    pub fn leader_log(&self) -> anyhow::Result<(NodeId, u64)> {
        let leader = self.leader()?;
        let last = leader.node().metrics().borrow().last_log_index.unwrap_or(0);
        Ok((leader.node().id(), last))
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// The agent and pool settings a run may change (the defaults are production's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// [`QuotaAgentOptions::tick`], when set.
    pub agent_tick: Option<Duration>,
    /// [`PoolConfig::lease_horizon`], when set.
    pub lease_horizon: Option<Duration>,
}

impl Tuning {
    fn pool(&self) -> PoolConfig {
        let mut config = PoolConfig::default();
        if let Some(horizon) = self.lease_horizon {
            config.lease_horizon = horizon;
        }
        config
    }

    fn agent(&self) -> QuotaAgentOptions {
        let mut options = QuotaAgentOptions::default();
        if let Some(tick) = self.agent_tick {
            options.tick = tick;
        }
        options
    }
}

/// A gateway's quota agent and its pool.
pub struct Gateway {
    pub agent: Arc<QuotaAgent>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Starts an agent with a fresh pool and waits until its session with the leader is open.
    pub async fn start(cluster: &Cluster, id: &str, tuning: Tuning) -> anyhow::Result<Self> {
        let pool = Arc::new(LeasePool::new(tuning.pool()));
        let (agent, task) =
            QuotaAgent::start(pool, cluster.endpoints(), id.to_owned(), tuning.agent());
        let connected = agent.clone();
        wait_for(WAIT, move || connected.is_connected())
            .await
            .with_context(|| format!("gateway {id} opened no quota session"))?;
        Ok(Self { agent, task })
    }

    /// Starts `n` gateways (`gw-1` ..).
    pub async fn start_many(
        cluster: &Cluster,
        n: usize,
        tuning: Tuning,
    ) -> anyhow::Result<Vec<Self>> {
        let mut gateways = Vec::with_capacity(n);
        for i in 1..=n {
            gateways.push(Self::start(cluster, &format!("gw-{i}"), tuning).await?);
        }
        Ok(gateways)
    }

    /// Stops the agent's task and waits for it.
    pub async fn shutdown(self) {
        self.agent.shutdown();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}
