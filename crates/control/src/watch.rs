//! `ConfigService.Watch`: a node's applied configuration as a stream of events.
//!
//! ```text
//!   subscribe_revision() ──▶ first event:  from == 0, too old or ahead  → snapshot @ current
//!                                          otherwise                    → changes (from, current]
//!                                          (nothing if from == current)
//!              ┌──────────▶ on every revision change:
//!              │              changes_since(last sent) → one change-set event @ newest revision
//!              └──────────    change log no longer covers it          → snapshot @ current
//! ```
//!
//! Each event is built inside one [`tollgate_raft::StateReader::read`], so it describes exactly
//! one applied state and revisions on a stream strictly increase. Several revisions that land
//! between two wake-ups go out as one change set (the gateway applies it at once). The stream
//! ends when the client goes away or the node stops.
//!
//! # A gateway ahead of the node waits
//!
//! A reconnecting gateway may hold a revision this node has not applied yet (the node just
//! restarted, or trails the leader). The stream then sends nothing until the node catches up (at
//! most [`CATCH_UP_WAIT`]), so the gateway goes on enforcing what it has instead of being handed
//! an older snapshot.
//!
//! # A node cut off from the cluster ends its streams
//!
//! A node that cannot hear a leader still has its applied state, and would go on serving it
//! without an error while the rest of the cluster moves on (a revoked grant would stay valid on
//! the gateways it serves). So the stream also ends, with `UNAVAILABLE`, once this node has been
//! out of touch for [`OUT_OF_TOUCH_GRACE`]: a follower or candidate that knows no leader, or a
//! leader that has not heard from a quorum. The gateway keeps its configuration and reconnects
//! to another control node from the revision it holds. A single-voter cluster is never out of
//! touch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::config_service_server::ConfigService;
use tollgate_proto::v1::{ConfigChanges, ConfigEvent, WatchRequest, config_event};
use tollgate_raft::{ConfigState, NodeId, PeerNode, RaftNode, StateReader};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::convert;
use crate::gateways::GatewayRegistry;

/// Events buffered per stream before the sender waits for the gateway to read.
const STREAM_BUFFER: usize = 16;

/// How long a node may be out of touch with the cluster before it ends its watch streams: well
/// past a failover (lease plus election, under a second), so that an ordinary election does not
/// disturb the gateways.
pub const OUT_OF_TOUCH_GRACE: Duration = Duration::from_millis(1800);

/// How long a stream waits for this node to reach the revision a reconnecting gateway already
/// holds before it gives up and sends its own (older) snapshot: the gateway then belongs to a
/// cluster that lost data, or to another cluster, and this node's state is what there is.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How often a stream checks that its node is in touch.
const TOUCH_CHECK: Duration = Duration::from_millis(200);

/// Whether a node, by its metrics, is in touch with a working cluster.
pub fn in_touch(metrics: &RaftMetrics<NodeId, PeerNode>) -> bool {
    let voters = metrics.membership_config.membership().voter_ids().count();
    if voters <= 1 && metrics.state == ServerState::Leader {
        return true;
    }
    match metrics.state {
        ServerState::Leader => metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| u128::from(ms) < OUT_OF_TOUCH_GRACE.as_millis()),
        _ => metrics.current_leader.is_some(),
    }
}

/// The `tollgate.v1.ConfigService` of one control node.
#[derive(Clone)]
pub struct ConfigServiceImpl {
    node_id: u64,
    reader: StateReader,
    metrics: watch::Receiver<RaftMetrics<NodeId, PeerNode>>,
    gateways: GatewayRegistry,
    next_stream: Arc<AtomicU64>,
    catch_up_wait: Duration,
}

impl ConfigServiceImpl {
    /// Serve `node`'s applied state, recording watching gateways in `gateways`.
    pub fn new(node: &RaftNode, gateways: GatewayRegistry) -> Self {
        Self {
            node_id: node.id(),
            reader: node.reader(),
            metrics: node.metrics(),
            gateways,
            next_stream: Arc::new(AtomicU64::new(0)),
            catch_up_wait: CATCH_UP_WAIT,
        }
    }

    /// Changes how long a stream waits for this node to reach a reconnecting gateway's revision
    /// (default [`CATCH_UP_WAIT`]).
    #[must_use]
    pub fn with_catch_up_wait(mut self, wait: Duration) -> Self {
        self.catch_up_wait = wait;
        self
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_server(
        self,
    ) -> tollgate_proto::v1::config_service_server::ConfigServiceServer<Self> {
        tollgate_proto::v1::config_service_server::ConfigServiceServer::new(self)
    }
}

fn snapshot_event(state: &ConfigState) -> ConfigEvent {
    ConfigEvent {
        revision: state.revision(),
        kind: Some(config_event::Kind::Snapshot(convert::snapshot(state))),
    }
}

/// The event that brings a watcher at `from` to `state`'s revision; `None` if it is there already.
pub fn next_event(state: &ConfigState, from: u64) -> Option<ConfigEvent> {
    if from == 0 {
        return Some(snapshot_event(state));
    }
    let Some(records) = state.changes_since(from) else {
        return Some(snapshot_event(state));
    };
    let last = records.last()?.revision;
    let changes: Option<Vec<_>> = records
        .iter()
        .map(|record| convert::change(state, &record.change))
        .collect();
    Some(match changes {
        Some(changes) => ConfigEvent {
            revision: last,
            kind: Some(config_event::Kind::Changes(ConfigChanges { changes })),
        },
        None => snapshot_event(state),
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<ConfigEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ConfigService for ConfigServiceImpl {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let WatchRequest {
            from_revision,
            gateway_id,
        } = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let reader = self.reader.clone();
        let gateways = self.gateways.clone();
        let node_id = self.node_id;
        let metrics = self.metrics.clone();
        let catch_up_wait = self.catch_up_wait;
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        // Subscribe before the first read, so that no revision applied after it is missed.
        let mut revisions = reader.subscribe_revision();
        gateways.seen(stream_id, &gateway_id, from_revision, node_id);
        tokio::spawn(async move {
            // A gateway that holds a revision this node has not applied yet (this node restarted
            // and is replaying its log, or trails the leader) waits here for the node to catch
            // up, keeping its configuration, rather than being handed an older snapshot.
            if from_revision > 0 {
                let deadline = tokio::time::sleep(catch_up_wait);
                tokio::pin!(deadline);
                while reader.read(ConfigState::revision) < from_revision {
                    tokio::select! {
                        changed = revisions.changed() => {
                            if changed.is_err() {
                                gateways.closed(stream_id);
                                return;
                            }
                        }
                        () = &mut deadline => {
                            warn!(gateway = %gateway_id, from_revision, "the gateway is ahead of this node and the node did not catch up; sending a snapshot");
                            break;
                        }
                        () = tx.closed() => {
                            gateways.closed(stream_id);
                            return;
                        }
                    }
                }
            }
            let mut sent = from_revision;
            let mut first = true;
            let mut touch = tokio::time::interval(TOUCH_CHECK);
            touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut out_of_touch_since: Option<Instant> = None;
            loop {
                if !first {
                    tokio::select! {
                        changed = revisions.changed() => {
                            if changed.is_err() {
                                break; // the node stopped
                            }
                        }
                        _ = touch.tick() => {
                            if in_touch(&metrics.borrow()) {
                                out_of_touch_since = None;
                            } else {
                                let since = *out_of_touch_since.get_or_insert_with(Instant::now);
                                if since.elapsed() >= OUT_OF_TOUCH_GRACE {
                                    warn!(gateway = %gateway_id, node = node_id, "out of touch with the cluster; ending the watch stream so the gateway moves to another node");
                                    let _ = tx
                                        .send(Err(Status::unavailable(
                                            "this control node is out of touch with the cluster; \
                                             reconnect to another node",
                                        )))
                                        .await;
                                    break;
                                }
                            }
                            continue;
                        }
                        () = tx.closed() => break,
                    }
                }
                revisions.borrow_and_update();
                let event = reader.read(|state| {
                    if first {
                        next_event(state, from_revision)
                    } else if state.revision() > sent {
                        next_event(state, sent)
                    } else {
                        None
                    }
                });
                first = false;
                if let Some(event) = event {
                    sent = event.revision;
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                    gateways.seen(stream_id, &gateway_id, sent, node_id);
                }
            }
            debug!(gateway = %gateway_id, revision = sent, "watch stream ended");
            gateways.closed(stream_id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
