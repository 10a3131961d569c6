//! Real control nodes on loopback whose peer links a shared [`Faults`] handle breaks: an isolated
//! leader, a minority partition, slow links and lossy links.
//!
//! Every wait is on openraft metrics or on a write, with a timeout; nothing sleeps to wait. The
//! few negative checks ("the isolated leader does not commit") give the write a bounded window
//! and then keep it running, to check later how it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::error::{ClientWriteError, RaftError};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_raft::{
    ConfigState, Faults, LinkFault, NodeError, NodeId, NodeOptions, PeerNode, RaftNode, Request,
    Response, TypeConfig,
};
use tracing::info;

/// Generous on a loaded 2-core machine; a healthy cluster needs well under a second.
const WAIT: Duration = Duration::from_secs(15);
/// How long a node cut off from the majority is given to (wrongly) commit a write.
const NO_COMMIT_WINDOW: Duration = Duration::from_secs(1);
/// The most a single write may take on lossy links before it counts as "unknown".
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the lossy-links test keeps writing: several election timeouts (300-600 ms).
const LOSSY_PERIOD: Duration = Duration::from_secs(2);

type WriteResult = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>,
>;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "partition=info,tollgate_raft=info,openraft=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

struct Cluster {
    nodes: BTreeMap<NodeId, RaftNode>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    /// Start nodes `1..=n` on loopback port 0 with the same member list, all sharing `faults`.
    async fn start(n: u64, faults: &Faults) -> Self {
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.push((
                id,
                PeerNode {
                    raft_addr: listener.local_addr().unwrap().to_string(),
                    api_addr: format!("api-{id}.test:7000"),
                },
            ));
            listeners.push((id, listener));
        }
        let mut dirs = Vec::new();
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let options = NodeOptions::default().with_faults(faults.clone());
            let node = RaftNode::start_with_options(id, dir.path(), listener, &members, options)
                .await
                .unwrap();
            dirs.push(dir);
            nodes.insert(id, node);
        }
        Self { nodes, _dirs: dirs }
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Wait until every node of `group` follows the same leader, a member of `group` other than
    /// `not`, which knows it leads. Retries while elections settle, up to [`WAIT`] in all.
    async fn wait_for_leader(&self, group: &[NodeId], not: Option<NodeId>) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no agreed leader in {group:?} within {WAIT:?}"
            );
            let candidate = self
                .node(group[0])
                .raft()
                .wait(Some(left))
                .metrics(
                    |m| {
                        m.current_leader
                            .is_some_and(|l| group.contains(&l) && Some(l) != not)
                    },
                    "a leader inside the group",
                )
                .await
                .unwrap()
                .current_leader
                .unwrap();
            let step = left.min(Duration::from_secs(3));
            let mut agreed = self
                .node(candidate)
                .raft()
                .wait(Some(step))
                .state(ServerState::Leader, "the candidate knows it leads")
                .await
                .is_ok();
            for &id in group {
                agreed = agreed
                    && self
                        .node(id)
                        .raft()
                        .wait(Some(step))
                        .current_leader(candidate, "the group follows the candidate")
                        .await
                        .is_ok();
            }
            if agreed {
                return candidate;
            }
        }
    }

    /// Wait until every node of `group` has applied the log up to `index`.
    async fn wait_applied(&self, group: &[NodeId], index: u64) {
        for &id in group {
            self.node(id)
                .raft()
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "the write is applied")
                .await
                .unwrap();
        }
    }

    /// Every node's applied configuration.
    fn states(&self) -> BTreeMap<NodeId, ConfigState> {
        self.nodes
            .iter()
            .map(|(id, node)| (*id, node.reader().read(ConfigState::clone)))
            .collect()
    }

    /// Assert that every node holds the same configuration; return it.
    fn assert_converged(&self) -> ConfigState {
        let states = self.states();
        let (first_id, first) = states.iter().next().unwrap();
        for (id, state) in &states {
            assert_eq!(state, first, "node {id} differs from node {first_id}");
        }
        first.clone()
    }

    /// Propose `request` on `id`, which must still be leader, and return the log index too.
    async fn write(&self, id: NodeId, request: Request) -> (u64, Response) {
        tokio::time::timeout(WAIT, self.node(id).client_write_indexed(request))
            .await
            .expect("the write did not commit in time")
            .unwrap()
    }

    /// Propose `request` on `id` in a task of its own and return the task.
    fn spawn_write(&self, id: NodeId, request: Request) -> JoinHandle<WriteResult> {
        let raft = self.node(id).raft().clone();
        tokio::spawn(async move { raft.client_write(request).await })
    }

    /// Heal, wait for one leader everywhere, then commit a barrier write and wait until every node
    /// has applied it.
    async fn heal_and_converge(&self, faults: &Faults, tag: &str) -> (NodeId, ConfigState) {
        faults.heal();
        let all = self.ids();
        let leader = self.wait_for_leader(&all, None).await;
        let (index, _) = self.write(leader, put("barrier", tag, None)).await;
        self.wait_applied(&all, index).await;
        (leader, self.assert_converged())
    }

    async fn shutdown(self) {
        for node in self.nodes.into_values() {
            node.shutdown().await.unwrap();
        }
    }
}

fn put(id: &str, tag: &str, expected_version: Option<u64>) -> Request {
    Request::PutPolicy {
        id: id.to_owned(),
        document: format!(r#"{{"tag":"{tag}"}}"#),
        expected_version,
        created_at_unix_ms: 1_700_000_000_000,
    }
}

fn documents(state: &ConfigState, id: &str) -> Vec<String> {
    state
        .policy_versions(id)
        .unwrap_or_default()
        .iter()
        .map(|v| v.document.clone())
        .collect()
}

/// Check that a write proposed on a node cut off from the majority is not acknowledged within
/// [`NO_COMMIT_WINDOW`]; the task keeps running.
async fn assert_not_committed(write: &mut JoinHandle<WriteResult>, node: NodeId) {
    let outcome = tokio::time::timeout(NO_COMMIT_WINDOW, &mut *write).await;
    match outcome {
        Err(_elapsed) => {}
        Ok(result) => {
            let result = result.unwrap();
            assert!(
                result.is_err(),
                "node {node} committed a write without a majority: {result:?}"
            );
        }
    }
}

/// Check that a write proposed without a majority ends, once the partition heals, by telling the
/// caller to go to the leader (its entry was overwritten), never by succeeding.
async fn assert_refused_after_heal(write: JoinHandle<WriteResult>) {
    let result = tokio::time::timeout(WAIT, write)
        .await
        .expect("the stranded write never ended")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
        ),
        "expected forward-to-leader, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_rejoins_with_the_same_state() {
    init_tracing();
    let faults = Faults::with_seed(1);
    let cluster = Cluster::start(3, &faults).await;
    let all = cluster.ids();
    let old = cluster.wait_for_leader(&all, None).await;
    let (index, _) = cluster.write(old, put("p", "before", None)).await;
    cluster.wait_applied(&all, index).await;

    info!("--- isolate leader {old}");
    faults.isolate(old);
    let isolated_at = Instant::now();
    let rest: Vec<NodeId> = all.iter().copied().filter(|&id| id != old).collect();
    let new = cluster.wait_for_leader(&rest, Some(old)).await;
    info!(
        "--- node {new} leads after {:?}; write through it",
        isolated_at.elapsed()
    );
    assert!(rest.contains(&new));
    for tag in ["during-1", "during-2"] {
        let (_, response) = cluster.write(new, put("p", tag, None)).await;
        assert!(matches!(response, Response::Applied { .. }), "{response:?}");
    }

    info!("--- the old leader {old} cannot commit");
    let mut stranded = cluster.spawn_write(old, put("p", "stranded", None));
    assert_not_committed(&mut stranded, old).await;
    assert_eq!(
        documents(&cluster.node(old).reader().read(ConfigState::clone), "p").len(),
        1,
        "the isolated node applied nothing new"
    );
    assert!(faults.stats().blocked > 0);

    info!("--- heal; the old leader steps down and catches up");
    let (leader, state) = cluster.heal_and_converge(&faults, "after-heal").await;
    assert_refused_after_heal(stranded).await;
    assert_eq!(
        cluster.node(old).leader().map(|(id, _)| id),
        Some(leader),
        "the old leader follows the cluster's leader"
    );
    assert_eq!(
        documents(&state, "p"),
        vec![
            r#"{"tag":"before"}"#,
            r#"{"tag":"during-1"}"#,
            r#"{"tag":"during-2"}"#
        ]
    );
    assert_eq!(state.revision(), 4, "three puts of p and the barrier");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_cut_off_from_a_minority_with_the_leader_stays_writable() {
    init_tracing();
    let faults = Faults::with_seed(2);
    let cluster = Cluster::start(5, &faults).await;
    let all = cluster.ids();
    let old = cluster.wait_for_leader(&all, None).await;

    // The old leader goes to the minority, so the majority has to elect a leader of its own.
    let minority: Vec<NodeId> = std::iter::once(old)
        .chain(all.iter().copied().filter(|&id| id != old).take(1))
        .collect();
    let majority: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|id| !minority.contains(id))
        .collect();
    info!("--- partition {minority:?} from {majority:?}");
    faults.partition(&minority, &majority);
    let new = cluster.wait_for_leader(&majority, Some(old)).await;

    info!("--- the majority's leader {new} commits");
    let mut last = 0;
    for n in 1..=3 {
        let (index, response) = cluster
            .write(new, put("p", &format!("majority-{n}"), None))
            .await;
        assert!(matches!(response, Response::Applied { policy_version: Some(v), .. } if v == n));
        last = index;
    }
    cluster.wait_applied(&majority, last).await;

    info!("--- the minority (old leader {old}) cannot commit");
    let mut stranded = cluster.spawn_write(old, put("p", "minority", None));
    assert_not_committed(&mut stranded, old).await;
    for &id in &minority {
        let state = cluster.node(id).reader().read(ConfigState::clone);
        assert!(
            documents(&state, "p").is_empty(),
            "node {id} applied a write"
        );
    }

    info!("--- heal; all five converge");
    let (_, state) = cluster.heal_and_converge(&faults, "after-heal").await;
    assert_refused_after_heal(stranded).await;
    assert_eq!(
        documents(&state, "p"),
        (1..=3)
            .map(|n| format!(r#"{{"tag":"majority-{n}"}}"#))
            .collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links_still_replicate_every_write() {
    init_tracing();
    let faults = Faults::with_seed(3);
    // openraft gives an append-entries RPC one heartbeat interval (100 ms) for the round trip,
    // so 25 ms each way leaves room for a loaded machine's fsync.
    faults.set_all_links(LinkFault {
        delay: Duration::from_millis(25),
        ..LinkFault::default()
    });
    let cluster = Cluster::start(3, &faults).await;
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(&all, None).await;

    info!("--- ten writes over 25 ms links");
    let mut last = 0;
    for n in 1..=10u64 {
        let (index, response) = cluster
            .write(leader, put("p", &format!("slow-{n}"), Some(n - 1)))
            .await;
        assert!(matches!(response, Response::Applied { policy_version: Some(v), .. } if v == n));
        last = index;
    }
    cluster.wait_applied(&all, last).await;
    let state = cluster.assert_converged();
    assert_eq!(documents(&state, "p").len(), 10);
    assert_eq!(state.revision(), 10);
    assert!(faults.stats().delayed > 0);
    assert_eq!(faults.stats().dropped, 0);
    cluster.shutdown().await;
}

/// What the client learned about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged as this policy version.
    Acked(u64),
    /// Timed out: it may or may not have been committed.
    Unknown,
}

/// Propose `request` like a client would: start at the node `start` believes leads, follow
/// forward-to-leader answers (a refused write was not committed, so retrying it is safe), give up
/// on a write that does not answer within [`WRITE_TIMEOUT`] (it may still commit).
async fn propose(cluster: &Cluster, start: NodeId, request: &Request) -> Outcome {
    let deadline = Instant::now() + WAIT;
    let mut target = cluster.node(start).leader().map_or(start, |(id, _)| id);
    while Instant::now() < deadline {
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            cluster.node(target).client_write(request.clone()),
        )
        .await;
        match written {
            Err(_elapsed) => return Outcome::Unknown,
            Ok(Ok(Response::Applied {
                policy_version: Some(version),
                ..
            })) => return Outcome::Acked(version),
            Ok(Ok(other)) => panic!("unexpected response {other:?}"),
            Ok(Err(NodeError::ForwardToLeader { leader_id, .. })) => {
                target = match leader_id {
                    Some(leader) if leader != target => leader,
                    _ => {
                        // No leader known here (yet): wait until this node learns one.
                        let asked = target;
                        cluster
                            .node(asked)
                            .raft()
                            .wait(Some(deadline.saturating_duration_since(Instant::now())))
                            .metrics(
                                |m| {
                                    m.state == ServerState::Leader
                                        || m.current_leader.is_some_and(|l| l != asked)
                                },
                                "a leader is known",
                            )
                            .await
                            .ok()
                            .and_then(|m| m.current_leader)
                            .unwrap_or(asked)
                    }
                };
            }
            Ok(Err(other)) => panic!("unexpected write error {other}"),
        }
    }
    Outcome::Unknown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_links_lose_no_acknowledged_write_and_apply_none_twice() {
    init_tracing();
    let faults = Faults::with_seed(4);
    let cluster = Cluster::start(3, &faults).await;
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(&all, None).await;

    let mut outcomes = Vec::new();
    // Light loss, then heavy loss that also starves followers of heartbeats long enough to cause
    // elections while writes are in flight. Each phase keeps writing for several election
    // timeouts.
    for (drop_rate, lose_reply_rate) in [(0.3, 0.2), (0.7, 0.5)] {
        info!(
            "--- drop {drop_rate} of requests and lose {lose_reply_rate} of replies on every link"
        );
        faults.set_all_links(LinkFault {
            drop_rate,
            lose_reply_rate,
            ..LinkFault::default()
        });
        let started = Instant::now();
        let term_before = cluster.node(leader).metrics().borrow().current_term;
        let first = outcomes.len();
        while outcomes.len() - first < 20
            || (started.elapsed() < LOSSY_PERIOD && outcomes.len() - first < 1_000)
        {
            let tag = format!("lossy-{}", outcomes.len() + 1);
            let outcome = propose(&cluster, leader, &put("p", &tag, None)).await;
            outcomes.push((format!(r#"{{"tag":"{tag}"}}"#), outcome));
        }
        let acked = outcomes[first..]
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Acked(_)))
            .count();
        let terms = cluster.node(leader).metrics().borrow().current_term - term_before;
        info!(
            stats = ?faults.stats(),
            writes = outcomes.len() - first,
            acked,
            terms,
            "--- phase done"
        );
    }
    let stats = faults.stats();
    assert!(stats.dropped > 0 && stats.lost_replies > 0, "{stats:?}");
    let acked = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Acked(_)))
        .count();

    let (_, state) = cluster.heal_and_converge(&faults, "after-heal").await;
    let versions = state.policy_versions("p").unwrap_or_default();
    let committed: Vec<&str> = versions.iter().map(|v| v.document.as_str()).collect();
    let distinct: BTreeSet<&str> = committed.iter().copied().collect();
    assert_eq!(distinct.len(), committed.len(), "a write applied twice");
    for (document, outcome) in &outcomes {
        match outcome {
            Outcome::Acked(version) => {
                let at = versions.iter().find(|v| &v.document == document);
                assert_eq!(
                    at.map(|v| v.version),
                    Some(*version),
                    "acknowledged write {document} is missing or at another version"
                );
            }
            Outcome::Unknown => {}
        }
    }
    assert!(
        acked * 4 >= outcomes.len() * 3,
        "only {acked} of {} writes acknowledged",
        outcomes.len()
    );
    assert!(committed.len() >= acked && committed.len() <= outcomes.len());
    assert!(
        committed
            .iter()
            .all(|d| outcomes.iter().any(|(doc, _)| doc == d)),
        "a write nobody proposed was committed"
    );
    // Every applied change is a put of p, plus the barrier.
    assert_eq!(state.revision(), committed.len() as u64 + 1);
    cluster.shutdown().await;
}
