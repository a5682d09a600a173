//! Recovery at open: a full scan of the last segment with torn-tail repair, and a cheap check
//! of the sealed segments' headers.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::Path;

use tracing::warn;

use crate::lsn::{EntryId, Index, Term};

use super::error::LogError;
use super::format::{self, SeqCheck, BODY_PREFIX_LEN, HEAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment::{self, Segment, SegmentFile};
use super::RecordKind;

/// The result of scanning one segment in full.
#[derive(Debug)]
pub(crate) struct Scan {
    pub file_len: u64,
    /// Offset just past the last complete entry record (the header's end when there is none).
    pub end: u64,
    pub first_term: Option<Term>,
    pub last_entry: Option<EntryId>,
    /// Where the bytes after `end` stop being valid, and why; `None` if `end == file_len`.
    pub tail: Option<(u64, String)>,
    pub sparse: Vec<(Index, u64)>,
}

#[derive(Debug)]
pub(crate) enum ScanOutcome {
    /// The segment was created but its header never made it to disk.
    Unwritten(String),
    Scanned(Scan),
}

/// One record as the tolerant scanner sees it.
enum Parsed {
    End,
    Valid {
        kind: RecordKind,
        id: EntryId,
        start: u64,
        end: u64,
    },
    Invalid {
        start: u64,
        reason: String,
        /// Where the next record would start, if the length field was plausible.
        next: Option<u64>,
    },
}

/// Scans a segment, checking every CRC. Torn data is reported in `Scan::tail`; corruption
/// (a bad header, an invalid record followed by a valid one, a valid record out of order) is
/// an error.
pub(crate) fn scan_segment(path: &Path, first: Index) -> Result<ScanOutcome, LogError> {
    let mut file = SegmentFile::open(path, 0)?;
    let len = file.file_len()?;
    if len < SEGMENT_HEADER_LEN {
        return Ok(ScanOutcome::Unwritten(format!("file of {len} bytes is shorter than a segment header")));
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact(&mut header, len)?;
    if header.iter().all(|&b| b == 0) {
        return Ok(ScanOutcome::Unwritten("segment header is all zeros".to_owned()));
    }
    format::check_segment_header(&header).map_err(|reason| LogError::corrupt(path, 0, reason))?;
    let mut scan = Scan {
        file_len: len,
        end: SEGMENT_HEADER_LEN,
        first_term: None,
        last_entry: None,
        tail: None,
        sparse: Vec::new(),
    };
    scan_records(&mut file, first, &mut scan)?;
    if scan.tail.is_none() && scan.end < len {
        scan.tail = Some((scan.end, "chunk records without a closing entry record".to_owned()));
    }
    let end = scan.end;
    scan.sparse.retain(|&(_, offset)| offset < end);
    Ok(ScanOutcome::Scanned(scan))
}

fn scan_records(file: &mut SegmentFile, first: Index, scan: &mut Scan) -> Result<(), LogError> {
    let mut seq = SeqCheck::new(first);
    let mut body = Vec::new();
    let mut segment = Segment { first, path: file.path().to_path_buf(), len: 0, sparse: Vec::new() };
    loop {
        match parse_record(file, scan.file_len, &mut body)? {
            Parsed::End => break,
            Parsed::Valid { kind, id, start, end } => {
                if seq.open_entry().is_none() {
                    segment.note_entry_start(id.index, start);
                }
                seq.accept(kind, id).map_err(|reason| LogError::corrupt(file.path(), start, reason))?;
                scan.first_term.get_or_insert(id.term);
                if kind == RecordKind::Entry {
                    scan.end = end;
                    scan.last_entry = Some(id);
                }
            }
            Parsed::Invalid { start, reason, next } => {
                check_nothing_valid_after(file, scan.file_len, &mut body, start, &reason, next)?;
                scan.tail = Some((start, reason));
                break;
            }
        }
    }
    scan.sparse = segment.sparse;
    Ok(())
}

/// An invalid record is a torn write only if no valid record follows it.
fn check_nothing_valid_after(
    file: &mut SegmentFile,
    len: u64,
    body: &mut Vec<u8>,
    start: u64,
    reason: &str,
    next: Option<u64>,
) -> Result<(), LogError> {
    if next.is_some_and(|next| next < len) {
        if let Parsed::Valid { start: valid, .. } = parse_record(file, len, body)? {
            let reason = format!("{reason}, but a valid record follows at offset {valid}");
            return Err(LogError::corrupt(file.path(), start, reason));
        }
    }
    Ok(())
}

/// Reads the record at the file's position, never past `len`, classifying damage.
fn parse_record(file: &mut SegmentFile, len: u64, body: &mut Vec<u8>) -> Result<Parsed, LogError> {
    let start = file.offset();
    if start >= len {
        return Ok(Parsed::End);
    }
    let invalid = |reason: String, next| Ok(Parsed::Invalid { start, reason, next });
    if len - start < RECORD_HEADER_LEN {
        return invalid("partial record header".to_owned(), None);
    }
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact(&mut header, len)?;
    let (body_len, crc) = match format::decode_record_header(header) {
        Ok(decoded) => decoded,
        Err(reason) => return invalid(reason, None),
    };
    let end = start + RECORD_HEADER_LEN + u64::from(body_len);
    if end > len {
        return invalid(format!("partial record: {body_len}-byte body runs past the file's end {len}"), None);
    }
    body.resize(body_len as usize, 0);
    file.read_exact(body, len)?;
    if crc32c::crc32c(body) != crc {
        return invalid("record checksum mismatch".to_owned(), Some(end));
    }
    let prefix = body
        .get(..BODY_PREFIX_LEN)
        .and_then(|p| <[u8; BODY_PREFIX_LEN]>::try_from(p).ok())
        .ok_or_else(|| LogError::corrupt(file.path(), start, "record body shorter than its prefix"))?;
    let (kind, id) = format::decode_prefix(&prefix).map_err(|r| LogError::corrupt(file.path(), start, r))?;
    Ok(Parsed::Valid { kind, id, start, end })
}

/// The segments of a recovered log.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub sealed: VecDeque<Segment>,
    /// The last segment and the last complete entry in it.
    pub last: Option<(Segment, EntryId)>,
}

/// Recovers the log in `dir`: repairs the last segment's tail, checks the others cheaply.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, LogError> {
    let mut firsts = segment::list_segments(dir)?;
    let (last, last_id, last_term) = loop {
        let Some(&first) = firsts.last() else {
            return Ok(Recovered::default());
        };
        let path = segment::segment_path(dir, first);
        match scan_segment(&path, first)? {
            ScanOutcome::Scanned(scan) => match (scan.last_entry, scan.first_term) {
                (Some(id), Some(term)) => break (repair_tail(&path, first, scan)?, id, term),
                _ => discard_segment(dir, &path, "holds no complete entry")?,
            },
            ScanOutcome::Unwritten(reason) => discard_segment(dir, &path, &reason)?,
        }
        firsts.pop();
    };
    let sealed_firsts = firsts.get(..firsts.len().saturating_sub(1)).unwrap_or_default();
    let sealed = check_sealed_segments(dir, sealed_firsts, &last, last_term)?;
    Ok(Recovered { sealed, last: Some((last, last_id)) })
}

/// Cuts a torn tail off and fsyncs the segment, so that all it holds is durable.
fn repair_tail(path: &Path, first: Index, scan: Scan) -> Result<Segment, LogError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| LogError::io("open", path, e))?;
    if let Some((offset, reason)) = &scan.tail {
        warn!(
            path = %path.display(),
            offset = scan.end,
            damage_offset = offset,
            reason = %reason,
            "truncating torn tail of log segment"
        );
        file.set_len(scan.end).map_err(|e| LogError::io_at("truncate", path, scan.end, e))?;
    }
    // sync_all, not sync_data: a cut tail changes the file size, which must be durable too.
    file.sync_all().map_err(|e| LogError::io("fsync", path, e))?;
    Ok(Segment { first, path: path.to_path_buf(), len: scan.end, sparse: scan.sparse })
}

fn discard_segment(dir: &Path, path: &Path, reason: &str) -> Result<(), LogError> {
    warn!(path = %path.display(), offset = 0, reason, "removing unfinished last log segment");
    segment::remove_segment(path)?;
    segment::sync_dir(dir)
}

fn check_sealed_segments(
    dir: &Path,
    firsts: &[Index],
    last: &Segment,
    last_term: Term,
) -> Result<VecDeque<Segment>, LogError> {
    let mut sealed = VecDeque::with_capacity(firsts.len());
    let mut prev_term = Term(0);
    for &first in firsts {
        let (segment, term) = check_sealed(&segment::segment_path(dir, first), first)?;
        if term < prev_term {
            let reason = format!("first entry has term {term}, below the previous segment's {prev_term}");
            return Err(LogError::corrupt(&segment.path, SEGMENT_HEADER_LEN, reason));
        }
        prev_term = term;
        sealed.push_back(segment);
    }
    if last_term < prev_term {
        let reason = format!("first entry has term {last_term}, below the previous segment's {prev_term}");
        return Err(LogError::corrupt(&last.path, SEGMENT_HEADER_LEN, reason));
    }
    Ok(sealed)
}

/// Reads a sealed segment's header and first record header: no CRC, no full scan.
fn check_sealed(path: &Path, first: Index) -> Result<(Segment, Term), LogError> {
    let mut file = SegmentFile::with_capacity(path, 0, SEGMENT_HEADER_LEN as usize + HEAD_LEN)?;
    let len = file.file_len()?;
    if len < SEGMENT_HEADER_LEN + HEAD_LEN as u64 {
        let reason = format!("sealed segment of {len} bytes is too short to hold a record");
        return Err(LogError::corrupt(path, 0, reason));
    }
    file.read_segment_header(len)?;
    let head = file
        .read_head(len)?
        .ok_or_else(|| LogError::corrupt(path, SEGMENT_HEADER_LEN, "sealed segment holds no record"))?;
    if head.id.index != first {
        let reason = format!("first record is of entry {} but the file is named for {first}", head.id);
        return Err(LogError::corrupt(path, SEGMENT_HEADER_LEN, reason));
    }
    let segment = Segment { first, path: path.to_path_buf(), len, sparse: Vec::new() };
    Ok((segment, head.id.term))
}

/// What a reader without a writer may read: everything up to the last complete entry.
#[derive(Debug)]
pub(crate) struct OfflineView {
    pub first: Index,
    pub last: EntryId,
    /// Segment and offset where the last complete entry ends.
    pub end_segment: Index,
    pub end_offset: u64,
}

/// Scans the last segment (without repairing it) to find where complete entries end.
pub(crate) fn offline_view(dir: &Path) -> Result<Option<OfflineView>, LogError> {
    let mut firsts = segment::list_segments(dir)?;
    while let Some(&last) = firsts.last() {
        let first = firsts.first().copied().unwrap_or(last);
        if let ScanOutcome::Scanned(scan) = scan_segment(&segment::segment_path(dir, last), last)? {
            if let Some(id) = scan.last_entry {
                return Ok(Some(OfflineView { first, last: id, end_segment: last, end_offset: scan.end }));
            }
        }
        firsts.pop();
    }
    Ok(None)
}
