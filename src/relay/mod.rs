//! The relay protocol between sidecars: the leader serves its durable log to followers over TCP.
//!
//! This module is the protocol only: the wire format ([`Message`], a total decoder), the
//! handshake as two state machines without I/O ([`LeaderHandshake`], [`FollowerHandshake`]) and
//! a framed reader and writer over any byte stream ([`FrameReader`], [`FrameWriter`]). The
//! server and client tasks live elsewhere and drive these.
//!
//! # Framing
//!
//! ```text
//! frame = body_len u32 | crc u32 | body                 8 + body_len bytes
//! body  = type u8 | fields                              1 ..= MAX_FRAME_BYTES bytes
//! crc   = CRC-32C (Castagnoli) of body
//! ```
//!
//! All integers are little-endian. `body_len` is checked against [`MAX_FRAME_BYTES`]
//! (`MAX_RECORD_BYTES` + 4 KiB, so any log record fits) as soon as the 8-byte header is in,
//! before anything is buffered for the body; a zero `body_len` is invalid too. A bad length or
//! CRC ends the connection. A reader may lower the limit, for instance to
//! [`HANDSHAKE_MAX_FRAME_BYTES`] until the peer has proved it knows the token. Field types:
//!
//! ```text
//! str        = len u16 | UTF-8 bytes                  names, messages
//! blob       = len u32 | bytes                        payloads, SQL, COPY data
//! opt_index  = 0u8 | 1u8 index u64                    absent / present
//! opt_entry  = 0u8 | 1u8 term u64 index u64
//! bool       = 0u8 | 1u8                              other values are invalid
//! nonce, mac = 32 bytes
//! ```
//!
//! A body must be consumed exactly: trailing bytes, unknown types, unknown enum values, invalid
//! UTF-8 and out-of-range flags are errors. Human-readable messages (`Refuse`, `Error`) longer
//! than a `str` holds are cut at a character boundary when encoded; names are never cut (encoding
//! fails instead).
//!
//! # Messages
//!
//! ```text
//! type  message       direction   fields
//!  1    Challenge     L -> F      version u16 | cluster str | leader_node str | term u64
//!                                 | is_leader bool | nonce
//!  2    Hello         F -> L      version u16 | cluster str | node str | term u64
//!                                 | flushed opt_entry | seed bool | nonce | proof mac
//!  3    Welcome       L -> F      term u64 | leader_node str | first_index opt_index
//!                                 | last_index opt_index | proof mac
//!  4    Refuse        L -> F      code u8 | [first_index u64, only for code 6]
//!                                 | [last_index opt_index | count u16 | (term u64 | first_index
//!                                 u64)*, only for code 9: the leader's term history] | message str
//!  5    Error         either      message str
//! 10    Record        L -> F      kind u8 (1 chunk, 2 entry) | term u64 | index u64 | payload blob
//! 11    LeaderStatus  L -> F      last_index opt_index | durable_end_lsn u64 | time_us i64
//! 12    Ack           F -> L      received opt_entry | flushed opt_entry | applied opt_entry
//!                                 | applied_lsn u64
//! 20    SeedRequest   F -> L      (no fields)
//! 21    SeedBegin     L -> F      position opt_index | snapshot_lsn u64
//! 22    SeedSchema    L -> F      sql blob
//! 23    SeedTable     L -> F      schema str | name str | column count u16 | column str*
//! 24    SeedData      L -> F      bytes blob (COPY text rows, pieces of SEED_DATA_PIECE_BYTES)
//! 25    SeedTableEnd  L -> F      rows u64
//! 26    SeedEnd       L -> F      tables u32 | rows u64 | bytes u64
//! ```
//!
//! Refuse codes: 1 wrong cluster, 2 bad proof, 3 unsupported version, 4 not leader, 5 stale
//! term (the follower knows a newer term: this leader is old), 6 not retained (followed by the
//! leader's first retained index: the follower must be re-seeded), 7 busy, 8 other.
//!
//! `time_us` is microseconds since the Unix epoch on the leader's clock. A `Record` is exactly
//! one log record ([`crate::log::Record`]): entries arrive as their chunks then their entry
//! record, in log order.
//!
//! # Handshake
//!
//! Both sides prove they know the shared token (`token_file`) without sending it: each sends a
//! fresh random 32-byte nonce and answers the other's with an HMAC-SHA256 keyed by the token.
//!
//! ```text
//! L -> F  Challenge  as soon as the follower connects
//! F -> L  Hello      proof = HMAC(token, "walship-follower" | leader nonce | follower nonce
//!                                        | cluster | follower node)
//! L -> F  Welcome    proof = HMAC(token, "walship-leader" | follower nonce | leader nonce
//!                                        | cluster | leader node)
//!    or   Refuse     then the leader closes
//! ```
//!
//! Every field of a MAC input is preceded by its length as a u64 (little-endian), so bytes can
//! not be shifted from one field to the next; the different labels keep a proof of one side
//! from being replayed as the other's. MACs are compared in constant time.
//!
//! The follower answers a `Challenge` only if the protocol version is its own, the cluster is
//! its own, the sender says it leads, and the sender's term is not older than the follower's
//! own term; otherwise it sends `Error` and closes. It accepts a `Welcome` only with the right
//! proof, the leader node and term of the challenge.
//!
//! The leader checks a `Hello` in this order and refuses with the first failing reason: the
//! version, the cluster, the proof, the term (the follower's term, or the term of its flushed
//! entry, newer than the leader's: `StaleTerm`), that this node leads (`NotLeader`), and
//! retention: the follower's next index (`flushed + 1`, or 1 when it has none) must be at or
//! after the leader's first retained index, unless the follower set `seed`, asking for a
//! snapshot (`NotRetained`).
//!
//! # After the handshake
//!
//! Streaming: the leader sends `Record`s from the follower's next index on, and a
//! `LeaderStatus` periodically and whenever it is idle, so a follower always learns where the
//! leader's log ends. The follower sends `Ack`s with what it holds in memory, has fsynced and
//! has applied; it never acknowledges an entry as flushed before it is fsynced, and sends one
//! at least every [`ACK_INTERVAL`] even when nothing changed.
//!
//! Liveness: each side closes the connection when it has heard nothing from the other for the
//! relay timeout (`relay.timeout`, [`DEFAULT_RELAY_TIMEOUT`]), or when a write to it does not
//! complete in that time; the leader's statuses and the follower's acks keep a healthy link
//! busy. TCP keepalive is on as well (see [`set_keepalive`]). A follower host that dies
//! without closing its sockets therefore shows disconnected within the timeout.
//!
//! Seeding: a follower that set `seed` in its `Hello` sends `SeedRequest` as its first message.
//! The leader answers `SeedBegin`, `SeedSchema`, then per table `SeedTable`, `SeedData`*,
//! `SeedTableEnd`, and finally `SeedEnd` with totals the follower checks; it then streams
//! `Record`s from the entry after `SeedBegin.position`.
//!
//! Either side may send `Error` with a reason and close.
//!
//! # Versioning
//!
//! [`PROTOCOL_VERSION`] is 1. The frame header, the type byte and the leading `version` field of
//! `Challenge` and `Hello`, and the layouts of `Refuse` and `Error` never change, so that a node
//! can always tell a peer of another version that it does not speak its version. Any other
//! change to a message's layout or meaning takes a new version; version 1 nodes refuse all other
//! versions.
//!
//! # Security
//!
//! The handshake authenticates the peers, not the stream: frames after it carry no MAC.
//! Across untrusted networks, run the relay inside TLS or a VPN.

pub mod client;
mod codec;
mod decode;
mod error;
mod framed;
mod handshake;
mod message;
pub mod progress;
pub mod retention;
pub mod server;

#[cfg(test)]
pub(crate) mod codec_tests;

pub use codec::encode_frame;
pub use error::{FrameError, HandshakeError};
pub use framed::{FrameReader, FrameWriter};
pub use handshake::{Accepted, FollowerHandshake, LeaderHandshake, LogRange, Refused, Session, StreamStart};
pub use message::{Ack, Challenge, Hello, LeaderStatus, LeaderTerms, Message, Refuse, RefuseCode, Welcome};

use std::time::Duration;

use crate::log::MAX_RECORD_BYTES;
use crate::lsn::Term;

/// Version of this protocol, sent in `Challenge` and `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;
/// How long either side waits without hearing from the other (`relay.timeout` by default).
/// What a node's relay answers: as the leader of `term`, or as a node that does not lead
/// (its challenge says so, and a hello is refused with `NotLeader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub term: Term,
    pub leading: bool,
    /// Who leads when this node does not, if it knows.
    pub leader: Option<(String, Term)>,
}

pub const DEFAULT_RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// A follower acknowledges at least this often, changed or not.
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// A follower acknowledges a new `flushed` position at once (a committing client may wait for
/// it); news of `received` or `applied` alone waits this long, so that it usually rides on
/// the next `flushed` ack instead of costing the leader a message and a wake-up of its own.
pub const ACK_COALESCE: Duration = Duration::from_millis(1);

/// Turns TCP keepalive on for a relay socket, probing after a third of `timeout` idle, so the
/// kernel also gives up on a peer that vanished. Best effort: a socket that refuses keeps the
/// relay's own timeout.
pub fn set_keepalive(stream: &tokio::net::TcpStream, timeout: Duration) {
    let idle = (timeout / 3).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle).with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot turn on TCP keepalive");
    }
}
/// Largest frame body accepted or sent, checked before a body is buffered.
pub const MAX_FRAME_BYTES: usize = MAX_RECORD_BYTES + (4 << 10);
/// A limit for frames from a peer that is not authenticated yet: handshake messages are small.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 64 << 10;
/// The frame header: `body_len` and `crc`.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Bytes asked of the stream per read.
pub const READ_CHUNK_BYTES: usize = 256 << 10;
/// A writer's buffer is dropped and reallocated at this size after a flush, so that one huge
/// frame does not pin its memory for the connection's life.
pub const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;
/// Suggested size of one `SeedData` piece, well under the frame limit.
pub const SEED_DATA_PIECE_BYTES: usize = 1 << 20;
/// Length of a handshake nonce and of a proof.
pub const NONCE_BYTES: usize = 32;

/// A handshake nonce: 32 random bytes, fresh for every connection.
pub type Nonce = [u8; NONCE_BYTES];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; NONCE_BYTES];
