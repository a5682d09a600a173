//! Byte layout of segment headers and records (see the module doc), as total decoders.

use crate::lsn::{EntryId, Index, Term};

use super::RecordKind;

/// Largest `body_len` of a record (kind, term, index and payload), checked before reading.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Largest payload of one record.
pub const MAX_PAYLOAD_BYTES: usize = MAX_RECORD_BYTES - BODY_PREFIX_LEN;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"WSHIPLOG";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
/// `body_len` and `crc`.
pub(crate) const RECORD_HEADER_LEN: u64 = 8;
/// `kind`, `term` and `index` at the start of every body.
pub(crate) const BODY_PREFIX_LEN: usize = 17;
/// A record header and body prefix: what a reader needs to skip a record.
pub(crate) const HEAD_LEN: usize = RECORD_HEADER_LEN as usize + BODY_PREFIX_LEN;

const KIND_CHUNK: u8 = 1;
const KIND_ENTRY: u8 = 2;

pub(crate) fn encode_segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

/// Checks a segment header; the error is the reason it is invalid.
pub(crate) fn check_segment_header(buf: &[u8; SEGMENT_HEADER_LEN as usize]) -> Result<(), String> {
    let [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, v2, v3, ..] = *buf;
    if [m0, m1, m2, m3, m4, m5, m6, m7] != SEGMENT_MAGIC {
        return Err("bad segment magic (not a walship log segment)".to_owned());
    }
    let version = u32::from_le_bytes([v0, v1, v2, v3]);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    Ok(())
}

/// A record header and body prefix as read from disk. The CRC is not yet checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    /// Offset of the record in its segment.
    pub start: u64,
    pub body_len: u32,
    pub crc: u32,
    pub kind: RecordKind,
    pub id: EntryId,
    pub prefix: [u8; BODY_PREFIX_LEN],
}

impl Head {
    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.start + RECORD_HEADER_LEN + u64::from(self.body_len)
    }

    pub fn payload_len(&self) -> usize {
        (self.body_len as usize).saturating_sub(BODY_PREFIX_LEN)
    }
}

/// Decodes `body_len` and `crc`, checking the length's range.
pub(crate) fn decode_record_header(buf: [u8; 8]) -> Result<(u32, u32), String> {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = buf;
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if (body_len as usize) < BODY_PREFIX_LEN || body_len as usize > MAX_RECORD_BYTES {
        return Err(format!("record length {body_len} out of range"));
    }
    Ok((body_len, crc))
}

pub(crate) fn decode_prefix(buf: &[u8; BODY_PREFIX_LEN]) -> Result<(RecordKind, EntryId), String> {
    let [k, t0, t1, t2, t3, t4, t5, t6, t7, i0, i1, i2, i3, i4, i5, i6, i7] = *buf;
    let kind = match k {
        KIND_CHUNK => RecordKind::Chunk,
        KIND_ENTRY => RecordKind::Entry,
        other => return Err(format!("unknown record kind {other}")),
    };
    let term = Term(u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]));
    let index = Index(u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]));
    Ok((kind, EntryId { term, index }))
}

/// Decodes a record header and body prefix read together.
pub(crate) fn decode_head(start: u64, buf: &[u8; HEAD_LEN]) -> Result<Head, String> {
    let [l0, l1, l2, l3, c0, c1, c2, c3, rest @ ..] = *buf;
    let (body_len, crc) = decode_record_header([l0, l1, l2, l3, c0, c1, c2, c3])?;
    let (kind, id) = decode_prefix(&rest)?;
    Ok(Head { start, body_len, crc, kind, id, prefix: rest })
}

pub(crate) fn encode_prefix(kind: RecordKind, id: EntryId) -> [u8; BODY_PREFIX_LEN] {
    let mut out = [0u8; BODY_PREFIX_LEN];
    out[0] = match kind {
        RecordKind::Chunk => KIND_CHUNK,
        RecordKind::Entry => KIND_ENTRY,
    };
    out[1..9].copy_from_slice(&id.term.0.to_le_bytes());
    out[9..17].copy_from_slice(&id.index.0.to_le_bytes());
    out
}

/// Encodes a record header; `None` when the payload is too large for the format.
pub(crate) fn encode_record_header(prefix: &[u8; BODY_PREFIX_LEN], payload: &[u8]) -> Option<[u8; 8]> {
    let body_len = BODY_PREFIX_LEN.checked_add(payload.len())?;
    if body_len > MAX_RECORD_BYTES {
        return None;
    }
    let body_len = u32::try_from(body_len).ok()?;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&body_len.to_le_bytes());
    out[4..].copy_from_slice(&body_crc(prefix, payload).to_le_bytes());
    Some(out)
}

pub(crate) fn body_crc(prefix: &[u8; BODY_PREFIX_LEN], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(prefix), payload)
}

/// The index after `index`, if there is one.
pub(crate) fn successor(index: Index) -> Option<Index> {
    index.0.checked_add(1).map(Index)
}

/// Checks that records come in log order: contiguous indexes, chunks then one entry record
/// per entry, terms never going backwards. Shared by recovery and readers.
#[derive(Clone, Debug)]
pub(crate) struct SeqCheck {
    /// Index of the next entry to start.
    next: Index,
    last_term: Term,
    /// The entry whose chunks were seen but whose entry record was not.
    open: Option<EntryId>,
}

impl SeqCheck {
    pub fn new(next: Index) -> SeqCheck {
        SeqCheck { next, last_term: Term(0), open: None }
    }

    pub fn next_index(&self) -> Index {
        self.next
    }

    pub fn open_entry(&self) -> Option<EntryId> {
        self.open
    }

    /// Accepts the next record or says why it is out of order.
    pub fn accept(&mut self, kind: RecordKind, id: EntryId) -> Result<(), String> {
        match self.open {
            Some(open) if open != id => {
                return Err(format!("record of entry {id} inside unfinished entry {open}"));
            }
            Some(_) => {}
            None if id.index != self.next => {
                return Err(format!("entry {id} where index {} was expected", self.next));
            }
            None if id.term < self.last_term => {
                return Err(format!("entry {id} has a term below {}", self.last_term));
            }
            None => {}
        }
        match kind {
            RecordKind::Chunk => self.open = Some(id),
            RecordKind::Entry => {
                self.next = successor(id.index).ok_or_else(|| format!("entry {id} has no successor"))?;
                self.last_term = id.term;
                self.open = None;
            }
        }
        Ok(())
    }
}
