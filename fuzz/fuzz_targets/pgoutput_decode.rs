//! `decode` must return for every input, and everything it returns must walk to the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::pgoutput::{decode, Message, OldTuple, Tuple};

fn walk(tuple: Tuple<'_>) {
    let values = tuple.values();
    assert_eq!(values.len(), tuple.len());
    assert_eq!(values.count(), tuple.len());
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode(data) else { return };
    match message {
        Message::Relation(rel) => {
            assert_eq!(rel.columns().count(), rel.column_count());
        }
        Message::Insert { new, .. } => walk(new),
        Message::Update { old, new, .. } => {
            if let Some(old) = old {
                walk(old.tuple());
            }
            walk(new);
        }
        Message::Delete {
            old: OldTuple::Key(t) | OldTuple::Full(t),
            ..
        } => walk(t),
        Message::Truncate { rel_ids, .. } => {
            let len = rel_ids.len();
            assert_eq!(rel_ids.count(), len);
        }
        Message::Begin { .. }
        | Message::Commit { .. }
        | Message::Origin { .. }
        | Message::Type { .. }
        | Message::Message { .. } => {}
    }
    let _ = format!("{message:?}");
});
