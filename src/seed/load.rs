//! The follower side: an exported snapshot into an empty database, in one transaction.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};
use tracing::{info, warn};

use super::catalog::{self, column_list};
use super::error::{pg, SeedError};
use super::export::count_rows;
use super::{ProgressLog, SeedProgress};
use crate::apply::AppliedPosition;
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::relay::Message;
use crate::sql::quote_qualified;

/// On top of the apply session's settings: read values in the form the leader wrote them.
const LOAD_SETUP: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres";

/// A load in progress: one open transaction. See the module docs of [`crate::seed`].
pub struct Load {
    client: Client,
    /// Recorded in `walship.progress` with the data; `None`: replay starts at the log's first
    /// entry, and no row is written.
    position: Option<AppliedPosition>,
    state: State,
    progress: SeedProgress,
    log: ProgressLog,
}

/// Where the load is in the message sequence.
enum State {
    Schema,
    Tables,
    Copying(TableLoad),
    Ended,
    Failed,
}

impl State {
    fn expects(&self) -> &'static str {
        match self {
            State::Schema => "SeedSchema",
            State::Tables => "SeedTable or SeedEnd",
            State::Copying(_) => "SeedData or SeedTableEnd",
            State::Ended => "finish",
            State::Failed => "nothing (the load failed)",
        }
    }
}

/// The COPY into the table being loaded.
struct TableLoad {
    table: String,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    /// Rows received so far, counted in the COPY text.
    rows: u64,
}

impl Load {
    /// Connects, brings walship's schema up to date, opens the load transaction and checks
    /// that the database holds no user relation and no applied position. `term` and
    /// `position` (from `SeedBegin`) are recorded as the applied entry, with `snapshot_lsn` as
    /// its end LSN; `term` is the leader's (every entry after the snapshot is of its term).
    pub async fn begin(
        config: &tokio_postgres::Config,
        term: Term,
        position: Option<Index>,
        snapshot_lsn: Lsn,
    ) -> Result<Load, SeedError> {
        let mut client = crate::sql::connect(config).await.map_err(pg("connect"))?;
        client.batch_execute(crate::apply::SESSION_SETUP).await.map_err(pg("set the load session up"))?;
        client.batch_execute(LOAD_SETUP).await.map_err(pg("set the load session up"))?;
        crate::apply::run_migrations(&mut client).await.map_err(SeedError::Apply)?;
        // Nobody else may record a position while this transaction runs.
        client
            .batch_execute("BEGIN; LOCK TABLE walship.progress IN EXCLUSIVE MODE")
            .await
            .map_err(pg("begin the load"))?;
        catalog::check_empty(&client).await?;
        check_no_progress(&client).await?;
        let commit_time = crate::lsn::now_pg_micros();
        let position =
            position.map(|index| AppliedPosition { id: EntryId { term, index }, end_lsn: snapshot_lsn, commit_time });
        info!(position = ?position.map(|p| p.id), snapshot_lsn = %snapshot_lsn, "seed load started");
        Ok(Load {
            client,
            position,
            state: State::Schema,
            progress: SeedProgress::default(),
            log: ProgressLog::new("load"),
        })
    }

    /// Takes the next seeding message after `SeedBegin`. After an error the load is over and
    /// nothing of it is committed.
    pub async fn take(&mut self, message: Message) -> Result<(), SeedError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        match self.step(state, message).await {
            Ok(next) => {
                self.state = next;
                self.log.tick(&self.progress);
                Ok(())
            }
            Err(error) => {
                // Best effort: the server rolls back anyway when the connection closes.
                if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                    warn!(error = %e, "rollback of the seed load failed");
                }
                Err(error)
            }
        }
    }

    /// Records the position and commits, once `SeedEnd` was taken and its totals matched.
    pub async fn finish(self) -> Result<SeedProgress, SeedError> {
        match &self.state {
            State::Ended => {}
            State::Failed => return Err(SeedError::Failed),
            other => return Err(SeedError::Unexpected { got: "finish", expected: other.expects() }),
        }
        if let Some(position) = &self.position {
            let recorded =
                crate::apply::record_first_position(&self.client, position).await.map_err(SeedError::Apply)?;
            if !recorded {
                return Err(SeedError::AlreadySeeded { applied: "(a row written during the load)".into() });
            }
        }
        self.client.batch_execute("COMMIT").await.map_err(pg("commit the load"))?;
        self.log.log(&self.progress, "seed load committed");
        Ok(self.progress)
    }

    pub fn progress(&self) -> SeedProgress {
        self.progress
    }

    async fn step(&mut self, state: State, message: Message) -> Result<State, SeedError> {
        match (state, message) {
            (State::Schema, Message::SeedSchema { sql }) => {
                let sql = std::str::from_utf8(&sql).map_err(|_| SeedError::SchemaNotUtf8)?;
                self.client.batch_execute(sql).await.map_err(pg("create the schema"))?;
                Ok(State::Tables)
            }
            (State::Tables, Message::SeedTable { schema, name, columns }) => {
                self.start_table(&schema, &name, &columns).await.map(State::Copying)
            }
            (State::Copying(mut table), Message::SeedData { bytes }) => {
                self.copy_piece(&mut table, bytes).await?;
                Ok(State::Copying(table))
            }
            (State::Copying(table), Message::SeedTableEnd { rows }) => {
                self.end_table(table, rows).await?;
                Ok(State::Tables)
            }
            (State::Tables, Message::SeedEnd { tables, rows, bytes }) => {
                self.check_totals(tables, rows, bytes)?;
                Ok(State::Ended)
            }
            (state, message) => Err(SeedError::Unexpected { got: message.name(), expected: state.expects() }),
        }
    }

    async fn start_table(&mut self, schema: &str, name: &str, columns: &[String]) -> Result<TableLoad, SeedError> {
        let table = quote_qualified(schema, name);
        let sql = format!("COPY {table} {} FROM STDIN", column_list(columns));
        match self.client.copy_in::<_, Bytes>(&sql).await {
            Ok(sink) => {
                self.progress.tables_total = self.progress.tables_total.max(self.progress.tables_done + 1);
                Ok(TableLoad { table, sink: Box::pin(sink), rows: 0 })
            }
            Err(source) => Err(SeedError::Table { table, what: "start loading", source }),
        }
    }

    async fn copy_piece(&mut self, table: &mut TableLoad, bytes: Bytes) -> Result<(), SeedError> {
        let rows = count_rows(&bytes);
        table.rows += rows;
        self.progress.rows += rows;
        self.progress.bytes += bytes.len() as u64;
        match table.sink.send(bytes).await {
            Ok(()) => Ok(()),
            Err(source) => Err(SeedError::Table { table: table.table.clone(), what: "load", source }),
        }
    }

    /// Ends the table's COPY; the server's row count must be the leader's.
    async fn end_table(&mut self, mut table: TableLoad, announced: u64) -> Result<(), SeedError> {
        let loaded = match table.sink.as_mut().finish().await {
            Ok(loaded) => loaded,
            Err(source) => return Err(SeedError::Table { table: table.table, what: "load", source }),
        };
        if loaded != announced || table.rows != announced {
            let loaded = if loaded != announced { loaded } else { table.rows };
            return Err(SeedError::TableRows { table: table.table, announced, loaded });
        }
        self.progress.tables_done += 1;
        Ok(())
    }

    fn check_totals(&mut self, tables: u32, rows: u64, bytes: u64) -> Result<(), SeedError> {
        let p = self.progress;
        if (tables, rows, bytes) != (p.tables_done, p.rows, p.bytes) {
            return Err(SeedError::Totals {
                announced: totals(tables, rows, bytes),
                loaded: totals(p.tables_done, p.rows, p.bytes),
            });
        }
        self.progress.tables_total = tables;
        Ok(())
    }
}

/// Refuses a database whose walship.progress already names an applied entry.
async fn check_no_progress(client: &Client) -> Result<(), SeedError> {
    let row = client
        .query_opt("SELECT format('%s.%s', term, applied_index) FROM walship.progress", &[])
        .await
        .map_err(pg("read walship.progress"))?;
    match row {
        Some(row) => Err(SeedError::AlreadySeeded { applied: row.try_get(0).map_err(pg("read walship.progress"))? }),
        None => Ok(()),
    }
}

fn totals(tables: u32, rows: u64, bytes: u64) -> String {
    format!("{tables} tables, {rows} rows, {bytes} bytes")
}
