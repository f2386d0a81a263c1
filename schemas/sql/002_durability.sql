-- What the database core needs to keep its promises through a Redis
-- master's loss. Applied at every start after 001; idempotent.

-- The newest version written back from each write-back partition. A
-- partition's stream created again after its Redis master lost it starts
-- its ids above this, so that a key's versions keep their order.
create table if not exists writeback_partitions (
    partition integer primary key check (partition >= 0),
    version_ms bigint not null,
    version_seq bigint not null
);

-- How many times each event reached the database: 1, unless a redelivery
-- (a crash between a commit and its acknowledgement) or a client's retry
-- brought it again. The first row is kept; this only counts. Added only
-- when missing, so that a start does not lock the table.
do $$
begin
    if not exists (
        select 1 from information_schema.columns
        where table_schema = current_schema() and table_name = 'events'
          and column_name = 'deliveries'
    ) then
        alter table events add column deliveries integer not null default 1;
    end if;
end
$$;
