//! Relation messages: a table's schema, its columns kept as validated raw bytes.

use std::fmt;
use std::iter::FusedIterator;

use super::reader::Reader;
use super::DecodeError;

/// [`Column::flags`] bit: the column is part of the replica identity.
pub const COLUMN_KEY: u8 = 1;

/// A relation's schema. Columns are validated at decode time and walked by [`Self::columns`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Relation<'a> {
    pub rel_id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: &'a str,
    pub name: &'a str,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    column_count: u16,
    raw_columns: &'a [u8],
}

impl<'a> Relation<'a> {
    pub fn column_count(&self) -> usize {
        usize::from(self.column_count)
    }

    pub fn columns(&self) -> Columns<'a> {
        Columns { reader: Reader::new(self.raw_columns), remaining: self.column_count }
    }
}

impl fmt::Debug for Relation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relation")
            .field("rel_id", &self.rel_id)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("replica_identity", &char::from(self.replica_identity))
            .field("columns", &self.columns())
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column<'a> {
    /// [`COLUMN_KEY`] or 0.
    pub flags: u8,
    pub name: &'a str,
    pub type_oid: u32,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

/// Iterator over a [`Relation`]'s columns.
#[derive(Clone, Debug)]
pub struct Columns<'a> {
    reader: Reader<'a>,
    remaining: u16,
}

impl<'a> Iterator for Columns<'a> {
    type Item = Column<'a>;

    fn next(&mut self) -> Option<Column<'a>> {
        self.remaining = self.remaining.checked_sub(1)?;
        // The bytes were validated by `read`, so this cannot fail; stop if it did.
        let column = read_column(&mut self.reader).ok();
        if column.is_none() {
            self.remaining = 0;
        }
        column
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.remaining), Some(usize::from(self.remaining)))
    }
}

impl ExactSizeIterator for Columns<'_> {}
impl FusedIterator for Columns<'_> {}

/// The body of a Relation message, after its tag.
pub(super) fn read<'a>(r: &mut Reader<'a>) -> Result<Relation<'a>, DecodeError> {
    let rel_id = r.u32("relation id")?;
    let namespace = r.str("relation namespace")?;
    let name = r.str("relation name")?;
    let replica_identity = r.u8("relation replica identity")?;
    let column_count = r.column_count()?;
    let raw_columns = r.walk(column_count, read_column)?;
    Ok(Relation { rel_id, namespace, name, replica_identity, column_count, raw_columns })
}

fn read_column<'a>(r: &mut Reader<'a>) -> Result<Column<'a>, DecodeError> {
    Ok(Column {
        flags: r.u8("column flags")?,
        name: r.str("column name")?,
        type_oid: r.u32("column type oid")?,
        type_modifier: r.i32("column type modifier")?,
    })
}
