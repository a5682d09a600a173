//! `walship demo`: a three-node cluster on this machine, a write load on its leader, live lag.
//!
//! Everything lives in one temporary folder (under `$WALSHIP_PG_TMPDIR`, else the system temp
//! folder), removed on exit unless `--keep`:
//!
//! ```text
//! <folder>/token                  the shared secret of the three sidecars
//! <folder>/<node>/pg/             node's PostgreSQL (localpg: data/, socket/, server.log)
//! <folder>/<node>/walship.toml    node's sidecar configuration
//! <folder>/<node>/walship-data/   node's sidecar data_dir (durable log, state)
//! <folder>/<node>/walship.log     node's sidecar log (its stderr)
//! ```
//!
//! Node `a` leads, `b` and `c` follow. Followers do not seed themselves from a snapshot yet, so
//! the sample schema is created on all three databases before any sidecar starts, and the load
//! starts only once the leader's slot exists (rows written before it would never reach them).
//!
//! The sidecars are child processes (`walship run --config`) in their own process group, so
//! a Ctrl-C in the terminal reaches only us and we stop them in order: load, sidecars
//! (SIGTERM, then SIGKILL), PostgreSQL. If we are killed outright, each sidecar's watcher
//! and each instance's localpg guardian stop what we started.

mod cluster;
mod load;
mod monitor;
mod sidecar;

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::localcluster::LocalClusterError;
use crate::localpg::{find_bindir, LocalPgError};
use cluster::Cluster;
use load::Load;
use monitor::Monitor;

/// What `walship demo` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Keep the folder (databases, logs, configurations) on exit.
    pub keep: bool,
    /// Row changes per second the load writes on the leader; 0: no load.
    pub rows_per_second: u32,
    /// Stop on its own after this much load, as if Ctrl-C had been pressed.
    pub duration: Option<Duration>,
}

/// The load's default rate, in row changes per second.
pub const DEFAULT_ROWS_PER_SECOND: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Binaries(LocalPgError),
    #[error("PostgreSQL {node}: {source}")]
    Postgres { node: &'static str, source: LocalPgError },
    #[error("could not {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("SQL on {node}: {source}")]
    Sql { node: &'static str, source: tokio_postgres::Error },
    #[error("the write load on the leader failed: {0}")]
    Load(tokio_postgres::Error),
    #[error("could not start sidecar {node}: {source}")]
    Spawn { node: &'static str, source: io::Error },
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    #[error("sidecar {node} exited unexpectedly ({status}); the end of its log {log}:\n{tail}")]
    SidecarDied { node: &'static str, status: ExitStatus, log: PathBuf, tail: String },
    #[error("leader sidecar {node} did not start streaming within {secs} s; the end of its log {log}:\n{tail}")]
    LeaderTimeout { node: &'static str, secs: u64, log: PathBuf, tail: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("a demo task failed: {0}")]
    Task(String),
}

impl DemoError {
    /// 2: the machine lacks what the demo needs (PostgreSQL); 1: the demo failed.
    fn exit_code(&self) -> u8 {
        match self {
            DemoError::Binaries(_) => 2,
            DemoError::Postgres { .. }
            | DemoError::Io { .. }
            | DemoError::Sql { .. }
            | DemoError::Load(_)
            | DemoError::Spawn { .. }
            | DemoError::Cluster(_)
            | DemoError::SidecarDied { .. }
            | DemoError::LeaderTimeout { .. }
            | DemoError::Runtime(_)
            | DemoError::Task(_) => 1,
        }
    }
}

/// Runs the demo to its end; prints its own messages (stdout) and errors (stderr).
pub fn run(options: Options) -> ExitCode {
    let result = find_bindir().map_err(DemoError::Binaries).and_then(|_| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(DemoError::Runtime)?;
        runtime.block_on(run_in_folder(options))
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("walship demo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Creates the folder, runs the cluster, and always tears it down. `Ok(false)`: the demo
/// failed after the folder was made (already reported).
async fn run_in_folder(options: Options) -> Result<bool, DemoError> {
    let shutdown = CancellationToken::new();
    listen_for_signals(shutdown.clone())?;
    let folder = cluster::create_folder()?;
    let then = if options.keep { "kept on exit" } else { "removed on exit; --keep keeps it" };
    say(&format!("walship demo in {} ({then})", folder.display()));
    let mut cluster = Cluster::new(folder.clone());
    let mut load = None;
    let result = run_cluster(&mut cluster, &mut load, &options, &shutdown).await;
    if let Err(e) = &result {
        eprintln!("walship demo: {e}");
    }
    say("stopping: load, sidecars, PostgreSQL");
    if let Some(load) = load {
        say(&load.stop().await);
    }
    let stopped_cleanly = cluster.shut_down().await;
    drop(cluster);
    cluster::finish_folder(&folder, options.keep);
    Ok(result.is_ok() && stopped_cleanly)
}

/// Turns the first SIGINT or SIGTERM into `shutdown`. The handlers are installed before
/// this returns, so a signal never kills us half-way through a start.
fn listen_for_signals(shutdown: CancellationToken) -> Result<(), DemoError> {
    let io_err = |source| DemoError::Io { action: "listen for", path: PathBuf::from("SIGINT/SIGTERM"), source };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_err)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Starts the nodes one stage at a time, then the load (into `load`, which the caller stops),
/// then shows lag until a signal, `--duration` or a failure. Returns early (`Ok`) when a
/// signal comes during the start.
async fn run_cluster(
    cluster: &mut Cluster,
    load: &mut Option<Load>,
    options: &Options,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    cluster.start_postgres().await?;
    cluster.create_schema().await?;
    cluster.write_configs()?;
    if shutdown.is_cancelled() || !cluster.start_leader(shutdown).await? {
        return Ok(());
    }
    cluster.start_followers()?;
    cluster.print_nodes();
    let leader = cluster.leader_conninfo();
    let load = load.insert(Load::start(&leader, options.rows_per_second).await?);
    say(&load.describe());
    say("Ctrl-C to stop.");
    let mut monitor = Monitor::new(leader, cluster.follower_conninfos(), load.stats());
    show_lag(cluster, load, &mut monitor, options.duration, shutdown).await
}

/// One monitor line per follower per second, until a stop or a failure.
async fn show_lag(
    cluster: &mut Cluster,
    load: &mut Load,
    monitor: &mut Monitor,
    duration: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    let deadline = duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sleep_until(deadline) => {
                say("--duration reached");
                return Ok(());
            }
            e = load.failed() => return Err(e),
            _ = tick.tick() => {
                cluster.check_sidecars()?;
                monitor.tick().await;
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Prints one line to stdout; a closed stdout (`walship demo | head`) is not an error.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
