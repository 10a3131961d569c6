//! Which gateways follow this node, and how far.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tollgate_proto::v1::GatewayStatus;

/// The gateways with a `Watch` stream open on this node, shared by the config service (which
/// records them) and the admin service (which reports them in `ClusterStatus`).
#[derive(Debug, Clone, Default)]
pub struct GatewayRegistry {
    inner: Arc<Mutex<BTreeMap<u64, GatewayStatus>>>,
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl GatewayRegistry {
    /// Record that stream `stream` of `gateway_id` reached `revision`.
    pub(crate) fn seen(&self, stream: u64, gateway_id: &str, revision: u64, node_id: u64) {
        self.inner.lock().insert(
            stream,
            GatewayStatus {
                gateway_id: gateway_id.to_owned(),
                revision,
                served_by_node_id: node_id,
                last_seen_unix_ms: now_unix_ms(),
            },
        );
    }

    /// Forget a closed stream.
    pub(crate) fn closed(&self, stream: u64) {
        self.inner.lock().remove(&stream);
    }

    /// Every open stream's gateway, ordered by gateway id.
    pub fn list(&self) -> Vec<GatewayStatus> {
        let mut list: Vec<GatewayStatus> = self.inner.lock().values().cloned().collect();
        list.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        list
    }
}
