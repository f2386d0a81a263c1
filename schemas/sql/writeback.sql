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

-- Each database core's newest version written back from each partition:
-- several cores share the partitions, and a row per core keeps their
-- commits from waiting on one another's row locks. A partition's mark is
-- the greatest over the cores.
create table if not exists writeback_marks (
    partition integer not null check (partition >= 0),
    consumer text not null,
    version_ms bigint not null,
    version_seq bigint not null,
    primary key (partition, consumer)
);

-- The marks of releases that kept one row per partition (in
-- writeback_partitions, no longer written), under no consumer.
insert into writeback_marks (partition, consumer, version_ms, version_seq)
select partition, '', version_ms, version_seq from writeback_partitions
on conflict do nothing;
