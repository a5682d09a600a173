//! The pgoutput messages of an entry, each turned into statements on the open transaction,
//! gathered into runs (see `run`).

use bytes::Bytes;

use super::change::{self, PlanError};
use super::check::{Check, Op};
use super::error::ApplyError;
use super::param::TextParam;
use super::run::{Held, KeyClaim, Mode, Run, RunIndex, RunKind, BULK_MIN_ROWS, MAX_OPEN_RUNS};
use super::statement;
use super::Applier;
use crate::log::entry::Items;
use crate::lsn::EntryId;
use crate::pgoutput::{self, Message, OldTuple, RelIds, Tuple};

impl Applier {
    /// Applies the items of one record; `payload` is the buffer they point into.
    pub(super) async fn apply_items(
        &mut self,
        entry: EntryId,
        payload: &Bytes,
        items: Items<'_>,
    ) -> Result<(), ApplyError> {
        for item in items {
            let item = item.map_err(|e| malformed(entry, e.to_string()))?;
            // Every entry carries the Relation messages it uses: one already mapped, byte for
            // byte, needs no decoding.
            if let [b'R', a, b, c, d, ..] = *item {
                if self.tables.is_current(u32::from_be_bytes([a, b, c, d]), item) {
                    continue;
                }
            }
            let message = pgoutput::decode(item).map_err(|e| malformed(entry, e.to_string()))?;
            self.apply_message(entry, payload, item, message).await?;
        }
        Ok(())
    }

    async fn apply_message(
        &mut self,
        entry: EntryId,
        payload: &Bytes,
        item: &[u8],
        message: Message<'_>,
    ) -> Result<(), ApplyError> {
        match message {
            Message::Relation(relation) => {
                let message = payload.slice_ref(item);
                if !self.tables.is_current(relation.rel_id, &message) {
                    self.end_runs().await?;
                    self.tables
                        .relation(&self.client, self.pipeline.settle_copies(), entry, &relation, &message)
                        .await?;
                }
                Ok(())
            }
            Message::Insert { rel_id, new } => self.insert(entry, payload, item, rel_id, new).await,
            Message::Update { rel_id, old, new } => self.change(entry, payload, item, rel_id, old, Some(new)).await,
            Message::Delete { rel_id, old } => self.change(entry, payload, item, rel_id, Some(old), None).await,
            Message::Truncate { options, rel_ids } => self.truncate(entry, options, rel_ids).await,
            // Types are the follower's own; origins and messages change no table.
            Message::Type { .. } | Message::Origin { .. } | Message::Message { .. } => Ok(()),
            Message::Begin { .. } | Message::Commit { .. } => {
                Err(malformed(entry, "a Begin or Commit message among its items".into()))
            }
        }
    }

    async fn insert(
        &mut self,
        entry: EntryId,
        payload: &Bytes,
        item: &[u8],
        rel_id: u32,
        new: Tuple<'_>,
    ) -> Result<(), ApplyError> {
        let run_at = self.run_for(entry, rel_id, RunKind::Insert).await?;
        let run = &mut self.runs[run_at];
        if run.mode == Mode::Copy {
            run.copy.push_row(entry, new).map_err(|reason| malformed(entry, reason))?;
            if run.copy.is_full() {
                self.flush_copy(run_at).await?;
            }
            return Ok(());
        }
        let meta = &self.tables.get(entry, rel_id)?.meta;
        let params = change::insert_params(meta, payload, new).map_err(|reason| malformed(entry, reason))?;
        self.add_row(run_at, Held { entry, payload: Some(payload.clone()), message: payload.slice_ref(item), params })
            .await
    }

    /// An update (`new` given) or a delete.
    async fn change(
        &mut self,
        entry: EntryId,
        payload: &Bytes,
        item: &[u8],
        rel_id: u32,
        old: Option<OldTuple<'_>>,
        new: Option<Tuple<'_>>,
    ) -> Result<(), ApplyError> {
        let mut params: Vec<TextParam> = Vec::new();
        let meta = &self.tables.get(entry, rel_id)?.meta;
        if let Err(error) = change::plan(meta, payload, old, new, &mut self.shape, &mut params) {
            let error = match error {
                PlanError::NoKey => ApplyError::Divergence {
                    entry,
                    table: meta.display.clone(),
                    key: String::new(),
                    reason: "the change carries no key to find its row by".into(),
                },
                PlanError::Malformed(reason) => return Err(malformed(entry, reason)),
            };
            // The changes before this one, held back or in flight, fail first if they do.
            self.end_runs().await?;
            self.pipeline.drain().await?;
            return Err(error);
        }
        let kind = RunKind::Change { shape: self.shape.clone() };
        let mut run_at = self.run_for(entry, rel_id, kind).await?;
        let row = Held { entry, payload: Some(payload.clone()), message: payload.slice_ref(item), params };
        match self.runs[run_at].claim_key(&row.params) {
            KeyClaim::Claimed => {}
            KeyClaim::Existing(earlier) if self.runs[run_at].collapsible => {
                // Only the last update of a key counts; its row now stands for both, so an
                // error can no longer name the earlier one.
                self.txn.reordered();
                self.replace_row(run_at, earlier, row)?;
                return self.flush_set_if_full(run_at).await;
            }
            KeyClaim::Existing(_) | KeyClaim::Clash => {
                let run = self.runs.remove(run_at);
                let (kind, ordered, collapsible) = (run.kind.clone(), run.ordered, run.collapsible);
                self.send_run(run).await?;
                run_at = self.open_run(Run::new(rel_id, kind, ordered, collapsible)).await?;
                // The run is new: the key is claimed for the row added below.
                self.runs[run_at].claim_key(&row.params);
            }
        }
        self.add_row(run_at, row).await
    }

    /// Replaces the run's row at `earlier` with a later update of the same key.
    fn replace_row(&mut self, run_at: RunIndex, earlier: usize, row: Held) -> Result<(), ApplyError> {
        let run = &mut self.runs[run_at];
        let entry = row.entry;
        match run.mode {
            Mode::Holding => match run.held.get_mut(earlier) {
                Some(held) => *held = row.detach(),
                None => return Err(malformed(entry, format!("no held row {earlier} to replace"))),
            },
            Mode::Set => {
                run.set.replace(earlier, entry, row.detach().params).map_err(|reason| malformed(entry, reason))?
            }
            Mode::RowByRow | Mode::Copy => {
                return Err(malformed(entry, "a replaced row in a run that keeps none".into()))
            }
        }
        Ok(())
    }

    /// Sends the run's set-based batch if it grew full (a replaced row may be larger).
    async fn flush_set_if_full(&mut self, run_at: RunIndex) -> Result<(), ApplyError> {
        if self.runs[run_at].mode == Mode::Set && self.runs[run_at].set.is_full() {
            self.flush_set(run_at).await?;
        }
        Ok(())
    }

    /// The position of the table's open run of this kind: the table's run of another kind
    /// or shape ended, and every other run ended when order across tables must be kept.
    async fn run_for(&mut self, entry: EntryId, rel_id: u32, kind: RunKind) -> Result<RunIndex, ApplyError> {
        let meta = self.tables.get(entry, rel_id)?.meta.clone();
        if meta.ordered || self.is_strict(entry) || self.runs.others_ordered(rel_id) {
            self.end_runs_but(rel_id).await?;
        }
        if let Some(run_at) = self.runs.of_table(rel_id) {
            if self.runs[run_at].kind == kind {
                return Ok(run_at);
            }
            let run = self.runs.remove(run_at);
            self.send_run(run).await?;
        }
        // A run opened in strict order never collapses, even past the strict entries: the
        // row it would replace may be the change strict replay is looking for.
        let collapsible = match &kind {
            RunKind::Change { shape } => {
                shape.first() == Some(&statement::UPDATE)
                    && !meta.ordered
                    && !self.is_strict(entry)
                    && statement::set_statement(&meta, shape).is_some()
            }
            RunKind::Insert => false,
        };
        self.open_run(Run::new(rel_id, kind, meta.ordered, collapsible)).await
    }

    /// Adds a run after the open ones; returns its position.
    async fn open_run(&mut self, run: Run) -> Result<RunIndex, ApplyError> {
        if self.runs.len() >= MAX_OPEN_RUNS {
            self.end_runs().await?;
        }
        // Rows of this run may now go out before those of runs opened earlier.
        if !self.runs.is_empty() {
            self.txn.reordered();
        }
        Ok(self.runs.push(run))
    }

    /// Adds a row to the run at `run_at`, as its mode says.
    async fn add_row(&mut self, run_at: RunIndex, row: Held) -> Result<(), ApplyError> {
        let run = &mut self.runs[run_at];
        match run.mode {
            Mode::RowByRow => {
                let (rel_id, kind) = (run.rel_id, run.kind.clone());
                self.send_row(rel_id, &kind, row).await
            }
            Mode::Holding => {
                run.held.push(row.detach());
                if run.held.len() >= BULK_MIN_ROWS {
                    self.go_bulk(run_at).await?;
                }
                Ok(())
            }
            Mode::Set => {
                let row = row.detach();
                run.set.push(row.entry, row.params).map_err(|reason| malformed(row.entry, reason))?;
                if run.set.is_full() {
                    self.flush_set(run_at).await?;
                }
                Ok(())
            }
            Mode::Copy => Err(malformed(row.entry, "a held row in a COPY run".into())),
        }
    }

    /// The run at `run_at` is long enough for bulk: moves its held rows into a COPY or set-based
    /// batch, or sends them row by row when its shape cannot go set-based or replay is strict.
    async fn go_bulk(&mut self, run_at: RunIndex) -> Result<(), ApplyError> {
        let run = &self.runs[run_at];
        let Some(first) = run.held.first().map(|row| row.entry) else { return Ok(()) };
        let (rel_id, kind) = (run.rel_id, run.kind.clone());
        // A trigger that fires on the replica may look at the table itself: its rows go in
        // order, one statement each, not as one COPY or set-based statement.
        let set = match kind {
            _ if run.ordered => None,
            RunKind::Change { .. } if self.is_strict(first) => None,
            RunKind::Insert => {
                let (meta, statement) =
                    self.tables.copy(&self.client, self.pipeline.settle_copies(), first, rel_id).await?;
                let run = &mut self.runs[run_at];
                run.copy.start(rel_id, meta, statement);
                for row in std::mem::take(&mut run.held) {
                    run.copy.push_params(row.entry, &row.params).map_err(|reason| malformed(row.entry, reason))?;
                }
                run.mode = Mode::Copy;
                return Ok(());
            }
            RunKind::Change { shape } => {
                self.tables.set_statement(&self.client, self.pipeline.settle_copies(), first, rel_id, &shape).await?
            }
        };
        let run = &mut self.runs[run_at];
        let Some((meta, statement, delimiters)) = set else {
            run.mode = Mode::RowByRow;
            let (rel_id, kind, held) = (run.rel_id, run.kind.clone(), std::mem::take(&mut run.held));
            for row in held {
                self.send_row(rel_id, &kind, row).await?;
            }
            return Ok(());
        };
        run.set.start(meta, statement, delimiters);
        for row in std::mem::take(&mut run.held) {
            run.set.push(row.entry, row.params).map_err(|reason| malformed(row.entry, reason))?;
        }
        run.mode = Mode::Set;
        self.txn.reordered();
        Ok(())
    }

    /// Sends every open run, in the order they were opened.
    pub(super) async fn end_runs(&mut self) -> Result<(), ApplyError> {
        for run in self.runs.take_all() {
            self.send_run(run).await?;
        }
        Ok(())
    }

    /// Sends every open run but the table's.
    async fn end_runs_but(&mut self, rel_id: u32) -> Result<(), ApplyError> {
        for run in self.runs.take_all_but(rel_id) {
            self.send_run(run).await?;
        }
        Ok(())
    }

    /// Sends a run's rows, wherever they are.
    async fn send_run(&mut self, mut run: Run) -> Result<(), ApplyError> {
        for row in std::mem::take(&mut run.held) {
            self.send_row(run.rel_id, &run.kind, row).await?;
        }
        if let Some((statement, data, context)) = run.copy.take() {
            self.push_copy(statement, data, context).await?;
        }
        if let Some((statement, params, context)) = run.set.take() {
            self.push_set(statement, params, context).await?;
        }
        Ok(())
    }

    /// Sends one row of a run alone: a one-row insert, update or delete.
    async fn send_row(&mut self, rel_id: u32, kind: &RunKind, row: Held) -> Result<(), ApplyError> {
        let bytes = match &row.payload {
            Some(payload) => self.pipeline.buffer_bytes(payload),
            None => row.own_bytes(),
        };
        let Held { entry, message, params, .. } = row;
        self.rows_sent.row += 1;
        let op = match kind {
            RunKind::Insert => {
                let (meta, statement) =
                    self.tables.insert(&self.client, self.pipeline.settle_copies(), entry, rel_id).await?;
                Op::execute(&self.client, statement, params, Check::Insert { entry, meta })
            }
            RunKind::Change { shape } => {
                let (meta, statement) =
                    self.tables.statement(&self.client, self.pipeline.settle_copies(), entry, rel_id, shape).await?;
                Op::execute(&self.client, statement, params, Check::OneRow { entry, meta, message })
            }
        };
        self.pipeline.push(op.keeping(bytes)).await
    }

    async fn truncate(&mut self, entry: EntryId, options: u8, rel_ids: RelIds<'_>) -> Result<(), ApplyError> {
        self.end_runs().await?;
        let mut tables = Vec::with_capacity(rel_ids.len());
        for rel_id in rel_ids {
            tables.push(self.tables.get(entry, rel_id)?.meta.sql_name.as_str());
        }
        let sql = statement::truncate_sql(&tables, options);
        let check = Check::Statement { entry: Some(entry), what: "truncate" };
        self.pipeline.push(Op::simple(&self.client, sql, check)).await
    }

    /// Sends the COPY batch of the run at `run_at`, which stays open.
    async fn flush_copy(&mut self, run_at: RunIndex) -> Result<(), ApplyError> {
        let Some((statement, data, context)) = self.runs[run_at].copy.take() else { return Ok(()) };
        self.push_copy(statement, data, context).await
    }

    async fn push_copy(
        &mut self,
        statement: tokio_postgres::Statement,
        data: Bytes,
        context: super::copy::CopyContext,
    ) -> Result<(), ApplyError> {
        self.rows_sent.copy += context.rows;
        self.pipeline.push(Op::copy(&self.client, statement, data, Check::Copy(context))).await
    }

    /// Sends the set-based batch of the run at `run_at`, which stays open.
    async fn flush_set(&mut self, run_at: RunIndex) -> Result<(), ApplyError> {
        let run = &mut self.runs[run_at];
        let Some((statement, params, context)) = run.set.take() else { return Ok(()) };
        run.clear_keys();
        self.push_set(statement, params, context).await
    }

    async fn push_set(
        &mut self,
        statement: tokio_postgres::Statement,
        params: Vec<TextParam>,
        context: super::set::SetContext,
    ) -> Result<(), ApplyError> {
        self.rows_sent.set += context.rows;
        let bytes = params.iter().filter_map(|p| p.0.as_ref()).map(Bytes::len).sum();
        let op = Op::execute(&self.client, statement, params, Check::Set(context)).keeping(bytes);
        self.pipeline.push(op).await
    }
}

fn malformed(entry: EntryId, reason: String) -> ApplyError {
    ApplyError::Malformed { entry, reason }
}
