//! The in-process configuration stream of `--role all`: the gateway watches its own control
//! node through the same `ConfigService` code a remote gateway reaches over gRPC, without a
//! network hop.

use std::future::Future;
use std::pin::Pin;

use tollgate_control::ConfigServiceImpl;
use tollgate_gateway::follow::{EventStream, WatchConnector};
use tollgate_proto::v1::WatchRequest;
use tollgate_proto::v1::config_service_server::ConfigService as _;

/// Watches a control node in the same process.
pub struct LocalWatch(pub ConfigServiceImpl);

impl WatchConnector for LocalWatch {
    fn connect(
        &self,
        request: WatchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, tonic::Status>> + Send + '_>> {
        Box::pin(async move {
            let response = self.0.watch(tonic::Request::new(request)).await?;
            Ok(response.into_inner() as EventStream)
        })
    }
}
