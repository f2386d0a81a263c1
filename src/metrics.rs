//! Per-core metrics and their Prometheus text exposition.
//!
//! Each executor owns a [`CoreMetrics`] of plain integers: no atomics, no
//! sharing on the hot path. Now and then (and whenever `/metrics` is served)
//! an executor copies its figures into its own slot of the
//! [`MetricsRegistry`]; a scrape renders every core's slot, one `core` label
//! per core. Nothing is summed across cores here: Prometheus does that.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[bucket] += count;
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(count));
        self.count += count;
    }

    /// Requests recorded.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Why a connection was closed by a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request head took longer than `header_timeout_ms`.
    Header,
    /// No progress for `idle_timeout_ms`.
    Idle,
}

/// One core's figures. Owned and written by its executor only.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    /// The CPU this executor is pinned to; the `core` label.
    pub core: usize,
    /// Responses by route and status.
    responses: Vec<[u64; Status::ALL.len()]>,
    /// Requests parsed whose responses have not yet been handed to the kernel.
    pub in_flight: u64,
    /// Time from a request's arrival to its response being sent.
    pub duration: DurationHistogram,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections closed at once because `max_connections` was reached.
    pub connections_rejected: u64,
    /// Redis commands refused at once because `max_redis_in_flight` was
    /// reached (their requests answered 503).
    pub redis_shed: u64,
    /// Deferred answers that did not come within `request_timeout_ms`
    /// (answered 503).
    pub request_timeouts: u64,
    /// Connections closed by the header timeout.
    pub header_timeouts: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
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
            responses: vec![[0; Status::ALL.len()]; routes],
            in_flight: 0,
            duration: DurationHistogram::default(),
            connections_open: 0,
            connections_accepted: 0,
            connections_rejected: 0,
            redis_shed: 0,
            request_timeouts: 0,
            header_timeouts: 0,
            idle_timeouts: 0,
            ring_submissions: 0,
            ring_completions: 0,
            ring_enters: 0,
            recv_buffers_exhausted: 0,
            bytes_received: 0,
            bytes_sent: 0,
        }
    }

    /// Count one response.
    pub fn record_response(&mut self, route: RouteId, status: Status) {
        if let Some(counts) = self.responses.get_mut(usize::from(route)) {
            counts[status.index()] += 1;
        }
    }

    /// Responses counted for `route` with `status`.
    pub fn responses(&self, route: RouteId, status: Status) -> u64 {
        self.responses
            .get(usize::from(route))
            .map_or(0, |counts| counts[status.index()])
    }

    /// Count a connection closed by a timer.
    pub fn record_timeout(&mut self, kind: TimeoutKind) {
        match kind {
            TimeoutKind::Header => self.header_timeouts += 1,
            TimeoutKind::Idle => self.idle_timeouts += 1,
        }
    }
}

/// What the database core counts, shared with the scrape (atomics: the
/// core is off the executors' hot path).
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
fn lock(slot: &Mutex<CoreMetrics>) -> std::sync::MutexGuard<'_, CoreMetrics> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `Content-Type` of [`MetricsRegistry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn render(cores: &[CoreMetrics], routes: &[String], out: &mut String) {
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
        let h = &m.duration;
        let mut cumulative = 0;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count;
            let le = DURATION_BOUNDS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |&ns| seconds(ns));
            let _ = writeln!(
                out,
                "millrace_http_request_duration_seconds_bucket{{core=\"{}\",le=\"{le}\"}} {cumulative}",
                m.core
            );
        }
        let _ = writeln!(
            out,
            "millrace_http_request_duration_seconds_sum{{core=\"{}\"}} {}",
            m.core,
            seconds(h.sum_ns)
        );
        let _ = writeln!(
            out,
            "millrace_http_request_duration_seconds_count{{core=\"{}\"}} {}",
            m.core, h.count
        );
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
    counter(
        out,
        cores,
        "millrace_connections_rejected_total",
        "Client connections closed at once because max_connections was reached.",
        |m| m.connections_rejected,
    );
    counter(
        out,
        cores,
        "millrace_redis_shed_total",
        "Redis commands refused at once because max_redis_in_flight was reached; their requests were answered 503.",
        |m| m.redis_shed,
    );
    counter(
        out,
        cores,
        "millrace_request_timeouts_total",
        "Deferred answers that did not come within request_timeout_ms; their requests were answered 503.",
        |m| m.request_timeouts,
    );
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
    }
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
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
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
