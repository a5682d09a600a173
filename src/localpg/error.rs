//! Errors of the local PostgreSQL launcher; each says what to do about it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL binaries not found (looked in {looked_in}): install PostgreSQL \
         (apt-get install postgresql) or set WALSHIP_PG_BINDIR"
    )]
    BinariesNotFound { looked_in: String },

    #[error(
        "WALSHIP_PG_BINDIR is {path:?}, which holds no initdb: point it at PostgreSQL's bin \
         folder (see `pg_config --bindir`) or unset it"
    )]
    BadBindirEnv { path: PathBuf },

    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as: create it \
         (apt-get install postgresql does) or run as a non-root user"
    )]
    NoPostgresUser,

    #[error("invalid localpg options: {0}")]
    InvalidOptions(String),

    #[error("{path:?} already holds a data folder: remove it or start in another folder")]
    DataDirExists { path: PathBuf },

    #[error(
        "unix socket path {path:?} is longer than 107 bytes: start the instance in a folder \
         with a shorter path"
    )]
    SocketPathTooLong { path: PathBuf },

    #[error(
        "cached initdb template {path:?} is not owned by uid {expected_uid}: remove it, it is \
         rebuilt on the next start"
    )]
    TemplateNotOurs { path: PathBuf, expected_uid: u32 },

    #[error("could not {action} {path:?}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },

    #[error("could not run {program}: {source}{hint}")]
    Spawn {
        program: String,
        source: io::Error,
        /// Empty, or what to check (e.g. folder permissions for the `postgres` user).
        hint: String,
    },

    #[error("{program} failed ({status}): {output}")]
    CommandFailed { program: String, status: ExitStatus, output: String },

    #[error(
        "port {port} on 127.0.0.1 is already in use: stop what listens there, or leave \
         Options::port empty to get a free one"
    )]
    PortInUse { port: u16 },

    #[error("PostgreSQL exited during startup ({status}); end of {log:?}:\n{tail}")]
    StartFailed { status: ExitStatus, log: PathBuf, tail: String },

    #[error("PostgreSQL did not accept connections within {secs} s; end of {log:?}:\n{tail}")]
    StartTimeout { secs: u64, log: PathBuf, tail: String },

    #[error(
        "PostgreSQL did not finish a {mode} shutdown within {secs} s and was stopped harder; \
         see {log:?}"
    )]
    StopTimeout { mode: &'static str, secs: u64, log: PathBuf },

    #[error("psql on database {dbname:?} failed ({status}): {stderr}")]
    Psql { dbname: String, status: ExitStatus, stderr: String },
}

/// `map_err` helper for file system calls: `.map_err(io_err("create", &path))`.
pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalPgError {
    let path = path.to_path_buf();
    move |source| LocalPgError::Io { action, path, source }
}

/// The program's file name, for messages.
pub(crate) fn program_name(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is `CommandFailed`.
/// `as_user` is `ServerUser::describe()` or empty, for messages.
pub(crate) fn run_checked(cmd: &mut Command, as_user: &str) -> Result<Output, LocalPgError> {
    let program = program_name(cmd);
    let output = cmd.output().map_err(|source| spawn_error(cmd, as_user, source))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(LocalPgError::CommandFailed {
        program,
        status: output.status,
        output: format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout))
            .trim()
            .to_owned(),
    })
}

/// A `Spawn` error; when running as another user was refused, says what to check.
pub(crate) fn spawn_error(cmd: &Command, as_user: &str, source: io::Error) -> LocalPgError {
    let in_dir = cmd.get_current_dir().map(|dir| format!(" in {}", dir.display())).unwrap_or_default();
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied if !as_user.is_empty() => {
            "; that user must be able to traverse every folder down to it (chmod o+x)".to_owned()
        }
        _ => String::new(),
    };
    LocalPgError::Spawn { program: format!("{}{as_user}{in_dir}", program_name(cmd)), source, hint }
}
