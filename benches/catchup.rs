//! Follower catch-up (DDIA's follower recovery): walship beside PostgreSQL's own logical
//! replication, on the same leader WAL.
//!
//! Three local instances with the same settings (`fsync = on`, `synchronous_commit = on`;
//! `wal_retrieve_retry_interval = 100ms`, so that a re-enabled subscription's worker starts
//! at once instead of within the default 5 s): the leader, one follower replayed by a walship follower sidecar, one follower fed by a
//! native subscription (`copy_data = false`, its own publication and slot). The same tables
//! on all three before anything replicates: `bench`, a one-row `bench_marker`, and the
//! standard pgbench tables (`pgbench -i` on each instance gives identical rows).
//!
//! Catch-up, per workload (each starts from tables all three agree on): both consumers are
//! down while the leader commits the workload *once* — the walship follower sidecar stopped,
//! the subscription disabled — so both drain exactly the same transactions. The walship
//! leader sidecar keeps running and logging, as it would in production; the clock starts
//! only once it has logged the workload. Then, in turn, with the other follower fully down:
//!
//! - walship: start the follower sidecar (it fetches what it missed over the relay, fsyncs it
//!   to its own log and replays it);
//! - native: `ALTER SUBSCRIPTION ... ENABLE` (its walsender decodes the retained WAL; that
//!   decoding is inside its time, as the leader sidecar's decoding happened during the
//!   workload — each system's catch-up path, as built);
//!
//! and the clock stops at the first 100 ms poll where the follower shows the marker the
//! leader bumped after the workload (both apply in commit order), confirmed by
//! `count(*)` + `sum(hashtext(row))` of `bench`. Full equality (md5 of every row, in key
//! order) of all three is checked after both, outside the timed part. Workloads, at
//! `WALSHIP_BENCH_SCALE` (default 1; e.g. 0.1 for a quick run): 1M inserts in one
//! transaction; 1M inserts as 10,000 transactions of 100; 500k single-row UPDATEs by key and
//! 500k single-row DELETEs, one transaction each.
//!
//! Steady state: `pgbench -n -c 4 -T 30` (scale 10; scaled, at least 5 s and scale 1) on
//! the leader, three times: with nothing attached (baseline), with walship attached (both
//! sidecars up, subscription disabled), with the subscription attached (both sidecars down).
//! Before each run the attached consumer drains what it missed, untimed. Lag is sampled
//! every 200 ms: each system's own measure (walship: `now() - walship.progress.commit_time`
//! on the follower; native: the leader's `pg_stat_replication.replay_lag`) and one query that
//! is the same for both (`localtimestamp - max(pgbench_history.mtime)` on the follower: the
//! age of the newest replicated pgbench transaction, counted from its start). Also printed:
//! how long after pgbench's end the follower had everything (`drained`), and the CPU of the
//! consumer's processes on both sides (walship: both sidecars, the leader's walsender, the
//! follower's backends; native: walsender and apply worker) until drained.
//!
//! The machine may be shared: every timed figure comes with `others`, the cores that
//! processes outside this bench kept busy meanwhile (see `load`).
//!
//! What is on tmpfs: everything under `WALSHIP_PG_TMPDIR` — the three data folders (WAL
//! included) and both sidecars' logs; with `/dev/shm` that is tmpfs for both systems alike,
//! so fsync is cheap for both. The subscription keeps PostgreSQL's default
//! `synchronous_commit = off` for its apply worker (`WALSHIP_BENCH_NATIVE_SYNC_COMMIT=on`
//! changes it); walship's applier commits with the server default (`on`).
//! Knobs: `WALSHIP_BENCH_SCALE`, `WALSHIP_BENCH_NATIVE_SYNC_COMMIT`,
//! `WALSHIP_BENCH_PGBENCH_SCALE`, `WALSHIP_BENCH_PGBENCH_SECONDS`,
//! `WALSHIP_BENCH_PGBENCH_ORDER` (default `nothing,walship,native`), `WALSHIP_BENCH_PARTS`
//! (default `catchup,steady`: which parts run), `WALSHIP_BENCH_KEEP=1`
//! (keep the sidecars' folder and logs).
//!
//! `WALSHIP_PG_TMPDIR=/dev/shm cargo bench --bench catchup`

#![allow(clippy::unwrap_used)] // a bench: a failed step is a failed run

#[path = "catchup/cluster.rs"]
mod cluster;
#[path = "catchup/load.rs"]
mod load;
#[path = "catchup/steady.rs"]
mod steady;

use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster::{cpu_seconds, time_catch_up, Cluster, BUMP_MARKER, NATIVE, WALSHIP_BACKENDS};
use steady::{Attached, PgbenchRun};

/// Every replicated table with the key its rows are compared in (pgbench_history has none).
const ALL_TABLES: &[(&str, &str)] = &[
    ("bench", "t.id"),
    ("pgbench_accounts", "t.aid"),
    ("pgbench_branches", "t.bid"),
    ("pgbench_tellers", "t.tid"),
    ("pgbench_history", "t::text"),
];
const BENCH_FINGERPRINT: &str = "SELECT count(*) || ' ' || coalesce(sum(hashtext(b::text)), 0) FROM bench b";

struct Workload {
    name: String,
    rows: u64,
    sql: String,
}

/// What one workload's catch-up measured.
struct Outcome {
    name: String,
    rows: u64,
    walship: Duration,
    native: Duration,
    /// Cores other processes on the machine kept busy during each timed catch-up.
    others: (f64, f64),
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let scale: f64 = env("WALSHIP_BENCH_SCALE").unwrap_or(1.0);
    let sync_commit: String = env("WALSHIP_BENCH_NATIVE_SYNC_COMMIT").unwrap_or_else(|| "off".into());
    let pgbench_scale: u32 = env("WALSHIP_BENCH_PGBENCH_SCALE").unwrap_or(((10.0 * scale).round() as u32).max(1));
    let pgbench_seconds: u64 = env("WALSHIP_BENCH_PGBENCH_SECONDS").unwrap_or(((30.0 * scale).round() as u64).max(5));
    let order: Vec<Attached> = env::<String>("WALSHIP_BENCH_PGBENCH_ORDER")
        .unwrap_or_else(|| "nothing,walship,native".into())
        .split(',')
        .map(|name| Attached::parse(name).unwrap_or_else(|| panic!("unknown consumer {name:?}")))
        .collect();
    let rt = Rc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

    let started = Instant::now();
    let mut c = Cluster::start(&rt, pgbench_scale, &sync_commit);
    println!(
        "scale {scale}; native synchronous_commit = {sync_commit}; setup {:.1?}; sidecars in {}",
        started.elapsed(),
        c.dir().display()
    );
    let parts: String = env("WALSHIP_BENCH_PARTS").unwrap_or_else(|| "catchup,steady".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let outcomes: Vec<Outcome> = match part("catchup") {
        true => workloads(scale).iter().map(|w| catch_up_workload(&mut c, w)).collect(),
        false => Vec::new(),
    };
    let runs = match part("steady") {
        true => steady::run_all(&mut c, pgbench_seconds, &order),
        false => Vec::new(),
    };
    verify_equal(&c, ALL_TABLES);
    c.leader_sidecar.stop();

    print_catch_up(&outcomes);
    println!(
        "\n== pgbench -n -c 4 -T {pgbench_seconds} (scale {pgbench_scale}) on the leader, one consumer attached =="
    );
    print_pgbench(&runs);
    steady::print_stages(&runs);
    println!("total {:.1?}", started.elapsed());
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn print_catch_up(outcomes: &[Outcome]) {
    println!("\n== catch-up: rows/s (ratio = walship / native) ==");
    println!(
        "{:<36} {:>9} {:>9} {:>12} {:>9} {:>12} {:>7} {:>12}",
        "workload", "rows", "walship", "rows/s", "native", "rows/s", "ratio", "others w/n"
    );
    for o in outcomes {
        let (w, n) = (o.rows as f64 / o.walship.as_secs_f64(), o.rows as f64 / o.native.as_secs_f64());
        println!(
            "{:<36} {:>9} {:>8.2}s {:>12.0} {:>8.2}s {:>12.0} {:>7.2} {:>5.2}/{:<5.2}",
            o.name,
            o.rows,
            o.walship.as_secs_f64(),
            w,
            o.native.as_secs_f64(),
            n,
            w / n,
            o.others.0,
            o.others.1,
        );
    }
}

fn print_pgbench(runs: &[PgbenchRun]) {
    println!(
        "{:<8} {:>7} {:>8} {:>27} {:>27} {:>8} {:>7} {:>11} {:>7}",
        "attached",
        "tps",
        "txns",
        "own lag p50/p99/max s",
        "history lag p50/p99/max s",
        "drained",
        "cpu s",
        "cpu ms/ktx",
        "others"
    );
    for run in runs {
        println!(
            "{:<8} {:>7.0} {:>8} {:>27} {:>27} {:>7.2}s {:>7.1} {:>11.0} {:>7.2}",
            run.attached.name(),
            run.tps,
            run.transactions,
            summary(&run.own_lag),
            summary(&run.history_lag),
            run.drained.as_secs_f64(),
            run.cpu,
            run.cpu * 1e6 / run.transactions.max(1) as f64,
            run.others,
        );
    }
    let tps = |a: Attached| runs.iter().find(|r| r.attached == a).map(|r| r.tps);
    if let (Some(w), Some(n)) = (tps(Attached::Walship), tps(Attached::Native)) {
        println!("tps ratio walship / native: {:.2}", w / n);
    }
}

fn workloads(scale: f64) -> Vec<Workload> {
    let n = |base: f64| ((base * scale).round() as u64).max(1);
    let (inserted, txns, changed) = (n(1e6), n(1e4), n(5e5));
    let total = inserted + txns * 100;
    assert!(2 * changed <= total, "scale {scale}: fewer rows than updates and deletes");
    vec![
        Workload {
            name: format!("insert {inserted} rows in 1 txn"),
            rows: inserted,
            sql: format!("INSERT INTO bench SELECT g, g % 1000, 'note ' || g FROM generate_series(1, {inserted}) g"),
        },
        Workload {
            name: format!("insert {} txns x 100 rows", txns),
            rows: txns * 100,
            sql: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP \
                   INSERT INTO bench SELECT g, g % 1000, 'note ' || g \
                     FROM generate_series({inserted} + t * 100 + 1, {inserted} + (t + 1) * 100) g; \
                   COMMIT; END LOOP; END $$",
                txns - 1
            ),
        },
        Workload {
            name: format!("update {changed} x 1 row by key"),
            rows: changed,
            sql: format!(
                "DO $$ BEGIN FOR i IN 1..{changed} LOOP \
                   UPDATE bench SET qty = qty + 1, note = note || ' updated' WHERE id = 2 * i - 1; \
                   COMMIT; END LOOP; END $$"
            ),
        },
        Workload {
            name: format!("delete {changed} x 1 row by key"),
            rows: changed,
            sql: format!(
                "DO $$ BEGIN FOR i IN 1..{changed} LOOP DELETE FROM bench WHERE id = 2 * i; COMMIT; END LOOP; END $$"
            ),
        },
    ]
}

/// Commits `w` on the leader with both followers down, then times each follower's catch-up.
fn catch_up_workload(c: &mut Cluster, w: &Workload) -> Outcome {
    let started = Instant::now();
    c.on_leader.execute(&w.sql);
    let marker = c.on_leader.value(BUMP_MARKER).unwrap();
    let committed = started.elapsed();
    c.wait_leader_logged();
    let expected = c.on_leader.value(BENCH_FINGERPRINT).unwrap();
    println!(
        "\n{}: leader committed in {committed:.1?}, its sidecar logged it after {:.1?}",
        w.name,
        started.elapsed()
    );

    let leader_cpu = c.leader_sidecar.cpu_seconds();
    let follower = &mut c.follower_sidecar;
    let load = load::Snapshot::take();
    let walship = time_catch_up(&c.on_walship, &marker, (BENCH_FINGERPRINT, &expected), || follower.start());
    let walship_others = load.others_since();
    let backends = c.on_walship.pids(WALSHIP_BACKENDS);
    println!(
        "  walship {:>7.2}s {:>9.0} rows/s   cpu: follower sidecar {:.1}s, its postgres backends {:.1}s, \
         leader sidecar {:.1}s; other work on the machine {walship_others:.2} cores",
        walship.as_secs_f64(),
        w.rows as f64 / walship.as_secs_f64(),
        c.follower_sidecar.cpu_seconds(),
        backends.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
        c.leader_sidecar.cpu_seconds() - leader_cpu,
    );
    c.follower_sidecar.stop();

    let load = load::Snapshot::take();
    let native = time_catch_up(&c.on_native, &marker, (BENCH_FINGERPRINT, &expected), || c.enable_native());
    let native_others = load.others_since();
    let worker = c
        .on_native
        .pids(&format!("SELECT string_agg(pid::text, ' ') FROM pg_stat_subscription WHERE subname = '{NATIVE}'"));
    let walsender = c.on_leader.pids(&format!(
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_replication WHERE application_name = '{NATIVE}'"
    ));
    println!(
        "  native  {:>7.2}s {:>9.0} rows/s   cpu: apply worker {:.1}s, walsender {:.1}s; \
         other work on the machine {native_others:.2} cores",
        native.as_secs_f64(),
        w.rows as f64 / native.as_secs_f64(),
        worker.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
        walsender.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
    );
    c.disable_native();
    println!("  walship / native: {:.2}", native.as_secs_f64() / walship.as_secs_f64());
    verify_equal(c, &ALL_TABLES[..1]);
    Outcome { name: w.name.clone(), rows: w.rows, walship, native, others: (walship_others, native_others) }
}

/// `tables` (name, order key) hold the same rows (md5 of all rows in order) on all three.
fn verify_equal(c: &Cluster, tables: &[(&str, &str)]) {
    for (table, key) in tables {
        let sql = format!("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {key}), '')) FROM {table} t");
        let leader = c.on_leader.value(&sql);
        assert_eq!(c.on_walship.value(&sql), leader, "{table} differs on the walship follower");
        assert_eq!(c.on_native.value(&sql), leader, "{table} differs on the native follower");
    }
}

/// `p50/p99/max` of lag samples, in seconds.
fn summary(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    format!("{:.3}/{:.3}/{:.3} (n={})", at(0.5), at(0.99), at(1.0), sorted.len())
}
