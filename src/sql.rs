//! Ordinary SQL connections (tokio-postgres) to the local PostgreSQL.

use std::time::Duration;

use tokio_postgres::NoTls;
use tracing::debug;

/// An SQL identifier in double quotes, inner quotes doubled, as PostgreSQL's `quote_ident`
/// does for any name (it also quotes names that would not need it).
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// An SQL string literal: single quotes, inner ones doubled (with `standard_conforming_strings`,
/// PostgreSQL's default since 9.1, backslashes are ordinary characters).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A PostgreSQL error as an operator needs it: the server's message, SQLSTATE and detail
/// (tokio-postgres's own text says only "db error" for those), else the client's error.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => error.to_string(),
    }
}

/// `schema.name`, each part quoted.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The `application_name` of walship's sessions unless the configuration names one: fencing
/// ends client sessions that write, never these.
pub const APPLICATION_NAME: &str = "walship";

/// An ordinary SQL connection, its driver running on its own task. Its transactions are
/// read-write even on a fenced database, and its commits wait for no synchronous standby.
pub async fn connect(pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut pg = pg.clone();
    pg.connect_timeout(Duration::from_secs(5));
    if pg.get_application_name().is_none() {
        pg.application_name(APPLICATION_NAME);
    }
    // A fenced database defaults to read-only transactions; walship's own sessions (replay,
    // heartbeats, the source's set-up) must write through it. And they never wait for a
    // synchronous standby: on a node that led in a synchronous mode, that standby was its own
    // sidecar's replication connection.
    const OWN: &str = "-c default_transaction_read_only=off -c synchronous_commit=local";
    let options = match pg.get_options() {
        Some(options) => format!("{options} {OWN}"),
        None => OWN.to_owned(),
    };
    pg.options(&options);
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "sql connection ended");
        }
    });
    Ok(client)
}
