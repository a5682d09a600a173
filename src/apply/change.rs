//! An update or delete message as a statement shape and its parameters (no I/O).
//!
//! Which row: the old tuple's replica identity columns (`OldTuple::Key`), the whole old row
//! (`OldTuple::Full`), or, when the key did not change and no old tuple was sent, the new
//! tuple's key columns. What is set: every new value except the TOASTed ones the change left
//! alone (and except the key columns when they come from the new tuple: they did not change).

use std::fmt::Write as _;

use bytes::Bytes;

use super::error::{truncate_key, KEY_DISPLAY_CHARS};
use super::meta::TableMeta;
use super::param::TextParam;
use super::statement::{BY_KEY, DELETE, FULL_ROW, SET, UPDATE, WHERE_EQ, WHERE_NULL, WHERE_TEXT};
use crate::pgoutput::{self, Message, OldTuple, Tuple, Value};

/// Why a change cannot be planned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PlanError {
    /// Nothing identifies the row: no old tuple and no key columns with a value.
    NoKey,
    /// The message does not fit its relation.
    Malformed(String),
}

/// Fills `shape` (see `statement`) and `params` for an update (`new` given) or a delete.
/// `payload` is the record buffer the tuples point into.
pub(super) fn plan(
    meta: &TableMeta,
    payload: &Bytes,
    old: Option<OldTuple<'_>>,
    new: Option<Tuple<'_>>,
    shape: &mut Vec<u8>,
    params: &mut Vec<TextParam>,
) -> Result<(), PlanError> {
    let columns = meta.columns.len();
    for tuple in old.map(|o| o.tuple()).iter().chain(new.iter()) {
        if tuple.len() != columns {
            let got = tuple.len();
            return Err(PlanError::Malformed(format!("a tuple of {got} values for {columns} columns")));
        }
    }
    let full = matches!(old, Some(OldTuple::Full(_)));
    shape.clear();
    shape.push(if new.is_some() { UPDATE } else { DELETE });
    shape.push(if full { FULL_ROW } else { BY_KEY });
    shape.resize(2 + columns, 0);
    params.clear();
    let key_from_new = old.is_none();
    if let Some(new) = new {
        for (i, (column, value)) in meta.columns.iter().zip(new.values()).enumerate() {
            if !(key_from_new && column.key) {
                shape[2 + i] |= set_value(payload, value, params)?;
            }
        }
    }
    let Some(identity) = old.map(|o| o.tuple()).or(new) else {
        return Err(PlanError::NoKey);
    };
    let mut compared = 0;
    for (i, (column, value)) in meta.columns.iter().zip(identity.values()).enumerate() {
        if full || column.key {
            let bits = where_value(payload, value, full && !column.has_eq, params)?;
            compared += usize::from(bits != 0);
            shape[2 + i] |= bits;
        }
    }
    if compared == 0 {
        return Err(PlanError::NoKey);
    }
    Ok(())
}

/// The values of an inserted row as parameters, in the leader's column order.
pub(super) fn insert_params(meta: &TableMeta, payload: &Bytes, new: Tuple<'_>) -> Result<Vec<TextParam>, String> {
    if new.len() != meta.columns.len() {
        return Err(format!("an insert of {} values for {} columns", new.len(), meta.columns.len()));
    }
    new.values()
        .map(|value| match value {
            Value::Null => Ok(TextParam(None)),
            Value::Text(text) => Ok(TextParam(Some(payload.slice_ref(text)))),
            Value::UnchangedToast => Err("an unchanged TOAST value in an insert".into()),
            Value::Binary(_) => Err("binary tuple values (the stream must use text values)".into()),
        })
        .collect()
}

fn set_value(payload: &Bytes, value: Value<'_>, params: &mut Vec<TextParam>) -> Result<u8, PlanError> {
    match value {
        Value::UnchangedToast => return Ok(0),
        Value::Null => params.push(TextParam(None)),
        Value::Text(text) => params.push(TextParam(Some(payload.slice_ref(text)))),
        Value::Binary(_) => return Err(binary()),
    }
    Ok(SET)
}

fn where_value(payload: &Bytes, value: Value<'_>, as_text: bool, params: &mut Vec<TextParam>) -> Result<u8, PlanError> {
    match value {
        // Not sent, so not compared.
        Value::UnchangedToast => Ok(0),
        Value::Null => Ok(WHERE_NULL),
        Value::Text(text) => {
            params.push(TextParam(Some(payload.slice_ref(text))));
            Ok(if as_text { WHERE_TEXT } else { WHERE_EQ })
        }
        Value::Binary(_) => Err(binary()),
    }
}

fn binary() -> PlanError {
    PlanError::Malformed("binary tuple values (the stream must use text values)".into())
}

/// `column=value` pairs that identify the row of an update or delete message, for errors.
pub(super) fn key_text(meta: &TableMeta, message: &[u8]) -> String {
    let (identity, full) = match pgoutput::decode(message) {
        Ok(Message::Update { old: Some(old), .. } | Message::Delete { old, .. }) => {
            (old.tuple(), matches!(old, OldTuple::Full(_)))
        }
        Ok(Message::Update { old: None, new, .. }) => (new, false),
        _ => return String::new(),
    };
    let mut text = String::new();
    for (column, value) in meta.columns.iter().zip(identity.values()) {
        if !(full || column.key) {
            continue;
        }
        if text.len() > KEY_DISPLAY_CHARS * 4 {
            break;
        }
        if !text.is_empty() {
            text.push_str(", ");
        }
        let _ = match value {
            Value::Null => write!(text, "{}=NULL", column.name),
            Value::UnchangedToast => write!(text, "{}=(unchanged TOAST value)", column.name),
            Value::Text(v) | Value::Binary(v) => {
                let shown = v.get(..KEY_DISPLAY_CHARS * 4).unwrap_or(v);
                write!(text, "{}={}", column.name, String::from_utf8_lossy(shown))
            }
        };
    }
    truncate_key(text)
}

/// The key of a unique violation's detail, `Key (a, b)=(1, x) already exists.`, as
/// `a=1, b=x` (as found when the values contain the separator).
pub(super) fn key_from_detail(detail: &str) -> String {
    let Some(rest) = detail.strip_prefix("Key (") else {
        return truncate_key(detail.to_owned());
    };
    let rest = rest.strip_suffix(" already exists.").unwrap_or(rest);
    let Some((names, values)) = rest.split_once(")=(") else {
        return truncate_key(rest.to_owned());
    };
    let values = values.strip_suffix(')').unwrap_or(values);
    let names: Vec<&str> = names.split(", ").collect();
    let split: Vec<&str> = values.split(", ").collect();
    if names.len() != split.len() {
        return truncate_key(format!("({})=({values})", names.join(", ")));
    }
    let pairs: Vec<String> = names.iter().zip(split).map(|(n, v)| format!("{n}={v}")).collect();
    truncate_key(pairs.join(", "))
}
