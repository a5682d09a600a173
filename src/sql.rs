//! Ordinary SQL connections (tokio-postgres) to the local PostgreSQL.

use std::time::Duration;

use tokio_postgres::NoTls;
use tracing::debug;

/// An ordinary SQL connection, its driver running on its own task.
pub async fn connect(pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut pg = pg.clone();
    pg.connect_timeout(Duration::from_secs(5));
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "sql connection ended");
        }
    });
    Ok(client)
}
