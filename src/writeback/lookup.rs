//! Read-through: the executors' cache misses, looked up in PostgreSQL by
//! the database core.
//!
//! Executors send misses over one bounded channel. The database core runs
//! one query at a time, `SELECT key, value, version FROM kv WHERE key =
//! ANY($1)`, for every key that missed since the last one started: misses
//! that come while a query runs wait for the next, and misses for a key
//! already in the next query join it, so concurrent misses for one key
//! share one lookup. A miss never joins the query already running: that
//! query may have read the row before a newer version was written back and
//! left the cache, and the miss would go back in time. Each result goes
//! back on its executor's channel, and the executor's eventfd wakes its
//! ring.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_postgres::Statement;

use super::db::Database;
use super::queue::{Cached, Version};
use crate::reactor::ring;

/// A miss, from an executor.
#[derive(Debug)]
pub struct Miss {
    /// The executor that asks.
    pub executor: usize,
    /// Its token for the waiting request.
    pub token: u64,
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

/// The query every lookup runs.
const SELECT: &str = "select key, value, version_ms, version_seq from kv where key = any($1)";

/// Who waits on each key of one lookup.
type Waiting = HashMap<Vec<u8>, Vec<(usize, u64)>>;

impl LookupService {
    /// Answer misses until every executor's end is dropped.
    /// A connect or query taking over `db_timeout` fails (503 for the
    /// waiting misses) and the connection is made again.
    pub async fn run(
        mut self,
        postgres_url: String,
        ca_file: Option<std::path::PathBuf>,
        db_timeout: Duration,
    ) {
        let mut connection: Option<(Rc<Database>, Statement)> = None;
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
                    let connecting = connect(&postgres_url, ca_file.as_deref());
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
                let keys: Vec<Vec<u8>> = running.keys().cloned().collect();
                queries += 1;
                keys_looked_up += keys.len() as u64;
                query = Some(match &connection {
                    Some((db, statement)) if !db.is_closed() => {
                        Box::pin(look_up(Rc::clone(db), statement.clone(), keys, db_timeout))
                    }
                    _ => Box::pin(async { Err("PostgreSQL is unavailable".to_string()) }),
                });
            }
            tokio::select! {
                miss = self.misses.recv(), if open => match miss {
                    None => open = false,
                    Some(miss) => {
                        misses += 1;
                        next.entry(miss.key).or_default().push((miss.executor, miss.token));
                    }
                },
                result = async { query.as_mut().expect("guarded").await }, if query.is_some() => {
                    query = None;
                    if result.is_err() {
                        connection = None;
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
        let mut rows: HashMap<&[u8], (Version, Option<&[u8]>)> = match &result {
            Ok(rows) => rows
                .iter()
                .map(|row| (row.key.as_slice(), (row.version, row.value.as_deref())))
                .collect(),
            Err(_) => HashMap::new(),
        };
        for (key, requesters) in waiting {
            let entry = match &result {
                Ok(_) => Ok(Cached::entry(rows.remove(key.as_slice()))),
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

/// A row of `kv`: a deleted key keeps its row, with no value.
struct Row {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    version: Version,
}

type LookupResult = Result<Vec<Row>, String>;

async fn connect(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Option<(Rc<Database>, Statement)> {
    let database = match Database::connect(url, ca_file).await {
        Ok(database) => database,
        Err(e) => {
            tracing::warn!(error = %e, "read-through cannot connect to PostgreSQL");
            return None;
        }
    };
    match database.client().prepare(SELECT).await {
        Ok(statement) => Some((Rc::new(database), statement)),
        Err(e) => {
            tracing::warn!(error = %e, "read-through cannot prepare its query");
            None
        }
    }
}

async fn look_up(
    database: Rc<Database>,
    statement: Statement,
    keys: Vec<Vec<u8>>,
    limit: Duration,
) -> LookupResult {
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
    let query = database.client().query(&statement, &params);
    let rows = match tokio::time::timeout(limit, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a read-through lookup failed");
            return Err(format!("the database lookup failed: {e}"));
        }
        Err(_) => {
            tracing::warn!(?limit, "a read-through lookup timed out");
            return Err("the database lookup timed out".into());
        }
    };
    Ok(rows
        .iter()
        .map(|row| Row {
            key: row.get(0),
            value: row.get(1),
            version: Version {
                ms: row.get(2),
                seq: row.get(3),
            },
        })
        .collect())
}
