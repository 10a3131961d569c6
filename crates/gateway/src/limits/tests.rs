#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tollgate_policy::{Limit, OnUnavailable, Scope, Window as PolicyWindow};
use tollgate_quota::{LeasePool, LocalQuota, PoolConfig};
use tollgate_telemetry::Metrics;

use super::*;
use crate::quota_agent::{QuotaAgent, QuotaAgentOptions};

fn limit(counter: &str, scope: Scope, max: u64, on_unavailable: OnUnavailable) -> Limit {
    Limit {
        counter: counter.to_owned(),
        window: PolicyWindow::Hour,
        max,
        scope,
        on_unavailable,
        rule_id: format!("/all_tools/limits/{counter}"),
    }
}

fn decisions(metrics: &Metrics, kind: &str) -> u64 {
    metrics
        .quota_decisions
        .get_or_create(&KindLabels {
            kind: kind.to_owned(),
        })
        .get()
}

#[test]
fn each_scope_has_its_own_counter_key() {
    let key = |scope, session| {
        CallLimit::new(
            &limit("c", scope, 1, OnUnavailable::FailClosed),
            "g1",
            "files",
            session,
        )
        .key
    };
    assert_eq!(key(Scope::Grant, Some("s1")), "grant:g1/c");
    assert_eq!(key(Scope::Server, Some("s1")), "server:files/c");
    assert_eq!(key(Scope::Global, Some("s1")), "global:c");
    assert_eq!(key(Scope::Session, Some("s1")), "session:g1/s1/c");
    assert_eq!(key(Scope::Session, None), "session:g1/-/c");
    let session = CallLimit::new(
        &limit("c", Scope::Session, 1, OnUnavailable::FailOpen),
        "g1",
        "files",
        None,
    );
    assert!(session.node_local && session.fail_open);
}

#[tokio::test]
async fn a_local_backend_admits_up_to_max_and_names_the_full_limit() {
    let metrics = Metrics::new();
    let limiter = Limiter::new(QuotaBackend::Local(Arc::new(LocalQuota::new())), &metrics);
    let limits = [
        CallLimit::new(
            &limit("wide", Scope::Grant, 10, OnUnavailable::FailClosed),
            "g",
            "s",
            None,
        ),
        CallLimit::new(
            &limit("narrow", Scope::Session, 2, OnUnavailable::FailClosed),
            "g",
            "s",
            Some("sess"),
        ),
    ];
    for _ in 0..2 {
        let held = limiter.acquire(&limits).await.unwrap();
        assert_eq!(held.windows().len(), 2, "one window per limit");
        held.commit();
    }
    match limiter.acquire(&limits).await {
        Err(Refused::Exhausted { index, .. }) => assert_eq!(index, 1, "the session limit is full"),
        other => panic!("expected the session limit to be full, got {other:?}"),
    }
    // The refused call took nothing from the grant limit: 8 more fit under another session.
    let other_session = [
        limits[0].clone(),
        CallLimit::new(
            &limit("narrow", Scope::Session, 100, OnUnavailable::FailClosed),
            "g",
            "s",
            Some("other"),
        ),
    ];
    for _ in 0..8 {
        limiter.acquire(&other_session).await.unwrap().commit();
    }
    assert!(matches!(
        limiter.acquire(&other_session).await,
        Err(Refused::Exhausted { index: 0, .. })
    ));
    assert_eq!(decisions(&metrics, "lease"), 10);
    assert_eq!(decisions(&metrics, "exhausted"), 2);
}

#[tokio::test]
async fn a_rolled_back_call_gives_its_tokens_back_to_every_quota() {
    let metrics = Metrics::new();
    let limiter = Limiter::new(QuotaBackend::Local(Arc::new(LocalQuota::new())), &metrics);
    let limits = [
        CallLimit::new(
            &limit("a", Scope::Grant, 1, OnUnavailable::FailClosed),
            "g",
            "s",
            None,
        ),
        CallLimit::new(
            &limit("b", Scope::Session, 1, OnUnavailable::FailClosed),
            "g",
            "s",
            Some("x"),
        ),
    ];
    limiter.acquire(&limits).await.unwrap().rollback();
    limiter.acquire(&limits).await.unwrap().commit();
    assert!(limiter.acquire(&limits).await.is_err());
}

/// An agent whose only endpoint refuses connections: no lease ever arrives.
fn unreachable_agent() -> Arc<QuotaAgent> {
    let pool = Arc::new(LeasePool::new(PoolConfig::default()));
    let options = QuotaAgentOptions {
        acquire_timeout: std::time::Duration::from_millis(20),
        ..QuotaAgentOptions::default()
    };
    // Port 1 on loopback: nothing listens there, connections are refused at once.
    let (agent, _task) = QuotaAgent::start(pool, vec!["127.0.0.1:1".into()], "gw".into(), options);
    agent
}

#[tokio::test]
async fn without_a_leader_a_limited_call_fails_closed_by_default() {
    let metrics = Metrics::new();
    let agent = unreachable_agent();
    let limiter = Limiter::new(QuotaBackend::Cluster(agent.clone()), &metrics);
    let limits = [CallLimit::new(
        &limit("c", Scope::Grant, 100, OnUnavailable::FailClosed),
        "g",
        "s",
        None,
    )];
    assert_eq!(
        limiter.acquire(&limits).await.unwrap_err(),
        Refused::Unavailable { index: 0 }
    );
    assert_eq!(decisions(&metrics, "fail_closed"), 1);
    // Unlimited calls need nothing from the leader.
    assert!(limiter.acquire(&[]).await.is_ok());
    agent.shutdown();
}

#[tokio::test]
async fn without_a_leader_a_fail_open_limit_admits_up_to_max_on_this_node() {
    let metrics = Metrics::new();
    let agent = unreachable_agent();
    let limiter = Limiter::new(QuotaBackend::Cluster(agent.clone()), &metrics);
    let open = [CallLimit::new(
        &limit("c", Scope::Global, 3, OnUnavailable::FailOpen),
        "g",
        "s",
        None,
    )];
    for _ in 0..3 {
        limiter.acquire(&open).await.unwrap().commit();
    }
    assert!(
        matches!(
            limiter.acquire(&open).await,
            Err(Refused::Exhausted { index: 0, .. })
        ),
        "the node's own count is the bound while cut off"
    );
    assert_eq!(decisions(&metrics, "fail_open"), 3);
    // A call that also carries a fail-closed limit fails closed.
    let mixed = [
        open[0].clone(),
        CallLimit::new(
            &limit("d", Scope::Grant, 3, OnUnavailable::FailClosed),
            "g",
            "s",
            None,
        ),
    ];
    assert!(matches!(
        limiter.acquire(&mixed).await,
        Err(Refused::Unavailable { .. })
    ));
    agent.shutdown();
}
