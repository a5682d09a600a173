//! The postmaster process: our direct child (not daemonized by `pg_ctl start`), so its exit
//! is seen at once and it is never a zombie.

use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tracing::warn;

/// How often startup and shutdown are polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub(crate) struct Postmaster {
    /// `Some` from spawn until its exit is reaped. A mutex so `is_running(&self)` can reap.
    child: Mutex<Option<Child>>,
}

impl Postmaster {
    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding this lock leaves the Option intact: keep going.
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set(&mut self, child: Child) {
        *self.lock() = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.reap().is_none() && self.lock().is_some()
    }

    /// The exit status if it has exited since the last call, reaping it.
    pub(crate) fn reap(&self) -> Option<ExitStatus> {
        let mut guard = self.lock();
        let status = match guard.as_mut()?.try_wait() {
            Ok(status) => status?,
            Err(err) => {
                warn!(error = %err, "could not poll the postmaster, assuming it exited");
                return None;
            }
        };
        *guard = None;
        Some(status)
    }

    /// Waits up to `timeout` for the exit; whether it exited.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reap().is_some() || self.lock().is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL, the last resort: backends notice the postmaster's death and exit.
    pub(crate) fn kill(&self) {
        let mut guard = self.lock();
        if let Some(child) = guard.as_mut() {
            if let Err(err) = child.kill().and_then(|()| child.wait().map(drop)) {
                warn!(error = %err, "could not kill the postmaster");
            }
        }
        *guard = None;
    }
}

/// Whether `postmaster.pid` is `pid`'s and says it accepts connections (what `pg_ctl -w`
/// checks): line 1 the pid, line 8 the status. A stale file of a previous run has another pid.
pub(crate) fn pid_file_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    let pid_matches = lines.next().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid);
    let status = lines.nth(6).map(str::trim);
    pid_matches && matches!(status, Some("ready" | "standby"))
}

/// Whether something already listens on (or holds) `127.0.0.1:port`.
pub(crate) fn port_taken(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err_and(|err| err.kind() == std::io::ErrorKind::AddrInUse)
}

/// A port free on 127.0.0.1 right now, for a server about to bind it. Chosen at random below
/// the kernel's range for outgoing connections' ports (`ip_local_port_range`, 32768 and up by
/// default): a port the kernel hands out itself (`bind` to 0) is also what any client
/// connection of a parallel test may take as its source port before the server binds it.
pub fn free_port() -> std::io::Result<u16> {
    use rand::RngExt;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_000 {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let port = rng.random_range(10_000..ephemeral_low);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// The last `max_lines` lines of the server log written from offset `start` on.
pub(crate) fn log_tail(log: &Path, start: u64, max_lines: usize) -> String {
    const MAX_BYTES: u64 = 16 * 1024;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(log).and_then(|mut file| {
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES).max(start)))?;
        file.read_to_end(&mut bytes)
    });
    if let Err(err) = read {
        return format!("(could not read the server log: {err})");
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}
