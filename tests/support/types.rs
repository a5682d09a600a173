//! A table with a column of every built-in type family, and a row that exercises them.

pub const TYPES_SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);
CREATE TABLE types (
    id serial PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, num numeric, num_p numeric(12, 3), f4 float4, f8 float8,
    b bool, t text, vc varchar(20), ch char(5), by bytea,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    js json, jb jsonb, ia int[], ta text[], u uuid, m mood, dom posint, comp pair,
    r4 int4range, rtz tstzrange, ip inet, cn cidr, mac macaddr, x xml, mon money,
    tsv tsvector, bt bit(4), vb varbit, pt point
);
-- Rows found by comparing every column: equality of each type, or text where there is none.
CREATE TABLE types_full (LIKE types);
ALTER TABLE types_full REPLICA IDENTITY FULL;
"#;

pub const TYPES_ROW: &str = r#"
    -32768, 2147483647, -9223372036854775808, 'NaN', 123456789.125, 'NaN', 'Infinity', false,
     E'tab\there\nnew line\\back\rcr "dq" ''sq'' ünï 😀', 'varchar', 'ab', '\x00ff5c0a0d09'::bytea,
     '2024-02-29', '23:59:59.999999', '12:00:00+05:30', '2000-01-01 00:00:00',
     '2024-06-01 12:34:56.789+02', '1 year 2 mons 3 days 04:05:06.789',
     '{"a": [1, 2, {"b": null}], "s": "x\ty"}', '{"a": [1, 2, {"b": null}], "s": "x\ty"}',
     '{1,NULL,3}', '{"a b","with \"quote\"",NULL,"NULL","back\\slash","comma,here"}',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 42, ROW(1, 'x "y"\z'),
     '[1,10)', '[2024-01-01 00:00+00,2024-02-01 00:00+00)', '192.168.0.1/24', '10.0.0.0/8',
     '08:00:2b:01:02:03', '<a b="1">text &amp; more</a>', 1234.56,
     'a fat cat:3 sat', B'1010', B'101', '(1.5,-2)'"#;
