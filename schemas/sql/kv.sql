-- The kv table (PUT and DELETE /v1/kv/{key}): the last value of each key.
-- Applied at every start; idempotent.
--
-- A delete keeps the row with a null value, so that an older write still
-- in flight cannot bring the key back. The version is the write-back
-- stream entry id (milliseconds, sequence) of the write: a key always maps
-- to the same stream, so its versions are in the order the writes were
-- accepted.
create table if not exists kv (
    key bytea primary key,
    value bytea,
    version_ms bigint not null,
    version_seq bigint not null,
    updated_at timestamptz not null default now()
);
