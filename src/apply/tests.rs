//! Unit tests of the statement text and change planning (no database).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::change::{key_from_detail, key_text, plan, PlanError, TextParam};
use super::statement::{change_sql, copy_sql, param_types, truncate_sql};
use super::table::{quote_ident, ColumnMeta, TableMeta};
use crate::source::pgoutput::{self, Message};

fn meta(partitioned: bool) -> Arc<TableMeta> {
    let column = |name: &str, key: bool, has_eq: bool| ColumnMeta {
        name: name.into(),
        ident: quote_ident(name),
        key,
        has_eq,
        type_oid: if has_eq { 23 } else { 114 },
    };
    Arc::new(TableMeta {
        sql_name: "\"s\".\"t x\"".into(),
        display: "s.t x".into(),
        partitioned,
        columns: vec![column("id", true, true), column("doc", false, false), column("n", false, true)],
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
