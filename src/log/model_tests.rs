//! Model-based test: random appends, flushes, crashes with damage past the flushed point, and
//! reopens, checked against a model of what must survive.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::lsn::{EntryId, Index, Term};

use super::tests::{read_all, segment_files};
use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// Appends an entry (finishing an unfinished one if there is one).
    Append {
        chunks: Vec<usize>,
        len: usize,
        bump_term: bool,
    },
    /// Appends chunks of the next entry without its entry record.
    Partial {
        chunks: Vec<usize>,
    },
    Flush,
    /// Reads from a point in the flushed log with a live reader.
    Read(u64),
    Crash(Damage),
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// A clean stop.
    None,
    /// Cuts the last segment to a random length at or past what is flushed.
    Truncate(u64),
    /// Flips bits of a random byte past what is flushed.
    Flip(u64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let chunks = prop::collection::vec(0usize..700, 0..4);
    prop_oneof![
        8 => (chunks, 0usize..400, prop::bool::weighted(0.15))
            .prop_map(|(chunks, len, bump_term)| Op::Append { chunks, len, bump_term }),
        1 => prop::collection::vec(0usize..700, 1..3).prop_map(|chunks| Op::Partial { chunks }),
        3 => Just(Op::Flush),
        1 => any::<u64>().prop_map(Op::Read),
        1 => Just(Op::Crash(Damage::None)),
        1 => any::<u64>().prop_map(|seed| Op::Crash(Damage::Truncate(seed))),
        1 => (any::<u64>(), 1u8..).prop_map(|(seed, mask)| Op::Crash(Damage::Flip(seed, mask))),
    ]
}

struct ModelEntry {
    id: EntryId,
    chunks: Vec<Vec<u8>>,
    payload: Vec<u8>,
    /// Segment holding the entry, and the offset just past its entry record.
    segment: Index,
    end: u64,
}

/// Where a record was written.
struct Placed {
    segment: Index,
    start: u64,
    end: u64,
}

struct Model {
    dir: PathBuf,
    opts: LogOptions,
    start: u64,
    term: u64,
    entries: Vec<ModelEntry>,
    /// How many of `entries` were flushed.
    flushed: usize,
    pending: Option<(EntryId, Vec<Vec<u8>>)>,
    records: Vec<Placed>,
    salt: u8,
}

impl Model {
    fn next_id(&self) -> EntryId {
        if let Some((id, _)) = &self.pending {
            return *id;
        }
        let index = self.entries.last().map_or(self.start, |e| e.id.index.0 + 1);
        EntryId { term: Term(self.term), index: Index(index) }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        self.salt = self.salt.wrapping_add(1);
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ self.salt).collect()
    }

    fn put(&mut self, log: &mut Log, kind: RecordKind, id: EntryId, payload: &[u8]) {
        match kind {
            RecordKind::Chunk => log.append_chunk(id, payload).unwrap(),
            RecordKind::Entry => log.append_entry(id, payload).unwrap(),
        }
        let (segment, end) = log.tail_position().unwrap();
        let start = end - (8 + 17 + payload.len() as u64);
        self.records.push(Placed { segment, start, end });
    }

    fn chunks(&mut self, log: &mut Log, sizes: &[usize]) {
        let id = self.next_id();
        for &len in sizes {
            let chunk = self.bytes(len);
            self.put(log, RecordKind::Chunk, id, &chunk);
            self.pending.get_or_insert((id, Vec::new())).1.push(chunk);
        }
    }

    fn append(&mut self, log: &mut Log, sizes: &[usize], len: usize, bump_term: bool) {
        if bump_term && self.pending.is_none() {
            self.term += 1;
        }
        self.chunks(log, sizes);
        let id = self.next_id();
        let payload = self.bytes(len);
        self.put(log, RecordKind::Entry, id, &payload);
        let chunks = self.pending.take().map(|(_, c)| c).unwrap_or_default();
        let last = self.records.last().unwrap();
        let (segment, end) = (last.segment, last.end);
        self.entries.push(ModelEntry { id, chunks, payload, segment, end });
    }

    fn expected_records(&self, from: u64) -> Vec<(RecordKind, EntryId, Vec<u8>)> {
        let mut out = Vec::new();
        for e in self.entries.iter().filter(|e| e.id.index.0 >= from) {
            out.extend(e.chunks.iter().map(|c| (RecordKind::Chunk, e.id, c.clone())));
            out.push((RecordKind::Entry, e.id, e.payload.clone()));
        }
        out
    }

    fn check_reader(&self, log: &Log, from: u64) {
        let records = read_all(&mut log.reader(Index(from)).unwrap());
        let got: Vec<_> = records.into_iter().map(|r| (r.kind, r.id, r.payload.to_vec())).collect();
        assert_eq!(got, self.expected_records(from), "reading from {from}");
    }

    fn check(&self, log: &Log) {
        let last = self.entries.last().map(|e| e.id);
        assert_eq!(log.last_written(), last);
        assert_eq!(log.last_flushed(), last);
        let first = self.entries.first().map(|e| e.id.index);
        assert_eq!(log.first_index(), first);
        if let Some(first) = first {
            self.check_reader(log, first.0);
            let offline = read_all(&mut LogReader::open_offline(&self.dir, first).unwrap());
            assert_eq!(offline.len(), self.expected_records(first.0).len());
        }
    }

    /// Stops the log, damages the last segment past the flushed point, reopens, and trims the
    /// model to what must have survived.
    fn crash(&mut self, log: Log, damage: Damage) -> Log {
        drop(log);
        let Some(path) = segment_files(&self.dir).pop() else {
            return Log::open(&self.dir, self.opts.clone()).unwrap();
        };
        let segment = segment_first(&path);
        let len = fs::metadata(&path).unwrap().len();
        let floor = match self.flushed.checked_sub(1).map(|i| &self.entries[i]) {
            Some(e) if e.segment == segment => e.end,
            _ => 16,
        };
        let (cut, flipped_record) = match damage {
            Damage::None => (len, None),
            Damage::Truncate(seed) => {
                let cut = floor + seed % (len - floor + 1);
                set_len(&path, cut);
                (cut, None)
            }
            Damage::Flip(_, _) if len == floor => (len, None),
            Damage::Flip(seed, mask) => {
                let at = floor + seed % (len - floor);
                let mut bytes = fs::read(&path).unwrap();
                bytes[at as usize] ^= mask;
                fs::write(&path, bytes).unwrap();
                let record = self.records.iter().find(|r| r.segment == segment && r.start <= at && at < r.end);
                let start = record.unwrap().start;
                (start, Some(start))
            }
        };
        let log = match Log::open(&self.dir, self.opts.clone()) {
            Ok(log) => log,
            // A damaged record followed by a valid one is corruption: an operator would cut it.
            Err(LogError::Corrupt { path: p, offset, .. }) if p == path && Some(offset) == flipped_record => {
                set_len(&path, offset);
                Log::open(&self.dir, self.opts.clone()).unwrap()
            }
            Err(e) => panic!("reopen after {damage:?} failed: {e}"),
        };
        self.survive(segment, cut);
        log
    }

    fn survive(&mut self, segment: Index, cut: u64) {
        let flushed = self.flushed;
        self.entries.retain(|e| e.segment < segment || e.end <= cut);
        assert!(self.entries.len() >= flushed, "the model lost a flushed entry");
        let end = match self.entries.last() {
            Some(e) if e.segment == segment => e.end,
            _ => 0,
        };
        self.records.retain(|r| r.segment < segment || r.end <= end);
        self.flushed = self.entries.len();
        self.pending = None;
        if let Some(e) = self.entries.last() {
            self.term = e.id.term.0;
        }
    }
}

fn segment_first(path: &Path) -> Index {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    Index(stem.parse().unwrap())
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn run(segment_bytes: u64, start: u64, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions { segment_bytes };
    let mut log = Log::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model {
        dir: dir.path().to_path_buf(),
        opts,
        start,
        term: 1,
        entries: Vec::new(),
        flushed: 0,
        pending: None,
        records: Vec::new(),
        salt: 0,
    };
    for op in ops {
        match op {
            Op::Append { chunks, len, bump_term } => model.append(&mut log, &chunks, len, bump_term),
            Op::Partial { chunks } => model.chunks(&mut log, &chunks),
            Op::Flush => {
                assert_eq!(log.flush().unwrap(), model.entries.last().map(|e| e.id));
                model.flushed = model.entries.len();
            }
            Op::Read(seed) => {
                if let Some(first) = model.entries.first() {
                    let from = first.id.index.0 + seed % (model.flushed as u64 + 1);
                    model.check_reader_flushed(&log, from);
                }
            }
            Op::Crash(damage) => {
                log = model.crash(log, damage);
                model.check(&log);
            }
        }
    }
    log = model.crash(log, Damage::None);
    model.check(&log);
}

impl Model {
    /// A live reader sees exactly the flushed entries from `from` on.
    fn check_reader_flushed(&self, log: &Log, from: u64) {
        let records = read_all(&mut log.reader(Index(from)).unwrap());
        let got: Vec<_> = records.into_iter().map(|r| (r.kind, r.id, r.payload.to_vec())).collect();
        let mut want = Vec::new();
        for e in self.entries[..self.flushed].iter().filter(|e| e.id.index.0 >= from) {
            want.extend(e.chunks.iter().map(|c| (RecordKind::Chunk, e.id, c.clone())));
            want.push((RecordKind::Entry, e.id, e.payload.clone()));
        }
        assert_eq!(got, want, "live read from {from}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn log_matches_model_across_crashes(
        segment_bytes in prop_oneof![Just(1u64), 300u64..3000, Just(1 << 20)],
        start in prop_oneof![Just(1u64), 1u64..1_000_000],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(segment_bytes, start, ops);
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

/// A segment of valid records with chunks, built with the format's encoders.
fn valid_segment(entries: &[(u8, usize)]) -> Vec<u8> {
    let mut out = super::format::encode_segment_header().to_vec();
    for (i, &(chunks, len)) in entries.iter().enumerate() {
        let id = EntryId { term: Term(1), index: Index(i as u64 + 1) };
        let kinds = (0..chunks).map(|_| RecordKind::Chunk).chain([RecordKind::Entry]);
        for kind in kinds {
            let prefix = super::format::encode_prefix(kind, id);
            let payload = vec![i as u8; len];
            out.extend(super::format::encode_record_header(&prefix, &payload).unwrap());
            out.extend(prefix);
            out.extend(payload);
        }
    }
    out
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Flip(at, mask) if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        Mutation::Cut(at) => bytes.truncate(at % (bytes.len() + 1)),
        Mutation::Insert(at, junk) => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, junk.iter().copied());
        }
        Mutation::Flip(..) => {}
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(at, j)| Mutation::Insert(at, j)),
    ]
}

/// Reads everything a log gives, ignoring errors: the point is that nothing panics.
fn read_everything(reader: Result<LogReader, LogError>) {
    if let Ok(mut reader) = reader {
        while let Ok(Some(_)) = reader.next() {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn damaged_segments_never_panic(
        entries in prop::collection::vec((0u8..3, 0usize..64), 0..12),
        mutations in prop::collection::vec(mutation(), 1..4),
        sealed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = valid_segment(&entries);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        fs::write(dir.path().join(format!("{:020}.seg", 1)), &bytes).unwrap();
        if sealed {
            // The damaged segment is sealed: a valid one follows it.
            let next = entries.len() as u64 + 1;
            let id = EntryId { term: Term(1), index: Index(next) };
            let mut log = Log::open(&dir.path().join("next"), LogOptions::default()).unwrap();
            log.append_entry(id, b"after").unwrap();
            log.flush().unwrap();
            let from = dir.path().join("next").join(format!("{next:020}.seg"));
            fs::rename(from, dir.path().join(format!("{next:020}.seg"))).unwrap();
        }
        read_everything(LogReader::open_offline(dir.path(), Index(1)));
        if let Ok(log) = Log::open(dir.path(), LogOptions::default()) {
            if let Some(first) = log.first_index() {
                read_everything(log.reader(first));
            }
        }
    }
}
