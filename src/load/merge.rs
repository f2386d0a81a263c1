//! `millrace report`: the interval logs of several runs (`millrace load
//! --hlog`, on one machine or many) added into one report, the same table,
//! JSON and plots as a single run's. Histograms are added count by count on
//! their absolute timestamps, never percentiles averaged; counts and errors
//! come from each log's closing report line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use super::intervals::{INTERVAL, REPORT_COMMENT, UNCORRECTED_SUFFIX};
use super::report::{Generator, IntervalLatency, Report};
use super::stats::{Latencies, Stats};

/// `millrace report`'s flags.
#[derive(clap::Args, Debug)]
pub struct ReportOptions {
    /// Interval logs written by `millrace load --hlog`, from one run or several (other machines'
    /// included): their histograms are added on their timestamps, so the clocks must agree
    #[arg(required = true, value_name = "FILE.hlog")]
    pub logs: Vec<PathBuf>,

    #[command(flatten)]
    /// Where the report goes besides the terminal.
    pub outputs: super::Outputs,
}

/// Read, add and report; the table is printed, the files written.
pub fn run(options: &ReportOptions) -> Result<Merged, String> {
    let logs = options
        .logs
        .iter()
        .map(|path| read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge(&logs)?;
    println!(
        "millrace report: {} log{} added; measurement started within {:.3} s of each other \
         (each machine's clock taken as true: keep them in step, with NTP or PTP)",
        logs.len(),
        if logs.len() == 1 { "" } else { "s" },
        merged.start_spread_s
    );
    print!("{}", merged.report.table());
    options.outputs.check()?;
    let report = &merged.report;
    options.outputs.write(
        report,
        &merged.stats,
        &report.shape.url,
        report.shape.rate_per_s.is_some(),
    )?;
    Ok(merged)
}

/// One log, read.
#[derive(Debug)]
pub struct Log {
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// When its measurement started, in seconds since the epoch.
    pub base_s: f64,
    /// Its intervals: operation name, start (seconds after `base_s`),
    /// length in seconds, and latencies.
    pub intervals: Vec<(String, f64, f64, Latencies)>,
    /// The run's own report.
    pub report: Report,
}

/// Read the interval log at `path`.
pub fn read(path: &Path) -> Result<Log, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(path, &text)
}

/// Parse an interval log millrace load wrote.
pub fn parse(path: &Path, text: &[u8]) -> Result<Log, String> {
    let what = |why: String| format!("{}: {why}", path.display());
    if !text.is_empty() && !text.ends_with(b"\n") {
        return Err(what(
            "the log ends mid-line: the run did not finish writing it".into(),
        ));
    }
    let mut base_s = None;
    let mut start_s = None;
    // Each interval once, by operation and start: its corrected and
    // uncorrected lines meet there.
    let mut intervals: Vec<(String, f64, f64, Latencies)> = Vec::new();
    let mut index: std::collections::HashMap<(String, u128), usize> =
        std::collections::HashMap::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text) {
        match entry.map_err(|e| what(format!("not an interval log ({e:?})")))? {
            LogEntry::BaseTime(t) => base_s = Some(t.as_secs_f64()),
            LogEntry::StartTime(t) => start_s = Some(t.as_secs_f64()),
            LogEntry::Interval(interval) => {
                let tag = interval
                    .tag()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default();
                let (name, uncorrected) = match tag.strip_suffix(UNCORRECTED_SUFFIX) {
                    Some(name) => (name.to_string(), true),
                    None => (tag, false),
                };
                let bytes = BASE64
                    .decode(interval.encoded_histogram())
                    .map_err(|e| what(format!("a histogram that is not base64 ({e})")))?;
                let histogram: Histogram<u64> = deserializer
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|e| what(format!("a histogram that does not decode ({e:?})")))?;
                let start = interval.start_timestamp().as_secs_f64();
                let length = interval.duration().as_secs_f64();
                // Timestamps are written to the millisecond.
                let key = (name.clone(), interval.start_timestamp().as_millis());
                let at = *index.entry(key).or_insert_with(|| {
                    intervals.push((name, start, length, Latencies::new()));
                    intervals.len() - 1
                });
                let slot = &mut intervals[at].3;
                let into = if uncorrected {
                    &mut slot.uncorrected
                } else {
                    &mut slot.corrected
                };
                into.add(&histogram)
                    .map_err(|e| what(format!("a histogram with other bounds ({e:?})")))?;
            }
        }
    }
    let base_s = base_s
        .or(start_s)
        .ok_or_else(|| what("no BaseTime or StartTime: not a millrace load log".into()))?;
    let report = String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find_map(|line| {
            line.strip_prefix(REPORT_COMMENT)?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .ok_or_else(|| what("no report line: the run did not finish writing it".into()))?;
    let report: Report = serde_json::from_str(&report)
        .map_err(|e| what(format!("a report line that does not parse: {e}")))?;
    Ok(Log {
        path: path.to_path_buf(),
        base_s,
        intervals,
        report,
    })
}

/// The logs added into one report, and how far apart their starts were.
pub struct Merged {
    /// The report, as if one run had made every log's requests.
    pub report: Report,
    /// The run's figures, for the files a report writes.
    pub stats: Stats,
    /// Latest start minus earliest, in seconds.
    pub start_spread_s: f64,
}

/// Add `logs` into one report. Their operations must be the same.
pub fn merge(logs: &[Log]) -> Result<Merged, String> {
    let first = logs.first().ok_or("no logs to report on")?;
    let names = &first.report.shape.operations;
    for log in &logs[1..] {
        if &log.report.shape.operations != names {
            return Err(format!(
                "{} has operations {:?}, {} has {:?}: only runs of one workload add up",
                first.path.display(),
                names,
                log.path.display(),
                log.report.shape.operations
            ));
        }
    }
    let origin = logs.iter().map(|l| l.base_s).fold(f64::INFINITY, f64::min);
    let latest = logs
        .iter()
        .map(|l| l.base_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut stats = Stats::new(names.len());
    // Each second of the merged run: every log's intervals that start in it.
    let mut seconds: Vec<(f64, Latencies)> = Vec::new();
    let mut end_s: f64 = 0.0;
    for log in logs {
        for (name, start, length, latencies) in &log.intervals {
            let index = names.iter().position(|n| n == name).ok_or_else(|| {
                format!(
                    "{}: an interval of unknown operation {name}",
                    log.path.display()
                )
            })?;
            stats.add_latencies(index, latencies);
            let at = log.base_s - origin + start;
            end_s = end_s.max(at + length);
            let second = (at / INTERVAL.as_secs_f64()).floor().max(0.0) as usize;
            if seconds.len() <= second {
                seconds.resize_with(second + 1, || (0.0, Latencies::new()));
            }
            seconds[second].0 = seconds[second].0.max(*length);
            seconds[second].1.add(latencies);
        }
        add_counts(&mut stats, &log.report);
    }
    let mut shape = first.report.shape.clone();
    shape.threads = logs.iter().map(|l| l.report.shape.threads).sum();
    shape.connections = logs.iter().map(|l| l.report.shape.connections).sum();
    shape.cpus = Vec::new();
    shape.rate_per_s = first
        .report
        .shape
        .rate_per_s
        .map(|_| logs.iter().filter_map(|l| l.report.shape.rate_per_s).sum());
    let mut report = Report::new(shape, &stats, end_s);
    report.interval_latency_ms = seconds
        .iter()
        .enumerate()
        .map(|(index, (length, latencies))| {
            IntervalLatency::of(index, Duration::from_secs_f64(*length), latencies)
        })
        .collect();
    let behind: Vec<String> = logs
        .iter()
        .filter(|l| l.report.generator.behind)
        .map(|l| l.path.display().to_string())
        .collect();
    report.generator = Generator {
        send_lag_ms: None,
        cpu_busy: logs
            .iter()
            .map(|l| l.report.generator.cpu_busy)
            .fold(0.0, f64::max),
        behind: !behind.is_empty(),
        note: (!behind.is_empty()).then(|| {
            format!(
                "the generator fell behind its schedule in {}: the latencies include its own delay",
                behind.join(", ")
            )
        }),
    };
    Ok(Merged {
        report,
        stats,
        start_spread_s: latest - origin,
    })
}

/// Add a run's counts (not its latencies: those come from the intervals).
fn add_counts(stats: &mut Stats, report: &Report) {
    let mut run = Stats::new(stats.operations.len());
    run.issued = report.requests.issued;
    run.sent = report.requests.sent;
    run.answered = report.requests.answered;
    run.unfinished = report.requests.unfinished;
    run.connections_opened = report.requests.connections_opened;
    run.errors = report.errors;
    run.statuses = report.statuses.into();
    for (op, name) in run.operations.iter_mut().zip(&report.shape.operations) {
        if let Some(theirs) = report.operations.get(name) {
            op.answered = theirs.answered;
            op.statuses = theirs.statuses.into();
            op.errors = theirs.errors;
        }
    }
    stats.merge(&run);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::intervals::HlogWriter;
    use crate::load::report::Shape;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn shape() -> Shape {
        Shape {
            url: "http://127.0.0.1:1/".into(),
            workload: "kv".into(),
            threads: 1,
            cpus: vec![1],
            connections: 8,
            pipeline: 1,
            rate_per_s: None,
            warmup_s: 0.0,
            duration_s: Some(3.0),
            requests: None,
            timeout_ms: 1000.0,
            seed: 1,
            operations: vec!["GET".into(), "PUT".into()],
            start_at: None,
        }
    }

    /// A log of `seconds` intervals whose latencies come from `sample`
    /// (operation, second, i) -> nanoseconds; also returns every sample.
    fn log(
        start: SystemTime,
        seconds: usize,
        sample: impl Fn(usize, usize, u64) -> u64,
    ) -> (Vec<u8>, Stats) {
        let mut stats = Stats::new(2);
        let mut out = Vec::new();
        let names = shape().operations;
        let mut writer = HlogWriter::new(&mut out, &names, start, "test").unwrap();
        for second in 0..seconds {
            let mut latencies = vec![Latencies::new(), Latencies::new()];
            for (op, l) in latencies.iter_mut().enumerate() {
                for i in 0..1000 {
                    let ns = sample(op, second, i);
                    l.corrected.record(ns).unwrap();
                    l.uncorrected.record(ns / 2 + 1).unwrap();
                    stats.answer(
                        op as u8,
                        200,
                        false,
                        Duration::from_nanos(ns),
                        Duration::from_nanos(ns / 2 + 1),
                        second,
                    );
                }
            }
            writer.write(second, INTERVAL, &latencies).unwrap();
        }
        let report = Report::new(shape(), &stats, seconds as f64);
        writer
            .finish(&serde_json::to_string(&report).unwrap())
            .unwrap();
        (out, stats)
    }

    #[test]
    fn two_logs_add_up_to_one_histogram_of_every_sample() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (a, a_stats) = log(t0, 3, |op, s, i| {
            50_000 + (op as u64 * 7 + s as u64) * 1_000 + i * 13
        });
        // Half a second later, slower and wider.
        let (b, b_stats) = log(t0 + Duration::from_millis(500), 2, |op, s, i| {
            2_000_000 + (op as u64 + s as u64) * 3_000 + i * i * 17
        });
        let logs = [
            parse(Path::new("a"), &a).unwrap(),
            parse(Path::new("b"), &b).unwrap(),
        ];
        let merged = merge(&logs).unwrap();
        let mut union = a_stats.clone();
        union.merge(&b_stats);
        for op in 0..2 {
            let (m, u) = (merged.stats.latencies(op), union.latencies(op));
            assert_eq!(
                m.corrected, u.corrected,
                "operation {op}: every count the same"
            );
            assert_eq!(m.uncorrected, u.uncorrected);
        }
        let all = union.corrected();
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.stats.corrected().value_at_quantile(q),
                all.value_at_quantile(q)
            );
        }
        let r = &merged.report;
        assert_eq!(r.requests.answered, 10_000);
        assert_eq!(r.operations["PUT"].answered, 5_000);
        assert_eq!((r.shape.threads, r.shape.connections), (2, 16));
        assert!((merged.start_spread_s - 0.5).abs() < 1e-3);
        // b's seconds start half-way through a's: 3 s in all, 3.0 s long.
        assert_eq!(r.interval_latency_ms.len(), 3);
        assert!((r.elapsed_s - 3.0).abs() < 1e-3, "{}", r.elapsed_s);
        assert_eq!(
            r.interval_latency_ms[1].answered, 4_000,
            "a's second 1 and b's second 0"
        );
    }

    #[test]
    fn logs_of_other_workloads_or_not_logs_are_refused() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (a, _) = log(t0, 1, |_, _, i| 1_000 + i);
        let mut other = parse(Path::new("b"), &a).unwrap();
        other.report.shape.operations = vec!["POST".into()];
        let logs = [parse(Path::new("a"), &a).unwrap(), other];
        assert!(
            merge(&logs)
                .err()
                .unwrap()
                .contains("only runs of one workload")
        );
        assert!(parse(Path::new("c"), b"hello\n").is_err());
        let cut = &a[..a.len() - 20];
        assert!(
            parse(Path::new("d"), cut)
                .err()
                .unwrap()
                .contains("did not finish")
        );
        // Cut after a whole line: no closing report.
        let lines = String::from_utf8(a.clone()).unwrap();
        let without_report = &lines[..lines.trim_end().rfind('\n').unwrap() + 1];
        let error = parse(Path::new("e"), without_report.as_bytes())
            .err()
            .unwrap();
        assert!(error.contains("no report line"), "{error}");
    }
}
