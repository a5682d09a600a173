use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{Batch, Received};
use crate::log::committer::Output;
use crate::log::entry::{EntryHeader, EntryKind, HEADER_BYTES};
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};
use crate::node::LeaderView;
use crate::relay::client::FollowError;
use crate::relay::{encode_frame, FrameReader, LeaderStatus, Message};

fn id(index: u64) -> EntryId {
    EntryId { term: Term(2), index: Index(index) }
}

fn chunk(index: u64) -> Message {
    Message::Record(Record { kind: RecordKind::Chunk, id: id(index), payload: Bytes::from_static(b"part") })
}

fn entry(index: u64, end_lsn: u64) -> Message {
    let header = EntryHeader {
        kind: EntryKind::Transaction,
        commit_lsn: Lsn(end_lsn - 8),
        end_lsn: Lsn(end_lsn),
        commit_time: 0,
        xid: 7,
    };
    let mut payload = vec![0u8; HEADER_BYTES];
    header.write_into(&mut payload);
    Message::Record(Record { kind: RecordKind::Entry, id: id(index), payload: payload.into() })
}

fn received(expected: u64) -> Received {
    Received { expected: Index(expected), last: None, open_entry: false }
}

fn no_leader() -> watch::Sender<Option<LeaderView>> {
    watch::channel(None).0
}

/// A reader of `messages`, framed; nothing is buffered before its first read.
fn reader(messages: &[Message]) -> FrameReader<Cursor<Vec<u8>>> {
    let mut bytes = BytesMut::new();
    for m in messages {
        encode_frame(m, &mut bytes).unwrap();
    }
    FrameReader::new(Cursor::new(bytes.to_vec()))
}

#[test]
fn an_entry_arrives_as_its_chunks_then_its_entry_record() {
    let mut r = received(5);
    let mut batch = Batch::default();
    let leader = no_leader();
    r.take(chunk(5), &mut batch, &leader).unwrap();
    assert!(r.open_entry, "a chunk without its entry record leaves the entry open");
    assert_eq!(r.expected, Index(5));
    r.take(entry(5, 100), &mut batch, &leader).unwrap();
    assert!(!r.open_entry);
    assert_eq!(r.expected, Index(6));
    assert_eq!(batch.last_entry, Some(id(5)));
    assert!(matches!(batch.records[..], [Output::Chunk { .. }, Output::Entry { end_lsn: Lsn(100), .. }]));
}

#[test]
fn a_record_out_of_order_is_refused() {
    let mut r = received(5);
    let err = r.take(entry(6, 100), &mut Batch::default(), &no_leader()).unwrap_err();
    assert!(matches!(err, FollowError::OutOfOrder { expected: Index(5), got } if got == id(6)), "{err}");
}

#[test]
fn an_entry_with_a_short_header_is_refused() {
    let record = Record { kind: RecordKind::Entry, id: id(5), payload: Bytes::from_static(b"short") };
    let err = received(5).take(Message::Record(record), &mut Batch::default(), &no_leader()).unwrap_err();
    assert!(matches!(err, FollowError::BadEntry(got) if got == id(5)), "{err}");
}

#[test]
fn leader_status_updates_the_view_of_a_known_leader_only() {
    let status = LeaderStatus { last_index: Some(Index(9)), durable_end_lsn: Lsn(900), time_us: 1 };
    let leader = no_leader();
    received(1).take(Message::LeaderStatus(status), &mut Batch::default(), &leader).unwrap();
    assert_eq!(*leader.borrow(), None);
    leader.send_replace(Some(LeaderView { node: "a".into(), status: None }));
    received(1).take(Message::LeaderStatus(status), &mut Batch::default(), &leader).unwrap();
    assert_eq!(*leader.borrow(), Some(LeaderView { node: "a".into(), status: Some(status) }));
}

#[test]
fn errors_and_messages_out_of_place_end_the_stream() {
    let err = received(1).take(Message::Error { message: "bye".into() }, &mut Batch::default(), &no_leader());
    assert!(matches!(err, Err(FollowError::Peer(m)) if m == "bye"));
    let err = received(1).take(Message::SeedRequest, &mut Batch::default(), &no_leader());
    assert!(matches!(err, Err(FollowError::Unexpected(_))));
}

#[test]
fn gather_takes_what_is_buffered_and_remembers_the_last_entry() {
    let mut reader = reader(&[chunk(2), entry(2, 200)]);
    // Nothing is buffered before the first read: the batch is the first message alone.
    let mut r = Received { expected: Index(1), last: Some(id(0)), open_entry: false };
    let batch = r.gather(Some(entry(1, 100)), &mut reader, &no_leader()).unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(r.last, Some(id(1)));
    // A status alone leaves the last entry as it was.
    let status = LeaderStatus { last_index: None, durable_end_lsn: Lsn(0), time_us: 0 };
    let batch = r.gather(Some(Message::LeaderStatus(status)), &mut reader, &no_leader()).unwrap();
    assert!(batch.records.is_empty());
    assert_eq!(r.last, Some(id(1)));
}

#[tokio::test]
async fn gather_batches_frames_already_read() {
    let mut reader = reader(&[chunk(1), entry(1, 100), entry(2, 200)]);
    let first = reader.next().await.unwrap();
    let mut r = received(1);
    let batch = r.gather(first, &mut reader, &no_leader()).unwrap();
    assert_eq!(batch.records.len(), 3);
    assert_eq!((r.expected, r.last, r.open_entry), (Index(3), Some(id(2)), false));
}

#[test]
fn the_end_of_the_stream_is_an_error() {
    let gathered = received(1).gather(None, &mut reader(&[]), &no_leader());
    assert!(matches!(gathered, Err(FollowError::Closed)));
}
