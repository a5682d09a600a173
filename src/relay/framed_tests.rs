//! `FrameReader` and `FrameWriter` over in-memory pipes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{duplex, AsyncWriteExt};

use super::FrameWriter;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Term};
use crate::relay::codec_tests::samples;
use crate::relay::*;

/// Longer than any of these tests should take; a hang fails instead of blocking the run.
const PATIENCE: Duration = Duration::from_secs(10);

fn big_record(len: usize) -> Message {
    Message::Record(Record {
        kind: RecordKind::Entry,
        id: EntryId { term: Term(2), index: Index(7) },
        payload: Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
    })
}

/// Sends `messages` through a pipe of `pipe_bytes` capacity, queued in one batch, and reads
/// them back.
async fn through_pipe(messages: Vec<Message>, pipe_bytes: usize) -> Vec<Message> {
    let (a, b) = duplex(pipe_bytes);
    let sent = messages.clone();
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(a);
        for m in &sent {
            w.queue(m).unwrap();
        }
        w.flush().await.unwrap();
    });
    let mut reader = FrameReader::new(b);
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(PATIENCE, reader.next()).await.unwrap().unwrap() {
        got.push(m);
    }
    writer.await.unwrap();
    got
}

#[tokio::test]
async fn messages_cross_a_pipe_in_one_batch() {
    let mut messages = samples();
    messages.push(big_record(3 * READ_CHUNK_BYTES + 17));
    messages.extend(samples());
    assert_eq!(through_pipe(messages.clone(), 1 << 20).await, messages);
}

#[tokio::test]
async fn frames_split_across_tiny_reads_are_reassembled() {
    let mut messages = samples();
    messages.push(big_record(5000));
    assert_eq!(through_pipe(messages.clone(), 3).await, messages);
}

#[tokio::test]
async fn send_writes_at_once() {
    let (a, b) = duplex(1 << 16);
    let mut writer = FrameWriter::new(a);
    let mut reader = FrameReader::new(b);
    for message in samples() {
        writer.send(&message).await.unwrap();
        assert_eq!(writer.queued_bytes(), 0);
        assert_eq!(reader.next().await.unwrap(), Some(message));
    }
}

#[tokio::test]
async fn a_huge_length_is_refused_at_once() {
    let (mut a, b) = duplex(64);
    // 4 GiB claimed, no body, and the connection stays open.
    a.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).await.unwrap();
    let mut reader = FrameReader::new(b);
    let result = tokio::time::timeout(PATIENCE, reader.next()).await.unwrap();
    assert!(matches!(result, Err(FrameError::TooLarge { len: 0xffff_ffff, .. })), "{result:?}");
    drop(a);
}

#[tokio::test]
async fn a_lowered_limit_refuses_large_frames() {
    let mut buf = BytesMut::new();
    encode_frame(&big_record(HANDSHAKE_MAX_FRAME_BYTES), &mut buf).unwrap();
    let mut reader = FrameReader::new(&buf[..]);
    reader.set_max_frame_bytes(HANDSHAKE_MAX_FRAME_BYTES);
    assert!(matches!(reader.next().await, Err(FrameError::TooLarge { .. })));
}

#[tokio::test]
async fn eof_between_frames_is_clean_and_inside_one_is_an_error() {
    let mut buf = BytesMut::new();
    encode_frame(&Message::SeedRequest, &mut buf).unwrap();
    encode_frame(&Message::SeedTableEnd { rows: 3 }, &mut buf).unwrap();
    let mut reader = FrameReader::new(&buf[..]);
    assert_eq!(reader.next().await.unwrap(), Some(Message::SeedRequest));
    assert_eq!(reader.next().await.unwrap(), Some(Message::SeedTableEnd { rows: 3 }));
    assert!(reader.next().await.unwrap().is_none());
    // The first frame, SeedRequest, is 9 bytes long.
    for cut in (1..buf.len()).filter(|&cut| cut != 9) {
        let mut reader = FrameReader::new(&buf[..cut]);
        let mut result = reader.next().await;
        if cut > 9 {
            assert_eq!(result.unwrap(), Some(Message::SeedRequest));
            result = reader.next().await;
        }
        assert!(matches!(result, Err(FrameError::Eof { .. })), "cut at {cut}: {result:?}");
    }
}

#[tokio::test]
async fn a_corrupt_frame_fails_its_checksum() {
    let mut buf = BytesMut::new();
    encode_frame(&big_record(100), &mut buf).unwrap();
    buf[50] ^= 0x10;
    let mut reader = FrameReader::new(&buf[..]);
    assert!(matches!(reader.next().await, Err(FrameError::Checksum { .. })));
}

#[tokio::test]
async fn a_large_write_buffer_is_released_after_flushing() {
    let (a, b) = duplex(1 << 20);
    let reading = tokio::spawn(async move {
        let mut reader = FrameReader::new(b);
        while reader.next().await.unwrap().is_some() {}
    });
    let mut writer = FrameWriter::new(a);
    writer.send(&big_record(4 << 20)).await.unwrap();
    assert!(writer.buf.capacity() <= WRITE_BUFFER_KEEP_BYTES);
    drop(writer);
    reading.await.unwrap();
}
