//! Leader decode-and-log throughput beside `pg_recvlogical` on the same WAL.
//!
//! One PostgreSQL instance, two slots made before the workload: walship's and one for
//! pg_recvlogical (both pgoutput, same publication). The workload (by default 1M inserts in
//! transactions of 100 rows) is committed while nobody reads; then each consumer drains the
//! same WAL, timed until its slot confirms the workload's end:
//!
//! - `pg_recvlogical --endpos` writing to /dev/null;
//! - `walship run` (release build), its log fsynced, until the slot's `confirmed_flush_lsn`
//!   reaches the end (walship confirms only what it fsynced).
//!
//! `cargo bench --bench leader` prints both rates and their ratio. `WALSHIP_BENCH_ROWS` and
//! `WALSHIP_BENCH_TXN_ROWS` change the workload.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walship::localpg::{Instance, Options};
use walship::lsn::Lsn;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One way of reaching PostgreSQL, measured for both consumers.
struct Transport {
    name: &'static str,
    /// libpq `host`: 127.0.0.1 or the socket directory.
    host: String,
    node: &'static str,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let rows = env_usize("WALSHIP_BENCH_ROWS", 1_000_000);
    let txn_rows = env_usize("WALSHIP_BENCH_TXN_ROWS", 100).max(1);
    let settings = vec![
        ("max_wal_size".to_owned(), "8GB".to_owned()),
        ("checkpoint_timeout".to_owned(), "30min".to_owned()),
        ("logical_decoding_work_mem".to_owned(), "256MB".to_owned()),
    ];
    let pg = Instance::start(Options { settings, ..Options::default() }).expect("start PostgreSQL");
    let dir = tempfile::tempdir().expect("temp dir");
    pg.psql("postgres", "CREATE TABLE bench (id bigint PRIMARY KEY, qty int NOT NULL, note text NOT NULL)")
        .expect("create table");
    let transports = [
        Transport { name: "tcp", host: pg.host().to_owned(), node: "a" },
        Transport { name: "unix", host: pg.socket_dir().display().to_string(), node: "b" },
    ];

    // Every consumer gets its own slot before the workload, so each drains the same WAL.
    let mut configs = Vec::new();
    for t in &transports {
        let config = write_config(&dir.path().join(t.node), &pg, t);
        let mut sidecar = start_sidecar(&config);
        let slot = format!("walship_{}", t.node);
        wait_for(Duration::from_secs(30), || confirmed(&pg, &slot) > Lsn::ZERO);
        stop(&mut sidecar);
        pg.psql("postgres", &format!("SELECT pg_create_logical_replication_slot('recv_{}', 'pgoutput')", t.name))
            .expect("create recvlogical slot");
        configs.push(config);
    }

    let started = Instant::now();
    let workload = format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP \
           INSERT INTO bench SELECT g, g % 1000, 'note ' || g FROM generate_series(t * {txn_rows} + 1, least((t + 1) * {txn_rows}, {rows})) g; \
           COMMIT; END LOOP; END $$",
        rows.div_ceil(txn_rows) - 1
    );
    pg.psql("postgres", &workload).expect("workload");
    let end: Lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()").expect("lsn").trim().parse().expect("lsn");
    println!("workload: {rows} inserts in transactions of {txn_rows}, committed in {:.1?}", started.elapsed());

    for (t, config) in transports.iter().zip(&configs) {
        let recv = time_recvlogical(&pg, t, end);
        let recv_rate = rows as f64 / recv.as_secs_f64();
        println!("[{}] pg_recvlogical:    {recv:>8.2?}  {recv_rate:>10.0} changes/s", t.name);

        let started = Instant::now();
        let mut sidecar = start_sidecar(config);
        let slot = format!("walship_{}", t.node);
        wait_for(Duration::from_secs(600), || confirmed(&pg, &slot) >= end);
        let walship = started.elapsed();
        let cpu = cpu_seconds(sidecar.id());
        stop(&mut sidecar);
        let walship_rate = rows as f64 / walship.as_secs_f64();
        println!(
            "[{}] walship (fsynced): {walship:>8.2?}  {walship_rate:>10.0} changes/s  (sidecar cpu {cpu:.2}s)",
            t.name
        );
        println!("[{}] ratio walship / pg_recvlogical: {:.2}", t.name, walship_rate / recv_rate);
    }
}

fn write_config(dir: &Path, pg: &Instance, transport: &Transport) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("config dir");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let text = format!(
        "node = \"{}\"\ncluster = \"bench\"\ndata_dir = \"{}\"\n\
         postgres = \"host={} port={} user=postgres dbname=postgres\"\nrole = \"leader\"\n\
         listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{admin}\"\n",
        transport.node,
        dir.join("data").display(),
        transport.host,
        pg.port()
    );
    let path = dir.join("walship.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_sidecar(config: &Path) -> std::process::Child {
    let log_path = config.with_file_name("sidecar.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start walship")
}

fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn time_recvlogical(pg: &Instance, transport: &Transport, end: Lsn) -> Duration {
    let started = Instant::now();
    let slot = format!("recv_{}", transport.name);
    let status = pg
        .command("pg_recvlogical")
        .env("PGHOST", &transport.host)
        .args(["-d", "postgres", "--slot", &slot, "--start", "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=walship"])
        .arg(format!("--endpos={end}"))
        .status()
        .expect("run pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    started.elapsed()
}

fn confirmed(pg: &Instance, slot: &str) -> Lsn {
    pg.psql(
        "postgres",
        &format!("SELECT coalesce(confirmed_flush_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(Lsn::ZERO)
}

fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// User plus system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}
