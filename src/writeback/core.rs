//! The database core: drains the write-back streams into PostgreSQL.
//!
//! One loop, one thread: gather entries from every partition with
//! `XREADGROUP` until the batch holds `batch_rows` or `batch_ms` has passed;
//! write them in one transaction; only after the commit, `XACK` them and
//! trim the streams below the oldest entry still pending (`XTRIM MINID`). A crash between the commit and the acknowledgement redelivers the
//! batch, which the idempotent merge absorbs, so each write lands once.
//! At start the core first re-reads its own pending entries; every
//! `claim_interval` it takes over entries another consumer left pending
//! for `claim_idle` (`XAUTOCLAIM`).
//!
//! PostgreSQL down or slow: the batch is retried with exponential back-off
//! and jitter, nothing is acknowledged, and the backlog waits in Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::db::Database;
use super::lookup::LookupService;
use super::queue::{Entry, GROUP, Queue, Record, entries};
use crate::load::workload::Rng;
use crate::redis::cluster::Config as RedisConfig;
use crate::redis::command::Command;
use crate::redis::driver::Client;
use crate::redis::resp::{OwnedReply, Reply};

/// The hash every core's O(1) figures live in.
pub const STATS_KEY: &[u8] = b"{millrace:stats}";

/// First wait before retrying a failed batch; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);

/// Longest wait between retries of a batch.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the figures of `GET /v1/stats` are gathered into [`STATS_KEY`].
const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// How long an empty read waits before the next.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// A deliberate crash, for the tests that prove redelivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL this process right before its first batch is written.
    KillBeforeInsert,
    /// SIGKILL this process right after the first commit, before its XACK.
    KillAfterCommit,
}

/// SIGKILL this process, saying why first.
fn crash(why: &str) {
    tracing::warn!("fault injection: SIGKILL {why}");
    // SAFETY: kill(2) on this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// How the database core runs.
#[derive(Clone, Debug)]
pub struct WritebackConfig {
    /// The Redis Cluster holding the queue.
    pub redis: RedisConfig,
    /// PostgreSQL, as a `postgres://` URL (`sslmode=require` for TLS).
    pub postgres_url: String,
    /// Extra CAs (PEM) to trust for PostgreSQL's certificate.
    pub postgres_ca_file: Option<std::path::PathBuf>,
    /// Write-back stream partitions.
    pub partitions: u16,
    /// Rows per transaction at most.
    pub batch_rows: usize,
    /// How long a batch gathers before it is written, however small.
    pub batch_ms: Duration,
    /// This core's consumer name in the group; keep it across restarts so
    /// that a restarted core finds its own pending entries.
    pub consumer: String,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_interval: Duration,
    /// Longest a PostgreSQL connect, batch write or lookup may take; past
    /// it the connection is dropped and the work tried again, so a stalled
    /// database connection cannot stop the queue.
    pub db_timeout: Duration,
    /// A crash to inject, for tests.
    pub fault: Option<Fault>,
}

impl WritebackConfig {
    /// Defaults for the rest: 16 partitions, batches of 5,000 rows or 5 ms,
    /// consumer `db-0`, take over after 30 s idle.
    pub fn new(redis: RedisConfig, postgres_url: String) -> WritebackConfig {
        WritebackConfig {
            redis,
            postgres_url,
            postgres_ca_file: None,
            partitions: 16,
            batch_rows: 5000,
            batch_ms: Duration::from_millis(5),
            consumer: "db-0".into(),
            db_timeout: Duration::from_secs(10),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            fault: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Rows committed (redeliveries included).
    pub rows: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Failed attempts to write a batch.
    pub retries: u64,
    /// Entries set aside because they could not be read.
    pub malformed: u64,
}

/// Drain the queue until `stop` is set (checked between batches).
///
/// Two threads overlap the two halves of the work: a reader that gathers
/// batches from Redis and acknowledges committed ones, and a writer (this
/// thread) that commits them to PostgreSQL. At most [`BATCHES_AHEAD`]
/// batches wait between them.
///
/// With `lookups`, the same runtime answers the executors' read-through
/// misses on a connection of its own.
pub fn run(
    config: &WritebackConfig,
    stop: &AtomicBool,
    lookups: Option<LookupService>,
) -> Result<Totals, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the database core's runtime: {e}"))?;
    let (batches, to_write) = tokio::sync::mpsc::channel::<Vec<Entry>>(BATCHES_AHEAD);
    let (committed, to_acknowledge) = std::sync::mpsc::channel::<(Vec<Entry>, u64)>();
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("millrace-db-read".into())
            .spawn_scoped(scope, move || {
                let mut reader = Reader::start(config)?;
                reader.run(batches, &to_acknowledge, stop);
                Ok::<u64, String>(reader.malformed)
            })
            .map_err(|e| format!("cannot start the database core's reader: {e}"))?;
        let local = tokio::task::LocalSet::new();
        if let Some(lookups) = lookups {
            local.spawn_local(lookups.run(
                config.postgres_url.clone(),
                config.postgres_ca_file.clone(),
                config.db_timeout,
            ));
        }
        let mut writer = Writer {
            config,
            database: None,
            totals: Totals::default(),
            rng: Rng::new(std::process::id().into()),
        };
        let totals = local.block_on(&runtime, writer.run(to_write, committed, stop));
        let malformed = reader
            .join()
            .map_err(|_| "the database core's reader panicked".to_string())??;
        Ok(Totals {
            malformed,
            ..totals
        })
    })
}

/// Batches gathered ahead of the one being written.
const BATCHES_AHEAD: usize = 2;

/// What a gathering round reads: entries never delivered, or this
/// consumer's own delivered-but-unacknowledged ones (at start).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    New,
    OwnPending,
}

/// The Redis half: gathers batches, acknowledges committed ones.
struct Reader<'a> {
    config: &'a WritebackConfig,
    queue: Queue,
    redis: Client,
    malformed: u64,
    /// Per partition, the newest entry this consumer has acknowledged: the
    /// streams are trimmed up to it.
    acknowledged: Vec<Option<(i64, i64)>>,
    /// A read failed: Redis may have delivered entries whose reply was
    /// lost, pending on this consumer unseen. They are read again (its own
    /// pending entries) once no batch is in flight, rather than waiting
    /// `claim_idle` to be taken over.
    lost_reads: bool,
}

impl<'a> Reader<'a> {
    fn start(config: &'a WritebackConfig) -> Result<Reader<'a>, String> {
        let mut redis = Client::connect(config.redis.clone()).map_err(|e| e.to_string())?;
        let queue = Queue::new(config.partitions);
        let creates = (0..queue.partitions())
            .map(|p| Command::xgroup_create(queue.stream(p), GROUP, b"0"))
            .collect();
        for reply in redis.execute(creates) {
            match reply.map_err(|e| e.to_string())? {
                OwnedReply::Status(_) => {}
                OwnedReply::Error(e) if e.starts_with(b"BUSYGROUP") => {}
                other => {
                    return Err(format!(
                        "cannot create the write-back consumer group: {other:?}"
                    ));
                }
            }
        }
        Ok(Reader {
            config,
            queue,
            redis,
            malformed: 0,
            acknowledged: vec![None; usize::from(config.partitions)],
            lost_reads: false,
        })
    }

    fn run(
        &mut self,
        batches: tokio::sync::mpsc::Sender<Vec<Entry>>,
        committed: &std::sync::mpsc::Receiver<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) {
        // What this consumer had read but not acknowledged before it stopped.
        if !self.read_own_pending(&batches, committed, stop) {
            return;
        }
        let mut next_claim = Instant::now() + self.config.claim_interval;
        let mut next_stats = Instant::now();
        // Batches handed to the writer and not yet acknowledged.
        let mut in_flight = 0usize;
        while !stop.load(Ordering::Relaxed) {
            while let Ok((batch, rows)) = committed.try_recv() {
                self.acknowledge(&batch, rows);
                in_flight -= 1;
            }
            if self.lost_reads && in_flight == 0 {
                self.lost_reads = false;
                tracing::info!("a read failed; reading this consumer's pending entries again");
                if !self.read_own_pending(&batches, committed, stop) {
                    return;
                }
            }
            if Instant::now() >= next_stats {
                next_stats = Instant::now() + STATS_INTERVAL;
                self.publish_stats();
            }
            let batch = if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.config.claim_interval;
                // A trim that failed (a master failing over) is tried
                // again here, even if its partition gets no more writes.
                let all: Vec<usize> = (0..self.acknowledged.len()).collect();
                self.trim(&all);
                self.claim()
            } else {
                self.gather(Source::New, stop)
            };
            if !batch.is_empty() {
                if batches.blocking_send(batch).is_err() {
                    break;
                }
                in_flight += 1;
            }
        }
        // No more batches; the writer finishes what it holds. Acknowledge
        // what it commits, until it hangs up.
        drop(batches);
        while let Ok((batch, rows)) = committed.recv() {
            self.acknowledge(&batch, rows);
        }
    }

    /// Write this consumer's pending entries, a batch at a time, each
    /// acknowledged before the next is read: reading pending entries again
    /// before they are acknowledged would return them twice. Call with no
    /// batch in flight. `false` when the writer has gone.
    fn read_own_pending(
        &mut self,
        batches: &tokio::sync::mpsc::Sender<Vec<Entry>>,
        committed: &std::sync::mpsc::Receiver<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) -> bool {
        while !stop.load(Ordering::Relaxed) {
            let batch = self.gather(Source::OwnPending, stop);
            if batch.is_empty() {
                break;
            }
            if batches.blocking_send(batch).is_err() {
                return false;
            }
            match committed.recv() {
                Ok((batch, rows)) => self.acknowledge(&batch, rows),
                Err(_) => return false,
            }
        }
        true
    }

    /// Read until the batch is full or its time is up. Own pending entries
    /// are read in one pass (reading them again before the acknowledgement
    /// would return the same entries).
    fn gather(&mut self, source: Source, stop: &AtomicBool) -> Vec<Entry> {
        let mut batch: Vec<Entry> = Vec::new();
        // Rows in the batch: an event batch entry counts its events.
        let mut rows = 0;
        let deadline = Instant::now() + self.config.batch_ms;
        loop {
            let partitions = usize::from(self.queue.partitions());
            let count = (self.config.batch_rows.saturating_sub(rows) / partitions)
                .max(1)
                .to_string();
            let id: &[u8] = match source {
                Source::New => b">",
                Source::OwnPending => b"0",
            };
            let reads = (0..self.queue.partitions())
                .map(|p| {
                    Command::new(
                        &[
                            &b"XREADGROUP"[..],
                            b"GROUP",
                            GROUP,
                            self.config.consumer.as_bytes(),
                            b"COUNT",
                            count.as_bytes(),
                            b"STREAMS",
                            self.queue.stream(p),
                            id,
                        ],
                        Some(7),
                    )
                })
                .collect();
            let before = batch.len();
            let mut unreadable = Vec::new();
            let mut failed = false;
            let result = self
                .redis
                .execute_each(reads, |partition, reply| match reply {
                    Ok(reply) => take(partition as u16, &reply, &mut batch, &mut unreadable),
                    Err(e) => {
                        failed = true;
                        tracing::warn!(partition, error = %e, "reading the write-back queue failed")
                    }
                });
            if let Err(e) = result {
                failed = true;
                tracing::warn!(error = %e, "reading the write-back queue failed");
            }
            self.lost_reads |= failed;
            self.set_aside(unreadable);
            let read = batch.len() - before;
            rows += batch[before..]
                .iter()
                .map(|e| e.record.rows())
                .sum::<usize>();
            if source == Source::OwnPending
                || rows >= self.config.batch_rows
                || Instant::now() >= deadline
                || stop.load(Ordering::Relaxed)
            {
                return batch;
            }
            if read == 0 {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    /// Acknowledge and delete entries that cannot be read, so that they do
    /// not block the queue.
    fn set_aside(&mut self, unreadable: Vec<(u16, Vec<u8>, String)>) {
        for (partition, id, why) in unreadable {
            tracing::warn!(partition, id = %String::from_utf8_lossy(&id), "dropping an unreadable write-back entry: {why}");
            self.malformed += 1;
            let stream = self.queue.stream(partition).to_vec();
            let _ = self.redis.execute(vec![
                Command::xack(&stream, GROUP, &[&id]),
                Command::new(&[&b"XDEL"[..], &stream, &id], Some(1)),
            ]);
        }
    }

    /// Take over entries other consumers left pending too long.
    fn claim(&mut self) -> Vec<Entry> {
        let claims = (0..self.queue.partitions())
            .map(|p| {
                Command::xautoclaim(
                    self.queue.stream(p),
                    GROUP,
                    self.config.consumer.as_bytes(),
                    self.config.claim_idle,
                    b"0-0",
                    self.config.batch_rows,
                )
            })
            .collect();
        let mut batch = Vec::new();
        let mut unreadable = Vec::new();
        let result = self.redis.execute_each(claims, |partition, reply| {
            // [next-start, [[id, fields], ...], [deleted ids]]
            if let Ok(Reply::Array(parts)) = reply
                && let Some(messages) = parts.get(1)
            {
                take_messages(partition as u16, messages, &mut batch, &mut unreadable);
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "claiming write-back entries failed");
        }
        self.set_aside(unreadable);
        if !batch.is_empty() {
            tracing::info!(
                entries = batch.len(),
                "took over write-back entries left pending by another consumer"
            );
        }
        batch
    }

    /// Gather the queue's figures into [`STATS_KEY`], so that `GET
    /// /v1/stats` reads them with one O(1) command: rows accepted (the
    /// partitions' counters), entries waiting (`XLEN`), and the time of the
    /// oldest waiting entry (the first id left after trimming). O(partitions).
    fn publish_stats(&mut self) {
        let mut commands = Vec::new();
        for p in 0..self.queue.partitions() {
            let stream = self.queue.stream(p);
            commands.push(Command::new(
                &[&b"GET"[..], self.queue.accepted_counter(p)],
                Some(1),
            ));
            commands.push(Command::new(&[&b"XLEN"[..], stream], Some(1)));
            commands.push(Command::new(
                &[&b"XRANGE"[..], stream, b"-", b"+", b"COUNT", b"1"],
                Some(1),
            ));
        }
        let replies = self.redis.execute(commands);
        let (mut accepted, mut backlog, mut oldest_ms) = (0i64, 0i64, i64::MAX);
        for partition in replies.chunks(3) {
            let [counter, length, first] = partition else {
                return;
            };
            match counter {
                Ok(OwnedReply::Bulk(n)) => {
                    accepted += std::str::from_utf8(n)
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
                Ok(OwnedReply::Nil) => {}
                _ => return,
            }
            match length {
                Ok(OwnedReply::Integer(n)) => backlog += n,
                _ => return,
            }
            if let Ok(OwnedReply::Array(entries)) = first
                && let Some(OwnedReply::Array(entry)) = entries.first()
                && let Some(id) = entry.first().and_then(OwnedReply::bytes)
                && let Some(ms) = std::str::from_utf8(id)
                    .ok()
                    .and_then(|id| id.split('-').next())
                    .and_then(|ms| ms.parse::<i64>().ok())
            {
                oldest_ms = oldest_ms.min(ms);
            }
        }
        let oldest_ms = if oldest_ms == i64::MAX { 0 } else { oldest_ms };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let figures = [
            accepted.to_string(),
            backlog.to_string(),
            oldest_ms.to_string(),
            now_ms.to_string(),
        ];
        let update = Command::new(
            &[
                &b"HSET"[..],
                STATS_KEY,
                b"accepted",
                figures[0].as_bytes(),
                b"backlog",
                figures[1].as_bytes(),
                b"oldest_ms",
                figures[2].as_bytes(),
                b"updated_ms",
                figures[3].as_bytes(),
            ],
            Some(1),
        );
        if let Err(e) = self.redis.execute(vec![update]).remove(0) {
            tracing::debug!(error = %e, "publishing the queue's figures failed");
        }
    }

    /// Acknowledge the committed entries, count them, and trim what every
    /// consumer has acknowledged from the streams (so that a stream's
    /// length is its backlog).
    fn acknowledge(&mut self, batch: &[Entry], rows: u64) {
        let partitions = usize::from(self.queue.partitions());
        let mut ids: Vec<Vec<&[u8]>> = vec![Vec::new(); partitions];
        let mut newest: Vec<(i64, i64)> = vec![(0, 0); partitions];
        for entry in batch {
            let partition = usize::from(self.queue.partition_of(entry.record.key()));
            ids[partition].push(&entry.id);
            newest[partition] = newest[partition].max((entry.version_ms, entry.version_seq));
        }
        let touched: Vec<usize> = (0..partitions).filter(|&p| !ids[p].is_empty()).collect();
        let mut commands = Vec::new();
        for &partition in &touched {
            let stream = self.queue.stream(partition as u16);
            commands.push(Command::xack(stream, GROUP, &ids[partition]));
        }
        // A delete now in the database no longer needs its tombstone in
        // the cache to hide the old row from read-throughs.
        for entry in batch {
            if let Record::Delete { key } = &entry.record {
                commands.push(self.queue.drop_tombstone(key, &entry.id));
            }
        }
        let written = rows.to_string();
        commands.push(Command::new(
            &[&b"HINCRBY"[..], STATS_KEY, b"written", written.as_bytes()],
            Some(1),
        ));
        let replies = self.redis.execute(commands);
        let mut acknowledged = Vec::new();
        for (i, &partition) in touched.iter().enumerate() {
            match &replies[i] {
                Ok(_) => {
                    let known = &mut self.acknowledged[partition];
                    *known = Some(known.map_or(newest[partition], |k| k.max(newest[partition])));
                    acknowledged.push(partition);
                }
                // Not fatal: the entries stay pending, are redelivered and
                // merged again without effect.
                Err(e) => tracing::warn!(error = %e, "acknowledging a committed batch failed"),
            }
        }
        self.trim(&acknowledged);
    }

    /// Trim what every consumer has acknowledged from `partitions`' streams.
    fn trim(&mut self, partitions: &[usize]) {
        let partitions: Vec<(usize, (i64, i64))> = partitions
            .iter()
            .filter_map(|&p| self.acknowledged[p].map(|newest| (p, newest)))
            .collect();
        let pending = partitions
            .iter()
            .map(|&(p, _)| {
                Command::new(
                    &[&b"XPENDING"[..], self.queue.stream(p as u16), GROUP],
                    Some(1),
                )
            })
            .collect();
        let replies = self.redis.execute(pending);
        let mut trims = Vec::new();
        for (&(partition, (ms, seq)), reply) in partitions.iter().zip(&replies) {
            // [count, smallest pending id, largest, consumers]: everything
            // below the smallest pending id is acknowledged; with nothing
            // pending, everything up to the newest entry acknowledged.
            let below = match reply {
                Ok(OwnedReply::Array(summary)) => match summary.first() {
                    Some(OwnedReply::Integer(0)) => format!("{ms}-{}", seq + 1).into_bytes(),
                    _ => match summary.get(1).and_then(OwnedReply::bytes) {
                        Some(id) => id.to_vec(),
                        None => continue,
                    },
                },
                _ => continue,
            };
            let stream = self.queue.stream(partition as u16);
            trims.push(Command::new(
                &[&b"XTRIM"[..], stream, b"MINID", &below],
                Some(1),
            ));
        }
        for reply in self.redis.execute(trims) {
            if let Err(e) = reply {
                tracing::debug!(error = %e, "trimming a write-back stream failed; it is tried again within claim_interval");
            }
        }
    }
}

/// The PostgreSQL half: commits batches in order, hands them back for
/// acknowledgement.
struct Writer<'a> {
    config: &'a WritebackConfig,
    database: Option<Database>,
    totals: Totals,
    rng: Rng,
}

impl Writer<'_> {
    async fn run(
        &mut self,
        mut to_write: tokio::sync::mpsc::Receiver<Vec<Entry>>,
        committed: std::sync::mpsc::Sender<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) -> Totals {
        // The schema is applied at start, not at the first batch; if the
        // database is not there yet, the first batch retries.
        match Database::connect(
            &self.config.postgres_url,
            self.config.postgres_ca_file.as_deref(),
        )
        .await
        {
            Ok(database) => self.database = Some(database),
            Err(e) => tracing::warn!(error = %e, "cannot connect to PostgreSQL yet"),
        }
        while let Some(batch) = to_write.recv().await {
            let Some(rows) = self.commit(&batch, stop).await else {
                break;
            };
            if committed.send((batch, rows)).is_err() {
                break;
            }
        }
        self.totals
    }

    /// Write `batch`, retrying until it commits (the rows written) or `stop` (`None`).
    async fn commit(&mut self, batch: &[Entry], stop: &AtomicBool) -> Option<u64> {
        let mut attempt = 0u32;
        let written = loop {
            let limit = self.config.db_timeout;
            if self.database.as_ref().is_none_or(Database::is_closed) {
                let connect = Database::connect(
                    &self.config.postgres_url,
                    self.config.postgres_ca_file.as_deref(),
                );
                self.database = match tokio::time::timeout(limit, connect).await {
                    Ok(Ok(database)) => Some(database),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot connect to PostgreSQL");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(?limit, "connecting to PostgreSQL timed out");
                        None
                    }
                };
            }
            if let Some(database) = &mut self.database {
                if self.config.fault == Some(Fault::KillBeforeInsert) {
                    crash("before a batch is written");
                }
                match tokio::time::timeout(limit, database.write(batch)).await {
                    Ok(Ok(rows)) => break rows,
                    Ok(Err(e)) => {
                        tracing::warn!(rows = batch.len(), error = %e, "writing a batch failed; retrying")
                    }
                    Err(_) => {
                        // It may have committed after all: writing it again
                        // is safe, as every row is merged by its key.
                        tracing::warn!(
                            rows = batch.len(),
                            ?limit,
                            "writing a batch timed out; reconnecting to write it again"
                        );
                        self.database = None;
                    }
                }
            }
            self.totals.retries += 1;
            if stop.load(Ordering::Relaxed) {
                // Not acknowledged: the entries stay pending for the next start.
                return None;
            }
            let backoff = RETRY_MIN
                .saturating_mul(1 << attempt.min(10))
                .min(RETRY_MAX);
            // Jitter: anywhere from half to all of the back-off.
            let jittered = backoff.mul_f64(0.5 + 0.5 * self.rng.unit());
            tokio::time::sleep(jittered).await;
            attempt += 1;
        };
        self.totals.rows += written;
        self.totals.batches += 1;
        if self.config.fault == Some(Fault::KillAfterCommit) {
            crash("after a commit, before its XACK");
        }
        Some(written)
    }
}

/// The entries of one partition's `XREADGROUP` reply into `batch`, the
/// unreadable ones into `unreadable`.
fn take(
    partition: u16,
    reply: &Reply<'_>,
    batch: &mut Vec<Entry>,
    unreadable: &mut Vec<(u16, Vec<u8>, String)>,
) {
    // [[stream, [[id, fields], ...]]], or nil when there is nothing.
    let Reply::Array(streams) = reply else {
        return;
    };
    for stream in streams {
        if let Reply::Array(parts) = stream
            && let Some(messages) = parts.get(1)
        {
            take_messages(partition, messages, batch, unreadable);
        }
    }
}

fn take_messages(
    partition: u16,
    messages: &Reply<'_>,
    batch: &mut Vec<Entry>,
    unreadable: &mut Vec<(u16, Vec<u8>, String)>,
) {
    for entry in entries(messages) {
        match entry {
            Ok(entry) => batch.push(entry),
            Err((id, why)) => unreadable.push((partition, id, why)),
        }
    }
}
