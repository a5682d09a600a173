//! The rows of a set-based update or delete, sent as one array literal per parameter (see
//! `statement` for the statement that reads them).
//!
//! A batch holds rows of distinct keys only: with the follower's unique index that makes the
//! statement touch exactly one row per row of the batch when the follower agrees with the
//! leader, which the row count checks. A later update of a key already in the batch replaces
//! that row's values (see `run`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_postgres::Statement;

use super::copy::COPY_BATCH_BYTES;
use super::meta::TableMeta;
use super::param::TextParam;
use crate::lsn::EntryId;

/// Most rows in one set-based statement.
pub const SET_BATCH_ROWS: usize = 10_000;

/// What is needed to check a set-based statement's result and name its entries.
#[derive(Debug)]
pub(super) struct SetContext {
    pub meta: Arc<TableMeta>,
    pub rows: u64,
    pub first: EntryId,
    pub last: EntryId,
}

#[derive(Default)]
pub(super) struct SetBatch {
    /// The table, statement and element delimiters, while a run goes set-based.
    target: Option<(Arc<TableMeta>, Statement, Vec<u8>)>,
    /// Each row's parameters, copied out of their records (see `run::Held::detach`).
    rows: Vec<Vec<TextParam>>,
    bytes: usize,
    entries: Option<(EntryId, EntryId)>,
}

impl SetBatch {
    /// Opens batches of this statement, whose parameters have these delimiters.
    pub fn start(&mut self, meta: Arc<TableMeta>, statement: Statement, delimiters: Vec<u8>) {
        self.clear();
        self.target = Some((meta, statement, delimiters));
    }

    /// Appends one row's parameters (as many as the statement has), which must not point
    /// into a record: the batch may outlive it.
    pub fn push(&mut self, entry: EntryId, params: Vec<TextParam>) -> Result<(), String> {
        self.check(&params)?;
        self.bytes += row_bytes(&params);
        self.rows.push(params);
        self.include(entry);
        Ok(())
    }

    /// Replaces the row at `at` (a row of the same key) with a later one.
    pub fn replace(&mut self, at: usize, entry: EntryId, params: Vec<TextParam>) -> Result<(), String> {
        self.check(&params)?;
        let Some(row) = self.rows.get_mut(at) else {
            return Err(format!("no row {at} in a set-based batch of {}", self.rows.len()));
        };
        self.bytes += row_bytes(&params);
        self.bytes -= row_bytes(row);
        *row = params;
        self.include(entry);
        Ok(())
    }

    /// Widens the batch's range of entries to `entry` (rows replaced while held back may
    /// come in out of entry order).
    fn include(&mut self, entry: EntryId) {
        self.entries = Some(match self.entries {
            None => (entry, entry),
            Some((first, last)) => (
                if entry.index < first.index { entry } else { first },
                if entry.index > last.index { entry } else { last },
            ),
        });
    }

    /// The parameters of the row at `at`.
    pub fn row(&self, at: usize) -> Option<&[TextParam]> {
        self.rows.get(at).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_full(&self) -> bool {
        self.bytes >= COPY_BATCH_BYTES || self.rows.len() >= SET_BATCH_ROWS
    }

    /// The statement, its array parameters and context, if the batch holds rows; the batch
    /// stays open for more rows of the same statement.
    pub fn take(&mut self) -> Option<(Statement, Vec<TextParam>, SetContext)> {
        let (meta, statement, delimiters) = self.target.as_ref()?;
        let (first, last) = self.entries.take()?;
        let mut arrays: Vec<BytesMut> =
            delimiters.iter().map(|_| BytesMut::with_capacity(self.bytes / delimiters.len().max(1) + 16)).collect();
        for (n, row) in self.rows.iter().enumerate() {
            for ((array, param), &delimiter) in arrays.iter_mut().zip(row).zip(delimiters) {
                array.extend_from_slice(if n == 0 { b"{" } else { std::slice::from_ref(&delimiter) });
                match &param.0 {
                    Some(text) => push_quoted(array, text),
                    None => array.extend_from_slice(b"NULL"),
                }
            }
        }
        let params = arrays
            .into_iter()
            .map(|mut array| {
                array.extend_from_slice(b"}");
                TextParam(Some(array.freeze()))
            })
            .collect();
        let context = SetContext { meta: meta.clone(), rows: self.rows.len() as u64, first, last };
        self.rows.clear();
        self.bytes = 0;
        Some((statement.clone(), params, context))
    }

    pub fn clear(&mut self) {
        self.target = None;
        self.rows.clear();
        self.bytes = 0;
        self.entries = None;
    }

    fn check(&self, params: &[TextParam]) -> Result<(), String> {
        match &self.target {
            None => Err("a set-based change without its statement".into()),
            Some((_, _, delimiters)) if delimiters.len() != params.len() => {
                Err(format!("{} values for a statement of {} parameters", params.len(), delimiters.len()))
            }
            Some(_) => Ok(()),
        }
    }
}

/// About what a row adds to the arrays: its values, quotes and delimiters.
fn row_bytes(params: &[TextParam]) -> usize {
    params.iter().map(|p| p.0.as_ref().map_or(4, |b| b.len() + 3)).sum()
}

/// Appends `value` as a double-quoted array element: backslash and double quote escaped.
fn push_quoted(array: &mut BytesMut, value: &Bytes) {
    array.extend_from_slice(b"\"");
    let mut plain_from = 0;
    for (i, &byte) in value.iter().enumerate() {
        if byte == b'\\' || byte == b'"' {
            array.extend_from_slice(&value[plain_from..i]);
            array.extend_from_slice(&[b'\\', byte]);
            plain_from = i + 1;
        }
    }
    array.extend_from_slice(&value[plain_from..]);
    array.extend_from_slice(b"\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_quoted_and_escaped() {
        let mut array = BytesMut::new();
        push_quoted(&mut array, &Bytes::from_static(b"a\\b\"c,{d} NULL"));
        assert_eq!(&array[..], b"\"a\\\\b\\\"c,{d} NULL\"");
    }
}
