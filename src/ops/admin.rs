//! The admin HTTP server: `/healthz`, `/readyz`, `/readyz/mesh`, `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

/// Serves the admin endpoints on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/mesh", get(readyz_mesh))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    answer(s.ready.missing())
}

async fn readyz_mesh(State(s): State<AdminState>) -> impl IntoResponse {
    answer(s.ready.mesh_missing())
}

fn answer(missing: Option<String>) -> impl IntoResponse {
    match missing {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {m}\n"),
        ),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
