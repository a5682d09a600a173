//! The bodies of the fuzz targets (`fuzz/`), here so that `cargo test` replays every seed and
//! every crash the fuzzer kept on stable Rust (`tests/fuzz_corpora.rs`), and `cargo fuzz` runs
//! the very same checks on nightly. Each must return for every input: a panic is the bug.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::log::entry::{decode_entry, push_item, HEADER_BYTES};
use crate::pgoutput::{decode, Message as PgMessage, OldTuple, Tuple};
use crate::relay::{FrameReader, FrameWriter, Message, FRAME_HEADER_BYTES};

/// A target's checks: they return for every input, or panic on a bug.
pub type Check = fn(&[u8]);

/// Every target, by the name of its folder under `fuzz/seeds` and `fuzz/corpus`.
pub const TARGETS: &[(&str, Check)] =
    &[("pgoutput_decode", pgoutput_decode), ("relay_frame", relay_frame), ("log_entry", log_entry), ("config", config)];

/// pgoutput: `decode` returns, and everything it returns walks to the end.
pub fn pgoutput_decode(data: &[u8]) {
    let Ok(message) = decode(data) else { return };
    let _ = format!("{message:?}");
    match message {
        PgMessage::Relation(rel) => assert_eq!(rel.columns().count(), rel.column_count()),
        PgMessage::Insert { new, .. } => walk(new),
        PgMessage::Update { old, new, .. } => {
            if let Some(old) = old {
                walk(old.tuple());
            }
            walk(new);
        }
        PgMessage::Delete { old: OldTuple::Key(t) | OldTuple::Full(t), .. } => walk(t),
        PgMessage::Truncate { rel_ids, .. } => {
            let len = rel_ids.len();
            assert_eq!(rel_ids.count(), len);
        }
        PgMessage::Begin { .. }
        | PgMessage::Commit { .. }
        | PgMessage::Origin { .. }
        | PgMessage::Type { .. }
        | PgMessage::Message { .. } => {}
    }
}

fn walk(tuple: Tuple<'_>) {
    let values = tuple.values();
    assert_eq!(values.len(), tuple.len());
    assert_eq!(values.count(), tuple.len());
}

/// Relay frames: the body decoder, and a `FrameReader` over the same bytes as a stream of
/// frames. Whatever decodes encodes back to the very bytes it came from (the encoding is
/// canonical).
pub fn relay_frame(data: &[u8]) {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(frame_of(&message).get(FRAME_HEADER_BYTES..), Some(data));
    }
    let mut reader = FrameReader::new(data);
    let mut consumed = 0;
    while let Ok(Some(message)) = ready(reader.next()) {
        let frame = frame_of(&message);
        assert_eq!(data.get(consumed..consumed + frame.len()), Some(&frame[..]));
        consumed += frame.len();
    }
}

/// A log entry record's payload, as replay and `inspect` read it: the header, then items
/// until the end or the first error, each item through the pgoutput decoder. A payload that
/// reads without error encodes back to itself.
pub fn log_entry(data: &[u8]) {
    let Ok((header, items)) = decode_entry(data) else { return };
    let mut rebuilt = bytes::BytesMut::zeroed(HEADER_BYTES);
    let mut whole = true;
    for item in items {
        match item {
            Ok(item) => {
                pgoutput_decode(item);
                push_item(&mut rebuilt, item);
            }
            Err(_) => whole = false,
        }
    }
    header.write_into(&mut rebuilt);
    if whole {
        assert_eq!(&rebuilt[..], data);
    }
}

/// The configuration file: any text parses to a configuration or to an error naming a key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::config::Config::parse(std::path::Path::new("fuzz.toml"), text);
}

/// Runs a future that never waits: reading a slice and writing a `Vec` are always ready.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("in-memory I/O returned Pending"),
    }
}

fn frame_of(message: &Message) -> Vec<u8> {
    let mut writer = FrameWriter::new(Vec::new());
    ready(writer.send(message)).expect("a decoded message encodes");
    writer.get_ref().clone()
}
