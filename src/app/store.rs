//! [`Store`]: the write-back queue and the cache beside it, as a handler
//! uses them. Each call sends its first command at once (so a handler can
//! build it from the request's borrowed bytes and answer later) and
//! returns a future for the outcome; the future owns what it needs.
//!
//! - [`Store::append`]: a record onto the queue of an uncached table.
//! - [`Store::write`]: a value (or a delete) of a cached table into the
//!   cache and onto the queue in one script, optionally under
//!   preconditions checked by that script (compare-and-set).
//! - [`Store::read`]: a cached table's key from the cache, read through
//!   from PostgreSQL on a miss (the row put back into the cache unless a
//!   newer write may have been released meanwhile).
//!
//! With `ack_replicas`, a write is confirmed by `WAIT` before its future
//! is ready: one `WAIT` per partition per turn of the executor covers
//! every write of that partition whose script answered in the turn (a
//! `WAIT` counts replicas that have everything sent before it on the
//! connection).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::metrics::ShedCause;
use crate::redis::command::Command;
use crate::redis::resp::OwnedReply;
use crate::runtime::{Failure, Io, RedisCall};
use crate::writeback::queue::{Cached, Caps, Preconditions, Queue, Version};
use crate::writeback::table::{Table, Tables};

/// How writes are queued: shared by every core.
#[derive(Clone, Debug)]
pub struct WritePath {
    /// The partitions writes are queued on.
    pub queue: Queue,
    /// How full one partition may get before writes to it get 503.
    pub caps: Caps,
    /// TTL of a value read from the database into the cache, in milliseconds.
    pub cache_ttl_ms: u64,
    /// TTL of a cached miss (no row, or a deleted one), in milliseconds.
    pub miss_ttl_ms: u64,
    /// Replicas that must confirm a write (`WAIT`) before it is done; 0: none.
    pub ack_replicas: u32,
    /// How long `WAIT` waits for them.
    pub ack_timeout: Duration,
}

/// Times a conditional write reads the database and tries again when the
/// key's cache keeps changing under it.
const WRITE_IF_TRIES: u8 = 3;

/// A refusal asks for the cluster's layout again when it is older than
/// this, so that a replica joining the master is seen within about a second.
const REPLICA_RECHECK: Duration = Duration::from_secs(1);

/// Why a write was not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The precondition did not hold; the key's current version (`None`:
    /// it has no value). Nothing was written.
    PreconditionFailed(Option<String>),
    /// Not queued, saying why: the backlog at its cap, Redis at
    /// `maxmemory`, unreachable or overloaded, a master without the
    /// replicas `ack_replicas` asks for. Nothing was written, except when
    /// Redis's reply was lost (a timeout, a cut connection): then the
    /// write may have landed (writes are idempotent, so a retry is safe).
    Unavailable(String),
    /// Queued on the primary but not confirmed by `ack_replicas` replicas
    /// in time: it may still land.
    Unconfirmed {
        /// Its version.
        version: String,
        /// Why it is not confirmed.
        why: String,
    },
    /// The key or the record does not fit the table's columns.
    BadInput(String),
    /// The handler asked for something the table cannot do (no such
    /// table, a read of an uncached one): a mistake in the service.
    Invalid(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::PreconditionFailed(None) => {
                f.write_str("precondition failed: the key has no value")
            }
            WriteError::PreconditionFailed(Some(v)) => {
                write!(f, "precondition failed: the current version is {v}")
            }
            WriteError::Unavailable(why) => {
                write!(f, "the write could not be queued: {}", in_words(why))
            }
            WriteError::Unconfirmed { why, .. } => write!(
                f,
                "the write is queued on the primary but not confirmed: {why}; it may still be \
                 written (a retry is safe: writes are idempotent)"
            ),
            WriteError::BadInput(why) | WriteError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Why a read found nothing to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Redis or the database could not answer.
    Unavailable(String),
    /// The key does not fit the table's key column.
    BadInput(String),
    /// The handler asked for something the table cannot do.
    Invalid(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Unavailable(why) => write!(f, "could not be read: {}", in_words(why)),
            ReadError::BadInput(why) | ReadError::Invalid(why) => f.write_str(why),
        }
    }
}

/// A Redis refusal an operator acts on, in words.
fn in_words(why: &str) -> &str {
    if why.starts_with("OOM") {
        "Redis is at maxmemory and can evict nothing that is not yet written back; \
         it frees memory as the database core drains the queue"
    } else {
        why
    }
}

/// A key's state as the cache (or the database) has it: an entry as the
/// scripts write it; read it with [`Found::cached`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    entry: Option<Vec<u8>>,
}

impl Found {
    /// What it says of the key.
    pub fn cached(&self) -> Result<Cached<'_>, &'static str> {
        Cached::from_entry(self.entry.as_deref())
    }

    /// The value, if the key has one, without copying it.
    pub fn into_value(self) -> Option<Vec<u8>> {
        let mut entry = self.entry?;
        let start = match Cached::from_entry(Some(&entry)) {
            Ok(Cached::Value { value, .. }) => entry.len() - value.len(),
            _ => return None,
        };
        entry.drain(..start);
        Some(entry)
    }
}

/// A queue's and cache's handle for one core; cheap to clone.
#[derive(Clone)]
pub struct Store {
    io: Io,
    inner: Rc<Inner>,
}

struct Inner {
    path: Option<Arc<WritePath>>,
    tables: Tables,
    /// This turn's `WAIT` groups not yet sent, by partition.
    confirming: RefCell<HashMap<u16, Rc<Group>>>,
}

impl Store {
    /// A core's store: its writes go through `path` (`None`: no Redis
    /// Cluster, every call fails) to `tables`.
    pub fn new(io: Io, path: Option<Arc<WritePath>>, tables: Tables) -> Store {
        Store {
            io,
            inner: Rc::new(Inner {
                path,
                tables,
                confirming: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// The core's operations.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The queue's settings, if writes can be queued.
    pub fn path(&self) -> Option<&WritePath> {
        self.inner.path.as_deref()
    }

    fn table(&self, name: &str) -> Result<(usize, &Table), String> {
        self.inner
            .tables
            .find(name.as_bytes())
            .ok_or_else(|| format!("no write-back table is called {name:?}"))
    }

    fn table_at(&self, index: usize) -> Result<&Table, String> {
        self.inner
            .tables
            .get(index)
            .ok_or_else(|| format!("no write-back table {index}"))
    }

    fn path_or_unavailable(&self) -> Result<&WritePath, String> {
        self.inner
            .path
            .as_deref()
            .ok_or_else(|| Failure::NoRedis.to_string())
    }

    /// Queue `payload` as a record of uncached table `table`, whose
    /// partition `key` picks; `rows` is what it becomes in the database
    /// (counted in `/v1/stats`). Ready with its version once Redis has it
    /// (and, with `ack_replicas`, its replicas).
    pub fn append(
        &self,
        table: &str,
        key: &[u8],
        payload: &[u8],
        rows: u32,
    ) -> impl Future<Output = Result<Version, WriteError>> + 'static {
        let sent = self.send_append(table, key, payload, rows);
        let store = self.clone();
        async move {
            let (call, partition) = sent?;
            store.settle(call.await, partition).await
        }
    }

    fn send_append(
        &self,
        name: &str,
        key: &[u8],
        payload: &[u8],
        rows: u32,
    ) -> Result<(RedisCall, u16), WriteError> {
        let (_, table) = self.table(name).map_err(WriteError::Invalid)?;
        if table.is_cached() {
            return Err(WriteError::Invalid(format!(
                "{name} is cached: write its keys with Store::write"
            )));
        }
        table.check_record(payload).map_err(WriteError::BadInput)?;
        let path = self
            .path_or_unavailable()
            .map_err(WriteError::Unavailable)?;
        let partition = path.queue.partition_of(key);
        self.refuse_unconfirmable(partition)
            .map_err(WriteError::Unavailable)?;
        let command = path
            .queue
            .append_record(name, key, payload, rows, path.caps)
            .command();
        Ok((self.io.redis(command), partition))
    }

    /// Write `value` to `key` of cached table `table` (`None`: delete it),
    /// if `preconditions` hold: the cache and the queue in one script.
    /// Ready with the write's version once Redis has it (and, with
    /// `ack_replicas`, its replicas).
    pub fn write(
        &self,
        table: &str,
        key: &[u8],
        value: Option<&[u8]>,
        preconditions: &Preconditions,
    ) -> impl Future<Output = Result<Version, WriteError>> + 'static {
        let sent = self.send_write(table, key, value, preconditions);
        let store = self.clone();
        async move {
            match sent? {
                Issued::Plain(call, partition) => store.settle(call.await, partition).await,
                // Boxed: the rare path's state would grow every write's future.
                Issued::Conditional(call, write) => Box::pin(store.write_if(call, *write)).await,
            }
        }
    }

    fn send_write(
        &self,
        name: &str,
        key: &[u8],
        value: Option<&[u8]>,
        preconditions: &Preconditions,
    ) -> Result<Issued, WriteError> {
        let (index, table) = self.table(name).map_err(WriteError::Invalid)?;
        if !table.is_cached() {
            return Err(WriteError::Invalid(format!(
                "{name} is not cached: queue its records with Store::append"
            )));
        }
        table.check_key(key).map_err(WriteError::BadInput)?;
        if let Some(value) = value {
            table.check_record(value).map_err(WriteError::BadInput)?;
        }
        let path = self
            .path_or_unavailable()
            .map_err(WriteError::Unavailable)?;
        let partition = path.queue.partition_of(key);
        self.refuse_unconfirmable(partition)
            .map_err(WriteError::Unavailable)?;
        let cache = path.queue.cache_key(name, key);
        if preconditions.is_empty() {
            let script = match value {
                Some(value) => path.queue.put(name, key, value, &cache, path.caps),
                None => path.queue.delete(name, key, &cache, path.caps),
            };
            return Ok(Issued::Plain(self.io.redis(script.command()), partition));
        }
        let write = ConditionalWrite {
            table: index,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            preconditions: preconditions.clone(),
            partition,
        };
        let script = write.script(path, name, None);
        Ok(Issued::Conditional(self.io.redis(script), Box::new(write)))
    }

    /// A conditional write's script answered `MISS` (the key is not
    /// cached): read the database, then send the script again with what it
    /// holds; a few times at most.
    async fn write_if(
        &self,
        mut call: RedisCall,
        write: ConditionalWrite,
    ) -> Result<Version, WriteError> {
        let mut tries = 1;
        loop {
            match call.await {
                Ok(OwnedReply::Error(e)) if e.starts_with(b"MISS") => {}
                reply => return self.settle(reply, write.partition).await,
            }
            if !self.io.has_read_through() {
                return Err(WriteError::Unavailable(
                    "the key is not cached, and a conditional write on it needs read-through \
                     from the database core (postgres_url)"
                        .into(),
                ));
            }
            if tries >= WRITE_IF_TRIES {
                return Err(WriteError::Unavailable(
                    "the key's cache kept changing while it was read from the database; retry"
                        .into(),
                ));
            }
            let table = self
                .table_at(write.table)
                .map_err(WriteError::Invalid)?
                .name();
            let (known, counter) = self
                .look_up(write.table, &write.key)
                .await
                .map_err(|e| WriteError::Unavailable(e.to_string()))?;
            let path = self
                .path_or_unavailable()
                .map_err(WriteError::Unavailable)?;
            call = self
                .io
                .redis(write.script(path, table, Some((&known, counter))));
            tries += 1;
        }
    }

    /// What a write's script answered, confirmed by replicas if asked.
    async fn settle(
        &self,
        reply: Result<OwnedReply, Failure>,
        partition: u16,
    ) -> Result<Version, WriteError> {
        let version = self.written(reply)?;
        if self.inner.path.as_ref().is_none_or(|p| p.ack_replicas == 0) {
            return Ok(version);
        }
        // Boxed: only writes that replicas confirm carry this state.
        Box::pin(self.confirmed(version, partition)).await
    }

    /// The version a write's script answered, or why it was not written.
    fn written(&self, reply: Result<OwnedReply, Failure>) -> Result<Version, WriteError> {
        let id = match reply {
            Ok(OwnedReply::Bulk(id)) => id,
            Ok(OwnedReply::Error(e)) => {
                if e.starts_with(b"BACKLOG") {
                    self.io.count_shed(ShedCause::Backlog);
                } else if e.starts_with(b"OOM") {
                    self.io.count_shed(ShedCause::RedisMemory);
                }
                let e = String::from_utf8_lossy(&e);
                return Err(match e.strip_prefix("PRECONDITION") {
                    Some(current) => {
                        let current = current.trim();
                        WriteError::PreconditionFailed(
                            (!current.is_empty()).then(|| current.to_string()),
                        )
                    }
                    None => WriteError::Unavailable(e.into_owned()),
                });
            }
            Ok(other) => {
                return Err(WriteError::Unavailable(format!(
                    "Redis answered the write with {other:?}"
                )));
            }
            Err(failure) => return Err(WriteError::Unavailable(failure.to_string())),
        };
        let version = Version::parse(&id).ok_or_else(|| {
            WriteError::Unavailable(format!(
                "Redis answered the write with a version that is not one: {}",
                String::from_utf8_lossy(&id)
            ))
        });
        crate::runtime::recycle(id);
        version
    }

    /// Wait until `ack_replicas` replicas have write `version` of
    /// `partition`, or say why they did not.
    async fn confirmed(&self, version: Version, partition: u16) -> Result<Version, WriteError> {
        let replicas = self.inner.path.as_ref().map_or(0, |p| p.ack_replicas);
        let unconfirmed = |why: String| WriteError::Unconfirmed {
            version: version.to_string(),
            why,
        };
        // A master that lost its replicas while the script ran (one just
        // promoted) cannot confirm: say so now rather than wait
        // ack_timeout_ms for a WAIT that cannot succeed.
        if let Err(why) = self.refuse_unconfirmable(partition) {
            return Err(unconfirmed(why));
        }
        match self.confirm(partition).await {
            Ok(n) if n >= i64::from(replicas) => Ok(version),
            Ok(n) => Err(unconfirmed(format!(
                "{n} of {replicas} replicas confirmed it in time"
            ))),
            Err(why) => Err(unconfirmed(why)),
        }
    }

    /// With `ack_replicas`, whether the layout says `partition`'s master
    /// has that many online replicas; if not, why (and the layout is asked
    /// for again, at most once a second).
    fn refuse_unconfirmable(&self, partition: u16) -> Result<(), String> {
        let Some(path) = self.inner.path.as_deref() else {
            return Ok(());
        };
        if path.ack_replicas == 0 {
            return Ok(());
        }
        let Some(online) = self.io.online_replicas(path.queue.stream(partition)) else {
            return Ok(());
        };
        if online >= path.ack_replicas as usize {
            return Ok(());
        }
        self.io.refresh_layout_if_older(REPLICA_RECHECK);
        Err(format!(
            "the partition's master has {online} online replicas, fewer than ack_replicas ({})",
            path.ack_replicas
        ))
    }

    /// How many replicas have this turn's writes to `partition`: one
    /// `WAIT`, sent once the turn's tasks have run, answers every caller
    /// of the turn.
    fn confirm(&self, partition: u16) -> GroupWait {
        let mut open = self.inner.confirming.borrow_mut();
        if let Some(group) = open.get(&partition) {
            return GroupWait(Rc::clone(group));
        }
        let group = Rc::new(Group::default());
        open.insert(partition, Rc::clone(&group));
        drop(open);
        let store = self.clone();
        let driver = Rc::clone(&group);
        self.io.spawn(async move {
            store.io.end_of_turn().await;
            store.inner.confirming.borrow_mut().remove(&partition);
            let outcome = match store.inner.path.as_deref() {
                None => Err(Failure::NoRedis.to_string()),
                Some(path) => {
                    let wait = Command::wait(
                        path.queue.stream(partition),
                        path.ack_replicas,
                        path.ack_timeout,
                    );
                    match store.io.redis(wait).await {
                        Ok(OwnedReply::Integer(n)) => Ok(n),
                        Ok(OwnedReply::Error(e)) => Err(String::from_utf8_lossy(&e).into_owned()),
                        Ok(other) => Err(format!("WAIT answered {other:?}")),
                        Err(failure) => Err(failure.to_string()),
                    }
                }
            };
            driver.resolve(outcome);
        });
        GroupWait(group)
    }

    /// Read `key` of cached table `table`: the cache, then (on a miss, when
    /// this process runs the database core) the database, whose row goes
    /// into the cache unless something was cached or released meanwhile.
    pub fn read(
        &self,
        table: &str,
        key: &[u8],
    ) -> impl Future<Output = Result<Found, ReadError>> + 'static {
        let sent = self.send_read(table, key);
        let store = self.clone();
        let key_len = key.len();
        async move {
            let (call, table, cache_key) = sent?;
            match call.await {
                Ok(OwnedReply::Bulk(entry)) => {
                    store.io.count_cache_hit(entry.first() == Some(&b'v'));
                    return Ok(Found { entry: Some(entry) });
                }
                Ok(OwnedReply::Nil) if !store.io.has_read_through() => {
                    return Ok(Found { entry: None });
                }
                Ok(OwnedReply::Nil) => {}
                Ok(OwnedReply::Error(e)) => {
                    return Err(ReadError::Unavailable(
                        String::from_utf8_lossy(&e).into_owned(),
                    ));
                }
                Ok(other) => {
                    return Err(ReadError::Unavailable(format!(
                        "an unexpected reply {other:?}"
                    )));
                }
                Err(failure) => return Err(ReadError::Unavailable(failure.to_string())),
            }
            // The cache key ends with the key.
            let key = &cache_key[cache_key.len() - key_len..];
            // Boxed: the miss path's state would grow every read's future.
            let (entry, _) = Box::pin(store.look_up(table, key)).await?;
            Ok(Found { entry: Some(entry) })
        }
    }

    /// The cache read, the table's index and the cache key.
    fn send_read(&self, name: &str, key: &[u8]) -> Result<(RedisCall, usize, Vec<u8>), ReadError> {
        let (index, table) = self.table(name).map_err(ReadError::Invalid)?;
        if !table.is_cached() {
            return Err(ReadError::Invalid(format!(
                "{name} is not cached: only a cached table's keys can be read"
            )));
        }
        table.check_key(key).map_err(ReadError::BadInput)?;
        let path = self.path_or_unavailable().map_err(ReadError::Unavailable)?;
        let cache_key = path.queue.cache_key(name, key);
        let call = self.io.redis(Command::get(&cache_key));
        Ok((call, index, cache_key))
    }

    /// The database's row for `key` as a cache entry, and the release
    /// counter read before it; the row goes into the cache if this caller
    /// is the one of its lookup to fill it and the counter has not moved.
    async fn look_up(&self, index: usize, key: &[u8]) -> Result<(Vec<u8>, Option<u64>), ReadError> {
        let table = self.table_at(index).map_err(ReadError::Invalid)?;
        let path = self.path_or_unavailable().map_err(ReadError::Unavailable)?;
        let counter = match self.io.redis(path.queue.release_counter(key)).await {
            Ok(OwnedReply::Bulk(n)) => std::str::from_utf8(&n).ok().and_then(|n| n.parse().ok()),
            Ok(OwnedReply::Error(e)) => {
                return Err(ReadError::Unavailable(
                    String::from_utf8_lossy(&e).into_owned(),
                ));
            }
            Ok(_) => None,
            Err(failure) => return Err(ReadError::Unavailable(failure.to_string())),
        };
        let row = self
            .io
            .lookup(index, key.to_vec())
            .await
            .map_err(|f| ReadError::Unavailable(f.to_string()))?;
        if row.fill {
            let ttl_ms = match Cached::from_entry(Some(&row.entry)) {
                Ok(Cached::Value { .. }) => path.cache_ttl_ms,
                _ => path.miss_ttl_ms,
            };
            let fill = path.queue.fill(
                table.name(),
                key,
                &row.entry,
                ttl_ms,
                counter_text(counter).as_bytes(),
            );
            // Nothing waits for the fill: its reply is thrown away.
            drop(self.io.redis(fill));
        }
        Ok((row.entry, counter))
    }
}

/// What [`Store::send_write`] sent.
enum Issued {
    Plain(RedisCall, u16),
    Conditional(RedisCall, Box<ConditionalWrite>),
}

/// A conditional PUT or DELETE, kept to send its script again.
struct ConditionalWrite {
    /// The table's index among the server's.
    table: usize,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    preconditions: Preconditions,
    partition: u16,
}

impl ConditionalWrite {
    /// The script, with what the database holds once it is known.
    fn script(
        &self,
        path: &WritePath,
        table: &str,
        known: Option<(&[u8], Option<u64>)>,
    ) -> Command {
        let cache = path.queue.cache_key(table, &self.key);
        let counter = known.map(|(_, counter)| counter_text(counter));
        let known = known
            .zip(counter.as_deref())
            .map(|((entry, _), counter)| (entry, counter.as_bytes()));
        path.queue
            .write_if(
                table,
                &self.key,
                self.value.as_deref(),
                &self.preconditions,
                known,
                &cache,
                path.caps,
            )
            .command()
    }
}

/// The counter as the scripts compare it: as `HGET` gives it, empty for nil.
fn counter_text(counter: Option<u64>) -> String {
    counter.map_or_else(String::new, |c| c.to_string())
}

/// One `WAIT` and the writes it confirms.
#[derive(Default)]
struct Group {
    outcome: RefCell<Option<Result<i64, String>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl Group {
    fn resolve(&self, outcome: Result<i64, String>) {
        *self.outcome.borrow_mut() = Some(outcome);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// A write's share of its group's `WAIT`.
struct GroupWait(Rc<Group>);

impl Future for GroupWait {
    type Output = Result<i64, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = &*self.0.outcome.borrow() {
            return Poll::Ready(outcome.clone());
        }
        self.0.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::script::Script;
    use crate::runtime::tasks::{Job, TaskFuture, Tasks};
    use crate::writeback::table::{ColumnType, Merge};
    use std::cell::Cell;

    fn tables() -> Tables {
        let kv = Table::new(
            "kv",
            &[("key", ColumnType::Bytea), ("value", ColumnType::Bytea)],
            Merge::LastWriterWins {
                key: "key".into(),
                touched: None,
            },
            "",
        )
        .unwrap()
        .cached(None)
        .unwrap();
        let log = Table::new("log", &[("line", ColumnType::Text)], Merge::Append, "").unwrap();
        Tables::new(vec![kv, log]).unwrap()
    }

    fn store(script: &Script, ack_replicas: u32) -> Store {
        let path = WritePath {
            queue: Queue::new(4),
            caps: Caps::UNLIMITED,
            cache_ttl_ms: 1000,
            miss_ttl_ms: 100,
            ack_replicas,
            ack_timeout: Duration::from_millis(50),
        };
        Store::new(script.io().clone(), Some(Arc::new(path)), tables())
    }

    type Results = Rc<RefCell<Vec<(usize, Result<Version, WriteError>)>>>;

    /// Drives a scripted store's futures the way an executor does.
    struct Driver {
        tasks: Tasks<usize>,
        results: Results,
    }

    impl Driver {
        fn new() -> Driver {
            Driver {
                tasks: Tasks::default(),
                results: Rc::default(),
            }
        }

        fn write(
            &mut self,
            n: usize,
            future: impl Future<Output = Result<Version, WriteError>> + 'static,
        ) {
            let results = Rc::clone(&self.results);
            self.tasks.spawn(
                Job::Detached(TaskFuture::new(async move {
                    let result = future.await;
                    results.borrow_mut().push((n, result));
                })),
                None,
            );
        }

        /// One turn: run what is ready until nothing is, then end the turn
        /// and run what that woke.
        fn turn(&mut self, script: &Script) {
            loop {
                for spawned in script.take_spawned() {
                    self.tasks.spawn(Job::Detached(spawned), None);
                }
                if !self.tasks.has_ready() {
                    break;
                }
                self.tasks.run_ready(|_| {});
            }
            script.end_turn();
            loop {
                for spawned in script.take_spawned() {
                    self.tasks.spawn(Job::Detached(spawned), None);
                }
                if !self.tasks.has_ready() {
                    break;
                }
                self.tasks.run_ready(|_| {});
            }
        }
    }

    /// A kv payload: the value column's field.
    fn value(v: &[u8]) -> Vec<u8> {
        crate::writeback::table::Row::new().bytes(v).into_bytes()
    }

    fn id(n: u64) -> Result<OwnedReply, Failure> {
        Ok(OwnedReply::Bulk(format!("{n}-0").into_bytes()))
    }

    #[test]
    fn one_wait_per_partition_per_turn_confirms_every_write_of_it() {
        let script = Script::new(Some(1));
        let store = store(&script, 1);
        let mut driver = Driver::new();
        // Three writes to one partition (same key), one to another.
        let other_key = (0..100u32)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| {
                store.path().unwrap().queue.partition_of(k)
                    != store.path().unwrap().queue.partition_of(b"a")
            })
            .unwrap();
        for n in 0..3 {
            driver.write(
                n,
                store.write("kv", b"a", Some(&value(b"v")), &Preconditions::default()),
            );
        }
        driver.write(
            3,
            store.write(
                "kv",
                &other_key,
                Some(&value(b"v")),
                &Preconditions::default(),
            ),
        );
        driver.turn(&script);
        let scripts = script.take_issued();
        assert_eq!(scripts.len(), 4, "the four scripts, nothing else yet");
        for (i, (token, _)) in scripts.iter().enumerate() {
            script.answer(*token, id(i as u64 + 1));
        }
        driver.turn(&script);
        let waits = script.take_issued();
        assert_eq!(waits.len(), 2, "one WAIT per partition");
        assert!(
            waits
                .iter()
                .all(|(_, c)| c.bytes().starts_with(b"*3\r\n$4\r\nWAIT"))
        );
        assert!(driver.results.borrow().is_empty(), "nothing confirmed yet");
        // The first partition's WAIT: 1 replica; the other's: 0 (timed out).
        script.answer(waits[0].0, Ok(OwnedReply::Integer(1)));
        script.answer(waits[1].0, Ok(OwnedReply::Integer(0)));
        driver.turn(&script);
        let mut results = driver.results.borrow().clone();
        results.sort_by_key(|(n, _)| *n);
        assert_eq!(results.len(), 4);
        for (n, result) in &results[..3] {
            assert_eq!(
                *result,
                Ok(Version {
                    ms: *n as i64 + 1,
                    seq: 0
                }),
                "write {n}"
            );
        }
        assert_eq!(
            results[3].1,
            Err(WriteError::Unconfirmed {
                version: "4-0".into(),
                why: "0 of 1 replicas confirmed it in time".into()
            })
        );
        assert!(script.take_issued().is_empty());
    }

    #[test]
    fn writes_answered_in_different_turns_get_their_own_waits() {
        let script = Script::new(Some(1));
        let store = store(&script, 1);
        let mut driver = Driver::new();
        driver.write(
            0,
            store.write("kv", b"a", Some(&value(b"1")), &Preconditions::default()),
        );
        driver.write(
            1,
            store.write("kv", b"a", Some(&value(b"2")), &Preconditions::default()),
        );
        driver.turn(&script);
        let scripts = script.take_issued();
        script.answer(scripts[0].0, id(1));
        driver.turn(&script);
        let first_wait = script.take_issued();
        assert_eq!(first_wait.len(), 1);
        // The second script answers after the first WAIT went out: a WAIT
        // of its own, for the first one did not count it.
        script.answer(scripts[1].0, id(2));
        driver.turn(&script);
        assert_eq!(script.take_issued().len(), 1);
    }

    #[test]
    fn a_master_without_replicas_refuses_before_anything_is_written() {
        let script = Script::new(Some(0));
        let store = store(&script, 1);
        let mut driver = Driver::new();
        driver.write(
            0,
            store.write("kv", b"a", Some(&value(b"1")), &Preconditions::default()),
        );
        driver.turn(&script);
        assert!(script.take_issued().is_empty(), "no script sent");
        let results = driver.results.borrow();
        assert!(
            matches!(&results[0].1, Err(WriteError::Unavailable(why)) if why.contains("master has 0 online replicas")),
            "{results:?}"
        );
    }

    #[test]
    fn a_master_that_loses_its_replicas_mid_script_is_unconfirmed_without_a_wait() {
        let script = Script::new(Some(1));
        let store = store(&script, 1);
        let mut driver = Driver::new();
        driver.write(
            0,
            store.write("kv", b"a", Some(&value(b"1")), &Preconditions::default()),
        );
        driver.turn(&script);
        let scripts = script.take_issued();
        script.set_replicas(Some(0));
        script.answer(scripts[0].0, id(7));
        driver.turn(&script);
        assert!(script.take_issued().is_empty(), "no WAIT sent");
        assert!(matches!(
            &driver.results.borrow()[0].1,
            Err(WriteError::Unconfirmed { version, .. }) if version == "7-0"
        ));
    }

    #[test]
    fn script_refusals_become_their_errors() {
        let script = Script::new(None);
        let store = store(&script, 0);
        let mut driver = Driver::new();
        let cases: [(&[u8], WriteError); 3] = [
            (
                b"PRECONDITION 5-1",
                WriteError::PreconditionFailed(Some("5-1".into())),
            ),
            (b"PRECONDITION ", WriteError::PreconditionFailed(None)),
            (
                b"BACKLOG the write-back backlog is at max_backlog",
                WriteError::Unavailable("BACKLOG the write-back backlog is at max_backlog".into()),
            ),
        ];
        for (n, _) in cases.iter().enumerate() {
            driver.write(
                n,
                store.write("kv", b"a", Some(&value(b"1")), &Preconditions::default()),
            );
        }
        driver.turn(&script);
        for ((token, _), (error, _)) in script.take_issued().into_iter().zip(&cases) {
            script.answer(token, Ok(OwnedReply::Error(error.to_vec())));
        }
        driver.turn(&script);
        let mut results = driver.results.borrow().clone();
        results.sort_by_key(|(n, _)| *n);
        for ((_, result), (_, expected)) in results.iter().zip(cases) {
            assert_eq!(result.as_ref().unwrap_err(), &expected);
        }
        // maxmemory in words.
        let oom = WriteError::Unavailable("OOM command not allowed".into()).to_string();
        assert!(oom.contains("Redis is at maxmemory"), "{oom}");
    }

    #[test]
    fn a_conditional_write_on_an_uncached_key_needs_read_through() {
        let script = Script::new(None);
        let store = store(&script, 0);
        let mut driver = Driver::new();
        let preconditions = Preconditions {
            if_match: Some(crate::writeback::queue::TagList::Any),
            if_none_match: None,
        };
        driver.write(
            0,
            store.write("kv", b"a", Some(&value(b"1")), &preconditions),
        );
        driver.turn(&script);
        let (token, _) = script.take_issued().remove(0);
        script.answer(
            token,
            Ok(OwnedReply::Error(b"MISS the key is not cached".to_vec())),
        );
        driver.turn(&script);
        assert!(matches!(
            &driver.results.borrow()[0].1,
            Err(WriteError::Unavailable(why)) if why.contains("needs read-through")
        ));
    }

    #[test]
    fn tables_are_used_as_declared() {
        let script = Script::new(None);
        let store = store(&script, 0);
        let polled = Rc::new(Cell::new(false));
        let mut driver = Driver::new();
        driver.write(0, store.append("kv", b"a", b"x", 1));
        driver.write(
            1,
            store.write("log", b"a", Some(b"x"), &Preconditions::default()),
        );
        driver.write(2, store.append("nope", b"a", b"x", 1));
        driver.write(3, store.append("log", b"a", b"not a row", 1));
        polled.set(true);
        driver.turn(&script);
        assert!(
            script.take_issued().is_empty(),
            "nothing sent for a refused write"
        );
        let mut results = driver.results.borrow().clone();
        results.sort_by_key(|(n, _)| *n);
        assert!(matches!(&results[0].1, Err(WriteError::Invalid(w)) if w.contains("Store::write")));
        assert!(
            matches!(&results[1].1, Err(WriteError::Invalid(w)) if w.contains("Store::append"))
        );
        assert!(
            matches!(&results[2].1, Err(WriteError::Invalid(w)) if w.contains("no write-back table"))
        );
        assert!(matches!(&results[3].1, Err(WriteError::BadInput(_))));
    }

    #[test]
    fn found_values_come_out_without_their_version() {
        let found = Found {
            entry: Some(b"v1-2 hello".to_vec()),
        };
        assert_eq!(
            found.cached(),
            Ok(Cached::Value {
                version: b"1-2",
                value: b"hello"
            })
        );
        assert_eq!(found.into_value(), Some(b"hello".to_vec()));
        assert_eq!(
            Found {
                entry: Some(b"t1-2".to_vec())
            }
            .into_value(),
            None
        );
        assert_eq!(Found { entry: None }.into_value(), None);
    }
}
