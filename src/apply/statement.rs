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

use std::fmt::Write as _;

use tokio_postgres::types::{Kind, Type};

use super::table::TableMeta;
use crate::source::pgoutput::{TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY};

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
