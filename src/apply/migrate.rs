//! walship's own schema (`migrations/*.sql`), brought up to date at connect.
//!
//! Every migration runs in its own transaction together with its row in
//! `walship.migrations`, so it takes effect exactly once. A session advisory lock is held for
//! the whole run: two sidecars connecting at once migrate one after the other, and the second
//! finds nothing left to do. A database migrated by a newer walship is refused.
//!
//! Migrations run in the apply session, whose `search_path` is empty: qualify every name.

use tokio_postgres::Client;
use tracing::info;

use super::error::{pg, ApplyError};

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In version order; a new file gets the next version.
const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "init", sql: include_str!("../../migrations/0001_init.sql") }];

/// Advisory lock key held while migrating ("walship" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x7761_6c73_6869_7001;

/// Applies the pending migrations; returns the versions applied now.
pub(super) async fn run(client: &mut Client) -> Result<Vec<i32>, ApplyError> {
    client
        .execute("SELECT pg_catalog.pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("take the migration lock"))?;
    let result = run_locked(client).await;
    let unlocked = client
        .execute("SELECT pg_catalog.pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("release the migration lock"));
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn run_locked(client: &mut Client) -> Result<Vec<i32>, ApplyError> {
    let done = applied_versions(client).await?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&found) = done.iter().max().filter(|&&v| v > known) {
        return Err(ApplyError::SchemaTooNew { found, known });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        apply(client, migration).await.map_err(|source| ApplyError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        })?;
        info!(version = migration.version, name = migration.name, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}

async fn applied_versions(client: &Client) -> Result<Vec<i32>, ApplyError> {
    let exists = client
        .query_one("SELECT pg_catalog.to_regclass('walship.migrations') IS NOT NULL", &[])
        .await
        .and_then(|row| row.try_get::<_, bool>(0))
        .map_err(pg("look for walship.migrations"))?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows =
        client.query("SELECT version FROM walship.migrations", &[]).await.map_err(pg("read walship.migrations"))?;
    rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>().map_err(pg("read walship.migrations"))
}

async fn apply(client: &mut Client, migration: &Migration) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction.batch_execute(migration.sql).await?;
    transaction
        .execute(
            "INSERT INTO walship.migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
    transaction.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
    }
}
