//! The admin HTTP API: health checks for load balancers, status for people, metrics for
//! Prometheus. Promotion, switchover and fencing arrive with failover.

pub mod client;
pub mod metrics;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Role;
use crate::node::NodeView;
use status::Status;

/// How long `/health` waits for PostgreSQL.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub node: String,
    pub postgres: tokio_postgres::Config,
    pub view: NodeView,
    pub metrics: PrometheusHandle,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/leader", get(leader))
        .route("/replica", get(replica))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Serves the admin API on a bound listener until `cancel`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, cancel: CancellationToken) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "admin api listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

/// 200 while the sidecar runs and reaches its PostgreSQL.
async fn health(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    let check = async {
        let client = crate::sql::connect(&state.postgres).await?;
        client.simple_query("SELECT 1").await?;
        Ok::<(), tokio_postgres::Error>(())
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(Ok(())) => (StatusCode::OK, format!("ok: {} reaches its postgresql\n", state.node)),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("postgresql unreachable: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "postgresql did not answer in time\n".into()),
    }
}

/// 200 on the current leader, else 503 (for load balancers).
async fn leader(State(state): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    match state.view.role {
        Role::Leader => (StatusCode::OK, "leader\n"),
        Role::Follower => (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n"),
    }
}

#[derive(Deserialize)]
struct ReplicaQuery {
    max_lag_bytes: Option<u64>,
}

/// 200 on a follower within `max_lag_bytes` of its leader (any lag when absent), else 503.
async fn replica(State(state): State<Arc<AdminState>>, Query(q): Query<ReplicaQuery>) -> (StatusCode, String) {
    let Ok(s) = Status::of(&state.view) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "status unavailable\n".into());
    };
    match (state.view.role, s.lag_bytes) {
        (Role::Leader, _) => (StatusCode::SERVICE_UNAVAILABLE, "this node leads\n".into()),
        (Role::Follower, None) => (StatusCode::SERVICE_UNAVAILABLE, "no word from a leader yet\n".into()),
        (Role::Follower, Some(lag)) if q.max_lag_bytes.is_some_and(|max| lag > max) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("lag {lag} bytes\n"))
        }
        (Role::Follower, Some(lag)) => (StatusCode::OK, format!("replica, lag {lag} bytes\n")),
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Result<Json<Status>, (StatusCode, String)> {
    Status::of(&state.view).map(Json).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Result<String, (StatusCode, String)> {
    metrics::render(&state.view, &state.metrics).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
