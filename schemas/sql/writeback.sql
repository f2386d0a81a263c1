-- What the database core keeps for itself. Applied at every start, before
-- the write-back tables' own schemas; idempotent.

-- The newest version written back from each write-back partition. A
-- partition's stream created again after its Redis master lost it starts
-- its ids above this, so that a key's versions keep their order.
create table if not exists writeback_partitions (
    partition integer primary key check (partition >= 0),
    version_ms bigint not null,
    version_seq bigint not null
);
