//! A 2 GB transaction passes through the leader in bounded memory.
//!
//! Slow (minutes) and disk-hungry (~6 GB: PostgreSQL's WAL and spill files, walship's log), so
//! it is ignored by default: `cargo test --release --test big_transaction -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{wait_until, Sidecar};
use walship::localpg::{Instance, Options};
use walship::log::entry::{chunk_items, decode_entry};
use walship::log::{LogReader, RecordKind};
use walship::lsn::{Index, Lsn};
use walship::pgoutput::{self, Message};

const ROWS: u64 = 1_000_000;
const ROW_BYTES: u64 = 2_000;
const RSS_LIMIT_BYTES: u64 = 200 << 20;

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
#[ignore = "slow: a 2 GB transaction; run with --ignored"]
fn a_two_gigabyte_transaction_streams_in_bounded_memory() {
    let settings = vec![("max_wal_size".to_owned(), "16GB".to_owned())];
    let pg = Instance::start(Options { settings, ..Options::default() }).unwrap();
    pg.psql("postgres", "CREATE TABLE wide (id bigint PRIMARY KEY, payload text)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::leader(dir.path(), "a", &pg, "");
    sidecar.start();
    let confirmed = || -> Lsn {
        pg.psql("postgres", "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walship_a'")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(Lsn::ZERO)
    };
    wait_until(Duration::from_secs(30), "the slot", || confirmed() > Lsn::ZERO);
    sidecar.wait_writable();

    let started = Instant::now();
    pg.psql(
        "postgres",
        &format!(
            "INSERT INTO wide SELECT g, repeat(chr(65 + (g % 26)::int), {ROW_BYTES}) FROM generate_series(1, {ROWS}) g"
        ),
    )
    .unwrap();
    let end: Lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap().trim().parse().unwrap();
    eprintln!("committed {} MB in {:.1?}", (ROWS * ROW_BYTES) >> 20, started.elapsed());
    wait_until(Duration::from_secs(1800), "the sidecar to log the transaction", || confirmed() >= end);
    eprintln!("logged after {:.1?}", started.elapsed());
    let rss = peak_rss(sidecar.pid());
    sidecar.stop();
    eprintln!("sidecar peak RSS: {} MB", rss >> 20);
    assert!(rss < RSS_LIMIT_BYTES, "peak RSS {} MB over the {} MB bound", rss >> 20, RSS_LIMIT_BYTES >> 20);

    // Count the rows record by record, never holding the entry whole.
    let mut reader = LogReader::open_offline(&sidecar.data_dir().join("log"), Index(1)).unwrap();
    let (mut rows, mut bytes, mut chunks) = (0u64, 0u64, 0u64);
    while let Some(record) = reader.next().unwrap() {
        let items: Vec<&[u8]> = match record.kind {
            RecordKind::Chunk => {
                chunks += 1;
                chunk_items(&record.payload).map(|i| i.unwrap()).collect()
            }
            RecordKind::Entry => decode_entry(&record.payload).unwrap().1.map(|i| i.unwrap()).collect(),
        };
        for item in items {
            if let Message::Insert { new, .. } = pgoutput::decode(item).unwrap() {
                rows += 1;
                bytes += new
                    .values()
                    .map(|v| match v {
                        pgoutput::Value::Text(t) => t.len() as u64,
                        _ => 0,
                    })
                    .sum::<u64>();
            }
        }
    }
    assert_eq!(rows, ROWS);
    assert!(bytes >= ROWS * ROW_BYTES);
    assert!(chunks > 100, "the transaction should have been spilled in chunks, got {chunks}");
    sidecar.assert_no_errors();
}
