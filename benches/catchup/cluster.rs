//! The catch-up bench's cluster: a leader PostgreSQL with its walship sidecar, one follower
//! instance replayed by a walship follower sidecar, and one follower instance fed by a native
//! subscription, on the library's local-cluster harness (`walship::localcluster`). Everything
//! blocks; SQL goes through tokio-postgres on one current-thread runtime, so polling costs no
//! process start.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::SimpleQueryMessage;
use walship::config::Role;
use walship::localcluster::{self, Launch, Peer, SidecarConfig, SidecarFiles};
use walship::localpg::{Instance, Options};

/// The native publication, subscription and slot.
pub const NATIVE: &str = "native";
/// The walship leader sidecar's node name, and its slot.
const LEADER_NODE: &str = "a";
pub const LEADER_SLOT: &str = "walship_a";
const TOKEN: &str = "catchup-bench-token-0123456789";
/// The same on all three instances before anything replicates. `bench_marker` is bumped after
/// each workload: a follower showing the new value has applied everything before it.
const SCHEMA: &str = "CREATE TABLE bench (id bigint PRIMARY KEY, qty int NOT NULL, note text NOT NULL); \
     CREATE TABLE bench_marker (id int PRIMARY KEY, n bigint NOT NULL); \
     INSERT INTO bench_marker VALUES (1, 0);";
pub const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];
/// Every instance's settings beyond localpg's (`fsync = on`, `wal_level = logical`).
const SETTINGS: &[(&str, &str)] = &[
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "30min"),
    ("logical_decoding_work_mem", "256MB"),
    // The launcher starts apply workers at most once per this interval (default 5 s): a
    // subscription enabled soon after its last start would wait for it, an artefact of the
    // bench's disable-enable cycles rather than of catching up.
    ("wal_retrieve_retry_interval", "100ms"),
];
const POLL: Duration = Duration::from_millis(100);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// The leader bumps the marker after a workload; a follower showing the new value has applied
/// everything committed before it (both systems apply in commit order).
const MARKER: &str = "SELECT n FROM bench_marker WHERE id = 1";
pub const BUMP_MARKER: &str = "UPDATE bench_marker SET n = n + 1 WHERE id = 1 RETURNING n";
/// The walship follower sidecar's sessions on its instance (seen from another session).
pub const WALSHIP_BACKENDS: &str = "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One SQL session, kept open for the whole bench.
pub struct Conn {
    rt: Rc<Runtime>,
    client: tokio_postgres::Client,
}

impl Conn {
    pub fn open(rt: &Rc<Runtime>, pg: &Instance) -> Conn {
        let config: tokio_postgres::Config = pg.conninfo("postgres").parse().expect("conninfo");
        let client = rt.block_on(walship::sql::connect(&config)).expect("connect");
        Conn { rt: rt.clone(), client }
    }

    /// The first column of the first row as text; `None` for no row or NULL.
    pub fn value(&self, sql: &str) -> Option<String> {
        let messages = self.rt.block_on(self.client.simple_query(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })?
    }

    pub fn execute(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Pids of the server processes `sql` lists (one per row, or space-separated).
    pub fn pids(&self, sql: &str) -> Vec<u32> {
        self.value(sql).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

/// A `walship run` process; a failed step panics.
pub struct Sidecar(localcluster::Sidecar);

impl Sidecar {
    /// Starts the process unless it runs.
    pub fn start(&mut self) {
        self.0.start().expect("start walship");
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) {
        if let Err(e) = self.0.stop(STOP_TIMEOUT) {
            panic!("{e}; see {}", self.0.log_path.display());
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// CPU seconds the running process has used so far (0 when stopped).
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, cpu_seconds)
    }
}

/// The three instances, both sidecars (stopped until asked) and a session on each instance.
/// Fields drop in order: sidecars first, then sessions, then the instances.
pub struct Cluster {
    pub leader_sidecar: Sidecar,
    /// The leader sidecar's admin port (`/metrics`).
    pub leader_admin: u16,
    pub follower_sidecar: Sidecar,
    pub on_leader: Conn,
    pub on_walship: Conn,
    pub on_native: Conn,
    pub leader: Instance,
    /// The followers' instances: kept running for as long as the cluster lives.
    _walship_pg: Instance,
    _native_pg: Instance,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything; on return the leader sidecar runs, the walship follower has applied
    /// the log's first entries and is stopped, and the native subscription exists, disabled.
    pub fn start(rt: &Rc<Runtime>, pgbench_scale: u32, native_synchronous_commit: &str) -> Cluster {
        let [leader, walship_pg, native_pg] = start_instances(pgbench_scale);
        let tables = PGBENCH_TABLES.join(", ");
        leader
            .psql("postgres", &format!("CREATE PUBLICATION {NATIVE} FOR TABLE bench, bench_marker, {tables}"))
            .expect("pub");

        let keep = std::env::var_os("WALSHIP_BENCH_KEEP").is_some();
        let dir = localcluster::create_folder("walship-catchup-", keep).expect("bench folder");
        let token = dir.path().join("token");
        localcluster::write_token(&token, TOKEN).expect("token");
        let port = || localcluster::free_port().expect("port");
        let leader_peer = Peer { node: LEADER_NODE.into(), relay_port: port(), admin_port: port() };
        let follower_peer = Peer { node: "b".into(), relay_port: port(), admin_port: port() };
        let admin = leader_peer.admin_port;
        // Each names the other in [[peers]]: the leader then reports the follower's lag.
        let mut leader_sidecar = sidecar(dir.path(), Role::Leader, &leader, &token, &leader_peer, &follower_peer);
        let mut follower_sidecar =
            sidecar(dir.path(), Role::Follower, &walship_pg, &token, &follower_peer, &leader_peer);
        leader_sidecar.start();
        let slot = format!(
            "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{LEADER_SLOT}'"
        );
        wait_for("the leader sidecar's slot", || leader.psql("postgres", &slot).is_ok_and(|v| v == "t"));
        follower_sidecar.start();
        wait_for("the walship follower's first apply", || {
            walship_pg.psql("postgres", "SELECT count(*) FROM walship.progress").is_ok_and(|v| v == "1")
        });
        follower_sidecar.stop();

        let sub = format!(
            "CREATE SUBSCRIPTION {NATIVE} CONNECTION '{}' PUBLICATION {NATIVE} \
             WITH (copy_data = false, enabled = false, synchronous_commit = '{native_synchronous_commit}')",
            leader.conninfo("postgres")
        );
        native_pg.psql("postgres", &sub).expect("create subscription");
        Cluster {
            leader_sidecar,
            leader_admin: admin,
            follower_sidecar,
            on_leader: Conn::open(rt, &leader),
            on_walship: Conn::open(rt, &walship_pg),
            on_native: Conn::open(rt, &native_pg),
            leader,
            _walship_pg: walship_pg,
            _native_pg: native_pg,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Lets the native subscription's apply worker stream again.
    pub fn enable_native(&self) {
        self.on_native.execute(&format!("ALTER SUBSCRIPTION {NATIVE} ENABLE"));
    }

    /// Disables the native subscription and waits until its walsender is gone.
    pub fn disable_native(&self) {
        self.on_native.execute(&format!("ALTER SUBSCRIPTION {NATIVE} DISABLE"));
        let sql = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{NATIVE}'");
        wait_for("the native slot to be released", || self.on_leader.value(&sql).as_deref() == Some("f"));
    }

    /// Waits until the walship leader sidecar has logged (and confirmed) the leader's WAL up
    /// to now.
    pub fn wait_leader_logged(&self) {
        let end = self.on_leader.value("SELECT pg_current_wal_lsn()").expect("lsn");
        let sql = format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{LEADER_SLOT}'"
        );
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.on_leader.value(&sql).as_deref() != Some("t") {
            assert!(Instant::now() < deadline, "the leader sidecar did not log the workload; see {:?}", self.dir());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Three instances with the bench's settings, `SCHEMA` and the pgbench tables.
fn start_instances(pgbench_scale: u32) -> [Instance; 3] {
    let settings: Vec<(String, String)> = SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let specs = (0..3).map(|_| (None, Options { settings: settings.clone(), ..Options::default() })).collect();
    let mut started = localcluster::start_instances(specs).into_iter().map(|pg| pg.expect("start PostgreSQL"));
    [(); 3].map(|()| {
        let pg = started.next().expect("three instances");
        pg.psql("postgres", SCHEMA).expect("schema");
        let init = pg.command("pgbench").args(["-i", "-q", "-s", &pgbench_scale.to_string()]).output();
        assert!(init.expect("run pgbench -i").status.success(), "pgbench -i failed");
        pg
    })
}

/// A sidecar for `pg` in `<dir>/<node>/` (logs included: under `WALSHIP_PG_TMPDIR` like the
/// instances, so that both systems fsync to the same file system), naming `peer`.
fn sidecar(dir: &Path, role: Role, pg: &Instance, token: &Path, this: &Peer, peer: &Peer) -> Sidecar {
    // A follower sidecar replays into the PostgreSQL beside it through its Unix socket, as
    // deployed (README); the leader sidecar reads over TCP like the native subscription.
    let postgres = match role {
        Role::Follower => {
            format!("host={} port={} user=postgres dbname=postgres", pg.socket_dir().display(), pg.port())
        }
        Role::Leader => pg.conninfo("postgres"),
    };
    let config = SidecarConfig {
        node: this.node.clone(),
        cluster: "bench".into(),
        role,
        data_dir: Default::default(),
        postgres,
        relay_port: this.relay_port,
        admin_port: this.admin_port,
        token_file: token.into(),
        peers: vec![peer.clone()],
        extra: String::new(),
    };
    let launch = Launch::new(env!("CARGO_BIN_EXE_walship"));
    let sidecar = localcluster::Sidecar::create(&dir.join(&this.node), SidecarFiles::default(), config, &launch);
    Sidecar(sidecar.expect("write the sidecar's configuration"))
}

/// Runs `start` and polls `follower` every 100 ms; the clock stops at the first poll that sees
/// the leader's `marker`, confirmed by `check` (a query and the leader's answer to it).
pub fn time_catch_up(follower: &Conn, marker: &str, check: (&str, &str), start: impl FnOnce()) -> Duration {
    let started = Instant::now();
    start();
    loop {
        if follower.value(MARKER).as_deref() == Some(marker) {
            let at = started.elapsed();
            if follower.value(check.0).as_deref() == Some(check.1) {
                return at;
            }
        }
        assert!(started.elapsed() < CATCH_UP_TIMEOUT, "no catch-up after {CATCH_UP_TIMEOUT:?}");
        std::thread::sleep(POLL);
    }
}

/// Polls `follower` every 100 ms until it shows the leader's `marker`.
pub fn wait_marker(follower: &Conn, marker: &str) {
    let started = Instant::now();
    while follower.value(MARKER).as_deref() != Some(marker) {
        assert!(started.elapsed() < CATCH_UP_TIMEOUT, "no catch-up after {CATCH_UP_TIMEOUT:?}");
        std::thread::sleep(POLL);
    }
}

/// Polls `check` every 100 ms for up to a minute.
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// User plus system CPU seconds a process has used so far (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}
