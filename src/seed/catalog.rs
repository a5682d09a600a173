//! Catalog queries of both sides: what the leader exports, whether the follower is empty.
//!
//! On the leader these run inside the snapshot's transaction, and read the catalogs through
//! SQL so that they see the catalogs as of the snapshot (a table created later is not listed).

use tokio_postgres::Client;

use super::error::{pg, SeedError};
use crate::sql::{quote_ident, quote_qualified};

/// One table to copy, as the leader reads it.
pub(super) struct TableSpec {
    pub schema: String,
    pub name: String,
    /// The columns sent, in table order: not generated, in the publication's column list.
    pub columns: Vec<String>,
    /// `COPY ... TO STDOUT` of exactly the published rows and columns.
    pub copy_out: String,
}

/// The publication's tables outside walship's schema, with the column lists and row filters
/// of PostgreSQL 15+ (read through `to_jsonb` so that older servers, without those columns,
/// answer the same query).
const PUBLISHED_TABLES: &str = "\
    SELECT p.schemaname::text, p.tablename::text, c.relkind::text, to_jsonb(p) ->> 'rowfilter',
           ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                    AND (to_jsonb(p) -> 'attnames' IS NULL OR to_jsonb(p) -> 'attnames' ? a.attname::text)
                  ORDER BY a.attnum)
      FROM pg_catalog.pg_publication_tables p
      JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
     WHERE p.pubname = $1 AND p.schemaname <> 'walship'
     ORDER BY 1, 2";

/// Every sequence outside walship's schema, as a `setval` statement with its current value.
const SEQUENCES: &str = "\
    SELECT format('%I.%I', schemaname, sequencename) FROM pg_catalog.pg_sequences
     WHERE schemaname <> 'walship' ORDER BY 1";

/// User relations (not walship's, not an extension's): their number and a few names.
const USER_RELATIONS: &str = "\
    SELECT format('%I.%I', n.nspname, c.relname), count(*) OVER ()
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'f', 'm', 'v', 'S')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walship')
       AND n.nspname NOT LIKE 'pg\\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
     ORDER BY 1 LIMIT 5";

pub(super) async fn published_tables(client: &Client, publication: &str) -> Result<Vec<TableSpec>, SeedError> {
    let what = "list the publication's tables";
    let exists = client.query_opt("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", &[&publication]).await;
    if exists.map_err(pg(what))?.is_none() {
        return Err(SeedError::NoPublication(publication.to_owned()));
    }
    let rows = client.query(PUBLISHED_TABLES, &[&publication]).await.map_err(pg(what))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let (schema, name, relkind): (String, String, String) =
            (row.try_get(0).map_err(pg(what))?, row.try_get(1).map_err(pg(what))?, row.try_get(2).map_err(pg(what))?);
        let filter: Option<String> = row.try_get(3).map_err(pg(what))?;
        let columns: Vec<String> = row.try_get(4).map_err(pg(what))?;
        let copy_out = copy_out_sql(&schema, &name, &columns, relkind == "p", filter.as_deref());
        tables.push(TableSpec { schema, name, columns, copy_out });
    }
    Ok(tables)
}

/// A plain `COPY table TO` where it can (the fast path); a query where rows must be filtered
/// or the table is partitioned (published through its root: its partitions' rows).
fn copy_out_sql(schema: &str, name: &str, columns: &[String], partitioned: bool, filter: Option<&str>) -> String {
    let table = quote_qualified(schema, name);
    let list = column_list(columns);
    match (partitioned, filter) {
        (false, None) => format!("COPY {table} {list} TO STDOUT"),
        (partitioned, filter) => {
            let only = if partitioned { "" } else { "ONLY " };
            let select = quoted_columns(columns);
            let filter = filter.map(|f| format!(" WHERE ({f})")).unwrap_or_default();
            format!("COPY (SELECT {select} FROM {only}{table}{filter}) TO STDOUT")
        }
    }
}

/// Locks the tables against DDL for the rest of the export, as pg_dump does: a table
/// rewritten or dropped under an older snapshot would read as empty or fail.
pub(super) async fn lock_tables(client: &Client, tables: &[TableSpec]) -> Result<(), SeedError> {
    if tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = tables.iter().map(|t| quote_qualified(&t.schema, &t.name)).collect();
    let sql = format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", "));
    client.batch_execute(&sql).await.map_err(pg("lock the published tables"))
}

/// `setval` statements restoring every sequence's current value.
pub(super) async fn sequence_sql(client: &Client) -> Result<String, SeedError> {
    let what = "read the sequences";
    let mut sql = String::new();
    for row in client.query(SEQUENCES, &[]).await.map_err(pg(what))? {
        let sequence: String = row.try_get(0).map_err(pg(what))?;
        let query = format!(
            "SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', $1::text, last_value, \
                           CASE WHEN is_called THEN 'true' ELSE 'false' END) FROM {sequence}"
        );
        let row = client.query_one(&query, &[&sequence]).await.map_err(pg(what))?;
        let statement: String = row.try_get(0).map_err(pg(what))?;
        sql.push_str(&statement);
        sql.push('\n');
    }
    Ok(sql)
}

/// Refuses a database holding user relations, naming a few.
pub(super) async fn check_empty(client: &Client) -> Result<(), SeedError> {
    let what = "look for user tables";
    let rows = client.query(USER_RELATIONS, &[]).await.map_err(pg(what))?;
    let Some(first) = rows.first() else { return Ok(()) };
    let count: i64 = first.try_get(1).map_err(pg(what))?;
    let names = rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<Result<Vec<_>, _>>().map_err(pg(what))?;
    let more = if count > names.len() as i64 { ", ..." } else { "" };
    Err(SeedError::NotEmpty { count, some: format!("{}{more}", names.join(", ")) })
}

/// `(a, b)`, or nothing for a table without columns.
pub(super) fn column_list(columns: &[String]) -> String {
    if columns.is_empty() {
        return String::new();
    }
    format!("({})", quoted_columns(columns))
}

/// `a, b`.
fn quoted_columns(columns: &[String]) -> String {
    columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements() {
        let cols = vec!["id".to_owned(), "we\"ird".to_owned()];
        assert_eq!(copy_out_sql("s", "t", &cols, false, None), r#"COPY "s"."t" ("id", "we""ird") TO STDOUT"#);
        assert_eq!(
            copy_out_sql("s", "t", &cols, false, Some("id > 5")),
            r#"COPY (SELECT "id", "we""ird" FROM ONLY "s"."t" WHERE (id > 5)) TO STDOUT"#
        );
        assert_eq!(copy_out_sql("s", "p", &[], true, None), r#"COPY (SELECT  FROM "s"."p") TO STDOUT"#);
    }
}
