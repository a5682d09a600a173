//! Segment files: names, directory operations, and a buffered reader that never reads past a
//! bound (so a reader never even sees bytes that are not yet durable).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::lsn::Index;

use super::error::LogError;
use super::format::{self, Head, HEAD_LEN, SEGMENT_HEADER_LEN};
use super::READ_BUFFER_BYTES;

const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_NAME_DIGITS: usize = 20;

pub(crate) fn segment_path(dir: &Path, first: Index) -> PathBuf {
    dir.join(format!("{:020}{SEGMENT_SUFFIX}", first.0))
}

/// The first index a segment file name stands for; `None` for files that are not segments.
pub(crate) fn parse_segment_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Index)
}

/// The first indexes of the segments in `dir`, in order.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<Index>, LogError> {
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    let mut firsts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        if first.0 == 0 {
            return Err(LogError::corrupt(&entry.path(), 0, "segment named for index 0"));
        }
        firsts.push(first);
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Makes creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let handle = File::open(dir).map_err(|e| LogError::io("open directory", dir, e))?;
    handle.sync_all().map_err(|e| LogError::io("fsync directory", dir, e))
}

/// Removes a segment file; one that is already gone counts as removed.
pub(crate) fn remove_segment(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", path, e)),
    }
}

/// A buffered reader over one segment file. Every read takes a `limit`, a file offset it never
/// reads at or past; callers check that what they ask for lies below it.
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: File,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// File offset of `buf[filled]`: where the next read from the file starts.
    file_pos: u64,
}

impl SegmentFile {
    pub fn open(path: &Path, offset: u64) -> Result<SegmentFile, LogError> {
        SegmentFile::with_capacity(path, offset, READ_BUFFER_BYTES)
    }

    /// A reader with a smaller buffer, for a look at a few bytes.
    pub fn with_capacity(path: &Path, offset: u64, capacity: usize) -> Result<SegmentFile, LogError> {
        let mut file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
        if offset != 0 {
            file.seek(SeekFrom::Start(offset)).map_err(|e| LogError::io_at("seek", path, offset, e))?;
        }
        Ok(SegmentFile {
            path: path.to_path_buf(),
            file,
            buf: vec![0u8; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            filled: 0,
            file_pos: offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the next byte this reader returns.
    pub fn offset(&self) -> u64 {
        self.file_pos - (self.filled - self.pos) as u64
    }

    pub fn file_len(&self) -> Result<u64, LogError> {
        let meta = self.file.metadata().map_err(|e| LogError::io("stat", &self.path, e))?;
        Ok(meta.len())
    }

    /// Reads and checks the segment header; the reader must be at offset 0.
    pub fn read_segment_header(&mut self, limit: u64) -> Result<(), LogError> {
        let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
        self.read_exact(&mut buf, limit)?;
        format::check_segment_header(&buf).map_err(|reason| LogError::corrupt(&self.path, 0, reason))
    }

    /// Fills `out` from the file; the caller has checked that `offset() + out.len() <= limit`.
    /// Hitting the end of the file first means the file is shorter than its bound: corruption.
    pub fn read_exact(&mut self, out: &mut [u8], limit: u64) -> Result<(), LogError> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.filled {
                let rest = &mut out[done..];
                if rest.len() >= self.buf.len() {
                    return self.read_direct(rest);
                }
                self.fill(limit)?;
            }
            let n = (self.filled - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    /// Moves `n` bytes forward without reading them.
    pub fn skip(&mut self, n: u64) -> Result<(), LogError> {
        let buffered = (self.filled - self.pos) as u64;
        if n <= buffered {
            self.pos += n as usize;
            return Ok(());
        }
        let target = self.offset() + n;
        self.file.seek(SeekFrom::Start(target)).map_err(|e| LogError::io_at("seek", &self.path, target, e))?;
        self.file_pos = target;
        self.pos = 0;
        self.filled = 0;
        Ok(())
    }

    /// Reads the next record's header and body prefix, strictly: `Ok(None)` exactly at
    /// `limit`, and anything malformed or crossing `limit` is corruption.
    pub fn read_head(&mut self, limit: u64) -> Result<Option<Head>, LogError> {
        let start = self.offset();
        if start == limit {
            return Ok(None);
        }
        if start > limit || limit - start < HEAD_LEN as u64 {
            let reason = format!("record at offset {start} crosses the segment's end {limit}");
            return Err(LogError::corrupt(&self.path, start, reason));
        }
        let mut buf = [0u8; HEAD_LEN];
        self.read_exact(&mut buf, limit)?;
        let head = format::decode_head(start, &buf).map_err(|r| LogError::corrupt(&self.path, start, r))?;
        if head.end() > limit {
            let reason = format!("record of {} bytes crosses the segment's end {limit}", head.body_len);
            return Err(LogError::corrupt(&self.path, start, reason));
        }
        Ok(Some(head))
    }

    /// Reads the payload of the record whose head was just read and checks its CRC.
    pub fn read_payload(&mut self, head: &Head) -> Result<Bytes, LogError> {
        let mut payload = vec![0u8; head.payload_len()];
        self.read_exact(&mut payload, head.end())?;
        if format::body_crc(&head.prefix, &payload) != head.crc {
            return Err(LogError::corrupt(&self.path, head.start, "record checksum mismatch"));
        }
        Ok(Bytes::from(payload))
    }

    /// Skips the payload of the record whose head was just read, without checking it.
    pub fn skip_payload(&mut self, head: &Head) -> Result<(), LogError> {
        self.skip(head.payload_len() as u64)
    }

    fn fill(&mut self, limit: u64) -> Result<(), LogError> {
        let want = limit.saturating_sub(self.file_pos).min(self.buf.len() as u64) as usize;
        if want == 0 {
            return Err(self.short_file());
        }
        let n = loop {
            match self.file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(self.short_file()),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LogError::io_at("read", &self.path, self.file_pos, e)),
            }
        };
        self.pos = 0;
        self.filled = n;
        self.file_pos += n as u64;
        Ok(())
    }

    fn read_direct(&mut self, out: &mut [u8]) -> Result<(), LogError> {
        match self.file.read_exact(out) {
            Ok(()) => {
                self.file_pos += out.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.short_file()),
            Err(e) => Err(LogError::io_at("read", &self.path, self.file_pos, e)),
        }
    }

    fn short_file(&self) -> LogError {
        LogError::corrupt(&self.path, self.file_pos, "segment file ends before its expected end")
    }
}

/// What the writer knows about one segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first: Index,
    pub path: PathBuf,
    /// Bytes in the segment, including any still in the writer's buffer.
    pub len: u64,
    /// Sparse index: `(entry index, offset of the entry's first record)`, in order. Empty for
    /// segments sealed before this process opened the log.
    pub sparse: Vec<(Index, u64)>,
}

impl Segment {
    /// Where a reader looking for `from` starts: the index of the entry that starts there and
    /// the byte offset.
    pub fn start_point(&self, from: Index) -> (Index, u64) {
        let at = self.sparse.partition_point(|&(index, _)| index <= from);
        match at.checked_sub(1).and_then(|i| self.sparse.get(i)) {
            Some(&point) => point,
            None => (self.first, SEGMENT_HEADER_LEN),
        }
    }

    /// Notes that an entry starts at `offset`, if it is far enough from the last point.
    pub fn note_entry_start(&mut self, index: Index, offset: u64) {
        let due = match self.sparse.last() {
            Some(&(_, last)) => offset.saturating_sub(last) >= super::SPARSE_INDEX_INTERVAL,
            None => true,
        };
        if due {
            self.sparse.push((index, offset));
        }
    }
}
