//! Tuples of Insert, Update and Delete messages, kept as validated raw bytes.

use std::fmt;
use std::iter::FusedIterator;

use super::reader::Reader;
use super::DecodeError;

/// The old row of an Update or Delete: its replica identity key (`'K'`) or the whole row
/// (`'O'`, replica identity FULL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldTuple<'a> {
    Key(Tuple<'a>),
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn tuple(&self) -> Tuple<'a> {
        match *self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// A row's column values, validated at decode time and walked by [`Self::values`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    len: u16,
    raw: &'a [u8],
}

impl<'a> Tuple<'a> {
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> Values<'a> {
        Values { reader: Reader::new(self.raw), remaining: self.len }
    }
}

impl fmt::Debug for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

/// One column value of a [`Tuple`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value the change did not touch; the subscriber keeps what it has.
    UnchangedToast,
    /// The value in the type's text output format (not NUL-terminated).
    Text(&'a [u8]),
    /// The value in the type's binary format (only with the `binary` option).
    Binary(&'a [u8]),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::UnchangedToast => f.write_str("UnchangedToast"),
            Value::Text(b) => write!(f, "Text(\"{}\")", b.escape_ascii()),
            Value::Binary(b) => write!(f, "Binary(\"{}\")", b.escape_ascii()),
        }
    }
}

/// Iterator over a [`Tuple`]'s values.
#[derive(Clone, Debug)]
pub struct Values<'a> {
    reader: Reader<'a>,
    remaining: u16,
}

impl<'a> Iterator for Values<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        self.remaining = self.remaining.checked_sub(1)?;
        // The bytes were validated by `read`, so this cannot fail; stop if it did.
        let value = read_value(&mut self.reader).ok();
        if value.is_none() {
            self.remaining = 0;
        }
        value
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.remaining), Some(usize::from(self.remaining)))
    }
}

impl ExactSizeIterator for Values<'_> {}
impl FusedIterator for Values<'_> {}

/// The kind byte of a new tuple, `'N'`, and the tuple after it.
pub(super) fn read_new<'a>(r: &mut Reader<'a>) -> Result<Tuple<'a>, DecodeError> {
    let offset = r.offset();
    match r.u8("tuple kind")? {
        b'N' => read(r),
        kind => Err(DecodeError::UnknownTupleKind { kind, offset }),
    }
}

/// A tuple kind byte: `'K'` or `'O'` and the old tuple after it, or `None` for `'N'`, whose
/// tuple is left to read.
pub(super) fn read_old<'a>(r: &mut Reader<'a>) -> Result<Option<OldTuple<'a>>, DecodeError> {
    let offset = r.offset();
    match r.u8("tuple kind")? {
        b'N' => Ok(None),
        b'K' => Ok(Some(OldTuple::Key(read(r)?))),
        b'O' => Ok(Some(OldTuple::Full(read(r)?))),
        kind => Err(DecodeError::UnknownTupleKind { kind, offset }),
    }
}

/// A tuple without its kind byte: a column count and that many values.
pub(super) fn read<'a>(r: &mut Reader<'a>) -> Result<Tuple<'a>, DecodeError> {
    let len = r.column_count()?;
    let raw = r.walk(len, read_value)?;
    Ok(Tuple { len, raw })
}

#[inline]
fn read_value<'a>(r: &mut Reader<'a>) -> Result<Value<'a>, DecodeError> {
    let offset = r.offset();
    match r.u8("tuple value kind")? {
        b'n' => Ok(Value::Null),
        b'u' => Ok(Value::UnchangedToast),
        b't' => r.counted("text value").map(Value::Text),
        b'b' => r.counted("binary value").map(Value::Binary),
        kind => Err(DecodeError::UnknownValueKind { kind, offset }),
    }
}
