//! `walship inspect DATA_DIR [--json]`: the log's committed transactions, for people and tests.
//!
//! With `--json`, one object a line: `term`, `index`, `commit_lsn`, `xid`, `commit_time`,
//! `end_lsn` and `changes`, a list of `{"op", "table", "new", "old"}`. A transaction is printed
//! as it is read, record by record, so even a huge one passes in bounded memory.
//!
//! [`EntryPrinter`] is that printer on its own, for any source of records: the divergence
//! report prints an old leader's lost transactions with it in the same form.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::log::entry::{self, EntryError, EntryHeader, EntryKind};
use crate::log::{LogError, LogReader, RecordKind};
use crate::lsn::{EntryId, Index};
use crate::pgoutput::{self, DecodeError, Message, OldTuple, Tuple, Value};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("entry {id}: {source}")]
    Entry { id: EntryId, source: EntryError },
    #[error("entry {id}: {source}")]
    Decode { id: EntryId, source: DecodeError },
    #[error("entry {id}: change to relation {rel_id} without its definition")]
    UnknownRelation { id: EntryId, rel_id: u32 },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

struct Relation {
    table: String,
    columns: Vec<(String, bool)>,
}

/// The log directory of a data_dir (or the directory itself when it holds segments).
pub fn log_dir(data_dir: &Path) -> PathBuf {
    let nested = data_dir.join("log");
    if nested.is_dir() {
        nested
    } else {
        data_dir.to_path_buf()
    }
}

/// Prints every committed transaction of the log in `data_dir` (with `all`, also heartbeats
/// and logical messages).
pub fn run(data_dir: &Path, json: bool, all: bool, out: &mut impl Write) -> Result<(), InspectError> {
    let dir = log_dir(data_dir);
    let mut reader = match LogReader::open_offline(&dir, Index(1)) {
        Err(LogError::Compacted { first, .. }) => LogReader::open_offline(&dir, first)?,
        other => other?,
    };
    let mut printer = EntryPrinter::inspect(json, all);
    while let Some(record) = reader.next()? {
        printer.record(record.id, record.kind, &record.payload, out)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints entries record by record, in inspect's text or JSON form. Entries are self-contained
/// (see `crate::log::entry`), so the printer holds at most one entry's relations, never its
/// changes: a transaction of any size passes in bounded memory.
pub struct EntryPrinter {
    json: bool,
    heartbeats: bool,
    messages: bool,
    /// A `"source"` key written before the inspect keys (JSON only).
    source: Option<&'static str>,
    /// Whether the entry's index is printed; `"index": null` otherwise (an entry no log holds).
    indexed: bool,
    relations: HashMap<u32, Relation>,
    /// The entry being printed, once its first record was seen.
    open: Option<EntryId>,
    changes: usize,
}

/// An entry the printer finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Printed {
    pub id: EntryId,
    pub kind: EntryKind,
    /// Changes printed for it (rows inserted, updated, deleted or truncated, and messages).
    pub changes: usize,
}

impl EntryPrinter {
    /// `walship inspect`'s printer: transactions, and with `all` also heartbeats and messages.
    pub fn inspect(json: bool, all: bool) -> EntryPrinter {
        EntryPrinter::new(json, all, all, None, true)
    }

    /// JSON lines in inspect's form that also say where the entry comes from (`source`);
    /// without `indexed`, `"index": null`. Transactions and logical messages, not heartbeats.
    pub fn json_from(source: &'static str, indexed: bool) -> EntryPrinter {
        EntryPrinter::new(true, false, true, Some(source), indexed)
    }

    fn new(json: bool, heartbeats: bool, messages: bool, source: Option<&'static str>, indexed: bool) -> Self {
        EntryPrinter { json, heartbeats, messages, source, indexed, relations: HashMap::new(), open: None, changes: 0 }
    }

    /// Prints one record of entry `id`: its changes as they come, and the entry's closing part
    /// with its `Entry` record. Returns the entry once it is printed whole.
    pub fn record(
        &mut self,
        id: EntryId,
        kind: RecordKind,
        payload: &[u8],
        out: &mut impl Write,
    ) -> Result<Option<Printed>, InspectError> {
        let (header, items) = match kind {
            RecordKind::Chunk => (None, entry::chunk_items(payload)),
            RecordKind::Entry => {
                let (h, items) = entry::decode_entry(payload).map_err(|source| InspectError::Entry { id, source })?;
                (Some(h), items)
            }
        };
        let kind = header.map_or(EntryKind::Transaction, |h| h.kind);
        let shown = match kind {
            EntryKind::Transaction => true,
            EntryKind::Heartbeat => self.heartbeats,
            EntryKind::Message => self.messages,
        };
        if !shown {
            return Ok(None);
        }
        if self.open != Some(id) {
            self.open = Some(id);
            self.relations.clear();
            self.changes = 0;
            self.start(id, kind, out)?;
        }
        for item in items {
            let item = item.map_err(|source| InspectError::Entry { id, source })?;
            let message = pgoutput::decode(item).map_err(|source| InspectError::Decode { id, source })?;
            for change in self.changes_of(id, message)? {
                self.print_change(change, out)?;
            }
        }
        let Some(h) = header else { return Ok(None) };
        self.finish(&h, out)?;
        self.open = None;
        Ok(Some(Printed { id, kind, changes: self.changes }))
    }

    fn start(&mut self, id: EntryId, kind: EntryKind, out: &mut impl Write) -> std::io::Result<()> {
        if self.json {
            let kind = match kind {
                EntryKind::Transaction => "",
                EntryKind::Heartbeat => ",\"kind\":\"heartbeat\"",
                EntryKind::Message => ",\"kind\":\"message\"",
            };
            out.write_all(b"{")?;
            if let Some(source) = self.source {
                write!(out, "\"source\":\"{source}\",")?;
            }
            write!(out, "\"term\":{},\"index\":", id.term)?;
            if self.indexed {
                write!(out, "{}", id.index)?;
            } else {
                out.write_all(b"null")?;
            }
            write!(out, "{kind},\"changes\":[")
        } else {
            writeln!(out, "entry {id} ({kind:?})")
        }
    }

    fn print_change(&mut self, change: Json, out: &mut impl Write) -> Result<(), InspectError> {
        if self.json {
            if self.changes > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &change).map_err(std::io::Error::from)?;
        } else {
            writeln!(out, "  {change}")?;
        }
        self.changes += 1;
        Ok(())
    }

    fn finish(&mut self, h: &EntryHeader, out: &mut impl Write) -> std::io::Result<()> {
        let time = format_pg_time(h.commit_time);
        if self.json {
            writeln!(
                out,
                "],\"commit_lsn\":\"{}\",\"end_lsn\":\"{}\",\"xid\":{},\"commit_time\":\"{time}\"}}",
                h.commit_lsn, h.end_lsn, h.xid
            )
        } else {
            writeln!(
                out,
                "  commit {} end {} xid {} at {time}, {} changes",
                h.commit_lsn, h.end_lsn, h.xid, self.changes
            )
        }
    }

    fn relation(&self, id: EntryId, rel_id: u32) -> Result<&Relation, InspectError> {
        self.relations.get(&rel_id).ok_or(InspectError::UnknownRelation { id, rel_id })
    }

    /// The inspect form of one pgoutput message: none, one or (for TRUNCATE) several changes.
    fn changes_of(&mut self, id: EntryId, message: Message<'_>) -> Result<Vec<Json>, InspectError> {
        Ok(match message {
            Message::Relation(rel) => {
                let columns = rel.columns().map(|c| (c.name.to_owned(), c.flags & 1 == 1)).collect();
                let table = format!("{}.{}", rel.namespace, rel.name);
                self.relations.insert(rel.rel_id, Relation { table, columns });
                vec![]
            }
            Message::Insert { rel_id, new } => {
                let rel = self.relation(id, rel_id)?;
                vec![change("insert", rel, Some(tuple_json(rel, &new, false)), None)]
            }
            Message::Update { rel_id, old, new } => {
                let rel = self.relation(id, rel_id)?;
                vec![change("update", rel, Some(tuple_json(rel, &new, false)), old.map(|o| old_json(rel, &o)))]
            }
            Message::Delete { rel_id, old } => {
                let rel = self.relation(id, rel_id)?;
                vec![change("delete", rel, None, Some(old_json(rel, &old)))]
            }
            Message::Truncate { rel_ids, .. } => {
                let mut out = Vec::new();
                for rel_id in rel_ids {
                    out.push(change("truncate", self.relation(id, rel_id)?, None, None));
                }
                out
            }
            Message::Message { prefix, content, .. }
                if self.messages && (self.heartbeats || prefix != entry::HEARTBEAT_PREFIX) =>
            {
                vec![
                    serde_json::json!({"op": "message", "prefix": prefix, "content": String::from_utf8_lossy(content)}),
                ]
            }
            _ => vec![],
        })
    }
}

fn change(op: &str, rel: &Relation, new: Option<Json>, old: Option<Json>) -> Json {
    let mut obj = Map::new();
    obj.insert("op".into(), op.into());
    obj.insert("table".into(), rel.table.clone().into());
    if let Some(new) = new {
        obj.insert("new".into(), new);
    }
    if let Some(old) = old {
        obj.insert("old".into(), old);
    }
    Json::Object(obj)
}

fn old_json(rel: &Relation, old: &OldTuple<'_>) -> Json {
    match old {
        OldTuple::Key(t) => tuple_json(rel, t, true),
        OldTuple::Full(t) => tuple_json(rel, t, false),
    }
}

/// Column name to text or null; unchanged TOASTed values are absent; with `key_only`, only
/// the replica identity's columns.
fn tuple_json(rel: &Relation, tuple: &Tuple<'_>, key_only: bool) -> Json {
    let mut obj = Map::new();
    for (i, value) in tuple.values().enumerate() {
        let (name, is_key) = match rel.columns.get(i) {
            Some((name, key)) => (name.clone(), *key),
            None => (format!("column{}", i + 1), false),
        };
        if key_only && !is_key {
            continue;
        }
        let v = match value {
            Value::Null => Json::Null,
            Value::UnchangedToast => continue,
            Value::Text(t) => Json::String(String::from_utf8_lossy(t).into_owned()),
            Value::Binary(b) => Json::String(format!("\\x{}", hex(b))),
        };
        obj.insert(name, v);
    }
    Json::Object(obj)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL microseconds since 2000-01-01 as RFC 3339 UTC, e.g. `2026-11-26T13:10:01.123456Z`.
pub fn format_pg_time(pg_micros: i64) -> String {
    let unix = pg_micros.saturating_add(crate::lsn::PG_EPOCH_OFFSET_MICROS);
    let secs = unix.div_euclid(1_000_000);
    let micros = unix.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::lsn::{Lsn, Term};

    fn relation() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.put_u32(5);
        b.put_slice(b"public\0t\0");
        b.put_u8(b'd');
        b.put_u16(2);
        b.put_slice(&[1, b'i', b'd', 0]);
        b.put_u32(23);
        b.put_i32(-1);
        b.put_slice(&[0, b'v', 0]);
        b.put_u32(25);
        b.put_i32(-1);
        b
    }

    fn insert(id: &str, v: Option<&str>) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.put_u32(5);
        b.put_u8(b'N');
        b.put_u16(2);
        for value in [Some(id), v] {
            match value {
                Some(text) => {
                    b.put_u8(b't');
                    b.put_u32(text.len() as u32);
                    b.put_slice(text.as_bytes());
                }
                None => b.put_u8(b'n'),
            }
        }
        b
    }

    /// An entry of two inserts, split in a chunk and its closing entry record.
    fn records() -> Vec<(RecordKind, Vec<u8>)> {
        let mut chunk = BytesMut::new();
        entry::push_item(&mut chunk, &relation());
        entry::push_item(&mut chunk, &insert("1", Some("a")));
        let mut last = BytesMut::zeroed(entry::HEADER_BYTES);
        entry::push_item(&mut last, &relation());
        entry::push_item(&mut last, &insert("2", None));
        let header = EntryHeader {
            kind: EntryKind::Transaction,
            commit_lsn: Lsn(0x1_0000_0200),
            end_lsn: Lsn(0x1_0000_0230),
            commit_time: 77,
            xid: 9,
        };
        header.write_into(&mut last);
        vec![(RecordKind::Chunk, chunk.to_vec()), (RecordKind::Entry, last.to_vec())]
    }

    fn print(mut printer: EntryPrinter) -> (String, Vec<Option<Printed>>) {
        let id = EntryId { term: Term(3), index: Index(7) };
        let mut out = Vec::new();
        let printed = records()
            .into_iter()
            .map(|(kind, payload)| printer.record(id, kind, &payload, &mut out).unwrap())
            .collect();
        (String::from_utf8(out).unwrap(), printed)
    }

    const CHANGES: &str = r#""changes":[{"new":{"id":"1","v":"a"},"op":"insert","table":"public.t"},{"new":{"id":"2","v":null},"op":"insert","table":"public.t"}],"commit_lsn":"1/200","end_lsn":"1/230","xid":9,"commit_time":"2000-01-01T00:00:00.000077Z"}"#;

    #[test]
    fn an_entry_prints_as_one_json_line_across_its_records() {
        let (line, printed) = print(EntryPrinter::inspect(true, false));
        assert_eq!(line, format!("{{\"term\":3,\"index\":7,{CHANGES}\n"));
        let id = EntryId { term: Term(3), index: Index(7) };
        assert_eq!(printed, vec![None, Some(Printed { id, kind: EntryKind::Transaction, changes: 2 })]);
    }

    #[test]
    fn a_sourced_printer_adds_its_source_and_may_leave_the_index_out() {
        let (line, _) = print(EntryPrinter::json_from("wal", false));
        assert_eq!(line, format!("{{\"source\":\"wal\",\"term\":3,\"index\":null,{CHANGES}\n"));
        let (line, _) = print(EntryPrinter::json_from("log", true));
        assert_eq!(line, format!("{{\"source\":\"log\",\"term\":3,\"index\":7,{CHANGES}\n"));
    }

    #[test]
    fn pg_times_format_as_rfc3339() {
        assert_eq!(format_pg_time(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_time(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.789012Z
        let unix = 1_709_210_096_789_012i64;
        assert_eq!(format_pg_time(unix - crate::lsn::PG_EPOCH_OFFSET_MICROS), "2024-02-29T12:34:56.789012Z");
    }
}
