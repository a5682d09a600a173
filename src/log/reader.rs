//! Readers: record by record, every CRC checked, never past what is flushed (live) or past
//! the last complete entry on disk (offline).

use std::io;
use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::lsn::Index;

use super::error::LogError;
use super::format::{self, Head, SeqCheck, SEGMENT_HEADER_LEN};
use super::recovery;
use super::segment::{self, SegmentFile};
use super::{Flushed, Record};

/// Reads the log from an index onwards. `Send`: it opens its own files and can run on another
/// thread while the [`super::Log`] appends.
///
/// A live reader returns `Ok(None)` when it has caught up with what is flushed. To wait for
/// more, await `changed()` on a receiver from [`LogReader::wait_handle`] (taken once, or after
/// each `Ok(None)`), then call [`LogReader::next`] again; no wake-up is lost that way.
pub struct LogReader {
    dir: PathBuf,
    /// Records of entries below this index are skipped.
    from: Index,
    bound: Bound,
    position: Position,
    /// Order check over every record passed, read or skipped.
    seq: SeqCheck,
}

enum Bound {
    /// What the writer has published as flushed, and the truncation epoch we started in.
    Live { rx: watch::Receiver<Flushed>, epoch: u64 },
    /// The end of the last complete entry on disk when the offline reader opened.
    Fixed(Flushed),
}

enum Position {
    /// Not in a segment yet: find the one holding `from` once the log has entries.
    Unlocated,
    In(Current),
    /// Past the end of a sealed segment; the next segment is named `seq.next_index()`.
    Between {
        prev: PathBuf,
        prev_end: u64,
    },
}

struct Current {
    first: Index,
    file: SegmentFile,
    /// The file's length, once the segment is known to be sealed.
    sealed_len: Option<u64>,
}

enum Step {
    Yield(Record),
    CaughtUp,
    Continue,
}

impl LogReader {
    /// A reader of a log that no writer has open (for `walship inspect`): it reads up to the
    /// last complete entry on disk and stops quietly at a torn tail, which it leaves in place.
    pub fn open_offline(dir: &Path, from: Index) -> Result<LogReader, LogError> {
        let Some(view) = recovery::offline_view(dir)? else {
            return Ok(LogReader::new(dir, from, Bound::Fixed(Flushed::empty(0))));
        };
        if from < view.first {
            return Err(LogError::Compacted { requested: from, first: view.first });
        }
        let next = format::successor(view.last.index).ok_or(LogError::IndexOutOfRange(view.last.index))?;
        if from > next {
            return Err(LogError::BeyondEnd { requested: from, next });
        }
        let bound = Flushed { last: Some(view.last), segment: view.end_segment, offset: view.end_offset, epoch: 0 };
        Ok(LogReader::new(dir, from, Bound::Fixed(bound)))
    }

    /// A live reader that finds its segment once the log has entries.
    pub(crate) fn live_unpositioned(dir: &Path, from: Index, rx: watch::Receiver<Flushed>) -> LogReader {
        let epoch = rx.borrow().epoch;
        LogReader::new(dir, from, Bound::Live { rx, epoch })
    }

    /// A live reader positioned in segment `first` at `file`'s offset, where entry `start`
    /// begins.
    pub(crate) fn live(
        dir: &Path,
        from: Index,
        rx: watch::Receiver<Flushed>,
        (first, file): (Index, SegmentFile),
        start: Index,
    ) -> LogReader {
        let mut reader = LogReader::live_unpositioned(dir, from, rx);
        reader.position = Position::In(Current { first, file, sealed_len: None });
        reader.seq = SeqCheck::new(start);
        reader
    }

    fn new(dir: &Path, from: Index, bound: Bound) -> LogReader {
        LogReader { dir: dir.to_path_buf(), from, bound, position: Position::Unlocated, seq: SeqCheck::new(from) }
    }

    /// The next record of a complete, flushed entry; `Ok(None)` when caught up.
    // Not `Iterator`: it is fallible, and a live reader goes on after `Ok(None)`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>, LogError> {
        let bound = self.current_bound()?;
        loop {
            match self.step(&bound)? {
                Step::Yield(record) => return Ok(Some(record)),
                Step::CaughtUp => return Ok(None),
                Step::Continue => {}
            }
        }
    }

    /// For a live reader, a receiver that changes whenever more is flushed.
    pub fn wait_handle(&self) -> Option<watch::Receiver<Flushed>> {
        match &self.bound {
            Bound::Live { rx, .. } => Some(rx.clone()),
            Bound::Fixed(_) => None,
        }
    }

    fn current_bound(&mut self) -> Result<Flushed, LogError> {
        match &mut self.bound {
            Bound::Live { rx, epoch } => {
                let flushed = rx.borrow_and_update().clone();
                if flushed.epoch != *epoch {
                    return Err(LogError::ReaderInvalidated);
                }
                Ok(flushed)
            }
            Bound::Fixed(flushed) => Ok(flushed.clone()),
        }
    }

    fn step(&mut self, bound: &Flushed) -> Result<Step, LogError> {
        let cur = match &mut self.position {
            Position::Unlocated => return self.locate(bound),
            Position::Between { .. } => return self.enter_next_segment(),
            Position::In(cur) => cur,
        };
        let Some(limit) = cur.limit(bound)? else {
            return Ok(Step::CaughtUp);
        };
        let Some(head) = cur.file.read_head(limit)? else {
            if cur.first < bound.segment {
                return self.leave_segment();
            }
            return Ok(Step::CaughtUp);
        };
        if head.id.index < self.from {
            self.seq
                .accept(head.kind, head.id)
                .map_err(|reason| LogError::corrupt(cur.file.path(), head.start, reason))?;
            cur.file.skip_payload(&head)?;
            return Ok(Step::Continue);
        }
        let payload = cur.file.read_payload(&head)?;
        self.seq.accept(head.kind, head.id).map_err(|reason| LogError::corrupt(cur.file.path(), head.start, reason))?;
        Ok(Step::Yield(record(&head, payload)))
    }

    /// Finds the segment holding `from` by listing the directory.
    fn locate(&mut self, bound: &Flushed) -> Result<Step, LogError> {
        if bound.last.is_none() {
            return Ok(Step::CaughtUp);
        }
        let firsts = segment::list_segments(&self.dir)?;
        let Some(&first) = firsts.first() else {
            return Err(LogError::corrupt(&self.dir, 0, "log directory holds no segment"));
        };
        let Some(&holder) = firsts.iter().rev().find(|&&f| f <= self.from) else {
            return Err(LogError::Compacted { requested: self.from, first });
        };
        self.position = Position::In(Current::open(&segment::segment_path(&self.dir, holder), holder)?);
        self.seq = SeqCheck::new(holder);
        Ok(Step::Continue)
    }

    fn leave_segment(&mut self) -> Result<Step, LogError> {
        let Position::In(cur) = &self.position else {
            return Ok(Step::Continue);
        };
        let (path, end) = (cur.file.path().to_path_buf(), cur.file.offset());
        if let Some(open) = self.seq.open_entry() {
            let reason = format!("sealed segment ends inside entry {open}");
            return Err(LogError::corrupt(&path, end, reason));
        }
        if self.seq.next_index() <= cur.first {
            // Also what keeps a reader from entering the same segment again and again.
            let reason = "sealed segment holds no complete entry";
            return Err(LogError::corrupt(&path, end, reason));
        }
        self.position = Position::Between { prev: path, prev_end: end };
        Ok(Step::Continue)
    }

    fn enter_next_segment(&mut self) -> Result<Step, LogError> {
        let next = self.seq.next_index();
        let path = segment::segment_path(&self.dir, next);
        match Current::open(&path, next) {
            Ok(cur) => {
                self.position = Position::In(cur);
                Ok(Step::Continue)
            }
            Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(self.missing_segment(next))
            }
            Err(e) => Err(e),
        }
    }

    /// Why the segment starting at `next` is not there: retention removed it, or a gap.
    fn missing_segment(&self, next: Index) -> LogError {
        let first = segment::list_segments(&self.dir).ok().and_then(|f| f.first().copied());
        match (first, &self.position) {
            (Some(first), _) if first > next => LogError::Compacted { requested: next, first },
            (_, Position::Between { prev, prev_end }) => {
                let reason = format!("segment ends before entry {next} but no segment starts there");
                LogError::corrupt(prev, *prev_end, reason)
            }
            _ => LogError::corrupt(&segment::segment_path(&self.dir, next), 0, "segment is missing"),
        }
    }
}

impl Current {
    /// Opens a segment at its start and checks its header.
    fn open(path: &Path, first: Index) -> Result<Current, LogError> {
        let mut file = SegmentFile::open(path, 0)?;
        file.read_segment_header(SEGMENT_HEADER_LEN)?;
        Ok(Current { first, file, sealed_len: None })
    }

    /// How far this segment may be read now; `None` when nothing more is readable yet.
    fn limit(&mut self, bound: &Flushed) -> Result<Option<u64>, LogError> {
        if self.first == bound.segment {
            // A live reader can start at an entry written but not yet flushed: it waits there.
            return Ok((self.file.offset() < bound.offset).then_some(bound.offset));
        }
        if self.first > bound.segment || bound.last.is_none() {
            return Ok(None);
        }
        if self.sealed_len.is_none() {
            self.sealed_len = Some(self.file.file_len()?);
        }
        Ok(self.sealed_len)
    }
}

fn record(head: &Head, payload: bytes::Bytes) -> Record {
    Record { kind: head.kind, id: head.id, payload }
}
