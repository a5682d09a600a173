//! Errors of seeding, on either side.

use std::path::PathBuf;
use std::process::ExitStatus;

use crate::apply::ApplyError;
use crate::error::ErrorClass;
use crate::localpg::LocalPgError;
use crate::source::conn::ReplError;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The leader's replication connection (connecting, creating the slot).
    #[error("seed: {what}: {source}")]
    Replication {
        what: &'static str,
        #[source]
        source: ReplError,
    },

    /// A statement on an ordinary connection failed (export reads, or the load).
    #[error("seed: {what}: {}", crate::sql::describe(source))]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Copying one table out or in.
    #[error("seed: table {table}: {what}: {source}")]
    Table {
        table: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Preparing walship's schema or recording the position, through the applier's code.
    #[error("seed: {0}")]
    Apply(#[source] ApplyError),

    #[error("seed: cannot find pg_dump: {0}")]
    Bindir(#[source] LocalPgError),

    #[error("seed: cannot run {program:?}: {source}")]
    DumpSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("seed: pg_dump failed ({status}): {stderr}")]
    DumpFailed { status: ExitStatus, stderr: String },

    #[error("seed: publication {0:?} does not exist")]
    NoPublication(String),

    #[error("seed: the schema dump exceeds {max} bytes")]
    SchemaTooLarge { max: usize },

    /// The follower's database is not empty.
    #[error(
        "seed: the database already holds {count} user relation(s) ({some}): seed only into an empty \
         database (drop and recreate it first)"
    )]
    NotEmpty { count: i64, some: String },

    /// The follower's database already records an applied entry.
    #[error(
        "seed: walship.progress already records applied entry {applied}: this database was seeded or replayed into"
    )]
    AlreadySeeded { applied: String },

    /// A message out of the seeding order (or a call out of order, such as finishing early).
    #[error("seed: got {got} while expecting {expected}")]
    Unexpected { got: &'static str, expected: &'static str },

    #[error("seed: schema SQL is not valid UTF-8")]
    SchemaNotUtf8,

    #[error("seed: table {table}: the leader sent {announced} rows, {loaded} were loaded")]
    TableRows { table: String, announced: u64, loaded: u64 },

    #[error("seed: the leader's totals are {announced}, the loaded ones {loaded}")]
    Totals { announced: String, loaded: String },

    /// An earlier error ended this export or load; a load commits nothing after one.
    #[error("seed: an earlier error ended this seed; start it again")]
    Failed,
}

impl SeedError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SeedError::Replication { source, .. } => source.class(),
            SeedError::Postgres { source, .. } | SeedError::Table { source, .. } => pg_class(source),
            SeedError::Apply(e) => e.class(),
            SeedError::Bindir(_)
            | SeedError::DumpSpawn { .. }
            | SeedError::DumpFailed { .. }
            | SeedError::NoPublication(_)
            | SeedError::SchemaTooLarge { .. }
            | SeedError::NotEmpty { .. }
            | SeedError::AlreadySeeded { .. } => ErrorClass::Operator,
            // A peer or caller that breaks the protocol, or data that does not add up: the
            // load is not committed, and trying again would only repeat the bug.
            SeedError::Unexpected { .. }
            | SeedError::SchemaNotUtf8
            | SeedError::TableRows { .. }
            | SeedError::Totals { .. }
            | SeedError::Failed => ErrorClass::Fatal,
        }
    }
}

/// By SQLSTATE; an error without one is the connection's: retry.
fn pg_class(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        Some(code) => ErrorClass::of_sqlstate(code.code()),
        None => ErrorClass::Retry,
    }
}

pub(super) fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SeedError {
    move |source| SeedError::Postgres { what, source }
}

pub(super) fn repl(what: &'static str) -> impl FnOnce(ReplError) -> SeedError {
    move |source| SeedError::Replication { what, source }
}
