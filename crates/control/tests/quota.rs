//! The quota leader service over real 1- and 3-node Raft clusters (`ControlNode`, loopback tonic
//! listeners bound to port 0), driven by the generated `QuotaService` client.
//!
//! Every wait is on a condition (Raft metrics, the next stream message) with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_control::{ControlNode, LocalCluster};
use tollgate_proto::v1::quota_service_client::QuotaServiceClient;
use tollgate_proto::v1::{
    QuotaDemand, QuotaDown, QuotaHello, QuotaLease, QuotaLeaseReport, QuotaShowRequest, QuotaUp,
    QuotaWindow,
};
use tollgate_proto::{ADMIN_TOKEN_METADATA_KEY, LEADER_METADATA_KEY};
use tonic::Streaming;
use tracing::info;

const WAIT: Duration = Duration::from_secs(15);
const ADMIN: &str = "admin-secret";
/// Hour windows: a test never straddles a boundary in practice, and sums are per window id anyway.
const HOUR: QuotaWindow = QuotaWindow::Hour;

/// One gateway's open session.
struct Gateway {
    seq: u64,
    tx: mpsc::Sender<QuotaUp>,
    rx: Streaming<QuotaDown>,
}

impl Gateway {
    async fn open(node: &ControlNode, id: &str, epoch: u64) -> Result<Self, tonic::Status> {
        Self::open_at(node, id, epoch, 0).await
    }

    /// Open a session whose next message has `seq + 1`.
    async fn open_at(
        node: &ControlNode,
        id: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<Self, tonic::Status> {
        let mut client = QuotaServiceClient::connect(format!("http://{}", node.api_addr()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(64);
        tx.send(QuotaUp {
            hello: Some(QuotaHello {
                gateway_id: id.into(),
                epoch,
            }),
            seq,
            ..QuotaUp::default()
        })
        .await
        .unwrap();
        let rx = client.session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { seq, tx, rx })
    }

    async fn send(&mut self, demands: Vec<QuotaDemand>, reports: Vec<QuotaLeaseReport>) -> u64 {
        self.send_seq(self.seq + 1, demands, reports).await
    }

    async fn send_seq(
        &mut self,
        seq: u64,
        demands: Vec<QuotaDemand>,
        reports: Vec<QuotaLeaseReport>,
    ) -> u64 {
        self.seq = self.seq.max(seq);
        self.tx
            .send(QuotaUp {
                hello: None,
                seq,
                demands,
                reports,
            })
            .await
            .unwrap();
        seq
    }

    async fn next(&mut self) -> QuotaDown {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no quota message in time")
            .expect("quota stream failed")
            .expect("quota stream ended")
    }

    /// Send one sync demand and wait for its answer: `Ok(lease)` or `Err(exhausted)`.
    async fn demand(
        &mut self,
        demand_id: u64,
        key: &str,
        max: u64,
        want: u64,
    ) -> Result<QuotaLease, bool> {
        self.send(vec![demand(demand_id, key, max, want, true)], vec![])
            .await;
        loop {
            let down = self.next().await;
            if let Some(lease) = down.leases.into_iter().find(|l| l.demand_id == demand_id) {
                return Ok(lease);
            }
            if let Some(refusal) = down.refusals.into_iter().find(|r| r.demand_id == demand_id) {
                return Err(refusal.exhausted);
            }
        }
    }

    async fn wait_acked(&mut self, seq: u64) {
        while self.next().await.acked_seq < seq {}
    }
}

fn demand(demand_id: u64, key: &str, max: u64, want: u64, sync: bool) -> QuotaDemand {
    QuotaDemand {
        demand_id,
        key: key.into(),
        window: HOUR as i32,
        max,
        want,
        sync,
    }
}

fn report(lease: &QuotaLease, term: u64, consumed: u64, returned: u64) -> QuotaLeaseReport {
    QuotaLeaseReport {
        lease_id: lease.lease_id,
        term,
        key: lease.key.clone(),
        window: lease.window,
        window_id: lease.window_id,
        consumed,
        returned,
        closed: returned > 0,
    }
}

async fn show(node: &ControlNode, key: &str) -> tollgate_proto::v1::QuotaShowResponse {
    let mut client = QuotaServiceClient::connect(format!("http://{}", node.api_addr()))
        .await
        .unwrap();
    let mut request = tonic::Request::new(QuotaShowRequest { key: key.into() });
    request.metadata_mut().insert(
        ADMIN_TOKEN_METADATA_KEY,
        format!("Bearer {ADMIN}").parse().unwrap(),
    );
    client.show(request).await.unwrap().into_inner()
}

/// Demand `want` tokens (sync) until the window is exhausted; returns tokens per window id.
async fn drain(gateways: &mut [Gateway], key: &str, max: u64, want: u64) -> HashMap<u64, u64> {
    let mut leased: HashMap<u64, u64> = HashMap::new();
    let mut exhausted = vec![false; gateways.len()];
    let mut id = 1_000;
    let mut rounds = 0;
    while exhausted.iter().any(|e| !e) {
        rounds += 1;
        assert!(rounds < 10_000, "the window never ran out");
        for (i, gateway) in gateways.iter_mut().enumerate() {
            if exhausted[i] {
                continue;
            }
            id += 1;
            match gateway.demand(id, key, max, want).await {
                Ok(lease) => {
                    assert!(lease.tokens >= 1 && lease.tokens <= want);
                    assert!(lease.ttl_ms >= 1 && lease.ttl_ms <= 1_000);
                    *leased.entry(lease.window_id).or_default() += lease.tokens;
                }
                Err(true) => exhausted[i] = true,
                Err(false) => {} // could not answer now: retry
            }
        }
    }
    leased
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_two_gateways_never_exceed_the_limit_and_then_are_refused_as_exhausted() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut gateways = vec![
        Gateway::open(cluster.node(0), "gw-a", 1).await.unwrap(),
        Gateway::open(cluster.node(0), "gw-b", 1).await.unwrap(),
    ];
    info!("--- drain a limit of 50 with demands of 3 from two gateways");
    let leased = drain(&mut gateways, "grant:g/tool_rate", 50, 3).await;
    for (window_id, tokens) in &leased {
        assert!(*tokens <= 50, "window {window_id} leased {tokens} of 50");
    }
    // All chunks belong to the one term, so every token of the window is leasable.
    assert!(leased.values().any(|t| *t == 50), "{leased:?}");
    let report = show(cluster.node(0), "grant:g/tool_rate").await;
    assert!(report.windows.iter().all(|w| w.outstanding <= w.max));
    assert!(
        report
            .windows
            .iter()
            .any(|w| w.leased == 50 && w.stranded == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_sessions_with_the_leader_address() {
    let cluster = LocalCluster::start(3, ADMIN).await.unwrap();
    let leader = cluster.leader_index().unwrap();
    let follower = (leader + 1) % cluster.len();
    let status = Gateway::open(cluster.node(follower), "gw-a", 1)
        .await
        .err()
        .expect("a follower accepted a quota session");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let named = status.metadata().get(LEADER_METADATA_KEY).unwrap();
    assert_eq!(
        named.to_str().unwrap(),
        cluster.node(leader).api_addr().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_is_settled_once_even_when_a_report_is_resent_after_a_reconnect() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let term = cluster.node(0).node().metrics().borrow().current_term;
    let key = "grant:g/settle";
    let mut gateway = Gateway::open(cluster.node(0), "gw-a", 7).await.unwrap();
    let lease = gateway.demand(1, key, 100, 10).await.unwrap();
    info!("--- report 3 consumed");
    let seq = gateway.send(vec![], vec![report(&lease, term, 3, 0)]).await;
    gateway.wait_acked(seq).await;
    assert_eq!(show(cluster.node(0), key).await.windows[0].consumed, 3);
    info!("--- reconnect and send the same report again");
    drop(gateway);
    let mut gateway = Gateway::open_at(cluster.node(0), "gw-a", 7, seq - 1)
        .await
        .unwrap();
    gateway
        .send_seq(seq, vec![], vec![report(&lease, term, 3, 0)])
        .await;
    gateway.wait_acked(seq).await;
    let next = gateway.send(vec![], vec![report(&lease, term, 2, 0)]).await;
    gateway.wait_acked(next).await;
    assert_eq!(show(cluster.node(0), key).await.windows[0].consumed, 5);
}

/// The last index in the first node's Raft log.
fn last_log_index(cluster: &LocalCluster) -> u64 {
    cluster
        .node(0)
        .node()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demands_gathered_in_one_tick_become_one_raft_entry() {
    let cluster = LocalCluster::start(1, ADMIN).await.unwrap();
    let mut gateway = Gateway::open(cluster.node(0), "gw-a", 1).await.unwrap();
    let before = last_log_index(&cluster);
    let demands: Vec<QuotaDemand> = (0..20)
        .map(|i| demand(i, &format!("grant:g/key-{}", i % 5), 1_000, 2, false))
        .collect();
    gateway.send(demands, vec![]).await;
    let mut answered = 0;
    while answered < 20 {
        let down = gateway.next().await;
        assert!(down.refusals.is_empty(), "{:?}", down.refusals);
        answered += down.leases.len();
    }
    let after = last_log_index(&cluster);
    assert_eq!(
        after - before,
        1,
        "20 demands in one tick made {} entries",
        after - before
    );
    info!("--- the next chunk is sized by recent leases; demands it covers need no entry");
    let lease = gateway
        .demand(100, "grant:g/key-0", 1_000, 1)
        .await
        .unwrap();
    assert_eq!(lease.tokens, 1);
    let after = last_log_index(&cluster);
    let mut round_trips = Vec::new();
    for id in 101..201 {
        let started = std::time::Instant::now();
        let lease = gateway.demand(id, "grant:g/key-0", 1_000, 1).await.unwrap();
        round_trips.push(started.elapsed());
        assert_eq!(lease.tokens, 1);
        if id == 101 {
            assert_eq!(
                last_log_index(&cluster),
                after,
                "a demand the chunk covers was written to the log"
            );
        }
    }
    round_trips.sort();
    println!(
        "lease round trip on loopback: p50 {:?}, p99 {:?}",
        round_trips[round_trips.len() / 2],
        round_trips[round_trips.len() * 99 / 100]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_leases_only_what_remains_and_releases_returned_old_leases() {
    let mut cluster = LocalCluster::start(3, ADMIN).await.unwrap();
    let key = "grant:g/failover";
    let first = cluster.leader_index().unwrap();
    let old_term = cluster.node(first).node().metrics().borrow().current_term;
    let mut gateway = Gateway::open(cluster.node(first), "gw-a", 1).await.unwrap();
    info!("--- lease 2 + 2 tokens; the second chunk is 4, so 2 stay unleased in the old term");
    let a = gateway.demand(1, key, 20, 2).await.unwrap();
    let b = gateway.demand(2, key, 20, 2).await.unwrap();
    assert_eq!((a.tokens, b.tokens), (2, 2));
    let outstanding = show(cluster.node(first), key).await.windows[0].outstanding;
    assert!(outstanding >= 4);
    drop(gateway);

    info!("--- shut the leader down");
    cluster.stop(first).await;
    cluster.wait_for_new_leader(old_term).await.unwrap();
    let second = cluster.leader_index().unwrap();
    let new_term = cluster.node(second).node().metrics().borrow().current_term;

    info!("--- return lease a (2 unused) to the new leader, then drain");
    let mut gateway = Gateway::open_at(cluster.node(second), "gw-a", 1, 10)
        .await
        .unwrap();
    let seq = gateway.send(vec![], vec![report(&a, old_term, 0, 2)]).await;
    gateway.wait_acked(seq).await;
    let leased = drain(std::slice::from_mut(&mut gateway), key, 20, 3).await;
    let in_window = leased.get(&a.window_id).copied().unwrap_or(0);
    assert_eq!(in_window, 20 - outstanding + 2, "{leased:?}");
    let report = show(cluster.node(second), key).await;
    let window = report
        .windows
        .iter()
        .find(|w| w.window_id == a.window_id)
        .unwrap();
    assert_eq!(window.outstanding, 20);
    assert_eq!(window.stranded, outstanding - 2);
    assert_eq!(window.leased, in_window);
    assert!(new_term > old_term);
    cluster.shutdown().await;
}
