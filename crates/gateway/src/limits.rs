//! Rate limits on the call path: one [`Limiter`] per gateway process.
//!
//! ```text
//!   call's limits ─┬─ session scope ─────────────▶ node counts (this node only, exact)
//!                  └─ grant / server / global ───▶ cluster quota: try_reserve (one CAS, no await)
//!                        ├─ hit ─────────────────────────────────────────▶ admitted   "lease"
//!                        ├─ exhausted ───────────────────────────────────▶ rate limited
//!                        └─ needs a lease ─▶ agent: sync demand, wait ≤ acquire timeout
//!                              ├─ lease ────────────────────────────────▶ admitted   "sync"
//!                              ├─ spent ────────────────────────────────▶ rate limited
//!                              └─ no answer ─┬─ every limit fail_open ──▶ fallback counts
//!                                            └─ otherwise ──────────────▶ "limit service
//!                                                                           unavailable"
//! ```
//!
//! # One mechanism, any cluster size
//!
//! `tollgate serve` always runs a [`QuotaAgent`]: a gateway-only node talks to the control
//! nodes, and the embedded single node (role `all`) talks to its own control node over loopback.
//! So a single node enforces its limits through the same leases, ledger and Raft entries as a
//! cluster, and a limit's count survives a restart of that node. A [`Limiter`] built over a plain
//! [`Quota`] (the library's [`crate::start`], for embedding and tests with a manual clock) keeps
//! the whole budget in process and never waits.
//!
//! # Session scope
//!
//! A `session` limit is counted by the node that serves the request, in memory, exactly. Sessions
//! are sealed ids that any node can serve; when a load balancer moves a session to another node,
//! that node starts its own count for the window, so a session spread over `k` nodes can make up
//! to `k × max` calls in one window. Pin sessions to nodes (the `Mcp-Session-Id` header is a good
//! affinity key) when that matters, or use a `grant` limit, which is exact cluster-wide. A call
//! without a session (the modern era, or a legacy call before `initialize`) counts under one
//! session-less key per grant.
//!
//! # Failing open
//!
//! A limit with `"on_unavailable": "fail_open"` admits a call that found no lease and no answer
//! from the quota leader if this node's own count for the window (kept only for such calls) is
//! under `max`. The stated bound: while cut off, each gateway admits at most `max` extra calls
//! per window. A call fails open only when every cluster limit it carries says so.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use smallvec::SmallVec;
use tollgate_policy::{Limit, OnUnavailable, Scope};
use tollgate_quota::{LimitSpec, LocalQuota, Quota, QuotaError, Reservation, Window};
use tollgate_telemetry::Metrics;
use tollgate_telemetry::metrics::KindLabels;

use crate::quota_agent::{AcquireError, QuotaAgent};

/// Where a gateway's cluster-wide limits are counted.
#[derive(Clone)]
pub enum QuotaBackend {
    /// A quota holding the whole budget in this process (embedding, tests).
    Local(Arc<dyn Quota>),
    /// Leases from the cluster's quota leader, through this agent (every `tollgate serve`).
    Cluster(Arc<QuotaAgent>),
}

impl std::fmt::Debug for QuotaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaBackend::Local(_) => f.write_str("QuotaBackend::Local"),
            QuotaBackend::Cluster(agent) => write!(f, "QuotaBackend::Cluster({agent:?})"),
        }
    }
}

/// One limit of a call, ready to reserve.
#[derive(Debug, Clone)]
pub(crate) struct CallLimit {
    /// The full counter key.
    pub key: String,
    pub window: Window,
    pub max: u64,
    /// Counted on this node only (session scope).
    pub node_local: bool,
    pub fail_open: bool,
}

impl CallLimit {
    /// The limit of `policy_limit` for a call of `grant_id` to `server` in `session`.
    pub fn new(policy_limit: &Limit, grant_id: &str, server: &str, session: Option<&str>) -> Self {
        let counter = &policy_limit.counter;
        let key = match policy_limit.scope {
            Scope::Grant => format!("grant:{grant_id}/{counter}"),
            Scope::Server => format!("server:{server}/{counter}"),
            Scope::Global => format!("global:{counter}"),
            Scope::Session => format!("session:{grant_id}/{}/{counter}", session.unwrap_or("-")),
            // A scope this build does not know cannot be compiled into a policy; count it per
            // grant rather than not at all.
            _ => format!("grant:{grant_id}/{counter}"),
        };
        Self {
            key,
            window: quota_window(policy_limit.window),
            max: policy_limit.max,
            node_local: policy_limit.scope == Scope::Session,
            fail_open: policy_limit.on_unavailable == OnUnavailable::FailOpen,
        }
    }

    fn spec(&self) -> LimitSpec<'_> {
        LimitSpec::new(&self.key, self.window, self.max)
    }
}

/// The quota window of a policy window.
pub(crate) fn quota_window(window: tollgate_policy::Window) -> Window {
    match window {
        tollgate_policy::Window::Second => Window::Second,
        tollgate_policy::Window::Minute => Window::Minute,
        tollgate_policy::Window::Hour => Window::Hour,
        tollgate_policy::Window::Day => Window::Day,
    }
}

/// Why a call's limits were not reserved. `index` is the position of the limit in the call's
/// list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The window is spent: rate limited.
    Exhausted { index: usize, retry_after_secs: u64 },
    /// No lease and no answer from the quota leader, and the limit fails closed.
    Unavailable { index: usize },
}

/// Tokens a call holds, in one or two quotas; settle with [`Held::commit`] or
/// [`Held::rollback`]. Dropped unsettled, they stay spent.
#[derive(Default)]
pub(crate) struct Held {
    parts: SmallVec<[(Arc<dyn Quota>, Reservation); 2]>,
    /// The window each limit was counted in, in the call's order.
    windows: SmallVec<[u64; 2]>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The window ids the limits were counted in (for the audit record), in the call's order.
    pub fn windows(&self) -> &[u64] {
        &self.windows
    }

    pub fn commit(self) {
        for (quota, reservation) in self.parts {
            quota.commit(reservation);
        }
    }

    pub fn rollback(self) {
        for (quota, reservation) in self.parts {
            quota.rollback(reservation);
        }
    }
}

/// Decision counters, labelled once.
struct Decisions {
    lease: Counter,
    sync: Counter,
    node: Counter,
    exhausted: Counter,
    fail_closed: Counter,
    fail_open: Counter,
}

impl Decisions {
    fn new(metrics: &Metrics) -> Self {
        let get = |kind: &str| {
            metrics
                .quota_decisions
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .clone()
        };
        Self {
            lease: get("lease"),
            sync: get("sync"),
            node: get("node"),
            exhausted: get("exhausted"),
            fail_closed: get("fail_closed"),
            fail_open: get("fail_open"),
        }
    }
}

/// The gateway's rate limiter. See the [module docs](self).
pub struct Limiter {
    cluster: Arc<dyn Quota>,
    agent: Option<Arc<QuotaAgent>>,
    node: Arc<dyn Quota>,
    fallback: Arc<dyn Quota>,
    decisions: Decisions,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter over `backend`, counting its decisions in `metrics`.
    pub fn new(backend: QuotaBackend, metrics: &Metrics) -> Self {
        let (cluster, agent): (Arc<dyn Quota>, _) = match backend {
            QuotaBackend::Local(quota) => (quota, None),
            QuotaBackend::Cluster(agent) => (agent.pool().clone(), Some(agent)),
        };
        Self {
            cluster,
            agent,
            node: Arc::new(LocalQuota::new()),
            fallback: Arc::new(LocalQuota::new()),
            decisions: Decisions::new(metrics),
        }
    }

    /// The quota agent, when limits are counted by the cluster.
    pub fn agent(&self) -> Option<&Arc<QuotaAgent>> {
        self.agent.as_ref()
    }

    /// Reserves every limit of a call, all or nothing.
    pub(crate) async fn acquire(&self, limits: &[CallLimit]) -> Result<Held, Refused> {
        let mut held = Held::default();
        if limits.is_empty() {
            return Ok(held);
        }
        let (node, cluster): (SmallVec<[usize; 2]>, SmallVec<[usize; 2]>) =
            (0..limits.len()).partition(|&i| limits[i].node_local);
        let mut windows: SmallVec<[(usize, u64); 2]> = SmallVec::new();
        if !node.is_empty() {
            let specs: SmallVec<[LimitSpec<'_>; 2]> =
                node.iter().map(|&i| limits[i].spec()).collect();
            match self.node.reserve(&specs) {
                Ok(reservation) => {
                    self.decisions.node.inc();
                    windows.extend(node.iter().copied().zip(ids(&reservation)));
                    held.parts.push((self.node.clone(), reservation));
                }
                Err(e) => {
                    self.decisions.exhausted.inc();
                    return Err(Refused::Exhausted {
                        index: node[e.index],
                        retry_after_secs: e.retry_after_secs(),
                    });
                }
            }
        }
        if !cluster.is_empty() {
            let specs: SmallVec<[LimitSpec<'_>; 2]> =
                cluster.iter().map(|&i| limits[i].spec()).collect();
            let reserved = match self.cluster.try_reserve(&specs) {
                Ok(reservation) => {
                    self.decisions.lease.inc();
                    Ok((self.cluster.clone(), reservation))
                }
                Err(QuotaError::Exhausted(e)) => Err(exhausted(&cluster, e)),
                Err(QuotaError::NeedsLease { index }) => match &self.agent {
                    // Only a lease pool answers `NeedsLease`; a local quota holds everything.
                    None => Err(Refused::Unavailable {
                        index: cluster[index],
                    }),
                    Some(agent) => match agent.acquire(&specs).await {
                        Ok(reservation) => {
                            self.decisions.sync.inc();
                            Ok((self.cluster.clone(), reservation))
                        }
                        Err(AcquireError::Exhausted(e)) => Err(exhausted(&cluster, e)),
                        Err(AcquireError::Unavailable { index }) => {
                            self.unavailable(limits, &cluster, &specs, index)
                        }
                    },
                },
            };
            match reserved {
                Ok((quota, reservation)) => {
                    windows.extend(cluster.iter().copied().zip(ids(&reservation)));
                    held.parts.push((quota, reservation));
                }
                Err(refused) => {
                    if matches!(refused, Refused::Exhausted { .. }) {
                        self.decisions.exhausted.inc();
                    }
                    held.rollback();
                    return Err(refused);
                }
            }
        }
        windows.sort_unstable_by_key(|(i, _)| *i);
        held.windows = windows.into_iter().map(|(_, w)| w).collect();
        Ok(held)
    }

    /// No lease and no answer: fail open into this node's fallback counts when every cluster
    /// limit of the call says so, else fail closed.
    fn unavailable(
        &self,
        limits: &[CallLimit],
        cluster: &[usize],
        specs: &[LimitSpec<'_>],
        index: usize,
    ) -> Result<(Arc<dyn Quota>, Reservation), Refused> {
        if !cluster.iter().all(|&i| limits[i].fail_open) {
            self.decisions.fail_closed.inc();
            return Err(Refused::Unavailable {
                index: cluster[index],
            });
        }
        match self.fallback.reserve(specs) {
            Ok(reservation) => {
                self.decisions.fail_open.inc();
                Ok((self.fallback.clone(), reservation))
            }
            Err(e) => Err(exhausted(cluster, e)),
        }
    }
}

fn exhausted(cluster: &[usize], e: tollgate_quota::Exhausted) -> Refused {
    Refused::Exhausted {
        index: cluster[e.index],
        retry_after_secs: e.retry_after_secs(),
    }
}

fn ids(reservation: &Reservation) -> impl Iterator<Item = u64> + '_ {
    reservation.limits().iter().map(|l| l.window_id().0)
}

#[cfg(test)]
mod tests;
