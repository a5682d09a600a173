//! Commit throughput and latency on the leader in each replication mode, beside PostgreSQL's
//! own synchronous logical replication, in one run.
//!
//! Five local instances (`fsync = on`, pgbench tables at scale `WALSHIP_BENCH_PGBENCH_SCALE`,
//! default 10, made identical on each by `pgbench -i`): `a` leads with walship sidecars `b`
//! and `c` following; `d` and `e` are native subscribers of `a`. Each run is `pgbench -n -c 4 -T
//! WALSHIP_BENCH_SECONDS` (default 20) on `a`, with per-transaction logs for the latency
//! percentiles:
//!
//! - **none**: the sidecars stopped, no subscription: local commits only;
//! - **walship async**, **walship semi-sync** (quorum 1 of 2), **walship sync** (both
//!   followers): the sidecars up, the mode switched by SIGHUP between runs (each starts once
//!   the leader reports the mode in `/status`);
//! - **native sync**: the sidecars stopped; a subscription on `d` (`copy_data = false`, its
//!   apply worker with `synchronous_commit = on`, so that its feedback is prompt) named in
//!   `a`'s `synchronous_standby_names`: the floor;
//! - **native ANY 1 of 2**: a second subscription, on `e`, and `synchronous_standby_names =
//!   'ANY 1 (d's, e's)'`: native's own semi-sync, with as many replicas applying as walship's
//!   semi-sync run has (the like-for-like figure: on this 2-core machine every replica's
//!   apply takes CPU from the leader).
//!
//! Printed: TPS, p50 and p99 commit latency, and the ratios of walship semi-sync and sync to
//! both native runs. `WALSHIP_PG_TMPDIR=/dev/shm cargo bench --bench sync` (on tmpfs fsync is free:
//! without it the instances use the machine's disk, as production would).

#![allow(clippy::unwrap_used)] // a bench: a failed step is a failed run

use std::time::{Duration, Instant};

use walship::localcluster::{self, Launch};
use walship::localpg::{Instance, Options};

const TOKEN: &str = "sync-bench-token-0123456789";
const TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    name: &'static str,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    let seconds: u64 = std::env::var("WALSHIP_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let scale: u32 = std::env::var("WALSHIP_BENCH_PGBENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = localcluster::create_folder("walship-sync-bench", false).unwrap();
    let specs = (0..5).map(|_| (None, Options::default())).collect();
    let pgs: Vec<Instance> = localcluster::start_instances(specs).into_iter().map(Result::unwrap).collect();
    for pg in &pgs {
        let init = pg.command("pgbench").args(["-i", "-q", "-s", &scale.to_string(), "postgres"]).output().unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    }
    let launch = Launch::new(env!("CARGO_BIN_EXE_walship"));
    let refs: Vec<&Instance> = pgs[..3].iter().collect();
    let mut sidecars = localcluster::mesh(dir.path(), &refs, &["a", "b", "c"], "bench", TOKEN, &launch).unwrap();
    println!("pgbench -n -c 4 -T {seconds} (scale {scale}) on the leader, fsync on");
    let mut runs = vec![pgbench(&pgs[0], "none", seconds, dir.path())];

    for s in &mut sidecars {
        s.start().unwrap();
    }
    wait(TIMEOUT, "the leader and its followers", || connected(&sidecars[0]) == 2);
    for (name, mode, expect) in [
        ("walship async", "mode = \"async\"", None),
        ("walship semi-sync", "mode = \"semi-sync\"\nsync_quorum = 1", Some("synchronous")),
        ("walship sync", "mode = \"sync\"", Some("synchronous")),
    ] {
        let leader = &mut sidecars[0];
        leader.config.extra = format!("[replication]\n{mode}\nstrict = true\n");
        leader.write_config().unwrap();
        let status = std::process::Command::new("kill").args(["-HUP", &leader.pid().unwrap().to_string()]).status();
        assert!(status.unwrap().success());
        wait(TIMEOUT, "the mode to take effect", || sync_state(&sidecars[0]).as_deref() == expect);
        runs.push(pgbench(&pgs[0], name, seconds, dir.path()));
    }
    for s in &mut sidecars {
        s.stop(Duration::from_secs(30)).unwrap();
    }

    // Native: a subscription on d, synchronous.
    let a_conn = pgs[0].conninfo("postgres");
    pgs[0]
        .psql(
            "postgres",
            "ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf(); \
             CREATE PUBLICATION native FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
        )
        .unwrap();
    subscribe(&pgs[3], "native", &a_conn);
    wait(TIMEOUT, "the subscription to stream", || {
        pgs[0]
            .psql("postgres", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'native'")
            .is_ok_and(|n| n == "1")
    });
    pgs[0].psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = 'native'; SELECT pg_reload_conf()").unwrap();
    wait(TIMEOUT, "native to be synchronous", || {
        pgs[0]
            .psql("postgres", "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'native'")
            .is_ok_and(|s| s == "sync")
    });
    runs.push(pgbench(&pgs[0], "native sync", seconds, dir.path()));

    // Native semi-sync: a second subscriber, either one enough.
    subscribe(&pgs[4], "native_e", &a_conn);
    pgs[0]
        .psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (native, native_e)'; SELECT pg_reload_conf()",
        )
        .unwrap();
    wait(TIMEOUT, "both subscriptions to be quorum standbys", || {
        pgs[0]
            .psql("postgres", "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'")
            .is_ok_and(|n| n == "2")
    });
    runs.push(pgbench(&pgs[0], "native ANY 1 of 2", seconds, dir.path()));

    println!("{:<20} {:>10} {:>12} {:>12}", "replication", "TPS", "p50 ms", "p99 ms");
    for r in &runs {
        println!("{:<20} {:>10.0} {:>12.2} {:>12.2}", r.name, r.tps, r.p50_ms, r.p99_ms);
    }
    let tps = |name: &str| runs.iter().find(|r| r.name == name).map_or(f64::NAN, |r| r.tps);
    for r in runs.iter().filter(|r| r.name.starts_with("walship s")) {
        println!(
            "{}: {:.2}x native sync's TPS (one subscriber), {:.2}x native ANY 1 of 2's",
            r.name,
            r.tps / tps("native sync"),
            r.tps / tps("native ANY 1 of 2")
        );
    }
}

/// A subscription `name` on `pg` to the publication `native` at `conninfo`, its apply worker
/// with `synchronous_commit = on` so that its feedback is prompt.
fn subscribe(pg: &Instance, name: &str, conninfo: &str) {
    let sql = format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{conninfo}' PUBLICATION native \
         WITH (copy_data = false, synchronous_commit = 'on')"
    );
    pg.psql("postgres", &sql).unwrap();
}

/// One pgbench run with per-transaction logs; TPS and latency percentiles.
fn pgbench(pg: &Instance, name: &'static str, seconds: u64, dir: &std::path::Path) -> Run {
    let logs = dir.join(name.replace(' ', "-"));
    std::fs::create_dir_all(&logs).unwrap();
    let prefix = logs.join("tx");
    // The instance's processes may run as another OS user: the log folder must be theirs too.
    let _ = std::process::Command::new("chmod").args(["-R", "a+rwx"]).arg(&logs).status();
    let started = Instant::now();
    let out = pg
        .command("pgbench")
        .args(["-n", "-c", "4", "-T", &seconds.to_string(), "--log", "--log-prefix"])
        .arg(&prefix)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |us: Option<&u64>| us.map_or(f64::NAN, |us| *us as f64 / 1000.0);
    eprintln!("{name}: {tps:.0} TPS in {:.0} s", started.elapsed().as_secs_f64());
    Run { name, tps, p50_ms: ms(pct(0.50)), p99_ms: ms(pct(0.99)) }
}

fn status(sidecar: &localcluster::Sidecar) -> Option<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://127.0.0.1:{}", sidecar.admin_port());
    let (code, body) = rt.block_on(walship::admin::client::request(&url, "GET", "/status", None)).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn connected(sidecar: &localcluster::Sidecar) -> usize {
    status(sidecar)
        .and_then(|s| s["followers"].as_array().map(|f| f.iter().filter(|f| f["connected"] == true).count()))
        .unwrap_or(0)
}

fn sync_state(sidecar: &localcluster::Sidecar) -> Option<String> {
    status(sidecar).and_then(|s| s["sync"].as_str().map(str::to_owned))
}

fn wait(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
