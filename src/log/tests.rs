//! Unit tests of the log: format, recovery, readers, retention, truncation.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use crate::lsn::{EntryId, Index, Term};

use super::format::SEGMENT_HEADER_LEN;
use super::*;

pub(super) fn id(term: u64, index: u64) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

/// Bytes of one record with a payload of `len`.
fn record_len(len: usize) -> u64 {
    8 + 17 + len as u64
}

fn append_entries(log: &mut Log, term: u64, indexes: std::ops::RangeInclusive<u64>, len: usize) {
    for i in indexes {
        log.append_entry(id(term, i), &payload(i, len)).unwrap();
    }
}

pub(super) fn read_all(reader: &mut LogReader) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        out.push(record);
    }
    out
}

fn entry_ids(records: &[Record]) -> Vec<u64> {
    records.iter().filter(|r| r.kind == RecordKind::Entry).map(|r| r.id.index.0).collect()
}

pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn assert_corrupt(err: LogError, want_path: &Path, want_offset: u64) {
    match err {
        LogError::Corrupt { path, offset, .. } => {
            assert_eq!((path.as_path(), offset), (want_path, want_offset));
        }
        other => panic!("expected Corrupt at {}:{want_offset}, got {other}", want_path.display()),
    }
}

/// Runs a future to completion on this thread (the crate has no runtime as a dependency).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

#[test]
fn append_flush_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!((log.first_index(), log.last_written(), log.last_flushed()), (None, None, None));
    append_entries(&mut log, 1, 1..=10, 100);
    assert_eq!(log.last_written(), Some(id(1, 10)));
    assert_eq!(log.last_flushed(), None);
    assert_eq!(log.flush().unwrap(), Some(id(1, 10)));
    assert_eq!(log.size_bytes(), SEGMENT_HEADER_LEN + 10 * record_len(100));
    drop(log);

    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.first_index(), Some(Index(1)));
    assert_eq!(log.last_flushed(), Some(id(1, 10)));
    let records = read_all(&mut log.reader(Index(4)).unwrap());
    assert_eq!(entry_ids(&records), (4..=10).collect::<Vec<_>>());
    assert_eq!(records[0].payload.as_ref(), payload(4, 100).as_slice());
}

#[test]
fn torn_tail_at_every_cut_point_of_the_last_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    append_entries(&mut log, 1, 1..=3, 20);
    log.flush().unwrap();
    let intact = log.size_bytes();
    log.append_chunk(id(1, 4), &payload(40, 30)).unwrap();
    log.append_entry(id(1, 4), &payload(4, 10)).unwrap();
    log.flush().unwrap();
    let full = log.size_bytes();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let original = fs::read(&path).unwrap();

    for cut in intact..=full {
        fs::write(&path, &original[..cut as usize]).unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let (want_last, want_len) = if cut == full { (4, full) } else { (3, intact) };
        assert_eq!(log.last_written(), Some(id(1, want_last)), "cut at {cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), want_len, "cut at {cut}");
        let records = read_all(&mut log.reader(Index(1)).unwrap());
        assert_eq!(entry_ids(&records), (1..=want_last).collect::<Vec<_>>());
    }
}

#[test]
fn torn_garbage_and_zeros_at_the_tail_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    append_entries(&mut log, 1, 1..=3, 20);
    log.flush().unwrap();
    let intact = log.size_bytes();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    for tail in [vec![0u8; 4096], vec![0xff; 3], b"garbage that is not a record".to_vec()] {
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&tail);
        fs::write(&path, bytes).unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(log.last_written(), Some(id(1, 3)));
        assert_eq!(fs::metadata(&path).unwrap().len(), intact);
    }
}

#[test]
fn flipped_bit_in_a_middle_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    append_entries(&mut log, 1, 1..=5, 50);
    log.flush().unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let second = SEGMENT_HEADER_LEN + record_len(50);
    flip_byte(&path, second + 30);

    assert_corrupt(Log::open(dir.path(), LogOptions::default()).err().unwrap(), &path, second);
    let err = LogReader::open_offline(dir.path(), Index(1)).err().unwrap();
    assert_corrupt(err, &path, second);
}

#[test]
fn flipped_bit_in_a_sealed_segment_fails_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=20, 50);
    log.flush().unwrap();
    drop(log);
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    let second = SEGMENT_HEADER_LEN + record_len(50);
    flip_byte(&files[0], second + 30);

    // Sealed segments are not scanned at open; the reader checks every CRC.
    let log = Log::open(dir.path(), opts(300)).unwrap();
    let mut reader = log.reader(Index(1)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().id, id(1, 1));
    assert_corrupt(reader.next().err().unwrap(), &files[0], second);
    let mut offline = LogReader::open_offline(dir.path(), Index(1)).unwrap();
    offline.next().unwrap();
    assert_corrupt(offline.next().err().unwrap(), &files[0], second);
}

#[test]
fn bad_segment_headers_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=20, 50);
    log.flush().unwrap();
    drop(log);
    let files = segment_files(dir.path());
    for file in [&files[0], &files[files.len() - 1]] {
        flip_byte(file, 2);
        assert_corrupt(Log::open(dir.path(), opts(300)).err().unwrap(), file, 0);
        flip_byte(file, 2);
    }
    Log::open(dir.path(), opts(300)).unwrap();
}

#[test]
fn segment_named_for_another_index_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=20, 50);
    log.flush().unwrap();
    drop(log);
    let files = segment_files(dir.path());
    let renamed = dir.path().join(format!("{:020}.seg", 2));
    fs::rename(&files[1], &renamed).unwrap();
    assert_corrupt(Log::open(dir.path(), opts(300)).err().unwrap(), &renamed, SEGMENT_HEADER_LEN);
}

#[test]
fn segments_roll_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(500)).unwrap();
    append_entries(&mut log, 1, 1..=50, 100);
    log.flush().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 10, "{} segments", files.len());
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(log.size_bytes(), on_disk);
    drop(log);

    let mut log = Log::open(dir.path(), opts(500)).unwrap();
    assert_eq!((log.first_index(), log.last_written()), (Some(Index(1)), Some(id(1, 50))));
    for from in [1, 2, 17, 37, 50, 51] {
        let records = read_all(&mut log.reader(Index(from)).unwrap());
        assert_eq!(entry_ids(&records), (from..=50).collect::<Vec<_>>(), "from {from}");
    }
    append_entries(&mut log, 2, 51..=60, 100);
    log.flush().unwrap();
    let records = read_all(&mut LogReader::open_offline(dir.path(), Index(1)).unwrap());
    assert_eq!(entry_ids(&records), (1..=60).collect::<Vec<_>>());
    for record in records {
        assert_eq!(record.payload.as_ref(), payload(record.id.index.0, 100).as_slice());
    }
}

#[test]
fn a_huge_entry_stays_in_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(100)).unwrap();
    log.append_entry(id(1, 1), &payload(1, 100)).unwrap();
    for part in 0..5 {
        log.append_chunk(id(1, 2), &payload(part, 300)).unwrap();
    }
    log.append_entry(id(1, 2), b"end").unwrap();
    log.append_entry(id(1, 3), b"next").unwrap();
    log.flush().unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3);
    assert!(fs::metadata(&files[1]).unwrap().len() > 5 * 300);
    let records = read_all(&mut log.reader(Index(1)).unwrap());
    assert_eq!(records.len(), 8);
}

#[test]
fn live_reader_is_bounded_by_flush_and_woken_by_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(2000)).unwrap();
    let mut reader = log.reader(Index(1)).unwrap();
    let mut wait = reader.wait_handle().unwrap();
    append_entries(&mut log, 1, 1..=3, 10);
    assert!(reader.next().unwrap().is_none(), "nothing is flushed yet");
    log.flush().unwrap();
    assert!(wait.has_changed().unwrap());
    assert_eq!(entry_ids(&read_all(&mut reader)), vec![1, 2, 3]);

    const TOTAL: u64 = 300;
    let consumer = thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.last() != Some(&TOTAL) {
            while let Some(record) = reader.next().unwrap() {
                seen.push(record.id.index.0);
            }
            if seen.last() != Some(&TOTAL) {
                block_on(wait.changed()).unwrap();
            }
        }
        seen
    });
    for batch in (4..=TOTAL).collect::<Vec<_>>().chunks(37) {
        for &i in batch {
            log.append_entry(id(1, i), &payload(i, 50)).unwrap();
        }
        log.flush().unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(consumer.join().unwrap(), (4..=TOTAL).collect::<Vec<_>>());
    assert!(segment_files(dir.path()).len() > 3);
}

#[test]
fn live_reader_started_at_an_unflushed_entry_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    append_entries(&mut log, 1, 1..=5, 10);
    let mut reader = log.reader(Index(4)).unwrap();
    assert!(reader.next().unwrap().is_none());
    log.flush().unwrap();
    assert_eq!(entry_ids(&read_all(&mut reader)), vec![4, 5]);
}

#[test]
fn chunked_entries_are_read_whole_and_unfinished_ones_cut_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append_entry(id(1, 1), b"one").unwrap();
    log.flush().unwrap();
    let mut reader = log.reader(Index(1)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().id, id(1, 1));
    for part in 0..3 {
        log.append_chunk(id(1, 2), &payload(part, 1000)).unwrap();
    }
    log.flush().unwrap();
    assert!(reader.next().unwrap().is_none(), "chunks without their entry record are not read");
    assert_eq!(log.last_flushed(), Some(id(1, 1)));
    log.append_entry(id(1, 2), b"two").unwrap();
    log.flush().unwrap();
    let records = read_all(&mut reader);
    let kinds: Vec<_> = records.iter().map(|r| (r.kind, r.id)).collect();
    let chunk = (RecordKind::Chunk, id(1, 2));
    assert_eq!(kinds, vec![chunk, chunk, chunk, (RecordKind::Entry, id(1, 2))]);
    assert_eq!(records[1].payload.as_ref(), payload(1, 1000).as_slice());
    let end_of_two = log.size_bytes();

    log.append_chunk(id(1, 3), b"an unfinished entry").unwrap();
    log.append_chunk(id(1, 3), b"more of it").unwrap();
    log.flush().unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.last_written(), Some(id(1, 2)));
    assert_eq!(log.size_bytes(), end_of_two);
    log.append_entry(id(1, 3), b"three").unwrap();
    log.flush().unwrap();
    let records = read_all(&mut log.reader(Index(3)).unwrap());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload.as_ref(), b"three");
}

#[test]
fn unfinished_entry_alone_in_a_new_segment_is_removed_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(10)).unwrap();
    append_entries(&mut log, 1, 1..=2, 10);
    log.append_chunk(id(1, 3), b"chunk").unwrap();
    log.flush().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 3);
    drop(log);
    let log = Log::open(dir.path(), opts(10)).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(log.last_written(), Some(id(1, 2)));
}

#[test]
fn appends_must_be_contiguous_with_terms_never_decreasing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert!(matches!(log.append_entry(id(1, 0), b""), Err(LogError::IndexOutOfRange(_))));
    log.append_entry(id(3, 5), b"seeded from a snapshot").unwrap();
    let err = log.append_entry(id(3, 7), b"").unwrap_err();
    assert!(matches!(err, LogError::NotContiguous { expected: Index(6), .. }), "{err}");
    let err = log.append_entry(id(2, 6), b"").unwrap_err();
    assert!(matches!(err, LogError::TermRegressed { .. }), "{err}");
    log.append_chunk(id(4, 6), b"part").unwrap();
    for wrong in [id(4, 7), id(5, 6)] {
        let err = log.append_entry(wrong, b"").unwrap_err();
        assert!(matches!(err, LogError::EntryInProgress { .. }), "{err}");
    }
    log.append_entry(id(4, 6), b"whole").unwrap();
    let too_big = vec![0u8; MAX_PAYLOAD_BYTES + 1];
    let err = log.append_entry(id(4, 7), &too_big).unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { .. }), "{err}");
    log.append_entry(id(4, 7), b"").unwrap();
    log.flush().unwrap();

    assert!(matches!(log.reader(Index(4)), Err(LogError::Compacted { requested: Index(4), first: Index(5) })));
    assert!(matches!(log.reader(Index(9)), Err(LogError::BeyondEnd { next: Index(8), .. })));
    assert!(log.reader(Index(8)).unwrap().next().unwrap().is_none());
    let err = LogReader::open_offline(dir.path(), Index(9)).err().unwrap();
    assert!(matches!(err, LogError::BeyondEnd { .. }), "{err}");
}

#[test]
fn remove_before_then_truncate_after_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(400)).unwrap();
    append_entries(&mut log, 1, 1..=60, 50);
    log.flush().unwrap();
    let before: Vec<_> = segment_files(dir.path()).into_iter().map(|f| (fs::metadata(&f).unwrap().len(), f)).collect();
    let size_before = log.size_bytes();

    let freed = log.remove_before(Index(30)).unwrap();
    let first = log.first_index().unwrap();
    assert!(first > Index(1) && first <= Index(30), "first {first}");
    let after = segment_files(dir.path());
    let removed: u64 = before.iter().filter(|(_, f)| !after.contains(f)).map(|(len, _)| len).sum();
    assert_eq!(freed, removed);
    assert_eq!(log.size_bytes(), size_before - freed);
    assert_eq!(after[0], dir.path().join(format!("{:020}.seg", first.0)));
    assert!(matches!(log.reader(Index(1)), Err(LogError::Compacted { first: f, .. }) if f == first));
    assert_eq!(log.remove_before(Index(30)).unwrap(), 0);

    let mut stale = log.reader(first).unwrap();
    log.truncate_after(Index(45)).unwrap();
    assert!(matches!(stale.next(), Err(LogError::ReaderInvalidated)));
    assert_eq!((log.last_written(), log.last_flushed()), (Some(id(1, 45)), Some(id(1, 45))));
    append_entries(&mut log, 2, 46..=50, 50);
    log.flush().unwrap();
    drop(log);

    let log = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!((log.first_index(), log.last_written()), (Some(first), Some(id(2, 50))));
    let records = read_all(&mut log.reader(first).unwrap());
    assert_eq!(entry_ids(&records), (first.0..=50).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.id.term == Term(if r.id.index.0 > 45 { 2 } else { 1 })));
}

#[test]
fn truncate_after_drops_unfinished_entries_and_can_empty_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(200)).unwrap();
    append_entries(&mut log, 1, 10..=20, 30);
    log.append_chunk(id(1, 21), b"unfinished").unwrap();
    log.truncate_after(Index(25)).unwrap();
    assert_eq!(log.last_flushed(), Some(id(1, 20)));
    log.append_entry(id(1, 21), b"fresh").unwrap();

    log.truncate_after(Index(9)).unwrap();
    assert_eq!((log.first_index(), log.last_written(), log.size_bytes()), (None, None, 0));
    assert!(segment_files(dir.path()).is_empty());
    log.append_entry(id(2, 3), b"restart").unwrap();
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), opts(200)).unwrap();
    assert_eq!(log.last_written(), Some(id(2, 3)));
}

#[test]
fn segment_removed_under_a_reader_is_reported_as_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=40, 50);
    log.flush().unwrap();
    let mut reader = log.reader(Index(1)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().id, id(1, 1));
    log.remove_before(Index(30)).unwrap();
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("reader caught up across removed segments"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::Compacted { .. }), "{err}");
}

#[test]
fn missing_middle_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=40, 50);
    log.flush().unwrap();
    drop(log);
    let files = segment_files(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let log = Log::open(dir.path(), opts(300)).unwrap();
    let mut reader = log.reader(Index(1)).unwrap();
    let err = loop {
        if let Err(e) = reader.next() {
            break e;
        }
    };
    let first_len = fs::metadata(&files[0]).unwrap().len();
    assert_corrupt(err, &files[0], first_len);
}

#[test]
fn offline_reader_stops_quietly_at_a_torn_tail_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(300)).unwrap();
    append_entries(&mut log, 1, 1..=20, 50);
    log.append_chunk(id(1, 21), b"never finished").unwrap();
    log.flush().unwrap();
    drop(log);
    let last = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    set_len(&last, len - 3);

    let records = read_all(&mut LogReader::open_offline(dir.path(), Index(5)).unwrap());
    assert_eq!(entry_ids(&records), (5..=20).collect::<Vec<_>>());
    assert_eq!(fs::metadata(&last).unwrap().len(), len - 3);
    let empty = tempfile::tempdir().unwrap();
    assert!(LogReader::open_offline(empty.path(), Index(1)).unwrap().next().unwrap().is_none());
}

#[test]
fn reader_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<LogReader>();
    assert_send::<Log>();
}

#[test]
fn sealed_segment_without_records_is_corruption_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), opts(1)).unwrap();
    append_entries(&mut log, 1, 1..=3, 10);
    log.flush().unwrap();
    drop(log);
    let first = segment_files(dir.path())[0].clone();
    set_len(&first, SEGMENT_HEADER_LEN);
    let mut reader = LogReader::open_offline(dir.path(), Index(1)).unwrap();
    assert_corrupt(reader.next().err().unwrap(), &first, SEGMENT_HEADER_LEN);
    assert_corrupt(Log::open(dir.path(), opts(1)).err().unwrap(), &first, 0);
}

#[test]
fn the_log_records_where_each_term_begins_and_keeps_it_across_reopen_and_truncation() {
    use super::terms::{TermHistory, TermStart, TERMS_FILE};
    let start = |t: u64, i: u64| TermStart { term: Term(t), first_index: Index(i) };
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    append_entries(&mut log, 1, 1..=5, 10);
    // A newer term's first record, even a chunk, begins it.
    log.append_chunk(id(3, 6), b"part").unwrap();
    log.append_entry(id(3, 6), b"whole").unwrap();
    append_entries(&mut log, 3, 7..=8, 10);
    append_entries(&mut log, 4, 9..=9, 10);
    log.flush().unwrap();
    assert_eq!(log.terms().starts(), &[start(1, 1), start(3, 6), start(4, 9)]);
    assert!(matches!(log.append_entry(id(2, 10), b"older"), Err(LogError::TermRegressed { .. })));
    drop(log);

    let mut log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.terms().starts(), &[start(1, 1), start(3, 6), start(4, 9)]);
    // Cut back into term 3: term 4 is forgotten, and term 5 may begin where it did.
    log.truncate_after(Index(7)).unwrap();
    assert_eq!(log.terms().starts(), &[start(1, 1), start(3, 6)]);
    append_entries(&mut log, 5, 8..=8, 10);
    log.flush().unwrap();
    drop(log);
    assert_eq!(TermHistory::load(dir.path()).unwrap().starts(), &[start(1, 1), start(3, 6), start(5, 8)]);

    // A log from before term histories (no file) gets one read off its records.
    fs::remove_file(dir.path().join(TERMS_FILE)).unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.terms().starts(), &[start(1, 1), start(3, 6), start(5, 8)]);
    assert!(dir.path().join(TERMS_FILE).exists());
}
