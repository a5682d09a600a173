//! Fencing the local PostgreSQL: clients cannot write to a node that does not lead.
//!
//! `default_transaction_read_only` alone is advisory: a client's `BEGIN READ WRITE` or `SET
//! default_transaction_read_only = off` writes straight through it. A fenced database refuses
//! client writes through objects that only a superuser can remove:
//!
//! - a statement trigger [`TRIGGER`] on every table (`BEFORE INSERT OR UPDATE OR DELETE OR
//!   TRUNCATE`) that raises SQLSTATE 25006 (`read_only_sql_transaction`);
//! - an event trigger [`TRIGGER`] on `ddl_command_start` that refuses every DDL statement, so
//!   a table's owner can neither drop nor disable the table's trigger, nor create a table
//!   without one;
//! - and, as before, `default_transaction_read_only = on` for the database, so an ordinary
//!   session fails early with PostgreSQL's own message (and `nextval` fails too).
//!
//! Both triggers are ordinary ("origin") triggers: they do not fire in a session with
//! `session_replication_role = replica`. That is how walship's replay writes, and how a
//! superuser still can: a superuser can always write to a fenced node, by design (and can drop
//! the triggers); fencing protects against applications, not administrators.
//!
//! Fencing also ends the client sessions of this database that hold a write transaction open
//! (they have a transaction id), so a write begun before the fence cannot commit after it;
//! their clients see the connection end, and nothing they were told committed is lost. Every
//! write committed before [`fence`] returns is in the WAL before any write refused by it.
//!
//! Only the configured database is fenced: logical replication covers one database, and the
//! others are not replicated either way. [`fence`] is idempotent and covers tables created
//! since the last call (replay creates them in replica mode); [`unfence`] drops it all. Each
//! runs in one transaction, so a crash leaves the database wholly fenced or wholly not.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::error::ErrorClass;
use crate::sql::{quote_ident, quote_qualified};

/// The name of both triggers.
pub const TRIGGER: &str = "walship_fence";
/// How long fencing waits for a table's lock (held by a writer) before ending writers again.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts to take every table's lock before giving up.
pub const ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot {action}: {source}")]
    Postgres { action: &'static str, source: tokio_postgres::Error },
    #[error("writers kept holding table locks through {0} attempts to fence")]
    Busy(u32),
}

impl FenceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            FenceError::Postgres { source, .. } => {
                source.code().map_or(ErrorClass::Retry, |code| ErrorClass::of_sqlstate(code.code()))
            }
            FenceError::Busy(_) => ErrorClass::Retry,
        }
    }
}

fn pg(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> FenceError {
    move |source| FenceError::Postgres { action, source }
}

/// The functions both triggers call. Created (or replaced) by every fence.
const FUNCTIONS: &str = r#"
CREATE SCHEMA IF NOT EXISTS walship;
CREATE OR REPLACE FUNCTION walship.fence_refuse_write() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'walship: this node does not lead: % on %.% is refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'Write to the leader (walship status --admin URL names it).';
END
$fn$;
CREATE OR REPLACE FUNCTION walship.fence_refuse_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'walship: this node does not lead: % is refused', TG_TAG
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'Run schema changes on the leader (walship status --admin URL names it).';
END
$fn$;
"#;

/// Tables of this database without the fence trigger, as quoted `schema.name`.
const UNFENCED_TABLES: &str = "SELECT n.nspname::text, c.relname::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walship') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $1) \
     ORDER BY 1, 2";

/// Tables of this database that carry the fence trigger, as `schema`, `name`.
const FENCED_TABLES: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_trigger t \
     JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = $1";

/// Client sessions of this database with a write transaction open, other than walship's own.
const END_WRITERS: &str = "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) \
     FROM pg_catalog.pg_stat_activity \
     WHERE datname = pg_catalog.current_database() AND backend_type = 'client backend' \
       AND pid <> pg_catalog.pg_backend_pid() AND backend_xid IS NOT NULL \
       AND application_name NOT LIKE 'walship%'";

/// Makes the database refuse client writes (see the module documentation). `client` must be a
/// superuser's session; it is left in its default settings.
pub async fn fence(client: &Client) -> Result<(), FenceError> {
    for attempt in 1..=ATTEMPTS {
        let ended = end_writers(client).await?;
        match fence_once(client).await {
            Ok(tables) => {
                info!(tables, writers_ended = ended, "database fenced: clients cannot write");
                return Ok(());
            }
            Err(FenceError::Postgres { source, .. }) if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                warn!(attempt, "a writer holds a table lock: ending writers again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(FenceError::Busy(ATTEMPTS))
}

/// Ends client sessions that hold a write transaction; returns how many.
async fn end_writers(client: &Client) -> Result<i64, FenceError> {
    let row = client.query_one(END_WRITERS, &[]).await.map_err(pg("end writing sessions"))?;
    row.try_get(0).map_err(pg("end writing sessions"))
}

/// Runs `body` in one read-write transaction on `client`, rolled back when it fails.
async fn in_transaction<T>(
    client: &Client,
    action: &'static str,
    body: impl std::future::Future<Output = Result<T, FenceError>>,
) -> Result<T, FenceError> {
    client.batch_execute("BEGIN READ WRITE").await.map_err(pg(action))?;
    match body.await {
        Ok(value) => {
            client.batch_execute("COMMIT").await.map_err(pg(action))?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                debug!(error = %rollback, "rollback after a failed fence step");
            }
            Err(e)
        }
    }
}

/// One transaction that installs everything; returns how many tables got a trigger now.
async fn fence_once(client: &Client) -> Result<usize, FenceError> {
    in_transaction(client, "fence", fence_steps(client)).await
}

async fn fence_steps(tx: &Client) -> Result<usize, FenceError> {
    let setup = format!(
        "SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = {}; {FUNCTIONS}",
        LOCK_TIMEOUT.as_millis()
    );
    tx.batch_execute(&setup).await.map_err(pg("create the fence functions"))?;
    if !is_fenced(tx).await? {
        let sql = format!(
            "CREATE EVENT TRIGGER {} ON ddl_command_start EXECUTE FUNCTION walship.fence_refuse_ddl()",
            quote_ident(TRIGGER)
        );
        tx.batch_execute(&sql).await.map_err(pg("create the fence event trigger"))?;
    }
    let tables = on_each_table(tx, UNFENCED_TABLES, "create a fence trigger", |table| {
        format!(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION walship.fence_refuse_write()",
            quote_ident(TRIGGER)
        )
    })
    .await?;
    read_only_by_default(tx, true).await?;
    Ok(tables)
}

/// Lets clients write again: drops every fence trigger and the event trigger.
pub async fn unfence(client: &Client) -> Result<(), FenceError> {
    let tables = in_transaction(client, "unfence", unfence_steps(client)).await?;
    info!(tables, "database unfenced: clients can write");
    Ok(())
}

async fn unfence_steps(tx: &Client) -> Result<usize, FenceError> {
    // Dropping a table's trigger waits for its lock: a long reader (a snapshot being exported
    // for a new follower) must not hold up the fence task for as long as it runs.
    let setup =
        format!("SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = {}", LOCK_TIMEOUT.as_millis());
    tx.batch_execute(&setup).await.map_err(pg("begin unfencing"))?;
    tx.batch_execute(&format!("DROP EVENT TRIGGER IF EXISTS {}", quote_ident(TRIGGER)))
        .await
        .map_err(pg("drop the fence event trigger"))?;
    let tables = on_each_table(tx, FENCED_TABLES, "drop a fence trigger", |table| {
        format!("DROP TRIGGER IF EXISTS {} ON {table}", quote_ident(TRIGGER))
    })
    .await?;
    read_only_by_default(tx, false).await?;
    Ok(tables)
}

/// Runs `statement(schema.name)` for each table `query` (taking the trigger's name) lists;
/// returns how many.
async fn on_each_table(
    tx: &Client,
    query: &str,
    action: &'static str,
    statement: impl Fn(&str) -> String,
) -> Result<usize, FenceError> {
    let rows = tx.query(query, &[&TRIGGER]).await.map_err(pg(action))?;
    for row in &rows {
        let (schema, name): (String, String) =
            (row.try_get(0).map_err(pg(action))?, row.try_get(1).map_err(pg(action))?);
        tx.batch_execute(&statement(&quote_qualified(&schema, &name))).await.map_err(pg(action))?;
    }
    Ok(rows.len())
}

/// Sets or resets `default_transaction_read_only` for the current database.
async fn read_only_by_default(tx: &Client, on: bool) -> Result<(), FenceError> {
    let row = tx
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map_err(pg("find the current database"))?;
    let name: String = row.try_get(0).map_err(pg("find the current database"))?;
    let setting = if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
    tx.batch_execute(&format!("ALTER DATABASE {} {setting}", quote_ident(&name)))
        .await
        .map_err(pg("set the database's default_transaction_read_only"))
}

/// Whether the database is fenced (its event trigger exists).
pub async fn is_fenced(client: &Client) -> Result<bool, FenceError> {
    let row = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1", &[&TRIGGER])
        .await
        .map_err(pg("look for the fence event trigger"))?;
    Ok(row.is_some())
}
