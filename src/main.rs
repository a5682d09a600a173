//! The `walship` command: parse, start, wait, shut down.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "walship", version, about = "Log-shipping replication sidecar for PostgreSQL")]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sidecar.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the cluster as a table, from a sidecar's admin API.
    Status {
        #[arg(long, value_name = "URL")]
        admin: String,
        /// The raw JSON of GET /status.
        #[arg(long)]
        json: bool,
    },
    /// Promote a follower: POST /promote on its admin API.
    Promote {
        #[arg(long, value_name = "URL")]
        admin: String,
        /// Promote even when a reachable peer holds entries this node lacks (they are lost,
        /// and named in the answer), or when too few peers answer.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Hand the leadership to NODE without losing a write: POST /switchover on the leader.
    Switchover {
        #[arg(long, value_name = "URL")]
        admin: String,
        #[arg(long, value_name = "NODE")]
        to: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Make a node read-only and stop it leading: POST /fence.
    Fence {
        #[arg(long, value_name = "URL")]
        admin: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Empty a fenced or divergent node (its database and log; divergence reports stay) so
    /// that its next start seeds it again from the current leader. The sidecar must be
    /// stopped.
    Reseed {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start a local three-node cluster (from this machine's PostgreSQL binaries) in a
    /// temporary folder, put a write load on its leader and show live lag; Ctrl-C stops it.
    Demo {
        /// Keep the folder (databases, sidecar logs and configurations) on exit.
        #[arg(long)]
        keep: bool,
        /// Row changes per second the load writes on the leader (0: no load).
        #[arg(long, value_name = "N", default_value_t = walship::demo::DEFAULT_ROWS_PER_SECOND)]
        rows_per_second: u32,
        /// Stop on its own after SECONDS of load.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
    },
    /// Print the log's committed transactions.
    Inspect {
        data_dir: PathBuf,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// Also heartbeats and logical messages.
        #[arg(long)]
        all: bool,
    },
}

/// The cluster's token, which every admin write must carry.
#[derive(clap::Args)]
struct TokenArg {
    /// The sidecars' token_file.
    #[arg(long, value_name = "FILE", env = "WALSHIP_TOKEN_FILE", default_value = "/etc/walship/token")]
    token_file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own table: only warnings and errors of its own tracing show.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info" };
    init_tracing(cli.log_format, default_filter);
    match cli.command {
        Command::Run { config } => run(config),
        Command::Status { admin, json } => status(&admin, json),
        Command::Promote { admin, force, token } => {
            let path = if force { "/promote?force=true" } else { "/promote" };
            admin_write("promote", &admin, path, &token)
        }
        Command::Switchover { admin, to, token } => {
            admin_write("switchover", &admin, &format!("/switchover?to={to}"), &token)
        }
        Command::Fence { admin, token } => admin_write("fence", &admin, "/fence", &token),
        Command::Reseed { config } => reseed(config),
        Command::Demo { keep, rows_per_second, duration } => {
            let duration = duration.map(std::time::Duration::from_secs);
            walship::demo::run(walship::demo::Options { keep, rows_per_second, duration })
        }
        Command::Inspect { data_dir, json, all } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match walship::inspect::run(&data_dir, json, all, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walship inspect: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A tokio runtime for one command (`multi_thread`: the sidecar's); `None` (said on stderr)
/// when it cannot start.
fn runtime(multi_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| eprintln!("walship: cannot start the runtime: {e}")).ok()
}

/// The configuration file, or `None` (its error said on stderr; exit status 2).
fn load_config(path: &std::path::Path) -> Option<walship::config::Config> {
    walship::config::Config::load(path).map_err(|e| eprintln!("walship: {e}")).ok()
}

/// POSTs `path` with the token and prints the answer; fails unless it is 200.
fn admin_write(what: &str, admin: &str, path: &str, token: &TokenArg) -> ExitCode {
    let token = match std::fs::read_to_string(&token.token_file) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => {
            eprintln!("walship {what}: cannot read the token file {}: {e}", token.token_file.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
    let timeout = walship::admin::control::ANSWER_TIMEOUT + std::time::Duration::from_secs(5);
    let request = walship::admin::client::request_within(admin, "POST", path, Some(&token), timeout);
    match runtime.block_on(request) {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprintln!("walship {what}: {code}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("walship {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(admin: &str, json: bool) -> ExitCode {
    let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
    match runtime.block_on(walship::admin::client::status(admin)) {
        Ok(status) if json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("walship status: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(status) => {
            if !status.peers.is_empty() {
                if let Ok(nodes) = runtime.block_on(walship::admin::client::cluster(admin)) {
                    println!("{}", walship::admin::client::render_cluster(&nodes));
                }
            }
            print!("{}", walship::admin::client::render(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walship status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reseed(config_path: PathBuf) -> ExitCode {
    let Some(config) = load_config(&config_path) else { return ExitCode::from(2) };
    let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
    match runtime.block_on(walship::reseed::reseed(&config)) {
        Ok(done) => {
            println!(
                "node {} emptied (schemas dropped: {}); start its sidecar to seed it from the leader",
                config.node,
                done.schemas_dropped.join(", ")
            );
            for report in done.reports_kept {
                println!("kept divergence report {}", report.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walship reseed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf) -> ExitCode {
    let Some(config) = load_config(&config_path) else { return ExitCode::from(2) };
    let Some(runtime) = runtime(true) else { return ExitCode::FAILURE };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        let (reload_tx, reload) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(reload_on_hangup(config_path, reload_tx));
        match walship::sidecar::run_with_reload(config, reload, shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "sidecar failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// On every SIGHUP, reads the configuration file again and hands a valid one to the sidecar; a
/// broken one is refused, and the sidecar runs on with what it has.
async fn reload_on_hangup(path: PathBuf, reload: tokio::sync::mpsc::UnboundedSender<walship::config::Config>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hangup.recv().await.is_some() {
            match walship::config::Config::load(&path) {
                Ok(config) => {
                    info!(path = %path.display(), "configuration reloaded");
                    if reload.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => error!(error = %e, "configuration reload refused: running on with the previous one"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, reload);
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
    shutdown.cancel();
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_env("WALSHIP_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
