//! Read-through: the executors' cache misses, looked up in PostgreSQL by
//! the database core.
//!
//! Executors send misses over one bounded channel. The database core runs
//! one query at a time per cached table, `SELECT key, values..., version
//! FROM table WHERE key = ANY($1)` ([`Table::lookup_sql`]), for every key
//! of it that missed since the last one started: misses that come while a
//! query runs wait for the next, and misses for a key already in the next
//! query join it, so concurrent misses for one key share one lookup. A miss never joins the query already running: that
//! query may have read the row before a newer version was written back and
//! left the cache, and the miss would go back in time. Each result goes
//! back on its executor's channel, and the executor's eventfd wakes its
//! ring.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_postgres::Statement;

use super::db::Database;
use super::queue::{Cached, Version};
use super::table::{Table, Tables};
use crate::metrics::WritebackMetrics;
use crate::ring;

/// A miss, from an executor.
#[derive(Debug)]
pub struct Miss {
    /// The executor that asks.
    pub executor: usize,
    /// Its token for the waiting request.
    pub token: u64,
    /// The cached table, by its index among the server's tables.
    pub table: usize,
    /// The key.
    pub key: Vec<u8>,
}

/// The answer to a miss.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// The miss's token.
    pub token: u64,
    /// What the database holds, as a cache entry ([`Cached::entry`]): the
    /// value and its version, a delete's version, or no row.
    pub entry: Result<Vec<u8>, String>,
    /// Put the entry into the cache: set on one answer per key and lookup.
    pub fill: bool,
}

/// An executor's end: send misses, take answers when its eventfd says so.
pub struct LookupClient {
    misses: tokio::sync::mpsc::Sender<Miss>,
    found: mpsc::Receiver<Found>,
    ready: OwnedFd,
}

impl LookupClient {
    /// Send a miss; `false` when the database core has too many waiting
    /// (or is gone), and the request should be answered 503.
    pub fn ask(&self, miss: Miss) -> bool {
        self.misses.try_send(miss).is_ok()
    }

    /// The eventfd written when answers are waiting.
    pub fn ready_fd(&self) -> &OwnedFd {
        &self.ready
    }

    /// The answers waiting.
    pub fn take(&self) -> mpsc::TryIter<'_, Found> {
        self.found.try_iter()
    }
}

/// The database core's end.
pub struct LookupService {
    misses: tokio::sync::mpsc::Receiver<Miss>,
    executors: Vec<(mpsc::Sender<Found>, OwnedFd)>,
}

/// Channels for `executors` executors, with room for `capacity` misses in
/// flight to the database core.
pub fn channels(
    executors: usize,
    capacity: usize,
) -> io::Result<(LookupService, Vec<LookupClient>)> {
    let (miss_tx, miss_rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let mut clients = Vec::with_capacity(executors);
    let mut ends = Vec::with_capacity(executors);
    for _ in 0..executors {
        let (found_tx, found_rx) = mpsc::channel();
        let ready = ring::event_fd()?;
        ends.push((found_tx, ready.try_clone()?));
        clients.push(LookupClient {
            misses: miss_tx.clone(),
            found: found_rx,
            ready,
        });
    }
    Ok((
        LookupService {
            misses: miss_rx,
            executors: ends,
        },
        clients,
    ))
}

/// After a failed connect, misses are answered with an error for this long
/// before the next attempt, rather than each waiting on a connect.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Who waits on each key of one lookup, by (table, key).
type Waiting = HashMap<(usize, Vec<u8>), Vec<(usize, u64)>>;

/// A connection and each cached table's prepared query (by table index).
type Connection = (Rc<Database>, Vec<Option<Statement>>);

impl LookupService {
    /// Answer misses until every executor's end is dropped.
    /// A connect or query taking over `db_timeout` fails (503 for the
    /// waiting misses) and the connection is made again.
    pub async fn run(
        mut self,
        tables: Tables,
        postgres_url: String,
        ca_file: Option<std::path::PathBuf>,
        db_timeout: Duration,
        metrics: Arc<WritebackMetrics>,
    ) {
        let mut connection: Option<Connection> = None;
        let mut unavailable_until: Option<Instant> = None;
        let mut next: Waiting = HashMap::new();
        let mut running: Waiting = HashMap::new();
        let mut query: Option<std::pin::Pin<Box<dyn Future<Output = LookupResult>>>> = None;
        let mut open = true;
        // Misses taken, distinct keys looked up, queries run.
        let (mut misses, mut keys_looked_up, mut queries) = (0u64, 0u64, 0u64);
        while open || query.is_some() || !next.is_empty() {
            if query.is_none() && !next.is_empty() {
                if connection.as_ref().is_none_or(|(db, _)| db.is_closed())
                    && unavailable_until.is_none_or(|t| Instant::now() >= t)
                {
                    let connecting = connect(&tables, &postgres_url, ca_file.as_deref());
                    connection = tokio::time::timeout(db_timeout, connecting)
                        .await
                        .unwrap_or_else(|_| {
                            tracing::warn!(limit = ?db_timeout, "read-through: connecting to PostgreSQL timed out");
                            None
                        });
                    unavailable_until = connection
                        .is_none()
                        .then(|| Instant::now() + RECONNECT_PAUSE);
                }
                running = std::mem::take(&mut next);
                let mut keys: Vec<(usize, Vec<u8>)> = running.keys().cloned().collect();
                keys.sort_unstable();
                queries += 1;
                keys_looked_up += keys.len() as u64;
                metrics.lookup_queries.fetch_add(1, Ordering::Relaxed);
                metrics
                    .lookup_keys
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                query = Some(match &connection {
                    Some((db, statements)) if !db.is_closed() => Box::pin(look_up(
                        Rc::clone(db),
                        tables.clone(),
                        statements.clone(),
                        keys,
                        db_timeout,
                    )),
                    _ => Box::pin(async { Err("PostgreSQL is unavailable".to_string()) }),
                });
            }
            tokio::select! {
                miss = self.misses.recv(), if open => match miss {
                    None => open = false,
                    Some(miss) => {
                        misses += 1;
                        next.entry((miss.table, miss.key)).or_default().push((miss.executor, miss.token));
                    }
                },
                result = async { query.as_mut().expect("guarded").await }, if query.is_some() => {
                    query = None;
                    if result.is_err() {
                        connection = None;
                        metrics.lookup_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    self.answer(std::mem::take(&mut running), result);
                }
            }
        }
        tracing::info!(
            misses,
            keys = keys_looked_up,
            queries,
            "read-through stopped"
        );
    }

    /// Send each waiting miss its answer and wake the executors that got one.
    fn answer(&self, waiting: Waiting, result: LookupResult) {
        let mut woken = vec![false; self.executors.len()];
        let mut rows: HashMap<usize, HashMap<&[u8], &[u8]>> = HashMap::new();
        if let Ok(found) = &result {
            for row in found {
                rows.entry(row.table)
                    .or_default()
                    .insert(row.key.as_slice(), row.entry.as_slice());
            }
        }
        for ((table, key), requesters) in waiting {
            let entry = match &result {
                Ok(_) => Ok(rows
                    .get(&table)
                    .and_then(|found| found.get(key.as_slice()))
                    .map_or_else(|| Cached::entry(None), |entry| entry.to_vec())),
                Err(e) => Err(e.clone()),
            };
            for (i, (executor, token)) in requesters.into_iter().enumerate() {
                let Some((found, _)) = self.executors.get(executor) else {
                    continue;
                };
                let _ = found.send(Found {
                    token,
                    entry: entry.clone(),
                    fill: i == 0 && entry.is_ok(),
                });
                woken[executor] = true;
            }
        }
        for (executor, (_, ready)) in self.executors.iter().enumerate() {
            if woken[executor] {
                ring::signal(ready);
            }
        }
    }
}

/// A row found: its table, its key, and the row as a cache entry.
struct Row {
    table: usize,
    key: Vec<u8>,
    entry: Vec<u8>,
}

type LookupResult = Result<Vec<Row>, String>;

async fn connect(
    tables: &Tables,
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Option<Connection> {
    let database = match Database::connect(url, ca_file, tables).await {
        Ok(database) => database,
        Err(e) => {
            tracing::warn!(error = %e, "read-through cannot connect to PostgreSQL");
            return None;
        }
    };
    let mut statements = Vec::with_capacity(tables.all().len());
    for table in tables.all() {
        let Some(sql) = table.lookup_sql().filter(|_| table.is_cached()) else {
            statements.push(None);
            continue;
        };
        match database.client().prepare(&sql).await {
            Ok(statement) => statements.push(Some(statement)),
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "read-through cannot prepare its query");
                return None;
            }
        }
    }
    Some((Rc::new(database), statements))
}

/// Any column's value as the server sent it (binary format): the bytes a
/// record's payload holds for it.
struct RawField(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawField {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawField(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Keys as an array of the key column's type, each in its binary form
/// (the bytes of a `bytea` or a `text`), so one query serves either.
#[derive(Debug)]
struct RawKeys<'a>(&'a [&'a [u8]]);

impl tokio_postgres::types::ToSql for RawKeys<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        let tokio_postgres::types::Kind::Array(member) = ty.kind() else {
            return Err(format!("read-through keys bound to {ty}, not an array").into());
        };
        // One dimension, no nulls, the element type, its length, from 1.
        out.put_i32(1);
        out.put_i32(0);
        out.put_u32(member.oid());
        out.put_i32(i32::try_from(self.0.len())?);
        out.put_i32(1);
        for key in self.0 {
            out.put_i32(i32::try_from(key.len())?);
            out.put_slice(key);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Array(_))
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A row of a cached table as its cache entry: deleted (every value column
/// null) is a tombstone with its version; else the table's cached value.
fn entry_of(table: &Table, row: &tokio_postgres::Row) -> Result<Vec<u8>, tokio_postgres::Error> {
    let values = row.len() - 3;
    let fields: Vec<Option<RawField>> = (1..=values)
        .map(|i| row.try_get(i))
        .collect::<Result<_, _>>()?;
    let version = Version {
        ms: row.try_get(values + 1)?,
        seq: row.try_get(values + 2)?,
    };
    if fields.iter().all(Option::is_none) {
        return Ok(Cached::entry(Some((version, None))));
    }
    let fields: Vec<Option<&[u8]>> = fields
        .iter()
        .map(|f| f.as_ref().map(|f| f.0.as_slice()))
        .collect();
    let mut value = Vec::new();
    table.cache_value(&fields, &mut value);
    Ok(Cached::entry(Some((version, Some(&value)))))
}

/// Look `keys` up, each in its table (sorted by table).
async fn look_up(
    database: Rc<Database>,
    tables: Tables,
    statements: Vec<Option<Statement>>,
    keys: Vec<(usize, Vec<u8>)>,
    limit: Duration,
) -> LookupResult {
    let work = async {
        let mut found = Vec::new();
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let index = group[0].0;
            let (Some(table), Some(Some(statement))) = (tables.get(index), statements.get(index))
            else {
                return Err(format!("table {index} has no read-through"));
            };
            let keys: Vec<&[u8]> = group.iter().map(|(_, k)| k.as_slice()).collect();
            let keys = RawKeys(&keys);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
            let rows = database
                .client()
                .query(statement, &params)
                .await
                .map_err(|e| {
                    tracing::warn!(table = table.name(), error = %e, "a read-through lookup failed");
                    format!("the database lookup failed: {e}")
                })?;
            for row in &rows {
                let key: Vec<u8> = row
                    .try_get::<_, RawField>(0)
                    .map_err(|e| format!("the database lookup failed: {e}"))?
                    .0;
                let entry =
                    entry_of(table, row).map_err(|e| format!("the database lookup failed: {e}"))?;
                found.push(Row {
                    table: index,
                    key,
                    entry,
                });
            }
        }
        Ok(found)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(?limit, "a read-through lookup timed out");
            Err("the database lookup timed out".into())
        }
    }
}
