//! The single writer: appends, group-committed flushes, retention and truncation.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::lsn::{EntryId, Index};

use super::error::LogError;
use super::format::{self, SEGMENT_HEADER_LEN};
use super::reader::LogReader;
use super::recovery;
use super::segment::{self, Segment, SegmentFile};
use super::terms::TermHistory;
use super::{Flushed, LogOptions, RecordKind, MAX_RECORD_BYTES, WRITE_BUFFER_BYTES};

/// The durable log. One writer per directory (not enforced by a lock: the caller owns that).
pub struct Log {
    dir: PathBuf,
    opts: LogOptions,
    /// Segments that are no longer appended to, oldest first. All are fsynced in full.
    sealed: VecDeque<Segment>,
    /// The last segment; `None` only when the log holds no segment at all.
    active: Option<Active>,
    last_written: Option<EntryId>,
    /// The entry whose chunks were appended but whose entry record was not.
    open_entry: Option<EntryId>,
    /// Segment and offset just past the last complete entry record written.
    committed: (Index, u64),
    /// What was last published on `tx`.
    flushed: Flushed,
    tx: watch::Sender<Flushed>,
    /// Set by a failed write or fsync: the files' state is unknown until reopened.
    failed: bool,
    /// Where each term begins (`terms.json` beside the segments), saved before the first
    /// record of a newer term is written.
    terms: TermHistory,
}

struct Active {
    segment: Segment,
    writer: BufWriter<File>,
    /// Bytes of the segment known to be fsynced.
    synced_len: u64,
}

impl Log {
    /// Opens the log in `dir`, creating the directory if needed and recovering a torn tail.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Log, LogError> {
        create_dir(dir)?;
        let recovered = recovery::recover(dir)?;
        let (active, last_written, committed) = match recovered.last {
            Some((segment, last)) => {
                let committed = (segment.first, segment.len);
                (Some(Active::reopen(segment)?), Some(last), committed)
            }
            None => (None, None, (Index(0), 0)),
        };
        let flushed = Flushed { last: last_written, segment: committed.0, offset: committed.1, epoch: 0 };
        let (tx, _) = watch::channel(flushed.clone());
        let terms = TermHistory::load(dir)?;
        let mut log = Log {
            dir: dir.to_path_buf(),
            opts,
            sealed: recovered.sealed,
            active,
            last_written,
            open_entry: None,
            committed,
            flushed,
            tx,
            failed: false,
            terms,
        };
        match log.last_written {
            Some(_) if log.terms.last_term().is_none() => log.rebuild_terms()?,
            // Starts past the recovered end belong to records lost with a torn tail.
            last if log.terms.truncate_after(last.map_or(Index(0), |l| l.index)) => log.terms.save(&log.dir)?,
            _ => {}
        }
        Ok(log)
    }

    /// Where each term begins, as far as this log knows.
    pub fn terms(&self) -> &TermHistory {
        &self.terms
    }

    /// A log written before term histories existed: read the history off its records.
    fn rebuild_terms(&mut self) -> Result<(), LogError> {
        let Some(first) = self.first_index() else { return Ok(()) };
        let mut reader = self.reader(first)?;
        let mut terms = TermHistory::default();
        while let Some(record) = reader.next()? {
            terms.observe(record.id)?;
        }
        terms.save(&self.dir)?;
        self.terms = terms;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest retained entry; `None` when the log holds no complete entry.
    pub fn first_index(&self) -> Option<Index> {
        match self.last_written {
            Some(_) => self.segments().next().map(|s| s.first),
            None => None,
        }
    }

    /// The last complete entry appended, durable or not.
    pub fn last_written(&self) -> Option<EntryId> {
        self.last_written
    }

    /// The last complete entry fsynced and published.
    pub fn last_flushed(&self) -> Option<EntryId> {
        self.flushed.last
    }

    /// Appends a part of entry `id`'s body. The entry is complete only with `append_entry`.
    pub fn append_chunk(&mut self, id: EntryId, payload: &[u8]) -> Result<(), LogError> {
        self.append(RecordKind::Chunk, id, payload)
    }

    /// Appends the record that completes entry `id`.
    pub fn append_entry(&mut self, id: EntryId, payload: &[u8]) -> Result<(), LogError> {
        self.append(RecordKind::Entry, id, payload)
    }

    /// Writes out buffered records, fsyncs them and publishes the new [`Flushed`]. Returns the
    /// last flushed entry. Appending many records and flushing once is a group commit.
    pub fn flush(&mut self) -> Result<Option<EntryId>, LogError> {
        self.check_usable()?;
        if let Some(active) = &mut self.active {
            if active.segment.len > active.synced_len {
                let synced = active.sync();
                self.failed |= synced.is_err();
                synced?;
            }
        }
        self.publish(self.flushed.epoch);
        Ok(self.flushed.last)
    }

    /// A receiver of every [`Flushed`] published from now on.
    pub fn subscribe(&self) -> watch::Receiver<Flushed> {
        self.tx.subscribe()
    }

    /// A live reader from entry `from`, bounded by what is flushed.
    pub fn reader(&self, from: Index) -> Result<LogReader, LogError> {
        let rx = self.tx.subscribe();
        let (Some(first), Some(last)) = (self.first_index(), self.last_written) else {
            return Ok(LogReader::live_unpositioned(&self.dir, from, rx));
        };
        if from < first {
            return Err(LogError::Compacted { requested: from, first });
        }
        let next = format::successor(last.index).ok_or(LogError::IndexOutOfRange(last.index))?;
        if from > next {
            return Err(LogError::BeyondEnd { requested: from, next });
        }
        let segment = self
            .segments()
            .take_while(|s| s.first <= from)
            .last()
            .ok_or(LogError::Compacted { requested: from, first })?;
        let (start, offset) = segment.start_point(from);
        let file = SegmentFile::open(&segment.path, offset)?;
        Ok(LogReader::live(&self.dir, from, rx, (segment.first, file), start))
    }

    /// Deletes the sealed segments whose entries are all below `index`. Returns bytes freed.
    pub fn remove_before(&mut self, index: Index) -> Result<u64, LogError> {
        let mut freed = 0;
        while let Some(oldest) = self.sealed.front() {
            let next_first = match (self.sealed.get(1), &self.active) {
                (Some(next), _) => next.first,
                (None, Some(active)) => active.segment.first,
                (None, None) => break,
            };
            if next_first > index {
                break;
            }
            segment::remove_segment(&oldest.path)?;
            freed += oldest.len;
            self.sealed.pop_front();
        }
        if freed > 0 {
            segment::sync_dir(&self.dir)?;
        }
        Ok(freed)
    }

    /// Drops every entry after `index` (and any unfinished entry), durably. Live readers
    /// opened before then fail with [`LogError::ReaderInvalidated`].
    pub fn truncate_after(&mut self, index: Index) -> Result<(), LogError> {
        self.check_usable()?;
        let keep = match self.last_written {
            Some(last) if last.index <= index && self.open_entry.is_none() => return Ok(()),
            Some(last) => last.index.min(index),
            None if self.open_entry.is_none() => return Ok(()),
            None => Index(0),
        };
        let result = match self.first_index() {
            Some(first) if keep >= first => self.truncate_to(keep),
            _ => self.clear(),
        };
        self.failed |= result.is_err();
        result?;
        if self.terms.truncate_after(keep) {
            self.terms.save(&self.dir)?;
        }
        Ok(())
    }

    /// Bytes in all segments, including bytes still buffered.
    pub fn size_bytes(&self) -> u64 {
        self.segments().map(|s| s.len).sum()
    }

    /// The active segment and its length, for tests that damage files where the writer was.
    #[cfg(test)]
    pub(crate) fn tail_position(&self) -> Option<(Index, u64)> {
        self.active.as_ref().map(|a| (a.segment.first, a.segment.len))
    }

    /// Every segment's first index and size in bytes, oldest first; the last is the active one.
    pub fn segment_sizes(&self) -> Vec<(Index, u64)> {
        self.segments().map(|s| (s.first, s.len)).collect()
    }

    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().chain(self.active.as_ref().map(|a| &a.segment))
    }

    fn check_usable(&self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        Ok(())
    }

    fn append(&mut self, kind: RecordKind, id: EntryId, payload: &[u8]) -> Result<(), LogError> {
        self.check_usable()?;
        self.check_next(id)?;
        let prefix = format::encode_prefix(kind, id);
        let header = format::encode_record_header(&prefix, payload).ok_or(LogError::RecordTooLarge {
            id,
            body_len: payload.len().saturating_add(format::BODY_PREFIX_LEN),
            max: MAX_RECORD_BYTES,
        })?;
        if self.terms.observe(id)? {
            self.terms.save(&self.dir)?;
        }
        let result = self.write_record(&header, &prefix, payload, id);
        self.failed |= result.is_err();
        result?;
        match kind {
            RecordKind::Chunk => self.open_entry = Some(id),
            RecordKind::Entry => {
                self.open_entry = None;
                self.last_written = Some(id);
                if let Some(active) = &self.active {
                    self.committed = (active.segment.first, active.segment.len);
                }
            }
        }
        Ok(())
    }

    /// Checks that `id` may be appended next.
    fn check_next(&self, id: EntryId) -> Result<(), LogError> {
        if let Some(open) = self.open_entry {
            if open != id {
                return Err(LogError::EntryInProgress { open, got: id });
            }
            return Ok(());
        }
        let Some(last) = self.last_written else {
            if id.index.0 == 0 {
                return Err(LogError::IndexOutOfRange(id.index));
            }
            return Ok(());
        };
        let expected = format::successor(last.index).ok_or(LogError::IndexOutOfRange(last.index))?;
        if id.index != expected {
            return Err(LogError::NotContiguous { expected, got: id });
        }
        if id.term < last.term {
            return Err(LogError::TermRegressed { last, got: id });
        }
        Ok(())
    }

    fn write_record(&mut self, header: &[u8; 8], prefix: &[u8], payload: &[u8], id: EntryId) -> Result<(), LogError> {
        let starts_entry = self.open_entry.is_none();
        if starts_entry {
            self.prepare_segment(id.index)?;
        }
        let Some(active) = &mut self.active else {
            return Err(LogError::Failed);
        };
        let segment = &mut active.segment;
        if starts_entry {
            segment.note_entry_start(id.index, segment.len);
        }
        let at = segment.len;
        let write = |w: &mut BufWriter<File>| {
            w.write_all(header)?;
            w.write_all(prefix)?;
            w.write_all(payload)
        };
        write(&mut active.writer).map_err(|e| LogError::io_at("write", &segment.path, at, e))?;
        segment.len += (header.len() + prefix.len() + payload.len()) as u64;
        Ok(())
    }

    /// Makes sure an entry starting at `index` can go into the active segment: creates the
    /// first segment, or rolls once the active one is full.
    fn prepare_segment(&mut self, index: Index) -> Result<(), LogError> {
        match &mut self.active {
            Some(active) if active.segment.len < self.opts.segment_bytes => return Ok(()),
            Some(active) => active.sync()?,
            None => {}
        }
        let created = Active::create(&self.dir, index)?;
        if let Some(old) = self.active.replace(created) {
            self.sealed.push_back(old.segment);
        }
        Ok(())
    }

    /// Publishes the committed position as flushed. Everything before it is fsynced: sealed
    /// segments at their sealing, the active one by the caller.
    fn publish(&mut self, epoch: u64) {
        let flushed = Flushed { last: self.last_written, segment: self.committed.0, offset: self.committed.1, epoch };
        // Within an epoch the flushed position only moves forward.
        debug_assert!(
            epoch != self.flushed.epoch
                || (self.flushed.segment, self.flushed.offset) <= (flushed.segment, flushed.offset)
        );
        self.flushed = flushed.clone();
        self.tx.send_if_modified(|current| {
            let changed = *current != flushed;
            *current = flushed;
            changed
        });
    }

    fn truncate_to(&mut self, keep: Index) -> Result<(), LogError> {
        if let Some(active) = &mut self.active {
            active.writer.flush().map_err(|e| LogError::io("write", &active.segment.path, e))?;
        }
        let mut dropped = false;
        while self.active.as_ref().is_some_and(|a| a.segment.first > keep) {
            self.drop_active()?;
            dropped = true;
        }
        if dropped {
            // Removals are durable before the kept segment is cut, so a crash in between
            // leaves the log a prefix of itself, never a segment followed by a gap.
            segment::sync_dir(&self.dir)?;
        }
        let Some(active) = &mut self.active else {
            return Err(LogError::Failed);
        };
        let (end, last) = entry_end(&active.segment, keep)?;
        active.truncate(end)?;
        self.last_written = Some(last);
        self.open_entry = None;
        self.committed = (active.segment.first, end);
        self.publish(self.flushed.epoch + 1);
        Ok(())
    }

    fn clear(&mut self) -> Result<(), LogError> {
        while self.active.is_some() {
            self.drop_active()?;
        }
        segment::sync_dir(&self.dir)?;
        self.last_written = None;
        self.open_entry = None;
        self.committed = (Index(0), 0);
        self.publish(self.flushed.epoch + 1);
        Ok(())
    }

    /// Deletes the active segment and makes the newest sealed one active.
    fn drop_active(&mut self) -> Result<(), LogError> {
        if let Some(active) = self.active.take() {
            let path = active.segment.path.clone();
            drop(active);
            segment::remove_segment(&path)?;
        }
        if let Some(segment) = self.sealed.pop_back() {
            self.active = Some(Active::reopen(segment)?);
        }
        Ok(())
    }
}

/// Offset just past entry `index`'s closing record in `segment`, and the entry's id.
fn entry_end(segment: &Segment, index: Index) -> Result<(u64, EntryId), LogError> {
    let (start, offset) = segment.start_point(index);
    let mut file = SegmentFile::open(&segment.path, offset)?;
    let mut seq = format::SeqCheck::new(start);
    while let Some(head) = file.read_head(segment.len)? {
        seq.accept(head.kind, head.id).map_err(|reason| LogError::corrupt(&segment.path, head.start, reason))?;
        if head.kind == RecordKind::Entry && head.id.index == index {
            return Ok((head.end(), head.id));
        }
        file.skip_payload(&head)?;
    }
    let reason = format!("no entry record for index {index} in the segment");
    Err(LogError::corrupt(&segment.path, segment.len, reason))
}

impl Active {
    /// Creates segment `first`: header written and fsynced, then the directory fsynced.
    fn create(dir: &Path, first: Index) -> Result<Active, LogError> {
        let path = segment::segment_path(dir, first);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io("create", &path, e))?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let header = format::encode_segment_header();
        writer.write_all(&header).map_err(|e| LogError::io_at("write", &path, 0, e))?;
        let segment = Segment { first, path, len: SEGMENT_HEADER_LEN, sparse: Vec::new() };
        let mut active = Active { segment, writer, synced_len: 0 };
        active.sync()?;
        segment::sync_dir(dir)?;
        Ok(active)
    }

    /// Opens an existing, fully synced segment for appending at its end.
    fn reopen(segment: Segment) -> Result<Active, LogError> {
        let path = &segment.path;
        let mut file = OpenOptions::new().write(true).open(path).map_err(|e| LogError::io("open", path, e))?;
        file.seek(SeekFrom::Start(segment.len)).map_err(|e| LogError::io_at("seek", path, segment.len, e))?;
        Ok(Active { synced_len: segment.len, writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), segment })
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let path = &self.segment.path;
        self.writer.flush().map_err(|e| LogError::io("write", path, e))?;
        self.writer.get_ref().sync_data().map_err(|e| LogError::io("fsync", path, e))?;
        self.synced_len = self.segment.len;
        Ok(())
    }

    /// Cuts the segment at `end` (an entry boundary) and fsyncs it.
    fn truncate(&mut self, end: u64) -> Result<(), LogError> {
        let path = &self.segment.path;
        self.writer.flush().map_err(|e| LogError::io("write", path, e))?;
        let file = self.writer.get_mut();
        file.set_len(end).map_err(|e| LogError::io_at("truncate", path, end, e))?;
        file.seek(SeekFrom::Start(end)).map_err(|e| LogError::io_at("seek", path, end, e))?;
        file.sync_all().map_err(|e| LogError::io("fsync", path, e))?;
        self.segment.len = end;
        self.segment.sparse.retain(|&(_, offset)| offset < end);
        self.synced_len = end;
        Ok(())
    }
}

/// Creates the log directory, fsyncing its parent when it is new.
fn create_dir(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| LogError::io("create directory", dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => segment::sync_dir(parent),
        _ => Ok(()),
    }
}
