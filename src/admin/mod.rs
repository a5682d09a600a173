//! The admin HTTP API. For now: `GET /health`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long `/health` waits for PostgreSQL.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub node: String,
    pub postgres: tokio_postgres::Config,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new().route("/health", get(health)).with_state(state)
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
