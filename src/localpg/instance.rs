//! [`Instance`]: starting, stopping and talking to one local server.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tracing::{debug, info, warn};

use super::bindir::find_bindir;
use super::config;
use super::error::{io_err, run_checked, spawn_error, LocalPgError};
use super::guardian::Guardian;
use super::os_user::ServerUser;
use super::postmaster::{self, free_port, log_tail, port_taken, Postmaster};
use super::{template, Options, StopMode};

mod client;

const HOST: &str = "127.0.0.1";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts tried on fresh free ports when another process takes the port first.
const PORT_ATTEMPTS: u32 = 5;
const LOG_TAIL_LINES: usize = 30;

/// A running (or stopped) local PostgreSQL server. See the module docs.
pub struct Instance {
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: Option<String>,
    user: ServerUser,
    postmaster: Postmaster,
    guardian: Option<Guardian>,
    /// Set when the instance owns its folder; removed on drop.
    temp: Option<TempDir>,
}

impl Instance {
    /// Starts a server in a new folder under `$WALSHIP_PG_TMPDIR` (default: the system temp
    /// folder), removed on drop.
    pub fn start(opts: Options) -> Result<Instance, LocalPgError> {
        let root = template::temp_root();
        let temp = tempfile::Builder::new()
            .prefix("walship-pg-")
            .tempdir_in(&root)
            .map_err(io_err("create a folder in", &root))?;
        let dir = temp.path().to_path_buf();
        Self::launch(dir, Some(temp), opts)
    }

    /// Starts a server in `dir` (created if missing), which is kept on drop. `dir` must not
    /// hold a `data` folder yet; every folder above it must be traversable by the
    /// `postgres` user when running as root.
    pub fn start_in(dir: &Path, opts: Options) -> Result<Instance, LocalPgError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let data_dir = dir.join("data");
        if fs::symlink_metadata(&data_dir).is_ok() {
            return Err(LocalPgError::DataDirExists { path: data_dir });
        }
        let result = Self::launch(dir, None, opts);
        if result.is_err() && data_dir.exists() {
            // Ours, from this attempt: remove it so that a retry can start afresh.
            if let Err(err) = fs::remove_dir_all(&data_dir) {
                warn!(error = %err, path = %data_dir.display(), "could not remove data folder");
            }
        }
        result
    }

    fn launch(dir: PathBuf, temp: Option<TempDir>, opts: Options) -> Result<Self, LocalPgError> {
        let started = Instant::now();
        config::validate(&opts)?;
        let bindir = find_bindir()?;
        let user = ServerUser::detect()?;
        let (data_dir, socket_dir) = prepare_folder(&dir, &bindir, &user)?;
        let removed_by_guardian = temp.as_ref().map(TempDir::path);
        let guardian = Guardian::spawn(&bindir, &dir, &data_dir, removed_by_guardian, &user)?;
        let mut instance = Instance {
            log_path: dir.join("server.log"),
            dir,
            data_dir,
            socket_dir,
            bindir,
            port: 0,
            password: None,
            user,
            postmaster: Postmaster::default(),
            guardian: Some(guardian),
            temp,
        };
        // From here on, an error drops `instance`, which stops and cleans up.
        instance.first_start(&opts)?;
        if let Some(password) = opts.password {
            instance.set_password(&password)?;
            instance.password = Some(password);
        }
        info!(port = instance.port, dir = %instance.dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64, "local postgres started");
        Ok(instance)
    }

    /// Writes the configuration and starts, on a fresh free port again if the first one is
    /// taken meanwhile (only when no port was asked for).
    fn first_start(&mut self, opts: &Options) -> Result<(), LocalPgError> {
        let mut attempt = 1;
        loop {
            self.port = match opts.port {
                Some(port) => port,
                None => free_port().map_err(io_err("find a free port on", Path::new(HOST)))?,
            };
            config::write(&self.data_dir, self.port, &self.socket_dir, opts, &self.user)?;
            match self.run_postmaster() {
                Err(LocalPgError::PortInUse { port }) if opts.port.is_none() && attempt < PORT_ATTEMPTS => {
                    debug!(port, attempt, "port taken before postgres bound it, trying another");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Spawns the postmaster and waits until it accepts connections.
    fn run_postmaster(&mut self) -> Result<(), LocalPgError> {
        if port_taken(self.port) {
            return Err(LocalPgError::PortInUse { port: self.port });
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err("open", &self.log_path))?;
        self.user.own(&self.log_path)?;
        let log_start = log.metadata().map_or(0, |meta| meta.len());
        let log_err = log.try_clone().map_err(io_err("open", &self.log_path))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env_remove("PGPASSWORD")
            // Like `pg_ctl start`: a Ctrl-C for our process group does not reach the server.
            .process_group(0);
        let child = cmd.spawn().map_err(|source| spawn_error(&cmd, self.user.describe(), source))?;
        self.postmaster.set(child);
        self.wait_ready(log_start)
    }

    /// Polls until the server accepts connections; `log_start`: where this start's log begins.
    fn wait_ready(&mut self, log_start: u64) -> Result<(), LocalPgError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.postmaster.reap() {
                let tail = log_tail(&self.log_path, log_start, LOG_TAIL_LINES);
                return Err(match tail.contains("Address already in use") || port_taken(self.port) {
                    true => LocalPgError::PortInUse { port: self.port },
                    false => LocalPgError::StartFailed { status, log: self.log_path.clone(), tail },
                });
            }
            if self.accepts_connections() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = log_tail(&self.log_path, log_start, LOG_TAIL_LINES);
                if let Err(err) = self.stop(StopMode::Immediate) {
                    warn!(error = %err, "could not stop postgres after a startup timeout");
                }
                return Err(LocalPgError::StartTimeout {
                    secs: START_TIMEOUT.as_secs(),
                    log: self.log_path.clone(),
                    tail,
                });
            }
            std::thread::sleep(postmaster::POLL_INTERVAL);
        }
    }

    /// Our postmaster says "ready" in its pid file, the TCP port answers, and `pg_isready`
    /// agrees (checked in that order: the cheap checks first).
    fn accepts_connections(&self) -> bool {
        let Some(pid) = self.postmaster.pid() else {
            return false;
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        postmaster::pid_file_ready(&self.data_dir, pid)
            && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && self
                .command("pg_isready")
                .args(["-q", "-t", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`: the server listens there only.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The instance folder: `data/`, `socket/`, `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server's log (stderr), appended to across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The folder of the unix socket (trust for every user).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The postmaster's pid while running, e.g. to kill it in a fault test.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.pid()
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn is_running(&self) -> bool {
        self.postmaster.is_running()
    }

    /// Stops the server; does nothing if it is not running. A fast shutdown that takes over
    /// 60 s (e.g. a walsender whose client stopped reading) is turned into an immediate one
    /// (then a SIGKILL) and reported as `StopTimeout`.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), LocalPgError> {
        if !self.postmaster.is_running() {
            return Ok(());
        }
        self.signal_stop(mode)?;
        let timeout = match mode {
            StopMode::Fast => FAST_STOP_TIMEOUT,
            StopMode::Immediate => IMMEDIATE_STOP_TIMEOUT,
        };
        if self.postmaster.wait_exit(timeout) {
            debug!(port = self.port, mode = mode.pg_ctl_name(), "local postgres stopped");
            return Ok(());
        }
        warn!(port = self.port, mode = mode.pg_ctl_name(), "postgres is slow to stop, forcing");
        let forced = self.signal_stop(StopMode::Immediate);
        if forced.is_err() || !self.postmaster.wait_exit(IMMEDIATE_STOP_TIMEOUT) {
            self.postmaster.kill();
        }
        Err(LocalPgError::StopTimeout { mode: mode.pg_ctl_name(), secs: timeout.as_secs(), log: self.log_path.clone() })
    }

    /// `pg_ctl stop -W`: signals, and we watch our child exit (pg_ctl polls every 100 ms).
    fn signal_stop(&self, mode: StopMode) -> Result<(), LocalPgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-W", "-s", "-m", mode.pg_ctl_name()]).arg("-D").arg(&self.data_dir);
        match run_checked(&mut cmd, self.user.describe()) {
            // It may have exited just before; then there is nothing to stop.
            Err(_) if !self.postmaster.is_running() => Ok(()),
            result => result.map(drop),
        }
    }

    /// Starts the stopped server again on the same folder and port (crash recovery first
    /// after an immediate stop). Does nothing if it is running.
    pub fn start_again(&mut self) -> Result<(), LocalPgError> {
        if self.postmaster.is_running() {
            return Ok(());
        }
        let started = Instant::now();
        self.run_postmaster()?;
        info!(port = self.port, elapsed_ms = started.elapsed().as_millis() as u64, "local postgres started again");
        Ok(())
    }
}

/// Fills the instance folder `dir` for the server user: `socket/` and `data/` (a copy of the
/// template). Returns their paths.
fn prepare_folder(dir: &Path, bindir: &Path, user: &ServerUser) -> Result<(PathBuf, PathBuf), LocalPgError> {
    let socket_dir = dir.join("socket");
    let socket_path = socket_dir.join(".s.PGSQL.65535");
    // sun_path holds 108 bytes, with the terminating NUL.
    if socket_path.as_os_str().len() > 107 {
        return Err(LocalPgError::SocketPathTooLong { path: socket_path });
    }
    let template = template::ensure(bindir, user)?;
    user.own(dir)?;
    fs::create_dir_all(&socket_dir).map_err(io_err("create", &socket_dir))?;
    user.own(&socket_dir)?;
    let data_dir = dir.join("data");
    template::copy_tree(&template, &data_dir, user)?;
    Ok((data_dir, socket_dir))
}

impl fmt::Debug for Instance {
    /// Without the password: instances show up in test failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("pid", &self.postmaster.pid())
            .field("owns_dir", &self.temp.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Instance {
    /// Stops the server (immediate), ends the guardian and removes the folder if it is ours.
    fn drop(&mut self) {
        if let Err(err) = self.stop(StopMode::Immediate) {
            warn!(error = %err, dir = %self.dir.display(), "could not stop local postgres");
        }
        if let Some(guardian) = self.guardian.take() {
            guardian.dismiss();
        }
        if let Some(temp) = self.temp.take() {
            if let Err(err) = temp.close() {
                warn!(error = %err, dir = %self.dir.display(), "could not remove instance folder");
            }
        }
    }
}
