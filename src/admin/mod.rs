//! The admin HTTP API: health checks for load balancers ([`health`]), status for people,
//! metrics for Prometheus, and the writes that change a node's role ([`control`]).

pub mod client;
pub mod control;
pub mod health;
pub mod metrics;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::node::inbox::Inbox;
use crate::node::{NodeView, RoleName};
use status::Status;

/// How long `/health` waits for PostgreSQL.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub node: String,
    pub postgres: tokio_postgres::Config,
    pub view: NodeView,
    pub metrics: PrometheusHandle,
    /// The node's control loop, which answers promotions, switchovers, fences and claims.
    pub inbox: Inbox,
    /// The cluster's token: every POST must carry it.
    pub token: Option<Arc<[u8]>>,
    /// The peers' admin API, listed in `/status`.
    pub peers: Vec<status::PeerAdmin>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/leader", get(leader).options(leader))
        .route("/primary", get(leader).options(leader))
        .route("/replica", get(replica).options(replica))
        .route("/liveness", get(liveness).options(liveness))
        .route("/readiness", get(readiness).options(readiness))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/promote", post(control::promote))
        .route("/switchover", post(control::switchover))
        .route("/fence", post(control::fence))
        .route("/node/probe", get(control::probe))
        .route("/node/claim", post(control::claim))
        .route("/node/handover", post(control::handover))
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

/// What the health checks decide on (see [`health`]).
async fn observe(state: &AdminState) -> health::Observed {
    let pg = health::observe_pg(&state.postgres).await;
    let leads = state.view.role.borrow().role == RoleName::Leader;
    let replica_lag = match Status::of(&state.view) {
        Ok(s) if !leads => s.lag_bytes.map(|bytes| health::ReplicaLag { bytes, seconds: s.lag_seconds.unwrap_or(0.0) }),
        _ => None,
    };
    health::Observed { leads, pg, replica_lag }
}

async fn leader(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    health::leader(&observe(&state).await)
}

async fn replica(State(state): State<Arc<AdminState>>, Query(q): Query<health::ReplicaQuery>) -> (StatusCode, String) {
    match q.limits() {
        Ok(limits) => health::replica(&observe(&state).await, limits),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn liveness() -> (StatusCode, &'static str) {
    (StatusCode::OK, "alive\n")
}

async fn readiness(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    health::readiness(&observe(&state).await)
}

async fn status(State(state): State<Arc<AdminState>>) -> Result<Json<Status>, (StatusCode, String)> {
    let mut status = Status::of(&state.view).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    status.peers = state.peers.clone();
    Ok(Json(status))
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Result<String, (StatusCode, String)> {
    metrics::render(&state.view, &state.metrics).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
