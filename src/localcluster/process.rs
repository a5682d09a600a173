//! A sidecar as a child process (`<exe> run --config FILE`, stderr appended to its log), its
//! optional watcher, and reading its log.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::LocalClusterError;

const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How a log line at ERROR level reads (levels are written plain: `NO_COLOR=1`).
pub const ERROR_MARK: &str = " ERROR ";

/// Stops the sidecar when its starter dies without stopping it (SIGKILL, a crash), like
/// localpg's guardian: it ignores the usual signals, blocks reading a pipe whose only write
/// end the starter holds, and when the kernel closes it, sends SIGTERM, then SIGKILL after
/// 10 s, if the process is still that sidecar. `$0` name, `$1` pid, `$2` config path (found
/// in the sidecar's cmdline).
const WATCHER: &str = r#"trap '' HUP INT QUIT TERM
while read -r _; do :; done
alive() { grep -qaF -- "$2" "/proc/$1/cmdline" 2>/dev/null; }
alive "$1" || exit 0
kill -TERM "$1" 2>/dev/null
i=0
while [ $i -lt 100 ] && alive "$1"; do sleep 0.1; i=$((i + 1)); done
alive "$1" && kill -KILL "$1" 2>/dev/null
exit 0
"#;

/// How sidecar processes start.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The walship executable: `env!("CARGO_BIN_EXE_walship")` in tests and benches, the
    /// running executable in the demo.
    pub exe: PathBuf,
    /// Extra environment (`WALSHIP_LOG`, ...). `NO_COLOR=1` is always set: logs are read for
    /// their levels, which colours would wrap in escapes.
    pub env: Vec<(String, String)>,
    /// In its own process group, so that a terminal's Ctrl-C reaches only the starter, which
    /// stops the sidecars in order.
    pub own_process_group: bool,
    /// With a watcher that stops the sidecar if the starter dies without stopping it.
    pub watcher: bool,
}

impl Launch {
    /// `exe`, nothing else.
    pub fn new(exe: impl Into<PathBuf>) -> Launch {
        Launch { exe: exe.into(), env: Vec::new(), own_process_group: false, watcher: false }
    }
}

/// A running (or exited, not yet reaped) `walship run` process. Dropping it kills the process
/// if it still runs, then dismisses its watcher.
pub struct SidecarProcess {
    node: String,
    child: Child,
    /// Holds the watcher's pipe in its stdin.
    watcher: Option<Child>,
}

impl SidecarProcess {
    pub fn spawn(
        node: &str,
        config_path: &Path,
        log_path: &Path,
        launch: &Launch,
    ) -> Result<SidecarProcess, LocalClusterError> {
        let spawn_err = |source| LocalClusterError::Spawn { node: node.to_owned(), source };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|source| LocalClusterError::Io { action: "open", path: log_path.into(), source })?;
        let mut command = Command::new(&launch.exe);
        command
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if launch.own_process_group {
            command.process_group(0);
        }
        let child = command.spawn().map_err(spawn_err)?;
        let mut process = SidecarProcess { node: node.to_owned(), child, watcher: None };
        if launch.watcher {
            process.watcher = Some(spawn_watcher(process.child.id(), config_path).map_err(spawn_err)?);
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LocalClusterError> {
        self.child.try_wait().map_err(|source| self.wait_error(source))
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(mut self) -> Result<ExitStatus, LocalClusterError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.child.kill().map_err(|source| self.wait_error(source))?;
        self.child.wait().map_err(|source| self.wait_error(source))
    }

    /// SIGTERM and wait up to `timeout` for the exit; after that SIGKILL and `StopTimeout`.
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus, LocalClusterError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + timeout;
        while sent.as_ref().is_ok_and(|status| status.success()) && Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(LocalClusterError::StopTimeout { node: self.node.clone(), timeout })
    }

    fn wait_error(&self, source: std::io::Error) -> LocalClusterError {
        LocalClusterError::Io { action: "wait for sidecar", path: PathBuf::from(&self.node), source }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(mut watcher) = self.watcher.take() {
            // SIGKILL before its pipe closes (in `wait`), so the script never goes on.
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
    }
}

fn spawn_watcher(pid: u32, config_path: &Path) -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHER)
        .arg("walship-sidecar-watcher")
        .arg(pid.to_string())
        .arg(config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// The last `lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// Which ERROR lines a sidecar's log may hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ErrorCheck {
    /// None at all: the default.
    #[default]
    NoErrors,
    /// Only lines containing one of these messages.
    Expected(Vec<String>),
    /// Any; the reason says why they cannot be listed.
    Unchecked { why: String },
}

impl ErrorCheck {
    /// The ERROR lines of `log` this check does not allow.
    pub fn unexpected<'a>(&self, log: &'a str) -> Vec<&'a str> {
        let allowed = |line: &str| match self {
            ErrorCheck::NoErrors => false,
            ErrorCheck::Expected(messages) => messages.iter().any(|m| line.contains(m.as_str())),
            ErrorCheck::Unchecked { .. } => true,
        };
        log.lines().filter(|line| line.contains(ERROR_MARK) && !allowed(line)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_error_lines_not_expected_are_reported() {
        let log = "t  INFO a: started\nt ERROR a: token mismatch\nt ERROR a: disk full\nt  WARN a: ERROR-ish\n";
        assert_eq!(ErrorCheck::NoErrors.unexpected(log), ["t ERROR a: token mismatch", "t ERROR a: disk full"]);
        let expected = ErrorCheck::Expected(vec!["token mismatch".into()]);
        assert_eq!(expected.unexpected(log), ["t ERROR a: disk full"]);
        assert!(ErrorCheck::Unchecked { why: "a test".into() }.unexpected(log).is_empty());
    }
}
