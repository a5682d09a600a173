//! One sidecar of a local cluster: its configuration, its files, its process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::{write_file, ErrorCheck, Launch, LocalClusterError, Peer, SidecarConfig, SidecarProcess};

/// Where a sidecar's files go inside its folder.
#[derive(Clone, Copy, Debug)]
pub struct SidecarFiles {
    /// Its `data_dir` (durable log and state).
    pub data_dir: &'static str,
    /// Its stderr.
    pub log: &'static str,
    pub config: &'static str,
}

impl Default for SidecarFiles {
    /// `data/`, `sidecar.log`, `walship.toml`.
    fn default() -> SidecarFiles {
        SidecarFiles { data_dir: "data", log: "sidecar.log", config: "walship.toml" }
    }
}

/// A sidecar's configuration, written to its folder, and its process while it runs.
pub struct Sidecar {
    pub config: SidecarConfig,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Which ERROR lines its log may hold (see [`Sidecar::unexpected_errors`]).
    pub errors: ErrorCheck,
    launch: Launch,
    process: Option<SidecarProcess>,
}

impl Sidecar {
    /// A sidecar in `dir`: sets `config.data_dir` from `files` and writes the configuration.
    /// Not started.
    pub fn create(
        dir: &Path,
        files: SidecarFiles,
        mut config: SidecarConfig,
        launch: &Launch,
    ) -> Result<Sidecar, LocalClusterError> {
        fs::create_dir_all(dir).map_err(|source| LocalClusterError::Io {
            action: "create",
            path: dir.into(),
            source,
        })?;
        config.data_dir = dir.join(files.data_dir);
        let sidecar = Sidecar {
            config,
            dir: dir.into(),
            config_path: dir.join(files.config),
            log_path: dir.join(files.log),
            errors: ErrorCheck::default(),
            launch: launch.clone(),
            process: None,
        };
        sidecar.write_config()?;
        Ok(sidecar)
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn admin_port(&self) -> u16 {
        self.config.admin_port
    }

    pub fn relay_port(&self) -> u16 {
        self.config.relay_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn as_peer(&self) -> Peer {
        self.config.as_peer()
    }

    /// Lists `peer` in its `[[peers]]` and rewrites the configuration (read at the next start).
    pub fn add_peer(&mut self, peer: Peer) -> Result<(), LocalClusterError> {
        self.config.peers.push(peer);
        self.write_config()
    }

    /// Writes `config` to the configuration file (read at the next start).
    pub fn write_config(&self) -> Result<(), LocalClusterError> {
        write_file(&self.config_path, &self.config.to_toml())
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Starts the process; `false` when it runs already.
    pub fn start(&mut self) -> Result<bool, LocalClusterError> {
        if self.process.is_some() {
            return Ok(false);
        }
        let process = SidecarProcess::spawn(&self.config.node, &self.config_path, &self.log_path, &self.launch)?;
        self.process = Some(process);
        Ok(true)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(SidecarProcess::pid)
    }

    /// Its exit status once the process has exited by itself; the process is then forgotten.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, LocalClusterError> {
        let Some(process) = self.process.as_mut() else { return Ok(None) };
        let status = process.try_wait()?;
        if status.is_some() {
            self.process = None;
        }
        Ok(status)
    }

    /// SIGKILL, as a crash would. `None` when it was not running.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>, LocalClusterError> {
        self.process.take().map(SidecarProcess::kill).transpose()
    }

    /// SIGTERM and wait up to `timeout`, then SIGKILL (`StopTimeout`). `None` when it was not
    /// running.
    pub fn stop(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, LocalClusterError> {
        self.process.take().map(|process| process.stop(timeout)).transpose()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.config.admin_port)
    }

    /// Its log so far; empty when there is none yet.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        super::log_tail(&self.log_path, lines)
    }

    /// Every ERROR line of its log.
    pub fn error_lines(&self) -> Vec<String> {
        ErrorCheck::NoErrors.unexpected(&self.log_text()).into_iter().map(str::to_owned).collect()
    }

    /// The ERROR lines of its log that `errors` does not allow.
    pub fn unexpected_errors(&self) -> Vec<String> {
        self.errors.unexpected(&self.log_text()).into_iter().map(str::to_owned).collect()
    }
}
