-- The events table (POST /v1/events): each event once, the client's
-- 16-byte id its key. Applied at every start; idempotent.
create table if not exists events (
    client_id bytea primary key check (length(client_id) = 16),
    key bytea not null,
    kind integer not null,
    timestamp_us bigint not null,
    payload bytea not null,
    written_at timestamptz not null default now()
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
