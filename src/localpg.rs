//! Throw-away local PostgreSQL instances, for the integration tests and `walship demo`.
//!
//! An [`Instance`] is one postmaster listening on 127.0.0.1 only, with its data folder,
//! unix socket and server log inside one instance folder:
//!
//! ```text
//! <dir>/data/        PGDATA: a copy of a cached initdb template (see `template`)
//! <dir>/data/walship.conf   settings written at each start, included by postgresql.conf
//! <dir>/socket/      unix_socket_directories
//! <dir>/server.log   the server's stderr (logging_collector = off)
//! ```
//!
//! `initdb` runs once per machine, PostgreSQL version and user, into a cached template;
//! each instance copies it. Set `WALSHIP_PG_TMPDIR=/dev/shm` to keep the template and the
//! instance folders on tmpfs: starts take ~0.1 s there instead of 0.6-1 s on this machine's
//! disk (see `template`).
//!
//! Cleanup: dropping an [`Instance`] stops the server (immediate) and removes the folder when
//! the instance owns it. A guardian process (see `guardian`) does the same when this process
//! dies without dropping it (SIGKILL, nextest timeout, panic=abort, Ctrl-C, a `static`).
//!
//! As root, `initdb`, `postgres` and `pg_ctl` refuse to run, so the server-side programs run
//! as the `postgres` OS user, in folders that user owns (see `os_user`).
//!
//! Everything here blocks: from async code call it inside `spawn_blocking`.

mod bindir;
mod config;
mod error;
mod guardian;
mod instance;
mod os_user;
mod postmaster;
pub use postmaster::free_port;
mod template;
#[cfg(test)]
mod tests;

use std::fmt;

pub use bindir::{find_bindir, find_bindir_from, BINDIR_ENV};
pub use error::LocalPgError;
pub use instance::Instance;
pub use template::TMPDIR_ENV;

/// How clients connecting over TCP (127.0.0.1) authenticate. Unix-socket connections are
/// always `trust`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    Trust,
    Md5,
    Scram,
}

impl Auth {
    /// The method name in `pg_hba.conf`.
    fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }
}

/// How [`Instance::stop`] shuts the server down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, write a shutdown checkpoint.
    Fast,
    /// Quit at once, as after a crash: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn pg_ctl_name(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What to start. `Default`: trust, no password, no extra settings, a free port.
#[derive(Clone, Default)]
pub struct Options {
    pub auth: Auth,
    /// Set on the `postgres` superuser after start; required by `Md5` and `Scram`.
    pub password: Option<String>,
    /// Extra `postgresql.conf` settings, applied after walship's own (so they win).
    pub settings: Vec<(String, String)>,
    /// `None`: a free port is picked, and another one if it is taken before the server binds it.
    pub port: Option<u16>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("auth", &self.auth)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("settings", &self.settings)
            .field("port", &self.port)
            .finish()
    }
}
