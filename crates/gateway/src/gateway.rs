//! The gateway process: shared state, listeners, start and shutdown.
//!
//! ```text
//!   Config ──start / start_following──▶ Shared { runtime: ArcSwap<Runtime { revision, grants,
//!                                                   servers (upstream + catalog + eras) }>,
//!                                                sealer, quota, audit, metrics }
//!                               ├─ data listener  ─▶ handler (POST / GET / DELETE /mcp/{server})
//!                               └─ admin listener ─▶ /metrics /healthz /readyz  (own task set)
//!
//!   file source:    SIGHUP reload ──▶ new Runtime (grants swapped, servers kept)
//!   cluster source: Follower::apply(ConfigEvent) ──▶ new Runtime (see crate::follow)
//! ```
//!
//! A request loads the runtime once and sees exactly one revision's grants and servers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_mcp::json::JsonLimits;
use tollgate_mcp::session::SessionSealer;
use tollgate_policy::Policy;
use tollgate_quota::{LocalQuota, Quota};

use crate::limits::{Limiter, QuotaBackend};
use tollgate_telemetry::Metrics;

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::config::{Config, GrantConfig, UpstreamConfig};
use crate::eras::EraProbe;
use crate::follow::{Follower, WatchConnector};
use crate::upstream::{Upstream, http as upstream_http};

/// A client credential, resolved.
pub(crate) struct Grant {
    pub id: String,
    pub label: String,
    pub server: String,
    /// The policy's id, or `None` for a grant without a policy (which denies everything).
    pub policy_id: Option<String>,
    /// The policy's cluster-assigned version; `None` when the configuration did not come from a
    /// control plane (an in-process gateway started from a file).
    pub policy_version: Option<u64>,
    pub policy: Arc<Policy>,
    /// Cancelled when the grant is revoked (or leaves the configuration): open response streams
    /// of the grant end then, not only its next requests. Shared by every `Grant` value of the
    /// same credential across configuration changes.
    pub revoked: CancellationToken,
}

/// One upstream server and what the gateway knows about it.
pub(crate) struct Server {
    pub name: String,
    /// The configuration it was built from; an unchanged upstream keeps its `Server` (children,
    /// catalog, era cache) across configuration changes.
    pub config: UpstreamConfig,
    pub upstream: Upstream,
    pub catalog: Catalog,
    pub eras: EraProbe,
}

/// Everything a configuration change replaces, swapped as one value: a request sees one
/// revision's grants and servers, never a mix.
pub(crate) struct Runtime {
    /// The control plane's configuration revision (0 for a file-configured gateway).
    pub revision: u64,
    /// Grants by token hash.
    pub grants: HashMap<[u8; 32], Arc<Grant>>,
    /// Upstream servers by name.
    pub servers: HashMap<String, Arc<Server>>,
}

/// Where a gateway's grants, policies and upstreams come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The configuration file (reloaded with SIGHUP).
    File,
    /// A control plane's `ConfigService.Watch` stream.
    Cluster,
}

/// State shared by every request.
pub(crate) struct Shared {
    pub config: Config,
    pub source: Source,
    /// The current grants and servers.
    pub runtime: ArcSwap<Runtime>,
    pub http_client: upstream_http::HttpClient,
    pub sealer: SessionSealer,
    pub limiter: Limiter,
    pub audit: Option<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub json_limits: JsonLimits,
    pub request_seq: AtomicU64,
    pub ready: AtomicBool,
}

impl Shared {
    /// A process-unique request id for audit records and logs.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.config.node_id)
    }
}

/// A started gateway: its bound addresses and a handle to stop it.
pub struct RunningGateway {
    /// Where the data plane listens (`/mcp/{server}`).
    pub data_addr: SocketAddr,
    /// Where the admin plane listens (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    follower: Option<Arc<Follower>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningGateway {
    /// The follower of a gateway started with [`start_following`] (`None` for a file-configured
    /// one): feed it events directly, or let [`RunningGateway::follow`] keep a stream open.
    pub fn follower(&self) -> Option<Arc<Follower>> {
        self.follower.clone()
    }

    /// Keeps a configuration stream open through `connector` until the gateway shuts down (see
    /// [`Follower::run`]). Does nothing for a file-configured gateway.
    pub fn follow(&mut self, connector: Arc<dyn WatchConnector>, gateway_id: String) {
        if let Some(follower) = self.follower.clone() {
            let stopped = self.stop.subscribe();
            self.tasks
                .spawn(follower.run(connector, gateway_id, stopped));
        }
    }

    /// The configuration revision this gateway enforces (0 for a file-configured gateway).
    pub fn revision(&self) -> u64 {
        self.shared.runtime.load().revision
    }

    /// Stops accepting, lets in-flight requests finish (up to a grace period), stops stdio
    /// children and flushes the audit log.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let grace = std::time::Duration::from_secs(10);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight requests did not finish within {grace:?}; aborting them");
            self.tasks.abort_all();
        }
        for server in self.shared.runtime.load().servers.values() {
            server.upstream.shutdown().await;
        }
        if let Some(agent) = self.shared.limiter.agent() {
            // Unused lease tokens go back to their windows rather than stay spent.
            agent.drain(std::time::Duration::from_secs(1)).await;
        }
        if let Some(audit) = &self.shared.audit
            && let Err(error) = audit.flush().await
        {
            tracing::error!(%error, "flushing the audit log failed");
        }
    }

    /// Applies a new configuration's grants and policies atomically: requests already admitted
    /// finish under the old ones, every later request sees the new ones. Everything else (listen
    /// addresses, upstreams, session keys, limits, audit path) needs a restart; sections that
    /// differ are named in the returned report and keep their running values.
    pub fn reload(&self, config: &Config) -> ReloadReport {
        if self.shared.source == Source::Cluster {
            return ReloadReport {
                applied: false,
                grants: 0,
                needs_restart: Vec::new(),
                refused: vec![
                    "this gateway follows a control plane: change grants and policies there"
                        .to_owned(),
                ],
            };
        }
        let running = &self.shared.config;
        let mut needs_restart = Vec::new();
        if config.upstreams != running.upstreams {
            needs_restart.push("upstreams");
        }
        if config.listen != running.listen {
            needs_restart.push("listen");
        }
        let both_ephemeral = config.sessions.ephemeral && running.sessions.ephemeral;
        if config.sessions.ttl != running.sessions.ttl
            || (!both_ephemeral && config.sessions.keys != running.sessions.keys)
        {
            needs_restart.push("sessions");
        }
        if config.limits != running.limits {
            needs_restart.push("limits");
        }
        if config.audit_path != running.audit_path {
            needs_restart.push("audit");
        }
        if config.node_id != running.node_id {
            needs_restart.push("node_id");
        }
        if config.cluster != running.cluster {
            needs_restart.push("cluster");
        }
        // A grant may only name a running upstream.
        let current = self.shared.runtime.load();
        let unknown: Vec<String> = config
            .grants
            .iter()
            .filter(|g| !current.servers.contains_key(&g.server))
            .map(|g| {
                format!(
                    "grant `{}` names upstream `{}`, which is not running",
                    g.label, g.server
                )
            })
            .collect();
        if !unknown.is_empty() {
            return ReloadReport {
                applied: false,
                grants: 0,
                needs_restart,
                refused: unknown,
            };
        }
        let grants = resolve_grants(&config.grants, &current.grants);
        cancel_removed(&current.grants, &grants);
        self.shared.runtime.store(Arc::new(Runtime {
            revision: current.revision,
            grants,
            servers: current.servers.clone(),
        }));
        ReloadReport {
            applied: true,
            grants: config.grants.len(),
            needs_restart,
            refused: Vec::new(),
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down. On SIGHUP it re-reads `config_path` (if
    /// given): a valid file's grants and policies replace the running ones; an invalid one is
    /// refused with every error and the running configuration keeps serving.
    pub async fn run_until_signalled(self, config_path: Option<PathBuf>) -> Result<(), StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(StartError::Signal)?;
        loop {
            tokio::select! {
                result = tokio::signal::ctrl_c() => {
                    result.map_err(StartError::Signal)?;
                    break;
                }
                _ = term.recv() => break,
                _ = hangup.recv() => match &config_path {
                    Some(path) => { self.reload_from(path); }
                    None => tracing::warn!("SIGHUP ignored: the embedded configuration cannot be reloaded"),
                },
            }
        }
        tracing::info!("stopping");
        self.shutdown().await;
        Ok(())
    }

    /// Re-reads a configuration file and applies it with [`RunningGateway::reload`], logging
    /// the outcome.
    pub fn reload_from(&self, path: &Path) -> ReloadReport {
        match Config::load(path, &crate::config::ProcessEnv) {
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!(path = %error.path, message = %error.message, "configuration reload refused");
                }
                ReloadReport {
                    applied: false,
                    grants: 0,
                    needs_restart: Vec::new(),
                    refused: errors.0.iter().map(ToString::to_string).collect(),
                }
            }
            Ok(config) => {
                let report = self.reload(&config);
                if report.applied {
                    tracing::info!(grants = report.grants, "configuration reloaded");
                } else {
                    tracing::error!(errors = ?report.refused, "configuration reload refused");
                }
                for section in &report.needs_restart {
                    tracing::warn!(section, "changed section not applied: it needs a restart");
                }
                report
            }
        }
    }

    /// The metrics registry (for tests and embedding).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }
}

/// What a configuration reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Whether the new grants and policies are now serving.
    pub applied: bool,
    /// How many grants the new configuration has.
    pub grants: usize,
    /// Sections that changed but need a restart (kept at their running values).
    pub needs_restart: Vec<&'static str>,
    /// Why the reload was refused (each with the path of the bad key).
    pub refused: Vec<String>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The audit file could not be opened.
    #[error("opening the audit log {path}: {source}")]
    Audit {
        /// The audit path.
        path: std::path::PathBuf,
        /// The cause.
        source: crate::audit::AuditError,
    },
    /// The session keys are unusable.
    #[error("loading the session keys: {0}")]
    Sessions(#[from] tollgate_mcp::session::SessionError),
    /// A listener could not be bound.
    #[error("binding the {what} listener {addr}: {source}")]
    Bind {
        /// `data` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Builds the gateway from a validated configuration and starts both listeners.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let metrics = Arc::new(Metrics::new());
    let quota: Arc<dyn Quota> = Arc::new(LocalQuota::new());
    start_with(config, metrics, quota).await
}

/// Like [`start`], with the metrics registry and quota implementation supplied by the caller.
pub async fn start_with(
    config: Config,
    metrics: Arc<Metrics>,
    quota: Arc<dyn Quota>,
) -> Result<RunningGateway, StartError> {
    start_inner(config, metrics, QuotaBackend::Local(quota), Source::File).await
}

/// Starts a gateway whose grants, policies and upstreams come from a control plane: it binds its
/// listeners with no grant and no upstream, and answers `/readyz` with 503 until the first
/// configuration arrives through [`RunningGateway::follower`]. The file's `[[upstreams]]` and
/// `[[grants]]` are ignored here (the binary pushes them to the cluster instead).
///
/// Cluster-wide limits are counted by `quota`: [`QuotaBackend::Cluster`] in a real deployment
/// (see [`crate::limits`]).
pub async fn start_following(
    config: Config,
    metrics: Arc<Metrics>,
    quota: QuotaBackend,
) -> Result<RunningGateway, StartError> {
    start_inner(config, metrics, quota, Source::Cluster).await
}

async fn start_inner(
    config: Config,
    metrics: Arc<Metrics>,
    quota: QuotaBackend,
    source: Source,
) -> Result<RunningGateway, StartError> {
    let audit = match &config.audit_path {
        Some(path) => Some(
            AuditLog::open(path)
                .await
                .map_err(|source| StartError::Audit {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let sealer = SessionSealer::new(config.sessions.keys.clone())?;
    if config.sessions.ephemeral {
        tracing::warn!(
            "no session keys configured: using a random key; sessions will not survive a restart \
             or move between nodes"
        );
    }
    let client = upstream_http::client();
    let runtime = match source {
        Source::File => Runtime {
            revision: 0,
            servers: config
                .upstreams
                .iter()
                .map(|up| {
                    let server = new_server(up, &client, &config, &metrics);
                    (up.name.clone(), server)
                })
                .collect(),
            grants: resolve_grants(&config.grants, &HashMap::new()),
        },
        Source::Cluster => Runtime {
            revision: 0,
            servers: HashMap::new(),
            grants: HashMap::new(),
        },
    };
    let json_limits = JsonLimits {
        max_bytes: config.limits.max_body_bytes,
        max_depth: config.limits.max_json_depth,
    };

    let data = bind("data", config.listen.data).await?;
    let admin = bind("admin", config.listen.admin).await?;
    let data_addr = local_addr("data", &data, config.listen.data)?;
    let admin_addr = local_addr("admin", &admin, config.listen.admin)?;

    let shared = Arc::new(Shared {
        config,
        source,
        runtime: ArcSwap::from_pointee(runtime),
        http_client: client,
        sealer,
        limiter: Limiter::new(quota, &metrics),
        audit,
        metrics,
        json_limits,
        request_seq: AtomicU64::new(1),
        ready: AtomicBool::new(false),
    });

    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let data_router = crate::handler::router(shared.clone());
    let admin_router = crate::admin::router(shared.clone());
    tasks.spawn(serve(data, data_router, stopped.clone()));
    // Admin endpoints run as their own task set so that data-plane load cannot starve probes.
    tasks.spawn(serve(admin, admin_router, stopped));
    if source == Source::File {
        shared.ready.store(true, Ordering::Release);
    }
    tracing::info!(%data_addr, %admin_addr, "tollgate gateway listening");
    let follower = (source == Source::Cluster).then(|| Arc::new(Follower::new(shared.clone())));
    Ok(RunningGateway {
        data_addr,
        admin_addr,
        shared,
        follower,
        stop,
        tasks,
    })
}

/// A new server (no child started, empty catalog) for an upstream.
pub(crate) fn new_server(
    up: &UpstreamConfig,
    client: &upstream_http::HttpClient,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Arc<Server> {
    Arc::new(Server {
        name: up.name.clone(),
        config: up.clone(),
        upstream: Upstream::new(
            up,
            client.clone(),
            &config.limits,
            &config.node_id,
            metrics.clone(),
        ),
        catalog: Catalog::default(),
        eras: EraProbe::default(),
    })
}

/// Cancels the streams of every grant of `old` whose token is not in `new`.
pub(crate) fn cancel_removed(
    old: &HashMap<[u8; 32], Arc<Grant>>,
    new: &HashMap<[u8; 32], Arc<Grant>>,
) {
    for (hash, grant) in old {
        if !new.contains_key(hash) {
            grant.revoked.cancel();
        }
    }
}

/// The revocation token of the credential `hash` in `current`, or a fresh one.
pub(crate) fn revocation_of(
    current: &HashMap<[u8; 32], Arc<Grant>>,
    hash: &[u8; 32],
) -> CancellationToken {
    current
        .get(hash)
        .map_or_else(CancellationToken::new, |g| g.revoked.clone())
}

fn resolve_grants(
    grants: &[GrantConfig],
    current: &HashMap<[u8; 32], Arc<Grant>>,
) -> HashMap<[u8; 32], Arc<Grant>> {
    let deny_all = Arc::new(Policy::deny_all());
    grants
        .iter()
        .map(|g| {
            let (policy_id, policy) = match &g.policy {
                Some(p) => (Some(p.id.clone()), p.policy.clone()),
                None => (None, deny_all.clone()),
            };
            let grant = Grant {
                id: g.id.clone(),
                label: g.label.clone(),
                server: g.server.clone(),
                policy_id,
                policy_version: None,
                policy,
                revoked: revocation_of(current, &g.token_hash),
            };
            (g.token_hash, Arc::new(grant))
        })
        .collect()
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

async fn serve(listener: TcpListener, router: axum::Router, mut stopped: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "listener failed");
    }
}
