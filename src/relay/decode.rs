//! The total decoder of message bodies: any input gives a message or an error, never a panic.

use bytes::Bytes;

use crate::log::terms::TermStart;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};

use super::message::*;
use super::FrameError;

impl Message {
    /// Decodes one body (type byte and fields), copying it once.
    pub fn decode(body: &[u8]) -> Result<Message, FrameError> {
        Message::decode_bytes(Bytes::copy_from_slice(body))
    }

    /// Decodes one body; payloads (`Record`, `SeedSchema`, `SeedData`) are zero-copy slices of
    /// `body`.
    pub fn decode_bytes(body: Bytes) -> Result<Message, FrameError> {
        let mut c = Cursor { body, pos: 0, message: "frame" };
        let tag = c.u8("type")?;
        c.message = type_name(tag).ok_or(FrameError::UnknownType(tag))?;
        let message = match tag {
            T_CHALLENGE => Message::Challenge(decode_challenge(&mut c)?),
            T_HELLO => Message::Hello(decode_hello(&mut c)?),
            T_WELCOME => Message::Welcome(decode_welcome(&mut c)?),
            T_REFUSE => Message::Refuse(decode_refuse(&mut c)?),
            T_ERROR => Message::Error { message: c.string("message")? },
            T_RECORD => Message::Record(decode_record(&mut c)?),
            T_LEADER_STATUS => Message::LeaderStatus(LeaderStatus {
                last_index: c.opt_index("last_index")?,
                durable_end_lsn: Lsn(c.u64("durable_end_lsn")?),
                time_us: c.i64("time_us")?,
            }),
            T_ACK => Message::Ack(Ack {
                received: c.opt_entry("received")?,
                flushed: c.opt_entry("flushed")?,
                applied: c.opt_entry("applied")?,
                applied_lsn: Lsn(c.u64("applied_lsn")?),
            }),
            _ => decode_seed(tag, &mut c)?,
        };
        c.finish()?;
        Ok(message)
    }
}

fn type_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        T_CHALLENGE => "Challenge",
        T_HELLO => "Hello",
        T_WELCOME => "Welcome",
        T_REFUSE => "Refuse",
        T_ERROR => "Error",
        T_RECORD => "Record",
        T_LEADER_STATUS => "LeaderStatus",
        T_ACK => "Ack",
        T_SEED_REQUEST => "SeedRequest",
        T_SEED_BEGIN => "SeedBegin",
        T_SEED_SCHEMA => "SeedSchema",
        T_SEED_TABLE => "SeedTable",
        T_SEED_DATA => "SeedData",
        T_SEED_TABLE_END => "SeedTableEnd",
        T_SEED_END => "SeedEnd",
        _ => return None,
    })
}

fn decode_challenge(c: &mut Cursor) -> Result<Challenge, FrameError> {
    Ok(Challenge {
        version: c.u16("version")?,
        cluster: c.string("cluster")?,
        leader_node: c.string("leader_node")?,
        term: Term(c.u64("term")?),
        is_leader: c.bool("is_leader")?,
        nonce: c.array("nonce")?,
    })
}

fn decode_hello(c: &mut Cursor) -> Result<Hello, FrameError> {
    Ok(Hello {
        version: c.u16("version")?,
        cluster: c.string("cluster")?,
        node: c.string("node")?,
        term: Term(c.u64("term")?),
        flushed: c.opt_entry("flushed")?,
        seed: c.bool("seed")?,
        nonce: c.array("nonce")?,
        proof: c.array("proof")?,
    })
}

fn decode_welcome(c: &mut Cursor) -> Result<Welcome, FrameError> {
    Ok(Welcome {
        term: Term(c.u64("term")?),
        leader_node: c.string("leader_node")?,
        first_index: c.opt_index("first_index")?,
        last_index: c.opt_index("last_index")?,
        proof: c.array("proof")?,
    })
}

fn decode_refuse(c: &mut Cursor) -> Result<Refuse, FrameError> {
    let code = match c.u8("code")? {
        1 => RefuseCode::WrongCluster,
        2 => RefuseCode::BadProof,
        3 => RefuseCode::UnsupportedVersion,
        4 => RefuseCode::NotLeader,
        5 => RefuseCode::StaleTerm,
        6 => RefuseCode::NotRetained { first: Index(c.u64("first_index")?) },
        7 => RefuseCode::Busy,
        8 => RefuseCode::Other,
        9 => {
            let last = c.opt_index("last_index")?;
            let count = c.u16("terms")?;
            let mut terms = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let term = Term(c.u64("term")?);
                terms.push(TermStart { term, first_index: Index(c.u64("first_index")?) });
            }
            RefuseCode::Diverged(Box::new(LeaderTerms { terms, last }))
        }
        other => return Err(c.invalid("code", format!("unknown refuse code {other}"))),
    };
    Ok(Refuse { code, message: c.string("message")? })
}

fn decode_record(c: &mut Cursor) -> Result<Record, FrameError> {
    let kind = match c.u8("kind")? {
        KIND_CHUNK => RecordKind::Chunk,
        KIND_ENTRY => RecordKind::Entry,
        other => return Err(c.invalid("kind", format!("unknown record kind {other}"))),
    };
    let term = Term(c.u64("term")?);
    let index = Index(c.u64("index")?);
    Ok(Record { kind, id: EntryId { term, index }, payload: c.blob("payload")? })
}

fn decode_seed(tag: u8, c: &mut Cursor) -> Result<Message, FrameError> {
    Ok(match tag {
        T_SEED_REQUEST => Message::SeedRequest,
        T_SEED_BEGIN => {
            Message::SeedBegin { position: c.opt_index("position")?, snapshot_lsn: Lsn(c.u64("snapshot_lsn")?) }
        }
        T_SEED_SCHEMA => Message::SeedSchema { sql: c.blob("sql")? },
        T_SEED_TABLE => {
            Message::SeedTable { schema: c.string("schema")?, name: c.string("name")?, columns: decode_columns(c)? }
        }
        T_SEED_DATA => Message::SeedData { bytes: c.blob("bytes")? },
        T_SEED_TABLE_END => Message::SeedTableEnd { rows: c.u64("rows")? },
        T_SEED_END => Message::SeedEnd { tables: c.u32("tables")?, rows: c.u64("rows")?, bytes: c.u64("bytes")? },
        other => return Err(FrameError::UnknownType(other)),
    })
}

fn decode_columns(c: &mut Cursor) -> Result<Vec<String>, FrameError> {
    let count = usize::from(c.u16("columns")?);
    // Every column takes at least its 2-byte length: a lying count cannot reserve much.
    let mut columns = Vec::with_capacity(count.min(c.remaining() / 2));
    for _ in 0..count {
        columns.push(c.string("column")?);
    }
    Ok(columns)
}

/// Reads fields off a body, checking every length before it slices.
struct Cursor {
    body: Bytes,
    pos: usize,
    /// The message being decoded, for errors.
    message: &'static str,
}

impl Cursor {
    fn remaining(&self) -> usize {
        self.body.len().saturating_sub(self.pos)
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8], FrameError> {
        let message = self.message;
        let truncated = || FrameError::Truncated { message, field };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let bytes = self.body.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let message = self.message;
        let bytes = self.take(field, N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| FrameError::Truncated { message, field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, FrameError> {
        self.array(field).map(i64::from_le_bytes)
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, FrameError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(field, format!("flag {other} is neither 0 nor 1"))),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = usize::from(self.u16(field)?);
        let message = self.message;
        let bytes = self.take(field, len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| FrameError::Invalid {
            message,
            field,
            reason: "invalid UTF-8".to_owned(),
        })
    }

    /// A u32-length-prefixed byte string, as a slice of the body.
    fn blob(&mut self, field: &'static str) -> Result<Bytes, FrameError> {
        let len = self.u32(field)? as usize;
        let start = self.pos;
        self.take(field, len)?;
        Ok(self.body.slice(start..self.pos))
    }

    fn opt_index(&mut self, field: &'static str) -> Result<Option<Index>, FrameError> {
        Ok(match self.bool(field)? {
            false => None,
            true => Some(Index(self.u64(field)?)),
        })
    }

    fn opt_entry(&mut self, field: &'static str) -> Result<Option<EntryId>, FrameError> {
        Ok(match self.bool(field)? {
            false => None,
            true => Some(EntryId { term: Term(self.u64(field)?), index: Index(self.u64(field)?) }),
        })
    }

    fn invalid(&self, field: &'static str, reason: String) -> FrameError {
        FrameError::Invalid { message: self.message, field, reason }
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes { message: self.message, extra }),
        }
    }
}
