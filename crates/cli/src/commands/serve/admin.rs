//! The admin listener of a control node run alone (`--role control`): `/metrics`, `/healthz`,
//! and `/readyz`, which is 200 while the node is in touch with a working cluster (it hears a
//! leader, or as leader a quorum) and 503 otherwise. With `--role all` the gateway's admin
//! listener serves the same registry instead.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse as _;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_control::ControlNode;
use tollgate_telemetry::Metrics;

/// Binds `addr` and serves until `stop` turns true; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    control: &ControlNode,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let node = control.node().clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let in_touch = tollgate_control::watch::in_touch(&node.metrics().borrow());
                async move {
                    if in_touch {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "out of touch with the cluster\n",
                        )
                            .into_response()
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "admin listener failed");
        }
    });
    Ok((bound, task))
}
