//! The pgoutput messages of an entry, each turned into statements on the open transaction.

use bytes::Bytes;

use super::change::{self, PlanError, TextParam};
use super::error::ApplyError;
use super::pipeline::{Check, Op};
use super::statement;
use super::Applier;
use crate::log::entry::Items;
use crate::lsn::EntryId;
use crate::source::pgoutput::{self, Message, OldTuple, RelIds, Tuple};

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
                    if self.copy.rel_id() == Some(relation.rel_id) {
                        self.flush_copy().await?;
                    }
                    self.tables.relation(&self.client, &mut self.pipeline, entry, &relation, &message).await?;
                }
                Ok(())
            }
            Message::Insert { rel_id, new } => self.insert(entry, rel_id, new).await,
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

    async fn insert(&mut self, entry: EntryId, rel_id: u32, new: Tuple<'_>) -> Result<(), ApplyError> {
        if self.copy.rel_id() != Some(rel_id) {
            self.flush_copy().await?;
            let (meta, statement) = self.tables.copy(&self.client, &mut self.pipeline, entry, rel_id).await?;
            self.copy.start(rel_id, meta, statement);
        }
        self.copy.push_row(entry, new).map_err(|reason| malformed(entry, reason))?;
        if self.copy.is_full() {
            self.flush_copy().await?;
        }
        Ok(())
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
        self.flush_copy().await?;
        let mut params: Vec<TextParam> = Vec::new();
        let meta = &self.tables.get(entry, rel_id)?.meta;
        if let Err(error) = change::plan(meta, payload, old, new, &mut self.shape, &mut params) {
            return Err(match error {
                PlanError::NoKey => ApplyError::Divergence {
                    entry,
                    table: meta.display.clone(),
                    key: String::new(),
                    reason: "the change carries no key to find its row by".into(),
                },
                PlanError::Malformed(reason) => malformed(entry, reason),
            });
        }
        let (meta, statement) =
            self.tables.statement(&self.client, &mut self.pipeline, entry, rel_id, &self.shape).await?;
        let message = payload.slice_ref(item);
        let bytes = self.pipeline.buffer_bytes(payload);
        let check = Check::OneRow { entry, meta, message };
        let op = Op::execute(&self.client, statement, params, check).keeping(bytes);
        self.pipeline.push(op).await
    }

    async fn truncate(&mut self, entry: EntryId, options: u8, rel_ids: RelIds<'_>) -> Result<(), ApplyError> {
        self.flush_copy().await?;
        let mut tables = Vec::with_capacity(rel_ids.len());
        for rel_id in rel_ids {
            tables.push(self.tables.get(entry, rel_id)?.meta.sql_name.as_str());
        }
        let sql = statement::truncate_sql(&tables, options);
        let check = Check::Statement { entry: Some(entry), what: "truncate" };
        self.pipeline.push(Op::simple(&self.client, sql, check)).await
    }

    /// Sends the open COPY batch, if any.
    pub(super) async fn flush_copy(&mut self) -> Result<(), ApplyError> {
        match self.copy.take() {
            Some((statement, data, context)) => {
                let op = Op::copy(&self.client, statement, data, context);
                self.pipeline.push(op).await
            }
            None => Ok(()),
        }
    }
}

fn malformed(entry: EntryId, reason: String) -> ApplyError {
    ApplyError::Malformed { entry, reason }
}
