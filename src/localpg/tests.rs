//! Tests against real PostgreSQL servers; safe to run in parallel threads or processes.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::bindir::search;
use super::*;

fn start(opts: Options) -> Instance {
    Instance::start(opts).unwrap()
}

/// `select 1` through `command("psql")` with the given password in `PGPASSWORD`.
fn psql_with_password(pg: &Instance, password: &str) -> Output {
    pg.command("psql")
        .args(["-X", "-At", "-c", "select 1"])
        .env("PGPASSWORD", password)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap()
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn starts_answers_queries_and_creates_databases() {
    let pg = start(Options::default());
    assert!(pg.is_running());
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.bindir().join("initdb").is_file());
    assert_eq!(pg.psql("postgres", "select 1").unwrap(), "1");
    pg.create_database("app").unwrap();
    let out = pg
        .psql("app", "create table t (x int); insert into t values (1), (2);\nselect x, x * 10 from t order by x")
        .unwrap();
    assert_eq!(out, "1|10\n2|20");
    assert_eq!(pg.conninfo("app"), format!("host=127.0.0.1 port={} user=postgres dbname=app", pg.port()));
}

#[test]
fn configuration_is_applied() {
    let pg = start(Options { settings: vec![("work_mem".into(), "7MB".into())], ..Options::default() });
    let sql = "select current_setting('wal_level'), current_setting('max_wal_senders'), \
               current_setting('max_replication_slots'), current_setting('fsync'), \
               current_setting('listen_addresses'), current_setting('shared_buffers'), \
               current_setting('work_mem'), current_setting('unix_socket_directories')";
    let expected = format!("logical|20|20|on|127.0.0.1|128MB|7MB|{}", pg.socket_dir().display());
    assert_eq!(pg.psql("postgres", sql).unwrap(), expected);
    let meta = std::fs::metadata(pg.data_dir()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    if std::fs::read_to_string("/proc/self/status").unwrap().contains("Uid:\t0\t0") {
        let owner = std::fs::metadata(pg.data_dir().join("PG_VERSION")).unwrap().uid();
        assert_ne!(owner, 0, "data must belong to the postgres user when root");
    }
    assert!(std::fs::read_to_string(pg.log_path()).unwrap().contains("ready to accept"));
}

#[test]
fn stop_fast_and_immediate_then_start_again_keep_data() {
    let mut pg = start(Options::default());
    let port = pg.port();
    pg.psql("postgres", "create table t (x int); insert into t values (1)").unwrap();
    pg.stop(StopMode::Fast).unwrap();
    assert!(!pg.is_running());
    assert!(pg.psql("postgres", "select 1").is_err());
    pg.stop(StopMode::Fast).unwrap(); // stopping a stopped server does nothing
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    pg.psql("postgres", "insert into t values (2)").unwrap();
    pg.stop(StopMode::Immediate).unwrap();
    assert!(!pg.is_running());
    pg.start_again().unwrap();
    assert_eq!(pg.psql("postgres", "select sum(x) from t").unwrap(), "3");
}

#[test]
fn two_instances_run_at_once() {
    let a = start(Options::default());
    let b = start(Options::default());
    assert_ne!(a.port(), b.port());
    a.psql("postgres", "create table only_in_a ()").unwrap();
    let exists = "select count(*) from pg_class where relname = 'only_in_a'";
    assert_eq!(a.psql("postgres", exists).unwrap(), "1");
    assert_eq!(b.psql("postgres", exists).unwrap(), "0");
}

fn check_password_auth(auth: Auth, stored_prefix: &str) {
    let password = "s3cret 'quoted'";
    let pg = start(Options { auth, password: Some(password.into()), ..Options::default() });
    let wrong = psql_with_password(&pg, "wrong");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("password authentication failed"), "{stderr}");
    let right = psql_with_password(&pg, password);
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    // psql() and conninfo() carry the password too.
    let stored = pg.psql("postgres", "select rolpassword from pg_authid where rolname = 'postgres'").unwrap();
    assert!(stored.starts_with(stored_prefix), "{stored}");
    assert!(pg.conninfo("postgres").ends_with(" password='s3cret \\'quoted\\''"));
}

#[test]
fn md5_needs_the_right_password() {
    check_password_auth(Auth::Md5, "md5");
}

#[test]
fn scram_needs_the_right_password() {
    check_password_auth(Auth::Scram, "SCRAM-SHA-256$");
}

#[test]
fn password_auth_without_password_is_refused() {
    let err = Instance::start(Options { auth: Auth::Scram, ..Options::default() }).unwrap_err();
    assert!(matches!(err, LocalPgError::InvalidOptions(_)), "{err}");
}

#[test]
fn drop_stops_the_server_and_removes_the_folder() {
    let pg = start(Options::default());
    let (dir, pid) = (pg.dir().to_path_buf(), pg.pid().unwrap());
    assert!(process_alive(pid));
    drop(pg);
    assert!(!dir.exists(), "{dir:?} still exists");
    assert!(!process_alive(pid), "postmaster {pid} still runs");
}

#[test]
fn start_in_keeps_the_folder() {
    let root = tempfile::tempdir().unwrap();
    // As root, the postgres user must be able to traverse the parent.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = root.path().join("node1");
    let pg = Instance::start_in(&dir, Options::default()).unwrap();
    pg.psql("postgres", "create table kept ()").unwrap();
    drop(pg);
    assert!(dir.join("data/PG_VERSION").is_file());
    assert!(dir.join("server.log").is_file());
    let err = Instance::start_in(&dir, Options::default()).unwrap_err();
    assert!(matches!(err, LocalPgError::DataDirExists { .. }), "{err}");
}

#[test]
fn start_in_an_unreachable_folder_says_why() {
    let running_as_root = std::fs::read_to_string("/proc/self/status").unwrap().contains("Uid:\t0\t0");
    if !running_as_root {
        return; // only root switches to the postgres user
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = root.path().join("node1");
    let err = Instance::start_in(&dir, Options::default()).unwrap_err();
    assert!(err.to_string().contains("traverse"), "{err}");
    assert!(!dir.join("data").exists(), "a failed start must not leave its data folder");
}

#[test]
fn a_taken_port_is_reported() {
    let a = start(Options::default());
    let started = Instant::now();
    let err = Instance::start(Options { port: Some(a.port()), ..Options::default() }).unwrap_err();
    assert!(matches!(err, LocalPgError::PortInUse { port } if port == a.port()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_given_port_is_used() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let pg = start(Options { port: Some(port), ..Options::default() });
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "show port").unwrap(), port.to_string());
}

#[test]
fn psql_errors_carry_stderr() {
    let pg = start(Options::default());
    let err = pg.psql("postgres", "select no_such_column").unwrap_err();
    assert!(err.to_string().contains("no_such_column"), "{err}");
    let err = pg.create_database("app").and(pg.create_database("app")).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn command_runs_server_programs() {
    let pg = start(Options::default());
    let status = pg.command("pg_ctl").arg("status").output().unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && stdout.contains("server is running"), "{stdout}");
    let bench = pg.command("pgbench").args(["-i", "-s", "1", "-q"]).output().unwrap();
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
}

#[test]
fn missing_binaries_say_what_to_do() {
    let err = search(None, Path::new("/nonexistent/pg_config"), Path::new("/nonexistent")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PostgreSQL binaries not found (looked in $WALSHIP_PG_BINDIR, \
         `/nonexistent/pg_config --bindir`, /nonexistent/*/bin): install PostgreSQL \
         (apt-get install postgresql) or set WALSHIP_PG_BINDIR"
    );
}

#[test]
fn a_wrong_bindir_env_is_an_error() {
    let err = find_bindir_from(Some(OsStr::new("/nonexistent/bin"))).unwrap_err();
    assert!(matches!(err, LocalPgError::BadBindirEnv { .. }), "{err}");
    assert!(err.to_string().contains("WALSHIP_PG_BINDIR"), "{err}");
    // Unset or empty: found by pg_config or /usr/lib/postgresql here.
    assert!(find_bindir_from(None).unwrap().join("initdb").is_file());
    assert!(find_bindir_from(Some(OsStr::new(""))).is_ok());
}

#[test]
fn temp_root_defaults_to_the_system_temp_folder() {
    use super::template::temp_root_from;
    assert_eq!(temp_root_from(None), std::env::temp_dir());
    assert_eq!(temp_root_from(Some(OsStr::new(""))), std::env::temp_dir());
    assert_eq!(temp_root_from(Some(OsStr::new("/dev/shm"))), Path::new("/dev/shm"));
}

#[test]
fn instance_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Instance>();
}

const GUARDIAN_HELPER_ENV: &str = "WALSHIP_LOCALPG_GUARDIAN_HELPER";

/// Run by `guardian_cleans_up_after_a_killed_process` in a child process; a no-op otherwise.
#[test]
fn guardian_helper() {
    if std::env::var_os(GUARDIAN_HELPER_ENV).is_none() {
        return;
    }
    let pg = start(Options::default());
    println!("READY {} {}", pg.pid().unwrap(), pg.dir().display());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120)); // the parent SIGKILLs us before
}

#[test]
fn guardian_cleans_up_after_a_killed_process() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "localpg::tests::guardian_helper", "--nocapture"])
        .env(GUARDIAN_HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let ready = stdout.lines().find_map(|line| Some(line.ok()?.strip_prefix("READY ")?.to_owned()));
    let Some((pid, dir)) = ready.as_deref().and_then(|r| r.split_once(' ')) else {
        helper.kill().unwrap();
        panic!("the helper process did not start an instance");
    };
    let (pid, dir): (u32, PathBuf) = (pid.parse().unwrap(), dir.into());
    assert!(process_alive(pid) && dir.exists());
    helper.kill().unwrap(); // SIGKILL: no destructor runs
    helper.wait().unwrap();
    wait_until("the guardian stopped postgres", Duration::from_secs(20), || !process_alive(pid));
    wait_until("the guardian removed the folder", Duration::from_secs(20), || !dir.exists());
}
