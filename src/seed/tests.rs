//! Unit tests of what needs no PostgreSQL; the rest is in `tests/seed.rs`.

use super::error::SeedError;
use super::export::count_rows;
use crate::error::ErrorClass;

#[test]
fn rows_are_counted_by_line_ends_only() {
    assert_eq!(count_rows(b""), 0);
    assert_eq!(count_rows(b"1\ta\\nb\\tc\n2\t\\N\n"), 2);
    // A piece may end inside a row: the row counts where its newline is.
    assert_eq!(count_rows(b"3\tpart of a lo"), 0);
}

#[test]
fn errors_are_classified() {
    let unexpected = SeedError::Unexpected { got: "SeedData", expected: "SeedSchema" };
    assert_eq!(unexpected.class(), ErrorClass::Fatal);
    assert_eq!(SeedError::NotEmpty { count: 1, some: "public.t".into() }.class(), ErrorClass::Operator);
    let totals = SeedError::Totals { announced: "a".into(), loaded: "b".into() };
    assert_eq!(totals.class(), ErrorClass::Fatal);
    assert!(totals.to_string().starts_with("seed: "));
}
