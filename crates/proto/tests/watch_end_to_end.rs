//! The generated tonic client and server talk to each other over a real loopback socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_proto::v1::config_service_client::ConfigServiceClient;
use tollgate_proto::v1::config_service_server::{ConfigService, ConfigServiceServer};
use tollgate_proto::v1::{
    ConfigChange, ConfigChanges, ConfigEvent, ConfigSnapshot, Grant, Policy, UpstreamRemoved,
    WatchRequest, config_change, config_event,
};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// A fixed history: revision 1 is the initial snapshot's content, revision 2 revokes a grant and
/// removes an upstream. A watch from revision 0 gets the snapshot then the change; a watch from
/// revision 1 gets only the change.
struct FixedHistory;

fn grant(revoked: bool) -> Grant {
    Grant {
        id: "g-1".into(),
        label: "agent".into(),
        token_sha256: vec![1; 32],
        server: "files".into(),
        policy_id: "default".into(),
        revoked,
    }
}

impl FixedHistory {
    fn events_after(&self, from_revision: u64) -> Vec<ConfigEvent> {
        let snapshot = ConfigEvent {
            revision: 1,
            kind: Some(config_event::Kind::Snapshot(ConfigSnapshot {
                policies: vec![Policy {
                    id: "default".into(),
                    version: 1,
                    document_json: "{}".into(),
                    digest: "sha256:00".into(),
                }],
                grants: vec![grant(false)],
                upstreams: Vec::new(),
            })),
        };
        let change = ConfigEvent {
            revision: 2,
            kind: Some(config_event::Kind::Changes(ConfigChanges {
                changes: vec![
                    ConfigChange {
                        kind: Some(config_change::Kind::GrantPut(grant(true))),
                    },
                    ConfigChange {
                        kind: Some(config_change::Kind::UpstreamRemoved(UpstreamRemoved {
                            name: "files".into(),
                        })),
                    },
                ],
            })),
        };
        match from_revision {
            0 => vec![snapshot, change],
            1 => vec![change],
            _ => Vec::new(),
        }
    }
}

#[tonic::async_trait]
impl ConfigService for FixedHistory {
    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<ConfigEvent, Status>>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        if request.gateway_id.is_empty() {
            return Err(Status::invalid_argument("gateway_id is required"));
        }
        let events = self.events_after(request.from_revision);
        Ok(Response::new(tokio_stream::iter(
            events.into_iter().map(Ok).collect::<Vec<_>>(),
        )))
    }
}

/// Serves `FixedHistory` on an ephemeral loopback port until the returned sender is dropped.
async fn serve() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigServiceServer::new(FixedHistory))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (addr, stop)
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

async fn watch(addr: SocketAddr, from_revision: u64) -> Vec<ConfigEvent> {
    let mut client = within(ConfigServiceClient::connect(format!("http://{addr}")))
        .await
        .unwrap();
    let mut stream = within(client.watch(WatchRequest {
        from_revision,
        gateway_id: "gw-1".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    let mut events = Vec::new();
    while let Some(event) = within(stream.message()).await.unwrap() {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn watch_from_zero_streams_a_snapshot_then_the_change_in_order() {
    let (addr, _stop) = serve().await;
    let events = watch(addr, 0).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].revision, 1);
    let Some(config_event::Kind::Snapshot(snapshot)) = &events[0].kind else {
        panic!("first event is not a snapshot: {:?}", events[0]);
    };
    assert!(!snapshot.grants[0].revoked);
    assert_eq!(events[1].revision, 2);
    let Some(config_event::Kind::Changes(changes)) = &events[1].kind else {
        panic!("second event is not a change set: {:?}", events[1]);
    };
    assert_eq!(
        changes.changes[0].kind,
        Some(config_change::Kind::GrantPut(grant(true)))
    );
}

#[tokio::test]
async fn watch_resumed_from_a_revision_gets_only_later_changes() {
    let (addr, _stop) = serve().await;
    let events = watch(addr, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].revision, 2);
    assert!(matches!(
        events[0].kind,
        Some(config_event::Kind::Changes(_))
    ));
}

#[tokio::test]
async fn server_status_reaches_the_client_with_its_code_and_message() {
    let (addr, _stop) = serve().await;
    let mut client = within(ConfigServiceClient::connect(format!("http://{addr}")))
        .await
        .unwrap();
    let status = within(client.watch(WatchRequest {
        from_revision: 0,
        gateway_id: String::new(),
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "gateway_id is required");
}
