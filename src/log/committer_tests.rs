//! The committer on its own: what it publishes, when, and what a group leaves on disk.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::log::entry::{EntryKind, HEADER_BYTES};
use crate::log::tests::read_all;
use crate::log::LogOptions;
use crate::lsn::Term;

fn id(index: u64) -> EntryId {
    EntryId { term: Term(1), index: Index(index) }
}

/// An entry record whose header carries `end_lsn` and a commit time of `index * 10`.
fn entry(index: u64, end_lsn: u64) -> Output {
    let header = EntryHeader {
        kind: EntryKind::Transaction,
        commit_lsn: Lsn(end_lsn - 1),
        end_lsn: Lsn(end_lsn),
        commit_time: index as i64 * 10,
        xid: 700 + index as u32,
    };
    let mut payload = BytesMut::zeroed(HEADER_BYTES);
    payload.extend_from_slice(format!("changes of {index}").as_bytes());
    header.write_into(&mut payload);
    Output::Entry { id: id(index), payload: payload.freeze(), end_lsn: Lsn(end_lsn) }
}

fn chunk(index: u64, text: &str) -> Output {
    Output::Chunk { id: id(index), payload: Bytes::copy_from_slice(text.as_bytes()) }
}

/// What the listener saw at each call, checked against the log and the watch channel.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Durable>>>);

struct CheckingListener {
    seen: Seen,
    log: Arc<Mutex<Log>>,
    published: watch::Receiver<Durable>,
}

impl DurableListener for CheckingListener {
    fn durable(&mut self, durable: Durable) {
        // Reported only after the fsync that covers it, and after it was published.
        let flushed = self.log.lock().unwrap().last_flushed();
        assert_eq!(flushed, durable.last, "reported {durable:?} but the log has fsynced {flushed:?}");
        assert_eq!(*self.published.borrow(), durable, "reported before it was published");
        self.seen.0.lock().unwrap().push(durable);
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    log: Arc<Mutex<Log>>,
    tx: mpsc::Sender<WriteCmd>,
    rx: Option<mpsc::Receiver<WriteCmd>>,
    durable: watch::Receiver<Durable>,
    durable_tx: Option<watch::Sender<Durable>>,
    marks: EntryMarks,
    seen: Seen,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Log::open(dir.path(), LogOptions::default()).unwrap()));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_BATCHES);
        let (durable_tx, durable) = watch::channel(Durable::default());
        Harness {
            _dir: dir,
            log,
            tx,
            rx: Some(rx),
            durable,
            durable_tx: Some(durable_tx),
            marks: EntryMarks::default(),
            seen: Seen::default(),
        }
    }

    /// Starts the writer; batches already queued make its first group.
    fn spawn(&mut self, start: Durable) -> WriterThread {
        let listener =
            CheckingListener { seen: self.seen.clone(), log: self.log.clone(), published: self.durable.clone() };
        let (rx, durable_tx) = (self.rx.take().unwrap(), self.durable_tx.take().unwrap());
        Writer::spawn(self.log.clone(), start, rx, listener, durable_tx, self.marks.clone()).unwrap()
    }

    fn send(&self, records: Vec<Output>) {
        self.tx.try_send(WriteCmd::Records(records)).unwrap();
    }

    fn wait_for(&mut self, last: u64) -> Durable {
        let mut durable = self.durable.clone();
        let reached = |d: &Durable| d.last.is_some_and(|l| l.index.0 >= last);
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), durable.wait_for(reached)).await.unwrap().unwrap();
        });
        *self.durable.borrow()
    }
}

#[test]
fn batches_queued_together_are_one_group_with_one_report() {
    let mut h = Harness::new();
    for i in 1..=WRITE_QUEUE_BATCHES as u64 {
        h.send(vec![entry(i, 100 * i)]);
    }
    let writer = h.spawn(Durable::default());
    let last = WRITE_QUEUE_BATCHES as u64;
    let durable = h.wait_for(last);
    assert_eq!(durable, Durable { last: Some(id(last)), end_lsn: Lsn(100 * last) });
    // The listener runs just after publishing: join before looking at what it saw.
    drop(h.tx);
    writer.join().unwrap().unwrap();
    assert_eq!(*h.seen.0.lock().unwrap(), vec![durable], "one fsync, one report for the whole group");
}

#[test]
fn the_durable_end_moves_with_entries_never_with_chunks() {
    let mut h = Harness::new();
    let start = Durable { last: None, end_lsn: Lsn(50) };
    let writer = h.spawn(start);
    h.send(vec![entry(1, 100)]);
    h.wait_for(1);
    h.send(vec![chunk(2, "first half"), chunk(2, "second half")]);
    // The chunks' group publishes no new end; the entry that closes them does.
    h.send(vec![entry(2, 200)]);
    h.wait_for(2);
    drop(h.tx);
    writer.join().unwrap().unwrap();
    let seen = h.seen.0.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&Durable { last: Some(id(1)), end_lsn: Lsn(100) }));
    assert_eq!(seen.last(), Some(&Durable { last: Some(id(2)), end_lsn: Lsn(200) }));
    for d in &seen {
        let expected = match d.last {
            Some(l) if l.index.0 == 1 => Lsn(100),
            Some(_) => Lsn(200),
            None => Lsn(50),
        };
        assert_eq!(d.end_lsn, expected, "{d:?}: end_lsn belongs to the last complete entry");
    }
    assert!(seen.windows(2).all(|w| w[0].end_lsn <= w[1].end_lsn), "reports never go back: {seen:?}");
}

#[test]
fn dropping_an_unfinished_transaction_keeps_every_complete_entry() {
    let mut h = Harness::new();
    let writer = h.spawn(Durable::default());
    h.send(vec![entry(1, 100), chunk(2, "sent before the stream broke")]);
    h.tx.try_send(WriteCmd::DropUnfinished).unwrap();
    h.send(vec![chunk(2, "sent again"), entry(2, 200)]);
    h.wait_for(2);
    drop(h.tx);
    writer.join().unwrap().unwrap();
    let log = h.log.lock().unwrap();
    let records = read_all(&mut log.reader(Index(1)).unwrap());
    let got: Vec<(RecordKind, u64, Bytes)> = records.into_iter().map(|r| (r.kind, r.id.index.0, r.payload)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (RecordKind::Entry, 1));
    assert_eq!((got[1].0, got[1].1, &got[1].2[..]), (RecordKind::Chunk, 2, &b"sent again"[..]));
    assert_eq!((got[2].0, got[2].1), (RecordKind::Entry, 2));
}

#[test]
fn a_closed_queue_ends_the_writer_with_everything_on_disk_and_marked() {
    let mut h = Harness::new();
    let writer = h.spawn(Durable::default());
    for i in 1..=200u64 {
        // Blocks only while the queue is full; the writer drains it.
        h.tx.blocking_send(WriteCmd::Records(vec![entry(i, 100 * i)])).unwrap();
    }
    drop(h.tx);
    writer.join().unwrap().unwrap();
    assert_eq!(h.durable.borrow().last, Some(id(200)));
    assert_eq!(h.marks.newest(), Some(Mark { index: Index(200), commit_time: 2000, end_lsn: Lsn(20_000) }));
    assert_eq!(h.marks.at_or_oldest(Index(150)).map(|m| m.commit_time), Some(1500));
    // What the writer said was durable is what a fresh open of the directory finds.
    let dir = h.log.lock().unwrap().dir().to_path_buf();
    drop(h.log);
    let reopened = Log::open(&dir, LogOptions::default()).unwrap();
    assert_eq!(reopened.last_written(), Some(id(200)));
    assert_eq!(Durable::of_log(&reopened).unwrap(), Durable { last: Some(id(200)), end_lsn: Lsn(20_000) });
}

/// A follower's writer: a small batch while nothing is queued is durable and published when
/// `write` returns (inline); while fsyncs look expensive, batches go through the thread; a
/// large one always does; the log ends in order either way, every report checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_writer_commits_small_batches_inline_and_keeps_order_with_its_thread() {
    let h = Harness::new();
    let listener = CheckingListener { seen: h.seen.clone(), log: h.log.clone(), published: h.durable.clone() };
    let durable_tx = watch::channel(Durable::default()).0;
    let mut durable = durable_tx.subscribe();
    let listener = CheckingListener { published: durable.clone(), ..listener };
    let committer = Committer::new(h.log.clone(), Durable::default(), listener, durable_tx, h.marks.clone());
    let (writer, thread) = SharedWriter::spawn(committer, 4).unwrap();

    writer.write(WriteCmd::Records(vec![entry(1, 100)])).await.unwrap();
    assert_eq!(durable.borrow_and_update().last, Some(id(1)), "inline: durable on return");

    // Pretend fsyncs cost milliseconds: the next batch goes to the thread.
    writer.shared.fsync_micros.store(INLINE_FSYNC_MAX.as_micros() as u64 + 1, Ordering::Relaxed);
    writer.write(WriteCmd::Records(vec![entry(2, 200)])).await.unwrap();
    writer.shared.fsync_micros.store(0, Ordering::Relaxed);
    // A large batch, and small ones right behind it: they wait their turn in the queue.
    let big = Output::Chunk { id: id(3), payload: Bytes::from(vec![0u8; INLINE_COMMIT_BYTES + 1]) };
    writer.write(WriteCmd::Records(vec![big, entry(3, 300)])).await.unwrap();
    for i in 4..=20 {
        writer.write(WriteCmd::Records(vec![entry(i, i * 100)])).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), durable.wait_for(|d| d.last == Some(id(20))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(durable.borrow().end_lsn, Lsn(2000));
    drop(writer);
    tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap().unwrap();
    let mut reader = h.log.lock().unwrap().reader(Index(1)).unwrap();
    let ids: Vec<u64> =
        read_all(&mut reader).iter().filter(|r| matches!(r.kind, RecordKind::Entry)).map(|r| r.id.index.0).collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    let seen = h.seen.0.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0].end_lsn <= w[1].end_lsn), "reports never go back: {seen:?}");
}
