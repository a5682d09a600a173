//! See `walship::fuzzing::pgoutput_decode`: the checks live there, so that `cargo test` replays this
//! target's seeds and corpus on stable Rust (`tests/fuzz_corpora.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walship::fuzzing::pgoutput_decode(data));
