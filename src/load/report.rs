//! A run's results: the printed table, the JSON document, and the latency
//! distribution in HdrHistogram's percentile format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::stats::{Errors, Handshakes, Latencies, Second, Stats};

/// Rows per halving of the remaining distance to 100% in `.hgrm` output, as
/// HdrHistogram and wrk2 print it.
const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;

const NANOS_PER_MS: f64 = 1e6;

/// How the run was shaped, for the report's header and JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shape {
    /// The target URL.
    pub url: String,
    /// `url`, `kv` or `events`.
    pub workload: String,
    /// Generator threads.
    pub threads: usize,
    /// CPUs they were pinned to (empty when not pinned).
    pub cpus: Vec<usize>,
    /// Connections in all.
    pub connections: usize,
    /// Requests in flight per connection at most.
    pub pipeline: usize,
    /// Open loop rate; `None` for a closed loop.
    pub rate_per_s: Option<f64>,
    /// Warm-up, in seconds.
    pub warmup_s: f64,
    /// Measured time asked for, in seconds; `None` when bounded by requests.
    pub duration_s: Option<f64>,
    /// Measured requests asked for.
    pub requests: Option<u64>,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: f64,
    /// Seed used.
    pub seed: u64,
    /// Names of the workload's operations.
    pub operations: Vec<String>,
    /// `--start-at`: when the run started by this machine's clock, in
    /// seconds since the epoch.
    #[serde(default)]
    pub start_at: Option<f64>,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// The median.
    pub p50: f64,
    /// The 75th percentile.
    pub p75: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// The 99.99th percentile.
    #[serde(rename = "p99.99")]
    pub p99_99: f64,
    /// The smallest latency.
    pub min: f64,
    /// The largest latency.
    pub max: f64,
    /// The mean.
    pub mean: f64,
    /// The standard deviation.
    pub stdev: f64,
}

impl Latency {
    /// Read the percentiles of `histogram` (nanoseconds) in milliseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let at = |q| ms(histogram.value_at_quantile(q));
        Latency {
            p50: at(0.50),
            p75: at(0.75),
            p90: at(0.90),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            min: ms(histogram.min()),
            max: ms(histogram.max()),
            mean: histogram.mean() / NANOS_PER_MS,
            stdev: histogram.stdev() / NANOS_PER_MS,
        }
    }

    /// The rows of the printed table, in order.
    pub fn rows(&self) -> [(&'static str, f64); 7] {
        [
            ("p50", self.p50),
            ("p75", self.p75),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("p99.99", self.p99_99),
            ("max", self.max),
        ]
    }
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_MS
}

/// Request counts; `issued = answered + failed + unfinished`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Counts {
    /// Requests started (measured only).
    pub issued: u64,
    /// Requests written to a connection.
    pub sent: u64,
    /// Requests answered, any status.
    pub answered: u64,
    /// Requests that got no answer: timeout, read, write or malformed.
    pub failed: u64,
    /// Requests in flight when the run ended.
    pub unfinished: u64,
    /// Connections opened.
    pub connections_opened: u64,
}

/// Answers by status class.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Statuses {
    #[serde(rename = "1xx")]
    informational: u64,
    #[serde(rename = "2xx")]
    success: u64,
    #[serde(rename = "3xx")]
    redirect: u64,
    #[serde(rename = "4xx")]
    client_error: u64,
    #[serde(rename = "5xx")]
    server_error: u64,
}

impl From<Statuses> for [u64; 5] {
    fn from(s: Statuses) -> Self {
        [
            s.informational,
            s.success,
            s.redirect,
            s.client_error,
            s.server_error,
        ]
    }
}

impl From<[u64; 5]> for Statuses {
    fn from(c: [u64; 5]) -> Self {
        Statuses {
            informational: c[0],
            success: c[1],
            redirect: c[2],
            client_error: c[3],
            server_error: c[4],
        }
    }
}

/// One second's latency, every operation's: the timeline's percentiles.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntervalLatency {
    /// Seconds from the start of measurement to the interval's start.
    pub start_s: f64,
    /// The interval's length in seconds (the last may be short).
    pub length_s: f64,
    /// Answers in the interval.
    pub answered: u64,
    /// Corrected latency: the median.
    pub p50: f64,
    /// Corrected latency: the 99th percentile.
    pub p99: f64,
    /// Corrected latency: the 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Corrected latency: the largest.
    pub max: f64,
    /// Uncorrected latency: the 99th percentile.
    pub uncorrected_p99: f64,
}

impl IntervalLatency {
    /// The figures of interval `index`, `length` long, from its latencies.
    pub fn of(index: usize, length: std::time::Duration, latencies: &Latencies) -> Self {
        let c = &latencies.corrected;
        IntervalLatency {
            start_s: index as f64,
            length_s: length.as_secs_f64(),
            answered: c.len(),
            p50: ms(c.value_at_quantile(0.5)),
            p99: ms(c.value_at_quantile(0.99)),
            p99_9: ms(c.value_at_quantile(0.999)),
            max: ms(c.max()),
            uncorrected_p99: ms(latencies.uncorrected.value_at_quantile(0.99)),
        }
    }
}

/// Whether the generator kept up with itself: its own delay must never
/// pass for the server's latency.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Generator {
    /// Open loop: how late the generator saw requests come due, in
    /// milliseconds (`None` in a closed loop, which has no schedule).
    pub send_lag_ms: Option<Lag>,
    /// The busiest generator thread's share of its CPU while measuring.
    pub cpu_busy: f64,
    /// The figures are not the server's: the generator fell behind.
    pub behind: bool,
    /// Why it is behind, or what to beware of.
    pub note: Option<String>,
}

/// A few percentiles of the generator's send lag, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lag {
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

/// A generator thread this busy (share of its CPU) has no time to spare.
pub const SATURATED_CPU: f64 = 0.97;

impl Generator {
    /// Judge `stats`: behind in an open loop when the send lag's 99th
    /// percentile passes `max_lag` or a thread's CPU was saturated; a
    /// saturated closed loop is only noted (its rate may be the generator's).
    pub fn judge(stats: &Stats, open_loop: bool, max_lag: std::time::Duration) -> Self {
        let lag = &stats.send_lag;
        let send_lag_ms = (open_loop && !lag.is_empty()).then(|| Lag {
            p50: ms(lag.value_at_quantile(0.5)),
            p99: ms(lag.value_at_quantile(0.99)),
            max: ms(lag.max()),
        });
        let saturated = stats.cpu_busy >= SATURATED_CPU;
        let late =
            lag.value_at_quantile(0.99) > u64::try_from(max_lag.as_nanos()).unwrap_or(u64::MAX);
        let (behind, note) = match (open_loop, late, saturated) {
            (true, true, _) => (
                true,
                Some(format!(
                    "the generator fell behind its schedule: 1% of requests came due more than {:.3} ms before it saw them (--max-send-lag {:.3} ms); the latencies include its own delay",
                    ms(lag.value_at_quantile(0.99)),
                    max_lag.as_secs_f64() * 1e3
                )),
            ),
            (true, false, true) => (
                true,
                Some(format!(
                    "a generator thread was {:.0}% busy: it had no time to spare, so the latencies may include its own delay; use more --cores or a lower --rate",
                    stats.cpu_busy * 100.0
                )),
            ),
            (false, _, true) => (
                false,
                Some(format!(
                    "a generator thread was {:.0}% busy: the rate may be the generator's limit rather than the server's",
                    stats.cpu_busy * 100.0
                )),
            ),
            _ => (false, None),
        };
        Generator {
            send_lag_ms,
            cpu_busy: stats.cpu_busy,
            behind,
            note,
        }
    }
}

/// What one operation's requests measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperationReport {
    /// Requests answered, any status.
    pub answered: u64,
    /// Answers per measured second.
    pub requests_per_s: f64,
    /// Answers by status class.
    pub statuses: Statuses,
    /// Errors of requests sent as this operation.
    pub errors: Errors,
    /// Latency from each request's intended start.
    pub latency_ms: Latency,
    /// Latency from each request's actual send.
    pub uncorrected_latency_ms: Latency,
}

/// Everything a run measured: what `--json` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// How the run was shaped.
    pub shape: Shape,
    /// Measured seconds.
    pub elapsed_s: f64,
    /// Answers per measured second.
    pub requests_per_s: f64,
    /// Request counts.
    pub requests: Counts,
    /// Errors by kind.
    pub errors: Errors,
    /// Errors over everything that ended.
    pub error_ratio: f64,
    /// Answers by status class.
    pub statuses: Statuses,
    /// Each operation's answers, errors and latency, by its name.
    pub operations: BTreeMap<String, OperationReport>,
    /// Latency from each request's intended start (open loop: its scheduled time).
    pub latency_ms: Latency,
    /// Latency from each request's actual send; the same as `latency_ms` in a closed loop.
    pub uncorrected_latency_ms: Latency,
    /// Per-second answers, errors and latency.
    pub timeline: Vec<Second>,
    /// Per-second latency percentiles, every thread's added.
    #[serde(default)]
    pub interval_latency_ms: Vec<IntervalLatency>,
    /// Whether the generator kept up.
    #[serde(default)]
    pub generator: Generator,
    /// TLS handshakes, for an https target: not part of any request's
    /// latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
}

/// The TLS handshakes of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsReport {
    /// Full handshakes finished while measuring.
    pub full_handshakes: u64,
    /// Handshakes that resumed a session.
    pub resumed_handshakes: u64,
    /// From the TCP connect's completion to the handshake's end.
    pub handshake_ms: Latency,
    /// The first handshake failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The version and cipher suite agreed on (the first handshake's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negotiated: Option<String>,
}

impl TlsReport {
    /// The report of `handshakes`.
    pub fn of(handshakes: &Handshakes) -> Self {
        TlsReport {
            full_handshakes: handshakes.full,
            resumed_handshakes: handshakes.resumed,
            handshake_ms: Latency::of(&handshakes.time),
            first_error: handshakes.first_error.clone(),
            negotiated: handshakes.negotiated.clone(),
        }
    }
}

impl Report {
    /// The report of `stats`, measured over `elapsed_s` seconds.
    pub fn new(shape: Shape, stats: &Stats, elapsed_s: f64) -> Self {
        let per_s = |n: u64| {
            if elapsed_s > 0.0 {
                n as f64 / elapsed_s
            } else {
                0.0
            }
        };
        let operations = shape
            .operations
            .iter()
            .cloned()
            .zip(stats.operations.iter().enumerate().map(|(index, op)| {
                let latencies = stats.latencies(index);
                OperationReport {
                    answered: op.answered,
                    requests_per_s: per_s(op.answered),
                    statuses: op.statuses.into(),
                    errors: op.errors,
                    latency_ms: Latency::of(&latencies.corrected),
                    uncorrected_latency_ms: Latency::of(&latencies.uncorrected),
                }
            }))
            .collect();
        Report {
            elapsed_s,
            requests_per_s: per_s(stats.answered),
            requests: Counts {
                issued: stats.issued,
                sent: stats.sent,
                answered: stats.answered,
                failed: stats.errors.requests_failed(),
                unfinished: stats.unfinished,
                connections_opened: stats.connections_opened,
            },
            errors: stats.errors,
            error_ratio: stats.error_ratio(),
            statuses: stats.statuses.into(),
            operations,
            latency_ms: Latency::of(&stats.corrected()),
            uncorrected_latency_ms: Latency::of(&stats.uncorrected()),
            timeline: stats.timeline.clone(),
            interval_latency_ms: Vec::new(),
            generator: Generator::default(),
            tls: shape
                .url
                .starts_with("https://")
                .then(|| TlsReport::of(&stats.handshakes)),
            shape,
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let shape = &self.shape;
        let mut out = String::new();
        let _ = writeln!(out, "millrace load {}", shape.url);
        let pinned = if shape.cpus.is_empty() {
            "not pinned".to_string()
        } else {
            format!("on CPU {}", join(&shape.cpus))
        };
        let _ = writeln!(
            out,
            "  {} thread{} ({pinned}), {} connections x {} pipeline = {} requests in flight at most",
            shape.threads,
            plural(shape.threads),
            shape.connections,
            shape.pipeline,
            shape.connections * shape.pipeline
        );
        let mode = match shape.rate_per_s {
            Some(rate) => format!("open loop at {} requests/s", group(rate.round() as u64)),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "  {mode}, {} workload, measured {:.2} s after {:.2} s of warm-up",
            shape.workload, self.elapsed_s, shape.warmup_s
        );
        if let Some(at) = shape.start_at {
            let _ = writeln!(
                out,
                "  started at {at:.3} s since the epoch by this machine's clock (--start-at: the machines' clocks must agree)"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  Requests/s   {:>14}   ({} answered)",
            group(self.requests_per_s.round() as u64),
            group(self.requests.answered)
        );
        let open_loop = shape.rate_per_s.is_some();
        let _ = writeln!(
            out,
            "  Latency      {:>14}{}",
            "corrected",
            if open_loop { "   uncorrected" } else { "" }
        );
        let rows = self
            .latency_ms
            .rows()
            .into_iter()
            .zip(self.uncorrected_latency_ms.rows())
            .map(|((name, corrected), (_, uncorrected))| (name, corrected, uncorrected));
        for (name, corrected, uncorrected) in rows {
            let _ = write!(out, "    {name:<10} {:>11.3} ms", corrected);
            if open_loop {
                let _ = write!(out, " {:>11.3} ms", uncorrected);
            }
            let _ = writeln!(out);
        }
        let s = &self.statuses;
        let _ = writeln!(
            out,
            "  Status       1xx {}, 2xx {}, 3xx {}, 4xx {}, 5xx {}",
            group(s.informational),
            group(s.success),
            group(s.redirect),
            group(s.client_error),
            group(s.server_error)
        );
        if self.operations.len() > 1 {
            for (name, op) in &self.operations {
                let s = &op.statuses;
                let _ = writeln!(
                    out,
                    "    {name:<10} 2xx {}, 3xx {}, 4xx {}, 5xx {}",
                    group(s.success),
                    group(s.redirect),
                    group(s.client_error),
                    group(s.server_error)
                );
            }
            out.push_str(&self.operations_table());
        }
        let e = &self.errors;
        let _ = writeln!(
            out,
            "  Errors       {} ({:.3}%): connect {}, timeout {}, read {}, write {}, malformed {}, status {}",
            group(e.total()),
            self.error_ratio * 100.0,
            group(e.connect),
            group(e.timeout),
            group(e.read),
            group(e.write),
            group(e.malformed),
            group(e.status)
        );
        let r = &self.requests;
        let _ = writeln!(
            out,
            "  Requests     issued {} = answered {} + failed {} + unfinished {}; {} connections opened",
            group(r.issued),
            group(r.answered),
            group(r.failed),
            group(r.unfinished),
            group(r.connections_opened)
        );
        if let Some(tls) = &self.tls {
            let h = &tls.handshake_ms;
            let _ = writeln!(
                out,
                "  TLS          {}{} full + {} resumed handshakes; handshake p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (apart from request latency)",
                tls.negotiated
                    .as_deref()
                    .map_or_else(String::new, |n| format!("{n}; ")),
                group(tls.full_handshakes),
                group(tls.resumed_handshakes),
                h.p50,
                h.p99,
                h.max
            );
            if let Some(error) = &tls.first_error {
                let _ = writeln!(out, "  TLS error    {error}");
            }
        }
        let g = &self.generator;
        let _ = write!(
            out,
            "  Generator    CPU {:.0}% busy (busiest thread)",
            g.cpu_busy * 100.0
        );
        if let Some(lag) = g.send_lag_ms {
            let _ = write!(
                out,
                ", send lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                lag.p50, lag.p99, lag.max
            );
        }
        let _ = writeln!(out);
        if let Some(note) = &g.note {
            let mark = if g.behind { "INVALID" } else { "note" };
            let _ = writeln!(out, "  {mark}: {note}");
        }
        out
    }
}

impl Report {
    /// Each operation's answers, rate, corrected latency and errors, one
    /// row each.
    fn operations_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  {:<12} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "Operation", "answered", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        for (name, op) in &self.operations {
            let l = &op.latency_ms;
            let _ = writeln!(
                out,
                "    {name:<10} {:>11} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}",
                group(op.answered),
                group(op.requests_per_s.round() as u64),
                l.p50,
                l.p99,
                l.p99_9,
                l.max,
                group(op.errors.total())
            );
        }
        out
    }
}

/// `histogram` (nanoseconds) as HdrHistogram prints its percentile
/// distribution, values in milliseconds: what wrk2 prints and HdrHistogram's
/// plotter loads.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for value in histogram.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
        total += value.count_since_last_iteration();
        let quantile = value.quantile_iterated_to();
        let v = ms(value.value_iterated_to());
        if quantile < 1.0 {
            let _ = writeln!(
                out,
                "{v:12.3} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(out, "{v:12.3} {quantile:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / NANOS_PER_MS,
        histogram.stdev() / NANOS_PER_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(histogram.max()),
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        // Sub-buckets per bucket: enough to tell values apart to `sigfig` digits.
        (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two()
    );
    out
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn join(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn hgrm_rows_are_cumulative_and_end_at_the_max() {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, super::super::stats::MAX_LATENCY_NS, 3).unwrap();
        for i in 1..=10_000u64 {
            histogram.record(i * 1000).unwrap();
        }
        let text = hgrm(&histogram);
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.parse().ok()?,
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                ))
            })
            .collect();
        assert!(rows.len() > 20);
        assert!(
            rows.windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].2 <= w[1].2)
        );
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 10_000);
        assert!((last.0 - 10.0).abs() < 0.01, "{last:?}");
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((median.0 - 5.0).abs() < 0.01, "{median:?}");
    }
}
