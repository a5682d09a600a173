//! Every fuzz target's seeds, and whatever corpus a fuzzing run left beside them, replayed on
//! stable Rust through the same checks `cargo fuzz` runs (`walship::fuzzing`): a crash the
//! fuzzer found and saved under `fuzz/seeds/<target>/` stays a regression test.

use std::path::Path;

#[test]
fn every_seed_and_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, check) in walship::fuzzing::TARGETS {
        let mut replayed = 0;
        for folder in ["seeds", "corpus"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else { continue };
            for entry in entries {
                let path = entry.expect("a readable folder").path();
                let data = std::fs::read(&path).expect("a readable seed");
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{target}: {} fails its checks", path.display());
                replayed += 1;
            }
        }
        assert!(replayed >= 3, "{target}: only {replayed} seeds under fuzz/seeds/{target}");
    }
}

/// The seeds mean something: the configuration seeds parse (but the broken one), and the log
/// entry seeds decode (but the two damaged ones).
#[test]
fn the_seeds_are_valid_inputs_where_they_say_so() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for name in ["follower", "leader_every_section"] {
        let text = std::fs::read_to_string(seeds.join("config").join(name)).unwrap();
        if let Err(e) = walship::config::Config::parse(Path::new(name), &text) {
            panic!("config seed {name}: {e}");
        }
    }
    for name in ["transaction", "transaction_full_ri", "heartbeat", "message"] {
        let data = std::fs::read(seeds.join("log_entry").join(name)).unwrap();
        let (_, items) = walship::log::entry::decode_entry(&data).unwrap();
        for item in items {
            walship::pgoutput::decode(item.unwrap()).unwrap();
        }
    }
}

/// A small, deterministic mutation pass on stable Rust (no substitute for `cargo fuzz`, which
/// the README explains): each seed cut short, with bytes flipped, inserted and removed, a few
/// hundred times, through its target.
#[test]
fn mutated_seeds_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for (target, check) in walship::fuzzing::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in entries {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            for _ in 0..300 {
                let mut data = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let at = if data.is_empty() { 0 } else { (next() as usize) % data.len() };
                    match next() % 4 {
                        0 => data.truncate(at),
                        1 if !data.is_empty() => data[at] ^= 1 << (next() % 8),
                        2 => data.insert(at, next() as u8),
                        _ if !data.is_empty() => {
                            data.remove(at);
                        }
                        _ => {}
                    }
                }
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{target}: a mutation panics: {data:?}");
            }
        }
    }
}
