//! Latency over time. Each generator thread closes an interval every second
//! of the measured run and hands that second's histograms to the main
//! thread ([`Interval`]), which adds the threads' histograms of each second
//! exactly ([`IntervalMerger`]) and, in order, writes them to an
//! HdrHistogram interval log ([`HlogWriter`], `--hlog`) and reads the
//! report's per-second percentiles from them.
//!
//! An interval log is the standard text format other HdrHistogram tools
//! read: a header with the run's start time, then one line per interval and
//! tag, `Tag=NAME,start,length,max,HISTFAA...` (a V2 histogram, compressed,
//! in base64). Values, and the `max` column, are nanoseconds.
//! Each operation has two tags: `NAME` (corrected latency) and
//! `NAME.uncorrected`. The run's report follows the last interval as one
//! comment line, so `millrace report` can add the counts of several logs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use super::stats::Latencies;

/// The length of an interval.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The comment line that carries a run's report in its interval log.
pub const REPORT_COMMENT: &str = "#[millrace-report ";

/// The suffix of an operation's uncorrected tag.
pub const UNCORRECTED_SUFFIX: &str = ".uncorrected";

/// One thread's histograms of one interval.
#[derive(Debug)]
pub struct Interval {
    /// The thread, by index.
    pub thread: usize,
    /// Which interval: whole seconds since measurement started.
    pub index: usize,
    /// Each operation's latencies, in the workload's order.
    pub operations: Vec<Latencies>,
    /// The thread records nothing more in intervals before this one;
    /// `usize::MAX` once it has finished.
    pub next: usize,
}

/// Adds the threads' intervals of each second and hands back each second
/// once every thread has moved past it.
pub struct IntervalMerger {
    operations: usize,
    /// Per thread: every interval before this one is in.
    watermarks: Vec<usize>,
    pending: BTreeMap<usize, Vec<Latencies>>,
    /// The first interval not yet handed back.
    next: usize,
}

impl IntervalMerger {
    /// For `threads` threads and a workload of `operations` operations.
    pub fn new(threads: usize, operations: usize) -> Self {
        IntervalMerger {
            operations: operations.max(1),
            watermarks: vec![0; threads],
            pending: BTreeMap::new(),
            next: 0,
        }
    }

    /// Take one thread's interval; hand back, in order, every interval
    /// complete now.
    pub fn add(&mut self, interval: Interval) -> Vec<(usize, Vec<Latencies>)> {
        let merged = self.slot(interval.index);
        for (mine, theirs) in merged.iter_mut().zip(&interval.operations) {
            mine.add(theirs);
        }
        if let Some(mark) = self.watermarks.get_mut(interval.thread) {
            *mark = (*mark).max(interval.next);
        }
        let complete = self.watermarks.iter().copied().min().unwrap_or(usize::MAX);
        self.take_before(complete)
    }

    /// Hand back everything left, in order (the threads are done, or some
    /// failed and will send nothing more).
    pub fn finish(&mut self) -> Vec<(usize, Vec<Latencies>)> {
        let end = self
            .pending
            .keys()
            .next_back()
            .map_or(self.next, |&k| k + 1);
        self.take_before(end)
    }

    fn slot(&mut self, index: usize) -> &mut Vec<Latencies> {
        let operations = self.operations;
        self.pending
            .entry(index)
            .or_insert_with(|| (0..operations).map(|_| Latencies::new()).collect())
    }

    /// Every interval from `next` up to `end`, a second no thread recorded
    /// in as empty histograms.
    fn take_before(&mut self, end: usize) -> Vec<(usize, Vec<Latencies>)> {
        let mut out = Vec::new();
        while self.next < end && (self.next <= self.last_pending()) {
            let index = self.next;
            let pairs = match self.pending.remove(&index) {
                Some(pairs) => pairs,
                None => (0..self.operations).map(|_| Latencies::new()).collect(),
            };
            out.push((index, pairs));
            self.next += 1;
        }
        out
    }

    fn last_pending(&self) -> usize {
        self.pending.keys().next_back().copied().unwrap_or(0)
    }
}

/// Writes a run's intervals as an HdrHistogram interval log.
pub struct HlogWriter<W: Write> {
    out: W,
    names: Vec<String>,
    serializer: V2DeflateSerializer,
}

impl<W: Write> HlogWriter<W> {
    /// Begin a log for a run of `names` operations whose measurement
    /// started at `start`, with `comment` (a line saying what was run).
    pub fn new(
        mut out: W,
        names: &[String],
        start: SystemTime,
        comment: &str,
    ) -> std::io::Result<Self> {
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!("[{}]", comment.replace('\n', " ")))
            .add_comment("[Values and Interval_Max in nanoseconds]")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut out, &mut serializer)?;
        writeln!(
            out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        Ok(HlogWriter {
            out,
            names: names.iter().map(|n| tag_text(n)).collect(),
            serializer,
        })
    }

    /// Write interval `index` (seconds since the start), `length` long.
    pub fn write(
        &mut self,
        index: usize,
        length: Duration,
        pairs: &[Latencies],
    ) -> Result<(), String> {
        let start = INTERVAL * u32::try_from(index).unwrap_or(u32::MAX);
        // A builder with no headers writes nothing of its own.
        let mut writer = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(|e| e.to_string())?;
        for (name, pair) in self.names.iter().zip(pairs) {
            let uncorrected = format!("{name}{UNCORRECTED_SUFFIX}");
            for (tag, histogram) in [
                (name.as_str(), &pair.corrected),
                (uncorrected.as_str(), &pair.uncorrected),
            ] {
                writer
                    .write_histogram(histogram, start, length, Tag::new(tag))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// End the log with the run's report (JSON, one line).
    pub fn finish(mut self, report_json: &str) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{REPORT_COMMENT}{}]",
            report_json.replace('\n', " ")
        )?;
        self.out.flush()
    }
}

/// `name` as a tag: no commas, spaces or line breaks (the format's
/// separators).
fn tag_text(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(thread: usize, index: usize, next: usize, value_ns: u64) -> Interval {
        let mut pair = Latencies::new();
        pair.corrected.record(value_ns).unwrap();
        pair.uncorrected.record(value_ns).unwrap();
        Interval {
            thread,
            index,
            operations: vec![pair],
            next,
        }
    }

    #[test]
    fn an_interval_is_handed_back_once_every_thread_is_past_it() {
        let mut merger = IntervalMerger::new(2, 1);
        assert!(
            merger.add(interval(0, 0, 1, 1_000)).is_empty(),
            "thread 1 is not past 0"
        );
        let done = merger.add(interval(1, 0, 1, 2_000));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 0);
        assert_eq!(done[0].1[0].corrected.len(), 2, "both threads' second 0");
        // Thread 0 skips to second 3; thread 1 finishes after second 2:
        // seconds 1 and 2 come back, 1 empty; 3 waits for thread 0.
        assert!(merger.add(interval(0, 1, 3, 5_000)).is_empty());
        let done = merger.add(interval(1, 2, usize::MAX, 7_000));
        let indexes: Vec<usize> = done.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [1, 2]);
        assert_eq!(done[0].1[0].corrected.len(), 1);
        assert_eq!(done[1].1[0].corrected.len(), 1);
        let done = merger.add(interval(0, 3, usize::MAX, 9_000));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 3);
        assert!(merger.finish().is_empty());
    }

    #[test]
    fn what_is_left_comes_back_at_the_end() {
        let mut merger = IntervalMerger::new(2, 1);
        assert!(merger.add(interval(0, 0, 1, 1_000)).is_empty());
        assert!(merger.add(interval(0, 2, 3, 1_000)).is_empty());
        let left: Vec<usize> = merger.finish().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, [0, 1, 2]);
    }

    #[test]
    fn tags_hold_no_separator() {
        assert_eq!(tag_text("GET /a,b"), "GET_/a_b");
    }
}
