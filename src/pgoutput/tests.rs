//! Tests on messages captured from PostgreSQL 15 (`testdata/pg15.hex`, made by
//! `testdata/pg15.sql`) and on hand-made malformed ones.

use super::*;

const PG15: &str = include_str!("testdata/pg15.hex");

/// Every captured message as (name, bytes), in the order PostgreSQL sent them.
fn captured() -> Vec<(&'static str, Vec<u8>)> {
    PG15.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "bad fixture line {line:?}");
            (fields[0], unhex(fields[3]))
        })
        .collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2));
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

fn msg(name: &str) -> Vec<u8> {
    let found = captured().into_iter().find(|(n, _)| *n == name);
    found.unwrap_or_else(|| panic!("no captured message {name}")).1
}

fn text(s: &str) -> Value<'_> {
    Value::Text(s.as_bytes())
}

fn values(t: Tuple<'_>) -> Vec<Value<'_>> {
    let values: Vec<Value<'_>> = t.values().collect();
    assert_eq!(values.len(), t.len());
    values
}

/// `first` followed by `nulls` NULLs.
fn key_and_nulls(first: &str, nulls: usize) -> Vec<Value<'_>> {
    std::iter::once(text(first)).chain(std::iter::repeat_n(Value::Null, nulls)).collect()
}

#[test]
fn every_captured_message_decodes_completely() {
    let all = captured();
    assert_eq!(all.len(), 70);
    for (name, buf) in &all {
        match decode(buf).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Message::Relation(r) => assert_eq!(r.columns().count(), r.column_count(), "{name}"),
            Message::Insert { new, .. } => assert_eq!(new.values().count(), new.len()),
            Message::Update { new, .. } => assert_eq!(new.values().count(), new.len()),
            Message::Delete { old, .. } => {
                assert_eq!(old.tuple().values().count(), old.tuple().len())
            }
            _ => {}
        }
    }
}

#[test]
fn begin_and_commit() {
    let commit_time = 0x0003_042c_788c_c504;
    assert_eq!(decode(&msg("begin")).unwrap(), Message::Begin { final_lsn: Lsn(0x153_fcd8), commit_time, xid: 736 });
    let commit = msg("commit");
    let Message::Commit { flags, commit_lsn, end_lsn, commit_time: t } = decode(&commit).unwrap() else {
        panic!("not a commit");
    };
    assert_eq!((flags, t), (0, commit_time));
    assert_eq!((commit_lsn.to_string(), end_lsn.to_string()), ("0/153FCD8".into(), "0/153FD08".into()));
}

#[test]
fn origin_and_its_transaction() {
    let origin = msg("origin");
    assert_eq!(decode(&origin).unwrap(), Message::Origin { commit_lsn: Lsn(0x1_2345_6789), name: "upstream" });
    // pg_replication_origin_xact_setup('1/23456789', '2024-05-06 07:08:09+00') sets the commit time.
    let Message::Begin { commit_time, .. } = decode(&msg("begin_with_origin")).unwrap() else {
        panic!("not a begin");
    };
    assert_eq!(commit_time, 768_294_489_000_000);
}

#[test]
fn types_of_an_enum_and_a_domain() {
    let mood = msg("type_mood");
    assert_eq!(decode(&mood).unwrap(), Message::Type { oid: 0x4001, namespace: "public", name: "mood" });
    // A domain is described by its base type; pg_catalog is sent as an empty namespace.
    let posint = msg("type_posint");
    assert_eq!(decode(&posint).unwrap(), Message::Type { oid: 0x4008, namespace: "", name: "int4" });
}

#[test]
fn relation_with_many_types() {
    let buf = msg("relation_kinds");
    let Message::Relation(rel) = decode(&buf).unwrap() else { panic!("not a relation") };
    assert_eq!((rel.rel_id, rel.namespace, rel.name, rel.replica_identity), (0x400b, "public", "kinds", b'd'));
    let columns: Vec<(u8, &str, u32, i32)> =
        rel.columns().map(|c| (c.flags, c.name, c.type_oid, c.type_modifier)).collect();
    assert_eq!(
        columns,
        [
            (COLUMN_KEY, "id", 23, -1),
            (0, "t", 25, -1),
            (0, "n", 1700, (10 << 16 | 2) + 4),
            (0, "b", 17, -1),
            (0, "j", 3802, -1),
            (0, "ts", 1184, -1),
            (0, "arr", 1007, -1),
            (0, "m", 0x4001, -1),
            (0, "d", 0x4008, -1),
            (0, "big", 25, -1),
        ]
    );
    assert_eq!(rel.columns().len(), 10);
}

#[test]
fn relation_in_another_schema_with_quoted_names() {
    let buf = msg("relation_weird");
    let Message::Relation(rel) = decode(&buf).unwrap() else { panic!("not a relation") };
    assert_eq!((rel.namespace, rel.name), ("other", "Weird Name"));
    let columns: Vec<Column<'_>> = rel.columns().collect();
    assert_eq!(columns[0], Column { flags: COLUMN_KEY, name: "k", type_oid: 20, type_modifier: -1 });
    assert_eq!(columns[1], Column { flags: 0, name: "v V", type_oid: 1043, type_modifier: 24 });
    let insert = msg("insert_weird");
    let Message::Insert { rel_id, new } = decode(&insert).unwrap() else { panic!("not an insert") };
    assert_eq!(Some(rel_id), Some(rel.rel_id));
    assert_eq!(values(new), [text("1"), text("ä ünïcode")]);
}

#[test]
fn insert_with_many_types_and_a_toasted_value() {
    let buf = msg("insert_kinds_1");
    let Message::Insert { rel_id, new } = decode(&buf).unwrap() else { panic!("not an insert") };
    assert_eq!(rel_id, 0x400b);
    let mut got = values(new);
    assert_eq!(got.pop(), Some(Value::Text("x".repeat(3000).as_bytes())));
    let expected = [
        "1",
        "hello",
        "12.34",
        "\\xdeadbeef",
        r#"{"a": [1, null]}"#,
        "2024-01-02 03:04:05.678901+00",
        "{1,2,3}",
        "happy",
        "7",
    ];
    assert_eq!(got, expected.map(text));
}

#[test]
fn insert_of_nulls() {
    let buf = msg("insert_kinds_nulls");
    let Message::Insert { new, .. } = decode(&buf).unwrap() else { panic!("not an insert") };
    assert_eq!(values(new), key_and_nulls("2", 9));
}

#[test]
fn update_leaving_a_toasted_value_unchanged() {
    let buf = msg("update_unchanged_toast");
    let Message::Update { rel_id, old, new } = decode(&buf).unwrap() else { panic!("not an update") };
    assert_eq!((rel_id, old), (0x400b, None));
    let got = values(new);
    assert_eq!(got[..2], [text("1"), text("changed")]);
    assert_eq!(got[9], Value::UnchangedToast);
}

#[test]
fn update_of_the_key_sends_the_old_key() {
    let buf = msg("update_key_change");
    let Message::Update { old: Some(OldTuple::Key(old)), new, .. } = decode(&buf).unwrap() else {
        panic!("not an update with an old key")
    };
    assert_eq!(values(old), key_and_nulls("2", 9));
    assert_eq!(values(new), key_and_nulls("10", 9));
}

#[test]
fn delete_by_key() {
    let buf = msg("delete_key");
    let Message::Delete { rel_id, old: OldTuple::Key(old) } = decode(&buf).unwrap() else {
        panic!("not a delete by key")
    };
    assert_eq!(rel_id, 0x400b);
    assert_eq!(values(old), key_and_nulls("10", 9));
}

#[test]
fn replica_identity_full_sends_the_old_row() {
    let rel = msg("relation_full_ri");
    let Message::Relation(rel) = decode(&rel).unwrap() else { panic!("not a relation") };
    assert_eq!(rel.replica_identity, b'f');
    assert!(rel.columns().all(|c| c.flags == COLUMN_KEY));

    let update = msg("update_full");
    let Message::Update { old: Some(OldTuple::Full(old)), new, .. } = decode(&update).unwrap() else {
        panic!("not an update with the full old row")
    };
    assert_eq!(values(old), [text("1"), text("one")]);
    assert_eq!(values(new), [text("1"), text("uno")]);

    let delete = msg("delete_full");
    let Message::Delete { old: OldTuple::Full(old), .. } = decode(&delete).unwrap() else {
        panic!("not a delete of the full row")
    };
    assert_eq!(values(old), [text("2"), Value::Null]);
}

#[test]
fn truncate_options_and_relations() {
    let cases: [(&str, u8, &[u32]); 4] = [
        ("truncate_plain", 0, &[0x4019]),
        ("truncate_cascade", TRUNCATE_CASCADE, &[0x401e, 0x4023]),
        ("truncate_restart", TRUNCATE_RESTART_IDENTITY, &[0x4013]),
        ("truncate_both", TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY, &[0x400b, 0x4019]),
    ];
    for (name, expected_options, expected_ids) in cases {
        let buf = msg(name);
        let Message::Truncate { options, rel_ids } = decode(&buf).unwrap() else { panic!("{name}") };
        assert_eq!(options, expected_options, "{name}");
        assert_eq!(rel_ids.len(), expected_ids.len(), "{name}");
        assert_eq!(rel_ids.collect::<Vec<u32>>(), expected_ids, "{name}");
    }
}

#[test]
fn logical_decoding_messages() {
    let buf = msg("message_transactional");
    assert_eq!(
        decode(&buf).unwrap(),
        Message::Message { transactional: true, lsn: Lsn(0x154_37e0), prefix: "walship", content: b"hello" }
    );
    let buf = msg("message_non_transactional");
    assert_eq!(
        decode(&buf).unwrap(),
        Message::Message {
            transactional: false,
            lsn: Lsn(0x154_3850),
            prefix: "walship.nt",
            content: &[0x00, 0xff, 0x01]
        }
    );
}

#[test]
fn relation_id_matches_full_decode() {
    for (name, buf) in captured() {
        let expected = match decode(&buf).unwrap() {
            Message::Relation(r) => Some(r.rel_id),
            Message::Insert { rel_id, .. } | Message::Update { rel_id, .. } | Message::Delete { rel_id, .. } => {
                Some(rel_id)
            }
            _ => None,
        };
        assert_eq!(relation_id(&buf), expected, "{name}");
        assert_eq!(relation_id(&buf[..buf.len().min(4)]), None, "{name}");
    }
    assert_eq!(relation_id(b""), None);
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    for (name, buf) in captured() {
        for len in 0..buf.len() {
            assert!(decode(&buf[..len]).is_err(), "{name} cut to {len} bytes decoded");
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for (name, mut buf) in captured() {
        let offset = buf.len();
        buf.extend_from_slice(b"\0\0");
        assert_eq!(decode(&buf), Err(DecodeError::TrailingBytes { offset, len: 2 }), "{name}");
    }
}

#[test]
fn unknown_tags_are_rejected() {
    for tag in (0..=u8::MAX).filter(|t| !b"BCORYIUDTM".contains(t)) {
        assert_eq!(decode(&[tag, 0, 0, 0, 0]), Err(DecodeError::UnknownMessage(tag)));
    }
    // Streaming and two-phase messages need protocol versions 2 and 3.
    assert_eq!(decode(b"S"), Err(DecodeError::UnknownMessage(b'S')));
}

#[test]
fn single_byte_changes_never_panic() {
    for (_, buf) in captured() {
        for i in 0..buf.len() {
            for b in [0x00, 0x7f, 0x80, 0xff, b'N', b'n'] {
                let mut changed = buf.clone();
                changed[i] = b;
                if let Ok(m) = decode(&changed) {
                    let _ = format!("{m:?}");
                }
            }
        }
    }
}

/// An Insert into relation 1 with the given tuple bytes (column count first).
fn insert_of(tuple: &[u8]) -> Vec<u8> {
    [b"I\0\0\0\x01N".as_slice(), tuple].concat()
}

#[test]
fn binary_values_are_accepted() {
    let buf = insert_of(b"\0\x02b\0\0\0\x02\x01\x02t\0\0\0\0");
    let Message::Insert { new, .. } = decode(&buf).unwrap() else { panic!("not an insert") };
    assert_eq!(values(new), [Value::Binary(&[1, 2]), Value::Text(b"")]);
    assert_eq!(format!("{new:?}"), r#"[Binary("\x01\x02"), Text("")]"#);
}

#[test]
fn malformed_tuples_are_rejected() {
    let cases: [(&[u8], DecodeError); 5] = [
        (b"\0\x01x", DecodeError::UnknownValueKind { kind: b'x', offset: 8 }),
        (b"\0\x01t\xff\xff\xff\xff", DecodeError::NegativeLength { what: "text value", len: -1, offset: 9 }),
        (b"\0\x01t\0\0\0\x05abc", DecodeError::UnexpectedEnd { what: "text value", offset: 13 }),
        (b"\x06\x81", DecodeError::TooManyColumns { count: 1665, offset: 6 }),
        (b"\xff\xff", DecodeError::TooManyColumns { count: u16::MAX, offset: 6 }),
    ];
    for (tuple, expected) in cases {
        assert_eq!(decode(&insert_of(tuple)), Err(expected), "{tuple:?}");
    }
    // The limit itself is allowed.
    let nulls = [&MAX_COLUMNS.to_be_bytes()[..], &[b'n'; MAX_COLUMNS as usize]].concat();
    assert!(decode(&insert_of(&nulls)).is_ok());
}

#[test]
fn misplaced_tuple_kinds_are_rejected() {
    let kind = |kind, offset| Err(DecodeError::UnknownTupleKind { kind, offset });
    assert_eq!(decode(b"I\0\0\0\x01K\0\0"), kind(b'K', 5));
    assert_eq!(decode(b"I\0\0\0\x01X\0\0"), kind(b'X', 5));
    assert_eq!(decode(b"U\0\0\0\x01K\0\0K\0\0"), kind(b'K', 8));
    assert_eq!(decode(b"U\0\0\0\x01O\0\0"), Err(DecodeError::UnexpectedEnd { what: "tuple kind", offset: 8 }));
    assert_eq!(decode(b"D\0\0\0\x01N\0\0"), kind(b'N', 5));
    assert!(matches!(decode(b"U\0\0\0\x01K\0\0N\0\0"), Ok(Message::Update { old: Some(OldTuple::Key(_)), .. })));
}

#[test]
fn malformed_strings_are_rejected() {
    assert_eq!(
        decode(b"Y\0\0\0\x01pub\xfflic\0t\0"),
        Err(DecodeError::InvalidUtf8 { what: "type namespace", offset: 5 })
    );
    assert_eq!(decode(b"Y\0\0\0\x01public\0t"), Err(DecodeError::UnterminatedString { what: "type name", offset: 12 }));
    let column_name = b"R\0\0\0\x01\0t\0d\0\x01\x01\xc3\0\0\0\0\x17\xff\xff\xff\xff";
    assert_eq!(decode(column_name), Err(DecodeError::InvalidUtf8 { what: "column name", offset: 12 }));
}

#[test]
fn message_flags_other_than_transactional_are_rejected() {
    let buf = b"M\x02\0\0\0\0\0\0\0\x01p\0\0\0\0\0";
    assert_eq!(decode(buf), Err(DecodeError::UnknownFlags { what: "message", flags: 2, offset: 1 }));
    let buf = b"M\x01\0\0\0\0\0\0\0\x01p\0\xff\xff\xff\xfe";
    assert_eq!(decode(buf), Err(DecodeError::NegativeLength { what: "message content", len: -2, offset: 12 }));
}

#[test]
fn truncate_counts_beyond_the_message_are_rejected() {
    let end = |offset| Err(DecodeError::UnexpectedEnd { what: "truncate relation ids", offset });
    assert_eq!(decode(b"T\xff\xff\xff\xff\0\0\0\0\x01"), end(6));
    assert_eq!(decode(b"T\0\0\0\x02\0\0\0\0\x01"), end(6));
    let Message::Truncate { rel_ids, .. } = decode(b"T\0\0\0\0\x01").unwrap() else { panic!("not a truncate") };
    assert_eq!(rel_ids.len(), 0);
}

#[test]
fn errors_say_where() {
    let err = decode(b"B\0\0").unwrap_err();
    assert_eq!(err.to_string(), "pgoutput message ends inside begin final lsn at byte 1");
}
