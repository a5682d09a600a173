//! A statement parameter as replay sends it: a value in its type's text form. A leaf: it
//! imports nothing else of `apply`.

use std::error::Error;

use bytes::{Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

/// A value in its type's text form, sent as a text-format parameter of whatever type
/// PostgreSQL infers for it. `None` is NULL. Shares the record's buffer.
#[derive(Debug)]
pub(super) struct TextParam(pub Option<Bytes>);

impl ToSql for TextParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}
