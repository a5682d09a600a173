//! Consecutive inserts into one table, gathered into one `COPY ... FROM STDIN` (text format).
//!
//! A batch may span several entries of the open transaction (they commit together, so each
//! stays atomic); it is sent when its run ends (see `run`) and whenever it holds
//! [`COPY_BATCH_BYTES`], so a huge entry passes in bounded memory. The batch
//! remembers at which line each entry's rows start, to name the entry a failing row belongs
//! to.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_postgres::Statement;

use super::meta::TableMeta;
use super::param::TextParam;
use crate::lsn::EntryId;
use crate::pgoutput::{Tuple, Value};

/// A batch is sent once it holds this many bytes of COPY data.
pub const COPY_BATCH_BYTES: usize = 1 << 20;

/// What is needed to explain a failed COPY.
#[derive(Debug)]
pub(super) struct CopyContext {
    pub meta: Arc<TableMeta>,
    pub rows: u64,
    /// `(first line, entry)` for every entry with rows in the batch, lines counted from 1.
    pub entries: Vec<(u64, EntryId)>,
}

impl CopyContext {
    /// The entry whose rows include `line`.
    pub fn entry_of_line(&self, line: u64) -> Option<EntryId> {
        let after = self.entries.partition_point(|&(first, _)| first <= line);
        after.checked_sub(1).and_then(|i| self.entries.get(i)).map(|&(_, entry)| entry)
    }
}

#[derive(Default)]
pub(super) struct CopyBatch {
    /// The leader relation, its table and COPY statement, while a batch is open.
    target: Option<(u32, Arc<TableMeta>, Statement)>,
    data: BytesMut,
    rows: u64,
    entries: Vec<(u64, EntryId)>,
}

impl CopyBatch {
    /// Opens a batch; the previous one must have been taken.
    pub fn start(&mut self, rel_id: u32, meta: Arc<TableMeta>, statement: Statement) {
        self.clear();
        self.target = Some((rel_id, meta, statement));
    }

    /// Appends one row in COPY text format; an error says why the tuple cannot be one.
    pub fn push_row(&mut self, entry: EntryId, tuple: Tuple<'_>) -> Result<(), String> {
        self.start_row(entry, tuple.len())?;
        for (i, value) in tuple.values().enumerate() {
            if i > 0 {
                self.data.extend_from_slice(b"\t");
            }
            match value {
                Value::Null => self.data.extend_from_slice(b"\\N"),
                Value::Text(text) => push_escaped(&mut self.data, text),
                Value::UnchangedToast => return Err("an unchanged TOAST value in an insert".into()),
                Value::Binary(_) => return Err("binary tuple values (the stream must use text)".into()),
            }
        }
        self.data.extend_from_slice(b"\n");
        Ok(())
    }

    /// Appends one row given as the values of a one-row insert.
    pub fn push_params(&mut self, entry: EntryId, params: &[TextParam]) -> Result<(), String> {
        self.start_row(entry, params.len())?;
        for (i, param) in params.iter().enumerate() {
            if i > 0 {
                self.data.extend_from_slice(b"\t");
            }
            match &param.0 {
                None => self.data.extend_from_slice(b"\\N"),
                Some(text) => push_escaped(&mut self.data, text),
            }
        }
        self.data.extend_from_slice(b"\n");
        Ok(())
    }

    fn start_row(&mut self, entry: EntryId, values: usize) -> Result<(), String> {
        let Some((_, meta, _)) = &self.target else {
            return Err("insert into no open COPY batch".into());
        };
        if values != meta.columns.len() {
            return Err(format!("an insert of {values} values for {} columns", meta.columns.len()));
        }
        self.rows += 1;
        if self.entries.last().is_none_or(|&(_, last)| last != entry) {
            self.entries.push((self.rows, entry));
        }
        Ok(())
    }

    pub fn is_full(&self) -> bool {
        self.data.len() >= COPY_BATCH_BYTES
    }

    /// The batch's statement, data and context, if it holds rows; the batch stays open for
    /// more rows of the same table.
    pub fn take(&mut self) -> Option<(Statement, Bytes, CopyContext)> {
        let (_, meta, statement) = self.target.as_ref()?;
        if self.rows == 0 {
            return None;
        }
        let context = CopyContext { meta: meta.clone(), rows: self.rows, entries: std::mem::take(&mut self.entries) };
        self.rows = 0;
        Some((statement.clone(), self.data.split().freeze(), context))
    }

    pub fn clear(&mut self) {
        self.target = None;
        self.data.clear();
        self.rows = 0;
        self.entries.clear();
    }
}

/// Appends a value in COPY text format: backslash, tab, newline and carriage return escaped.
pub(super) fn push_escaped(buf: &mut BytesMut, value: &[u8]) {
    let mut plain_from = 0;
    for (i, &byte) in value.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.extend_from_slice(&value[plain_from..i]);
        buf.extend_from_slice(escaped);
        plain_from = i + 1;
    }
    buf.extend_from_slice(&value[plain_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Index, Term};

    #[test]
    fn values_are_escaped_for_copy_text() {
        let mut buf = BytesMut::new();
        push_escaped(&mut buf, b"a\\b\tc\nd\re\\N");
        assert_eq!(&buf[..], b"a\\\\b\\tc\\nd\\re\\\\N");
        buf.clear();
        push_escaped(&mut buf, b"plain");
        assert_eq!(&buf[..], b"plain");
    }

    #[test]
    fn lines_map_to_their_entries() {
        let id = |i| EntryId { term: Term(1), index: Index(i) };
        let context = CopyContext {
            meta: Arc::new(TableMeta {
                sql_name: String::new(),
                display: String::new(),
                partitioned: false,
                columns: Vec::new(),
                unique_keys: Vec::new(),
                ordered: false,
            }),
            rows: 5,
            entries: vec![(1, id(7)), (4, id(8)), (5, id(9))],
        };
        assert_eq!(context.entry_of_line(0), None);
        assert_eq!(context.entry_of_line(3), Some(id(7)));
        assert_eq!(context.entry_of_line(4), Some(id(8)));
        assert_eq!(context.entry_of_line(99), Some(id(9)));
    }
}
