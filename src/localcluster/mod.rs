//! A cluster on this machine: throw-away PostgreSQL instances ([`crate::localpg`]) with a
//! `walship run` sidecar beside each, as child processes. One harness for `walship demo`, the
//! catch-up bench and the integration tests; what differs between them is an option:
//!
//! - [`SidecarConfig`]: one sidecar's configuration (node, cluster, role, PostgreSQL, ports,
//!   token file, peers, extra TOML), written as the TOML `walship run --config` reads.
//! - [`Launch`]: how sidecars start: which executable (the tests' and bench's
//!   `CARGO_BIN_EXE_walship`, the demo's own), extra environment, an own process group (the
//!   demo: a terminal's Ctrl-C reaches only it), a watcher that stops the sidecar if the caller
//!   dies without stopping it.
//! - [`Sidecar`]: a configuration and its files ([`SidecarFiles`]: where its data, log and
//!   configuration go), started, killed (as a crash) and stopped (SIGTERM, then SIGKILL).
//! - [`ErrorCheck`]: which ERROR lines its log may hold; tests fail on any other.
//! - [`client::Writer`]: an application inserting rows into whichever node takes them, for
//!   failover tests and benches; [`mesh`]: the sidecars of a cluster that know each other.
//!
//! Readiness is the caller's (a leader's slot, a follower's first apply); the leader's slot
//! name is [`leader_slot`]. Everything here blocks: from async code call it inside
//! `spawn_blocking`.

pub mod client;
mod config;
mod process;
pub mod proxy;
mod sidecar;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use crate::localpg::{Instance, LocalPgError, Options, TMPDIR_ENV};

pub use config::{Peer, SidecarConfig};
pub use process::{log_tail, ErrorCheck, Launch, SidecarProcess, ERROR_MARK};
pub use sidecar::{Sidecar, SidecarFiles};

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("could not {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("could not start sidecar {node}: {source}")]
    Spawn { node: String, source: io::Error },
    #[error("sidecar {node} did not stop within {} s of SIGTERM and was killed", timeout.as_secs())]
    StopTimeout { node: String, timeout: Duration },
}

/// The slot a leader sidecar creates by default: `walship_<node>`.
pub fn leader_slot(node: &str) -> String {
    format!("walship_{node}")
}

/// Where local clusters live: `WALSHIP_PG_TMPDIR`, else the system temp folder (as localpg).
pub fn temp_root() -> PathBuf {
    std::env::var_os(TMPDIR_ENV).filter(|dir| !dir.is_empty()).map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A new folder under [`temp_root`], open to the `postgres` user (which runs the servers when
/// we are root; tempfile makes it 0700). Removed on drop unless `keep`.
pub fn create_folder(prefix: &str, keep: bool) -> Result<tempfile::TempDir, LocalClusterError> {
    let root = temp_root();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir_in(&root)
        .map_err(|source| LocalClusterError::Io { action: "create a folder in", path: root.clone(), source })?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).map_err(|source| LocalClusterError::Io {
        action: "open up",
        path: dir.path().into(),
        source,
    })?;
    Ok(dir)
}

/// Starts one instance per entry side by side (each takes about a second), in the given
/// folder or in a temporary one. Results in the same order.
pub fn start_instances(specs: Vec<(Option<PathBuf>, Options)>) -> Vec<Result<Instance, LocalPgError>> {
    std::thread::scope(|scope| {
        let starts: Vec<_> = specs
            .into_iter()
            .map(|(dir, options)| {
                scope.spawn(move || match dir {
                    Some(dir) => Instance::start_in(&dir, options),
                    None => Instance::start(options),
                })
            })
            .collect();
        starts.into_iter().map(|start| start.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// A port free on loopback now; another process may take it before the sidecar binds it,
/// which the sidecar then reports.
pub fn free_port() -> Result<u16, LocalClusterError> {
    crate::localpg::free_port().map_err(|source| LocalClusterError::Io {
        action: "find a free port on",
        path: "127.0.0.1".into(),
        source,
    })
}

/// 32 random hex digits: a shared token for a cluster's sidecars.
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `token` (and a newline) to `path`, readable by its owner only.
pub fn write_token(path: &Path, token: &str) -> Result<(), LocalClusterError> {
    write_file(path, &format!("{token}\n"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| LocalClusterError::Io {
        action: "restrict",
        path: path.into(),
        source,
    })
}

/// Writes `text` to `path`, creating its folder.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| LocalClusterError::Io {
            action: "create",
            path: parent.into(),
            source,
        })?;
    }
    fs::write(path, text).map_err(|source| LocalClusterError::Io { action: "write", path: path.into(), source })
}

/// Sidecars for `pgs`, named `names`, that all know each other: the first leads, the others
/// follow. Each gets its folder `dir/<name>` with `token` in its token file; not started.
pub fn mesh(
    dir: &Path,
    pgs: &[&Instance],
    names: &[&str],
    cluster: &str,
    token: &str,
    launch: &Launch,
) -> Result<Vec<Sidecar>, LocalClusterError> {
    let ports =
        (0..names.len()).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<Vec<_>, LocalClusterError>>()?;
    let mut sidecars = Vec::with_capacity(names.len());
    for (i, (name, pg)) in names.iter().zip(pgs).enumerate() {
        let folder = dir.join(name);
        fs::create_dir_all(&folder).map_err(|source| LocalClusterError::Io {
            action: "create",
            path: folder.clone(),
            source,
        })?;
        let token_file = folder.join("token");
        write_token(&token_file, token)?;
        let peers = (0..names.len())
            .filter(|&j| j != i)
            .map(|j| Peer { node: names[j].to_owned(), relay_port: ports[j].0, admin_port: ports[j].1 })
            .collect();
        let config = SidecarConfig {
            node: (*name).to_owned(),
            cluster: cluster.to_owned(),
            role: if i == 0 { crate::config::Role::Leader } else { crate::config::Role::Follower },
            data_dir: PathBuf::new(),
            postgres: pg.conninfo("postgres"),
            relay_port: ports[i].0,
            admin_port: ports[i].1,
            token_file,
            peers,
            extra: String::new(),
        };
        sidecars.push(Sidecar::create(&folder, SidecarFiles::default(), config, launch)?);
    }
    Ok(sidecars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (first, second) = (new_token(), new_token());
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_ne!(first, second);
    }
}
