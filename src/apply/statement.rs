//! SQL text of the apply statements.
//!
//! An update or delete is described by its *shape*, which says per column what the statement
//! does with it; one statement is prepared per shape and table and reused for every row of
//! that shape:
//!
//! ```text
//! shape  = op form column*          one byte each, a column byte per leader column in order
//! op     = 'U' update | 'D' delete
//! form   = 'K' the condition names one row by its key
//!        | 'F' the condition is the whole old row (replica identity FULL): touch one
//!              matching row, found by ctid, as duplicates are allowed
//! column = bits: SET (assigned the next parameter), WHERE_EQ (`col = $n`), WHERE_TEXT
//!          (`col::text = $n`, for types without equality), WHERE_NULL (`col IS NULL`)
//! ```
//!
//! Parameters are numbered SET ones first, then WHERE ones, each in column order. They are
//! sent as text and declared (by OID) as the follower column's type, or `text` for a text
//! comparison, so the follower's input function reads them: no casts in the SQL, and no
//! typmod on the parameter (a cast to `varchar(5)` or `bit` would cut a longer value and
//! compare the wrong thing; an assignment checks the column's typmod and fails instead).
//! Comparing `col = $n` or `col IS NULL` per value is `IS NOT DISTINCT FROM` with the null
//! case chosen by the shape, which keeps the condition usable by an index.
//!
//! A run of updates or deletes of one shape can instead go as one *set-based* statement,
//! which joins the table with the run's rows, passed as one array per parameter:
//!
//! ```text
//! UPDATE "s"."t" AS t SET "v" = s.p1 FROM (SELECT unnest($1) AS p1, unnest($2) AS p2) AS s
//!     WHERE t."id" = s.p2
//! DELETE FROM "s"."t" AS t USING (SELECT unnest($1) AS p1) AS s WHERE t."id" = s.p1
//! ```
//!
//! (The arrays are unnested in the select list, where they advance together, and not as
//! `unnest($1, $2)` in FROM, which would spread a composite element over several columns.)
//!
//! Each array is declared as the array type of its column's type, so the follower's input
//! function of that type reads every element, as it reads a single parameter. An array
//! column's type has no array type: its values travel as the elements of a `text[]` and are
//! cast to the column's type named by its catalog name (`pg_catalog._bpchar`, never
//! `character[]`, which would read as `character(1)[]` and cut values), so again its input
//! function reads them without a typmod, and the column's typmod applies at assignment. Only
//! shapes that name their row by a key which one of the follower's unique indexes makes name
//! one row at most, and that do not change the key, go set-based (see [`set_statement`]).

use std::fmt::Write as _;

use tokio_postgres::types::{Kind, Type};

use super::meta::{ColumnMeta, TableMeta};
use crate::pgoutput::{TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY};

pub(super) const UPDATE: u8 = b'U';
pub(super) const DELETE: u8 = b'D';
pub(super) const BY_KEY: u8 = b'K';
pub(super) const FULL_ROW: u8 = b'F';

pub(super) const SET: u8 = 1;
pub(super) const WHERE_EQ: u8 = 2;
pub(super) const WHERE_TEXT: u8 = 4;
pub(super) const WHERE_NULL: u8 = 8;
const WHERE_ANY: u8 = WHERE_EQ | WHERE_TEXT | WHERE_NULL;

/// The UPDATE or DELETE statement of a shape.
pub(super) fn change_sql(meta: &TableMeta, shape: &[u8]) -> String {
    let [op, form, columns @ ..] = shape else {
        return String::new();
    };
    let mut next_param = 1;
    let mut sql = String::with_capacity(128);
    if *op == UPDATE {
        let _ = write!(sql, "UPDATE {} SET ", meta.sql_name);
        set_list(&mut sql, meta, columns, &mut next_param);
    } else {
        let _ = write!(sql, "DELETE FROM {}", meta.sql_name);
    }
    sql.push_str(" WHERE ");
    let mut conditions = String::with_capacity(64);
    condition(&mut conditions, meta, columns, &mut next_param);
    match (*form, meta.partitioned) {
        (FULL_ROW, false) => {
            let _ = write!(sql, "ctid = (SELECT ctid FROM {} WHERE {conditions} LIMIT 1)", meta.sql_name);
        }
        (FULL_ROW, true) => {
            let _ = write!(
                sql,
                "(tableoid, ctid) = (SELECT tableoid, ctid FROM {} WHERE {conditions} LIMIT 1)",
                meta.sql_name
            );
        }
        _ => sql.push_str(&conditions),
    }
    sql
}

/// `"a" = $1, "b" = $2`; with nothing to assign, the first compared column to itself, so the
/// statement still finds (and counts) its row.
fn set_list(sql: &mut String, meta: &TableMeta, columns: &[u8], next_param: &mut usize) {
    let mut first = true;
    for (column, &bits) in meta.columns.iter().zip(columns) {
        if bits & SET != 0 {
            if !first {
                sql.push_str(", ");
            }
            let _ = write!(sql, "{} = ${next_param}", column.ident);
            *next_param += 1;
            first = false;
        }
    }
    if first {
        let ident = meta
            .columns
            .iter()
            .zip(columns)
            .find(|(_, &bits)| bits & WHERE_ANY != 0)
            .or(meta.columns.iter().zip(columns).next())
            .map_or("ctid", |(c, _)| c.ident.as_str());
        let _ = write!(sql, "{ident} = {ident}");
    }
}

/// `"a" = $3 AND "b" IS NULL AND "c"::text = $4`, or `true` when nothing is compared.
fn condition(sql: &mut String, meta: &TableMeta, columns: &[u8], next_param: &mut usize) {
    let mut first = true;
    for (column, &bits) in meta.columns.iter().zip(columns) {
        if bits & WHERE_ANY == 0 {
            continue;
        }
        if !first {
            sql.push_str(" AND ");
        }
        first = false;
        if bits & WHERE_NULL != 0 {
            let _ = write!(sql, "{} IS NULL", column.ident);
        } else if bits & WHERE_TEXT != 0 {
            let _ = write!(sql, "{}::text = ${next_param}", column.ident);
            *next_param += 1;
        } else {
            let _ = write!(sql, "{} = ${next_param}", column.ident);
            *next_param += 1;
        }
    }
    if first {
        sql.push_str("true");
    }
}

/// The declared types of a shape's parameters, in parameter order.
pub(super) fn param_types(meta: &TableMeta, shape: &[u8]) -> Vec<Type> {
    let columns = shape.get(2..).unwrap_or_default();
    let set = meta.columns.iter().zip(columns).filter(|(_, &bits)| bits & SET != 0);
    let set = set.map(|(column, _)| type_of(column.type_oid));
    let compared = meta.columns.iter().zip(columns).filter_map(|(column, &bits)| {
        if bits & WHERE_TEXT != 0 {
            Some(Type::TEXT)
        } else if bits & WHERE_EQ != 0 {
            Some(type_of(column.type_oid))
        } else {
            None
        }
    });
    set.chain(compared).collect()
}

/// A type known only by its OID is enough to declare a parameter: only the OID is sent.
fn type_of(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| Type::new(format!("oid {oid}"), oid, Kind::Pseudo, String::new()))
}

/// `COPY "s"."t" ("a", "b") FROM STDIN`, in the leader's column order (text format).
pub(super) fn copy_sql(meta: &TableMeta) -> String {
    let columns: Vec<&str> = meta.columns.iter().map(|c| c.ident.as_str()).collect();
    format!("COPY {} ({}) FROM STDIN", meta.sql_name, columns.join(", "))
}

/// One TRUNCATE for the relations of one Truncate message.
pub(super) fn truncate_sql(tables: &[&str], options: u8) -> String {
    let mut sql = format!("TRUNCATE TABLE {}", tables.join(", "));
    if options & TRUNCATE_RESTART_IDENTITY != 0 {
        sql.push_str(" RESTART IDENTITY");
    }
    if options & TRUNCATE_CASCADE != 0 {
        sql.push_str(" CASCADE");
    }
    sql
}

/// `INSERT INTO "s"."t" ("a", "b") OVERRIDING SYSTEM VALUE VALUES ($1, $2)`: one row,
/// parameters typed as the columns. `OVERRIDING SYSTEM VALUE` lets the leader's values into
/// `GENERATED ALWAYS AS IDENTITY` columns (COPY takes them as they are) and changes nothing
/// for other tables.
pub(super) fn insert_sql(meta: &TableMeta) -> (String, Vec<Type>) {
    let columns: Vec<&str> = meta.columns.iter().map(|c| c.ident.as_str()).collect();
    let params: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        meta.sql_name,
        columns.join(", "),
        params.join(", ")
    );
    (sql, meta.columns.iter().map(|c| type_of(c.type_oid)).collect())
}

/// The set-based statement of a shape (see the module docs).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SetStatement {
    pub sql: String,
    /// The declared array type of each parameter.
    pub types: Vec<Type>,
    /// The element delimiter of each parameter's array literal.
    pub delimiters: Vec<u8>,
}

/// The set-based form of a shape, or `None` when its rows must go one statement each: the
/// condition is the whole row, or compares NULL or text, or does not cover one of the
/// follower's unique indexes; an update assigns a key column or nothing at all; a column's
/// type has no array type and is not an array.
pub(super) fn set_statement(meta: &TableMeta, shape: &[u8]) -> Option<SetStatement> {
    let [op, BY_KEY, columns @ ..] = shape else {
        return None;
    };
    let bits_of = |i: usize| columns.get(i).copied().unwrap_or(0);
    let pairs = || meta.columns.iter().zip(columns.iter().copied());
    let set: Vec<&ColumnMeta> = pairs().filter(|(_, bits)| bits & SET != 0).map(|(c, _)| c).collect();
    let keys: Vec<&ColumnMeta> = pairs().filter(|(_, bits)| bits & WHERE_ANY != 0).map(|(c, _)| c).collect();
    let key_only = pairs().all(|(c, bits)| bits & (WHERE_TEXT | WHERE_NULL) == 0 && (bits & WHERE_EQ == 0 || c.key));
    let unique = meta.unique_keys.iter().any(|index| index.iter().all(|&i| bits_of(i) & WHERE_EQ != 0));
    let assigns_key = set.iter().any(|c| c.key);
    let arrays = set.iter().chain(&keys).all(|c| c.array_oid != 0 || c.array_cast.is_some());
    if !unique || !key_only || !arrays || assigns_key || (*op == UPDATE) == set.is_empty() {
        return None;
    }
    let mut sql = String::with_capacity(160);
    let mut sources = String::with_capacity(64);
    let (mut types, mut delimiters) = (Vec::new(), Vec::new());
    for (n, column) in set.iter().chain(&keys).enumerate() {
        let sep = if n == 0 { "" } else { ", " };
        let _ = write!(sources, "{sep}unnest(${0}) AS p{0}", n + 1);
        if column.array_oid != 0 {
            types.push(type_of(column.array_oid));
            delimiters.push(column.delimiter);
        } else {
            types.push(Type::TEXT_ARRAY);
            delimiters.push(b',');
        }
    }
    let value = |n: usize, column: &ColumnMeta| match (column.array_oid, &column.array_cast) {
        (0, Some(cast)) => format!("s.p{n}::{cast}"),
        _ => format!("s.p{n}"),
    };
    if *op == UPDATE {
        let _ = write!(sql, "UPDATE {} AS t SET ", meta.sql_name);
        for (n, column) in set.iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}{} = {}", column.ident, value(n + 1, column));
        }
        let _ = write!(sql, " FROM (SELECT {sources}) AS s WHERE ");
    } else {
        let _ = write!(sql, "DELETE FROM {} AS t USING (SELECT {sources}) AS s WHERE ", meta.sql_name);
    }
    for (n, column) in keys.iter().enumerate() {
        let sep = if n == 0 { "" } else { " AND " };
        let _ = write!(sql, "{sep}t.{} = {}", column.ident, value(set.len() + n + 1, column));
    }
    Some(SetStatement { sql, types, delimiters })
}
