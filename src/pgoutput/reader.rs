//! A cursor over one message: every read checks the length first and reports the offset of
//! the field it failed on.

use super::{DecodeError, MAX_COLUMNS};
use crate::lsn::Lsn;

#[derive(Clone, Copy, Debug)]
pub(super) struct Reader<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
    /// Bytes read so far.
    offset: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf, offset: 0 }
    }

    /// Bytes read so far: the offset of the next field from the start of the message.
    #[inline]
    pub(super) fn offset(&self) -> usize {
        self.offset
    }

    fn end(&self, what: &'static str) -> DecodeError {
        DecodeError::UnexpectedEnd { what, offset: self.offset }
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.rest.split_at_checked(n).ok_or_else(|| self.end(what))?;
        self.rest = rest;
        self.offset += n;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or_else(|| self.end(what))?;
        self.rest = rest;
        self.offset += N;
        Ok(*head)
    }

    #[inline]
    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array(what).map(|[b]| b)
    }

    #[inline]
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    #[inline]
    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    #[inline]
    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    #[inline]
    pub(super) fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    #[inline]
    pub(super) fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let offset = self.offset;
        let nul = self.rest.iter().position(|&b| b == 0);
        let bytes = self.take(nul.ok_or(DecodeError::UnterminatedString { what, offset })?, what)?;
        self.take(1, what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { what, offset })
    }

    /// An `i32` length followed by that many bytes.
    #[inline]
    pub(super) fn counted(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.offset;
        let len = self.i32(what)?;
        let n = usize::try_from(len).map_err(|_| DecodeError::NegativeLength { what, len, offset })?;
        self.take(n, what)
    }

    /// A `u16` count of columns, at most [`MAX_COLUMNS`].
    #[inline]
    pub(super) fn column_count(&mut self) -> Result<u16, DecodeError> {
        let offset = self.offset;
        let count = self.array("column count").map(u16::from_be_bytes)?;
        if count > MAX_COLUMNS {
            return Err(DecodeError::TooManyColumns { count, offset });
        }
        Ok(count)
    }

    /// Reads `count` items with `item` to check them, then returns the bytes they took.
    #[inline]
    pub(super) fn walk<T>(
        &mut self,
        count: u16,
        item: impl Fn(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<&'a [u8], DecodeError> {
        let mut walker = *self;
        for _ in 0..count {
            item(&mut walker)?;
        }
        self.take(walker.offset.saturating_sub(self.offset), "walked bytes")
    }

    #[inline]
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.rest.len() {
            0 => Ok(()),
            len => Err(DecodeError::TrailingBytes { offset: self.offset, len }),
        }
    }
}
