//! The cluster as an operator runs it: real `tollgate serve` processes (three control nodes and
//! one or two gateways, see `common/sandbox.rs`) on loopback ports, driven over the public gRPC
//! `AdminService` and the MCP data plane, while control nodes are killed (SIGKILL), stopped
//! (SIGTERM), paused (SIGSTOP) and restarted from their data directories.
//!
//! Every test owns its ports, directories and processes, so the tests run in parallel. Timings
//! (elections, revocation) are logged; their asserted bounds are generous because a shared CI
//! machine can be slow, and `cluster-bench` (`benches/cluster`) carries the real figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sandbox.rs"]
mod sandbox;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::{ALLOW_ALL, Admin, Options, Sandbox, deny_echo_policy};
use tokio::time::Instant;
use tollgate_proto::v1::{
    ListGrantsRequest, ListPolicyVersionsRequest, ListUpstreamsRequest, PutPolicyResponse,
    RevokeGrantRequest,
};
use tollgate_testkit::{RunningUpstream, Upstream, UpstreamOptions, wait_for_async};
use tracing::info;

/// The upstream's name in the cluster.
const SERVER: &str = "up";
/// The policy that allows every call.
const OPEN: &str = "open";
/// The policy whose versions the tests push: it denies `echo`, stamping the version.
const VERSIONS: &str = "versions";
/// Waits for elections, propagation and restarts.
const WAIT: Duration = Duration::from_secs(20);

/// A running sandbox with the upstream registered, the two policies pushed and one grant on each.
struct Fixture {
    sandbox: Sandbox,
    admin: Admin,
    /// A grant under [`OPEN`].
    open_token: String,
    /// A grant under [`VERSIONS`].
    versions_token: String,
    upstream: RunningUpstream,
}

async fn put_policy(admin: &Admin, id: &str, document: &str) -> PutPolicyResponse {
    admin.put_policy(WAIT, id, document).await.unwrap()
}

async fn put_upstream(admin: &Admin, name: &str, url: &str) {
    admin.put_upstream(WAIT, name, url).await.unwrap();
}

/// Creates a grant; returns its id and token.
async fn create_grant(admin: &Admin, label: &str, server: &str, policy: &str) -> (String, String) {
    admin
        .create_grant(WAIT, label, server, policy)
        .await
        .unwrap()
}

async fn revoke_grant(admin: &Admin, id: &str) -> u64 {
    let id = id.to_owned();
    admin
        .write(WAIT, |mut client| {
            let request = Admin::request(RevokeGrantRequest {
                grant_id: id.clone(),
            });
            async move { client.revoke_grant(request).await }
        })
        .await
        .unwrap()
        .revision
}

impl Fixture {
    async fn start(controls: usize, gateways: usize) -> Self {
        tollgate_tests::init_tracing();
        let upstream = Upstream::start(UpstreamOptions::default()).await.unwrap();
        info!("--- start {controls} control nodes and {gateways} gateways");
        let sandbox = Sandbox::start(Options {
            binary: env!("CARGO_BIN_EXE_tollgate").into(),
            controls,
            gateways,
            rust_log: "info".to_owned(),
            start_timeout: WAIT,
        })
        .await
        .unwrap();
        let leader = sandbox.leader(WAIT).await.unwrap();
        info!(
            leader = sandbox.controls[leader].id,
            "--- a leader is elected; seed the cluster"
        );
        let admin = sandbox.admin();
        put_upstream(&admin, SERVER, &upstream.url).await;
        put_policy(&admin, OPEN, ALLOW_ALL).await;
        put_policy(&admin, VERSIONS, &deny_echo_policy(0)).await;
        let (_, open_token) = create_grant(&admin, "open", SERVER, OPEN).await;
        let (_, versions_token) = create_grant(&admin, "versions", SERVER, VERSIONS).await;
        let fixture = Self {
            sandbox,
            admin,
            open_token,
            versions_token,
            upstream,
        };
        for g in 0..gateways {
            fixture.wait_serving(g, &fixture.open_token).await;
        }
        fixture
    }

    /// Waits until gateway `g` forwards `echo` for `token`.
    async fn wait_serving(&self, g: usize, token: &str) {
        wait_for_async(WAIT, || async {
            self.sandbox
                .call(g, SERVER, token, "echo")
                .await
                .is_ok_and(|a| a.is_upstream_result())
        })
        .await
        .unwrap_or_else(|e| panic!("gateway {g} serves the grant: {e}"));
    }

    /// The policy version gateway `g` enforces for [`VERSIONS`] (from a denied `echo`).
    async fn enforced_version(&self, g: usize) -> Option<u64> {
        self.sandbox
            .call(g, SERVER, &self.versions_token, "echo")
            .await
            .ok()?
            .denied_by_version()
    }

    /// Waits until every gateway's `tollgate_config_revision` is the leader's revision and
    /// returns it.
    async fn wait_converged(&self, leader: usize) -> u64 {
        let revision = self.sandbox.status(leader).await.unwrap().revision;
        for g in 0..self.sandbox.gateways.len() {
            wait_for_async(WAIT, || async {
                self.sandbox.gateway_revision(g).await.ok() == Some(revision)
            })
            .await
            .unwrap_or_else(|e| panic!("gateway {g} reaches revision {revision}: {e}"));
        }
        revision
    }

    async fn versions(&self, addr: &str, policy: &str) -> Vec<(u64, String)> {
        self.admin
            .client(addr)
            .unwrap()
            .list_policy_versions(Admin::request(ListPolicyVersionsRequest {
                policy_id: policy.to_owned(),
                include_documents: false,
            }))
            .await
            .unwrap()
            .into_inner()
            .versions
            .into_iter()
            .map(|v| (v.version, v.digest))
            .collect()
    }

    /// Every policy version of `p1` and `p2`, every grant (id, label, revoked) and upstream, as
    /// the node at `api` has them.
    async fn everything(&self, api: &str) -> Everything {
        let mut client = self.admin.client(api).unwrap();
        let p1 = self.versions(api, "p1").await;
        let p2 = self.versions(api, "p2").await;
        let mut grants: Vec<(String, String, bool)> = client
            .list_grants(Admin::request(ListGrantsRequest {
                include_revoked: true,
                server: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .grants
            .into_iter()
            .map(|g| (g.id, g.label, g.revoked))
            .collect();
        grants.sort();
        let upstreams: Vec<String> = client
            .list_upstreams(Admin::request(ListUpstreamsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .upstreams
            .into_iter()
            .map(|u| format!("{u:?}"))
            .collect();
        (p1, p2, grants, upstreams)
    }
}

/// Policy versions of two policies, grants and upstreams.
type Everything = (
    Vec<(u64, String)>,
    Vec<(u64, String)>,
    Vec<(String, String, bool)>,
    Vec<String>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_survive_killing_the_leader_and_both_gateways_converge() {
    let mut fixture = Fixture::start(3, 2).await;
    let old_leader = fixture.sandbox.leader(WAIT).await.unwrap();

    info!("--- a writer pushes versions continuously, following the leader");
    // Every acknowledged (version, digest, when).
    let acked = Arc::new(Mutex::new(Vec::<(u64, String, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (admin, acked, stop) = (fixture.admin.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 1u64;
            while !stop.load(Ordering::SeqCst) {
                let response = put_policy(&admin, VERSIONS, &deny_echo_policy(n)).await;
                assert!(response.errors.is_empty(), "{:?}", response.errors);
                acked
                    .lock()
                    .unwrap()
                    .push((response.version, response.digest, Instant::now()));
                n += 1;
            }
        })
    };
    let acked_after = |since: Instant| acked.lock().unwrap().iter().filter(|a| a.2 > since).count();
    wait_for_async(WAIT, || async { acked.lock().unwrap().len() >= 5 })
        .await
        .expect("writes are acknowledged");

    info!(
        leader = fixture.sandbox.controls[old_leader].id,
        "--- kill -9 the leader mid-stream"
    );
    let killed_at = Instant::now();
    fixture.sandbox.kill(old_leader).await.unwrap();
    let new_leader = fixture.sandbox.leader(WAIT).await.unwrap();
    let elected = killed_at.elapsed();
    assert_ne!(new_leader, old_leader);
    wait_for_async(WAIT, || async { acked_after(killed_at) >= 1 })
        .await
        .expect("writes resume on the new leader");
    let first_write = acked
        .lock()
        .unwrap()
        .iter()
        .find(|a| a.2 > killed_at)
        .unwrap()
        .2
        - killed_at;
    info!(
        leader = fixture.sandbox.controls[new_leader].id,
        elected_ms = elected.as_millis(),
        first_write_ms = first_write.as_millis(),
        "--- a new leader is elected and writes resume"
    );
    wait_for_async(WAIT, || async { acked_after(killed_at) >= 5 })
        .await
        .expect("writes keep going");
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    info!("--- every acknowledged version is stored");
    let acked: Vec<(u64, String, Instant)> = acked.lock().unwrap().clone();
    let leader_api = fixture.sandbox.controls[new_leader].api.clone();
    let stored = fixture.versions(&leader_api, VERSIONS).await;
    for (version, digest, _) in &acked {
        assert!(
            stored.iter().any(|(v, d)| v == version && d == digest),
            "acknowledged version {version} ({digest}) is lost; stored: {stored:?}"
        );
    }
    let last = acked.last().unwrap().0;
    assert_eq!(
        stored.last().unwrap().0,
        last,
        "the last acknowledged version serves"
    );
    info!(
        acked = acked.len(),
        stored = stored.len(),
        last,
        "--- no acknowledged write lost"
    );

    info!("--- both gateways converge on the cluster's revision and enforce the last version");
    let revision = fixture.wait_converged(new_leader).await;
    for g in 0..2 {
        assert_eq!(fixture.enforced_version(g).await, Some(last), "gateway {g}");
    }
    info!(revision, "--- converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_from_disk_with_everything() {
    let mut fixture = Fixture::start(3, 1).await;
    let admin = fixture.admin.clone();

    info!("--- several policy versions, grants (one revoked) and upstreams");
    for n in 1..=3 {
        put_policy(&admin, "p1", &deny_echo_policy(n)).await;
    }
    put_policy(&admin, "p2", ALLOW_ALL).await;
    put_policy(&admin, "p2", &deny_echo_policy(7)).await;
    put_upstream(&admin, "up2", &fixture.upstream.url).await;
    let (_, kept_token) = create_grant(&admin, "kept", SERVER, OPEN).await;
    let (revoked_id, revoked_token) = create_grant(&admin, "revoked", "up2", "p2").await;
    revoke_grant(&admin, &revoked_id).await;
    fixture.wait_serving(0, &kept_token).await;
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();
    let revision = fixture.wait_converged(leader).await;
    assert_eq!(
        fixture
            .sandbox
            .call(0, "up2", &revoked_token, "echo")
            .await
            .unwrap()
            .status,
        401
    );

    let leader_api = fixture.sandbox.controls[leader].api.clone();
    let before = fixture.everything(&leader_api).await;
    assert_eq!(before.0.len(), 3);
    assert_eq!(before.1.len(), 2);
    assert_eq!(before.2.iter().filter(|g| g.2).count(), 1, "{:?}", before.2);
    assert_eq!(before.3.len(), 2);

    info!("--- SIGTERM every control node");
    // Watch what the gateway holds while the control plane is away and back.
    let lowest = Arc::new(AtomicU64::new(revision));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (http, admin_addr) = (
            fixture.sandbox.http().clone(),
            fixture.sandbox.gateways[0].admin,
        );
        let (lowest, stop) = (lowest.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let url = format!("http://{admin_addr}/metrics");
                if let Ok(response) = http.get(url).send().await
                    && let Ok(text) = response.text().await
                    && let Some(seen) = sandbox::metric_value(&text, "tollgate_config_revision")
                {
                    lowest.fetch_min(seen, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    fixture.sandbox.terminate_all().await.unwrap();

    info!("--- start them again from the same data directories");
    for i in 0..3 {
        fixture.sandbox.respawn(i).unwrap();
    }
    for i in 0..3 {
        fixture.sandbox.wait_listening(i).await.unwrap();
    }
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();
    info!(
        leader = fixture.sandbox.controls[leader].id,
        "--- a leader again"
    );
    // Reads are answered from the applied state, which a restarted node rebuilds from its log
    // once the new term's first entry commits.
    wait_for_async(WAIT, || async {
        fixture
            .sandbox
            .status(leader)
            .await
            .is_ok_and(|s| s.revision >= revision)
    })
    .await
    .expect("the leader re-applies its log");
    let after = fixture
        .everything(&fixture.sandbox.controls[leader].api.clone())
        .await;
    assert_eq!(after, before, "everything survives the restart");

    info!("--- the gateway follows the restarted cluster");
    fixture.wait_converged(leader).await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let lowest = lowest.load(Ordering::SeqCst);
    info!(
        before = revision,
        lowest, "the gateway's revision while the control plane restarted"
    );
    assert_eq!(
        lowest, revision,
        "the gateway never went back to an older configuration"
    );
    let pushed = put_policy(&admin, "p1", &deny_echo_policy(4)).await;
    assert_eq!(pushed.version, 4);
    fixture.wait_converged(leader).await;
    let answer = fixture
        .sandbox
        .call(0, SERVER, &kept_token, "echo")
        .await
        .unwrap();
    assert!(answer.is_upstream_result(), "{answer:?}");
    let revoked = fixture
        .sandbox
        .call(0, "up2", &revoked_token, "echo")
        .await
        .unwrap();
    assert_eq!(revoked.status, 401, "{revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_catches_up() {
    let mut fixture = Fixture::start(3, 0).await;
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();

    info!(
        follower = fixture.sandbox.controls[follower].id,
        "--- SIGSTOP a follower"
    );
    fixture.sandbox.pause(follower).unwrap();

    info!("--- writes still commit with two of three");
    let mut last = 0;
    for n in 1..=20 {
        last = put_policy(&fixture.admin, VERSIONS, &deny_echo_policy(n))
            .await
            .version;
    }
    let leader_status = fixture.sandbox.status(leader).await.unwrap();

    info!("--- SIGCONT: the follower catches up");
    let resumed = Instant::now();
    fixture.sandbox.resume(follower).unwrap();
    wait_for_async(WAIT, || async {
        fixture.sandbox.status(follower).await.is_ok_and(|s| {
            s.revision >= leader_status.revision && s.applied_index >= leader_status.applied_index
        })
    })
    .await
    .expect("the follower reaches the leader's revision");
    info!(
        revision = leader_status.revision,
        caught_up_ms = resumed.elapsed().as_millis(),
        "--- caught up"
    );
    let api = fixture.sandbox.controls[follower].api.clone();
    let stored = fixture.versions(&api, VERSIONS).await;
    assert_eq!(stored.last().map(|v| v.0), Some(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_push_is_refused_with_the_path_and_nothing_changes() {
    let fixture = Fixture::start(3, 2).await;
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();
    let revision = fixture.wait_converged(leader).await;
    let leader_api = fixture.sandbox.controls[leader].api.clone();
    let before = fixture.versions(&leader_api, VERSIONS).await;
    let serving = before.last().unwrap().0;
    for g in 0..2 {
        assert_eq!(fixture.enforced_version(g).await, Some(serving));
    }

    info!("--- push a document with an unknown field and a bad value");
    let response = put_policy(
        &fixture.admin,
        VERSIONS,
        r#"{"version":"1","default":"maybe","tolls":{}}"#,
    )
    .await;
    let pointers: Vec<&str> = response.errors.iter().map(|e| e.pointer.as_str()).collect();
    assert!(pointers.contains(&"/tolls"), "{:?}", response.errors);
    assert!(pointers.contains(&"/default"), "{:?}", response.errors);
    assert_eq!(response.version, serving);
    assert!(response.digest.is_empty());

    info!("--- nothing changed: history, revision, what the gateways enforce");
    assert_eq!(fixture.versions(&leader_api, VERSIONS).await, before);
    assert_eq!(
        fixture.sandbox.status(leader).await.unwrap().revision,
        revision
    );
    for g in 0..2 {
        assert_eq!(fixture.sandbox.gateway_revision(g).await.unwrap(), revision);
        assert_eq!(fixture.enforced_version(g).await, Some(serving));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_is_refused_on_every_gateway_within_500_ms() {
    let fixture = Fixture::start(3, 2).await;
    let (grant_id, token) = create_grant(&fixture.admin, "victim", SERVER, OPEN).await;
    for g in 0..2 {
        fixture.wait_serving(g, &token).await;
    }

    info!("--- revoke; poll both gateways until they answer 401");
    let started = Instant::now();
    let pollers: Vec<_> = (0..2)
        .map(|g| {
            let http = fixture.sandbox.http().clone();
            let data = fixture.sandbox.gateways[g].data;
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    let answer = sandbox::call_tool(&http, data, SERVER, &token, "echo").await;
                    if answer.is_ok_and(|a| a.status == 401) {
                        return started.elapsed();
                    }
                    if started.elapsed() > WAIT {
                        panic!("gateway {g} still serves a revoked grant");
                    }
                }
            })
        })
        .collect();
    let revision = revoke_grant(&fixture.admin, &grant_id).await;
    let acked = started.elapsed();
    let mut slowest = Duration::ZERO;
    for (g, poller) in pollers.into_iter().enumerate() {
        let refused = poller.await.unwrap();
        info!(gateway = g, refused_ms = refused.as_millis(), "refused");
        slowest = slowest.max(refused);
    }
    info!(
        revision,
        ack_ms = acked.as_millis(),
        every_gateway_ms = slowest.as_millis(),
        "--- revoked everywhere (target 500 ms; the bound asserted here is loose for shared CI)"
    );
    assert!(slowest <= Duration::from_secs(5), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_keep_succeeding_while_the_control_leader_is_killed() {
    let mut fixture = Fixture::start(3, 1).await;
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();

    info!("--- a client calls echo in a loop through the gateway");
    let successes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let http = fixture.sandbox.http().clone();
        let data = fixture.sandbox.gateways[0].data;
        let token = fixture.open_token.clone();
        let (successes, failures, stop) = (successes.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match sandbox::call_tool(&http, data, SERVER, &token, "echo").await {
                    Ok(answer) if answer.is_upstream_result() => {
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        })
    };
    info!("--- and real MCP clients (rmcp), one per protocol era, do the same");
    let url = format!("http://{}/mcp/{SERVER}", fixture.sandbox.gateways[0].data);
    let rmcp_successes = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let rmcp_clients: Vec<_> = [false, true]
        .into_iter()
        .zip(rmcp_successes.iter().cloned())
        .map(|(modern, successes)| {
            let url = url.clone();
            let token = fixture.open_token.clone();
            let (failures, stop) = (failures.clone(), stop.clone());
            tokio::spawn(async move {
                let client = tollgate_tests::mcp_client(&url, &token, modern).await;
                while !stop.load(Ordering::SeqCst) {
                    let mut call = rmcp::model::CallToolRequestParams::new("echo");
                    call.arguments = serde_json::json!({"text": "hi"}).as_object().cloned();
                    match client.call_tool(call).await {
                        Ok(result) if result.is_error != Some(true) => {
                            successes.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures
                            .lock()
                            .unwrap()
                            .push(format!("rmcp (modern: {modern}): {other:?}")),
                    }
                }
                let _ = client.cancel().await;
            })
        })
        .collect();
    wait_for_async(WAIT, || async {
        successes.load(Ordering::SeqCst) >= 20
            && rmcp_successes.iter().all(|s| s.load(Ordering::SeqCst) >= 5)
    })
    .await
    .expect("calls succeed");

    info!("--- kill -9 the control leader");
    fixture.sandbox.kill(leader).await.unwrap();
    let at_kill = successes.load(Ordering::SeqCst);
    let rmcp_at_kill: Vec<u64> = rmcp_successes
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .collect();
    let new_leader = fixture.sandbox.leader(WAIT).await.unwrap();
    info!(
        leader = fixture.sandbox.controls[new_leader].id,
        "--- a new leader; the cluster takes writes again"
    );
    put_policy(&fixture.admin, VERSIONS, &deny_echo_policy(1)).await;
    fixture.wait_converged(new_leader).await;
    wait_for_async(WAIT, || async {
        successes.load(Ordering::SeqCst) >= at_kill + 50
            && rmcp_successes
                .iter()
                .zip(&rmcp_at_kill)
                .all(|(s, at)| s.load(Ordering::SeqCst) >= at + 20)
    })
    .await
    .expect("calls keep succeeding, from every client");
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    for rmcp_client in rmcp_clients {
        rmcp_client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    info!(
        successes = successes.load(Ordering::SeqCst),
        failures = failures.len(),
        "--- done"
    );
    assert!(failures.is_empty(), "failed calls: {failures:?}");
}

/// A restarted control node must not hand a reconnecting gateway an older configuration than the
/// one it holds (before the fix, the node served `Watch` from its last snapshot before replaying
/// its log, and the gateway swapped to an empty revision 0 and refused valid grants until the node
/// caught up; about one run in three). Three restarts in a row to catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_keeps_its_configuration_while_the_whole_control_plane_restarts() {
    let mut fixture = Fixture::start(3, 1).await;
    for round in 1..=3 {
        let leader = fixture.sandbox.leader(WAIT).await.unwrap();
        let revision = fixture.wait_converged(leader).await;
        let lowest = Arc::new(AtomicU64::new(revision));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let http = fixture.sandbox.http().clone();
            let data = fixture.sandbox.gateways[0].data;
            let admin_addr = fixture.sandbox.gateways[0].admin;
            let token = fixture.open_token.clone();
            let (lowest, stop) = (lowest.clone(), stop.clone());
            tokio::spawn(async move {
                let mut refused = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("http://{admin_addr}/metrics");
                    if let Ok(response) = http.get(url).send().await
                        && let Ok(text) = response.text().await
                        && let Some(seen) = sandbox::metric_value(&text, "tollgate_config_revision")
                    {
                        lowest.fetch_min(seen, Ordering::SeqCst);
                    }
                    if let Ok(answer) =
                        sandbox::call_tool(&http, data, SERVER, &token, "echo").await
                        && answer.status == 401
                    {
                        refused += 1;
                    }
                }
                refused
            })
        };
        info!(round, "--- SIGTERM every control node and start them again");
        fixture.sandbox.terminate_all().await.unwrap();
        for i in 0..3 {
            fixture.sandbox.respawn(i).unwrap();
        }
        for i in 0..3 {
            fixture.sandbox.wait_listening(i).await.unwrap();
        }
        let leader = fixture.sandbox.leader(WAIT).await.unwrap();
        fixture.wait_converged(leader).await;
        stop.store(true, Ordering::SeqCst);
        let refused = watcher.await.unwrap();
        let lowest = lowest.load(Ordering::SeqCst);
        info!(
            round,
            revision, lowest, refused, "--- the gateway during the restart"
        );
        assert_eq!(
            lowest, revision,
            "the gateway went back to an older configuration"
        );
        assert_eq!(
            refused, 0,
            "a valid grant was refused while the cluster restarted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_nodes_answer_health_probes_and_export_raft_metrics() {
    let fixture = Fixture::start(3, 2).await;
    let leader = fixture.sandbox.leader(WAIT).await.unwrap();
    let revision = fixture.wait_converged(leader).await;
    let http = fixture.sandbox.http();
    let scrape = |admin: std::net::SocketAddr| async move {
        let ready = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .as_u16();
        let text = http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some((ready, text))
    };
    let mut leaders = 0;
    for control in &fixture.sandbox.controls {
        let admin = control
            .admin
            .expect("a control node prints its admin address");
        info!(
            control = control.id,
            "--- ready, in touch, a voter of three, at the revision"
        );
        wait_for_async(WAIT, || async {
            scrape(admin).await.is_some_and(|(ready, text)| {
                ready == 200
                    && sandbox::metric_value(&text, "tollgate_raft_in_touch") == Some(1)
                    && sandbox::metric_value(&text, "tollgate_raft_voters") == Some(3)
                    && sandbox::metric_value(&text, "tollgate_control_revision") == Some(revision)
                    && sandbox::metric_value(&text, "tollgate_raft_term").is_some_and(|t| t >= 1)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("control {}: {e}", control.id));
        let (_, text) = scrape(admin).await.unwrap();
        leaders += sandbox::metric_value(&text, "tollgate_raft_leader").unwrap();
    }
    assert_eq!(leaders, 1, "exactly one control node says it leads");

    info!("--- every control node's status lists both gateways, wherever they watch");
    for i in 0..fixture.sandbox.controls.len() {
        let status = fixture.sandbox.status(i).await.unwrap();
        let mut ids: Vec<String> = status
            .gateways
            .iter()
            .map(|g| g.gateway_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["gateway-1", "gateway-2"], "{status:?}");
        assert!(
            status.gateways.iter().all(|g| g.revision == revision),
            "{status:?}"
        );
    }
}
