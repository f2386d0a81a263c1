//! What one generator thread measured, and the exact merge of all threads:
//! histograms are added count by count, never percentiles averaged.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::intervals::Interval;
use super::ledger;

/// Latencies are recorded in nanoseconds, up to an hour; longer ones are
/// recorded as an hour.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// Significant decimal digits every histogram keeps.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Why a request, or a connection, failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A connection could not be made (refused, unreachable, timed out).
    Connect,
    /// No answer within `--timeout` of the request's start.
    Timeout,
    /// The connection closed or failed while the request waited for its answer.
    Read,
    /// The connection failed while the request was being written.
    Write,
    /// The server's answer could not be parsed.
    Malformed,
}

/// Error counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connection attempts that failed (not requests).
    pub connect: u64,
    /// Requests with no answer in time.
    pub timeout: u64,
    /// Requests lost to a connection that closed or failed while they waited.
    pub read: u64,
    /// Requests lost to a failed write.
    pub write: u64,
    /// Requests whose answer was malformed.
    pub malformed: u64,
    /// Answers with a 4xx or 5xx status the workload does not expect.
    pub status: u64,
}

impl Errors {
    /// Every error, connection failures included.
    pub fn total(&self) -> u64 {
        self.connect + self.requests_failed() + self.status
    }

    /// Requests that got no answer.
    pub fn requests_failed(&self) -> u64 {
        self.timeout + self.read + self.write + self.malformed
    }

    fn count(&mut self, kind: Failure) {
        match kind {
            Failure::Connect => self.connect += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Read => self.read += 1,
            Failure::Write => self.write += 1,
            Failure::Malformed => self.malformed += 1,
        }
    }

    fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.read += other.read;
        self.write += other.write;
        self.malformed += other.malformed;
        self.status += other.status;
    }
}

/// Answers by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
pub type StatusClasses = [u64; 5];

/// One second of the measured run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Requests answered in this second.
    pub answered: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Sum of corrected latencies answered in this second, for the mean.
    pub latency_sum_ns: u64,
    /// Largest corrected latency answered in this second.
    pub latency_max_ns: u64,
}

/// Latencies of one operation's requests.
#[derive(Clone, Debug)]
pub struct Latencies {
    /// From each request's intended start: its scheduled time in an open-loop
    /// run, its send in a closed-loop one.
    pub corrected: Histogram<u64>,
    /// From each request's actual send.
    pub uncorrected: Histogram<u64>,
}

impl Latencies {
    /// Both empty.
    pub fn new() -> Self {
        Latencies {
            corrected: latency_histogram(),
            uncorrected: latency_histogram(),
        }
    }

    /// Add `other`'s counts to these, exactly.
    pub fn add(&mut self, other: &Latencies) {
        self.corrected
            .add(&other.corrected)
            .expect("histograms share their bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("histograms share their bounds");
    }

    fn record(&mut self, corrected_ns: u64, uncorrected_ns: u64) {
        self.corrected.saturating_record(corrected_ns);
        self.uncorrected.saturating_record(uncorrected_ns);
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// What the requests of one of the workload's operations measured.
#[derive(Clone, Debug)]
pub struct Operation {
    /// Latencies of the intervals closed so far (see [`Stats::latencies`]).
    closed: Latencies,
    /// Requests that got a whole answer.
    pub answered: u64,
    /// Answers by status class.
    pub statuses: StatusClasses,
    /// Errors of requests sent as this operation (a connection that could
    /// not be made, or a request that timed out before it was sent, is no
    /// operation's: those count only in the run's [`Stats::errors`]).
    pub errors: Errors,
}

impl Operation {
    fn new() -> Self {
        Operation {
            closed: Latencies::new(),
            answered: 0,
            statuses: [0; 5],
            errors: Errors::default(),
        }
    }

    fn merge(&mut self, other: &Operation) {
        self.closed.add(&other.closed);
        self.answered += other.answered;
        for (mine, theirs) in self.statuses.iter_mut().zip(other.statuses) {
            *mine += theirs;
        }
        self.errors.add(&other.errors);
    }
}

/// The interval a thread is recording, and where closed ones go.
#[derive(Clone, Debug)]
struct IntervalSink {
    /// Which interval: whole seconds since measurement started.
    index: usize,
    /// Each operation's latencies in it so far.
    current: Vec<Latencies>,
    /// The main thread, and this thread's index; `None`: closed intervals
    /// are only added into the totals.
    to: Option<(usize, mpsc::Sender<Interval>)>,
}

/// An empty latency histogram, in nanoseconds, with millrace load's bounds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// TLS handshakes, apart from request latency: a request is issued only
/// once its connection's handshake is done.
#[derive(Clone, Debug)]
pub struct Handshakes {
    /// Full handshakes finished while measuring.
    pub full: u64,
    /// Handshakes that resumed a session while measuring.
    pub resumed: u64,
    /// Time from the TCP connect's completion to the handshake's end, in
    /// nanoseconds.
    pub time: Histogram<u64>,
    /// The first handshake failure, as rustls put it.
    pub first_error: Option<String>,
    /// The version and cipher suite the first handshake agreed on.
    pub negotiated: Option<String>,
}

impl Handshakes {
    fn new() -> Self {
        Handshakes {
            full: 0,
            resumed: 0,
            time: latency_histogram(),
            first_error: None,
            negotiated: None,
        }
    }

    /// `conn`'s handshake finished, `took` after the TCP connect; counted
    /// and timed if `measured`. The first one's version and cipher suite
    /// are kept.
    pub fn finished(&mut self, conn: &rustls::Connection, took: Duration, measured: bool) {
        if self.negotiated.is_none() {
            self.negotiated = Some(format!(
                "{:?} {:?}",
                conn.protocol_version()
                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                conn.negotiated_cipher_suite()
                    .map_or(rustls::CipherSuite::Unknown(0), |s| s.suite())
            ));
        }
        if !measured {
            return;
        }
        match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => self.resumed += 1,
            _ => self.full += 1,
        }
        self.time
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    fn add(&mut self, other: &Handshakes) {
        self.full += other.full;
        self.resumed += other.resumed;
        self.time
            .add(&other.time)
            .expect("histograms share their bounds");
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        if self.negotiated.is_none() {
            self.negotiated.clone_from(&other.negotiated);
        }
    }
}

/// Everything one thread (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Each operation's answers and errors, in the workload's order.
    pub operations: Vec<Operation>,
    /// Latencies by interval: the one being recorded.
    intervals: IntervalSink,
    /// Requests started: sent (closed loop) or scheduled (open loop).
    pub issued: u64,
    /// Requests written to a connection.
    pub sent: u64,
    /// Requests that got a whole answer.
    pub answered: u64,
    /// Requests still waiting when the run ended: neither answered nor failed.
    pub unfinished: u64,
    /// Errors by kind, every operation's and those of no operation.
    pub errors: Errors,
    /// Answers by status class.
    pub statuses: StatusClasses,
    /// Connections opened.
    pub connections_opened: u64,
    /// TLS handshakes (none over plain HTTP).
    pub handshakes: Handshakes,
    /// Open loop: how late the generator saw each measured request come
    /// due, in nanoseconds (its own delay, not the server's).
    pub send_lag: Histogram<u64>,
    /// The busiest thread's share of its CPU while measuring (0 to 1).
    pub cpu_busy: f64,
    /// Per-second figures from the start of measurement.
    pub timeline: Vec<Second>,
    /// Every sent request's events and answer, warm-up included, when a
    /// ledger is kept; not merged (each thread's is written as it is).
    pub ledger: Option<Vec<ledger::Entry>>,
}

impl Stats {
    /// Empty figures for a workload with `operations` kinds of request
    /// (at least one).
    pub fn new(operations: usize) -> Self {
        let operations = operations.max(1);
        Stats {
            operations: (0..operations).map(|_| Operation::new()).collect(),
            intervals: IntervalSink {
                index: 0,
                current: (0..operations).map(|_| Latencies::new()).collect(),
                to: None,
            },
            issued: 0,
            sent: 0,
            answered: 0,
            unfinished: 0,
            errors: Errors::default(),
            statuses: [0; 5],
            connections_opened: 0,
            handshakes: Handshakes::new(),
            send_lag: latency_histogram(),
            cpu_busy: 0.0,
            timeline: Vec::new(),
            ledger: None,
        }
    }

    /// Send each closed interval to `to` as thread `thread`'s.
    pub fn with_intervals_to(mut self, thread: usize, to: mpsc::Sender<Interval>) -> Self {
        self.intervals.to = Some((thread, to));
        self
    }

    /// Add `latencies` to operation `index`'s (latencies recorded
    /// elsewhere: another run's interval log).
    pub fn add_latencies(&mut self, index: usize, latencies: &Latencies) {
        self.operations[index].closed.add(latencies);
    }

    /// Operation `index`'s latencies over the whole run so far.
    pub fn latencies(&self, index: usize) -> Latencies {
        let mut all = self.operations[index].closed.clone();
        all.add(&self.intervals.current[index]);
        all
    }

    /// The run's corrected latency: every operation's, added exactly.
    pub fn corrected(&self) -> Histogram<u64> {
        self.sum(|l| &l.corrected)
    }

    /// The run's uncorrected latency: every operation's, added exactly.
    pub fn uncorrected(&self) -> Histogram<u64> {
        self.sum(|l| &l.uncorrected)
    }

    fn sum(&self, of: impl Fn(&Latencies) -> &Histogram<u64>) -> Histogram<u64> {
        let mut total = latency_histogram();
        for index in 0..self.operations.len() {
            total
                .add(of(&self.latencies(index)))
                .expect("histograms share their bounds");
        }
        total
    }

    /// Measurement is in second `second`: close the interval being
    /// recorded if it is an earlier one.
    pub fn tick(&mut self, second: usize) {
        if second > self.intervals.index {
            self.close_interval(second);
        }
    }

    /// The thread records nothing more: close the interval being recorded.
    pub fn end_intervals(&mut self) {
        self.close_interval(usize::MAX);
    }

    /// Add the interval being recorded into the totals, send it on, and
    /// start interval `next`.
    fn close_interval(&mut self, next: usize) {
        let sink = &mut self.intervals;
        for (op, current) in self.operations.iter_mut().zip(&sink.current) {
            op.closed.add(current);
        }
        let closed = sink.index;
        sink.index = next;
        let fresh = || {
            (0..self.operations.len())
                .map(|_| Latencies::new())
                .collect()
        };
        match &sink.to {
            Some((thread, to)) => {
                let interval = Interval {
                    thread: *thread,
                    index: closed,
                    operations: std::mem::replace(&mut sink.current, fresh()),
                    next,
                };
                // The main thread gone means the run is over anyway.
                let _ = to.send(interval);
                if next == usize::MAX {
                    // The last: the main thread waits for every sender to go.
                    sink.to = None;
                }
            }
            None => sink.current = fresh(),
        }
    }

    /// The same, keeping a ledger if `keep`.
    pub fn with_ledger(mut self, keep: bool) -> Self {
        self.ledger = keep.then(Vec::new);
        self
    }

    /// Note a sent request's answer (`None`: it got none) in the ledger, if
    /// one is kept and the request carried events.
    pub fn record_ledger(&mut self, events: Option<ledger::EventIds>, status: Option<u16>) {
        if let (Some(ledger), Some(events)) = (&mut self.ledger, events) {
            ledger.push(ledger::Entry { events, status });
        }
    }

    /// An answer with `status` to a request of `operation`; `error` when
    /// its status counts as one.
    pub fn answer(
        &mut self,
        operation: u8,
        status: u16,
        error: bool,
        corrected: Duration,
        uncorrected: Duration,
        second: usize,
    ) {
        let corrected_ns = nanos(corrected);
        self.tick(second);
        let index = self.operation_index(operation);
        self.intervals.current[index].record(corrected_ns, nanos(uncorrected));
        let op = &mut self.operations[index];
        op.answered += 1;
        let class = status_class(status);
        if let Some(class) = class {
            op.statuses[class] += 1;
        }
        if error {
            op.errors.status += 1;
        }
        if let Some(class) = class {
            self.statuses[class] += 1;
        }
        self.answered += 1;
        let second = self.second(second);
        second.answered += 1;
        second.latency_sum_ns = second.latency_sum_ns.saturating_add(corrected_ns);
        second.latency_max_ns = second.latency_max_ns.max(corrected_ns);
        if error {
            second.errors += 1;
            self.errors.status += 1;
        }
    }

    /// The generator saw a measured request come due `lag` late.
    pub fn send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(nanos(lag));
    }

    /// This thread used `cpu` of CPU time over `wall` of measurement.
    pub fn cpu_busy(&mut self, cpu: Duration, wall: Duration) {
        if !wall.is_zero() {
            self.cpu_busy = self.cpu_busy.max(cpu.as_secs_f64() / wall.as_secs_f64());
        }
    }

    /// A failure of `kind`, counted in `second`: of a request sent as
    /// `operation`, or of no operation (`None`: a connection, or a request
    /// that timed out before it was sent).
    pub fn fail(&mut self, kind: Failure, operation: Option<u8>, second: usize) {
        self.errors.count(kind);
        if let Some(operation) = operation {
            let index = self.operation_index(operation);
            self.operations[index].errors.count(kind);
        }
        self.second(second).errors += 1;
    }

    /// Where operation `operation` is counted: an index past the
    /// workload's (a bug) counts under the last.
    fn operation_index(&self, operation: u8) -> usize {
        usize::from(operation).min(self.operations.len() - 1)
    }

    fn second(&mut self, index: usize) -> &mut Second {
        if index >= self.timeline.len() {
            self.timeline.resize(index + 1, Second::default());
        }
        &mut self.timeline[index]
    }

    /// Add `other`'s figures to these, exactly.
    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.operations.iter_mut().zip(&other.operations) {
            mine.merge(theirs);
        }
        let current = other.intervals.current.iter();
        for (mine, theirs) in self.intervals.current.iter_mut().zip(current) {
            mine.add(theirs);
        }
        self.issued += other.issued;
        self.sent += other.sent;
        self.answered += other.answered;
        self.unfinished += other.unfinished;
        self.errors.add(&other.errors);
        for (mine, theirs) in self.statuses.iter_mut().zip(other.statuses) {
            *mine += theirs;
        }
        self.connections_opened += other.connections_opened;
        self.handshakes.add(&other.handshakes);
        self.send_lag
            .add(&other.send_lag)
            .expect("histograms share their bounds");
        self.cpu_busy = self.cpu_busy.max(other.cpu_busy);
        if other.timeline.len() > self.timeline.len() {
            self.timeline
                .resize(other.timeline.len(), Second::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.answered += theirs.answered;
            mine.errors += theirs.errors;
            mine.latency_sum_ns = mine.latency_sum_ns.saturating_add(theirs.latency_sum_ns);
            mine.latency_max_ns = mine.latency_max_ns.max(theirs.latency_max_ns);
        }
    }

    /// Errors over everything that ended: answers, failed requests and
    /// failed connection attempts. 0 when nothing ended.
    pub fn error_ratio(&self) -> f64 {
        let ended = self.answered + self.errors.requests_failed() + self.errors.connect;
        if ended == 0 {
            0.0
        } else {
            self.errors.total() as f64 / ended as f64
        }
    }
}

/// Index into [`StatusClasses`], `None` outside 100..=599.
pub fn status_class(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| usize::from(status / 100 - 1))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .min(MAX_LATENCY_NS)
}

/// The second of the measured run that `now` falls in.
pub fn second_of(now: Instant, measure_start: Instant) -> usize {
    now.saturating_duration_since(measure_start).as_secs() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_exactly() {
        let mut a = Stats::new(1);
        let mut b = Stats::new(1);
        for i in 1..=900u64 {
            a.answer(
                0,
                200,
                false,
                Duration::from_micros(i),
                Duration::from_micros(i),
                0,
            );
        }
        for i in 1..=100u64 {
            b.answer(
                0,
                503,
                true,
                Duration::from_millis(i),
                Duration::from_micros(i),
                1,
            );
        }
        b.fail(Failure::Timeout, Some(0), 2);
        a.merge(&b);
        assert_eq!(a.answered, 1000);
        assert_eq!(a.corrected().len(), 1000);
        assert_eq!(a.statuses, [0, 900, 0, 0, 100]);
        assert_eq!(a.errors.status, 100);
        assert_eq!(a.errors.timeout, 1);
        assert_eq!(a.timeline.len(), 3);
        assert_eq!(a.timeline[1].answered, 100);
        // The 90th percentile is the last of the 900 fast answers, which a
        // mean of per-thread percentiles would not give.
        let p90 = a.corrected().value_at_quantile(0.90);
        assert!((899_000..=901_000).contains(&p90), "{p90}");
        assert!((a.error_ratio() - 101.0 / 1001.0).abs() < 1e-9);
    }

    #[test]
    fn each_operation_keeps_its_own_latency_and_errors() {
        let mut stats = Stats::new(2);
        let ms = Duration::from_millis;
        for _ in 0..99 {
            stats.answer(0, 200, false, ms(1), ms(1), 0);
        }
        stats.answer(1, 503, true, ms(100), ms(50), 0);
        stats.fail(Failure::Read, Some(1), 0);
        stats.fail(Failure::Connect, None, 0);
        let (get, put) = (&stats.operations[0], &stats.operations[1]);
        assert_eq!((get.answered, put.answered), (99, 1));
        let (get_latency, put_latency) = (stats.latencies(0), stats.latencies(1));
        let in_ms = |ns: u64| ns / 1_000_000;
        assert_eq!(in_ms(get_latency.corrected.max()), 1);
        assert!((99..=100).contains(&in_ms(put_latency.corrected.min())));
        assert_eq!(in_ms(put_latency.uncorrected.max()), 50);
        assert_eq!(
            (get.errors.total(), put.errors.status, put.errors.read),
            (0, 1, 1)
        );
        assert_eq!(put.statuses, [0, 0, 0, 0, 1]);
        // The run's figures hold both operations and the connection failure.
        assert_eq!(stats.corrected().len(), 100);
        assert_eq!(stats.corrected().max(), put_latency.corrected.max());
        assert_eq!(
            (stats.errors.status, stats.errors.read, stats.errors.connect),
            (1, 1, 1)
        );
        // An operation past the workload's counts under the last.
        stats.answer(7, 200, false, ms(1), ms(1), 0);
        assert_eq!(stats.operations[1].answered, 2);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(99), None);
        assert_eq!(status_class(100), Some(0));
        assert_eq!(status_class(204), Some(1));
        assert_eq!(status_class(599), Some(4));
        assert_eq!(status_class(600), None);
    }
}
