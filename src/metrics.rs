//! Per-core metrics and their Prometheus text exposition.
//!
//! Each executor owns a [`CoreMetrics`] of plain integers: no atomics, no
//! sharing on the hot path. Now and then (and whenever `/metrics` is served)
//! an executor copies its figures into its own slot of the
//! [`MetricsRegistry`]; a scrape renders every core's slot. Counters of the
//! server itself carry a `core` label; histograms per route and the Redis
//! client's figures per node are added across cores at the scrape, so
//! their series do not multiply by the core count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::Status;

/// A route's index in its application's table: its metrics label's index.
pub type RouteId = u16;

/// How stale another core's figures may be in a scrape, at most.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Upper bounds of the request-duration histogram buckets, in nanoseconds.
const DURATION_BOUNDS_NS: [u64; 15] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// A fixed-bucket latency histogram (Prometheus style: cumulative on output).
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    /// Per-bucket counts; the last one is `+Inf`.
    buckets: [u64; DURATION_BOUNDS_NS.len() + 1],
    sum_ns: u64,
    count: u64,
}

impl DurationHistogram {
    /// Record `count` requests that each took `duration`.
    pub fn observe(&mut self, duration: Duration, count: u64) {
        let ns = duration
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(duration.subsec_nanos()));
        // Linear: the common latencies sit in the first few buckets.
        let bucket = DURATION_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[bucket] += count;
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(count));
        self.count += count;
    }

    /// Record one event that took no measurable time (an answer made in
    /// the turn that read its request): no clock read, no bucket search.
    pub fn observe_at_once(&mut self) {
        self.buckets[0] += 1;
        self.count += 1;
    }

    /// Events recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Add `other`'s events to these.
    pub fn merge(&mut self, other: &DurationHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.count += other.count;
    }
}

/// Durations between turn times, remembered: the events timed in one
/// turn mostly began in the same earlier turn (the replies to one write,
/// the answers to one read), and `Instant` subtraction is dear next to a
/// counter's increment.
#[derive(Clone, Copy, Debug)]
pub struct Elapsed {
    from: Instant,
    to: Instant,
    took: Duration,
}

impl Elapsed {
    /// Nothing remembered yet.
    pub fn new(now: Instant) -> Elapsed {
        Elapsed {
            from: now,
            to: now,
            took: Duration::ZERO,
        }
    }

    /// `to - from`, saturating at zero.
    #[inline]
    pub fn since(&mut self, from: Instant, to: Instant) -> Duration {
        if from != self.from || to != self.to {
            *self = Elapsed {
                from,
                to,
                took: to.saturating_duration_since(from),
            };
        }
        self.took
    }
}

/// Why load was turned away at the door: each answered 503 at once (or,
/// for `connections`, closed at once), leaving nothing behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedCause {
    /// A connection past `max_connections`.
    Connections,
    /// A Redis command past the executor's `max_redis_in_flight`.
    RedisInFlight,
    /// A read-through lookup past `max_pending_lookups`.
    Lookups,
    /// A write to a partition at `max_backlog` or `max_backlog_bytes`.
    Backlog,
    /// A write Redis refused for `maxmemory` (`OOM`).
    RedisMemory,
    /// A deferred answer that did not come within `request_timeout_ms`.
    RequestTimeout,
}

impl ShedCause {
    /// Every cause, in label order.
    pub const ALL: [ShedCause; 6] = [
        ShedCause::Connections,
        ShedCause::RedisInFlight,
        ShedCause::Lookups,
        ShedCause::Backlog,
        ShedCause::RedisMemory,
        ShedCause::RequestTimeout,
    ];

    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            ShedCause::Connections => "max_connections",
            ShedCause::RedisInFlight => "max_redis_in_flight",
            ShedCause::Lookups => "max_pending_lookups",
            ShedCause::Backlog => "max_backlog",
            ShedCause::RedisMemory => "redis_maxmemory",
            ShedCause::RequestTimeout => "request_timeout",
        }
    }
}

/// What one executor's store and I/O handle count: shedding and the
/// read-through cache, as seen from the requests.
#[derive(Clone, Debug, Default)]
pub struct IoFigures {
    /// Load turned away, by [`ShedCause`] (in [`ShedCause::ALL`] order).
    pub shed: [u64; ShedCause::ALL.len()],
    /// Reads of a cached table the cache answered with a value.
    pub cache_hits: u64,
    /// Reads the cache answered with "no such key" (a delete or a row the
    /// database did not have, cached for `miss_ttl_ms`).
    pub cache_negative_hits: u64,
    /// Lookups sent to the database core: reads the cache could not answer,
    /// and conditional writes on keys not cached.
    pub lookups: u64,
    /// Lookups sent and not yet answered.
    pub lookups_waiting: u64,
}

impl IoFigures {
    /// Count one thing turned away.
    pub fn shed(&mut self, cause: ShedCause) {
        self.shed[cause as usize] += 1;
    }
}

/// Why a Redis command got no reply, as a label; the index of each kind in
/// [`RedisFigures::failures`].
pub const REDIS_FAILURE_KINDS: [&str; 7] = [
    "connection_lost",
    "timeout",
    "too_many_redirects",
    "cluster_down",
    "unavailable",
    "auth",
    "protocol",
];

/// One Redis node's figures, as one executor's client saw them.
#[derive(Clone, Debug, Default)]
pub struct RedisNodeFigures {
    /// Replies to callers' commands received from the node.
    pub replies: u64,
    /// Of those, error replies passed to the caller (`WRONGTYPE`, `OOM`,
    /// a script's refusal ...).
    pub error_replies: u64,
    /// `MOVED` redirects the node answered.
    pub moved: u64,
    /// `ASK` redirects the node answered.
    pub ask: u64,
    /// `TRYAGAIN`, `CLUSTERDOWN`, `LOADING` or `MASTERDOWN` answers, each
    /// retried after a back-off.
    pub retried: u64,
    /// Connections established (the first one included).
    pub connects: u64,
    /// Connections lost or closed.
    pub disconnects: u64,
    /// Time from a command's write to its reply.
    pub latency: DurationHistogram,
}

impl RedisNodeFigures {
    fn merge(&mut self, other: &RedisNodeFigures) {
        self.replies += other.replies;
        self.error_replies += other.error_replies;
        self.moved += other.moved;
        self.ask += other.ask;
        self.retried += other.retried;
        self.connects += other.connects;
        self.disconnects += other.disconnects;
        self.latency.merge(&other.latency);
    }
}

/// One executor's Redis Cluster client figures.
#[derive(Clone, Debug, Default)]
pub struct RedisFigures {
    /// Each node the client knows: its address, replies awaited from it
    /// now, and its figures.
    pub nodes: Vec<(SocketAddr, u64, RedisNodeFigures)>,
    /// Commands that got no reply, by kind ([`REDIS_FAILURE_KINDS`]).
    pub failures: [u64; REDIS_FAILURE_KINDS.len()],
}

/// One route's figures on one core.
#[derive(Clone, Debug, Default)]
struct RouteFigures {
    /// Responses by status.
    responses: [u64; Status::ALL.len()],
    /// Time from the route's handler being called to its response being
    /// written: 0 for answers made at once, the store's round trips for
    /// deferred ones.
    duration: DurationHistogram,
}

/// Why a connection was closed by a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request head took longer than `header_timeout_ms`.
    Header,
    /// No progress for `idle_timeout_ms`.
    Idle,
    /// A TLS handshake took longer than `tls_handshake_timeout_ms`.
    Handshake,
}

/// TLS on the public listener, one core's.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFigures {
    /// Full handshakes finished.
    pub full_handshakes: u64,
    /// Handshakes that resumed a session.
    pub resumed_handshakes: u64,
    /// Connections ended by a TLS error: a failed handshake (no shared
    /// version or cipher suite, a bad or missing client certificate), a
    /// record that did not decrypt, an alert.
    pub errors: u64,
}

/// One core's figures. Owned and written by its executor only.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    /// The CPU this executor is pinned to; the `core` label.
    pub core: usize,
    /// Responses and their latency, by route.
    routes: Vec<RouteFigures>,
    /// Requests parsed whose responses have not yet been handed to the kernel.
    pub in_flight: u64,
    /// Time from a request's arrival to its response being sent.
    pub duration: DurationHistogram,
    /// Whether the Redis client has a connected master for every slot
    /// (`None`: no Redis Cluster configured).
    pub redis_ready: Option<bool>,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Shedding and the read-through cache, copied from the executor's `Io`.
    pub io: IoFigures,
    /// The Redis client, copied from the executor's cluster client.
    pub redis: RedisFigures,
    /// Connections closed by the header timeout.
    pub header_timeouts: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Connections closed by the TLS handshake timeout.
    pub handshake_timeouts: u64,
    /// TLS handshakes and errors.
    pub tls: TlsFigures,
    /// Submission queue entries handed to the kernel.
    pub ring_submissions: u64,
    /// Completion queue entries reaped.
    pub ring_completions: u64,
    /// `io_uring_enter` calls.
    pub ring_enters: u64,
    /// Times a multishot receive stopped because every provided buffer was in use.
    pub recv_buffers_exhausted: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes sent to clients.
    pub bytes_sent: u64,
}

impl CoreMetrics {
    /// Zeroed figures for the executor on `core`, whose application has
    /// `routes` routes.
    pub fn new(core: usize, routes: usize) -> Self {
        CoreMetrics {
            core,
            routes: vec![RouteFigures::default(); routes],
            in_flight: 0,
            duration: DurationHistogram::default(),
            redis_ready: None,
            connections_open: 0,
            connections_accepted: 0,
            io: IoFigures::default(),
            redis: RedisFigures::default(),
            header_timeouts: 0,
            idle_timeouts: 0,
            handshake_timeouts: 0,
            tls: TlsFigures::default(),
            ring_submissions: 0,
            ring_completions: 0,
            ring_enters: 0,
            recv_buffers_exhausted: 0,
            bytes_received: 0,
            bytes_sent: 0,
        }
    }

    /// Count one response made in the turn that read its request.
    pub fn record_response(&mut self, route: RouteId, status: Status) {
        if let Some(figures) = self.routes.get_mut(usize::from(route)) {
            figures.responses[status.index()] += 1;
            figures.duration.observe_at_once();
        }
    }

    /// Count one deferred response, `took` after its route was called.
    pub fn record_deferred_response(&mut self, route: RouteId, status: Status, took: Duration) {
        if let Some(figures) = self.routes.get_mut(usize::from(route)) {
            figures.responses[status.index()] += 1;
            figures.duration.observe(took, 1);
        }
    }

    /// Responses counted for `route` with `status`.
    pub fn responses(&self, route: RouteId, status: Status) -> u64 {
        self.routes
            .get(usize::from(route))
            .map_or(0, |figures| figures.responses[status.index()])
    }

    /// Count a connection closed by a timer.
    pub fn record_timeout(&mut self, kind: TimeoutKind) {
        match kind {
            TimeoutKind::Header => self.header_timeouts += 1,
            TimeoutKind::Idle => self.idle_timeouts += 1,
            TimeoutKind::Handshake => self.handshake_timeouts += 1,
        }
    }
}

/// Upper bounds of the batch-size histogram's buckets, in rows.
const BATCH_ROWS_BOUNDS: [u64; 10] = [1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 50_000];

/// What the database core counts, shared with the scrape (atomics and
/// locks: the core is off the executors' hot path, and takes each lock
/// once a batch).
#[derive(Debug, Default)]
pub struct WritebackMetrics {
    /// Partitions whose stream or group was found missing and created again.
    pub queue_losses: AtomicU64,
    /// Reads of the queue that failed or got an unexpected reply, and were
    /// tried again.
    pub read_errors: AtomicU64,
    /// kv writes read with a version not above one already read from their
    /// partition: the stream went back, and such a write may lose to an
    /// older one.
    pub version_regressions: AtomicU64,
    /// Rows committed to PostgreSQL.
    pub rows_written: AtomicU64,
    /// Batch writes that failed and were tried again.
    pub batch_retries: AtomicU64,
    /// Entries taken over from consumers that left them pending.
    pub entries_claimed: AtomicU64,
    /// When the last batch committed, in Unix milliseconds (0: none yet).
    pub last_commit_ms: AtomicI64,
    /// When the core last committed, started, or saw the queue empty, in
    /// Unix milliseconds: the drain is stalled if this grows old.
    pub last_progress_ms: AtomicI64,
    /// Read-through queries run.
    pub lookup_queries: AtomicU64,
    /// Keys asked for by those queries.
    pub lookup_keys: AtomicU64,
    /// Read-through queries that failed (their waiting requests answered 503).
    pub lookup_failures: AtomicU64,
    /// The queue as last read from Redis.
    pub backlog: Mutex<Backlog>,
    /// Committed batches: their sizes and how long each took.
    pub batches: Mutex<Batches>,
}

/// The write-back queue as the database core last read it.
#[derive(Clone, Debug, Default)]
pub struct Backlog {
    /// Entries and bytes waiting in each partition.
    pub partitions: Vec<(u64, u64)>,
    /// When the oldest waiting entry was queued, in Unix milliseconds (0:
    /// nothing waits).
    pub oldest_ms: i64,
}

/// Committed batches.
#[derive(Clone, Debug, Default)]
pub struct Batches {
    /// Rows per batch: per-bucket counts, the last one `+Inf`.
    rows: [u64; BATCH_ROWS_BOUNDS.len() + 1],
    rows_sum: u64,
    /// From the start of a batch's write to its commit (retries included).
    pub commit: DurationHistogram,
}

impl WritebackMetrics {
    /// Count a committed batch of `rows` rows that took `took` to write.
    pub fn record_batch(&self, rows: u64, took: Duration) {
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
        let now = unix_ms();
        self.last_commit_ms.store(now, Ordering::Relaxed);
        self.last_progress_ms.store(now, Ordering::Relaxed);
        let mut batches = lock(&self.batches);
        let bucket = BATCH_ROWS_BOUNDS
            .iter()
            .position(|&bound| rows <= bound)
            .unwrap_or(BATCH_ROWS_BOUNDS.len());
        batches.rows[bucket] += 1;
        batches.rows_sum += rows;
        batches.commit.observe(took, 1);
    }

    /// Take the queue's figures as read now.
    pub fn record_backlog(&self, backlog: Backlog) {
        if backlog.partitions.iter().all(|&(entries, _)| entries == 0) {
            self.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
        }
        *lock(&self.backlog) = backlog;
    }

    /// The core starts: it has made no progress yet, and is not stalled.
    pub fn record_start(&self) {
        self.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Every core's last published figures, for scraping.
pub struct MetricsRegistry {
    cores: Box<[Mutex<CoreMetrics>]>,
    /// Each route's `route` label, by [`RouteId`].
    routes: Vec<String>,
    /// The database core's, when this process runs one.
    writeback: Option<Arc<WritebackMetrics>>,
}

impl MetricsRegistry {
    /// One slot per executor, in executor order, labelled with its CPU;
    /// responses labelled by `routes`, the names of the application's
    /// routes in [`RouteId`] order.
    pub fn new(cpus: &[usize], routes: Vec<String>) -> Self {
        MetricsRegistry {
            cores: cpus
                .iter()
                .map(|&cpu| Mutex::new(CoreMetrics::new(cpu, routes.len())))
                .collect(),
            routes,
            writeback: None,
        }
    }

    /// The routes' labels, by [`RouteId`].
    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    /// Also render the database core's figures.
    pub fn with_writeback(mut self, writeback: Arc<WritebackMetrics>) -> Self {
        self.writeback = Some(writeback);
        self
    }

    /// The CPU of an executor whose Redis client lacks a connected master
    /// for some slot, if any does.
    pub fn redis_unready_core(&self) -> Option<usize> {
        self.cores.iter().find_map(|slot| {
            let m = lock(slot);
            (m.redis_ready == Some(false)).then_some(m.core)
        })
    }

    /// How long this process's database core has gone without progress,
    /// if longer than `stall`.
    pub fn writeback_stalled(&self, stall: Duration) -> Option<Duration> {
        let writeback = self.writeback.as_ref()?;
        let since = unix_ms() - writeback.last_progress_ms.load(Ordering::Relaxed);
        let since = Duration::from_millis(u64::try_from(since).unwrap_or(0));
        (since > stall).then_some(since)
    }

    /// Copy executor `index`'s figures into its slot.
    pub fn publish(&self, index: usize, metrics: &CoreMetrics) {
        lock(&self.cores[index]).clone_from(metrics);
    }

    /// A copy of every slot, in executor order.
    pub fn snapshot(&self) -> Vec<CoreMetrics> {
        self.cores.iter().map(|slot| lock(slot).clone()).collect()
    }

    /// Render every slot in the Prometheus text format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        render(&self.snapshot(), &self.routes, out);
        if let Some(writeback) = &self.writeback {
            render_writeback(writeback, out);
        }
    }
}

/// A slot holds plain numbers, so a panic elsewhere cannot leave it half
/// written in a way that matters: use it even if poisoned.
fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `Content-Type` of [`MetricsRegistry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn render(cores: &[CoreMetrics], routes: &[String], out: &mut String) {
    if cores.is_empty() {
        return; // A database core on its own: no executors.
    }
    family(
        out,
        "millrace_http_requests_total",
        "counter",
        "HTTP responses sent, by route and status; route=\"unmatched\" counts requests refused before routing.",
    );
    for m in cores {
        for (route, name) in routes.iter().enumerate() {
            for status in Status::ALL {
                let n = m.responses(route as RouteId, status);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "millrace_http_requests_total{{core=\"{}\",route=\"{}\",status=\"{}\"}} {n}",
                        m.core,
                        escape_label(name),
                        status.code()
                    );
                }
            }
        }
    }
    gauge(
        out,
        cores,
        "millrace_http_requests_in_flight",
        "Requests parsed whose responses are not yet sent.",
        |m| m.in_flight,
    );
    family(
        out,
        "millrace_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response being handed to the kernel.",
    );
    for m in cores {
        histogram(
            out,
            "millrace_http_request_duration_seconds",
            &format!("core=\"{}\"", m.core),
            &m.duration,
        );
    }
    family(
        out,
        "millrace_http_route_duration_seconds",
        "histogram",
        "Time from a request reaching its route to its response being written, by route, all cores together; answers made at once count as 0, deferred ones as the store's round trips.",
    );
    for (route, name) in routes.iter().enumerate() {
        let mut merged = DurationHistogram::default();
        for m in cores {
            if let Some(figures) = m.routes.get(route) {
                merged.merge(&figures.duration);
            }
        }
        if merged.count > 0 {
            let labels = format!("route=\"{}\"", escape_label(name));
            histogram(
                out,
                "millrace_http_route_duration_seconds",
                &labels,
                &merged,
            );
        }
    }
    gauge(
        out,
        cores,
        "millrace_connections_open",
        "Client connections open.",
        |m| m.connections_open,
    );
    counter(
        out,
        cores,
        "millrace_connections_accepted_total",
        "Client connections accepted.",
        |m| m.connections_accepted,
    );
    family(
        out,
        "millrace_shed_total",
        "counter",
        "Load turned away at the door, by the limit that did it: requests answered 503 at once (connections closed at once for max_connections), leaving nothing behind.",
    );
    for m in cores {
        for cause in ShedCause::ALL {
            let _ = writeln!(
                out,
                "millrace_shed_total{{core=\"{}\",cause=\"{}\"}} {}",
                m.core,
                cause.label(),
                m.io.shed[cause as usize]
            );
        }
    }
    family(
        out,
        "millrace_connection_timeouts_total",
        "counter",
        "Client connections closed by a timer, by which timer.",
    );
    for m in cores {
        let _ = writeln!(
            out,
            "millrace_connection_timeouts_total{{core=\"{}\",kind=\"header\"}} {}",
            m.core, m.header_timeouts
        );
        let _ = writeln!(
            out,
            "millrace_connection_timeouts_total{{core=\"{}\",kind=\"idle\"}} {}",
            m.core, m.idle_timeouts
        );
        let _ = writeln!(
            out,
            "millrace_connection_timeouts_total{{core=\"{}\",kind=\"handshake\"}} {}",
            m.core, m.handshake_timeouts
        );
    }
    family(
        out,
        "millrace_tls_handshakes_total",
        "counter",
        "TLS handshakes finished on the public listener, full or resumed.",
    );
    for m in cores {
        for (kind, count) in [
            ("full", m.tls.full_handshakes),
            ("resumed", m.tls.resumed_handshakes),
        ] {
            let _ = writeln!(
                out,
                "millrace_tls_handshakes_total{{core=\"{}\",kind=\"{kind}\"}} {count}",
                m.core
            );
        }
    }
    counter(
        out,
        cores,
        "millrace_tls_errors_total",
        "Connections ended by a TLS error: a failed handshake, a record that did not decrypt, an alert.",
        |m| m.tls.errors,
    );
    counter(
        out,
        cores,
        "millrace_ring_submissions_total",
        "io_uring submission queue entries submitted.",
        |m| m.ring_submissions,
    );
    counter(
        out,
        cores,
        "millrace_ring_completions_total",
        "io_uring completion queue entries reaped.",
        |m| m.ring_completions,
    );
    counter(
        out,
        cores,
        "millrace_ring_enters_total",
        "io_uring_enter system calls.",
        |m| m.ring_enters,
    );
    counter(
        out,
        cores,
        "millrace_recv_buffers_exhausted_total",
        "Multishot receives stopped because every provided buffer was in use.",
        |m| m.recv_buffers_exhausted,
    );
    counter(
        out,
        cores,
        "millrace_bytes_received_total",
        "Bytes received from clients.",
        |m| m.bytes_received,
    );
    counter(
        out,
        cores,
        "millrace_bytes_sent_total",
        "Bytes sent to clients.",
        |m| m.bytes_sent,
    );
    family(
        out,
        "millrace_cache_reads_total",
        "counter",
        "Reads of cached tables the Redis cache answered, by what it said: a value (hit) or no such key (negative_hit); the rest went to read-through.",
    );
    for m in cores {
        for (result, n) in [
            ("hit", m.io.cache_hits),
            ("negative_hit", m.io.cache_negative_hits),
        ] {
            let _ = writeln!(
                out,
                "millrace_cache_reads_total{{core=\"{}\",result=\"{result}\"}} {n}",
                m.core
            );
        }
    }
    counter(
        out,
        cores,
        "millrace_readthrough_lookups_total",
        "Keys sent to the database core to be read from PostgreSQL: cache misses, and conditional writes on keys not cached.",
        |m| m.io.lookups,
    );
    gauge(
        out,
        cores,
        "millrace_readthrough_lookups_waiting",
        "Keys sent to the database core and not yet answered.",
        |m| m.io.lookups_waiting,
    );
    render_redis(cores, out);
}

/// The Redis client's figures: per node, every core's added together; failures per core.
fn render_redis(cores: &[CoreMetrics], out: &mut String) {
    let mut nodes: BTreeMap<SocketAddr, (u64, RedisNodeFigures)> = BTreeMap::new();
    for m in cores {
        for (address, in_flight, figures) in &m.redis.nodes {
            let node = nodes.entry(*address).or_default();
            node.0 += in_flight;
            node.1.merge(figures);
        }
    }
    if nodes.is_empty() {
        return; // No Redis Cluster configured.
    }
    type Value = fn(&(u64, RedisNodeFigures)) -> u64;
    let families: [(&str, &str, &str, Value); 8] = [
        (
            "millrace_redis_replies_total",
            "counter",
            "Replies to commands received from each Redis node, all cores together.",
            |n| n.1.replies,
        ),
        (
            "millrace_redis_error_replies_total",
            "counter",
            "Error replies passed on to the caller (WRONGTYPE, OOM, a script's refusal), by node.",
            |n| n.1.error_replies,
        ),
        (
            "millrace_redis_moved_total",
            "counter",
            "MOVED redirects answered by each node (a slot changed owner).",
            |n| n.1.moved,
        ),
        (
            "millrace_redis_ask_total",
            "counter",
            "ASK redirects answered by each node (a slot migrating).",
            |n| n.1.ask,
        ),
        (
            "millrace_redis_retries_total",
            "counter",
            "TRYAGAIN, CLUSTERDOWN, LOADING or MASTERDOWN answers from each node, retried after a back-off.",
            |n| n.1.retried,
        ),
        (
            "millrace_redis_connects_total",
            "counter",
            "Connections established to each node; more than one per core is a reconnect.",
            |n| n.1.connects,
        ),
        (
            "millrace_redis_disconnects_total",
            "counter",
            "Connections to each node lost or closed.",
            |n| n.1.disconnects,
        ),
        (
            "millrace_redis_in_flight",
            "gauge",
            "Commands written to each node and not yet answered.",
            |n| n.0,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for (address, node) in &nodes {
            let _ = writeln!(out, "{name}{{node=\"{address}\"}} {}", value(node));
        }
    }
    family(
        out,
        "millrace_redis_command_duration_seconds",
        "histogram",
        "Time from a command being written to a node to its reply, all cores together.",
    );
    for (address, node) in &nodes {
        let labels = format!("node=\"{address}\"");
        histogram(
            out,
            "millrace_redis_command_duration_seconds",
            &labels,
            &node.1.latency,
        );
    }
    family(
        out,
        "millrace_redis_failures_total",
        "counter",
        "Commands that got no reply, by why: the connection was lost after it was sent, no reply in command_timeout_ms, too many redirects, the cluster kept refusing until the deadline, no node reachable, refused credentials, bytes that were not RESP.",
    );
    for m in cores {
        for (kind, n) in REDIS_FAILURE_KINDS.iter().zip(m.redis.failures) {
            let _ = writeln!(
                out,
                "millrace_redis_failures_total{{core=\"{}\",kind=\"{kind}\"}} {n}",
                m.core
            );
        }
    }
}

fn render_writeback(m: &WritebackMetrics, out: &mut String) {
    for (name, help, value) in [
        (
            "millrace_writeback_queue_losses_total",
            "Write-back partitions whose stream or consumer group was found missing (a Redis master that lost its data) and created again; entries queued there may have been lost.",
            &m.queue_losses,
        ),
        (
            "millrace_writeback_read_errors_total",
            "Reads of the write-back queue that failed or got an unexpected reply, and were tried again.",
            &m.read_errors,
        ),
        (
            "millrace_writeback_version_regressions_total",
            "kv writes read with a version not above one already read from their partition (the stream went back: a failover to a lagging replica or a lost stream, on a master whose clock is behind); such a write loses to the newer version in the merge.",
            &m.version_regressions,
        ),
        (
            "millrace_writeback_rows_written_total",
            "Rows committed to PostgreSQL.",
            &m.rows_written,
        ),
        (
            "millrace_writeback_batch_retries_total",
            "Batch writes to PostgreSQL that failed and were tried again.",
            &m.batch_retries,
        ),
        (
            "millrace_writeback_entries_claimed_total",
            "Queue entries taken over from a consumer that left them pending past claim_idle_ms.",
            &m.entries_claimed,
        ),
        (
            "millrace_readthrough_queries_total",
            "Read-through queries run on PostgreSQL (each for every key that missed since the last one started).",
            &m.lookup_queries,
        ),
        (
            "millrace_readthrough_query_keys_total",
            "Keys asked for by read-through queries.",
            &m.lookup_keys,
        ),
        (
            "millrace_readthrough_query_failures_total",
            "Read-through queries that failed; their waiting requests were answered 503.",
            &m.lookup_failures,
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    let last_commit_ms = m.last_commit_ms.load(Ordering::Relaxed);
    family(
        out,
        "millrace_writeback_last_commit_timestamp_seconds",
        "gauge",
        "When the last batch committed, in Unix seconds; 0 before the first.",
    );
    let _ = writeln!(
        out,
        "millrace_writeback_last_commit_timestamp_seconds {}",
        seconds(u64::try_from(last_commit_ms).unwrap_or(0) * 1_000_000)
    );
    let backlog = lock(&m.backlog).clone();
    for (name, help, pick) in [
        (
            "millrace_writeback_backlog_entries",
            "Entries waiting in each write-back partition, as last read (every 250 ms).",
            (|p: &(u64, u64)| p.0) as fn(&(u64, u64)) -> u64,
        ),
        (
            "millrace_writeback_backlog_bytes",
            "Bytes of entries waiting in each write-back partition, as last read; max_backlog_bytes caps it.",
            |p: &(u64, u64)| p.1,
        ),
    ] {
        family(out, name, "gauge", help);
        for (partition, figures) in backlog.partitions.iter().enumerate() {
            let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {}", pick(figures));
        }
    }
    let age_ms = if backlog.oldest_ms > 0 {
        (unix_ms() - backlog.oldest_ms).max(0)
    } else {
        0
    };
    family(
        out,
        "millrace_writeback_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest entry waiting in the write-back queue; 0 when nothing waits.",
    );
    let _ = writeln!(
        out,
        "millrace_writeback_oldest_pending_age_seconds {}",
        seconds(u64::try_from(age_ms).unwrap_or(0) * 1_000_000)
    );
    let batches = lock(&m.batches).clone();
    family(
        out,
        "millrace_writeback_batch_rows",
        "histogram",
        "Rows in each committed batch.",
    );
    let mut cumulative = 0;
    for (i, count) in batches.rows.iter().enumerate() {
        cumulative += count;
        let le = BATCH_ROWS_BOUNDS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), u64::to_string);
        let _ = writeln!(
            out,
            "millrace_writeback_batch_rows_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "millrace_writeback_batch_rows_sum {}",
        batches.rows_sum
    );
    let _ = writeln!(out, "millrace_writeback_batch_rows_count {cumulative}");
    family(
        out,
        "millrace_writeback_commit_duration_seconds",
        "histogram",
        "Time from the start of a batch's write to its commit, retries included.",
    );
    histogram(
        out,
        "millrace_writeback_commit_duration_seconds",
        "",
        &batches.commit,
    );
}

/// A histogram's sample lines; `labels` (may be empty) go before `le`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &DurationHistogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, count) in h.buckets.iter().enumerate() {
        cumulative += count;
        let le = DURATION_BOUNDS_NS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |&ns| seconds(ns));
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", seconds(h.sum_ns));
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    cores: &[CoreMetrics],
    name: &str,
    help: &str,
    value: fn(&CoreMetrics) -> u64,
) {
    per_core(out, cores, name, "counter", help, value);
}

fn gauge(
    out: &mut String,
    cores: &[CoreMetrics],
    name: &str,
    help: &str,
    value: fn(&CoreMetrics) -> u64,
) {
    per_core(out, cores, name, "gauge", help, value);
}

fn per_core(
    out: &mut String,
    cores: &[CoreMetrics],
    name: &str,
    kind: &str,
    help: &str,
    value: fn(&CoreMetrics) -> u64,
) {
    family(out, name, kind, help);
    for m in cores {
        let _ = writeln!(out, "{name}{{core=\"{}\"}} {}", m.core, value(m));
    }
}

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Nanoseconds as decimal seconds, exactly (no float rounding).
fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_seconds() {
        let mut m = CoreMetrics::new(3, 1);
        m.duration.observe(Duration::from_micros(40), 2);
        m.duration.observe(Duration::from_millis(3), 1);
        m.duration.observe(Duration::from_secs(10), 1);
        let mut out = String::new();
        render(&[m], &["r".into()], &mut out);
        let line = |needle: &str| {
            out.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{out}"))
                .to_string()
        };
        assert!(
            line("millrace_http_request_duration_seconds_bucket{core=\"3\",le=\"0.00005\"}")
                .ends_with(" 2")
        );
        assert!(
            line("millrace_http_request_duration_seconds_bucket{core=\"3\",le=\"0.0025\"}")
                .ends_with(" 2")
        );
        assert!(
            line("millrace_http_request_duration_seconds_bucket{core=\"3\",le=\"0.005\"}")
                .ends_with(" 3")
        );
        assert!(
            line("millrace_http_request_duration_seconds_bucket{core=\"3\",le=\"2.5\"}")
                .ends_with(" 3")
        );
        assert!(
            line("millrace_http_request_duration_seconds_bucket{core=\"3\",le=\"+Inf\"}")
                .ends_with(" 4")
        );
        assert_eq!(
            line("millrace_http_request_duration_seconds_sum{core=\"3\"}"),
            "millrace_http_request_duration_seconds_sum{core=\"3\"} 10.00308"
        );
        assert!(line("millrace_http_request_duration_seconds_count{core=\"3\"}").ends_with(" 4"));
    }

    #[test]
    fn responses_are_labelled_by_core_route_and_status() {
        let registry = MetricsRegistry::new(&[0, 1], vec!["plaintext".into(), "unmatched".into()]);
        let mut m = CoreMetrics::new(1, 2);
        m.record_response(0, Status::Ok);
        m.record_response(0, Status::Ok);
        m.record_response(1, Status::NotFound);
        registry.publish(1, &m);
        let mut out = String::new();
        registry.render(&mut out);
        assert!(out.contains(
            "millrace_http_requests_total{core=\"1\",route=\"plaintext\",status=\"200\"} 2\n"
        ));
        assert!(out.contains(
            "millrace_http_requests_total{core=\"1\",route=\"unmatched\",status=\"404\"} 1\n"
        ));
        assert!(
            !out.contains("core=\"0\",route="),
            "zero series are left out"
        );
        assert!(out.contains("millrace_connections_open{core=\"0\"} 0\n"));
        // Every sample line belongs to a family announced before it.
        let mut families = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    families.iter().any(|f| name.starts_with(f.as_str())),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn route_labels_are_escaped() {
        assert_eq!(escape_label("GET /{code}"), "GET /{code}");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(50_000), "0.00005");
        assert_eq!(seconds(2_500_000_000), "2.5");
        assert_eq!(seconds(1_000_000_000), "1");
        assert_eq!(seconds(0), "0");
    }
}
