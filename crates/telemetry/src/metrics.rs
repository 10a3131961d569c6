//! Prometheus metrics: every name is spelled here, once.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `tollgate_requests_total` | `server`, `method`, `decision` | MCP requests handled, by outcome |
//! | `tollgate_upstream_latency_seconds` | `server` | time from forwarding to the upstream's answer head |
//! | `tollgate_upstream_errors_total` | `server`, `kind` | upstream failures (connect, timeout, protocol) |
//! | `tollgate_audit_dropped_total` | | audit records lost because the writer fell behind |
//! | `tollgate_stdio_children` | `server` | live stdio upstream processes |
//! | `tollgate_stdio_restarts_total` | `server` | stdio upstream processes restarted after a crash |
//! | `tollgate_config_revision` | | the control-plane configuration revision this gateway enforces |
//! | `tollgate_config_stream_connected` | | 1 while a `ConfigService.Watch` stream is open |
//! | `tollgate_config_events_total` | `kind` | configuration events applied (`snapshot`, `changes`) |
//! | `tollgate_config_errors_total` | `kind` | configuration problems (`connect`, `stream`, `upstream`, `policy`, `grant`) |
//! | `tollgate_raft_term` | | the Raft term of this control node |
//! | `tollgate_raft_leader` | | 1 while this control node is the leader |
//! | `tollgate_raft_in_touch` | | 1 while this control node hears a leader (or a quorum, as leader) |
//! | `tollgate_raft_last_log_index` | | the last index in this node's Raft log |
//! | `tollgate_raft_applied_index` | | the last index applied to this node's state machine |
//! | `tollgate_raft_voters` | | voters in the membership this node knows |
//! | `tollgate_control_revision` | | the configuration revision of this control node's applied state |
//! | `tollgate_control_watchers` | | gateways with a watch stream open on this control node |

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `tollgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Upstream server name.
    pub server: String,
    /// JSON-RPC method, or the HTTP method for GET and DELETE.
    pub method: String,
    /// Decision or outcome (`allow`, `deny`, `rate_limited`, `unknown_tool`, `error`...).
    pub decision: String,
}

/// Labels carrying only the upstream server name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Upstream server name.
    pub server: String,
}

/// Labels of `tollgate_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Upstream server name.
    pub server: String,
    /// `connect`, `timeout`, `protocol`, `spawn`...
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~100 s, factor 2.5: fine at the low end where a gateway's overhead lives.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 16,
    ))
}

/// The process's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// `tollgate_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `tollgate_upstream_latency_seconds`.
    pub upstream_latency: Family<ServerLabels, Histogram, fn() -> Histogram>,
    /// `tollgate_upstream_errors_total`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `tollgate_audit_dropped_total`.
    pub audit_dropped: Counter,
    /// `tollgate_stdio_children`.
    pub stdio_children: Family<ServerLabels, Gauge<i64, AtomicI64>>,
    /// `tollgate_stdio_restarts_total`.
    pub stdio_restarts: Family<ServerLabels, Counter>,
    /// `tollgate_config_revision`.
    pub config_revision: Gauge<i64, AtomicI64>,
    /// `tollgate_config_stream_connected`.
    pub config_stream_connected: Gauge<i64, AtomicI64>,
    /// `tollgate_config_events_total`.
    pub config_events: Family<KindLabels, Counter>,
    /// `tollgate_config_errors_total`.
    pub config_errors: Family<KindLabels, Counter>,
    /// `tollgate_raft_term`.
    pub raft_term: Gauge<i64, AtomicI64>,
    /// `tollgate_raft_leader`.
    pub raft_leader: Gauge<i64, AtomicI64>,
    /// `tollgate_raft_in_touch`.
    pub raft_in_touch: Gauge<i64, AtomicI64>,
    /// `tollgate_raft_last_log_index`.
    pub raft_last_log_index: Gauge<i64, AtomicI64>,
    /// `tollgate_raft_applied_index`.
    pub raft_applied_index: Gauge<i64, AtomicI64>,
    /// `tollgate_raft_voters`.
    pub raft_voters: Gauge<i64, AtomicI64>,
    /// `tollgate_control_revision`.
    pub control_revision: Gauge<i64, AtomicI64>,
    /// `tollgate_control_watchers`.
    pub control_watchers: Gauge<i64, AtomicI64>,
    /// `tollgate_quota_decisions_total{kind}`: how limited calls were decided (`lease`: a lease
    /// held in memory, no wait; `sync`: waited for the quota leader; `node`: session scope;
    /// `exhausted`; `fail_closed`; `fail_open`).
    pub quota_decisions: Family<KindLabels, Counter>,
    /// `tollgate_quota_leases_total`: leases received from the quota leader.
    pub quota_leases: Counter,
    /// `tollgate_quota_refills_total`: demands sent ahead of need (not synchronous).
    pub quota_refills: Counter,
    /// `tollgate_quota_sync_reservations_total`: calls that found no lease and asked the quota
    /// leader synchronously.
    pub quota_sync_reservations: Counter,
    /// `tollgate_quota_refusals_total`: demands the quota leader refused.
    pub quota_refusals: Counter,
    /// `tollgate_quota_session_connected`: 1 while the quota session to the leader is open.
    pub quota_session_connected: Gauge<i64, AtomicI64>,
    /// `tollgate_quota_reconnects_total`: quota sessions opened after an earlier one ended.
    pub quota_reconnects: Counter,
}

/// Labels carrying only a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What happened.
    pub kind: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "MCP requests handled, by outcome",
            requests.clone(),
        );
        let upstream_latency =
            Family::<ServerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to the upstream's answer head",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit records lost because the writer fell behind",
            audit_dropped.clone(),
        );
        let stdio_children = Family::<ServerLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "stdio_children",
            "Live stdio upstream processes",
            stdio_children.clone(),
        );
        let stdio_restarts = Family::<ServerLabels, Counter>::default();
        registry.register(
            "stdio_restarts",
            "Stdio upstream processes restarted after a crash",
            stdio_restarts.clone(),
        );
        let config_revision = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_revision",
            "The control-plane configuration revision this gateway enforces",
            config_revision.clone(),
        );
        let config_stream_connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_stream_connected",
            "1 while a configuration watch stream to a control node is open",
            config_stream_connected.clone(),
        );
        let config_events = Family::<KindLabels, Counter>::default();
        registry.register(
            "config_events",
            "Configuration events applied, by kind",
            config_events.clone(),
        );
        let config_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "config_errors",
            "Configuration problems, by kind",
            config_errors.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::<i64, AtomicI64>::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let raft_term = gauge(
            &mut registry,
            "raft_term",
            "The Raft term of this control node",
        );
        let raft_leader = gauge(
            &mut registry,
            "raft_leader",
            "1 while this control node is the Raft leader",
        );
        let raft_in_touch = gauge(
            &mut registry,
            "raft_in_touch",
            "1 while this control node hears a leader (or, as leader, a quorum)",
        );
        let raft_last_log_index = gauge(
            &mut registry,
            "raft_last_log_index",
            "The last index in this control node's Raft log",
        );
        let raft_applied_index = gauge(
            &mut registry,
            "raft_applied_index",
            "The last Raft index applied to this control node's state machine",
        );
        let raft_voters = gauge(
            &mut registry,
            "raft_voters",
            "Voters in the membership this control node knows",
        );
        let control_revision = gauge(
            &mut registry,
            "control_revision",
            "The configuration revision of this control node's applied state",
        );
        let control_watchers = gauge(
            &mut registry,
            "control_watchers",
            "Gateways with a configuration watch stream open on this control node",
        );
        let quota_decisions = Family::<KindLabels, Counter>::default();
        registry.register(
            "quota_decisions",
            "Limited tool calls by how they were decided (lease, sync, node, exhausted, fail_closed, fail_open)",
            quota_decisions.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let quota_leases = counter(
            &mut registry,
            "quota_leases",
            "Quota leases received from the quota leader",
        );
        let quota_refills = counter(
            &mut registry,
            "quota_refills",
            "Quota demands sent ahead of need",
        );
        let quota_sync_reservations = counter(
            &mut registry,
            "quota_sync_reservations",
            "Limited calls that found no lease and asked the quota leader synchronously",
        );
        let quota_refusals = counter(
            &mut registry,
            "quota_refusals",
            "Quota demands the quota leader refused",
        );
        let quota_reconnects = counter(
            &mut registry,
            "quota_reconnects",
            "Quota sessions opened after an earlier one ended",
        );
        let quota_session_connected = gauge(
            &mut registry,
            "quota_session_connected",
            "1 while this gateway's quota session to the leader is open",
        );
        Self {
            registry,
            quota_decisions,
            quota_leases,
            quota_refills,
            quota_sync_reservations,
            quota_refusals,
            quota_session_connected,
            quota_reconnects,
            requests,
            upstream_latency,
            upstream_errors,
            audit_dropped,
            stdio_children,
            stdio_restarts,
            config_revision,
            config_stream_connected,
            config_events,
            config_errors,
            raft_term,
            raft_leader,
            raft_in_touch,
            raft_last_log_index,
            raft_applied_index,
            raft_voters,
            control_revision,
            control_watchers,
        }
    }

    /// Counts one handled request.
    pub fn count_request(&self, server: &str, method: &str, decision: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                server: server.to_owned(),
                method: method.to_owned(),
                decision: decision.to_owned(),
            })
            .inc();
    }

    /// Records one upstream round trip.
    pub fn observe_upstream(&self, server: &str, seconds: f64) {
        self.upstream_latency
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one upstream failure.
    pub fn count_upstream_error(&self, server: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                server: server.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts one configuration event or problem of `kind`.
    pub fn count_config(&self, family: &Family<KindLabels, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_the_tollgate_prefix_and_labels() {
        let metrics = Metrics::new();
        metrics.count_request("everything", "tools/call", "allow");
        metrics.observe_upstream("everything", 0.002);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"tollgate_requests_total{server="everything",method="tools/call",decision="allow"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_upstream_latency_seconds_bucket"),
            "{text}"
        );
    }
}
