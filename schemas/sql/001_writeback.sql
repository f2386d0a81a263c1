-- The tables the database core writes. Applied at every start; idempotent.

-- The last value of each key. A delete keeps the row with a null value, so
-- that an older write still in flight cannot bring the key back. The
-- version is the write-back stream entry id (milliseconds, sequence) of
-- the write: a key always maps to the same stream, so its versions are in
-- the order the writes were accepted.
create table if not exists kv (
    key bytea primary key,
    value bytea,
    version_ms bigint not null,
    version_seq bigint not null,
    updated_at timestamptz not null default now()
);

-- Events, once each: the client's 16-byte id is the key.
create table if not exists events (
    client_id bytea primary key check (length(client_id) = 16),
    key bytea not null,
    kind integer not null,
    timestamp_us bigint not null,
    payload bytea not null,
    written_at timestamptz not null default now()
);
