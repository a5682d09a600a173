//! One sidecar as a child process: `<this executable> run --config FILE`, and its watcher.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::DemoError;

/// How long a sidecar gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of a sidecar's log shown when it fails.
const TAIL_LINES: usize = 25;
/// Log lines at ERROR level shown at shutdown, per sidecar.
const ERROR_LINES: usize = 5;

/// Stops the sidecar when we die without stopping it (SIGKILL, a crash), like localpg's
/// guardian: it ignores the usual signals, blocks reading a pipe whose only write end we hold,
/// and when the kernel closes it, sends SIGTERM, then SIGKILL after 10 s, if the process is
/// still that sidecar. `$0` name, `$1` pid, `$2` config path (found in the sidecar's cmdline).
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

pub(super) struct Sidecar {
    node: &'static str,
    child: Child,
    /// Holds the watcher's pipe in its stdin; `None` once dismissed.
    watcher: Option<Child>,
    log_path: PathBuf,
}

impl Sidecar {
    /// Starts `walship run --config config_path`, stderr appended to `log_path`, in its own
    /// process group so a terminal's Ctrl-C reaches only the demo, which stops it in order.
    pub(super) fn spawn(node: &'static str, config_path: &Path, log_path: &Path) -> Result<Sidecar, DemoError> {
        let spawn_err = |source| DemoError::Spawn { node, source };
        let exe = std::env::current_exe().map_err(spawn_err)?;
        let log = OpenOptions::new().create(true).append(true).open(log_path).map_err(|source| DemoError::Io {
            action: "open",
            path: log_path.into(),
            source,
        })?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let mut sidecar = Sidecar { node, child, watcher: None, log_path: log_path.into() };
        sidecar.watcher = Some(spawn_watcher(sidecar.child.id(), config_path).map_err(spawn_err)?);
        Ok(sidecar)
    }

    /// `SidecarDied` once the process has exited.
    pub(super) fn check(&mut self) -> Result<(), DemoError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                Err(DemoError::SidecarDied { node: self.node, status, log: self.log_path.clone(), tail: self.tail() })
            }
            Err(e) => Err(DemoError::Io { action: "wait for sidecar", path: self.log_path.clone(), source: e }),
        }
    }

    /// SIGTERM, wait, SIGKILL. `true` when it exited with success by itself; otherwise says
    /// what happened, with the end of its log. Also reports ERROR lines of its log.
    pub(super) async fn stop(mut self) -> bool {
        let clean = match self.terminate().await {
            Ok(status) if status.success() => true,
            Ok(status) => {
                eprintln!(
                    "walship demo: sidecar {} exited with {status}; the end of its log:\n{}",
                    self.node,
                    self.tail()
                );
                false
            }
            Err(e) => {
                eprintln!("walship demo: sidecar {}: {e}", self.node);
                false
            }
        };
        self.report_errors();
        clean
    }

    async fn terminate(&mut self) -> Result<std::process::ExitStatus, String> {
        if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        let sent = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while sent.as_ref().is_ok_and(|status| status.success()) && Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.child.kill().map_err(|e| e.to_string())?;
        let _ = self.child.wait();
        Err(format!("did not stop within {} s of SIGTERM and was killed", STOP_TIMEOUT.as_secs()))
    }

    /// Prints the first ERROR lines of its log, if any.
    fn report_errors(&self) {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let errors: Vec<&str> = text.lines().filter(|line| line.contains(" ERROR ")).collect();
        if !errors.is_empty() {
            let first = errors.iter().take(ERROR_LINES).copied().collect::<Vec<_>>().join("\n");
            eprintln!("walship demo: sidecar {} logged {} errors, the first:\n{first}", self.node, errors.len());
        }
    }

    fn tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

impl Drop for Sidecar {
    /// Kills a sidecar still running (the normal path stopped it already), then dismisses the
    /// watcher.
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
        .arg("walship-demo-watcher")
        .arg(pid.to_string())
        .arg(config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// The last lines of a log file, or a note that it could not be read.
pub(super) fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}
