//! Turns the leader's pgoutput stream into log records (no I/O).
//!
//! Each committed transaction becomes one entry. Its items are appended as they arrive; once
//! the open transaction holds more than `spill_bytes`, the items so far leave as a chunk
//! record, so a transaction of any size passes in bounded memory. Relation and Type messages
//! are remembered per replication session and copied into every entry that uses them, which
//! makes entries self-contained (see `crate::log::entry`).
//!
//! Resuming: everything that starts before `resume_after` (the last logged entry's `end_lsn`)
//! is already in the log and is skipped, so a stream restarted from the slot's
//! `confirmed_flush_lsn` adds no duplicate.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use crate::log::committer::Output;
use crate::log::entry::{self, EntryHeader, EntryKind, HEADER_BYTES};
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::pgoutput::{self, DecodeError, Message};

/// Default size beyond which an open transaction is spilled as a chunk record.
pub const DEFAULT_SPILL_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("malformed pgoutput message: {0}")]
    Decode(#[from] DecodeError),
    #[error("change to relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("Begin inside an open transaction")]
    NestedBegin,
}

struct OpenTxn {
    index: Index,
    final_lsn: Lsn,
    xid: u32,
    /// Starts with HEADER_BYTES reserved for the entry header, unless a chunk already left.
    buf: BytesMut,
    spilled: bool,
    /// Relations (and their types) already copied into this entry.
    relations_in: Vec<u32>,
    types_in: Vec<u32>,
    /// The stream re-sent a transaction the log already holds.
    skip: bool,
}

pub struct EntryBuilder {
    term: Term,
    next_index: Index,
    resume_after: Lsn,
    spill_bytes: usize,
    relations: HashMap<u32, Bytes>,
    types: HashMap<u32, Bytes>,
    txn: Option<OpenTxn>,
}

impl EntryBuilder {
    pub fn new(term: Term, next_index: Index, resume_after: Lsn, spill_bytes: usize) -> Self {
        EntryBuilder {
            term,
            next_index,
            resume_after,
            spill_bytes: spill_bytes.max(HEADER_BYTES + 1),
            relations: HashMap::new(),
            types: HashMap::new(),
            txn: None,
        }
    }

    /// Where a new replication stream must start: everything before is logged or queued.
    pub fn resume_after(&self) -> Lsn {
        self.resume_after
    }

    /// Forgets the session state of a broken stream. Returns true when chunks of the
    /// unfinished transaction already left: the log must drop them.
    pub fn reset_stream(&mut self) -> bool {
        self.relations.clear();
        self.types.clear();
        self.txn.take().is_some_and(|t| t.spilled && !t.skip)
    }

    /// Takes one pgoutput message (an XLogData payload) and appends any finished records.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Output>) -> Result<(), BuildError> {
        match pgoutput::decode(data)? {
            Message::Begin { final_lsn, xid, .. } => self.begin(final_lsn, xid),
            Message::Commit { commit_lsn, end_lsn, commit_time, .. } => {
                self.commit(commit_lsn, end_lsn, commit_time, out)
            }
            Message::Relation(rel) => {
                self.relations.insert(rel.rel_id, Bytes::copy_from_slice(data));
                // A changed definition must be copied again before the next change.
                if let Some(txn) = self.txn.as_mut() {
                    txn.relations_in.retain(|&r| r != rel.rel_id);
                }
                Ok(())
            }
            Message::Type { oid, .. } => {
                self.types.insert(oid, Bytes::copy_from_slice(data));
                if let Some(txn) = self.txn.as_mut() {
                    txn.types_in.retain(|&t| t != oid);
                }
                Ok(())
            }
            Message::Insert { rel_id, .. } | Message::Update { rel_id, .. } | Message::Delete { rel_id, .. } => {
                self.change(&[rel_id], data, out)
            }
            Message::Truncate { rel_ids, .. } => {
                let ids: Vec<u32> = rel_ids.collect();
                self.change(&ids, data, out)
            }
            Message::Origin { .. } => Ok(()),
            Message::Message { transactional: true, .. } => self.change(&[], data, out),
            Message::Message { transactional: false, lsn, prefix, content } => {
                self.standalone_message(lsn, prefix, content, data, out);
                Ok(())
            }
        }
    }

    fn begin(&mut self, final_lsn: Lsn, xid: u32) -> Result<(), BuildError> {
        if self.txn.is_some() {
            return Err(BuildError::NestedBegin);
        }
        let skip = final_lsn < self.resume_after;
        let mut buf = BytesMut::with_capacity(if skip { 0 } else { 64 * 1024 });
        if !skip {
            buf.resize(HEADER_BYTES, 0);
        }
        self.txn = Some(OpenTxn {
            index: self.next_index,
            final_lsn,
            xid,
            buf,
            spilled: false,
            relations_in: Vec::new(),
            types_in: Vec::new(),
            skip,
        });
        Ok(())
    }

    fn change(&mut self, rel_ids: &[u32], data: &[u8], out: &mut Vec<Output>) -> Result<(), BuildError> {
        let txn = self.txn.as_mut().ok_or(BuildError::OutsideTransaction("change"))?;
        if txn.skip {
            return Ok(());
        }
        for &rel_id in rel_ids {
            if !txn.relations_in.contains(&rel_id) {
                let relation = self.relations.get(&rel_id).ok_or(BuildError::UnknownRelation(rel_id))?;
                copy_relation(txn, relation, &self.types)?;
            }
        }
        entry::push_item(&mut txn.buf, data);
        if txn.buf.len() >= self.spill_bytes {
            let id = EntryId { term: self.term, index: txn.index };
            let mut payload = txn.buf.split();
            if !txn.spilled {
                payload.advance(HEADER_BYTES); // the header goes with the closing record
            }
            out.push(Output::Chunk { id, payload: payload.freeze() });
            txn.spilled = true;
        }
        Ok(())
    }

    fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), BuildError> {
        let mut txn = self.txn.take().ok_or(BuildError::OutsideTransaction("Commit"))?;
        if txn.skip {
            return Ok(());
        }
        if txn.spilled {
            // The header was not kept in front of the spilled items: put it before the rest.
            let mut with_header = BytesMut::with_capacity(HEADER_BYTES + txn.buf.len());
            with_header.resize(HEADER_BYTES, 0);
            with_header.extend_from_slice(&txn.buf);
            txn.buf = with_header;
        }
        debug_assert!(commit_lsn >= txn.final_lsn || commit_lsn == Lsn::ZERO);
        let header = EntryHeader { kind: EntryKind::Transaction, commit_lsn, end_lsn, commit_time, xid: txn.xid };
        header.write_into(&mut txn.buf);
        let id = EntryId { term: self.term, index: txn.index };
        out.push(Output::Entry { id, payload: txn.buf.freeze(), end_lsn });
        self.resume_after = end_lsn;
        self.next_index = self.next_index.next();
        Ok(())
    }

    fn standalone_message(&mut self, lsn: Lsn, prefix: &str, content: &[u8], data: &[u8], out: &mut Vec<Output>) {
        // PostgreSQL gives a message the LSN where its WAL record ends, which may be exactly
        // where the next transaction's commit record starts.
        if lsn <= self.resume_after {
            return;
        }
        let (kind, commit_time) = match (prefix, parse_heartbeat(content)) {
            (entry::HEARTBEAT_PREFIX, Some(beat)) => (EntryKind::Heartbeat, beat.emitted_pg_micros),
            _ => (EntryKind::Message, crate::lsn::now_pg_micros()),
        };
        let end_lsn = lsn;
        let mut buf = BytesMut::with_capacity(HEADER_BYTES + 4 + data.len());
        buf.resize(HEADER_BYTES, 0);
        entry::push_item(&mut buf, data);
        EntryHeader { kind, commit_lsn: lsn, end_lsn, commit_time, xid: 0 }.write_into(&mut buf);
        let id = EntryId { term: self.term, index: self.next_index };
        out.push(Output::Entry { id, payload: buf.freeze(), end_lsn });
        self.resume_after = end_lsn;
        self.next_index = self.next_index.next();
    }
}

fn copy_relation(txn: &mut OpenTxn, relation: &Bytes, types: &HashMap<u32, Bytes>) -> Result<(), BuildError> {
    let Message::Relation(rel) = pgoutput::decode(relation)? else {
        return Ok(());
    };
    for column in rel.columns() {
        if let Some(type_msg) = types.get(&column.type_oid) {
            if !txn.types_in.contains(&column.type_oid) {
                entry::push_item(&mut txn.buf, type_msg);
                txn.types_in.push(column.type_oid);
            }
        }
    }
    entry::push_item(&mut txn.buf, relation);
    txn.relations_in.push(rel.rel_id);
    Ok(())
}

/// What a walship heartbeat message says: `"<node> <term> <unix micros>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: String,
    pub term: Term,
    pub emitted_pg_micros: i64,
}

pub fn heartbeat_content(node: &str, term: Term, unix_micros: i64) -> String {
    format!("{node} {term} {unix_micros}")
}

pub fn parse_heartbeat(content: &[u8]) -> Option<Heartbeat> {
    let text = std::str::from_utf8(content).ok()?;
    let mut parts = text.split(' ');
    let node = parts.next()?.to_owned();
    let term = Term(parts.next()?.parse().ok()?);
    let unix: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let emitted_pg_micros = unix.checked_sub(crate::lsn::PG_EPOCH_OFFSET_MICROS)?;
    Some(Heartbeat { node, term, emitted_pg_micros })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::log::entry::{chunk_items, decode_entry};

    fn begin(final_lsn: u64, xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.put_u64(final_lsn);
        b.put_i64(0);
        b.put_u32(xid);
        b
    }

    fn commit(commit_lsn: u64, end_lsn: u64) -> Vec<u8> {
        let mut b = vec![b'C', 0];
        b.put_u64(commit_lsn);
        b.put_u64(end_lsn);
        b.put_i64(77);
        b
    }

    fn relation(id: u32, name: &str) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.put_u32(id);
        b.put_slice(b"public\0");
        b.put_slice(name.as_bytes());
        b.put_slice(&[0, b'd']);
        b.put_u16(1);
        b.put_slice(&[1, b'i', b'd', 0]);
        b.put_u32(23);
        b.put_i32(-1);
        b
    }

    fn insert(id: u32, value: &str) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.put_u32(id);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b't');
        b.put_u32(value.len() as u32);
        b.put_slice(value.as_bytes());
        b
    }

    fn message(transactional: bool, lsn: u64, prefix: &str, content: &str) -> Vec<u8> {
        let mut b = vec![b'M', u8::from(transactional)];
        b.put_u64(lsn);
        b.put_slice(prefix.as_bytes());
        b.put_u8(0);
        b.put_u32(content.len() as u32);
        b.put_slice(content.as_bytes());
        b
    }

    fn push_all(builder: &mut EntryBuilder, messages: &[Vec<u8>]) -> Vec<Output> {
        let mut out = Vec::new();
        for m in messages {
            builder.push(m, &mut out).unwrap();
        }
        out
    }

    fn entry(output: &Output) -> (EntryId, EntryHeader, Vec<Vec<u8>>) {
        let Output::Entry { id, payload, .. } = output else { panic!("expected an entry, got {output:?}") };
        let (header, items) = decode_entry(payload).unwrap();
        (*id, header, items.map(|i| i.unwrap().to_vec()).collect())
    }

    #[test]
    fn a_transaction_becomes_one_self_contained_entry() {
        let mut b = EntryBuilder::new(Term(3), Index(10), Lsn(0x100), DEFAULT_SPILL_BYTES);
        let out = push_all(
            &mut b,
            &[relation(5, "t"), begin(0x200, 9), insert(5, "1"), insert(5, "2"), commit(0x200, 0x230)],
        );
        assert_eq!(out.len(), 1);
        let (id, header, items) = entry(&out[0]);
        assert_eq!(id, EntryId { term: Term(3), index: Index(10) });
        assert_eq!(
            (header.kind, header.commit_lsn, header.end_lsn, header.xid),
            (EntryKind::Transaction, Lsn(0x200), Lsn(0x230), 9)
        );
        assert_eq!(items, vec![relation(5, "t"), insert(5, "1"), insert(5, "2")]);
        assert_eq!(b.resume_after(), Lsn(0x230));
        // The next transaction carries the relation again and takes the next index.
        let out = push_all(&mut b, &[begin(0x240, 10), insert(5, "3"), commit(0x240, 0x260)]);
        let (id, _, items) = entry(&out[0]);
        assert_eq!(id.index, Index(11));
        assert_eq!(items, vec![relation(5, "t"), insert(5, "3")]);
    }

    #[test]
    fn what_the_log_has_is_skipped_after_a_restart() {
        let mut b = EntryBuilder::new(Term(1), Index(4), Lsn(0x300), DEFAULT_SPILL_BYTES);
        let resent = [
            relation(5, "t"),
            begin(0x200, 9),
            insert(5, "old"),
            commit(0x200, 0x300),
            message(false, 0x300, HEARTBEAT_TEST_PREFIX, "a 1 1700000000000000"),
        ];
        assert!(push_all(&mut b, &resent).is_empty());
        // A heartbeat's LSN is where its record ends: a commit may start exactly there.
        let out = push_all(
            &mut b,
            &[
                message(false, 0x340, HEARTBEAT_TEST_PREFIX, "a 1 1700000000000000"),
                begin(0x340, 11),
                insert(5, "new"),
                commit(0x340, 0x380),
            ],
        );
        assert_eq!(out.len(), 2);
        let (beat_id, beat, _) = entry(&out[0]);
        assert_eq!((beat_id.index, beat.kind, beat.end_lsn), (Index(4), EntryKind::Heartbeat, Lsn(0x340)));
        assert_eq!(beat.commit_time, 1_700_000_000_000_000 - crate::lsn::PG_EPOCH_OFFSET_MICROS);
        let (txn_id, txn, items) = entry(&out[1]);
        assert_eq!((txn_id.index, txn.commit_lsn), (Index(5), Lsn(0x340)));
        assert_eq!(items, vec![relation(5, "t"), insert(5, "new")]);
    }

    const HEARTBEAT_TEST_PREFIX: &str = crate::log::entry::HEARTBEAT_PREFIX;

    #[test]
    fn a_large_transaction_leaves_in_chunks_with_the_header_last() {
        let mut b = EntryBuilder::new(Term(1), Index(1), Lsn(0), 200);
        let mut messages = vec![relation(5, "t"), begin(0x100, 3)];
        let values: Vec<String> = (0..40).map(|i| format!("value-{i:04}")).collect();
        messages.extend(values.iter().map(|v| insert(5, v)));
        messages.push(commit(0x100, 0x900));
        let out = push_all(&mut b, &messages);
        assert!(out.len() > 3, "expected chunks, got {} records", out.len());
        let mut items = Vec::new();
        for chunk in &out[..out.len() - 1] {
            let Output::Chunk { id, payload } = chunk else { panic!("expected a chunk") };
            assert_eq!(id.index, Index(1));
            assert!(payload.len() < 400);
            items.extend(chunk_items(payload).map(|i| i.unwrap().to_vec()));
        }
        let (_, header, last) = entry(out.last().unwrap());
        assert_eq!(header.end_lsn, Lsn(0x900));
        items.extend(last);
        let mut expected = vec![relation(5, "t")];
        expected.extend(values.iter().map(|v| insert(5, v)));
        assert_eq!(items, expected);
        assert!(!b.reset_stream(), "nothing open after the commit");
    }

    #[test]
    fn a_broken_stream_inside_a_spilled_transaction_asks_to_drop_its_chunks() {
        let mut b = EntryBuilder::new(Term(1), Index(1), Lsn(0), 100);
        let mut messages = vec![relation(5, "t"), begin(0x100, 3)];
        messages.extend((0..20).map(|i| insert(5, &format!("{i:020}"))));
        let out = push_all(&mut b, &messages);
        assert!(!out.is_empty());
        assert!(b.reset_stream());
        // The relation cache belonged to the old session.
        let mut out = Vec::new();
        b.push(&begin(0x100, 3), &mut out).unwrap();
        assert!(matches!(b.push(&insert(5, "x"), &mut out), Err(BuildError::UnknownRelation(5))));
    }

    #[test]
    fn a_relation_redefined_inside_a_transaction_is_copied_again() {
        let mut b = EntryBuilder::new(Term(1), Index(1), Lsn(0), DEFAULT_SPILL_BYTES);
        let out = push_all(
            &mut b,
            &[
                relation(5, "t"),
                begin(0x100, 3),
                insert(5, "1"),
                relation(5, "t2"),
                insert(5, "2"),
                commit(0x100, 0x200),
            ],
        );
        let (_, _, items) = entry(&out[0]);
        assert_eq!(items, vec![relation(5, "t"), insert(5, "1"), relation(5, "t2"), insert(5, "2")]);
    }

    #[test]
    fn out_of_place_messages_are_errors() {
        let mut b = EntryBuilder::new(Term(1), Index(1), Lsn(0), DEFAULT_SPILL_BYTES);
        let mut out = Vec::new();
        assert!(matches!(b.push(&insert(5, "1"), &mut out), Err(BuildError::OutsideTransaction(_))));
        assert!(matches!(b.push(&commit(1, 2), &mut out), Err(BuildError::OutsideTransaction(_))));
        b.push(&begin(0x100, 1), &mut out).unwrap();
        assert!(matches!(b.push(&begin(0x100, 1), &mut out), Err(BuildError::NestedBegin)));
        assert!(matches!(b.push(&insert(5, "1"), &mut out), Err(BuildError::UnknownRelation(5))));
        assert!(matches!(b.push(b"Z", &mut out), Err(BuildError::Decode(_))));
        assert!(out.is_empty());
    }

    #[test]
    fn heartbeat_content_round_trips() {
        let text = heartbeat_content("node-1", Term(4), 1_800_000_000_000_000);
        let beat = parse_heartbeat(text.as_bytes()).unwrap();
        assert_eq!(beat.node, "node-1");
        assert_eq!(beat.term, Term(4));
        for bad in ["", "a", "a 1", "a x 5", "a 1 5 extra", "a 1 -9223372036854775808"] {
            assert_eq!(parse_heartbeat(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
