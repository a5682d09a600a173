//! `walship reseed --config FILE`: empty a fenced or divergent node so that its next start
//! seeds it again from the current leader.
//!
//! The sidecar must be stopped (the data directory's lock says so). In this order, so that a
//! crash at any point leaves a node that `reseed` can simply be run on again:
//!
//! 1. the database is emptied: every schema other than PostgreSQL's own is dropped (its
//!    slot and walship's publication too) in replica mode, `public` is made again as
//!    PostgreSQL makes it, and the database is fenced again at once;
//! 2. the log (and its term history) is removed;
//! 3. `state.json` says follower, at the node's term (terms never go back).
//!
//! Divergence reports (`divergent-*.jsonl`) stay in the data directory: they are the record of
//! what the cluster lost. A node that leads or follows normally is refused: nothing is wrong
//! with it.

use std::path::PathBuf;

use tracing::info;

use crate::config::Config;
use crate::log::terms::TERMS_FILE;
use crate::node::{NodeState, RoleKind, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ReseedError {
    #[error("{0}")]
    DataDir(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{data_dir} holds no state: there is nothing to re-seed (start the sidecar, it seeds itself)")]
    NoState { data_dir: PathBuf },
    #[error("node {node} is {role}: only a fenced or divergent node is re-seeded (fence it first: walship fence)")]
    Healthy { node: String, role: &'static str },
    #[error("emptying the database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("fencing the emptied database: {0}")]
    Fence(String),
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
}

/// What was done, for the operator.
#[derive(Debug, Default)]
pub struct Reseeded {
    pub schemas_dropped: Vec<String>,
    pub reports_kept: Vec<PathBuf>,
}

/// Schemas that are PostgreSQL's own.
const USER_SCHEMAS: &str = "SELECT nspname::text FROM pg_catalog.pg_namespace \
     WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
       AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%' ORDER BY 1";

/// Empties the node of `config` (see the module documentation).
pub async fn reseed(config: &Config) -> Result<Reseeded, ReseedError> {
    let _lock = crate::sidecar::lock_data_dir(&config.data_dir).map_err(|e| ReseedError::DataDir(e.to_string()))?;
    let Some(mut state) = NodeState::load(&config.data_dir, &config.cluster, &config.node)? else {
        return Err(ReseedError::NoState { data_dir: config.data_dir.clone() });
    };
    let role = match state.hard.role {
        RoleKind::Leader => "the leader",
        RoleKind::Follower => "a follower",
        RoleKind::Fenced { .. } | RoleKind::Divergent { .. } => "",
    };
    if !role.is_empty() {
        return Err(ReseedError::Healthy { node: config.node.clone(), role });
    }
    let mut done = Reseeded { schemas_dropped: empty_database(config).await?, ..Reseeded::default() };

    let log_dir = config.log_dir();
    match std::fs::remove_dir_all(&log_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ReseedError::Remove { path: log_dir, source }),
    }
    for path in [config.data_dir.join(TERMS_FILE), log_dir.join(TERMS_FILE)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ReseedError::Remove { path, source }),
        }
    }
    state.hard.role = RoleKind::Follower;
    state.leader = None;
    state.save(&config.data_dir)?;
    done.reports_kept = std::fs::read_dir(&config.data_dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("divergent-")))
                .collect()
        })
        .unwrap_or_default();
    info!(node = %config.node, term = %state.hard.term, "re-seeded: the next start loads a snapshot from the leader");
    Ok(done)
}

/// Drops every user schema (replica mode: the fence's event trigger would refuse it) and the
/// node's slot and publication; returns the schemas dropped.
async fn empty_database(config: &Config) -> Result<Vec<String>, ReseedError> {
    let client = crate::sql::connect(&config.postgres).await?;
    client
        .execute(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&config.source.slot],
        )
        .await?;
    let schemas: Vec<String> = client.query(USER_SCHEMAS, &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut sql = String::from("BEGIN; SET LOCAL session_replication_role = replica; ");
    sql.push_str(&format!("DROP PUBLICATION IF EXISTS {}; ", crate::sql::quote_ident(&config.source.publication)));
    for schema in &schemas {
        sql.push_str(&format!("DROP SCHEMA {} CASCADE; ", crate::sql::quote_ident(schema)));
    }
    sql.push_str(
        "CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC; COMMIT",
    );
    client.batch_execute(&sql).await?;
    // The fence's functions lived in the walship schema: put it back up at once.
    crate::fence::fence(&client).await.map_err(|e| ReseedError::Fence(e.to_string()))?;
    Ok(schemas)
}
