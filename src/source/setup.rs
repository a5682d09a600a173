//! Preparing the leader's PostgreSQL: the publication, and the slot with its consistent point.

use tracing::{info, warn};

use crate::config::SourceSettings;
use crate::lsn::Lsn;
use crate::node::{LeaderState, SharedState};
use crate::source::conn::{ReplConnection, SystemId};
use crate::source::SourceError;
use crate::sql::quote_ident;

/// Creates the publication (all tables) when missing.
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
    Ok(())
}

/// The event trigger that gives tables created (or stripped of their key) later a replica
/// identity, and its function.
pub const IDENTITY_TRIGGER: &str = "walship_replica_identity";
/// How long setting a table's replica identity may wait for its lock (`ALTER TABLE` takes an
/// exclusive one) before walship gives up on that table until the next start.
pub const IDENTITY_LOCK_TIMEOUT_MS: u64 = 2000;

/// A published table without a usable replica identity: no primary key under the default
/// identity, or an identity index that is gone. PostgreSQL refuses such a table's UPDATEs and
/// DELETEs as soon as it is published. (`REPLICA IDENTITY NOTHING` set on purpose is left.)
const KEYLESS: &str = "(c.relreplident = 'd' AND NOT EXISTS (
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
                    OR (c.relreplident = 'i' AND NOT EXISTS (
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))";

/// walship must never break the leader's application: publishing a table without a key would
/// make PostgreSQL refuse its UPDATEs and DELETEs. With `auto` (`[source]
/// auto_replica_identity`, the default) every such published table gets `REPLICA IDENTITY
/// FULL` now, and an event trigger does the same for tables created or altered later, in the
/// statement's own transaction. Without it, walship only says which tables are exposed.
/// Returns the tables changed now.
pub async fn ensure_replica_identity(
    client: &tokio_postgres::Client,
    publication: &str,
    auto: bool,
) -> Result<Vec<String>, SourceError> {
    let keyless = format!(
        "SELECT format('%I.%I', p.schemaname, p.tablename)
           FROM pg_publication_tables p
           JOIN pg_namespace n ON n.nspname = p.schemaname
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
          WHERE p.pubname = $1 AND ({KEYLESS})
          ORDER BY 1"
    );
    let tables: Vec<String> = client.query(&keyless, &[&publication]).await?.iter().map(|r| r.get(0)).collect();
    if !auto {
        if !tables.is_empty() {
            warn!(
                tables = %tables.join(", "),
                "published tables without a primary key or replica identity: PostgreSQL rejects their \
                 UPDATEs and DELETEs; add a primary key or set REPLICA IDENTITY FULL / USING INDEX \
                 (or let walship do it: source.auto_replica_identity = true)"
            );
        }
        return drop_identity_trigger(client).await.map(|()| Vec::new());
    }
    if let Err(e) = install_identity_trigger(client, publication).await {
        warn!(
            error = %e,
            "cannot install the event trigger that gives new tables without a key REPLICA IDENTITY FULL \
             (it needs a superuser): such tables will refuse UPDATEs and DELETEs until they get a key"
        );
    }
    let mut changed = Vec::new();
    for table in tables {
        // In replica mode: a fenced database's event trigger refuses DDL from other sessions.
        let sql = format!(
            "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = {IDENTITY_LOCK_TIMEOUT_MS}; \
             ALTER TABLE {table} REPLICA IDENTITY FULL; COMMIT"
        );
        match client.batch_execute(&sql).await {
            Ok(()) => changed.push(table),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                warn!(
                    table = %table, error = %e,
                    "cannot give a table without a key REPLICA IDENTITY FULL; PostgreSQL refuses its UPDATEs \
                     and DELETEs until it has one (walship tries again at its next start; or run \
                     ALTER TABLE ... REPLICA IDENTITY FULL yourself)"
                );
            }
        }
    }
    if !changed.is_empty() {
        info!(
            tables = %changed.join(", "),
            "published tables without a key got REPLICA IDENTITY FULL, so that PostgreSQL takes their UPDATEs and \
             DELETEs (each one logs the whole old row; add a primary key to avoid that)"
        );
    }
    Ok(changed)
}

async fn install_identity_trigger(client: &tokio_postgres::Client, publication: &str) -> Result<(), SourceError> {
    let publication = crate::sql::quote_literal(publication);
    let function = format!(
        "CREATE SCHEMA IF NOT EXISTS walship;
         CREATE OR REPLACE FUNCTION walship.give_replica_identity() RETURNS event_trigger
         LANGUAGE plpgsql AS $walship$
         DECLARE
             t regclass;
         BEGIN
             FOR t IN
                 SELECT DISTINCT c.oid::regclass
                   FROM pg_event_trigger_ddl_commands() d
                   JOIN pg_class c ON c.oid = d.objid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE d.classid = 'pg_class'::regclass AND c.relkind = 'r'
                    AND EXISTS (SELECT 1 FROM pg_publication_tables p
                                 WHERE p.pubname = {publication}
                                   AND p.schemaname = n.nspname AND p.tablename = c.relname)
                    AND ({KEYLESS})
             LOOP
                 EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', t);
                 RAISE LOG 'walship: % has no key: REPLICA IDENTITY FULL, so that it takes UPDATEs and DELETEs', t;
             END LOOP;
         END
         $walship$;"
    );
    let exists = client.query_opt("SELECT 1 FROM pg_event_trigger WHERE evtname = $1", &[&IDENTITY_TRIGGER]).await?;
    let trigger = if exists.is_some() {
        String::new()
    } else {
        format!(
            "CREATE EVENT TRIGGER {} ON ddl_command_end \
             WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE') \
             EXECUTE FUNCTION walship.give_replica_identity();",
            quote_ident(IDENTITY_TRIGGER)
        )
    };
    let sql = format!("BEGIN; SET LOCAL session_replication_role = replica; {function} {trigger} COMMIT");
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e.into());
    }
    Ok(())
}

async fn drop_identity_trigger(client: &tokio_postgres::Client) -> Result<(), SourceError> {
    let sql = format!(
        "BEGIN; SET LOCAL session_replication_role = replica; DROP EVENT TRIGGER IF EXISTS {}; COMMIT",
        quote_ident(IDENTITY_TRIGGER)
    );
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        warn!(error = %e, "cannot drop walship's replica identity event trigger");
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
