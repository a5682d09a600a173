//! Steady state: `pgbench -n -c 4` on the leader with one consumer attached at a time (or
//! none, for the baseline), its lag sampled every 200 ms, and the CPU its processes use.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cluster::{
    cpu_seconds, time_catch_up, wait_marker, Cluster, Conn, BUMP_MARKER, LEADER_SLOT, NATIVE, PGBENCH_TABLES,
    WALSHIP_BACKENDS,
};

const LAG_SAMPLE: Duration = Duration::from_millis(200);
const CLIENTS: &str = "4";
const WALSHIP_LAG: &str = "SELECT extract(epoch FROM now() - commit_time) FROM walship.progress";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attached {
    Nothing,
    Walship,
    Native,
}

impl Attached {
    pub fn parse(name: &str) -> Option<Attached> {
        match name.trim() {
            "nothing" => Some(Attached::Nothing),
            "walship" => Some(Attached::Walship),
            "native" => Some(Attached::Native),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Attached::Nothing => "nothing",
            Attached::Walship => "walship",
            Attached::Native => "native",
        }
    }
}

/// One pgbench run.
pub struct PgbenchRun {
    pub attached: Attached,
    pub tps: f64,
    pub transactions: u64,
    /// The system's own lag measure (walship: progress.commit_time; native: replay_lag).
    pub own_lag: Vec<f64>,
    /// The same query on either follower: the age of the newest replicated pgbench_history row.
    pub history_lag: Vec<f64>,
    /// From pgbench's end until the follower had everything.
    pub drained: Duration,
    /// CPU seconds of the consumer's processes, from pgbench's start until drained.
    pub cpu: f64,
    /// Cores other processes on the machine kept busy while pgbench ran.
    pub others: f64,
    /// walship only: where the lag is, sampled with the others. Seconds behind the leader's
    /// durable log by stage (`received`, `flushed`, `applied`, from the leader sidecar's
    /// `/metrics`), and bytes of WAL the leader sidecar has not logged yet.
    pub stages: [Vec<f64>; 3],
    pub unlogged_wal: Vec<f64>,
}

const STAGES: [&str; 3] = ["received", "flushed", "applied"];

/// `walship_follower_lag_seconds` of each stage, from the leader sidecar's `/metrics`.
fn stage_lags(admin: u16) -> Option<[f64; 3]> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let value = |stage: &str| {
        let prefix = format!("walship_follower_lag_seconds{{follower=\"b\",stage=\"{stage}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
    };
    Some([value(STAGES[0])?, value(STAGES[1])?, value(STAGES[2])?])
}

/// The walship runs' lag by stage, p50/p99 each.
pub fn print_stages(runs: &[PgbenchRun]) {
    for run in runs.iter().filter(|r| r.attached == Attached::Walship) {
        let mut line = String::from("walship lag by stage p50/p99 s (behind the leader's log):");
        for (stage, samples) in STAGES.iter().zip(&run.stages) {
            let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
            line.push_str(&format!(" {stage} {p50:.3}/{p99:.3}"));
        }
        let (p50, p99) = (percentile(&run.unlogged_wal, 0.5), percentile(&run.unlogged_wal, 0.99));
        line.push_str(&format!("; WAL not yet logged p50/p99 {:.0}/{:.0} kB", p50 / 1024.0, p99 / 1024.0));
        println!("{line}");
    }
}

fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

/// Runs pgbench once per entry of `order`; then both followers catch up (untimed).
pub fn run_all(c: &mut Cluster, seconds: u64, order: &[Attached]) -> Vec<PgbenchRun> {
    let runs = order
        .iter()
        .map(|&attached| {
            attach(c, attached);
            pgbench_run(c, seconds, attached)
        })
        .collect();
    c.leader_sidecar.start();
    c.follower_sidecar.start();
    c.enable_native();
    drain(c, &c.on_walship);
    drain(c, &c.on_native);
    c.follower_sidecar.stop();
    c.disable_native();
    runs
}

/// Attaches only `attached`, which first drains what it missed, untimed.
fn attach(c: &mut Cluster, attached: Attached) {
    if attached == Attached::Walship {
        c.leader_sidecar.start();
        c.follower_sidecar.start();
        c.disable_native();
        drain(c, &c.on_walship);
    } else {
        c.follower_sidecar.stop();
        c.leader_sidecar.stop();
    }
    match attached {
        Attached::Native => {
            c.enable_native();
            drain(c, &c.on_native);
        }
        Attached::Nothing => c.disable_native(),
        Attached::Walship => {}
    }
}

/// Waits until `follower` has everything the leader committed so far.
fn drain(c: &Cluster, follower: &Conn) {
    let marker = c.on_leader.value(BUMP_MARKER).expect("marker");
    let fingerprint = fingerprint();
    let expected = c.on_leader.value(&fingerprint).expect("fingerprint");
    time_catch_up(follower, &marker, (&fingerprint, &expected), || {});
}

fn pgbench_run(c: &Cluster, seconds: u64, attached: Attached) -> PgbenchRun {
    let pids = consumer_pids(c, attached);
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let since = c.on_leader.value("SELECT localtimestamp").expect("time");
    let history =
        format!("SELECT extract(epoch FROM localtimestamp - max(mtime)) FROM pgbench_history WHERE mtime >= '{since}'");
    let native_lag =
        format!("SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication WHERE application_name = '{NATIVE}'");
    let (own, follower): (Option<(&Conn, &str)>, Option<&Conn>) = match attached {
        Attached::Nothing => (None, None),
        Attached::Walship => (Some((&c.on_walship, WALSHIP_LAG)), Some(&c.on_walship)),
        Attached::Native => (Some((&c.on_leader, &native_lag)), Some(&c.on_native)),
    };
    let load = crate::load::Snapshot::take();
    let mut child = c
        .leader
        .command("pgbench")
        .args(["-n", "-c", CLIENTS, "-T", &seconds.to_string(), "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench");
    let (mut own_lag, mut history_lag) = (Vec::new(), Vec::new());
    let (mut stages, mut unlogged_wal): ([Vec<f64>; 3], Vec<f64>) = Default::default();
    let unlogged = format!(
        "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{LEADER_SLOT}'"
    );
    let mut next = Instant::now();
    while child.try_wait().expect("wait for pgbench").is_none() {
        if attached == Attached::Walship {
            if let Some(lags) = stage_lags(c.leader_admin) {
                for (samples, lag) in stages.iter_mut().zip(lags) {
                    samples.push(lag);
                }
            }
            unlogged_wal.extend(c.on_leader.value(&unlogged).and_then(|v| v.parse::<f64>().ok()));
        }
        if let Some((conn, sql)) = own {
            own_lag.extend(conn.value(sql).and_then(|v| v.parse::<f64>().ok()));
        }
        if let Some(follower) = follower {
            history_lag.extend(follower.value(&history).and_then(|v| v.parse::<f64>().ok()));
        }
        next += LAG_SAMPLE;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let ended = Instant::now();
    let others = load.others_since();
    let output = child.wait_with_output().expect("pgbench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pgbench: {}", String::from_utf8_lossy(&output.stderr));
    let field = |prefix: &str| stdout.lines().find_map(|l| l.strip_prefix(prefix)?.split_whitespace().next());
    let tps = field("tps = ").and_then(|v| v.parse().ok()).expect("tps in pgbench's output");
    let transactions = field("number of transactions actually processed: ")
        .and_then(|v| v.parse().ok())
        .expect("transactions in pgbench's output");
    if let Some(follower) = follower {
        wait_marker(follower, &c.on_leader.value(BUMP_MARKER).expect("marker"));
    }
    let drained = ended.elapsed();
    let cpu = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before;
    if let Some(follower) = follower {
        let fingerprint = fingerprint();
        assert_eq!(follower.value(&fingerprint), c.on_leader.value(&fingerprint), "pgbench tables differ");
    }
    PgbenchRun { attached, tps, transactions, own_lag, history_lag, drained, cpu, others, stages, unlogged_wal }
}

/// The processes doing the consumer's work, on both sides.
fn consumer_pids(c: &Cluster, attached: Attached) -> Vec<u32> {
    match attached {
        Attached::Nothing => Vec::new(),
        Attached::Walship => {
            let sidecars = [c.leader_sidecar.pid(), c.follower_sidecar.pid()].into_iter().flatten();
            let slot = format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{LEADER_SLOT}'");
            sidecars.chain(c.on_leader.pids(&slot)).chain(c.on_walship.pids(WALSHIP_BACKENDS)).collect()
        }
        Attached::Native => {
            let walsender = format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{NATIVE}'");
            let worker =
                format!("SELECT string_agg(pid::text, ' ') FROM pg_stat_subscription WHERE subname = '{NATIVE}'");
            c.on_leader.pids(&walsender).into_iter().chain(c.on_native.pids(&worker)).collect()
        }
    }
}

/// count + sum(hashtext(row)) of every pgbench table, as one string.
fn fingerprint() -> String {
    let parts: Vec<String> = PGBENCH_TABLES
        .iter()
        .map(|t| format!("(SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM {t} t)"))
        .collect();
    format!("SELECT {}", parts.join(" || ' ' || "))
}
