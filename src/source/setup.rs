//! Preparing the leader's PostgreSQL: the publication, and the slot with its consistent point.

use tracing::{info, warn};

use crate::config::SourceSettings;
use crate::lsn::Lsn;
use crate::node::{LeaderState, SharedState};
use crate::source::conn::{ReplConnection, SystemId};
use crate::source::SourceError;
use crate::sql::quote_ident;

/// Creates the publication (all tables) when missing, and warns about published tables whose
/// UPDATEs and DELETEs PostgreSQL would reject for lack of a replica identity.
pub async fn ensure_publication(client: &tokio_postgres::Client, publication: &str) -> Result<(), SourceError> {
    let exists = client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication]).await?.is_some();
    if !exists {
        // In replica mode: a fenced database's event trigger refuses DDL from other sessions.
        let sql = format!(
            "BEGIN; SET LOCAL session_replication_role = replica; CREATE PUBLICATION {} FOR ALL TABLES; COMMIT",
            quote_ident(publication)
        );
        client.batch_execute(&sql).await?;
        info!(publication, "created publication for all tables");
    }
    let rows = client
        .query(
            "SELECT format('%I.%I', p.schemaname, p.tablename)
               FROM pg_publication_tables p
               JOIN pg_namespace n ON n.nspname = p.schemaname
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
              WHERE p.pubname = $1
                AND (c.relreplident = 'n'
                     OR (c.relreplident = 'd' AND NOT EXISTS (
                           SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
              ORDER BY 1",
            &[&publication],
        )
        .await?;
    let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if !tables.is_empty() {
        warn!(
            tables = %tables.join(", "),
            "published tables without a primary key or replica identity: PostgreSQL will reject their \
             UPDATEs and DELETEs; add a primary key or set REPLICA IDENTITY FULL / USING INDEX"
        );
    }
    Ok(())
}

/// Makes sure this node's slot exists. On first start (and when this node begins a new term)
/// the slot is created with an exported snapshot and its consistent point is recorded in
/// `state.json` before anything is streamed; afterwards the slot must still be there and belong
/// to the same PostgreSQL system.
pub async fn ensure_slot(
    repl: &mut ReplConnection,
    client: &tokio_postgres::Client,
    state: &SharedState,
    settings: &SourceSettings,
    log_end: Option<Lsn>,
) -> Result<LeaderState, SourceError> {
    let system = repl.identify_system().await?;
    if let Some(leader) = &state.get().leader {
        check_existing(client, leader, &system, log_end).await?;
        return Ok(leader.clone());
    }
    // No record of a slot: one of our name can only be left from a start that crashed before
    // recording it, so nothing was ever streamed from it.
    let stale =
        client.query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&settings.slot]).await?;
    match stale {
        Some(row) if row.get::<_, bool>(0) => {
            return Err(SourceError::Setup(format!(
                "slot {} exists and is in use by another process, but this data_dir never recorded it: \
                 stop the other consumer or set source.slot",
                settings.slot
            )))
        }
        Some(_) => {
            client.execute("SELECT pg_drop_replication_slot($1)", &[&settings.slot]).await?;
            info!(slot = %settings.slot, "dropped unrecorded slot left by an interrupted start");
        }
        None => {}
    }
    let created = repl.create_slot(&settings.slot, false).await?;
    let leader = LeaderState {
        slot: created.slot_name,
        publication: settings.publication.clone(),
        system_id: system.system_id,
        consistent_point: created.consistent_point,
    };
    state.update(|s| s.leader = Some(leader.clone()))?;
    info!(slot = %leader.slot, consistent_point = %leader.consistent_point, "created replication slot");
    Ok(leader)
}

async fn check_existing(
    client: &tokio_postgres::Client,
    leader: &LeaderState,
    system: &SystemId,
    log_end: Option<Lsn>,
) -> Result<(), SourceError> {
    if leader.system_id != system.system_id {
        return Err(SourceError::Setup(format!(
            "PostgreSQL system identifier is {} but this data_dir was set up on {}: the database was \
             replaced; start from an empty data_dir",
            system.system_id, leader.system_id
        )));
    }
    let slot = client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&leader.slot])
        .await?;
    let Some(slot) = slot else {
        return Err(SourceError::Setup(format!(
            "replication slot {} is gone, so changes since the log's end may be lost: \
             start this node from an empty data_dir (and re-seed its followers)",
            leader.slot
        )));
    };
    let confirmed: Option<Lsn> = slot.get::<_, Option<String>>(0).and_then(|t| t.parse().ok());
    let log_end = log_end.unwrap_or(leader.consistent_point);
    match confirmed {
        // walship reports a position only once it is fsynced: a log that ends before it lost
        // entries PostgreSQL will never send again.
        Some(confirmed) if confirmed > log_end => Err(SourceError::Setup(format!(
            "the log ends at {log_end} but slot {} confirmed {confirmed}: entries already \
             acknowledged to PostgreSQL are missing from the log (was data_dir restored or damaged?)",
            leader.slot
        ))),
        _ => Ok(()),
    }
}

/// Drops the slot this node made when it led before, if any, and forgets it: a node that
/// follows another leader must not hold WAL back for a slot nobody reads, and a node that
/// leads a new term starts from a slot made after everything it replayed.
pub async fn drop_own_slot(client: &tokio_postgres::Client, state: &SharedState) -> Result<(), SourceError> {
    let Some(leader) = state.get().leader else { return Ok(()) };
    let dropped = client
        .query_opt(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&leader.slot],
        )
        .await?;
    state.update(|s| s.leader = None)?;
    if dropped.is_some() {
        info!(slot = %leader.slot, "dropped this node's replication slot from an earlier term");
    }
    Ok(())
}

/// Names this sidecar's replication connection (`application_name`) as PostgreSQL's
/// synchronous standby in `semi-sync` and `sync` modes, so that a committing client waits
/// until the sidecar reports its commit flushed (which the sync rule allows only once the
/// followers hold it); in `async` mode, takes the name away again if this sidecar set it.
/// `ALTER SYSTEM` and a reload; when that is not allowed, the error says what to set.
pub async fn ensure_sync_standby(
    client: &tokio_postgres::Client,
    mode: crate::config::Mode,
    application_name: &str,
) -> Result<(), SourceError> {
    let wanted = format!("\"{application_name}\"");
    let current: String = client.query_one("SHOW synchronous_standby_names", &[]).await?.get(0);
    let sql = match mode {
        crate::config::Mode::Async if current == wanted => "ALTER SYSTEM RESET synchronous_standby_names".to_owned(),
        crate::config::Mode::Async => return Ok(()),
        _ if current == wanted => return Ok(()),
        _ => format!("ALTER SYSTEM SET synchronous_standby_names = '{}'", wanted.replace('\'', "''")),
    };
    let changed = async {
        client.batch_execute(&sql).await?;
        client.batch_execute("SELECT pg_reload_conf()").await
    };
    if let Err(e) = changed.await {
        return Err(SourceError::Setup(format!(
            "cannot set synchronous_standby_names ({e}): as a superuser run {sql}; SELECT pg_reload_conf(); \
             or give walship's role the right to (GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names)"
        )));
    }
    info!(synchronous_standby_names = %if mode == crate::config::Mode::Async { "" } else { wanted.as_str() }, "PostgreSQL's synchronous standby set");
    Ok(())
}
