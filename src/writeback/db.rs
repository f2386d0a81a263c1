//! Writing batches into PostgreSQL: one transaction per batch. Each
//! table's rows go in one binary COPY, encoded by the table
//! ([`Table::rows`]): into a session-local staging table, then merged by
//! the table's rule; an insert-once table's rows are copied straight into
//! the table, and only when that meets an id already stored (a redelivery)
//! go through staging and the merge. Either way a retried batch is
//! harmless.

use std::path::Path;
use std::pin::pin;

use bytes::Bytes;
use futures_util::SinkExt;
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Transaction};

use super::queue::{Entry, Version};
use super::table::{RecordRef, RowWriter, Table, Tables};

/// What the database core itself keeps, applied at every start
/// (idempotent), before the tables' own schemas.
pub const CORE_SCHEMA: &str = include_str!("../../schemas/sql/writeback.sql");

/// The advisory lock schema changes are made under ("millrace" in ASCII).
const SCHEMA_LOCK: i64 = 0x6d69_6c6c_7261_6365;

/// This core's newest version written back from each partition, never
/// moved back; a row per core and partition, so that cores sharing the
/// partitions do not wait on one another's row locks.
const ADVANCE_PARTITIONS: &str = "
insert into writeback_marks (partition, consumer, version_ms, version_seq)
select p, $4, ms, seq from unnest($1::integer[], $2::bigint[], $3::bigint[]) as u(p, ms, seq)
on conflict (partition, consumer) do update
set version_ms = excluded.version_ms, version_seq = excluded.version_seq
where (writeback_marks.version_ms, writeback_marks.version_seq)
    < (excluded.version_ms, excluded.version_seq)";

/// A connection to PostgreSQL with its staging tables.
pub struct Database {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
    tables: Tables,
}

/// What one batch wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Rows written (an event batch is a row per event).
    pub rows: u64,
    /// Entries no row could be made of, by index in the batch, and why:
    /// set aside, not written.
    pub rejected: Vec<(usize, String)>,
}

impl Database {
    /// Connect to `url` (a `postgres://` URL or key=value string), apply
    /// the core's schema and `tables`' own, check that each table has the
    /// columns its merge needs, and create the staging tables: the
    /// connection that writes batches. With `sslmode=require` in `url` the
    /// connection is TLS, the server's certificate checked against the
    /// system's CAs and `ca_file`'s, and its name against the host.
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        tables: &Tables,
    ) -> Result<Database, String> {
        let mut database = Database::connect_only(url, ca_file, tables).await?;
        database.prepare_tables().await?;
        Ok(database)
    }

    /// Connect to `url` without touching the schema: for queries only
    /// (read-through, settings), beside a writer that applies it. (Two
    /// sessions creating one table at once can fail.)
    pub async fn connect_only(
        url: &str,
        ca_file: Option<&Path>,
        tables: &Tables,
    ) -> Result<Database, String> {
        let (config, tls) = parse(url)?;
        let (client, driver) = if let Some(check) = tls {
            let (client, connection) = config
                .connect(tls_connector(ca_file, check)?)
                .await
                .map_err(|e| with_causes(&e))?;
            (client, tokio::task::spawn_local(drive(connection)))
        } else {
            let (client, connection) = config.connect(NoTls).await.map_err(|e| with_causes(&e))?;
            (client, tokio::task::spawn_local(drive(connection)))
        };
        Ok(Database {
            client,
            driver,
            tables: tables.clone(),
        })
    }

    /// Apply the core's schema and the tables' (one session at a time,
    /// under an advisory lock: two sessions creating one table at once can
    /// fail), check the tables, create the staging tables.
    async fn prepare_tables(&mut self) -> Result<(), String> {
        let schema = self
            .client
            .transaction()
            .await
            .map_err(|e| with_causes(&e))?;
        schema
            .batch_execute(&format!("select pg_advisory_xact_lock({SCHEMA_LOCK})"))
            .await
            .map_err(|e| with_causes(&e))?;
        schema
            .batch_execute(CORE_SCHEMA)
            .await
            .map_err(|e| with_causes(&e))?;
        for table in self.tables.all() {
            if !table.schema().is_empty() {
                schema.batch_execute(table.schema()).await.map_err(|e| {
                    format!("write-back table {}: {}", table.name(), with_causes(&e))
                })?;
            }
        }
        schema.commit().await.map_err(|e| with_causes(&e))?;
        for table in self.tables.all() {
            self.client
                .batch_execute(&table.check_sql())
                .await
                .map_err(|e| {
                    format!(
                        "write-back table {} lacks a column its records or merge fill ({}): {}",
                        table.name(),
                        table.copy_columns(),
                        with_causes(&e)
                    )
                })?;
            self.client
                .batch_execute(&table.create_staging_sql())
                .await
                .map_err(|e| format!("write-back table {}: {}", table.name(), with_causes(&e)))?;
        }
        Ok(())
    }

    /// The connection is gone; a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Write `entries` of the queue's `partitions` partitions in one
    /// transaction, with `newest`, the newest version of each partition
    /// among them, as core `consumer`'s marks. On error nothing of it is kept. An entry of no known
    /// table, or whose rows its table cannot make, is left out and named
    /// in [`Written::rejected`]: set aside rather than stop the queue.
    pub async fn write(
        &mut self,
        entries: &[Entry],
        partition_of: impl Fn(&[u8]) -> u16,
        newest: &[(u16, Version)],
        consumer: &str,
    ) -> Result<Written, tokio_postgres::Error> {
        let mut written = Written::default();
        // Each table's rows, in the order its entries came.
        let mut streams: Vec<Option<RowWriter>> = self.tables.all().iter().map(|_| None).collect();
        for (index, entry) in entries.iter().enumerate() {
            let Some((t, table)) = self.tables.find(entry.record.table.as_bytes()) else {
                let why = format!("no write-back table is called {:?}", entry.record.table);
                written.rejected.push((index, why));
                continue;
            };
            let writer = streams[t].get_or_insert_with(|| RowWriter::new(table));
            let (len, rows) = (writer.len(), writer.rows());
            let partition = partition_of(&entry.record.key);
            writer.start_record(table, partition, (entry.version.ms, entry.version.seq));
            let record = RecordRef {
                key: &entry.record.key,
                payload: entry.record.payload.as_deref(),
            };
            if let Err(why) = table.rows(record, writer) {
                writer.truncate(len, rows);
                written.rejected.push((index, why));
            }
        }
        let mut transaction = self.client.transaction().await?;
        for (table, stream) in self.tables.all().iter().zip(streams) {
            let Some(stream) = stream.filter(|s| !s.is_empty()) else {
                continue;
            };
            written.rows += stream.rows();
            write_table(&mut transaction, table, stream.finish()).await?;
        }
        if !newest.is_empty() {
            let partitions: Vec<i32> = newest.iter().map(|&(p, _)| i32::from(p)).collect();
            let ms: Vec<i64> = newest.iter().map(|(_, v)| v.ms).collect();
            let seq: Vec<i64> = newest.iter().map(|(_, v)| v.seq).collect();
            transaction
                .execute(ADVANCE_PARTITIONS, &[&partitions, &ms, &seq, &consumer])
                .await?;
        }
        transaction.commit().await?;
        Ok(written)
    }

    /// The newest version written back from each of `partitions`
    /// partitions (`None`: nothing yet). Rows from a partition beyond them
    /// mean the queue had more partitions than this core was started with:
    /// an error that says both numbers.
    pub async fn newest_committed(&self, partitions: u16) -> Result<Vec<Option<Version>>, String> {
        let rows = self
            .client
            .query(
                "select distinct on (partition) partition, version_ms, version_seq \
                 from writeback_marks order by partition, version_ms desc, version_seq desc",
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

/// One table's rows of a batch: COPY into staging and merge; for an
/// insert-once table, first straight into the table under a savepoint.
async fn write_table(
    transaction: &mut Transaction<'_>,
    table: &Table,
    copy: Vec<u8>,
) -> Result<(), tokio_postgres::Error> {
    let copy = Bytes::from(copy);
    if table.copies_directly() {
        // Almost always every row is new: copy straight into the table. A
        // redelivered or retried one makes the COPY fail; then the
        // savepoint rolls it back and the rows go through the merge.
        let fast = transaction.savepoint("direct").await?;
        match copy_in(&fast, &table.copy_sql(table.name()), copy.clone()).await {
            Ok(()) => return fast.commit().await,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => fast.rollback().await?,
            Err(e) => return Err(e),
        }
    }
    copy_in(transaction, &table.copy_sql(&table.staging_table()), copy).await?;
    transaction.execute(&table.merge_sql(), &[]).await?;
    Ok(())
}

/// Send `copy`, a whole binary COPY stream, with `sql`.
async fn copy_in(
    transaction: &Transaction<'_>,
    sql: &str,
    copy: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = transaction.copy_in::<_, Bytes>(sql).await?;
    let mut sink = pin!(sink);
    sink.send(copy).await?;
    sink.finish().await?;
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

/// What a TLS connection to PostgreSQL checks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Its certificate chain and its host name (`require`, `verify-full`).
    Full,
    /// Its certificate chain only (`verify-ca`).
    Chain,
}

/// `url` with libpq's `sslmode=verify-ca` or `verify-full` (which
/// tokio-postgres does not read) replaced by `require`, and the check that
/// mode asks for. Both the URL form (a query parameter) and the key=value
/// form (a `sslmode=...` word, quoted or not) are read.
fn split_sslmode(url: &str) -> (String, Option<Verify>) {
    let verify = |value: &str| match value.trim_matches('\'') {
        "verify-ca" => Some(Verify::Chain),
        "verify-full" => Some(Verify::Full),
        _ => None,
    };
    let mut found = None;
    let rewritten = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|param| match param.split_once('=') {
                        Some(("sslmode", value)) if verify(value).is_some() => {
                            found = verify(value);
                            "sslmode=require".to_owned()
                        }
                        _ => param.to_owned(),
                    })
                    .collect();
                format!("{base}?{}", params.join("&"))
            }
        }
    } else {
        url.split(' ')
            .map(|word| match word.split_once('=') {
                Some(("sslmode", value)) if verify(value).is_some() => {
                    found = verify(value);
                    "sslmode=require".to_owned()
                }
                _ => word.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rewritten, found)
}

/// The connection settings in `url`, and whether (and how) it is TLS:
/// `require` and `verify-full` check the chain and the host name,
/// `verify-ca` the chain; anything else is plain TCP.
fn parse(url: &str) -> Result<(tokio_postgres::Config, Option<Verify>), String> {
    let (rewritten, verify) = split_sslmode(url);
    let config: tokio_postgres::Config = rewritten
        .parse()
        .map_err(|e| format!("postgres_url: {e}"))?;
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(verify.unwrap_or(Verify::Full)),
        _ => None,
    };
    Ok((config, tls))
}

/// TLS 1.2 or later, the peer's chain verified against the default CAs
/// and `ca_file`'s, and its host name unless `verify` is [`Verify::Chain`].
fn tls_connector(ca_file: Option<&Path>, verify: Verify) -> Result<MakeTlsConnector, String> {
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
    let mut connector = MakeTlsConnector::new(builder.build());
    if verify == Verify::Chain {
        connector.set_callback(|config, _host| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// How the connections to `url` are made, in words for the log: millrace
/// negotiates nothing. Without `sslmode=require`, `verify-ca` or
/// `verify-full` (so with `prefer`, PostgreSQL's own default) they are
/// plain TCP, never a silent fallback.
pub fn transport(url: &str) -> &'static str {
    match parse(url) {
        Ok((_, Some(Verify::Full))) => {
            "TLS, the certificate and the host name verified (sslmode=require or verify-full)"
        }
        Ok((_, Some(Verify::Chain))) => {
            "TLS, the certificate verified, not the host name (sslmode=verify-ca)"
        }
        Ok((config, None)) if config.get_ssl_mode() == SslMode::Disable => {
            "plain TCP, no TLS (sslmode=disable)"
        }
        _ => {
            "plain TCP, no TLS: millrace uses TLS only with sslmode=require, verify-ca or verify-full, and takes prefer (the default) as disable"
        }
    }
}

/// Check that `url` parses and that a CA file comes only with TLS.
pub fn check_url(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    let (_, tls) = parse(url)?;
    match (ca_file, tls) {
        (Some(_), None) => Err(
            "postgres_ca_file is for TLS: add sslmode=require (or verify-ca, verify-full) to postgres_url"
                .into(),
        ),
        (Some(path), Some(verify)) => tls_connector(Some(path), verify).map(|_| ()),
        (None, _) => Ok(()),
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod sslmode_tests {
    use super::*;

    #[test]
    fn libpq_verify_modes_become_require_and_say_what_to_check() {
        let cases = [
            ("postgres://u@h/db?sslmode=verify-full", Some(Verify::Full)),
            (
                "postgres://u@h/db?application_name=a&sslmode=verify-ca",
                Some(Verify::Chain),
            ),
            ("postgres://u@h/db?sslmode=require", Some(Verify::Full)),
            ("postgres://u@h/db?sslmode=prefer", None),
            ("postgres://u@h/db", None),
            ("host=h user=u sslmode=verify-ca", Some(Verify::Chain)),
            ("host=h user=u sslmode='verify-full'", Some(Verify::Full)),
            ("host=h user=u sslmode=disable", None),
        ];
        for (url, expected) in cases {
            let (config, tls) = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(tls, expected, "{url}");
            if expected.is_some() {
                assert_eq!(config.get_ssl_mode(), SslMode::Require, "{url}");
            }
        }
        // A password that merely contains the words is left alone.
        let (rewritten, found) = split_sslmode("postgres://u:sslmode=verify-ca@h/db");
        assert_eq!(rewritten, "postgres://u:sslmode=verify-ca@h/db");
        assert_eq!(found, None);
        assert!(parse("postgres://u@h/db?sslmode=sometimes").is_err());
    }
}
