//! The messages of the relay protocol and their encoding (layouts in the module doc).

use bytes::{BufMut, Bytes, BytesMut};

use crate::log::terms::TermStart;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};

use super::{FrameError, Nonce, Proof};

pub(super) const T_CHALLENGE: u8 = 1;
pub(super) const T_HELLO: u8 = 2;
pub(super) const T_WELCOME: u8 = 3;
pub(super) const T_REFUSE: u8 = 4;
pub(super) const T_ERROR: u8 = 5;
pub(super) const T_RECORD: u8 = 10;
pub(super) const T_LEADER_STATUS: u8 = 11;
pub(super) const T_ACK: u8 = 12;
pub(super) const T_SEED_REQUEST: u8 = 20;
pub(super) const T_SEED_BEGIN: u8 = 21;
pub(super) const T_SEED_SCHEMA: u8 = 22;
pub(super) const T_SEED_TABLE: u8 = 23;
pub(super) const T_SEED_DATA: u8 = 24;
pub(super) const T_SEED_TABLE_END: u8 = 25;
pub(super) const T_SEED_END: u8 = 26;

pub(super) const KIND_CHUNK: u8 = 1;
pub(super) const KIND_ENTRY: u8 = 2;

/// Leader -> follower, first message of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub version: u16,
    pub cluster: String,
    pub leader_node: String,
    pub term: Term,
    pub is_leader: bool,
    pub nonce: Nonce,
}

/// Follower -> leader: who the follower is, what it holds, and its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub cluster: String,
    pub node: String,
    pub term: Term,
    /// The last entry durably in the follower's log.
    pub flushed: Option<EntryId>,
    /// The follower asks for a snapshot (it sends `SeedRequest` after the `Welcome`).
    pub seed: bool,
    pub nonce: Nonce,
    pub proof: Proof,
}

/// Leader -> follower: the follower is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub term: Term,
    pub leader_node: String,
    /// The first entry the leader still holds, `None` when its log is empty.
    pub first_index: Option<Index>,
    /// The last entry the leader holds.
    pub last_index: Option<Index>,
    pub proof: Proof,
}

/// Why a leader refuses a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefuseCode {
    WrongCluster,
    BadProof,
    UnsupportedVersion,
    NotLeader,
    /// The follower knows a newer term than the leader's: the leader is old.
    StaleTerm,
    /// The follower needs entries before `first`, which the leader no longer holds.
    NotRetained {
        first: Index,
    },
    Busy,
    Other,
    /// The follower's last entry is not in the leader's log: the leader's term history and
    /// last index, from which the follower finds where the two logs branch.
    Diverged(Box<LeaderTerms>),
}

/// A leader's term history and last index, sent to a follower whose log diverged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderTerms {
    pub terms: Vec<TermStart>,
    pub last: Option<Index>,
}

/// Leader -> follower: the follower is refused; the leader closes after sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    pub code: RefuseCode,
    pub message: String,
}

/// Leader -> follower: where the leader's log ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderStatus {
    pub last_index: Option<Index>,
    pub durable_end_lsn: Lsn,
    /// The leader's clock, microseconds since the Unix epoch.
    pub time_us: i64,
}

/// Follower -> leader: the follower's progress, stage by stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub received: Option<EntryId>,
    pub flushed: Option<EntryId>,
    pub applied: Option<EntryId>,
    pub applied_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Challenge(Challenge),
    Hello(Hello),
    Welcome(Welcome),
    Refuse(Refuse),
    Error { message: String },
    Record(Record),
    LeaderStatus(LeaderStatus),
    Ack(Ack),
    SeedRequest,
    SeedBegin { position: Option<Index>, snapshot_lsn: Lsn },
    SeedSchema { sql: Bytes },
    SeedTable { schema: String, name: String, columns: Vec<String> },
    SeedData { bytes: Bytes },
    SeedTableEnd { rows: u64 },
    SeedEnd { tables: u32, rows: u64, bytes: u64 },
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Challenge(_) => "Challenge",
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refuse(_) => "Refuse",
            Message::Error { .. } => "Error",
            Message::Record(_) => "Record",
            Message::LeaderStatus(_) => "LeaderStatus",
            Message::Ack(_) => "Ack",
            Message::SeedRequest => "SeedRequest",
            Message::SeedBegin { .. } => "SeedBegin",
            Message::SeedSchema { .. } => "SeedSchema",
            Message::SeedTable { .. } => "SeedTable",
            Message::SeedData { .. } => "SeedData",
            Message::SeedTableEnd { .. } => "SeedTableEnd",
            Message::SeedEnd { .. } => "SeedEnd",
        }
    }

    /// Appends the body (type and fields, no frame header). On error `buf` may hold part of
    /// the body: [`super::encode_frame`] cuts it back.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Message::Challenge(c) => return encode_challenge(c, buf),
            Message::Hello(h) => return encode_hello(h, buf),
            Message::Welcome(w) => return encode_welcome(w, buf),
            Message::Refuse(r) => encode_refuse(r, buf),
            Message::Error { message } => {
                buf.put_u8(T_ERROR);
                put_text(buf, message);
            }
            Message::Record(r) => return encode_record(r, buf),
            Message::LeaderStatus(s) => encode_status(s, buf),
            Message::Ack(a) => encode_ack(a, buf),
            Message::SeedRequest => buf.put_u8(T_SEED_REQUEST),
            Message::SeedBegin { position, snapshot_lsn } => {
                buf.put_u8(T_SEED_BEGIN);
                put_opt_index(buf, *position);
                buf.put_u64_le(snapshot_lsn.0);
            }
            Message::SeedSchema { sql } => return put_tagged_blob(buf, T_SEED_SCHEMA, "sql", sql),
            Message::SeedTable { schema, name, columns } => return encode_seed_table(schema, name, columns, buf),
            Message::SeedData { bytes } => return put_tagged_blob(buf, T_SEED_DATA, "bytes", bytes),
            Message::SeedTableEnd { rows } => {
                buf.put_u8(T_SEED_TABLE_END);
                buf.put_u64_le(*rows);
            }
            Message::SeedEnd { tables, rows, bytes } => {
                buf.put_u8(T_SEED_END);
                buf.put_u32_le(*tables);
                buf.put_u64_le(*rows);
                buf.put_u64_le(*bytes);
            }
        }
        Ok(())
    }
}

fn encode_challenge(c: &Challenge, buf: &mut BytesMut) -> Result<(), FrameError> {
    buf.put_u8(T_CHALLENGE);
    buf.put_u16_le(c.version);
    put_str(buf, "cluster", &c.cluster)?;
    put_str(buf, "leader_node", &c.leader_node)?;
    buf.put_u64_le(c.term.0);
    buf.put_u8(u8::from(c.is_leader));
    buf.put_slice(&c.nonce);
    Ok(())
}

fn encode_hello(h: &Hello, buf: &mut BytesMut) -> Result<(), FrameError> {
    buf.put_u8(T_HELLO);
    buf.put_u16_le(h.version);
    put_str(buf, "cluster", &h.cluster)?;
    put_str(buf, "node", &h.node)?;
    buf.put_u64_le(h.term.0);
    put_opt_entry(buf, h.flushed);
    buf.put_u8(u8::from(h.seed));
    buf.put_slice(&h.nonce);
    buf.put_slice(&h.proof);
    Ok(())
}

fn encode_welcome(w: &Welcome, buf: &mut BytesMut) -> Result<(), FrameError> {
    buf.put_u8(T_WELCOME);
    buf.put_u64_le(w.term.0);
    put_str(buf, "leader_node", &w.leader_node)?;
    put_opt_index(buf, w.first_index);
    put_opt_index(buf, w.last_index);
    buf.put_slice(&w.proof);
    Ok(())
}

fn encode_refuse(r: &Refuse, buf: &mut BytesMut) {
    buf.put_u8(T_REFUSE);
    buf.put_u8(r.code.to_u8());
    match &r.code {
        RefuseCode::NotRetained { first } => buf.put_u64_le(first.0),
        RefuseCode::Diverged(leader) => {
            let LeaderTerms { terms, last } = leader.as_ref();
            put_opt_index(buf, *last);
            // A term history has one start per promotion: a u16 count is plenty, and bounded.
            let count = terms.len().min(usize::from(u16::MAX));
            buf.put_u16_le(count as u16);
            for start in &terms[..count] {
                buf.put_u64_le(start.term.0);
                buf.put_u64_le(start.first_index.0);
            }
        }
        _ => {}
    }
    put_text(buf, &r.message);
}

fn encode_status(s: &LeaderStatus, buf: &mut BytesMut) {
    buf.put_u8(T_LEADER_STATUS);
    put_opt_index(buf, s.last_index);
    buf.put_u64_le(s.durable_end_lsn.0);
    buf.put_i64_le(s.time_us);
}

fn encode_ack(a: &Ack, buf: &mut BytesMut) {
    buf.put_u8(T_ACK);
    put_opt_entry(buf, a.received);
    put_opt_entry(buf, a.flushed);
    put_opt_entry(buf, a.applied);
    buf.put_u64_le(a.applied_lsn.0);
}

fn encode_record(r: &Record, buf: &mut BytesMut) -> Result<(), FrameError> {
    buf.put_u8(T_RECORD);
    buf.put_u8(match r.kind {
        RecordKind::Chunk => KIND_CHUNK,
        RecordKind::Entry => KIND_ENTRY,
    });
    buf.put_u64_le(r.id.term.0);
    buf.put_u64_le(r.id.index.0);
    put_blob(buf, "payload", &r.payload)
}

fn encode_seed_table(schema: &str, name: &str, columns: &[String], buf: &mut BytesMut) -> Result<(), FrameError> {
    buf.put_u8(T_SEED_TABLE);
    put_str(buf, "schema", schema)?;
    put_str(buf, "name", name)?;
    let count = u16::try_from(columns.len()).map_err(|_| FrameError::FieldTooLong {
        field: "columns",
        len: columns.len(),
        max: usize::from(u16::MAX),
    })?;
    buf.put_u16_le(count);
    for column in columns {
        put_str(buf, "column", column)?;
    }
    Ok(())
}

impl RefuseCode {
    pub(super) fn to_u8(&self) -> u8 {
        match self {
            RefuseCode::WrongCluster => 1,
            RefuseCode::BadProof => 2,
            RefuseCode::UnsupportedVersion => 3,
            RefuseCode::NotLeader => 4,
            RefuseCode::StaleTerm => 5,
            RefuseCode::NotRetained { .. } => 6,
            RefuseCode::Busy => 7,
            RefuseCode::Other => 8,
            RefuseCode::Diverged(_) => 9,
        }
    }
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseCode::WrongCluster => f.write_str("wrong cluster"),
            RefuseCode::BadProof => f.write_str("bad proof"),
            RefuseCode::UnsupportedVersion => f.write_str("unsupported version"),
            RefuseCode::NotLeader => f.write_str("not leader"),
            RefuseCode::StaleTerm => f.write_str("stale term"),
            RefuseCode::NotRetained { first } => write!(f, "not retained (first index {first})"),
            RefuseCode::Busy => f.write_str("busy"),
            RefuseCode::Other => f.write_str("other"),
            RefuseCode::Diverged(_) => f.write_str("diverged"),
        }
    }
}

fn put_str(buf: &mut BytesMut, field: &'static str, s: &str) -> Result<(), FrameError> {
    let len = u16::try_from(s.len()).map_err(|_| FrameError::FieldTooLong {
        field,
        len: s.len(),
        max: usize::from(u16::MAX),
    })?;
    buf.put_u16_le(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

/// Like `put_str`, but cuts a too-long text at a character boundary: for messages to humans.
fn put_text(buf: &mut BytesMut, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let text = s.get(..end).unwrap_or_default();
    buf.put_u16_le(u16::try_from(text.len()).unwrap_or(0));
    buf.put_slice(text.as_bytes());
}

fn put_blob(buf: &mut BytesMut, field: &'static str, b: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(b.len())
        .ok()
        .filter(|&len| len as usize <= super::MAX_FRAME_BYTES)
        .ok_or(FrameError::FieldTooLong { field, len: b.len(), max: super::MAX_FRAME_BYTES })?;
    buf.put_u32_le(len);
    buf.put_slice(b);
    Ok(())
}

fn put_tagged_blob(buf: &mut BytesMut, tag: u8, field: &'static str, b: &[u8]) -> Result<(), FrameError> {
    buf.put_u8(tag);
    put_blob(buf, field, b)
}

fn put_opt_index(buf: &mut BytesMut, index: Option<Index>) {
    match index {
        None => buf.put_u8(0),
        Some(index) => {
            buf.put_u8(1);
            buf.put_u64_le(index.0);
        }
    }
}

fn put_opt_entry(buf: &mut BytesMut, id: Option<EntryId>) {
    match id {
        None => buf.put_u8(0),
        Some(id) => {
            buf.put_u8(1);
            buf.put_u64_le(id.term.0);
            buf.put_u64_le(id.index.0);
        }
    }
}
