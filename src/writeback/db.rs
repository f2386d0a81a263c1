//! Writing batches into PostgreSQL: one transaction per batch. Key-value
//! rows are copied in binary into a session-local staging table and merged
//! with `INSERT ... ON CONFLICT` (newest version wins). Events are copied
//! straight into their table, and only when that meets an id already
//! stored (a redelivery) go through staging and `ON CONFLICT DO NOTHING`.
//! Either way a retried batch is harmless.

use std::path::Path;
use std::pin::pin;

use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Transaction};

use super::queue::{Entry, Record, Version};
use crate::payload::{BatchLimits, schema, verify_event_batch};

/// The schema files, applied in order at every start (each is idempotent).
pub const SCHEMA: &[(&str, &str)] = &[
    (
        "001_writeback.sql",
        include_str!("../../schemas/sql/001_writeback.sql"),
    ),
    (
        "002_durability.sql",
        include_str!("../../schemas/sql/002_durability.sql"),
    ),
];

/// Session-local staging tables, emptied at every commit.
const STAGING: &str = "
create temp table if not exists kv_stage (
    key bytea, value bytea, version_ms bigint, version_seq bigint
) on commit delete rows;
create temp table if not exists events_stage (
    client_id bytea, key bytea, kind integer, timestamp_us bigint, payload bytea
) on commit delete rows;
";

/// The newest version of each key wins, and never over a newer one already stored.
const MERGE_KV: &str = "
insert into kv (key, value, version_ms, version_seq)
select distinct on (key) key, value, version_ms, version_seq
from kv_stage
order by key, version_ms desc, version_seq desc
on conflict (key) do update
set value = excluded.value, version_ms = excluded.version_ms,
    version_seq = excluded.version_seq, updated_at = now()
where (kv.version_ms, kv.version_seq) < (excluded.version_ms, excluded.version_seq)";

/// An event already stored (a redelivery, a client's retry) is left
/// alone, and its `deliveries` counted; so is one that comes twice in a batch.
const MERGE_EVENTS: &str = "
insert into events (client_id, key, kind, timestamp_us, payload, deliveries)
select distinct on (client_id) client_id, key, kind, timestamp_us, payload,
       count(*) over (partition by client_id)
from events_stage
order by client_id
on conflict (client_id) do update set deliveries = events.deliveries + excluded.deliveries";

/// Each partition's newest version written back, never moved back.
const ADVANCE_PARTITIONS: &str = "
insert into writeback_partitions (partition, version_ms, version_seq)
select * from unnest($1::integer[], $2::bigint[], $3::bigint[])
on conflict (partition) do update
set version_ms = excluded.version_ms, version_seq = excluded.version_seq
where (writeback_partitions.version_ms, writeback_partitions.version_seq)
    < (excluded.version_ms, excluded.version_seq)";

/// A connection to PostgreSQL with its staging tables.
pub struct Database {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Database {
    /// Connect to `url` (a `postgres://` URL or key=value string), apply
    /// the schema and create the staging tables. With `sslmode=require` in
    /// `url` the connection is TLS, the server's certificate checked against
    /// the system's CAs and `ca_file`'s, and its name against the host.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Database, String> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| format!("postgres_url: {e}"))?;
        let (client, driver) = if config.get_ssl_mode() == SslMode::Require {
            let (client, connection) = config
                .connect(tls_connector(ca_file)?)
                .await
                .map_err(|e| with_causes(&e))?;
            (client, tokio::task::spawn_local(drive(connection)))
        } else {
            let (client, connection) = config.connect(NoTls).await.map_err(|e| with_causes(&e))?;
            (client, tokio::task::spawn_local(drive(connection)))
        };
        let database = Database { client, driver };
        for (_, sql) in SCHEMA {
            database
                .client
                .batch_execute(sql)
                .await
                .map_err(|e| with_causes(&e))?;
        }
        database
            .client
            .batch_execute(STAGING)
            .await
            .map_err(|e| with_causes(&e))?;
        Ok(database)
    }

    /// The connection is gone; a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Write `entries` in one transaction, with `newest`, the newest
    /// version of each partition among them, and return the rows written
    /// (an event batch is a row per event). On error nothing of it is kept.
    /// Event batches that fail verification were set aside at the door and
    /// cannot be here; one that does (a corrupted entry) is skipped with a
    /// warning rather than stop the queue.
    pub async fn write(
        &mut self,
        entries: &[Entry],
        newest: &[(u16, Version)],
    ) -> Result<u64, tokio_postgres::Error> {
        let mut transaction = self.client.transaction().await?;
        let kv: Vec<&Entry> = entries
            .iter()
            .filter(|e| matches!(e.record, Record::Put { .. } | Record::Delete { .. }))
            .collect();
        let limits = BatchLimits::unlimited();
        let events: Vec<schema::Event<'_>> = entries
            .iter()
            .filter_map(|e| match &e.record {
                Record::Events { batch, .. } => match verify_event_batch(batch, &limits) {
                    Ok(batch) => Some(batch),
                    Err(why) => {
                        tracing::warn!(id = %String::from_utf8_lossy(&e.id), "skipping an unreadable event batch: {why}");
                        None
                    }
                },
                _ => None,
            })
            .flat_map(|batch| batch.events().iter())
            .collect();
        let rows = (kv.len() + events.len()) as u64;
        if !kv.is_empty() {
            let sink = transaction
                .copy_in("copy kv_stage (key, value, version_ms, version_seq) from stdin binary")
                .await?;
            let mut writer = pin!(BinaryCopyInWriter::new(
                sink,
                &[Type::BYTEA, Type::BYTEA, Type::INT8, Type::INT8]
            ));
            for entry in kv {
                let (key, value): (&[u8], Option<&[u8]>) = match &entry.record {
                    Record::Put { key, value } => (key, Some(value)),
                    Record::Delete { key } => (key, None),
                    Record::Events { .. } => unreachable!("filtered above"),
                };
                let row: [&(dyn ToSql + Sync); 4] =
                    [&key, &value, &entry.version.ms, &entry.version.seq];
                writer.as_mut().write(&row).await?;
            }
            writer.finish().await?;
            transaction.execute(MERGE_KV, &[]).await?;
        }
        if !events.is_empty() {
            // Almost always every event is new: copy straight into the table.
            // A redelivered or retried one makes the COPY fail; then the
            // savepoint rolls it back and the events go through the merge.
            let fast = transaction.savepoint("events_direct").await?;
            match copy_events(&fast, "events", &events).await {
                Ok(()) => fast.commit().await?,
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    fast.rollback().await?;
                    copy_events(&transaction, "events_stage", &events).await?;
                    transaction.execute(MERGE_EVENTS, &[]).await?;
                }
                Err(e) => return Err(e),
            }
        }
        if !newest.is_empty() {
            let partitions: Vec<i32> = newest.iter().map(|&(p, _)| i32::from(p)).collect();
            let ms: Vec<i64> = newest.iter().map(|(_, v)| v.ms).collect();
            let seq: Vec<i64> = newest.iter().map(|(_, v)| v.seq).collect();
            transaction
                .execute(ADVANCE_PARTITIONS, &[&partitions, &ms, &seq])
                .await?;
        }
        transaction.commit().await?;
        Ok(rows)
    }

    /// The newest version written back from each of `partitions`
    /// partitions (`None`: nothing yet). Rows from a partition beyond them
    /// mean the queue had more partitions than this core was started with:
    /// an error that says both numbers.
    pub async fn newest_committed(&self, partitions: u16) -> Result<Vec<Option<Version>>, String> {
        let rows = self
            .client
            .query(
                "select partition, version_ms, version_seq from writeback_partitions",
                &[],
            )
            .await
            .map_err(|e| with_causes(&e))?;
        let mut newest = vec![None; usize::from(partitions)];
        for row in rows {
            let partition: i32 = row.get(0);
            let version = Version {
                ms: row.get(1),
                seq: row.get(2),
            };
            match usize::try_from(partition)
                .ok()
                .and_then(|p| newest.get_mut(p))
            {
                Some(slot) => *slot = Some(version),
                None => {
                    return Err(format!(
                        "PostgreSQL holds writes from write-back partition {partition}, but this \
                         database core was started with {partitions} partitions: start it with \
                         the count the servers use (writeback_partitions)"
                    ));
                }
            }
        }
        Ok(newest)
    }

    /// The client, for queries outside the write path (read-through, tests).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Binary COPY of `events` into `table`.
async fn copy_events(
    transaction: &Transaction<'_>,
    table: &str,
    events: &[schema::Event<'_>],
) -> Result<(), tokio_postgres::Error> {
    let sink = transaction
        .copy_in(&format!(
            "copy {table} (client_id, key, kind, timestamp_us, payload) from stdin binary"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::BYTEA,
            Type::BYTEA,
            Type::INT4,
            Type::INT8,
            Type::BYTEA
        ]
    ));
    for event in events {
        let client_id: &[u8] = &event.client_id().0;
        let key: &[u8] = event.key().as_bytes();
        let payload: &[u8] = event.payload().map_or(&[], |p| p.bytes());
        let (kind, timestamp_us) = (event.kind(), event.timestamp_us());
        let row: [&(dyn ToSql + Sync); 5] = [&client_id, &key, &kind, &timestamp_us, &payload];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// An error and its causes, such as "error performing TLS handshake: ...
/// certificate verify failed": the first line alone rarely says what to fix.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

/// Run a connection until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "the PostgreSQL connection ended");
    }
}

/// TLS 1.2 or later, the peer verified against the default CAs and
/// `ca_file`'s.
fn tls_connector(ca_file: Option<&Path>) -> Result<MakeTlsConnector, String> {
    let tls = |e: openssl::error::ErrorStack| format!("TLS set-up: {e}");
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(tls)?;
    if let Some(path) = ca_file {
        builder
            .set_ca_file(path)
            .map_err(|e| format!("postgres_ca_file {}: {e}", path.display()))?;
    }
    Ok(MakeTlsConnector::new(builder.build()))
}

/// Check that `url` parses and that a CA file comes only with TLS.
pub fn check_url(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("postgres_url: {e}"))?;
    if ca_file.is_some() && config.get_ssl_mode() != SslMode::Require {
        return Err("postgres_ca_file is for TLS: add sslmode=require to postgres_url".into());
    }
    if let Some(path) = ca_file {
        tls_connector(Some(path))?;
    }
    Ok(())
}

impl Drop for Database {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
