//! What a log entry's records carry.
//!
//! The record layer (`super`) stores opaque payloads. This module gives them meaning:
//!
//! ```text
//! entry record payload = header items*
//! chunk record payload = items*
//! header (29 bytes)    = u8 kind, u64 commit_lsn, u64 end_lsn, i64 commit_time, u32 xid
//! item                 = u32 len, len bytes of one pgoutput message (protocol version 1)
//! ```
//!
//! All integers are little-endian. `commit_time` is in microseconds since 2000-01-01 UTC
//! (PostgreSQL's epoch). An entry's items are the leader transaction's pgoutput messages in
//! order, without its Begin and Commit (the header stands for them). Every entry is
//! self-contained: before the first change to a relation, the entry holds that relation's
//! Relation message (and the Type messages of its non-built-in column types), so any entry can
//! be decoded, inspected or applied without reading the ones before it.
//!
//! `end_lsn` is the leader WAL position just past the entry: a resumed stream skips everything
//! that starts before the last entry's `end_lsn`. For a message entry both LSNs are the one
//! PostgreSQL gives the message: where its WAL record ends.

use bytes::{BufMut, BytesMut};

use crate::lsn::Lsn;

pub const HEADER_BYTES: usize = 29;
/// The logical message prefix walship's heartbeats are emitted with.
pub const HEARTBEAT_PREFIX: &str = "walship.heartbeat";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A committed leader transaction.
    Transaction = 1,
    /// A heartbeat the leader emitted through its WAL; `commit_time` is when it was emitted.
    Heartbeat = 2,
    /// A non-transactional logical message (`pg_logical_emit_message(false, ...)`).
    Message = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub xid: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry payload of {0} bytes is shorter than its {HEADER_BYTES}-byte header")]
    ShortHeader(usize),
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    #[error("item at offset {offset} claims {len} bytes but only {left} remain")]
    ItemOverrun { offset: usize, len: usize, left: usize },
    #[error("item length field cut short at offset {0}")]
    ShortItemLength(usize),
    #[error("cannot read the entry: {0}")]
    Unreadable(String),
}

impl EntryHeader {
    /// Writes the header into the first [`HEADER_BYTES`] of `buf`, which the caller reserved.
    pub fn write_into(&self, buf: &mut [u8]) {
        if let Some(h) = buf.get_mut(..HEADER_BYTES) {
            h[0] = self.kind as u8;
            h[1..9].copy_from_slice(&self.commit_lsn.0.to_le_bytes());
            h[9..17].copy_from_slice(&self.end_lsn.0.to_le_bytes());
            h[17..25].copy_from_slice(&self.commit_time.to_le_bytes());
            h[25..29].copy_from_slice(&self.xid.to_le_bytes());
        }
    }

    pub fn decode(payload: &[u8]) -> Result<EntryHeader, EntryError> {
        let h: &[u8; HEADER_BYTES] = payload
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(EntryError::ShortHeader(payload.len()))?;
        let u64_at =
            |i: usize| u64::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3], h[i + 4], h[i + 5], h[i + 6], h[i + 7]]);
        let kind = match h[0] {
            1 => EntryKind::Transaction,
            2 => EntryKind::Heartbeat,
            3 => EntryKind::Message,
            other => return Err(EntryError::UnknownKind(other)),
        };
        Ok(EntryHeader {
            kind,
            commit_lsn: Lsn(u64_at(1)),
            end_lsn: Lsn(u64_at(9)),
            commit_time: u64_at(17) as i64,
            xid: u32::from_le_bytes([h[25], h[26], h[27], h[28]]),
        })
    }
}

/// Splits an entry record's payload into its header and items.
pub fn decode_entry(payload: &[u8]) -> Result<(EntryHeader, Items<'_>), EntryError> {
    let header = EntryHeader::decode(payload)?;
    let items = Items { buf: payload, offset: HEADER_BYTES };
    Ok((header, items))
}

/// The items of a chunk record's payload.
pub fn chunk_items(payload: &[u8]) -> Items<'_> {
    Items { buf: payload, offset: 0 }
}

/// Appends one pgoutput message as an item.
pub fn push_item(buf: &mut BytesMut, message: &[u8]) {
    buf.put_u32_le(message.len() as u32);
    buf.put_slice(message);
}

/// Iterates the pgoutput messages of a payload; yields an error once and then stops.
pub struct Items<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a [u8], EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.offset..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let result = match rest.get(..4) {
            None => Err(EntryError::ShortItemLength(self.offset)),
            Some(l) => {
                let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                match rest.get(4..).and_then(|r| r.get(..len)) {
                    Some(item) => {
                        self.offset += 4 + len;
                        return Some(Ok(item));
                    }
                    None => Err(EntryError::ItemOverrun { offset: self.offset, len, left: rest.len() - 4 }),
                }
            }
        };
        self.offset = self.buf.len();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_items_round_trip() {
        let header = EntryHeader {
            kind: EntryKind::Transaction,
            commit_lsn: Lsn(0x1_0000_0010),
            end_lsn: Lsn(0x1_0000_0040),
            commit_time: -5,
            xid: 771,
        };
        let mut buf = BytesMut::zeroed(HEADER_BYTES);
        push_item(&mut buf, b"I-first");
        push_item(&mut buf, b"");
        push_item(&mut buf, b"D-third");
        header.write_into(&mut buf);
        let (decoded, items) = decode_entry(&buf).unwrap();
        assert_eq!(decoded, header);
        let items: Vec<&[u8]> = items.collect::<Result<_, _>>().unwrap();
        assert_eq!(items, vec![&b"I-first"[..], b"", b"D-third"]);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(decode_entry(&[1; 10]).err(), Some(EntryError::ShortHeader(10)));
        let mut bad_kind = [0u8; HEADER_BYTES];
        bad_kind[0] = 9;
        assert_eq!(decode_entry(&bad_kind).err(), Some(EntryError::UnknownKind(9)));
        let mut overrun = BytesMut::new();
        overrun.put_u32_le(100);
        overrun.put_slice(b"abc");
        let got: Vec<_> = chunk_items(&overrun).collect();
        assert_eq!(got, vec![Err(EntryError::ItemOverrun { offset: 0, len: 100, left: 3 })]);
        let got: Vec<_> = chunk_items(&[1, 0]).collect();
        assert_eq!(got, vec![Err(EntryError::ShortItemLength(0))]);
    }
}
