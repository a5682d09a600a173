//! The schema: `pg_dump --schema-only` at the exported snapshot.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_postgres::config::Host;

use super::error::SeedError;
use crate::localpg::find_bindir;

/// Largest schema dump sent (one `SeedSchema` message, which must fit a relay frame).
pub const MAX_SCHEMA_BYTES: usize = 32 << 20;
const _: () = assert!(MAX_SCHEMA_BYTES + 64 < crate::relay::MAX_FRAME_BYTES);
/// Bytes of pg_dump's error output kept for the error message.
const STDERR_KEEP_BYTES: usize = 8 << 10;
/// Bytes read from a pipe at a time.
const READ_BYTES: usize = 64 << 10;

/// What is left out: walship's own schema, and what belongs to the leader's installation
/// rather than to the data (tablespaces, label providers, replication set-up). Owners and
/// privileges stay: the roles they name come first ([`super::roles`]).
const DUMP_ARGS: &[&str] = &[
    "--schema-only",
    "--exclude-schema=walship",
    "--no-publications",
    "--no-subscriptions",
    "--no-tablespaces",
    "--no-security-labels",
];

/// The schema as SQL for a plain connection, read at the snapshot `snapshot` (which must stay
/// importable until this returns).
pub(super) async fn schema_sql(pg: &tokio_postgres::Config, snapshot: &str) -> Result<String, SeedError> {
    let bindir = tokio::task::spawn_blocking(find_bindir)
        .await
        .map_err(|e| SeedError::DumpSpawn { program: "pg_dump".into(), source: std::io::Error::other(e) })?
        .map_err(SeedError::Bindir)?;
    let program = bindir.join("pg_dump");
    let mut cmd = Command::new(&program);
    cmd.args(DUMP_ARGS).arg(format!("--snapshot={snapshot}"));
    connection_env(&mut cmd, pg);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let spawn_error = |source| SeedError::DumpSpawn { program: program.clone(), source };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (out, err) = tokio::join!(read_capped(stdout, MAX_SCHEMA_BYTES), read_capped(stderr, STDERR_KEEP_BYTES));
    let status = child.wait().await.map_err(spawn_error)?;
    let ((out, out_cut), (err, _)) = (out.map_err(spawn_error)?, err.map_err(spawn_error)?);
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err).trim().to_owned();
        return Err(SeedError::DumpFailed { status, stderr });
    }
    if out_cut {
        return Err(SeedError::SchemaTooLarge { max: MAX_SCHEMA_BYTES });
    }
    let sql = String::from_utf8(out).map_err(|_| SeedError::SchemaNotUtf8)?;
    Ok(strip_own_event_triggers(&strip_restrict(&sql)))
}

/// Connection settings for libpq, from the same configuration tokio-postgres uses. The
/// password goes through the environment, never the command line.
fn connection_env(cmd: &mut Command, pg: &tokio_postgres::Config) {
    for var in ["PGSERVICE", "PGSERVICEFILE", "PGHOSTADDR", "PGOPTIONS", "PGPASSWORD", "PGDATABASE"] {
        cmd.env_remove(var);
    }
    match pg.get_hosts().first() {
        Some(Host::Tcp(name)) => cmd.env("PGHOST", name),
        Some(Host::Unix(dir)) => cmd.env("PGHOST", dir),
        None => cmd.env("PGHOST", "127.0.0.1"),
    };
    cmd.env("PGPORT", pg.get_ports().first().copied().unwrap_or(5432).to_string());
    cmd.env("PGAPPNAME", "walship-seed").env("PGCONNECT_TIMEOUT", "10");
    if let Some(user) = pg.get_user() {
        cmd.env("PGUSER", user);
    }
    if let Some(dbname) = pg.get_dbname() {
        cmd.env("PGDATABASE", dbname);
    }
    if let Some(password) = pg.get_password() {
        cmd.env("PGPASSWORD", OsStr::from_bytes(password));
    }
}

/// Reads `pipe` to its end (so the writer never blocks on it), keeping the first `keep`
/// bytes; says whether more came.
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, keep: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut cut = false;
    let Some(mut pipe) = pipe else { return Ok((out, cut)) };
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = pipe.read(&mut buf).await?;
        let Some(read) = buf.get(..n).filter(|r| !r.is_empty()) else { return Ok((out, cut)) };
        let room = keep.saturating_sub(out.len());
        cut |= read.len() > room;
        out.extend_from_slice(read.get(..room.min(read.len())).unwrap_or_default());
    }
}

/// Drops the `\restrict KEY` and `\unrestrict KEY` lines that pg_dump prints from PostgreSQL
/// 15.14 and 16.10 on: psql meta-commands, which a plain connection would refuse. Only lines
/// with pg_dump's own (random) key go; every other byte is kept, line endings included.
fn strip_restrict(dump: &str) -> String {
    let key = dump.lines().find_map(|line| line.strip_prefix("\\restrict ")).map(str::trim);
    let Some(key) = key else { return dump.to_owned() };
    let (restrict, unrestrict) = (format!("\\restrict {key}"), format!("\\unrestrict {key}"));
    dump.split_inclusive('\n')
        .filter(|line| {
            let line = line.trim_end_matches(['\n', '\r']);
            line != restrict && line != unrestrict
        })
        .collect()
}

/// Drops the event triggers whose function is in walship's own schema (the leader's replica
/// identity trigger, a fence's), with the statements that name them (`ALTER EVENT TRIGGER
/// ... OWNER TO`): pg_dump prints event triggers whatever schemas it leaves out, and the
/// follower has no such function to run them with.
fn strip_own_event_triggers(dump: &str) -> String {
    let mut kept = String::with_capacity(dump.len());
    let mut dropped: Vec<String> = Vec::new();
    let mut statement = String::new();
    for line in dump.split_inclusive('\n') {
        let names_dropped = || {
            dropped.iter().any(|name| {
                ["ALTER EVENT TRIGGER ", "COMMENT ON EVENT TRIGGER "]
                    .iter()
                    .any(|verb| line.strip_prefix(verb).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
            })
        };
        if statement.is_empty() && !line.starts_with("CREATE EVENT TRIGGER ") && !names_dropped() {
            kept.push_str(line);
            continue;
        }
        statement.push_str(line);
        if line.trim_end().ends_with(';') {
            let own = ["EXECUTE FUNCTION walship.", "EXECUTE PROCEDURE walship."].iter().any(|f| statement.contains(f));
            let create = statement.strip_prefix("CREATE EVENT TRIGGER ");
            match create.and_then(|rest| rest.split_whitespace().next()) {
                Some(name) if own => dropped.push(name.to_owned()),
                Some(_) => kept.push_str(&statement),
                None => {} // a statement naming a dropped trigger
            }
            statement.clear();
        }
    }
    kept.push_str(&statement);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walship_event_triggers_go_and_others_stay() {
        let dump = "SET x = 1;\n\
                    CREATE EVENT TRIGGER walship_replica_identity ON ddl_command_end\n\
                    \x20        WHEN TAG IN ('CREATE TABLE')\n\
                    \x20  EXECUTE FUNCTION walship.give_replica_identity();\n\
                    CREATE EVENT TRIGGER audit ON ddl_command_end\n\
                    \x20  EXECUTE FUNCTION public.audit();\n\
                    ALTER EVENT TRIGGER walship_replica_identity OWNER TO postgres;\n\
                    ALTER EVENT TRIGGER audit OWNER TO postgres;\n\
                    CREATE TABLE t (id int);\n";
        let expected = "SET x = 1;\n\
                        CREATE EVENT TRIGGER audit ON ddl_command_end\n\
                        \x20  EXECUTE FUNCTION public.audit();\n\
                        ALTER EVENT TRIGGER audit OWNER TO postgres;\n\
                        CREATE TABLE t (id int);\n";
        assert_eq!(strip_own_event_triggers(dump), expected);
    }

    #[test]
    fn restrict_lines_go_and_nothing_else() {
        let dump = "--\n\\restrict abc123\n\nSET x = 1;\r\nCREATE FUNCTION f() AS $$\n\\restrict other\n$$;\n\
                    \\unrestrict abc123\n";
        let expected = "--\n\nSET x = 1;\r\nCREATE FUNCTION f() AS $$\n\\restrict other\n$$;\n";
        assert_eq!(strip_restrict(dump), expected);
        assert_eq!(strip_restrict("SELECT 1;\n"), "SELECT 1;\n");
    }

    #[tokio::test]
    async fn pipes_are_read_to_the_end_and_capped() {
        let data = vec![7u8; 3 * READ_BYTES + 5];
        let (kept, cut) = read_capped(Some(&data[..]), 100).await.unwrap();
        assert_eq!((kept.len(), cut), (100, true));
        let (kept, cut) = read_capped(Some(&data[..]), data.len()).await.unwrap();
        assert_eq!((kept.len(), cut), (data.len(), false));
    }
}
