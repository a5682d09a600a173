CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE SCHEMA other;
CREATE TABLE kinds (id int PRIMARY KEY, t text, n numeric(10,2), b bytea, j jsonb,
  ts timestamptz, arr int[], m mood, d posint, big text);
ALTER TABLE kinds ALTER big SET STORAGE EXTERNAL;
CREATE TABLE other."Weird Name" (k bigserial PRIMARY KEY, "v V" varchar(20));
CREATE TABLE full_ri (a int, b text);
ALTER TABLE full_ri REPLICA IDENTITY FULL;
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int REFERENCES parent (id));
CREATE PUBLICATION pub FOR ALL TABLES;
SELECT pg_create_logical_replication_slot('cap', 'pgoutput');
SELECT pg_replication_origin_create('upstream');
-- then, as separate statements (each its own transaction unless in BEGIN/COMMIT):
SET timezone = 'UTC';
INSERT INTO kinds VALUES (1, 'hello', 12.34, '\xdeadbeef', '{"a": [1, null]}', '2024-01-02 03:04:05.678901+00',
  '{1,2,3}', 'happy', 7, repeat('x', 3000));
INSERT INTO kinds (id) VALUES (2);
UPDATE kinds SET t = 'changed' WHERE id = 1;
UPDATE kinds SET id = 10 WHERE id = 2;
DELETE FROM kinds WHERE id = 10;
INSERT INTO other."Weird Name" ("v V") VALUES ('ä ünïcode');
INSERT INTO full_ri VALUES (1, 'one'), (2, NULL);
UPDATE full_ri SET b = 'uno' WHERE a = 1;
DELETE FROM full_ri WHERE a = 2;
INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1);
TRUNCATE full_ri;
TRUNCATE parent CASCADE;
TRUNCATE other."Weird Name" RESTART IDENTITY;
TRUNCATE kinds, full_ri RESTART IDENTITY CASCADE;
SELECT pg_logical_emit_message(true, 'walship', 'hello');
SELECT pg_logical_emit_message(false, 'walship.nt', '\x00ff01'::bytea);
SELECT pg_replication_origin_session_setup('upstream');
BEGIN;
SELECT pg_replication_origin_xact_setup('1/23456789', '2024-05-06 07:08:09+00');
INSERT INTO parent VALUES (2);
COMMIT;
SELECT pg_replication_origin_session_reset();
