//! Decoder for pgoutput, PostgreSQL's logical replication output plugin.
//!
//! One call to [`decode`] turns the payload of one XLogData message (or one row of
//! `pg_logical_slot_*_binary_changes`) into a [`Message`]. Only what PostgreSQL sends for
//! `proto_version '1'`, `publication_names`, `messages 'true'` is understood: no streaming,
//! no two-phase messages. Values in that mode are text; binary values (`'b'`) are accepted too.
//!
//! Layout, all integers big-endian, strings NUL-terminated (PostgreSQL's "Logical Replication
//! Message Formats"):
//!
//! ```text
//! 'B' final_lsn:u64 commit_time:i64 xid:u32
//! 'C' flags:u8 commit_lsn:u64 end_lsn:u64 commit_time:i64
//! 'O' commit_lsn:u64 name:str
//! 'R' rel_id:u32 namespace:str name:str replica_identity:u8 ncols:u16
//!       ncols × (flags:u8 name:str type_oid:u32 type_modifier:i32)
//! 'Y' oid:u32 namespace:str name:str
//! 'I' rel_id:u32 'N' tuple
//! 'U' rel_id:u32 [('K' | 'O') tuple] 'N' tuple
//! 'D' rel_id:u32 ('K' | 'O') tuple
//! 'T' nrels:u32 options:u8 nrels × rel_id:u32
//! 'M' flags:u8 lsn:u64 prefix:str len:i32 content:[u8; len]
//! tuple = ncols:u16 ncols × ('n' | 'u' | 't' len:i32 [u8; len] | 'b' len:i32 [u8; len])
//! ```
//!
//! The decoder is total: any input gives `Ok` or a [`DecodeError`], never a panic, and a
//! message followed by extra bytes is an error. It is zero-copy and does not allocate: a tuple
//! or a relation's column list is walked once to validate it and kept as its raw bytes, and its
//! iterator walks those bytes again when asked.

use std::fmt;
use std::iter::FusedIterator;

use crate::lsn::Lsn;
use reader::Reader;

mod reader;
mod relation;
mod tuple;

pub use relation::{Column, Columns, Relation, COLUMN_KEY};
pub use tuple::{OldTuple, Tuple, Value, Values};

/// Most columns a relation or tuple may have: PostgreSQL's `MaxTupleAttributeNumber`.
pub const MAX_COLUMNS: u16 = 1664;

/// [`Message::Truncate`] option bit: `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;
/// [`Message::Truncate`] option bit: `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// One decoded pgoutput message. Borrowed parts point into the buffer given to [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Start of a transaction. `commit_time` is in microseconds since 2000-01-01 UTC.
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    /// End of a transaction. `flags` is currently always 0.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The transaction came from another node through replication origin `name`.
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    /// Schema of a relation, sent before its first change and after each schema change.
    Relation(Relation<'a>),
    /// A user-defined type used by a relation. `namespace` is empty for `pg_catalog`.
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        rel_id: u32,
        new: Tuple<'a>,
    },
    /// `old` is present when the replica identity changed (`Key`) or is FULL (`Full`).
    Update {
        rel_id: u32,
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        rel_id: u32,
        old: OldTuple<'a>,
    },
    /// `options` is a combination of [`TRUNCATE_CASCADE`] and [`TRUNCATE_RESTART_IDENTITY`].
    Truncate {
        options: u8,
        rel_ids: RelIds<'a>,
    },
    /// A `pg_logical_emit_message` message; non-transactional ones arrive outside Begin/Commit.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// The relation ids of a [`Message::Truncate`], in the order PostgreSQL sent them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelIds<'a> {
    raw: &'a [u8],
}

impl Iterator for RelIds<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (id, rest) = self.raw.split_first_chunk::<4>()?;
        self.raw = rest;
        Some(u32::from_be_bytes(*id))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.raw.len() / 4, Some(self.raw.len() / 4))
    }
}

impl ExactSizeIterator for RelIds<'_> {}
impl FusedIterator for RelIds<'_> {}

impl fmt::Debug for RelIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(*self).finish()
    }
}

/// Why a buffer is not one pgoutput message. Offsets count bytes from the message's tag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message ends inside {what} at byte {offset}")]
    UnexpectedEnd { what: &'static str, offset: usize },
    #[error("pgoutput {what} at byte {offset} has no NUL terminator")]
    UnterminatedString { what: &'static str, offset: usize },
    #[error("pgoutput {what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str, offset: usize },
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown pgoutput tuple kind {kind:#04x} at byte {offset}")]
    UnknownTupleKind { kind: u8, offset: usize },
    #[error("unknown pgoutput tuple value kind {kind:#04x} at byte {offset}")]
    UnknownValueKind { kind: u8, offset: usize },
    #[error("unknown pgoutput {what} flags {flags:#04x} at byte {offset}")]
    UnknownFlags { what: &'static str, flags: u8, offset: usize },
    #[error("negative pgoutput {what} length {len} at byte {offset}")]
    NegativeLength { what: &'static str, len: i32, offset: usize },
    #[error("pgoutput column count {count} at byte {offset} is over {MAX_COLUMNS}")]
    TooManyColumns { count: u16, offset: usize },
    #[error("{len} bytes after the end of the pgoutput message at byte {offset}")]
    TrailingBytes { offset: usize, len: usize },
}

/// Decodes one whole pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let message = match r.u8("message tag")? {
        b'B' => begin(&mut r)?,
        b'C' => commit(&mut r)?,
        b'O' => Message::Origin { commit_lsn: r.lsn("origin commit lsn")?, name: r.str("origin name")? },
        b'R' => Message::Relation(relation::read(&mut r)?),
        b'Y' => {
            Message::Type { oid: r.u32("type oid")?, namespace: r.str("type namespace")?, name: r.str("type name")? }
        }
        b'I' => insert(&mut r)?,
        b'U' => update(&mut r)?,
        b'D' => delete(&mut r)?,
        b'T' => truncate(&mut r)?,
        b'M' => logical_message(&mut r)?,
        tag => return Err(DecodeError::UnknownMessage(tag)),
    };
    r.finish()?;
    Ok(message)
}

/// The relation id of an Insert, Update, Delete or Relation message, read without decoding
/// the rest (which may still be malformed). `None` for other messages and short buffers.
pub fn relation_id(buf: &[u8]) -> Option<u32> {
    let (tag, rest) = buf.split_first()?;
    if !matches!(tag, b'I' | b'U' | b'D' | b'R') {
        return None;
    }
    let (id, _) = rest.split_first_chunk::<4>()?;
    Some(u32::from_be_bytes(*id))
}

fn begin<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    Ok(Message::Begin {
        final_lsn: r.lsn("begin final lsn")?,
        commit_time: r.i64("begin commit time")?,
        xid: r.u32("begin xid")?,
    })
}

fn commit<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    Ok(Message::Commit {
        flags: r.u8("commit flags")?,
        commit_lsn: r.lsn("commit lsn")?,
        end_lsn: r.lsn("commit end lsn")?,
        commit_time: r.i64("commit time")?,
    })
}

fn insert<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let rel_id = r.u32("relation id")?;
    Ok(Message::Insert { rel_id, new: tuple::read_new(r)? })
}

fn update<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let rel_id = r.u32("relation id")?;
    let old = tuple::read_old(r)?;
    let new = match old {
        Some(_) => tuple::read_new(r)?,
        // The 'N' is read already.
        None => tuple::read(r)?,
    };
    Ok(Message::Update { rel_id, old, new })
}

fn delete<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let rel_id = r.u32("relation id")?;
    let offset = r.offset();
    match tuple::read_old(r)? {
        Some(old) => Ok(Message::Delete { rel_id, old }),
        None => Err(DecodeError::UnknownTupleKind { kind: b'N', offset }),
    }
}

fn truncate<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let offset = r.offset();
    let count = r.u32("truncate relation count")?;
    let options = r.u8("truncate options")?;
    let bytes = usize::try_from(count).ok().and_then(|n| n.checked_mul(4));
    let bytes = bytes.ok_or(DecodeError::UnexpectedEnd { what: "truncate relation ids", offset })?;
    let raw = r.take(bytes, "truncate relation ids")?;
    Ok(Message::Truncate { options, rel_ids: RelIds { raw } })
}

fn logical_message<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let offset = r.offset();
    let transactional = match r.u8("message flags")? {
        0 => false,
        1 => true,
        flags => return Err(DecodeError::UnknownFlags { what: "message", flags, offset }),
    };
    Ok(Message::Message {
        transactional,
        lsn: r.lsn("message lsn")?,
        prefix: r.str("message prefix")?,
        content: r.counted("message content")?,
    })
}

#[cfg(test)]
mod tests;
