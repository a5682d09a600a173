//! Round trips and hostile inputs for the message and frame codec.

use bytes::{Bytes, BytesMut};

use super::codec::{decode_body, decode_header};
use super::*;
use crate::log::terms::TermStart;
use crate::log::{Record, RecordKind};
use crate::lsn::{EntryId, Index, Lsn, Term};

fn id(term: u64, index: u64) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

/// At least one of every message, with edge values.
pub(crate) fn samples() -> Vec<Message> {
    let mut all = handshake_samples();
    all.extend(stream_samples());
    all.extend(seed_samples());
    all
}

fn handshake_samples() -> Vec<Message> {
    let codes = [
        RefuseCode::WrongCluster,
        RefuseCode::BadProof,
        RefuseCode::UnsupportedVersion,
        RefuseCode::NotLeader,
        RefuseCode::StaleTerm,
        RefuseCode::NotRetained { first: Index(77) },
        RefuseCode::Busy,
        RefuseCode::Other,
        RefuseCode::Diverged(Box::new(LeaderTerms {
            terms: vec![
                TermStart { term: Term(1), first_index: Index(1) },
                TermStart { term: Term(3), first_index: Index(90) },
            ],
            last: Some(Index(120)),
        })),
        RefuseCode::Diverged(Box::new(LeaderTerms { terms: Vec::new(), last: None })),
    ];
    let mut all = vec![
        Message::Challenge(Challenge {
            version: PROTOCOL_VERSION,
            cluster: "shop".into(),
            leader_node: "a".into(),
            term: Term(3),
            is_leader: true,
            nonce: [7; 32],
        }),
        Message::Hello(Hello {
            version: u16::MAX,
            cluster: "".into(),
            node: "nœud-β".into(),
            term: Term(u64::MAX),
            flushed: Some(id(2, 41)),
            seed: true,
            nonce: [1; 32],
            proof: [2; 32],
        }),
        Message::Hello(Hello {
            version: 1,
            cluster: "shop".into(),
            node: "b".into(),
            term: Term(0),
            flushed: None,
            seed: false,
            nonce: [0; 32],
            proof: [255; 32],
        }),
        Message::Welcome(Welcome {
            term: Term(3),
            leader_node: "a".into(),
            first_index: Some(Index(1)),
            last_index: None,
            proof: [9; 32],
        }),
        Message::Error { message: "".into() },
        Message::Error { message: "disk full".into() },
    ];
    all.extend(codes.into_iter().map(|code| {
        let message = format!("because {code}");
        Message::Refuse(Refuse { code, message })
    }));
    all
}

fn stream_samples() -> Vec<Message> {
    vec![
        Message::Record(Record { kind: RecordKind::Chunk, id: id(1, 1), payload: Bytes::from_static(b"part") }),
        Message::Record(Record { kind: RecordKind::Entry, id: id(u64::MAX, u64::MAX), payload: Bytes::new() }),
        Message::LeaderStatus(LeaderStatus {
            last_index: Some(Index(90)),
            durable_end_lsn: Lsn(0x16_B374_D848),
            time_us: -1,
        }),
        Message::Ack(Ack { received: Some(id(3, 9)), flushed: Some(id(3, 8)), applied: None, applied_lsn: Lsn::ZERO }),
    ]
}

fn seed_samples() -> Vec<Message> {
    vec![
        Message::SeedRequest,
        Message::SeedBegin { position: None, snapshot_lsn: Lsn(1) },
        Message::SeedSchema { sql: Bytes::from_static(b"CREATE TABLE t (id int);") },
        Message::SeedTable {
            schema: "public".into(),
            name: "orders".into(),
            columns: vec!["id".into(), "".into(), "note".into()],
        },
        Message::SeedTable { schema: "s".into(), name: "empty".into(), columns: vec![] },
        Message::SeedData { bytes: Bytes::from_static(b"1\t\\N\tx\n") },
        Message::SeedTableEnd { rows: 12 },
        Message::SeedEnd { tables: 2, rows: 12, bytes: 4096 },
    ]
}

fn body(message: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf).unwrap();
    buf.to_vec()
}

fn frame(message: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(message, &mut buf).unwrap();
    buf.to_vec()
}

/// Decodes one whole frame the way `FrameReader` does.
fn decode_frame(frame: &[u8]) -> Result<Message, FrameError> {
    let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
    let header = decode_header(header, MAX_FRAME_BYTES)?;
    assert_eq!(header.body_len, frame.len() - FRAME_HEADER_BYTES);
    decode_body(header, Bytes::copy_from_slice(&frame[FRAME_HEADER_BYTES..]))
}

#[test]
fn every_message_round_trips() {
    for message in samples() {
        assert_eq!(Message::decode(&body(&message)).unwrap(), message);
        assert_eq!(decode_frame(&frame(&message)).unwrap(), message);
    }
}

#[test]
fn every_truncation_is_an_error() {
    for message in samples() {
        let body = body(&message);
        for len in 0..body.len() {
            let result = Message::decode(&body[..len]);
            assert!(result.is_err(), "{} cut to {len} bytes decoded: {result:?}", message.name());
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for message in samples() {
        let mut body = body(&message);
        body.push(0);
        assert!(matches!(Message::decode(&body), Err(FrameError::TrailingBytes { extra: 1, .. })));
    }
}

#[test]
fn a_flipped_bit_fails_the_crc() {
    for message in samples() {
        let frame = frame(&message);
        // Every bit of the crc and the body; the length is tested with the reader.
        for bit in 8 * 4..8 * frame.len() {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let result = decode_frame(&bad);
            assert!(matches!(result, Err(FrameError::Checksum { .. })), "bit {bit}: {result:?}");
        }
    }
}

#[test]
fn frame_lengths_are_checked_first() {
    let max = MAX_FRAME_BYTES as u32;
    let header = |len: u32| {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h
    };
    assert!(matches!(decode_header(header(u32::MAX), MAX_FRAME_BYTES), Err(FrameError::TooLarge { .. })));
    assert!(matches!(decode_header(header(max + 1), MAX_FRAME_BYTES), Err(FrameError::TooLarge { .. })));
    assert!(matches!(decode_header(header(0), MAX_FRAME_BYTES), Err(FrameError::Empty)));
    assert_eq!(decode_header(header(max), MAX_FRAME_BYTES).unwrap().body_len, MAX_FRAME_BYTES);
    assert!(matches!(decode_header(header(101), 100), Err(FrameError::TooLarge { len: 101, max: 100 })));
}

#[test]
fn invalid_fields_are_errors() {
    let invalid = |bytes: &[u8]| Message::decode(bytes).unwrap_err();
    assert!(matches!(invalid(&[0]), FrameError::UnknownType(0)));
    assert!(matches!(invalid(&[99]), FrameError::UnknownType(99)));
    // Record of kind 3.
    let mut record = body(&stream_samples()[0]);
    record[1] = 3;
    assert!(matches!(invalid(&record), FrameError::Invalid { field: "kind", .. }));
    // Refuse with code 10.
    assert!(matches!(invalid(&[4, 10, 0, 0]), FrameError::Invalid { field: "code", .. }));
    // Error message that is not UTF-8.
    assert!(matches!(invalid(&[5, 1, 0, 0xff]), FrameError::Invalid { field: "message", .. }));
    // SeedBegin whose position flag is 2.
    assert!(matches!(invalid(&[21, 2]), FrameError::Invalid { field: "position", .. }));
    // A blob claiming 4 GiB in a small body.
    assert!(matches!(invalid(&[24, 255, 255, 255, 255, 1]), FrameError::Truncated { .. }));
    // SeedTable claiming 65535 columns.
    assert!(matches!(invalid(&[23, 0, 0, 0, 0, 255, 255]), FrameError::Truncated { .. }));
}

#[test]
fn decoded_payloads_share_the_body() {
    let body = Bytes::from(body(&stream_samples()[0]));
    let Message::Record(record) = Message::decode_bytes(body.clone()).unwrap() else {
        panic!("not a record");
    };
    let range = body.as_ptr_range();
    assert!(range.contains(&record.payload.as_ptr()));
}

#[test]
fn names_that_do_not_fit_fail_to_encode_and_leave_the_buffer() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let message = Message::SeedTable { schema: "s".into(), name: "x".repeat(70_000), columns: vec![] };
    let error = encode_frame(&message, &mut buf).unwrap_err();
    assert!(matches!(error, FrameError::FieldTooLong { field: "name", len: 70_000, .. }));
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn long_messages_are_cut_at_a_character_boundary() {
    let message = Message::Error { message: "é".repeat(40_000) };
    let Message::Error { message: decoded } = Message::decode(&body(&message)).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(decoded, "é".repeat(32_767));
}
