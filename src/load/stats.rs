//! What one generator thread measured, and the exact merge of all threads:
//! histograms are added count by count, never percentiles averaged.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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

/// Everything one thread (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency from each request's intended start: its scheduled time in an
    /// open-loop run, its send in a closed-loop one.
    pub corrected: Histogram<u64>,
    /// Latency from each request's actual send.
    pub uncorrected: Histogram<u64>,
    /// Requests started: sent (closed loop) or scheduled (open loop).
    pub issued: u64,
    /// Requests written to a connection.
    pub sent: u64,
    /// Requests that got a whole answer.
    pub answered: u64,
    /// Requests still waiting when the run ended: neither answered nor failed.
    pub unfinished: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// Answers by status class.
    pub statuses: StatusClasses,
    /// Answers by status class for each of the workload's operations.
    pub operations: Vec<StatusClasses>,
    /// Connections opened.
    pub connections_opened: u64,
    /// Per-second figures from the start of measurement.
    pub timeline: Vec<Second>,
    /// Every sent request's events and answer, warm-up included, when a
    /// ledger is kept; not merged (each thread's is written as it is).
    pub ledger: Option<Vec<ledger::Entry>>,
}

impl Stats {
    /// Empty figures for a workload with `operations` kinds of request.
    pub fn new(operations: usize) -> Self {
        let histogram = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        Stats {
            corrected: histogram(),
            uncorrected: histogram(),
            issued: 0,
            sent: 0,
            answered: 0,
            unfinished: 0,
            errors: Errors::default(),
            statuses: [0; 5],
            operations: vec![[0; 5]; operations],
            connections_opened: 0,
            timeline: Vec::new(),
            ledger: None,
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
        self.corrected.saturating_record(corrected_ns);
        self.uncorrected.saturating_record(nanos(uncorrected));
        self.answered += 1;
        if let Some(class) = status_class(status) {
            self.statuses[class] += 1;
            if let Some(counts) = self.operations.get_mut(usize::from(operation)) {
                counts[class] += 1;
            }
        }
        let second = self.second(second);
        second.answered += 1;
        second.latency_sum_ns = second.latency_sum_ns.saturating_add(corrected_ns);
        second.latency_max_ns = second.latency_max_ns.max(corrected_ns);
        if error {
            second.errors += 1;
            self.errors.status += 1;
        }
    }

    /// A failure of `kind`, counted in `second`.
    pub fn fail(&mut self, kind: Failure, second: usize) {
        let errors = &mut self.errors;
        match kind {
            Failure::Connect => errors.connect += 1,
            Failure::Timeout => errors.timeout += 1,
            Failure::Read => errors.read += 1,
            Failure::Write => errors.write += 1,
            Failure::Malformed => errors.malformed += 1,
        }
        self.second(second).errors += 1;
    }

    fn second(&mut self, index: usize) -> &mut Second {
        if index >= self.timeline.len() {
            self.timeline.resize(index + 1, Second::default());
        }
        &mut self.timeline[index]
    }

    /// Add `other`'s figures to these, exactly.
    pub fn merge(&mut self, other: &Stats) {
        self.corrected
            .add(&other.corrected)
            .expect("histograms share their bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("histograms share their bounds");
        self.issued += other.issued;
        self.sent += other.sent;
        self.answered += other.answered;
        self.unfinished += other.unfinished;
        self.errors.add(&other.errors);
        for (mine, theirs) in self.statuses.iter_mut().zip(other.statuses) {
            *mine += theirs;
        }
        for (mine, theirs) in self.operations.iter_mut().zip(&other.operations) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.connections_opened += other.connections_opened;
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
        b.fail(Failure::Timeout, 2);
        a.merge(&b);
        assert_eq!(a.answered, 1000);
        assert_eq!(a.corrected.len(), 1000);
        assert_eq!(a.statuses, [0, 900, 0, 0, 100]);
        assert_eq!(a.errors.status, 100);
        assert_eq!(a.errors.timeout, 1);
        assert_eq!(a.timeline.len(), 3);
        assert_eq!(a.timeline[1].answered, 100);
        // The 90th percentile is the last of the 900 fast answers, which a
        // mean of per-thread percentiles would not give.
        let p90 = a.corrected.value_at_quantile(0.90);
        assert!((899_000..=901_000).contains(&p90), "{p90}");
        assert!((a.error_ratio() - 101.0 / 1001.0).abs() < 1e-9);
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
