//! The leader sidecar against a real PostgreSQL: pgbench load, crashes, exactly-once logging.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http_get, wait_until, Sidecar};
use walship::localpg::{Instance, Options};
use walship::lsn::Lsn;

fn lsn_of(v: &Value) -> Lsn {
    v.as_str().expect("lsn is a string").parse().expect("lsn parses")
}

fn slot_confirmed(pg: &Instance) -> Lsn {
    let out = pg
        .psql(
            "postgres",
            "SELECT coalesce(confirmed_flush_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'walship_a'",
        )
        .unwrap();
    out.trim().parse().unwrap_or(Lsn::ZERO)
}

/// The highest `end_lsn` in the log (heartbeats included).
fn log_end(sidecar: &Sidecar) -> Lsn {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["inspect", "--json", "--all"])
        .arg(sidecar.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| lsn_of(&e["end_lsn"]))
        .max()
        .unwrap_or(Lsn::ZERO)
}

/// The slot may only confirm what the log holds: sample the slot, then the log.
fn assert_confirmed_within_log(pg: &Instance, sidecar: &Sidecar) {
    let confirmed = slot_confirmed(pg);
    let end = log_end(sidecar);
    assert!(confirmed <= end, "slot confirmed {confirmed} but the log ends at {end}");
}

#[test]
fn pgbench_with_sidecar_crashes_logs_every_commit_exactly_once() {
    let pg = Instance::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    if std::env::var_os("WALSHIP_TEST_KEEP").is_some() {
        eprintln!("keeping {}", dir_path.display());
        std::mem::forget(dir);
    }
    let mut sidecar = Sidecar::leader(&dir_path, "a", &pg, "[source]\nheartbeat_interval = \"200ms\"");
    // The sidecar's consistent point comes first; pgbench's schema and rows after it.
    sidecar.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    sidecar.wait_writable();
    let (code, body) = http_get(sidecar.admin_port, "/health").unwrap();
    assert_eq!(code, 200, "{body}");

    let init = pg.command("pgbench").args(["-i", "-s", "2", "-q", "postgres"]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // The sidecar dies mid-load twice; pgbench goes on writing while it is down. It is started
    // again between loads: a leader's sidecar that starts fences its PostgreSQL (ending the
    // sessions that write) until its peers confirm it still leads.
    for round in 0..3 {
        let bench = pg
            .command("pgbench")
            .args(["-n", "-c", "2", "-T", "3", "postgres"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        if round < 2 {
            std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
            assert_confirmed_within_log(&pg, &sidecar);
            sidecar.kill();
            assert_confirmed_within_log(&pg, &sidecar);
        }
        let bench = bench.wait_with_output().unwrap();
        assert!(bench.status.success(), "pgbench: {}", String::from_utf8_lossy(&bench.stderr));
        if round < 2 {
            sidecar.start();
            sidecar.wait_writable();
        }
    }

    let end_of_load: Lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap().trim().parse().unwrap();
    wait_until(Duration::from_secs(60), "the sidecar to catch up", || slot_confirmed(&pg) >= end_of_load);
    assert_confirmed_within_log(&pg, &sidecar);
    sidecar.stop();

    let entries = sidecar.inspect();
    assert!(!entries.is_empty());
    let mut last_index = 0u64;
    let mut last_commit = Lsn::ZERO;
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for e in &entries {
        let index = e["index"].as_u64().unwrap();
        assert!(index > last_index, "index {index} after {last_index}");
        last_index = index;
        let commit = lsn_of(&e["commit_lsn"]);
        assert!(commit > last_commit, "commit {commit} after {last_commit}: not in commit order");
        last_commit = commit;
        for change in e["changes"].as_array().unwrap() {
            if change["table"] == "public.pgbench_history" && change["op"] == "insert" {
                let n = &change["new"];
                let key = format!("{} {} {} {} {}", n["tid"], n["bid"], n["aid"], n["delta"], n["mtime"]);
                *logged.entry(key).or_default() += 1;
            }
        }
    }
    let rows = pg
        .psql(
            "postgres",
            "SELECT format('\"%s\" \"%s\" \"%s\" \"%s\" \"%s\"', tid, bid, aid, delta, mtime) FROM pgbench_history",
        )
        .unwrap();
    let mut committed: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows.lines().filter(|l| !l.is_empty()) {
        *committed.entry(row.to_owned()).or_default() += 1;
    }
    assert!(committed.len() > 100, "pgbench committed only {} rows", committed.len());
    let missing: Vec<_> =
        committed.iter().filter(|(k, n)| logged.get(*k) != Some(n)).map(|(k, n)| (k, n, logged.get(k))).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rows not logged exactly once (row, committed, logged), e.g. {:?}\nsidecar log:\n{}",
        missing.len(),
        committed.len(),
        &missing[..missing.len().min(50)],
        sidecar.log_text()
    );
    assert_eq!(logged, committed, "the log holds rows PostgreSQL does not");
    let text = sidecar.log_text();
    assert!(text.contains("created replication slot"), "{text}");
    sidecar.assert_no_errors();
}

#[test]
fn an_idle_leader_keeps_positions_moving_with_heartbeats() {
    let pg = Instance::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::leader(dir.path(), "a", &pg, "[source]\nheartbeat_interval = \"100ms\"");
    sidecar.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    sidecar.wait_writable();
    let first = slot_confirmed(&pg);
    wait_until(Duration::from_secs(10), "confirmed_flush_lsn to advance on an idle database", || {
        slot_confirmed(&pg) > first
    });
    sidecar.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["inspect", "--json", "--all"])
        .arg(sidecar.data_dir())
        .output()
        .unwrap();
    let beats = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("\"kind\":\"heartbeat\"")).count();
    assert!(beats >= 2, "expected heartbeat entries, got {beats}");
    sidecar.assert_no_errors();
}

fn logged_ids(sidecar: &Sidecar) -> Vec<u64> {
    let mut ids = Vec::new();
    for e in sidecar.inspect() {
        for change in e["changes"].as_array().unwrap() {
            if change["table"] == "public.t" && change["op"] == "insert" {
                ids.push(change["new"]["id"].as_str().unwrap().parse().unwrap());
            }
        }
    }
    ids
}

#[test]
fn a_postgresql_restart_underneath_is_ridden_out() {
    let mut pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::leader(dir.path(), "a", &pg, "");
    sidecar.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    sidecar.wait_writable();
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(1, 100)").unwrap();
    wait_until(Duration::from_secs(20), "the first rows", || logged_ids(&sidecar).len() == 100);

    for mode in [walship::localpg::StopMode::Fast, walship::localpg::StopMode::Immediate] {
        pg.stop(mode).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let (code, _) = http_get(sidecar.admin_port, "/health").unwrap();
        assert_eq!(code, 503, "health must fail while PostgreSQL is down");
        pg.start_again().unwrap();
        let before = logged_ids(&sidecar).len() as i64;
        pg.psql("postgres", &format!("INSERT INTO t SELECT generate_series({}, {})", before + 1, before + 100))
            .unwrap();
        wait_until(Duration::from_secs(30), "rows after the restart", || {
            logged_ids(&sidecar).len() as i64 == before + 100
        });
    }
    sidecar.stop();
    let ids = logged_ids(&sidecar);
    assert_eq!(ids, (1..=300).collect::<Vec<u64>>(), "every row once, in order");
    let text = sidecar.log_text();
    assert!(text.contains("leader source interrupted"), "the restart went unnoticed:\n{text}");
    sidecar.assert_no_errors();
}

#[test]
fn a_second_sidecar_on_the_same_data_dir_is_refused() {
    let pg = Instance::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Sidecar::leader(dir.path(), "a", &pg, "");
    first.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    first.wait_writable();
    let second_dir = dir.path().join("second");
    let second = Sidecar::leader(&second_dir, "a", &pg, "");
    let config = std::fs::read_to_string(&second.config_path)
        .unwrap()
        .replace(&second_dir.join("data").display().to_string(), &first.data_dir().display().to_string());
    std::fs::write(&second.config_path, config).unwrap();
    let stderr = refused_at_start(&second.config_path);
    assert!(stderr.contains("in use by another walship process"), "{stderr}");
    first.stop();
    first.assert_no_errors();
}

#[test]
fn a_corrupt_log_is_reported_with_file_and_offset() {
    let pg = Instance::start(Options::default()).unwrap();
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::leader(dir.path(), "a", &pg, "");
    sidecar.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    sidecar.wait_writable();
    for i in 0..20 {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i})")).unwrap();
    }
    wait_until(Duration::from_secs(20), "the rows", || logged_ids(&sidecar).len() == 20);
    sidecar.stop();

    let segment = std::fs::read_dir(sidecar.data_dir().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["inspect", "--json"])
        .arg(sidecar.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success(), "inspect read a corrupt log without complaint");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt") && stderr.contains(&segment.display().to_string()), "{stderr}");
    assert!(stderr.contains("offset"), "{stderr}");

    // The sidecar refuses to run on it rather than repairing it by dropping entries.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["run", "--config"])
        .arg(&sidecar.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt log segment"), "{stderr}");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Instance::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::leader(dir.path(), "a", &pg, "");
    let token = dir.path().join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused_at_start(&sidecar.config_path);
    assert!(stderr.contains("can be read by others (mode 644)") && stderr.contains("chmod 600"), "{stderr}");
    // Readable by its owner only, the same file is accepted.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut sidecar = sidecar;
    sidecar.start();
    wait_until(Duration::from_secs(30), "the slot", || slot_confirmed(&pg) > Lsn::ZERO);
    sidecar.wait_writable();
    sidecar.stop();
}

/// Runs `walship run` on `config`, which must fail at start; returns what it said.
fn refused_at_start(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "walship run started with {}", config.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}
