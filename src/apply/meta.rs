//! What replay knows of a follower table: its names, the leader's columns with the
//! follower's types, and the unique keys a set-based change relies on (see `table` for how
//! it is looked up). A leaf: it imports nothing else of `apply`, so statement text, change
//! planning, batches and their error reports can all read it.

/// What a change needs to know about its table; shared with the statements in flight.
#[derive(Debug)]
pub(super) struct TableMeta {
    /// `"namespace"."name"`, quoted for SQL.
    pub sql_name: String,
    /// `namespace.name`, for messages.
    pub display: String,
    /// A partitioned table: a `ctid` alone does not name one of its rows.
    pub partitioned: bool,
    /// The leader's columns, in the leader's order, which is the order of tuple values.
    pub columns: Vec<ColumnMeta>,
    /// The follower's unique indexes on the leader's key columns, as positions in `columns`:
    /// a change that compares the columns of one of them names at most one row, so a
    /// set-based change of distinct keys touches one row per key.
    pub unique_keys: Vec<Vec<usize>>,
    /// The follower table has triggers that fire in the apply session (`ENABLE ALWAYS` or
    /// `ENABLE REPLICA`), which may see other tables: its changes keep their order with them.
    pub ordered: bool,
}

#[derive(Debug, Clone)]
pub(super) struct ColumnMeta {
    pub name: String,
    /// The name quoted for SQL.
    pub ident: String,
    /// Part of the leader's replica identity.
    pub key: bool,
    /// The follower's type has an equality operator; else rows are compared as text.
    pub has_eq: bool,
    /// The follower's type, which the column's statement parameters are declared as.
    pub type_oid: u32,
    /// The array type of the follower's type (0: none, as for array columns), which the
    /// column's arrays in set-based statements are declared as.
    pub array_oid: u32,
    /// The delimiter between elements of such an array literal (`,` but for `box`).
    pub delimiter: u8,
    /// Of an array column, whose type has no array type: the type's schema-qualified catalog
    /// name (`pg_catalog._bpchar`), which reads as the type without a typmod, so that a cast
    /// to it from `text` calls its input function as a parameter of that type would, and
    /// the column's typmod applies at assignment as it does to a parameter.
    pub array_cast: Option<String>,
}
