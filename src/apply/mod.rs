//! Follower replay: log entries into the local PostgreSQL, exactly once.
//!
//! # Invariants
//!
//! - Entries are applied in strict log order: each record belongs to the entry after the last
//!   one applied (or to the entry whose chunks are being applied). A record of an entry at or
//!   below the applied one is refused, never applied twice.
//! - Every leader transaction is atomic on the follower. The applier opens a database
//!   transaction at the first record after a commit and keeps it open across entries until
//!   [`Applier::commit`], which is only allowed between entries; several leader transactions
//!   may so commit together, and a chunked entry is applied chunk by chunk in one transaction.
//!   The transaction's states (idle, open, committing) and their transitions are `txn`'s.
//! - Progress (`walship.progress`, see `progress`) is written in the same database
//!   transaction as the changes it covers, so after a crash at any point the database holds
//!   exactly the entries up to the one it names. `applied` is reported only after COMMIT
//!   returned, with the server's default `synchronous_commit`.
//! - Any error rolls the open transaction back: the database is left at the last commit, and
//!   the caller resumes after [`Applier::applied`].
//! - Divergence (a row to change that is missing, a constraint violation, a missing table or
//!   column) is never skipped: it stops replay with [`ApplyError::Divergence`].
//!
//! # The apply session
//!
//! Like PostgreSQL's own apply worker: `session_replication_role = replica` (user triggers
//! and foreign-key checks do not fire again), an empty `search_path`, writable even when the
//! database is fenced against clients (see [`Applier::set_read_only`]). Setting
//! `session_replication_role` takes a superuser (or, from PostgreSQL 15, `GRANT SET ON
//! PARAMETER session_replication_role`). Tables are mapped by name, values travel as text
//! (see `table`, `statement`). Consecutive changes of one kind to one table form runs
//! (`run`): a short run goes as one-row prepared statements, pipelined (`pipeline`); a long
//! one in bulk, inserts by COPY (`copy`), updates and deletes as set-based statements (`set`)
//! whose row counts are checked; runs of different tables are open side by side, so their
//! changes may reach the database out of log order (each table's stay in order). A
//! set-based statement that fails or counts wrong cannot say which of its rows is at fault,
//! and a failure out of log order may not be the first: the caller then applies the same
//! records again strictly in order (see [`ApplyError::Batched`]), which stops at the first
//! change that fails, if any, naming it.
//!
//! Values are read with the follower's input functions, so the leader's text output must be
//! unambiguous: the replication connection should use `DateStyle = ISO`, `IntervalStyle =
//! postgres` and `extra_float_digits = 3`, as PostgreSQL's own subscriber asks of its
//! publisher; `money` needs the same `lc_monetary` on both sides.
//!
//! # Layout
//!
//! From the leaves up, each module importing only those before it (and the leaves `error`,
//! `progress` and `migrate`), so that no two import each other: `meta` (a follower
//! table as replay sees it) and `param` (a value sent as text); `statement` (the SQL text of
//! a shape); `change` (an update or delete planned as a shape and parameters); `copy` and
//! `set` (bulk batches); `run` (changes gathered per table); `pipeline` (statements in flight,
//! knowing nothing of replay); `check` (their results judged into an [`ApplyError`]); `table`
//! (the mapping of leader relations, and prepared statements); `txn` (the transaction's
//! state). [`Applier`] (here and in `replay`) drives them record by record, and `scheduler`
//! decides when to connect, apply and commit.

mod change;
mod check;
mod copy;
mod error;
mod meta;
mod migrate;
mod param;
mod pipeline;
mod progress;
mod replay;
mod run;
pub mod scheduler;
mod set;
mod statement;
mod table;
mod txn;

use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use tracing::{debug, warn};

use crate::log::entry::{self, EntryKind};
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index};
use crate::sequences::{Shipment, SEQUENCES_PREFIX};
use check::{Check, Op, Pipeline};
use error::pg;
use run::Runs;
use table::Tables;
use txn::Txn;

pub use copy::COPY_BATCH_BYTES;
pub use error::{ApplyError, KEY_DISPLAY_CHARS};
pub use pipeline::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};
pub use progress::AppliedPosition;
pub use run::{BULK_MIN_ROWS, MAX_OPEN_RUNS};
pub use scheduler::ReplayError;
pub use set::SET_BATCH_ROWS;
pub use table::MAX_SHAPES_PER_TABLE;

/// Rows sent to PostgreSQL by replay, by `method`: `row` (one statement each), `copy`,
/// `set` (set-based updates and deletes). Prometheus counter.
pub const REPLAY_ROWS_TOTAL: &str = "walship_replay_rows_total";

/// Rows sent to PostgreSQL by each method, counted as they are sent (a rolled-back
/// transaction's rows count again when they are applied again).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowsSent {
    pub row: u64,
    pub copy: u64,
    pub set: u64,
}

/// Settings of the apply session, in the order they are set. Generic plans suit every apply
/// statement (a row found by its key, or a batch of keys joined with the table through its
/// unique index) and save planning at each execution; a custom plan for a large batch could
/// scan the whole table instead.
/// Sets a shipped sequence (see [`crate::sequences`]); no row when the sequence is missing.
const SETVAL: &str = "SELECT pg_catalog.setval(c.oid, $3::pg_catalog.int8, true) FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'";

pub(crate) const SESSION_SETUP: &str = "SET session_replication_role = replica; \
     SET plan_cache_mode = force_generic_plan; \
     SET default_transaction_read_only = off; \
     SET default_transaction_isolation = 'read committed'; \
     SET search_path = ''; \
     SET statement_timeout = 0; \
     SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

/// Replays log records into one database. See the module docs.
pub struct Applier {
    client: Arc<Client>,
    begin: Statement,
    commit: Statement,
    progress: Statement,
    /// `setval` of a sequence shipped by the leader, by schema and name; a sequence this
    /// database lacks is skipped.
    setval: Statement,
    tables: Tables,
    pipeline: Pipeline,
    /// The changes being gathered per table, and their bulk batches (see `run`).
    runs: Runs,
    /// Entries up to this one are replayed strictly in log order, none set-based (see
    /// [`ApplyError::Batched`]).
    strict_through: Option<Index>,
    /// The open database transaction, if one is: its entries, whether it may commit, what an
    /// error in it can say (see `txn` for the states and their transitions).
    txn: Txn,
    /// Scratch for the shape of the current update or delete.
    shape: Vec<u8>,
    rows_sent: RowsSent,
    /// What of `rows_sent` the Prometheus counters have.
    rows_published: RowsSent,
    /// The last entry committed to the database.
    committed: Option<AppliedPosition>,
}

impl Applier {
    /// Connects (tokio-postgres), runs pending migrations, sets the apply session up.
    pub async fn connect(pg_config: &tokio_postgres::Config) -> Result<Applier, ApplyError> {
        let mut client = crate::sql::connect(pg_config).await.map_err(pg("connect"))?;
        client.batch_execute(SESSION_SETUP).await.map_err(pg("set the apply session up"))?;
        migrate::run(&mut client).await?;
        let begin = client.prepare("BEGIN").await.map_err(pg("prepare BEGIN"))?;
        let commit = client.prepare("COMMIT").await.map_err(pg("prepare COMMIT"))?;
        let progress = client.prepare(progress::UPSERT).await.map_err(pg("prepare the progress update"))?;
        let setval =
            client.prepare_typed(SETVAL, &[Type::TEXT, Type::TEXT, Type::TEXT]).await.map_err(pg("prepare setval"))?;
        let mut applier = Applier {
            client: Arc::new(client),
            begin,
            commit,
            progress,
            setval,
            tables: Tables::default(),
            pipeline: Pipeline::default(),
            runs: Runs::default(),
            strict_through: None,
            txn: Txn::Idle,
            rows_sent: RowsSent::default(),
            rows_published: RowsSent::default(),
            shape: Vec::new(),
            committed: None,
        };
        applier.committed = applier.read_progress().await?;
        debug!(applied = ?applier.committed.map(|p| p.id), "applier connected");
        Ok(applier)
    }

    /// The last entry whose effects are committed in this database (from walship.progress).
    pub async fn applied(&mut self) -> Result<Option<AppliedPosition>, ApplyError> {
        if self.txn.is_idle() {
            self.committed = self.read_progress().await?;
        }
        Ok(self.committed)
    }

    /// Replays the changes of entries up to `through` strictly in log order and never
    /// set-based: after an [`ApplyError::Batched`], so that applying the same records again
    /// stops at the first change that fails, naming it.
    pub fn strict_through(&mut self, through: Option<Index>) {
        self.strict_through = through;
    }

    /// The entry's changes are replayed strictly in log order; the caller should then commit
    /// after each entry, so that a failure at commit names its entry.
    pub fn is_strict(&self, entry: EntryId) -> bool {
        self.strict_through.is_some_and(|through| entry.index <= through)
    }

    /// Rows sent so far, by method.
    pub fn rows_sent(&self) -> RowsSent {
        self.rows_sent
    }

    /// A database transaction is open: records were applied since the last commit.
    pub fn in_transaction(&self) -> bool {
        !self.txn.is_idle()
    }

    /// Applies one log record (a chunk or the closing record of an entry), opening a database
    /// transaction if none is open. Entries other than transactions (heartbeats, messages)
    /// only advance progress. On error the open transaction is rolled back.
    pub async fn apply_record(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.check_order(record.id)?;
        match self.apply_in_order(record).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.abort(error).await),
        }
    }

    /// Commits the open database transaction with the progress of its last entry; returns
    /// what is now applied. Only valid between entries.
    pub async fn commit(&mut self) -> Result<Option<AppliedPosition>, ApplyError> {
        if let Some(open) = self.txn.inside_entry() {
            return Err(ApplyError::InsideEntry(open));
        }
        if self.txn.is_idle() {
            return Ok(self.committed);
        }
        match self.commit_open().await {
            Ok(()) => {
                let staged = self.txn.end().and_then(|ended| ended.staged);
                self.committed = staged.or(self.committed);
                self.publish_rows_sent();
                Ok(self.committed)
            }
            Err(error) => Err(self.abort(error).await),
        }
    }

    /// Records that this database holds every entry through `position`, whatever progress it
    /// recorded before. For a former leader about to follow: its database wrote the entries
    /// of its own terms, and replayed those before them.
    pub async fn record_source_through(&mut self, position: AppliedPosition) -> Result<(), ApplyError> {
        if !self.txn.is_idle() {
            return Err(ApplyError::TransactionOpen("record_source_through"));
        }
        let params = progress::upsert_params(&position, None);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params[..4].iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        self.client.execute(progress::OVERWRITE, &params).await.map_err(pg("record walship.progress"))?;
        self.committed = Some(position);
        Ok(())
    }

    /// Fences the database against client writes ([`crate::fence`]: triggers only a
    /// superuser can remove; the apply session, in replica mode, still writes), or lifts the
    /// fence. Covers the tables that exist now: call it again after replaying DDL.
    pub async fn set_read_only(&mut self, on: bool) -> Result<(), ApplyError> {
        if !self.txn.is_idle() {
            return Err(ApplyError::TransactionOpen("set_read_only"));
        }
        let fenced =
            if on { crate::fence::fence(&self.client).await } else { crate::fence::unfence(&self.client).await };
        fenced.map_err(ApplyError::Fence)
    }

    fn publish_rows_sent(&mut self) {
        let (now, before) = (self.rows_sent, self.rows_published);
        for (method, delta) in
            [("row", now.row - before.row), ("copy", now.copy - before.copy), ("set", now.set - before.set)]
        {
            if delta > 0 {
                metrics::counter!(REPLAY_ROWS_TOTAL, "method" => method).increment(delta);
            }
        }
        self.rows_published = now;
    }

    async fn read_progress(&mut self) -> Result<Option<AppliedPosition>, ApplyError> {
        let row = self.client.query_opt(progress::SELECT, &[]).await.map_err(pg("read walship.progress"))?;
        row.map(|row| progress::from_row(&row)).transpose().map_err(pg("read walship.progress"))
    }

    /// Refuses a record that is not the next one in log order.
    fn check_order(&self, id: EntryId) -> Result<(), ApplyError> {
        if let Some(open) = self.txn.inside_entry() {
            if open == id {
                return Ok(());
            }
            let expected = format!("the rest of entry {open}");
            return Err(ApplyError::OutOfOrder { expected, got: id });
        }
        if let Some(committed) = self.committed.filter(|c| id.index <= c.id.index) {
            return Err(ApplyError::AlreadyApplied { record: id, applied: committed.id });
        }
        let Some(last) = self.txn.staged().or(self.committed) else {
            return Ok(());
        };
        if id.index != last.id.index.next() || id.term < last.id.term {
            let expected = format!("index {} in term {} or later", last.id.index.next(), last.id.term);
            return Err(ApplyError::OutOfOrder { expected, got: id });
        }
        Ok(())
    }

    async fn apply_in_order(&mut self, record: &Record) -> Result<(), ApplyError> {
        let id = record.id;
        if self.txn.is_idle() {
            let check = Check::Statement { entry: None, what: "begin" };
            let op = Op::execute(&self.client, self.begin.clone(), Vec::<String>::new(), check);
            self.pipeline.push(op).await?;
        }
        let chunk = record.kind == RecordKind::Chunk;
        self.txn.record(id, chunk);
        if chunk {
            return self.apply_items(id, &record.payload, entry::chunk_items(&record.payload)).await;
        }
        let (header, items) = entry::decode_entry(&record.payload)
            .map_err(|e| ApplyError::Malformed { entry: id, reason: e.to_string() })?;
        match header.kind {
            EntryKind::Transaction => self.apply_items(id, &record.payload, items).await?,
            EntryKind::Message => self.apply_standalone_message(id, items).await?,
            EntryKind::Heartbeat => {}
        }
        self.txn.entry_applied(AppliedPosition { id, end_lsn: header.end_lsn, commit_time: header.commit_time });
        Ok(())
    }

    /// A standalone logical message: walship's sequence shipments are applied (`setval`, which
    /// PostgreSQL never rolls back: applying one twice is harmless); others are only logged.
    async fn apply_standalone_message(&mut self, id: EntryId, items: entry::Items<'_>) -> Result<(), ApplyError> {
        for item in items {
            let item = item.map_err(|e| ApplyError::Malformed { entry: id, reason: e.to_string() })?;
            let message = crate::pgoutput::decode(item)
                .map_err(|e| ApplyError::Malformed { entry: id, reason: e.to_string() })?;
            let crate::pgoutput::Message::Message { prefix: SEQUENCES_PREFIX, content, .. } = message else { continue };
            let shipment = Shipment::decode(content)
                .map_err(|e| ApplyError::Malformed { entry: id, reason: format!("sequences: {e}") })?;
            for seq in shipment.sequences {
                let params = vec![seq.schema, seq.name, seq.value.to_string()];
                let check = Check::Statement { entry: Some(id), what: "set a sequence" };
                let op = Op::execute(&self.client, self.setval.clone(), params, check);
                self.pipeline.push(op).await?;
            }
        }
        Ok(())
    }

    async fn commit_open(&mut self) -> Result<(), ApplyError> {
        self.end_runs().await?;
        let staged = self.txn.staged();
        let entry = staged.map(|s| s.id);
        if let Some(position) = &staged {
            let expected = self.committed.map(|c| c.id);
            let params = progress::upsert_params(position, expected);
            let check = Check::Progress { expected };
            let op = Op::execute(&self.client, self.progress.clone(), params, check);
            self.pipeline.push(op).await?;
        }
        // Every result is checked before COMMIT is sent: a wrong row count fails no statement
        // on the server, and must still keep the transaction from committing.
        self.pipeline.drain().await?;
        let check = Check::Statement { entry, what: "commit" };
        let op = Op::execute(&self.client, self.commit.clone(), Vec::<String>::new(), check);
        self.txn.commit_sent();
        self.pipeline.push(op).await?;
        self.pipeline.drain().await
    }

    /// Rolls back after `error`, returning the error that caused it: an earlier statement
    /// still in flight may have failed first.
    async fn abort(&mut self, error: ApplyError) -> ApplyError {
        let error = match self.pipeline.drain().await {
            Err(first) => first,
            Ok(()) => error,
        };
        let error = self.in_log_order(error);
        self.pipeline.clear();
        self.runs.clear();
        self.tables.clear();
        if self.txn.end().is_some() {
            if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                warn!(error = %e, "rollback of the apply transaction failed");
            }
        }
        error
    }

    /// An error of a change in a transaction whose changes went out of log order or in
    /// batches, or failed at the commit of several entries, says neither which change failed
    /// first nor which one: it becomes [`ApplyError::Batched`], which asks for the same
    /// entries again in strict order. Errors that are not the data's (a lost connection, a
    /// cancel) stay as they are.
    fn in_log_order(&self, error: ApplyError) -> ApplyError {
        let Some(open) = self.txn.open() else { return error };
        let (first, last) = (open.first, open.last);
        let at_commit = self.txn.is_committing() && first != last;
        if !(open.reordered || at_commit) || self.is_strict(last) {
            return error;
        }
        let (table, reason) = match &error {
            ApplyError::Batched { table, reason, .. } => (table.clone(), reason.clone()),
            ApplyError::Divergence { table, .. } => (table.clone(), error.to_string()),
            // Not a lost connection, a cancel or a deadlock: replay in strict order would meet
            // it again at one change.
            ApplyError::Change { .. } if error.class() != crate::error::ErrorClass::Retry => {
                (String::new(), error.to_string())
            }
            _ => return error,
        };
        ApplyError::Batched { first, last, table, reason }
    }
}

/// Runs walship's pending migrations, as [`Applier::connect`] does; for the snapshot loader
/// (`crate::seed`), which prepares an empty database before the first applier connects.
pub(crate) async fn run_migrations(client: &mut Client) -> Result<(), ApplyError> {
    migrate::run(client).await.map(drop)
}

/// Records `position` as applied in the caller's open transaction, as [`Applier::commit`]
/// does, only when `walship.progress` is still empty; returns whether it was recorded. For the
/// snapshot loader (`crate::seed`): the seed's position, committed with the seeded data.
pub(crate) async fn record_first_position(client: &Client, position: &AppliedPosition) -> Result<bool, ApplyError> {
    let params = progress::upsert_params(position, None);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let rows = client.execute(progress::UPSERT, &params).await.map_err(pg("record the seed position"))?;
    Ok(rows == 1)
}

#[cfg(test)]
mod tests;
