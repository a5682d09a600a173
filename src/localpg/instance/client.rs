//! Talking to an [`Instance`]: conninfo, psql, client programs.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Instance, HOST};
use crate::localpg::config::{conninfo_value, sql_identifier, sql_literal};
use crate::localpg::error::{io_err, spawn_error, LocalPgError};

/// Programs that refuse root or that work on the data folder: run as the server user.
const SERVER_PROGRAMS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "postmaster",
    "pg_resetwal",
    "pg_rewind",
    "pg_upgrade",
    "pg_checksums",
    "pg_controldata",
];

impl Instance {
    /// `host=127.0.0.1 port=N user=postgres dbname=DB`, plus `password=...` when set.
    pub fn conninfo(&self, dbname: &str) -> String {
        let mut info = format!("host={HOST} port={} user=postgres dbname={}", self.port, conninfo_value(dbname));
        if let Some(password) = &self.password {
            info.push_str(" password=");
            info.push_str(&conninfo_value(password));
        }
        info
    }

    /// Runs `sql` (any number of statements, each in its own transaction unless the script
    /// says otherwise) with `psql -X -At -q -v ON_ERROR_STOP=1` over TCP. Returns stdout
    /// without its final newline: rows one per line, columns separated by `|`.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, LocalPgError> {
        run_psql(self.psql_command(dbname), dbname, sql)
    }

    pub fn create_database(&self, name: &str) -> Result<(), LocalPgError> {
        let sql = format!("CREATE DATABASE {}", sql_identifier(name));
        self.psql("postgres", &sql).map(drop)
    }

    fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname]);
        cmd
    }

    /// `bindir/program` with `PGHOST`, `PGPORT`, `PGUSER=postgres`, `PGDATABASE=postgres`,
    /// `PGDATA`, `PGCONNECT_TIMEOUT` and `PGPASSWORD` (removed when there is none) set.
    /// Server-side programs (`pg_ctl`, `pg_resetwal`, `pg_controldata`, ...) also run as the
    /// `postgres` user when we are root, in the instance folder.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGDATA", &self.data_dir)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGHOSTADDR")
            .env_remove("PGSERVICE");
        match &self.password {
            Some(password) => cmd.env("PGPASSWORD", password),
            None => cmd.env_remove("PGPASSWORD"),
        };
        if SERVER_PROGRAMS.contains(&program) {
            self.user.apply(&mut cmd);
            cmd.current_dir(&self.dir);
        }
        cmd
    }

    pub(super) fn set_password(&self, password: &str) -> Result<(), LocalPgError> {
        // Over the unix socket (trust): TCP needs the password we are setting.
        let sql = format!("ALTER ROLE postgres PASSWORD {}", sql_literal(password));
        let mut cmd = self.psql_command("postgres");
        cmd.arg("-h").arg(&self.socket_dir);
        run_psql(cmd, "postgres", &sql).map(drop)
    }
}

fn run_psql(mut cmd: Command, dbname: &str, sql: &str) -> Result<String, LocalPgError> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| spawn_error(&cmd, "", source))?;
    let stdin = child.stdin.take();
    // Feed stdin from another thread: a large script and a large result must not deadlock.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // An early exit of psql closes the pipe; its status tells what went wrong.
                let _ = stdin.write_all(sql.as_bytes());
            }
        });
        child.wait_with_output()
    })
    .map_err(io_err("wait for psql on", Path::new(dbname)))?;
    if !output.status.success() {
        return Err(LocalPgError::Psql {
            dbname: dbname.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if stdout.ends_with('\n') {
        stdout.pop();
    }
    Ok(stdout)
}
