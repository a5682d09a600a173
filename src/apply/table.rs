//! The follower's tables, found by the leader's names, and their prepared statements.
//!
//! A leader relation (namespace, name, column names) maps to the follower table of the same
//! names, never by OID. Column types are the follower's own: values travel as text and the
//! follower's input functions read them. The mapping is cached per leader relation id and
//! looked up again whenever a Relation message differs from the one it was made from (a
//! schema change on the leader, or another leader whose OIDs mean other tables).
//!
//! Statements are prepared on first use and the catalog read only for a new mapping, by
//! requests awaited directly. Every method that may send one takes `settle`, the caller's
//! future that frees the connection first (a COPY in flight holds it: see `pipeline`), and
//! awaits it only then: a statement found in the cache waits for nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::error::ApplyError;
use super::meta::{ColumnMeta, TableMeta};
use super::statement;
use crate::lsn::EntryId;
use crate::pgoutput::{Relation, COLUMN_KEY};
use crate::sql::{quote_ident, quote_qualified};

/// Prepared update and delete statements kept per table. Shapes multiply with the NULL
/// patterns of replica identity FULL rows; past this many the table's cache starts afresh.
pub const MAX_SHAPES_PER_TABLE: usize = 64;

/// The follower's columns of a table, a row each, read by column name: `partitioned`,
/// `column_name` (NULL for a table without columns), `has_eq` (the type has a default
/// equality operator), `type_oid`, `array_oid` (its array type's, or 0), `delimiter` (of its
/// array literals), `replica_triggers` (the table or one of its partitions or children has
/// triggers or rules that fire on a replica), `array_cast` (for an array column, the
/// qualified name of its type). Equality is looked for on the type under any domains and
/// array levels, as PostgreSQL's type cache does.
const COLUMNS_SQL: &str = "SELECT c.relkind = 'p' AS partitioned, a.attname::text AS column_name, \
 (WITH RECURSIVE walk(oid, depth) AS ( \
     SELECT a.atttypid, 0 \
   UNION ALL \
     SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, walk.depth + 1 \
     FROM walk JOIN pg_catalog.pg_type t ON t.oid = walk.oid \
     WHERE t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0)) \
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc \
     JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod \
     WHERE oc.opcdefault AND am.amname IN ('btree', 'hash') \
     AND oc.opcintype IN (t.oid, CASE t.typtype \
       WHEN 'e' THEN pg_catalog.to_regtype('anyenum') \
       WHEN 'r' THEN pg_catalog.to_regtype('anyrange') \
       WHEN 'm' THEN pg_catalog.to_regtype('anymultirange') \
       WHEN 'c' THEN pg_catalog.to_regtype('record') END)) \
  FROM walk JOIN pg_catalog.pg_type t ON t.oid = walk.oid ORDER BY walk.depth DESC LIMIT 1) AS has_eq, \
 a.atttypid AS type_oid, ty.typarray AS array_oid, ty.typdelim::text AS delimiter, \
 (WITH RECURSIVE tree(oid) AS ( \
     SELECT c.oid \
   UNION \
     SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg JOIN tree ON tg.tgrelid = tree.oid \
       WHERE NOT tg.tgisinternal AND tg.tgenabled IN ('A', 'R')) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r JOIN tree ON r.ev_class = tree.oid \
       WHERE r.rulename <> '_RETURN' AND r.ev_enabled IN ('A', 'R'))) AS replica_triggers, \
 CASE WHEN ty.typcategory = 'A' AND ty.typarray = 0 \
   THEN pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(ty.typname) END AS array_cast \
 FROM pg_catalog.pg_class c \
 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
 LEFT JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
 LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace \
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// The key columns of each of the follower table's unique indexes that holds for every row
/// at every statement's end (not partial, not on expressions, not deferrable, valid) and
/// compares each column with the column's own collation, as `=` on it does: `key_columns`, a
/// row per index.
const UNIQUE_SQL: &str = "SELECT pg_catalog.array_agg(a.attname::text) AS key_columns \
 FROM pg_catalog.pg_index i \
 JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 CROSS JOIN LATERAL pg_catalog.generate_series(0, i.indnkeyatts - 1) AS k(n) \
 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n] \
 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indimmediate AND i.indisvalid \
   AND i.indpred IS NULL AND i.indexprs IS NULL \
 GROUP BY i.indexrelid \
 HAVING pg_catalog.bool_and(i.indcollation[k.n] = a.attcollation)";

pub(super) struct Table {
    pub meta: Arc<TableMeta>,
    /// The Relation message this mapping was made from.
    message: Bytes,
    /// Update and delete statements by shape (see `statement`).
    statements: HashMap<Vec<u8>, Statement>,
    /// Set-based statements by shape, `None` for shapes that cannot be set-based.
    sets: HashMap<Vec<u8>, Option<(Statement, Vec<u8>)>>,
    copy: Option<Statement>,
    insert: Option<Statement>,
}

/// The mapping of the leader's relation ids seen so far.
#[derive(Default)]
pub(super) struct Tables {
    by_rel_id: HashMap<u32, Table>,
}

impl Tables {
    /// The relation is mapped, from exactly this Relation message.
    pub fn is_current(&self, rel_id: u32, message: &[u8]) -> bool {
        self.by_rel_id.get(&rel_id).is_some_and(|t| t.message == message)
    }

    /// Takes a Relation message: keeps the mapping when it is the same message as before,
    /// else maps the relation to the follower's table again. Returns true if it changed.
    pub async fn relation(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        entry: EntryId,
        relation: &Relation<'_>,
        message: &Bytes,
    ) -> Result<bool, ApplyError> {
        if self.is_current(relation.rel_id, message) {
            return Ok(false);
        }
        settle.await?;
        let meta = resolve(client, entry, relation).await?;
        let table = Table {
            meta: Arc::new(meta),
            message: message.clone(),
            statements: HashMap::new(),
            sets: HashMap::new(),
            copy: None,
            insert: None,
        };
        self.by_rel_id.insert(relation.rel_id, table);
        Ok(true)
    }

    pub fn get(&self, entry: EntryId, rel_id: u32) -> Result<&Table, ApplyError> {
        self.by_rel_id.get(&rel_id).ok_or_else(|| ApplyError::Malformed {
            entry,
            reason: format!("change to relation {rel_id} before its Relation message"),
        })
    }

    fn get_mut(&mut self, entry: EntryId, rel_id: u32) -> Result<&mut Table, ApplyError> {
        self.by_rel_id.get_mut(&rel_id).ok_or_else(|| ApplyError::Malformed {
            entry,
            reason: format!("change to relation {rel_id} before its Relation message"),
        })
    }

    /// The update or delete statement of this shape, prepared on first use.
    pub async fn statement(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        entry: EntryId,
        rel_id: u32,
        shape: &[u8],
    ) -> Result<(Arc<TableMeta>, Statement), ApplyError> {
        let table = self.get_mut(entry, rel_id)?;
        if let Some(found) = table.statements.get(shape) {
            return Ok((table.meta.clone(), found.clone()));
        }
        if table.statements.len() >= MAX_SHAPES_PER_TABLE {
            table.statements.clear(); // dropping a statement closes it on the server
        }
        let sql = statement::change_sql(&table.meta, shape);
        let types = statement::param_types(&table.meta, shape);
        settle.await?;
        let prepared = prepare(client, entry, &table.meta, &sql, &types).await?;
        table.statements.insert(shape.to_vec(), prepared.clone());
        Ok((table.meta.clone(), prepared))
    }

    /// The set-based statement of this shape and its parameters' element delimiters,
    /// prepared on first use; `None` if the shape cannot go set-based.
    pub async fn set_statement(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        entry: EntryId,
        rel_id: u32,
        shape: &[u8],
    ) -> Result<Option<(Arc<TableMeta>, Statement, Vec<u8>)>, ApplyError> {
        let table = self.get_mut(entry, rel_id)?;
        if let Some(found) = table.sets.get(shape) {
            return Ok(found.clone().map(|(statement, delimiters)| (table.meta.clone(), statement, delimiters)));
        }
        if table.sets.len() >= MAX_SHAPES_PER_TABLE {
            table.sets.clear();
        }
        let prepared = match statement::set_statement(&table.meta, shape) {
            Some(set) => {
                settle.await?;
                let prepared = prepare(client, entry, &table.meta, &set.sql, &set.types).await?;
                Some((prepared, set.delimiters))
            }
            None => None,
        };
        table.sets.insert(shape.to_vec(), prepared.clone());
        Ok(prepared.map(|(statement, delimiters)| (table.meta.clone(), statement, delimiters)))
    }

    /// The one-row `INSERT` statement of a table, prepared on first use.
    pub async fn insert(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        entry: EntryId,
        rel_id: u32,
    ) -> Result<(Arc<TableMeta>, Statement), ApplyError> {
        self.prepared_once(client, settle, (entry, rel_id), |t| &mut t.insert, statement::insert_sql).await
    }

    /// The `COPY ... FROM STDIN` statement of a table, prepared on first use.
    pub async fn copy(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        entry: EntryId,
        rel_id: u32,
    ) -> Result<(Arc<TableMeta>, Statement), ApplyError> {
        let text = |meta: &TableMeta| (statement::copy_sql(meta), Vec::new());
        self.prepared_once(client, settle, (entry, rel_id), |t| &mut t.copy, text).await
    }

    /// The table's statement kept in `slot`, prepared from `text` on first use.
    async fn prepared_once(
        &mut self,
        client: &Client,
        settle: impl Future<Output = Result<(), ApplyError>>,
        (entry, rel_id): (EntryId, u32),
        slot: fn(&mut Table) -> &mut Option<Statement>,
        text: fn(&TableMeta) -> (String, Vec<Type>),
    ) -> Result<(Arc<TableMeta>, Statement), ApplyError> {
        let table = self.get_mut(entry, rel_id)?;
        if let Some(found) = slot(table).clone() {
            return Ok((table.meta.clone(), found));
        }
        let (sql, types) = text(&table.meta);
        settle.await?;
        let prepared = prepare(client, entry, &table.meta, &sql, &types).await?;
        *slot(table) = Some(prepared.clone());
        Ok((table.meta.clone(), prepared))
    }

    /// Forgets every mapping, after an error that may have come from a stale one.
    pub fn clear(&mut self) {
        self.by_rel_id.clear();
    }
}

async fn prepare(
    client: &Client,
    entry: EntryId,
    meta: &TableMeta,
    sql: &str,
    types: &[Type],
) -> Result<Statement, ApplyError> {
    client.prepare_typed(sql, types).await.map_err(|source| ApplyError::Change {
        entry,
        what: format!("prepare a statement on {}", meta.display),
        source,
    })
}

/// Maps a leader relation to the follower's table of the same names.
async fn resolve(client: &Client, entry: EntryId, relation: &Relation<'_>) -> Result<TableMeta, ApplyError> {
    let namespace = if relation.namespace.is_empty() { "pg_catalog" } else { relation.namespace };
    let display = format!("{namespace}.{}", relation.name);
    let diverged =
        |reason: String| ApplyError::Divergence { entry, table: display.clone(), key: String::new(), reason };
    let lookup = follower_columns(client, namespace, relation.name).await;
    let (table, follower) =
        lookup.map_err(|source| ApplyError::Change { entry, what: format!("look up table {display}"), source })?;
    let Some(FollowerTable { partitioned, replica_triggers: ordered }) = table else {
        return Err(diverged("the table does not exist on the follower".into()));
    };
    let mut columns = Vec::with_capacity(relation.column_count());
    for column in relation.columns() {
        let Some(found) = follower.get(column.name) else {
            return Err(diverged(format!("column {} does not exist on the follower", column.name)));
        };
        columns.push(ColumnMeta {
            name: column.name.to_owned(),
            ident: quote_ident(column.name),
            key: column.flags & COLUMN_KEY != 0,
            has_eq: found.has_eq,
            type_oid: found.type_oid,
            array_oid: found.array_oid,
            delimiter: found.delimiter,
            array_cast: found.array_cast.clone(),
        });
    }
    let unique = client.query(UNIQUE_SQL, &[&namespace, &relation.name]).await;
    let unique = unique.map_err(|source| ApplyError::Change {
        entry,
        what: format!("look up the unique indexes of {display}"),
        source,
    })?;
    let key_position = |name: &String| columns.iter().position(|c| c.key && c.name == *name);
    let mut unique_keys = Vec::new();
    for row in &unique {
        let names: Vec<String> = row.try_get("key_columns").map_err(|source| ApplyError::Change {
            entry,
            what: format!("read the unique indexes of {display}"),
            source,
        })?;
        let positions: Option<Vec<usize>> = names.iter().map(key_position).collect();
        unique_keys.extend(positions.filter(|p| !p.is_empty()));
    }
    Ok(TableMeta {
        sql_name: quote_qualified(namespace, relation.name),
        display,
        partitioned,
        columns,
        unique_keys,
        ordered,
    })
}

/// What the follower's catalog says of one column.
struct FollowerColumn {
    has_eq: bool,
    type_oid: u32,
    array_oid: u32,
    delimiter: u8,
    array_cast: Option<String>,
}

/// The follower's columns by name.
type FollowerColumns = HashMap<String, FollowerColumn>;

/// What the follower's catalog says of the table itself.
struct FollowerTable {
    partitioned: bool,
    /// The table or one of its partitions or children has triggers or rules that fire on a
    /// replica.
    replica_triggers: bool,
}

/// The follower's table (`None`: no such table) and its columns.
async fn follower_columns(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Option<FollowerTable>, FollowerColumns), tokio_postgres::Error> {
    let rows = client.query(COLUMNS_SQL, &[&namespace, &name]).await?;
    let table = rows.first().map(|row| -> Result<_, tokio_postgres::Error> {
        Ok(FollowerTable {
            partitioned: row.try_get("partitioned")?,
            replica_triggers: row.try_get("replica_triggers")?,
        })
    });
    let table = table.transpose()?;
    let mut columns = HashMap::with_capacity(rows.len());
    for row in &rows {
        let name: Option<String> = row.try_get("column_name")?;
        let has_eq: Option<bool> = row.try_get("has_eq")?;
        let type_oid: Option<u32> = row.try_get("type_oid")?;
        let array_oid: Option<u32> = row.try_get("array_oid")?;
        let delimiter: Option<String> = row.try_get("delimiter")?;
        let array_cast: Option<String> = row.try_get("array_cast")?;
        if let (Some(name), Some(type_oid)) = (name, type_oid) {
            let column = FollowerColumn {
                has_eq: has_eq.unwrap_or(false),
                type_oid,
                array_oid: array_oid.unwrap_or(0),
                delimiter: delimiter.and_then(|d| d.bytes().next()).unwrap_or(b','),
                array_cast,
            };
            columns.insert(name, column);
        }
    }
    Ok((table, columns))
}
