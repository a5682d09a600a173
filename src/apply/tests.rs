//! Unit tests of the statement text and change planning (no database).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::change::{key_from_detail, key_text, plan, PlanError};
use super::meta::{ColumnMeta, TableMeta};
use super::param::TextParam;
use super::statement::{change_sql, copy_sql, insert_sql, param_types, set_statement, truncate_sql};
use crate::pgoutput::{self, Message};
use crate::sql::quote_ident;

fn meta(partitioned: bool) -> Arc<TableMeta> {
    let column = |name: &str, key: bool, has_eq: bool| ColumnMeta {
        name: name.into(),
        ident: quote_ident(name),
        key,
        has_eq,
        type_oid: if has_eq { 23 } else { 114 },
        // int4[], json[]
        array_oid: if has_eq { 1007 } else { 199 },
        delimiter: b',',
        array_cast: None,
    };
    Arc::new(TableMeta {
        sql_name: "\"s\".\"t x\"".into(),
        display: "s.t x".into(),
        partitioned,
        columns: vec![column("id", true, true), column("doc", false, false), column("n", false, true)],
        unique_keys: vec![vec![0]],
        ordered: false,
    })
}

/// A pgoutput tuple: `None` is NULL, `Some(b"\0u")` an unchanged TOAST value.
fn put_tuple(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    buf.put_u16(values.len() as u16);
    for value in values {
        match value {
            None => buf.put_u8(b'n'),
            Some(b"\0u") => buf.put_u8(b'u'),
            Some(text) => {
                buf.put_u8(b't');
                buf.put_i32(text.len() as i32);
                buf.put_slice(text);
            }
        }
    }
}

fn update(old: Option<(u8, &[Option<&[u8]>])>, new: &[Option<&[u8]>]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'U');
    buf.put_u32(7);
    if let Some((kind, values)) = old {
        buf.put_u8(kind);
        put_tuple(&mut buf, values);
    }
    buf.put_u8(b'N');
    put_tuple(&mut buf, new);
    buf.freeze()
}

/// The statement text and parameter values of a change.
type Planned = (String, Vec<Option<Vec<u8>>>);

fn planned(message: &Bytes, meta: &TableMeta) -> Result<Planned, PlanError> {
    let (old, new) = match pgoutput::decode(message).unwrap() {
        Message::Update { old, new, .. } => (old, Some(new)),
        Message::Delete { old, .. } => (Some(old), None),
        other => panic!("not a change: {other:?}"),
    };
    let (mut shape, mut params) = (Vec::new(), Vec::<TextParam>::new());
    plan(meta, message, old, new, &mut shape, &mut params)?;
    let values = params.into_iter().map(|p| p.0.map(|b| b.to_vec())).collect();
    Ok((change_sql(meta, &shape), values))
}

#[test]
fn update_by_new_key_skips_unchanged_toast_and_the_key() {
    let message = update(None, &[Some(b"1"), Some(b"\0u"), None]);
    let (sql, params) = planned(&message, &meta(false)).unwrap();
    assert_eq!(sql, r#"UPDATE "s"."t x" SET "n" = $1 WHERE "id" = $2"#);
    assert_eq!(params, vec![None, Some(b"1".to_vec())]);
}

#[test]
fn update_of_the_key_finds_the_row_by_the_old_key() {
    let message = update(Some((b'K', &[Some(b"1"), None, None])), &[Some(b"2"), Some(b"{}"), Some(b"5")]);
    let (sql, params) = planned(&message, &meta(false)).unwrap();
    assert_eq!(sql, r#"UPDATE "s"."t x" SET "id" = $1, "doc" = $2, "n" = $3 WHERE "id" = $4"#);
    assert_eq!(params.len(), 4);
}

#[test]
fn full_identity_touches_one_row_and_compares_nulls_and_text() {
    let message = update(Some((b'O', &[Some(b"1"), Some(b"{}"), None])), &[Some(b"1"), Some(b"[]"), None]);
    let (sql, _) = planned(&message, &meta(false)).unwrap();
    assert_eq!(
        sql,
        r#"UPDATE "s"."t x" SET "id" = $1, "doc" = $2, "n" = $3 WHERE ctid = (SELECT ctid FROM "s"."t x" WHERE "id" = $4 AND "doc"::text = $5 AND "n" IS NULL LIMIT 1)"#
    );
    let mut delete = BytesMut::new();
    delete.put_u8(b'D');
    delete.put_u32(7);
    delete.put_u8(b'O');
    put_tuple(&mut delete, &[Some(b"1"), None, Some(b"3")]);
    let (sql, params) = planned(&delete.freeze(), &meta(true)).unwrap();
    assert_eq!(
        sql,
        r#"DELETE FROM "s"."t x" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM "s"."t x" WHERE "id" = $1 AND "doc" IS NULL AND "n" = $2 LIMIT 1)"#
    );
    assert_eq!(params, vec![Some(b"1".to_vec()), Some(b"3".to_vec())]);
}

#[test]
fn parameters_are_declared_as_the_follower_types_or_text() {
    let message = update(Some((b'O', &[Some(b"1"), Some(b"{}"), None])), &[Some(b"1"), Some(b"[]"), None]);
    let Ok(Message::Update { old, new, .. }) = pgoutput::decode(&message) else {
        panic!("not an update");
    };
    let (mut shape, mut params) = (Vec::new(), Vec::new());
    plan(&meta(false), &message, old, Some(new), &mut shape, &mut params).unwrap();
    let oids: Vec<u32> = param_types(&meta(false), &shape).iter().map(|t| t.oid()).collect();
    assert_eq!(oids, vec![23, 114, 23, 23, 25]);
}

#[test]
fn an_update_with_nothing_to_set_still_finds_its_row() {
    let message = update(None, &[Some(b"1"), Some(b"\0u"), Some(b"\0u")]);
    let (sql, _) = planned(&message, &meta(false)).unwrap();
    assert_eq!(sql, r#"UPDATE "s"."t x" SET "id" = "id" WHERE "id" = $1"#);
}

#[test]
fn changes_without_a_key_or_of_the_wrong_width_are_refused() {
    let message = update(None, &[Some(b"\0u"), Some(b"x"), None]);
    assert_eq!(planned(&message, &meta(false)).unwrap_err(), PlanError::NoKey);
    let message = update(None, &[Some(b"1")]);
    assert!(matches!(planned(&message, &meta(false)), Err(PlanError::Malformed(_))));
}

#[test]
fn keys_are_shown_for_errors() {
    let message = update(None, &[Some(b"42"), Some(b"\0u"), None]);
    assert_eq!(key_text(&meta(false), &message), "id=42");
    let long = vec![b'x'; 5000];
    let message = update(Some((b'O', &[Some(b"1"), Some(&long), None])), &[Some(b"1"), None, None]);
    let text = key_text(&meta(false), &message);
    assert!(text.starts_with("id=1, doc=xxx") && text.chars().count() <= 201, "{text}");
    assert_eq!(key_from_detail("Key (id)=(5) already exists."), "id=5");
    assert_eq!(key_from_detail("Key (a, b)=(1, x) already exists."), "a=1, b=x");
    assert_eq!(key_from_detail("Key (a, b)=(1, x, y) already exists."), "(a, b)=(1, x, y)");
}

#[test]
fn identifiers_are_quoted() {
    assert_eq!(quote_ident(r#"we"ird name"#), r#""we""ird name""#);
    assert_eq!(copy_sql(&meta(false)), r#"COPY "s"."t x" ("id", "doc", "n") FROM STDIN"#);
    assert_eq!(truncate_sql(&["a", "b"], 3), "TRUNCATE TABLE a, b RESTART IDENTITY CASCADE");
    assert_eq!(truncate_sql(&["a"], 0), "TRUNCATE TABLE a");
}

fn shape_of(message: &Bytes, meta: &TableMeta) -> Vec<u8> {
    let (old, new) = match pgoutput::decode(message).unwrap() {
        Message::Update { old, new, .. } => (old, Some(new)),
        Message::Delete { old, .. } => (Some(old), None),
        other => panic!("not a change: {other:?}"),
    };
    let (mut shape, mut params) = (Vec::new(), Vec::<TextParam>::new());
    plan(meta, message, old, new, &mut shape, &mut params).unwrap();
    shape
}

#[test]
fn runs_of_changes_by_key_go_set_based() {
    let meta = meta(false);
    let update = update(None, &[Some(b"1"), Some(b"{}"), None]);
    let set = set_statement(&meta, &shape_of(&update, &meta)).unwrap();
    assert_eq!(
        set.sql,
        r#"UPDATE "s"."t x" AS t SET "doc" = s.p1, "n" = s.p2 FROM (SELECT unnest($1) AS p1, unnest($2) AS p2, unnest($3) AS p3) AS s WHERE t."id" = s.p3"#
    );
    let oids: Vec<u32> = set.types.iter().map(|t| t.oid()).collect();
    assert_eq!(oids, vec![199, 1007, 1007]);
    assert_eq!(set.delimiters, b",,,");

    let mut delete = BytesMut::new();
    delete.put_u8(b'D');
    delete.put_u32(7);
    delete.put_u8(b'K');
    put_tuple(&mut delete, &[Some(b"1"), None, None]);
    let set = set_statement(&meta, &shape_of(&delete.freeze(), &meta)).unwrap();
    assert_eq!(set.sql, r#"DELETE FROM "s"."t x" AS t USING (SELECT unnest($1) AS p1) AS s WHERE t."id" = s.p1"#);
}

#[test]
fn key_changes_full_rows_and_keys_without_a_unique_index_go_row_by_row() {
    let meta = meta(false);
    let key_change = update(Some((b'K', &[Some(b"1"), None, None])), &[Some(b"2"), Some(b"{}"), Some(b"5")]);
    assert_eq!(set_statement(&meta, &shape_of(&key_change, &meta)), None);
    let full = update(Some((b'O', &[Some(b"1"), Some(b"{}"), Some(b"3")])), &[Some(b"1"), Some(b"[]"), None]);
    assert_eq!(set_statement(&meta, &shape_of(&full, &meta)), None);
    let nothing_to_set = update(None, &[Some(b"1"), Some(b"\0u"), Some(b"\0u")]);
    assert_eq!(set_statement(&meta, &shape_of(&nothing_to_set, &meta)), None);
    let plain = update(None, &[Some(b"1"), Some(b"{}"), None]);
    let shape = shape_of(&plain, &meta);
    assert!(set_statement(&meta, &shape).is_some());
    let not_unique = TableMeta {
        sql_name: meta.sql_name.clone(),
        display: meta.display.clone(),
        partitioned: false,
        columns: meta.columns.clone(),
        unique_keys: Vec::new(),
        ordered: false,
    };
    assert_eq!(set_statement(&not_unique, &shape), None);

    // A type with no array type that is not an array cannot travel as an array element.
    let mut columns = meta.columns.clone();
    columns[1].array_oid = 0;
    let odd_type = TableMeta { columns, unique_keys: vec![vec![0]], ..not_unique };
    assert_eq!(set_statement(&odd_type, &shape), None);
    // An array column's values travel as text and are cast to its type by catalog name.
    let mut columns = odd_type.columns.clone();
    columns[1].array_cast = Some("pg_catalog._bpchar".into());
    let array_column = TableMeta { columns, ..odd_type };
    let set = set_statement(&array_column, &shape).unwrap();
    assert!(set.sql.contains(r#"SET "doc" = s.p1::pg_catalog._bpchar, "n" = s.p2"#), "{}", set.sql);
    assert_eq!(set.types[0], tokio_postgres::types::Type::TEXT_ARRAY);
}

#[test]
fn a_change_goes_set_based_only_when_it_compares_every_column_of_a_unique_index() {
    let mut columns = meta(false).columns.clone();
    columns[2].key = true; // the key is (id, n), the follower's unique index too
    let meta = TableMeta {
        sql_name: "\"t\"".into(),
        display: "t".into(),
        partitioned: false,
        columns,
        unique_keys: vec![vec![0, 2]],
        ordered: false,
    };
    let both = update(None, &[Some(b"1"), Some(b"{}"), Some(b"5")]);
    let set = set_statement(&meta, &shape_of(&both, &meta)).unwrap();
    assert!(set.sql.ends_with(r#"WHERE t."id" = s.p2 AND t."n" = s.p3"#), "{}", set.sql);
    // n unchanged and TOASTed: not compared, so the key may match several rows.
    let id_only = update(None, &[Some(b"1"), Some(b"{}"), Some(b"\0u")]);
    assert_eq!(set_statement(&meta, &shape_of(&id_only, &meta)), None);
}

#[test]
fn one_row_inserts_name_every_column() {
    let (sql, types) = insert_sql(&meta(false));
    assert_eq!(sql, r#"INSERT INTO "s"."t x" ("id", "doc", "n") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)"#);
    assert_eq!(types.iter().map(|t| t.oid()).collect::<Vec<_>>(), vec![23, 114, 23]);
}
