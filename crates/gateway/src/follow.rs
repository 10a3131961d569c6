//! Following a control plane: a gateway's grants, policies and upstreams from
//! `ConfigService.Watch`.
//!
//! ```text
//!   WatchConnector (remote gRPC, or in-process) ──ConfigEvent──▶ Follower::apply
//!        ▲ reconnect from the last applied revision,            │ 1. update the ClusterView
//!        │ with backoff, to the next control node               │    (snapshot replaces, changes patch)
//!        └───────────── stream error / end ◀────────────────────┤ 2. compile what changed
//!                                                               │ 3. swap one Runtime (ArcSwap)
//!                                                               └ 4. stop replaced upstreams once
//!                                                                  their requests let go (≤ 30 s)
//! ```
//!
//! # Last good configuration
//!
//! A lost stream changes nothing: the gateway keeps enforcing the revision it has while it
//! reconnects, for as long as it takes. A request sees exactly one revision (one `Runtime`
//! load).
//!
//! # Failing closed
//!
//! An object this gateway cannot use is not skipped silently: a policy that does not compile here
//! makes the grants under it deny every call (and is counted in `tollgate_config_errors_total`);
//! an upstream that cannot be built here (an environment variable or TLS file missing on this
//! machine) is absent, so its grants are refused as for an unknown server. A change of a kind this
//! build does not know makes the follower start over from a full snapshot, as the protocol asks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use parking_lot::Mutex;
use tokio::sync::watch;
use tollgate_policy::Policy;
use tollgate_proto::v1::config_service_client::ConfigServiceClient;
use tollgate_proto::v1::{self, ConfigEvent, WatchRequest, config_change, config_event, upstream};
use tracing::{debug, error, info, warn};

use crate::config::{ProcessEnv, UpstreamSource, upstream_from_source};
use crate::gateway::{Grant, Runtime, Server, Shared, cancel_removed, new_server, revocation_of};

/// The first wait before reconnecting after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long connecting to one control node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on the watch stream: a control node that stops answering them (paused, or cut
/// off) is given up after about [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`].
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream of configuration events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ConfigEvent, tonic::Status>> + Send>>;

/// Opens `Watch` streams: to remote control nodes over gRPC ([`RemoteControl`]), or in-process.
pub trait WatchConnector: Send + Sync + 'static {
    /// Opens one stream.
    fn connect(
        &self,
        request: WatchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, tonic::Status>> + Send + '_>>;
}

/// Remote control nodes, tried in turn: each connection attempt goes to the next address,
/// starting from a random one so that gateways spread over the control nodes.
pub struct RemoteControl {
    endpoints: Vec<String>,
    next: AtomicUsize,
}

impl RemoteControl {
    /// Control nodes' API addresses (`host:port`, or full `http://` URLs).
    pub fn new(endpoints: Vec<String>) -> Self {
        let start = rand::random::<u32>() as usize % endpoints.len().max(1);
        Self {
            endpoints,
            next: AtomicUsize::new(start),
        }
    }
}

impl WatchConnector for RemoteControl {
    fn connect(
        &self,
        request: WatchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, tonic::Status>> + Send + '_>> {
        Box::pin(async move {
            if self.endpoints.is_empty() {
                return Err(tonic::Status::unavailable("no control node configured"));
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
            let addr = &self.endpoints[i];
            let endpoint = tollgate_proto::control_endpoint(addr)
                .map_err(|e| tonic::Status::invalid_argument(format!("{addr}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{addr}: {e}")))?;
            let stream = ConfigServiceClient::new(channel)
                .watch(request)
                .await?
                .into_inner();
            debug!(control = %addr, "watch stream open");
            Ok(Box::pin(stream) as EventStream)
        })
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The event has no kind, or a change of a kind this build does not know.
    #[error("configuration event at revision {revision} has a kind this gateway does not know")]
    UnknownKind {
        /// The event's revision.
        revision: u64,
    },
    /// A change set that does not move the revision forward.
    #[error("change set for revision {revision} does not follow revision {current}")]
    OutOfOrder {
        /// The event's revision.
        revision: u64,
        /// The revision the gateway holds.
        current: u64,
    },
}

/// The configuration as the control plane states it, at one revision.
#[derive(Debug, Clone, Default)]
struct ClusterView {
    revision: u64,
    policies: HashMap<String, v1::Policy>,
    grants: HashMap<String, v1::Grant>,
    upstreams: HashMap<String, v1::Upstream>,
}

impl ClusterView {
    /// The view after `event`; `self` is left alone when the event is refused.
    fn after(&self, event: &ConfigEvent) -> Result<ClusterView, FollowError> {
        let revision = event.revision;
        match &event.kind {
            Some(config_event::Kind::Snapshot(snapshot)) => Ok(ClusterView {
                revision,
                policies: snapshot
                    .policies
                    .iter()
                    .map(|p| (p.id.clone(), p.clone()))
                    .collect(),
                grants: snapshot
                    .grants
                    .iter()
                    .map(|g| (g.id.clone(), g.clone()))
                    .collect(),
                upstreams: snapshot
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), u.clone()))
                    .collect(),
            }),
            Some(config_event::Kind::Changes(changes)) => {
                if revision <= self.revision {
                    return Err(FollowError::OutOfOrder {
                        revision,
                        current: self.revision,
                    });
                }
                let mut next = self.clone();
                next.revision = revision;
                for change in &changes.changes {
                    match &change.kind {
                        Some(config_change::Kind::PolicyPut(p)) => {
                            next.policies.insert(p.id.clone(), p.clone());
                        }
                        Some(config_change::Kind::GrantPut(g)) => {
                            next.grants.insert(g.id.clone(), g.clone());
                        }
                        Some(config_change::Kind::UpstreamPut(u)) => {
                            next.upstreams.insert(u.name.clone(), u.clone());
                        }
                        Some(config_change::Kind::UpstreamRemoved(r)) => {
                            next.upstreams.remove(&r.name);
                        }
                        None => return Err(FollowError::UnknownKind { revision }),
                    }
                }
                Ok(next)
            }
            None => Err(FollowError::UnknownKind { revision }),
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The revision now enforced.
    pub revision: u64,
    /// Grants in force (not revoked, token usable).
    pub grants: usize,
    /// Upstreams built and serving.
    pub upstreams: usize,
    /// Problems found (each also logged and counted); the rest of the revision applied.
    pub problems: Vec<String>,
}

struct FollowState {
    view: ClusterView,
    /// Compiled policies by id, with the version they were compiled from; `None` when that
    /// version does not compile here.
    compiled: HashMap<String, (u64, Option<Arc<Policy>>)>,
}

/// How long a replaced or removed upstream keeps serving the requests that already hold it.
const RETIRE_GRACE: Duration = Duration::from_secs(30);
/// How often a retired upstream checks whether its last request let go.
const RETIRE_POLL: Duration = Duration::from_millis(100);

/// Returns `item` once this is its only holder, or once `grace` has passed.
async fn released<T>(item: Arc<T>, grace: Duration) -> Arc<T> {
    let deadline = tokio::time::Instant::now() + grace;
    while Arc::strong_count(&item) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(RETIRE_POLL).await;
    }
    item
}

/// Applies configuration events to a running gateway.
pub struct Follower {
    shared: Arc<Shared>,
    state: Mutex<FollowState>,
}

impl Follower {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: Mutex::new(FollowState {
                view: ClusterView::default(),
                compiled: HashMap::new(),
            }),
        }
    }

    /// The revision this gateway enforces (0 before the first event).
    pub fn revision(&self) -> u64 {
        self.shared.runtime.load().revision
    }

    /// Applies one event: the whole revision becomes visible to the next request at once.
    pub fn apply(&self, event: &ConfigEvent) -> Result<Applied, FollowError> {
        let mut state = self.state.lock();
        let view = state.view.after(event)?;
        let mut problems = Vec::new();
        let metrics = &self.shared.metrics;

        // Policies: compile only versions not compiled before.
        let mut compiled = HashMap::with_capacity(view.policies.len());
        for (id, policy) in &view.policies {
            let entry = match state.compiled.get(id) {
                Some((version, cached)) if *version == policy.version => (*version, cached.clone()),
                _ => match Policy::from_json(policy.document_json.as_bytes()) {
                    Ok(compiled) => (policy.version, Some(Arc::new(compiled))),
                    Err(errors) => {
                        let problem = format!(
                            "policy {id} version {} does not compile here; its grants deny every call: {errors}",
                            policy.version
                        );
                        error!(policy = %id, version = policy.version, %errors, "policy refused");
                        metrics.count_config(&metrics.config_errors, "policy");
                        problems.push(problem);
                        (policy.version, None)
                    }
                },
            };
            compiled.insert(id.clone(), entry);
        }

        // Upstreams: an unchanged one keeps its server (children, catalog, era cache).
        let current = self.shared.runtime.load();
        let mut servers: HashMap<String, Arc<Server>> =
            HashMap::with_capacity(view.upstreams.len());
        for (name, up) in &view.upstreams {
            let source = source_of(up);
            // An unchanged upstream keeps its server without re-reading its environment and
            // TLS files.
            if let Some(server) = current.servers.get(name)
                && server.config.source == source
            {
                servers.insert(name.clone(), server.clone());
                continue;
            }
            let config = match upstream_from_source(name, &source, &ProcessEnv) {
                Ok(config) => config,
                Err(errors) => {
                    error!(upstream = %name, %errors, "upstream cannot be used on this gateway");
                    metrics.count_config(&metrics.config_errors, "upstream");
                    problems.push(format!("upstream {name}: {errors}"));
                    continue;
                }
            };
            let server = match current.servers.get(name) {
                Some(server) if server.config == config => server.clone(),
                _ => new_server(
                    &config,
                    &self.shared.http_client,
                    &self.shared.config,
                    &self.shared.metrics,
                ),
            };
            servers.insert(name.clone(), server);
        }

        // Grants: revoked ones are left out, so their tokens are refused like unknown ones.
        let deny_all = Arc::new(Policy::deny_all());
        let mut grants = HashMap::with_capacity(view.grants.len());
        for grant in view.grants.values().filter(|g| !g.revoked) {
            let Ok(hash) = <[u8; 32]>::try_from(grant.token_sha256.as_slice()) else {
                metrics.count_config(&metrics.config_errors, "grant");
                problems.push(format!(
                    "grant {}: the token hash is not 32 bytes",
                    grant.id
                ));
                continue;
            };
            let (version, policy) = match compiled.get(&grant.policy_id) {
                Some((version, Some(policy))) => (Some(*version), policy.clone()),
                Some((version, None)) => (Some(*version), deny_all.clone()),
                None => {
                    metrics.count_config(&metrics.config_errors, "grant");
                    problems.push(format!(
                        "grant {} names policy {}, which does not exist; it denies every call",
                        grant.id, grant.policy_id
                    ));
                    (None, deny_all.clone())
                }
            };
            grants.insert(
                hash,
                Arc::new(Grant {
                    id: grant.id.clone(),
                    label: grant.label.clone(),
                    server: grant.server.clone(),
                    policy_id: Some(grant.policy_id.clone()),
                    policy_version: version,
                    policy,
                    revoked: revocation_of(&current.grants, &hash),
                }),
            );
        }

        let retired: Vec<Arc<Server>> = current
            .servers
            .iter()
            .filter(|(name, old)| servers.get(*name).is_none_or(|new| !Arc::ptr_eq(new, old)))
            .map(|(_, old)| old.clone())
            .collect();
        cancel_removed(&current.grants, &grants);
        let applied = Applied {
            revision: view.revision,
            grants: grants.len(),
            upstreams: servers.len(),
            problems,
        };
        self.shared.runtime.store(Arc::new(Runtime {
            revision: view.revision,
            grants,
            servers,
        }));
        state.view = view;
        state.compiled = compiled;
        drop(state);

        self.shared
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        metrics
            .config_revision
            .set(i64::try_from(applied.revision).unwrap_or(i64::MAX));
        let kind = match event.kind {
            Some(config_event::Kind::Snapshot(_)) => "snapshot",
            _ => "changes",
        };
        metrics.count_config(&metrics.config_events, kind);
        debug!(
            revision = applied.revision,
            kind,
            grants = applied.grants,
            upstreams = applied.upstreams,
            "configuration applied"
        );
        // Requests already holding a retired server finish with it: its children stop once the
        // last of them let go (or after a grace period, for a stream that never ends).
        for server in retired {
            tokio::spawn(async move {
                let server = released(server, RETIRE_GRACE).await;
                info!(upstream = %server.name, "upstream replaced or removed; stopping it");
                server.upstream.shutdown().await;
            });
        }
        Ok(applied)
    }

    /// Keeps a watch stream open through `connector` until `stop` turns true: applies every
    /// event, and after a failure reconnects (from the last applied revision, with backoff) while
    /// the gateway goes on serving what it has.
    pub async fn run(
        self: Arc<Self>,
        connector: Arc<dyn WatchConnector>,
        gateway_id: String,
        mut stop: watch::Receiver<bool>,
    ) {
        let metrics = self.shared.metrics.clone();
        let mut backoff = MIN_BACKOFF;
        let mut resync = false;
        let mut failures: u64 = 0;
        while !*stop.borrow() {
            let from_revision = if resync { 0 } else { self.revision() };
            resync = false;
            let request = WatchRequest {
                from_revision,
                gateway_id: gateway_id.clone(),
            };
            let connected = tokio::select! {
                connected = connector.connect(request) => connected,
                _ = stop.changed() => break,
            };
            match connected {
                Ok(mut stream) => {
                    metrics.config_stream_connected.set(1);
                    if failures > 0 {
                        info!(from_revision, failures, "configuration stream reopened");
                    }
                    loop {
                        let next = tokio::select! {
                            next = stream.next() => next,
                            _ = stop.changed() => break,
                        };
                        match next {
                            Some(Ok(event)) => match self.apply(&event) {
                                Ok(_) => {
                                    backoff = MIN_BACKOFF;
                                    failures = 0;
                                }
                                Err(error) => {
                                    warn!(%error, "configuration event refused; starting over from a snapshot");
                                    metrics.count_config(&metrics.config_errors, "stream");
                                    resync = true;
                                    break;
                                }
                            },
                            Some(Err(status)) => {
                                warn!(code = ?status.code(), message = status.message(), "configuration stream failed; keeping the current configuration");
                                metrics.count_config(&metrics.config_errors, "stream");
                                break;
                            }
                            None => {
                                info!("configuration stream ended by the control node");
                                break;
                            }
                        }
                    }
                    metrics.config_stream_connected.set(0);
                }
                Err(status) => {
                    metrics.count_config(&metrics.config_errors, "connect");
                    if failures == 0 || failures.is_power_of_two() {
                        warn!(code = ?status.code(), message = status.message(), failures, "cannot reach a control node; keeping the current configuration");
                    }
                }
            }
            failures += 1;
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::select! {
                () = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        metrics.config_stream_connected.set(0);
    }
}

/// The upstream's keys, as a configuration file would state them.
fn source_of(up: &v1::Upstream) -> UpstreamSource {
    match &up.transport {
        Some(upstream::Transport::Http(http)) => {
            let tls = http.tls.clone().unwrap_or_default();
            let path = |p: &str| (!p.is_empty()).then(|| p.into());
            UpstreamSource {
                url: Some(http.url.clone()),
                headers: http.headers.clone().into_iter().collect(),
                headers_from_env: http.headers_from_env.clone().into_iter().collect(),
                tls_ca_file: path(&tls.ca_file),
                tls_client_cert: path(&tls.client_cert_file),
                tls_client_key: path(&tls.client_key_file),
                ..UpstreamSource::default()
            }
        }
        Some(upstream::Transport::Stdio(stdio)) => UpstreamSource {
            command: Some(stdio.command.clone()),
            args: Some(stdio.args.clone()),
            env: Some(stdio.env.clone().into_iter().collect()),
            idle_timeout_secs: (stdio.idle_timeout_secs != 0).then_some(stdio.idle_timeout_secs),
            ..UpstreamSource::default()
        },
        None => UpstreamSource::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_retired_item_is_released_when_its_last_other_holder_lets_go() {
        let item = Arc::new(());
        let holder = item.clone();
        let waiting = tokio::spawn(released(item, Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a request still holds it");
        drop(holder);
        let started = tokio::time::Instant::now();
        let item = waiting.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Arc::strong_count(&item), 1);
        assert!(started.elapsed() <= RETIRE_POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_item_held_forever_is_released_after_the_grace() {
        let item = Arc::new(());
        let _stream = item.clone();
        let started = tokio::time::Instant::now();
        let item = released(item, Duration::from_secs(30)).await;
        assert_eq!(Arc::strong_count(&item), 2);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited <= Duration::from_secs(30) + RETIRE_POLL
        );
    }
}
