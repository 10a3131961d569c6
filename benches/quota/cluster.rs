//! In-process control clusters and gateway quota agents on loopback: the cluster is a
//! [`LocalCluster`] (every listener bound to `127.0.0.1:0` before any node starts, so the member
//! list holds the addresses actually served), as in the end-to-end quota suites.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tollgate_control::LocalCluster;
use tollgate_gateway::quota_agent::{QuotaAgent, QuotaAgentOptions};
use tollgate_quota::{LeasePool, PoolConfig};
use tollgate_raft::NodeId;
use tollgate_testkit::wait_for;

/// Waits for elections and sessions.
const WAIT: Duration = Duration::from_secs(30);

/// A running control cluster, its data directories removed when it is dropped.
pub struct Cluster(LocalCluster);

impl Cluster {
    /// Starts `n` control nodes (one Raft cluster) and waits until every one knows the leader and
    /// has applied the first entry.
    pub async fn start(n: u64) -> anyhow::Result<Self> {
        let cluster = LocalCluster::start_with_wait(n, "quota-bench-admin", WAIT)
            .await
            .context("the control cluster did not start")?;
        Ok(Self(cluster))
    }

    /// The nodes' API addresses, for the agents.
    pub fn endpoints(&self) -> Vec<String> {
        self.0.endpoints()
    }

    /// The leader's id and the index of its last log entry (Raft entries written so far).
    pub fn leader_log(&self) -> anyhow::Result<(NodeId, u64)> {
        let leader = self.0.leader().context("no leader known among the nodes")?;
        let last = leader.node().metrics().borrow().last_log_index.unwrap_or(0);
        Ok((leader.node().id(), last))
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
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
