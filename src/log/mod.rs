//! The durable, segmented, append-only log of replicated entries.
//!
//! This module is the record layer only: it stores opaque payloads under an [`EntryId`] and
//! knows nothing about what an entry means.
//!
//! # Invariants
//!
//! - Entries are addressed by `(term, index)`. Within a log, `index` grows by exactly one per
//!   entry and `term` never decreases. The first entry of an empty log may have any index >= 1
//!   (a follower seeded from a snapshot starts mid-way).
//! - An entry is written as zero or more `Chunk` records followed by exactly one `Entry`
//!   record, all carrying the entry's id. An entry exists only once its `Entry` record does;
//!   readers never see the chunks of an entry whose closing record is not yet flushed.
//! - Every record carries a CRC-32C of its body. All integers are little-endian.
//! - Records never span segments, and neither do entries: the log rolls to a new segment only
//!   between entries, once the active segment holds `segment_bytes` or more. One huge entry can
//!   therefore make a segment larger than `segment_bytes`; that is allowed.
//! - Only the last segment (the *active* one) is ever appended to. A segment is fsynced in full
//!   when it is sealed, before the next segment is created, so every sealed segment is durable
//!   and ends at an entry boundary. A torn write can only ever be in the last segment.
//! - Nothing is published as flushed (through [`Log::subscribe`]) before it is fsynced, and the
//!   published position always ends at an entry boundary.
//!
//! # Layout
//!
//! The log directory holds one file per segment, named by the index of its first entry:
//! `{first_index:020}.seg` (20 digits, so names sort like indexes). Other files are ignored.
//!
//! ```text
//! segment  = header record*
//! header   = magic "WSHIPLOG" (8 bytes) | version u32 (= 1) | reserved u32           16 bytes
//! record   = body_len u32 | crc u32 | body                                         8 + body_len
//! body     = kind u8 (1 = chunk, 2 = entry) | term u64 | index u64 | payload       17 + payload
//! crc      = CRC-32C (Castagnoli) of body
//! ```
//!
//! The reserved header field is written as 0 and ignored on read. `body_len` is at least 17
//! and at most [`MAX_RECORD_BYTES`] (64 MiB); a decoder checks it before it allocates or reads
//! a body, so the largest payload is [`MAX_PAYLOAD_BYTES`].
//!
//! # Recovery (on [`Log::open`])
//!
//! - Sealed segments are not CRC-scanned at open (that would read the whole log). Their ranges
//!   follow from the file names: a segment holds the entries from its name up to the next
//!   segment's name minus one. Open reads only each sealed segment's header and first record
//!   header, checking the magic, the version, that the first record's index matches the file
//!   name and that terms do not go backwards between segments. Readers verify the CRC of every
//!   record they return and the contiguity of indexes across segments, and report any mismatch
//!   as [`LogError::Corrupt`] with the file and byte offset.
//! - The last segment is scanned in full. A torn tail is cut back to the end of the last
//!   complete `Entry` record, the file is fsynced and a warning names the file and offset. A
//!   torn tail is any of: a partial record header or body at the end of the file, a record
//!   whose length field is out of range, a record whose CRC fails and that is *not* followed by
//!   a valid record, and trailing chunk records without their closing entry record.
//! - A record whose CRC fails but which is followed by a valid record is corruption, not a torn
//!   write, and `open` fails with [`LogError::Corrupt`]. So is a valid record that breaks index
//!   contiguity or term order, and a bad segment header.
//! - A last segment that is shorter than a header, has an all-zero header (created but never
//!   synced), or holds no complete entry once its tail is cut, is deleted, and the segment
//!   before it is recovered as the last one.
//! - After recovery the last segment is fsynced, so everything the log then holds is flushed.
//!
//! # Finding an index
//!
//! The writer keeps a sparse in-memory index per segment it wrote or recovered in this process:
//! one `(entry index, byte offset)` pair at the start of an entry about every
//! [`SPARSE_INDEX_INTERVAL`] bytes. A reader starts at the nearest pair at or before its `from`
//! index (or at the segment start for segments sealed before this process opened the log) and
//! skips earlier records by their headers alone, seeking over their payloads.
//!
//! # Concurrency
//!
//! [`Log`] is the single writer and needs `&mut self` to append. [`LogReader`]s are `Send`,
//! open their own file handles and can run on other threads while the log appends; a live
//! reader learns what it may read from the [`Flushed`] value on a watch channel, so it never
//! reads bytes that are not yet durable.

pub mod committer;
pub mod entry;
mod error;
mod format;
pub mod marks;
mod reader;
mod recovery;
mod segment;
pub mod tail;
pub mod terms;
mod writer;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use error::LogError;
pub use format::{MAX_PAYLOAD_BYTES, MAX_RECORD_BYTES};
pub use reader::LogReader;
pub use writer::Log;

use crate::lsn::{EntryId, Index};

/// Default for [`LogOptions::segment_bytes`].
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes between two points of a segment's sparse in-memory index.
#[cfg(not(test))]
pub const SPARSE_INDEX_INTERVAL: u64 = 1 << 20;
/// Small in tests, so that small logs exercise the sparse index.
#[cfg(test)]
pub const SPARSE_INDEX_INTERVAL: u64 = 256;
/// Capacity of the writer's buffer: records are written out in pieces this large.
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Capacity of a reader's buffer.
pub const READ_BUFFER_BYTES: usize = 256 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// The log rolls to a new segment at the first entry boundary at or past this size.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_bytes: DEFAULT_SEGMENT_BYTES }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A part of an entry's body; more records of the same entry follow.
    Chunk,
    /// The record that completes an entry.
    Entry,
}

/// One record as a reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub id: EntryId,
    pub payload: bytes::Bytes,
}

/// What is durable: published on the watch channel after every fsync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flushed {
    /// The last complete entry that is fsynced.
    pub last: Option<EntryId>,
    /// Segment (by first index) in which the durable entries end; `Index(0)` when none.
    segment: Index,
    /// Byte offset in `segment` just past the last durable entry record.
    offset: u64,
    /// Bumped by every truncation, which invalidates live readers opened before it.
    epoch: u64,
}

impl Flushed {
    fn empty(epoch: u64) -> Flushed {
        Flushed { last: None, segment: Index(0), offset: 0, epoch }
    }
}
