//! The rows of a set-based update or delete, gathered into one array literal per parameter
//! (see `statement` for the statement that reads them).
//!
//! A batch holds rows of distinct keys only (the caller starts a new batch when a key comes
//! again): with the follower's unique index that makes the statement touch exactly one row
//! per row of the batch when the follower agrees with the leader, which the row count checks.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_postgres::Statement;

use super::change::TextParam;
use super::copy::COPY_BATCH_BYTES;
use super::table::TableMeta;
use crate::lsn::EntryId;

/// Most rows in one set-based statement.
pub const SET_BATCH_ROWS: u64 = 10_000;

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
    /// One array literal per parameter, without its closing brace.
    arrays: Vec<BytesMut>,
    bytes: usize,
    rows: u64,
    entries: Option<(EntryId, EntryId)>,
}

impl SetBatch {
    /// Opens batches of this statement, whose parameters have these delimiters.
    pub fn start(&mut self, meta: Arc<TableMeta>, statement: Statement, delimiters: Vec<u8>) {
        self.clear();
        self.arrays = delimiters.iter().map(|_| BytesMut::new()).collect();
        self.target = Some((meta, statement, delimiters));
    }

    /// Appends one row's parameters (as many as the statement has) as array elements.
    pub fn push(&mut self, entry: EntryId, params: &[TextParam]) -> Result<(), String> {
        let Some((_, _, delimiters)) = &self.target else {
            return Err("a set-based change without its statement".into());
        };
        if params.len() != self.arrays.len() {
            return Err(format!("{} values for a statement of {} parameters", params.len(), self.arrays.len()));
        }
        for ((array, param), &delimiter) in self.arrays.iter_mut().zip(params).zip(delimiters) {
            let before = array.len();
            array.extend_from_slice(if self.rows == 0 { b"{" } else { std::slice::from_ref(&delimiter) });
            match &param.0 {
                Some(text) => push_quoted(array, text),
                None => array.extend_from_slice(b"NULL"),
            }
            self.bytes += array.len() - before;
        }
        self.rows += 1;
        self.entries = Some(match self.entries {
            Some((first, _)) => (first, entry),
            None => (entry, entry),
        });
        Ok(())
    }

    pub fn is_full(&self) -> bool {
        self.bytes >= COPY_BATCH_BYTES || self.rows >= SET_BATCH_ROWS
    }

    /// The statement, its parameters and context, if the batch holds rows; the batch stays
    /// open for more rows of the same statement.
    pub fn take(&mut self) -> Option<(Statement, Vec<TextParam>, SetContext)> {
        let (meta, statement, _) = self.target.as_ref()?;
        let (first, last) = self.entries.take()?;
        let params = self
            .arrays
            .iter_mut()
            .map(|array| {
                array.extend_from_slice(b"}");
                TextParam(Some(array.split().freeze()))
            })
            .collect();
        let context = SetContext { meta: meta.clone(), rows: self.rows, first, last };
        self.rows = 0;
        self.bytes = 0;
        Some((statement.clone(), params, context))
    }

    pub fn clear(&mut self) {
        self.target = None;
        self.arrays.clear();
        self.bytes = 0;
        self.rows = 0;
        self.entries = None;
    }
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
