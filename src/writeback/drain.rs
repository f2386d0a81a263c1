//! The database core: drains the write-back streams into PostgreSQL.
//!
//! One loop, one thread: gather entries from every partition with
//! `XREADGROUP` until the batch holds `batch_rows` or `batch_ms` has passed;
//! write them in one transaction; only after the commit, `XACK` them (and
//! take their bytes off the partition's count), let the cache entries of
//! the keys written expire ([`Queue::release`]), and trim the streams below
//! the oldest entry still pending (`XTRIM MINID`). A crash between the
//! commit and the acknowledgement redelivers the batch, which the
//! idempotent merge absorbs, so each write lands once. At start the core
//! first re-reads its own pending entries; every `claim_interval` it takes
//! over entries another consumer left pending for `claim_idle`
//! (`XAUTOCLAIM`).
//!
//! PostgreSQL down or slow: the batch is retried with exponential back-off
//! and jitter, nothing is acknowledged, and the backlog waits in Redis.
//!
//! The core never stops reading a partition silently. A stream or group
//! found missing (a Redis master that restarted without its data) is
//! created again, the loss logged as an error naming the partition and
//! counted (`queue_losses`); any other unexpected reply to a read is
//! logged and the read tried again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::db::Database;
use super::lease::Lease;
use super::lookup::LookupService;
use super::queue::{Entry, GROUP, Queue, Version, entries};
use super::table::{Merge, Tables};
use crate::metrics::{Backlog, WritebackMetrics};
use crate::redis::cluster::ClusterConfig;
use crate::redis::command::Command;
use crate::redis::driver::Client;
use crate::redis::resp::{OwnedReply, Reply};
use crate::rng::Rng;

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

/// At most one warning about failed reads per this interval.
const READ_WARNING_INTERVAL: Duration = Duration::from_secs(1);

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
    pub redis: ClusterConfig,
    /// The tables records are written to.
    pub tables: Tables,
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
    /// How long the lease on `consumer` lasts unless renewed (every fifth
    /// of it): a restart after a crash waits at most this for it.
    pub lease_ttl: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_interval: Duration,
    /// Longest a PostgreSQL connect, batch write or lookup may take; past
    /// it the connection is dropped and the work tried again, so a stalled
    /// database connection cannot stop the queue.
    pub db_timeout: Duration,
    /// How long a key's cache entry stays once its write is in the
    /// database, in milliseconds.
    pub cache_ttl_ms: u64,
    /// How long a deleted key's tombstone stays once the delete is in the
    /// database, in milliseconds.
    pub miss_ttl_ms: u64,
    /// Start even when the durability checks find settings that lose
    /// acknowledged writes.
    pub accept_unsafe_durability: bool,
    /// What the core counts, for `/metrics`.
    pub metrics: Arc<WritebackMetrics>,
    /// A crash to inject, for tests.
    pub fault: Option<Fault>,
}

impl WritebackConfig {
    /// Defaults for the rest: 16 partitions, batches of 5,000 rows or 5 ms,
    /// consumer `db-0`, take over after 30 s idle.
    pub fn new(redis: ClusterConfig, postgres_url: String, tables: Tables) -> WritebackConfig {
        WritebackConfig {
            redis,
            tables,
            postgres_url,
            postgres_ca_file: None,
            partitions: 16,
            batch_rows: 5000,
            batch_ms: Duration::from_millis(5),
            consumer: "db-0".into(),
            db_timeout: Duration::from_secs(10),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(5),
            cache_ttl_ms: 3_600_000,
            miss_ttl_ms: 1000,
            accept_unsafe_durability: false,
            metrics: Arc::default(),
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
    /// Partitions found lost (their stream or group missing) and created again.
    pub queue_losses: u64,
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
    config.metrics.record_start();
    tracing::info!(
        transport = super::db::transport(&config.postgres_url),
        "PostgreSQL connections"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the database core's runtime: {e}"))?;
    let (batches, to_write) = tokio::sync::mpsc::channel::<Vec<Entry>>(BATCHES_AHEAD);
    let (committed, to_acknowledge) = std::sync::mpsc::channel::<(Vec<Entry>, u64)>();
    let (marks_tx, marks) = std::sync::mpsc::channel::<Vec<Option<Version>>>();
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("millrace-db-read".into())
            .spawn_scoped(scope, move || {
                let mut reader = Reader::start(config)?;
                let Some(mut lease) =
                    Lease::acquire(&mut reader.redis, &config.consumer, config.lease_ttl, stop)?
                else {
                    // Stopped before the lease was ours: nothing was read.
                    return Ok((0, 0));
                };
                tracing::info!(consumer = %config.consumer, holder = lease.holder(), "holding the consumer name's lease");
                let result = reader.run(&mut lease, &marks, batches, &to_acknowledge, stop);
                lease.release(&mut reader.redis);
                result?;
                Ok::<(u64, u64), String>((reader.malformed, reader.queue_losses))
            })
            .map_err(|e| format!("cannot start the database core's reader: {e}"))?;
        let local = tokio::task::LocalSet::new();
        if let Some(lookups) = lookups {
            local.spawn_local(lookups.run(
                config.tables.clone(),
                config.postgres_url.clone(),
                config.postgres_ca_file.clone(),
                config.db_timeout,
                Arc::clone(&config.metrics),
            ));
        }
        let mut writer = Writer {
            config,
            database: None,
            totals: Totals::default(),
            rng: Rng::new(std::process::id().into()),
        };
        let totals = local.block_on(&runtime, writer.run(marks_tx, to_write, committed, stop));
        let (malformed, queue_losses) = reader
            .join()
            .map_err(|_| "the database core's reader panicked".to_string())??;
        Ok(Totals {
            malformed: malformed + totals.malformed,
            queue_losses,
            ..totals
        })
    })
}

/// A counter's value as Redis keeps it (decimal text); 0 if unreadable.
fn counter_value(text: &[u8]) -> i64 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Give the writer `batch`, keeping the lease while it is busy (a slow
/// PostgreSQL must not let the consumer name's lease run out). `false`
/// when the writer has gone.
fn hand_over(
    batches: &tokio::sync::mpsc::Sender<Vec<Entry>>,
    mut batch: Vec<Entry>,
    lease: &mut Lease,
    redis: &mut Client,
) -> Result<bool, String> {
    loop {
        match batches.try_send(batch) {
            Ok(()) => return Ok(true),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Ok(false),
            Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => batch = back,
        }
        lease.keep(redis)?;
        std::thread::sleep(Duration::from_millis(2));
    }
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
    queue_losses: u64,
    /// Per partition, the newest entry this consumer has acknowledged since
    /// the partition's stream was (re)created: the streams are trimmed up
    /// to it.
    acknowledged: Vec<Option<Version>>,
    /// Per partition, the newest version the database holds: a stream
    /// created again after a loss starts its ids above it, so that a key's
    /// versions keep their order.
    committed: Vec<Option<Version>>,
    /// Per partition, the newest version read as new (or held by the
    /// database): a write read as new at or below it was versioned behind
    /// one already written, and loses to it in the merge.
    newest_read: Vec<Option<Version>>,
    /// A read failed: Redis may have delivered entries whose reply was
    /// lost, pending on this consumer unseen. They are read again (its own
    /// pending entries) once no batch is in flight, rather than waiting
    /// `claim_idle` to be taken over.
    lost_reads: bool,
    /// Partitions whose stream or group a read found missing, to create again.
    lost_partitions: Vec<u16>,
    last_read_warning: Option<Instant>,
}

impl<'a> Reader<'a> {
    /// Connect, and check that the cluster's queue has this core's
    /// partition count.
    fn start(config: &'a WritebackConfig) -> Result<Reader<'a>, String> {
        let mut redis = Client::connect(config.redis.clone()).map_err(|e| e.to_string())?;
        let queue = Queue::new(config.partitions);
        super::check_queue_layout(&mut redis, &queue)?;
        Ok(Reader {
            config,
            queue,
            redis,
            malformed: 0,
            queue_losses: 0,
            acknowledged: vec![None; usize::from(config.partitions)],
            committed: vec![None; usize::from(config.partitions)],
            newest_read: vec![None; usize::from(config.partitions)],
            lost_reads: false,
            lost_partitions: Vec::new(),
            last_read_warning: None,
        })
    }

    /// Make sure every partition has its stream and group. A group created
    /// here on a partition the database has writes from means its stream
    /// was lost: said, counted, and its ids started above the database's.
    fn ensure_groups(&mut self) -> Result<(), String> {
        let creates = (0..self.queue.partitions())
            .map(|p| Command::xgroup_create(self.queue.stream(p), GROUP, b"0"))
            .collect();
        let mut created = Vec::new();
        for (p, reply) in (0..).zip(self.redis.execute(creates)) {
            match reply.map_err(|e| e.to_string())? {
                OwnedReply::Status(_) => created.push(p),
                OwnedReply::Error(e) if e.starts_with(b"BUSYGROUP") => {}
                other => {
                    return Err(format!(
                        "cannot create the write-back consumer group of partition {p}: {other:?}"
                    ));
                }
            }
        }
        for p in created {
            if self.committed[usize::from(p)].is_some() {
                self.report_loss(p, "at start, its consumer group was missing");
            }
        }
        Ok(())
    }

    /// A partition's stream or group is gone although the database holds
    /// writes from it: the master that holds it lost its data. Log it,
    /// count it, and start the new stream's ids above the database's.
    fn report_loss(&mut self, partition: u16, how: &str) {
        self.queue_losses += 1;
        self.config
            .metrics
            .queue_losses
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            partition,
            stream = %String::from_utf8_lossy(self.queue.stream(partition)),
            "the write-back queue of partition {partition} was lost ({how}): its Redis master \
             lost its data (restarted without its append-only file?). Writes queued there and \
             not yet written back may have been lost; the partition is created again and \
             drained from now on"
        );
        self.acknowledged[usize::from(partition)] = None;
        let stream = self.queue.stream(partition).to_vec();
        let mut commands = vec![Command::new(
            &[&b"HINCRBY"[..], STATS_KEY, b"queue_losses", b"1"],
            Some(1),
        )];
        if let Some(newest) = self.committed[usize::from(partition)] {
            // Refused (harmlessly) if the stream's newest id is already higher.
            let id = newest.to_string();
            commands.push(Command::new(
                &[&b"XSETID"[..], &stream, id.as_bytes()],
                Some(1),
            ));
        }
        for reply in self.redis.execute(commands) {
            if let Err(e) = reply {
                tracing::warn!(partition, error = %e, "recording a lost partition failed");
            }
        }
    }

    /// Create the streams and groups that reads found missing.
    fn recreate_lost(&mut self) {
        let lost = std::mem::take(&mut self.lost_partitions);
        for partition in lost {
            let create = Command::xgroup_create(self.queue.stream(partition), GROUP, b"0");
            match self.redis.call(create) {
                Ok(OwnedReply::Status(_)) => {
                    self.report_loss(partition, "a read found its stream or group missing")
                }
                // Created meanwhile (by another database core): already reported there.
                Ok(OwnedReply::Error(e)) if e.starts_with(b"BUSYGROUP") => {}
                other => {
                    tracing::error!(partition, reply = ?other, "cannot create a lost write-back partition again; retrying");
                    self.lost_partitions.push(partition);
                }
            }
        }
    }

    /// A read that failed or got an unexpected reply: counted, logged at
    /// most once per [`READ_WARNING_INTERVAL`], and read again.
    fn read_failed(&mut self, partition: Option<u16>, why: &str) {
        self.lost_reads = true;
        self.config
            .metrics
            .read_errors
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .last_read_warning
            .is_none_or(|at| now >= at + READ_WARNING_INTERVAL)
        {
            self.last_read_warning = Some(now);
            tracing::warn!(
                ?partition,
                "reading the write-back queue failed; reading again: {why}"
            );
        }
    }

    fn run(
        &mut self,
        lease: &mut Lease,
        marks: &std::sync::mpsc::Receiver<Vec<Option<Version>>>,
        batches: tokio::sync::mpsc::Sender<Vec<Entry>>,
        committed: &std::sync::mpsc::Receiver<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        // What the database holds of each partition, before any stream is
        // created; the figures are published meanwhile.
        let mut next_stats = Instant::now();
        loop {
            lease.keep(&mut self.redis)?;
            if Instant::now() >= next_stats {
                next_stats = Instant::now() + STATS_INTERVAL;
                self.publish_stats();
            }
            match marks.recv_timeout(STATS_INTERVAL) {
                Ok(marks) => {
                    self.newest_read = marks.clone();
                    self.committed = marks;
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if !stop.load(Ordering::Relaxed) => {}
                // Stopped, or the writer gave up before PostgreSQL answered.
                Err(_) => return Ok(()),
            }
        }
        // A master failing over or restarting meanwhile is waited out.
        let mut wait = RETRY_MIN;
        while let Err(e) = self.ensure_groups() {
            tracing::error!(error = %e, "cannot set up the write-back queue's groups; retrying");
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            lease.keep(&mut self.redis)?;
            std::thread::sleep(wait);
            wait = (wait * 2).min(RETRY_MAX);
        }
        // What this consumer had read but not acknowledged before it stopped.
        if !self.read_own_pending(lease, &batches, committed, stop)? {
            return Ok(());
        }
        let mut next_claim = Instant::now() + self.config.claim_interval;
        // Batches handed to the writer and not yet acknowledged.
        let mut in_flight = 0usize;
        while !stop.load(Ordering::Relaxed) {
            while let Ok((batch, rows)) = committed.try_recv() {
                self.acknowledge(&batch, rows);
                in_flight -= 1;
            }
            if !self.lost_partitions.is_empty() {
                self.recreate_lost();
            }
            if self.lost_reads && in_flight == 0 {
                self.lost_reads = false;
                tracing::info!("a read failed; reading this consumer's pending entries again");
                if !self.read_own_pending(lease, &batches, committed, stop)? {
                    return Ok(());
                }
            }
            if !lease.keep(&mut self.redis)? {
                // The lease may have run out: another core may take the
                // name. Read nothing until it is held again.
                std::thread::sleep(Duration::from_millis(100));
                continue;
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
                if !hand_over(&batches, batch, lease, &mut self.redis)? {
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
        Ok(())
    }

    /// Write this consumer's pending entries, a batch at a time, each
    /// acknowledged before the next is read: reading pending entries again
    /// before they are acknowledged would return them twice. Call with no
    /// batch in flight. `false` when the writer has gone.
    fn read_own_pending(
        &mut self,
        lease: &mut Lease,
        batches: &tokio::sync::mpsc::Sender<Vec<Entry>>,
        committed: &std::sync::mpsc::Receiver<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) -> Result<bool, String> {
        while !stop.load(Ordering::Relaxed) {
            if !lease.keep(&mut self.redis)? {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let batch = self.gather(Source::OwnPending, stop);
            if batch.is_empty() {
                break;
            }
            if !hand_over(batches, batch, lease, &mut self.redis)? {
                return Ok(false);
            }
            // Its commit, the lease kept meanwhile.
            loop {
                match committed.recv_timeout(lease.renew_interval()) {
                    Ok((batch, rows)) => {
                        self.acknowledge(&batch, rows);
                        break;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        lease.keep(&mut self.redis)?;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
                }
            }
        }
        Ok(true)
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
            let count = (self.config.batch_rows.saturating_sub(rows) / partitions).max(1);
            let id: &[u8] = match source {
                Source::New => b">",
                Source::OwnPending => b"0",
            };
            let reads = (0..self.queue.partitions())
                .map(|p| {
                    Command::xreadgroup(
                        self.queue.stream(p),
                        GROUP,
                        self.config.consumer.as_bytes(),
                        count,
                        id,
                    )
                })
                .collect();
            let before = batch.len();
            let mut unreadable = Vec::new();
            let mut failures: Vec<(Option<u16>, String)> = Vec::new();
            let mut lost = Vec::new();
            let result = self.redis.execute_each(reads, |partition, reply| {
                let partition = partition as u16;
                match reply {
                    Ok(reply) => match take(partition, &reply, &mut batch, &mut unreadable) {
                        Taken::Read => {}
                        Taken::Lost => lost.push(partition),
                        Taken::Unexpected(why) => failures.push((Some(partition), why)),
                    },
                    Err(e) => failures.push((Some(partition), e.to_string())),
                }
            });
            if let Err(e) = result {
                failures.push((None, e.to_string()));
            }
            for (partition, why) in failures {
                self.read_failed(partition, &why);
            }
            for partition in lost {
                if !self.lost_partitions.contains(&partition) {
                    self.lost_partitions.push(partition);
                }
            }
            self.set_aside(unreadable);
            if source == Source::New {
                self.check_versions(&batch[before..]);
            }
            let read = batch.len() - before;
            rows += batch[before..]
                .iter()
                .map(|e| e.record.rows())
                .sum::<usize>();
            if source == Source::OwnPending
                || rows >= self.config.batch_rows
                || Instant::now() >= deadline
                || stop.load(Ordering::Relaxed)
                || !self.lost_partitions.is_empty()
            {
                return batch;
            }
            if read == 0 {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    /// Entries read as new come in id order; a kv write whose version is
    /// not above the newest its partition has given means the stream went
    /// back (a failover to a replica that lacked entries already written
    /// back, or a stream lost and created again, on a master whose clock is
    /// behind them). The merge keeps the newer version, so this write is
    /// lost to an older one: said as an error and counted.
    fn check_versions(&mut self, entries: &[Entry]) {
        for entry in entries {
            let partition = self.queue.partition_of(entry.record.key());
            let newest = &mut self.newest_read[usize::from(partition)];
            let behind = newest.is_some_and(|n| entry.version <= n);
            *newest = (*newest).max(Some(entry.version));
            let versioned = self
                .config
                .tables
                .find(entry.record.table.as_bytes())
                .is_some_and(|(_, t)| matches!(t.merge(), Merge::LastWriterWins { .. }));
            if behind && versioned {
                self.config
                    .metrics
                    .version_regressions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    partition,
                    id = %String::from_utf8_lossy(&entry.id),
                    "a write was versioned behind one already written back from its partition \
                     (the stream went back: a failover to a lagging replica, or a lost stream, on \
                     a master whose clock is behind); if its key has a newer version in the \
                     database, that one stays"
                );
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
        let mut lost = Vec::new();
        let result = self.redis.execute_each(claims, |partition, reply| {
            // [next-start, [[id, fields], ...], [deleted ids]]
            match reply {
                Ok(Reply::Array(parts)) => {
                    if let Some(messages) = parts.get(1) {
                        take_messages(partition as u16, messages, &mut batch, &mut unreadable);
                    }
                }
                Ok(Reply::Error(e)) if e.starts_with(b"NOGROUP") => lost.push(partition as u16),
                other => {
                    tracing::debug!(partition, reply = ?other, "claiming write-back entries failed")
                }
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "claiming write-back entries failed");
        }
        for partition in lost {
            if !self.lost_partitions.contains(&partition) {
                self.lost_partitions.push(partition);
            }
        }
        self.set_aside(unreadable);
        if !batch.is_empty() {
            self.config
                .metrics
                .entries_claimed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
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
            commands.push(Command::new(
                &[&b"GET"[..], self.queue.bytes_counter(p)],
                Some(1),
            ));
        }
        let replies = self.redis.execute(commands);
        let (mut accepted, mut backlog, mut oldest_ms) = (0i64, 0i64, i64::MAX);
        let mut partitions = Vec::with_capacity(usize::from(self.queue.partitions()));
        for partition in replies.chunks(4) {
            let [counter, length, first, bytes] = partition else {
                return;
            };
            let bytes = match bytes {
                Ok(OwnedReply::Bulk(n)) => counter_value(n),
                _ => 0,
            };
            match counter {
                Ok(OwnedReply::Bulk(n)) => accepted += counter_value(n),
                Ok(OwnedReply::Nil) => {}
                _ => return,
            }
            match length {
                Ok(OwnedReply::Integer(n)) => {
                    backlog += n;
                    partitions.push((
                        u64::try_from(*n).unwrap_or(0),
                        u64::try_from(bytes).unwrap_or(0),
                    ));
                }
                _ => return,
            }
            if let Ok(OwnedReply::Array(entries)) = first
                && let Some(OwnedReply::Array(entry)) = entries.first()
                && let Some(id) = entry.first().and_then(OwnedReply::bytes)
                && let Some(version) = Version::parse(id)
            {
                oldest_ms = oldest_ms.min(version.ms);
            }
        }
        let oldest_ms = if oldest_ms == i64::MAX { 0 } else { oldest_ms };
        self.config.metrics.record_backlog(Backlog {
            partitions,
            oldest_ms: if backlog > 0 { oldest_ms } else { 0 },
        });
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

    /// Acknowledge the committed entries, take their bytes off their
    /// partitions' counts, let the cache entries of the keys written expire,
    /// count them, and trim what every consumer has acknowledged from the
    /// streams (so that a stream's length is its backlog).
    fn acknowledge(&mut self, batch: &[Entry], rows: u64) {
        let partitions = usize::from(self.queue.partitions());
        let mut acked: Vec<Vec<(&[u8], u64)>> = vec![Vec::new(); partitions];
        let mut newest: Vec<Option<Version>> = vec![None; partitions];
        // The newest write of each key of a cached table in the batch:
        // only it can still be what the cache holds.
        let mut written: HashMap<(&str, &[u8]), &Entry> = HashMap::new();
        for entry in batch {
            let partition = usize::from(self.queue.partition_of(entry.record.key()));
            acked[partition].push((&entry.id, entry.queued_bytes));
            newest[partition] = newest[partition].max(Some(entry.version));
            let cached = self
                .config
                .tables
                .find(entry.record.table.as_bytes())
                .is_some_and(|(_, t)| t.is_cached());
            if cached {
                let slot = written
                    .entry((&entry.record.table, &entry.record.key))
                    .or_insert(entry);
                if entry.version > slot.version {
                    *slot = entry;
                }
            }
        }
        let touched: Vec<usize> = (0..partitions).filter(|&p| !acked[p].is_empty()).collect();
        let mut commands = Vec::new();
        for &partition in &touched {
            commands.push(self.queue.acknowledge(partition as u16, &acked[partition]));
        }
        // The database holds these versions now: their cache entries may
        // leave Redis, the values after cache_ttl_ms, the tombstones (which
        // kept a read-through from bringing the old row back) after
        // miss_ttl_ms.
        for entry in written.values() {
            let record = &entry.record;
            let (deleted, ttl_ms) = match record.payload {
                Some(_) => (false, self.config.cache_ttl_ms),
                None => (true, self.config.miss_ttl_ms),
            };
            commands.push(self.queue.release(
                &record.table,
                &record.key,
                &entry.id,
                deleted,
                ttl_ms,
            ));
        }
        let written_rows = rows.to_string();
        commands.push(Command::new(
            &[
                &b"HINCRBY"[..],
                STATS_KEY,
                b"written",
                written_rows.as_bytes(),
            ],
            Some(1),
        ));
        let replies = self.redis.execute(commands);
        let mut acknowledged = Vec::new();
        for (i, &partition) in touched.iter().enumerate() {
            match &replies[i] {
                Ok(OwnedReply::Error(e)) => {
                    tracing::warn!(partition, error = %String::from_utf8_lossy(e), "acknowledging a committed batch failed")
                }
                Ok(_) => {
                    let known = &mut self.acknowledged[partition];
                    *known = (*known).max(newest[partition]);
                    let committed = &mut self.committed[partition];
                    *committed = (*committed).max(newest[partition]);
                    acknowledged.push(partition);
                }
                // Not fatal: the entries stay pending, are redelivered and
                // merged again without effect.
                Err(e) => {
                    tracing::warn!(partition, error = %e, "acknowledging a committed batch failed")
                }
            }
        }
        for reply in &replies[touched.len()..] {
            // A failed release leaves an entry pinned until the key's next
            // write is written back.
            match reply {
                Ok(OwnedReply::Error(e)) => {
                    tracing::debug!(error = %String::from_utf8_lossy(e), "releasing a written-back cache entry failed")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "releasing a written-back cache entry failed")
                }
                Ok(_) => {}
            }
        }
        self.trim(&acknowledged);
    }

    /// Trim what every consumer has acknowledged from `partitions`' streams.
    fn trim(&mut self, partitions: &[usize]) {
        let partitions: Vec<(usize, Version)> = partitions
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
        for (&(partition, newest), reply) in partitions.iter().zip(&replies) {
            // [count, smallest pending id, largest, consumers]: everything
            // below the smallest pending id is acknowledged; with nothing
            // pending, everything up to the newest entry acknowledged.
            let below = match reply {
                Ok(OwnedReply::Array(summary)) => match summary.first() {
                    Some(OwnedReply::Integer(0)) => Version {
                        seq: newest.seq + 1,
                        ..newest
                    }
                    .to_string()
                    .into_bytes(),
                    _ => match summary.get(1).and_then(OwnedReply::bytes) {
                        Some(id) => id.to_vec(),
                        None => continue,
                    },
                },
                _ => continue,
            };
            trims.push(self.queue.trim(partition as u16, &below));
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
        marks: std::sync::mpsc::Sender<Vec<Option<Version>>>,
        mut to_write: tokio::sync::mpsc::Receiver<Vec<Entry>>,
        committed: std::sync::mpsc::Sender<(Vec<Entry>, u64)>,
        stop: &AtomicBool,
    ) -> Totals {
        // The schema is applied at start, and what the database holds of
        // each partition handed to the reader before it reads anything.
        let Some(newest) = self.newest_committed(stop).await else {
            return self.totals;
        };
        if marks.send(newest).is_err() {
            return self.totals;
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

    /// Connect (trying again with back-off while PostgreSQL is away) and
    /// read the newest version written back from each partition; `None` if
    /// stopped first.
    async fn newest_committed(&mut self, stop: &AtomicBool) -> Option<Vec<Option<Version>>> {
        let mut attempt = 0u32;
        loop {
            self.reconnect().await;
            if let Some(database) = &self.database {
                let read = database.newest_committed(self.config.partitions);
                match tokio::time::timeout(self.config.db_timeout, read).await {
                    Ok(Ok(newest)) => return Some(newest),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the partitions' progress from PostgreSQL")
                    }
                    Err(_) => {
                        tracing::warn!(
                            "reading the partitions' progress from PostgreSQL timed out"
                        );
                        self.database = None;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            self.back_off(attempt).await;
            attempt += 1;
        }
    }

    /// Connect unless connected, within `db_timeout`.
    async fn reconnect(&mut self) {
        if self.database.as_ref().is_some_and(|d| !d.is_closed()) {
            return;
        }
        let limit = self.config.db_timeout;
        let connect = Database::connect(
            &self.config.postgres_url,
            self.config.postgres_ca_file.as_deref(),
            &self.config.tables,
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

    /// Wait before attempt `attempt + 1`: exponential, with jitter.
    async fn back_off(&mut self, attempt: u32) {
        let backoff = RETRY_MIN
            .saturating_mul(1 << attempt.min(10))
            .min(RETRY_MAX);
        // Jitter: anywhere from half to all of the back-off.
        let jittered = backoff.mul_f64(0.5 + 0.5 * self.rng.unit());
        tokio::time::sleep(jittered).await;
    }

    /// Write `batch`, retrying until it commits (the rows written) or `stop` (`None`).
    async fn commit(&mut self, batch: &[Entry], stop: &AtomicBool) -> Option<u64> {
        let queue = Queue::new(self.config.partitions);
        let mut newest: Vec<(u16, Version)> = Vec::new();
        for entry in batch {
            let partition = queue.partition_of(entry.record.key());
            match newest.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, version)) => *version = (*version).max(entry.version),
                None => newest.push((partition, entry.version)),
            }
        }
        let mut attempt = 0u32;
        let started = Instant::now();
        let written = loop {
            let limit = self.config.db_timeout;
            self.reconnect().await;
            if let Some(database) = &mut self.database {
                if self.config.fault == Some(Fault::KillBeforeInsert) {
                    crash("before a batch is written");
                }
                let write = database.write(
                    batch,
                    |key| queue.partition_of(key),
                    &newest,
                    &self.config.consumer,
                );
                match tokio::time::timeout(limit, write).await {
                    Ok(Ok(written)) => break written,
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
            self.config
                .metrics
                .batch_retries
                .fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                // Not acknowledged: the entries stay pending for the next start.
                return None;
            }
            self.back_off(attempt).await;
            attempt += 1;
        };
        for (index, why) in &written.rejected {
            let entry = &batch[*index];
            tracing::error!(
                id = %String::from_utf8_lossy(&entry.id),
                table = %entry.record.table,
                "a write-back entry makes no row, and is set aside (acknowledged, not written): {why}"
            );
        }
        self.totals.malformed += written.rejected.len() as u64;
        self.totals.rows += written.rows;
        self.totals.batches += 1;
        self.config
            .metrics
            .record_batch(written.rows, started.elapsed());
        if self.config.fault == Some(Fault::KillAfterCommit) {
            crash("after a commit, before its XACK");
        }
        Some(written.rows)
    }
}

/// What one partition's read gave.
enum Taken {
    /// Entries, or nothing new.
    Read,
    /// `NOGROUP`: the stream or its group is gone.
    Lost,
    /// Anything else: an error or a reply of the wrong shape.
    Unexpected(String),
}

/// The entries of one partition's `XREADGROUP` reply into `batch`, the
/// unreadable ones into `unreadable`.
fn take(
    partition: u16,
    reply: &Reply<'_>,
    batch: &mut Vec<Entry>,
    unreadable: &mut Vec<(u16, Vec<u8>, String)>,
) -> Taken {
    // [[stream, [[id, fields], ...]]], or nil when there is nothing new.
    let streams = match reply {
        Reply::Nil => return Taken::Read,
        Reply::Array(streams) => streams,
        Reply::Error(e) if e.starts_with(b"NOGROUP") => return Taken::Lost,
        Reply::Error(e) => return Taken::Unexpected(String::from_utf8_lossy(e).into_owned()),
        other => return Taken::Unexpected(format!("a reply of the wrong shape: {other:?}")),
    };
    for stream in streams {
        match stream {
            Reply::Array(parts) if parts.len() == 2 => {
                take_messages(partition, &parts[1], batch, unreadable)
            }
            other => return Taken::Unexpected(format!("a stream of the wrong shape: {other:?}")),
        }
    }
    Taken::Read
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
