//! The relay decoders must return for every input: the body decoder, and a `FrameReader` over
//! the same bytes taken as a stream of frames. Whatever decodes must encode back to the very
//! bytes it came from (the encoding is canonical).
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use walship::relay::{FrameReader, FrameWriter, Message, FRAME_HEADER_BYTES};

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

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(&frame_of(&message)[FRAME_HEADER_BYTES..], data);
    }
    let mut reader = FrameReader::new(data);
    let mut consumed = 0;
    while let Ok(Some(message)) = ready(reader.next()) {
        let frame = frame_of(&message);
        assert_eq!(data.get(consumed..consumed + frame.len()), Some(&frame[..]));
        consumed += frame.len();
    }
});
