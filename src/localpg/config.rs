//! The server configuration of an instance, and quoting for SQL and conninfo strings.
//!
//! The template's `postgresql.conf` (as initdb wrote it) ends with `include 'walship.conf'`;
//! each start rewrites `walship.conf` and `pg_hba.conf`. These are files of a throw-away
//! server, rewritten before every start, so they are written in place without the
//! write-temp-fsync-rename of walship's state files.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use super::error::{io_err, LocalPgError};
use super::os_user::ServerUser;
use super::{Auth, Options};

/// The per-instance settings file inside the data folder.
pub(crate) const INSTANCE_CONF: &str = "walship.conf";

/// Appends the include to the fresh template's `postgresql.conf` and creates the file.
pub(crate) fn prepare_template(data_dir: &Path, user: &ServerUser) -> Result<(), LocalPgError> {
    let main_conf = data_dir.join("postgresql.conf");
    let mut file = OpenOptions::new().append(true).open(&main_conf).map_err(io_err("open", &main_conf))?;
    writeln!(file, "\n# per-instance settings of walship localpg\ninclude '{INSTANCE_CONF}'")
        .map_err(io_err("append to", &main_conf))?;
    write_owned(&data_dir.join(INSTANCE_CONF), "", user)
}

/// Rejects options the server would refuse, or that would lock every client out.
pub(crate) fn validate(opts: &Options) -> Result<(), LocalPgError> {
    let invalid = |msg: String| Err(LocalPgError::InvalidOptions(msg));
    match (&opts.password, opts.auth) {
        (Some(pw), _) if pw.is_empty() => return invalid("the password is empty".into()),
        (None, Auth::Md5 | Auth::Scram) => {
            return invalid(format!("auth {} needs a password: set Options::password", opts.auth.hba_method()))
        }
        _ => {}
    }
    for (name, value) in &opts.settings {
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !name_ok {
            return invalid(format!("setting name {name:?} is not a PostgreSQL setting name"));
        }
        if value.contains(['\n', '\r', '\0']) {
            return invalid(format!("setting {name} has a line break or NUL in its value"));
        }
    }
    Ok(())
}

/// Writes `walship.conf` and `pg_hba.conf` for a start on `port`.
pub(crate) fn write(
    data_dir: &Path,
    port: u16,
    socket_dir: &Path,
    opts: &Options,
    user: &ServerUser,
) -> Result<(), LocalPgError> {
    let conf = server_settings(port, socket_dir, opts);
    write_owned(&data_dir.join(INSTANCE_CONF), &conf, user)?;
    let method = opts.auth.hba_method();
    let hba = format!(
        "# written by walship localpg\n\
         local all         all                trust\n\
         host  all         all  127.0.0.1/32  {method}\n\
         host  replication all  127.0.0.1/32  {method}\n"
    );
    write_owned(&data_dir.join("pg_hba.conf"), &hba, user)
}

fn server_settings(port: u16, socket_dir: &Path, opts: &Options) -> String {
    let encryption = match opts.auth {
        Auth::Md5 => "md5",
        Auth::Trust | Auth::Scram => "scram-sha-256",
    };
    let socket_dir = socket_dir.to_string_lossy();
    let ours = [
        ("listen_addresses", "127.0.0.1"),
        ("port", &port.to_string()),
        ("unix_socket_directories", &socket_dir),
        ("wal_level", "logical"),
        ("max_wal_senders", "20"),
        ("max_replication_slots", "20"),
        ("fsync", "on"),
        ("shared_buffers", "128MB"),
        ("max_connections", "100"),
        ("logging_collector", "off"),
        ("password_encryption", encryption),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    let mut conf = String::from("# written by walship localpg at each start\n");
    for (name, value) in ours.iter().chain(&opts.settings) {
        // Every value may be quoted; a quote inside is doubled.
        let _ = writeln!(conf, "{name} = '{}'", value.replace('\'', "''"));
    }
    conf
}

fn write_owned(path: &Path, contents: &str, user: &ServerUser) -> Result<(), LocalPgError> {
    fs::write(path, contents).map_err(io_err("write", path))?;
    user.own(path)
}

/// A SQL string literal: `'it''s'`. Fine with `standard_conforming_strings = on` (default).
pub(crate) fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A SQL identifier: `"my ""db"""`.
pub(crate) fn sql_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A libpq conninfo value, quoted when it needs to be.
pub(crate) fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    match plain {
        true => value.to_owned(),
        false => format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(conninfo_value("abc"), "abc");
        assert_eq!(conninfo_value("a b'\\"), "'a b\\'\\\\'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn settings_are_validated() {
        let bad_name = Options { settings: vec![("work_mem = 1\nfsync".into(), "off".into())], ..Options::default() };
        assert!(validate(&bad_name).is_err());
        let md5_without_password = Options { auth: Auth::Md5, ..Options::default() };
        let err = validate(&md5_without_password).unwrap_err().to_string();
        assert!(err.contains("set Options::password"), "{err}");
        let fine = Options { settings: vec![("work_mem".into(), "7MB".into())], ..Options::default() };
        assert!(validate(&fine).is_ok());
    }

    #[test]
    fn user_settings_come_last() {
        let opts = Options { settings: vec![("fsync".into(), "off".into())], ..Options::default() };
        let conf = server_settings(5433, Path::new("/tmp/x"), &opts);
        assert!(conf.contains("port = '5433'\n"));
        assert!(conf.ends_with("fsync = 'off'\n"));
    }
}
