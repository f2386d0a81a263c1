//! `millrace load`: an HTTP/1.1 load generator built on the server's engine
//! (one pinned thread per CPU, one io_uring ring each), measuring latency
//! with HdrHistogram and correcting for coordinated omission in open loop.
//!
//! - [`options`]: flags, checked into a [`LoadPlan`].
//! - [`workload`]: what each request is (a URL, a key-value mix, event
//!   batches, a [`scenario`]'s templates).
//! - [`engine`]: one thread's connections, requests and answers.
//! - [`stats`]: what a thread measured, merged exactly across threads.
//! - [`intervals`]: each second's latencies, added across threads, and the
//!   HdrHistogram interval log.
//! - [`ledger`]: which events each request carried and how it was answered.
//! - [`report`] and [`plot`]: the table, JSON, `.hgrm` and SVG.
//! - [`merge`]: `millrace report`, several runs' interval logs as one report.
//! - [`slo`]: `--slo`, the highest rate at which a latency objective holds.

pub mod engine;
pub mod intervals;
pub mod ledger;
pub mod merge;
pub mod options;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod slo;
pub mod stats;
pub mod workload;

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use engine::{Engine, Progress, ThreadPlan, Timing};
use intervals::{HlogWriter, INTERVAL, Interval, IntervalMerger};
use options::LoadPlan;
use report::{Generator, IntervalLatency, Report, Shape};
use stats::{Latencies, Stats};
use workload::Workload;

pub use options::{LoadOptions, Outputs};

/// When the threads start, after they have all set up.
const START_DELAY: Duration = Duration::from_millis(20);

/// How a run ended, for the exit status.
#[derive(Debug)]
pub struct Outcome {
    /// What was measured.
    pub report: Report,
    /// Errors exceeded `--max-error-ratio`.
    pub too_many_errors: bool,
    /// The generator fell behind its schedule: the latencies are not the
    /// server's.
    pub generator_behind: bool,
    /// `--slo`: no rate in the range met the objective.
    pub slo_missed: bool,
}

/// Run the load `options` describe (or, with `--slo`, the search it asks
/// for), print the table, write the files asked for. Errors are sentences
/// for the user.
pub fn run(options: LoadOptions) -> Result<Outcome, String> {
    let plan = options.resolve(&crate::server::available_cpus())?;
    if let Some(objectives) = &plan.slo {
        return slo::search(&plan, objectives);
    }
    // Made now: a file that cannot be written stops the run before it starts.
    let hlog_file = match &plan.hlog {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let Measured {
        report,
        stats: total,
        ledger,
        hlog,
    } = measure(&plan, hlog_file, std::io::stderr().is_terminal())?;
    print!("{}", report.table());
    plan.outputs
        .write(&report, &total, &plan.target.url, plan.rate.is_some())?;
    if let (Some(hlog), Some(path)) = (hlog, &plan.hlog) {
        let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        hlog.finish(&json)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &plan.ledger {
        ledger::write(path, &ledger)?;
        println!("{}", ledger_summary(&ledger, path));
    }
    let too_many_errors = report.error_ratio > plan.max_error_ratio;
    let generator_behind = report.generator.behind;
    Ok(Outcome {
        report,
        too_many_errors,
        generator_behind,
        slo_missed: false,
    })
}

/// A run's interval log, written as the run goes.
pub type Hlog = HlogWriter<std::io::BufWriter<std::fs::File>>;

/// What one run measured.
pub struct Measured {
    /// Its report.
    pub report: Report,
    /// Every thread's figures, added.
    pub stats: Stats,
    /// Every thread's ledger, when one was asked for.
    pub ledger: Vec<ledger::Entry>,
    /// Its interval log, open for the closing report line.
    pub hlog: Option<Hlog>,
}

/// Run `plan` once: set the threads up, start them together, gather each
/// second and the totals. `hlog_file`: where the interval log goes;
/// `show_progress`: a progress line on stderr.
pub fn measure(
    plan: &LoadPlan,
    hlog_file: Option<std::fs::File>,
    show_progress: bool,
) -> Result<Measured, String> {
    let shape = shape(plan);
    let operations = plan.workload.operations().len();
    let threads = plan.cpus.len();
    let progress: Vec<Arc<Progress>> = (0..threads).map(|_| Arc::default()).collect();

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (interval_tx, interval_rx) = mpsc::channel::<Interval>();
    let mut starts = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (index, thread_plan) in thread_plans(plan, &interval_tx).into_iter().enumerate() {
        let cpu = plan.cpus[index];
        let (start_tx, start_rx) = mpsc::channel::<Timing>();
        starts.push(start_tx);
        let ready = ready_tx.clone();
        let progress = Arc::clone(&progress[index]);
        let handle = thread::Builder::new()
            .name(format!("millrace-load-{index}"))
            .spawn(move || -> Result<Stats, String> {
                if let Some(cpu) = cpu
                    && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
                {
                    let error = format!("cannot pin a load thread to CPU {cpu}");
                    let _ = ready.send(Err(error.clone()));
                    return Err(error);
                }
                let engine = match Engine::new(thread_plan, progress, operations) {
                    Ok(engine) => engine,
                    Err(e) => {
                        let error = format!(
                            "load thread {index}: {}",
                            crate::host::probe::explain_setup_error(&e)
                        );
                        let _ = ready.send(Err(error.clone()));
                        return Err(error);
                    }
                };
                let _ = ready.send(Ok(()));
                drop(ready);
                let Ok(timing) = start_rx.recv() else {
                    return Err("the run was abandoned".into());
                };
                engine
                    .run(timing)
                    .map_err(|e| format!("load thread {index} failed: {e}"))
            })
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Each thread holds a sender until its last interval: the channel closes
    // when every thread is done.
    drop(interval_tx);
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a load thread exited during set-up".into()),
        }
    }

    // Every thread is ready: start after a moment, or at --start-at.
    let start = match plan.start_at {
        None => Instant::now() + START_DELAY,
        Some(at) => {
            let ahead = at.duration_since(SystemTime::now()).map_err(|past| {
                format!(
                    "--start-at passed {:.3} s ago, while the threads set up",
                    past.duration().as_secs_f64()
                )
            })?;
            Instant::now() + ahead
        }
    };
    let measure_start = start + plan.warmup;
    // A run bounded only by --requests still ends: at the latest a day later.
    let end = measure_start + plan.duration.unwrap_or(Duration::from_secs(86_400));
    let timing = Timing {
        start,
        measure_start,
        end,
    };
    for start in starts {
        let _ = start.send(timing);
    }
    let measure_start_wall =
        SystemTime::now() + measure_start.saturating_duration_since(Instant::now());
    let mut hlog = match (hlog_file, &plan.hlog) {
        (Some(file), Some(path)) => {
            let comment = header(&shape);
            let names = &shape.operations;
            Some(
                HlogWriter::new(
                    std::io::BufWriter::new(file),
                    names,
                    measure_start_wall,
                    &comment,
                )
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
            )
        }
        _ => None,
    };
    let display = show_progress.then(|| {
        eprintln!("{}", header(&shape));
        Display::new()
    });
    let mut seconds = Seconds {
        merger: IntervalMerger::new(threads, operations),
        held: VecDeque::new(),
        latency: Vec::new(),
        measure_start,
    };
    loop {
        match interval_rx.recv_timeout(DISPLAY_INTERVAL) {
            Ok(interval) => {
                let done = seconds.merger.add(interval);
                seconds.take(done, Instant::now(), hlog.as_mut())?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(display) = &display {
            display.show(&progress, timing);
        }
    }
    let finished = Instant::now().min(end);
    let left = seconds.merger.finish();
    seconds.take(left, finished, hlog.as_mut())?;
    seconds.flush(finished, hlog.as_mut())?;
    let mut total = Stats::new(operations);
    let mut ledger = Vec::new();
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(mut stats)) => {
                ledger.extend(stats.ledger.take().unwrap_or_default());
                total.merge(&stats);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("a load thread panicked".to_string());
            }
        }
    }
    if let Some(display) = display {
        display.bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed = finished.saturating_duration_since(measure_start);
    let mut report = Report::new(shape, &total, elapsed.as_secs_f64());
    report.interval_latency_ms = seconds.latency;
    report.generator = Generator::judge(&total, plan.rate.is_some(), plan.max_send_lag);
    Ok(Measured {
        report,
        stats: total,
        ledger,
        hlog,
    })
}

/// Split connections, rate and request budget over the threads.
fn thread_plans(plan: &LoadPlan, intervals: &mpsc::Sender<Interval>) -> Vec<ThreadPlan> {
    let threads = plan.cpus.len();
    let run_id = plan.seed.rotate_left(17) ^ 0x6d69_6c6c_7261_6365;
    (0..threads)
        .map(|index| {
            let connections = share(plan.connections as u64, threads, index) as usize;
            let fraction = connections as f64 / plan.connections as f64;
            ThreadPlan {
                index: index as u16,
                target: plan.target.address,
                connections,
                pipeline: plan.pipeline,
                interval: plan
                    .rate
                    .map(|rate| Duration::from_secs_f64(1.0 / (rate * fraction))),
                requests: plan.requests.map(|n| share(n, threads, index)),
                timeout: plan.timeout,
                workload: plan.workload.for_thread(index as u16, run_id),
                seed: plan.seed.wrapping_add(index as u64 * 0x9e37_79b9_7f4a_7c15),
                max_response_head_bytes: plan.max_response_head_bytes,
                ledger: plan.ledger.is_some(),
                intervals: Some(intervals.clone()),
                tls: plan.tls.clone(),
            }
        })
        .collect()
}

/// One line on what the ledger holds.
fn ledger_summary(entries: &[ledger::Entry], path: &std::path::Path) -> String {
    let mut events = [0u64; 3]; // 202, another status, no answer
    for entry in entries {
        let kind = match entry.status {
            Some(202) => 0,
            Some(_) => 1,
            None => 2,
        };
        events[kind] += u64::from(entry.events.count);
    }
    format!(
        "ledger: {} requests, events {} accepted (202), {} refused, {} without an answer; written to {}",
        entries.len(),
        events[0],
        events[1],
        events[2],
        path.display()
    )
}

/// Thread `index`'s share of `total` split `parts` ways, remainders first.
fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

fn shape(plan: &LoadPlan) -> Shape {
    Shape {
        url: plan.target.url.clone(),
        workload: match plan.workload {
            Workload::Fixed(_) => "url",
            Workload::Kv(_) => "kv",
            Workload::Events(_) => "events",
            Workload::Scenario(_) => "scenario",
        }
        .to_string(),
        threads: plan.cpus.len(),
        cpus: plan.cpus.iter().flatten().copied().collect(),
        connections: plan.connections,
        pipeline: plan.pipeline,
        rate_per_s: plan.rate,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.map(|d| d.as_secs_f64()),
        requests: plan.requests,
        timeout_ms: plan.timeout.as_secs_f64() * 1e3,
        seed: plan.seed,
        operations: plan.workload.operations(),
        start_at: plan
            .start_at
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
    }
}

/// The line printed as the run starts.
fn header(shape: &Shape) -> String {
    let mode = match shape.rate_per_s {
        Some(rate) => format!("open loop at {rate} requests/s"),
        None => "closed loop".into(),
    };
    let length = match (shape.duration_s, shape.requests) {
        (Some(d), Some(n)) => format!("{d} s or {n} requests"),
        (Some(d), None) => format!("{d} s"),
        (None, Some(n)) => format!("{n} requests"),
        (None, None) => String::new(),
    };
    format!(
        "millrace load {}: {} connections x {} pipeline = {} requests in flight at most, {mode}, {length} after {} s warm-up, seed {}",
        shape.url,
        shape.connections,
        shape.pipeline,
        shape.connections * shape.pipeline,
        shape.warmup_s,
        shape.seed
    )
}

/// How often the main thread looks at the threads' progress.
const DISPLAY_INTERVAL: Duration = Duration::from_millis(200);

/// A one-line display on a terminal, updated as the run goes.
struct Display {
    bar: indicatif::ProgressBar,
    last: std::cell::Cell<(Instant, u64)>,
}

impl Display {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Display {
            bar,
            last: std::cell::Cell::new((Instant::now(), 0)),
        }
    }

    fn show(&self, progress: &[Arc<Progress>], timing: Timing) {
        let now = Instant::now();
        let last = self.last.get();
        if now.duration_since(last.0) < DISPLAY_INTERVAL {
            return;
        }
        let answered: u64 = progress
            .iter()
            .map(|p| p.answered.load(Ordering::Relaxed))
            .sum();
        let errors: u64 = progress
            .iter()
            .map(|p| p.errors.load(Ordering::Relaxed))
            .sum();
        let rate = (answered.saturating_sub(last.1)) as f64
            / now.duration_since(last.0).as_secs_f64().max(1e-3);
        self.last.set((now, answered));
        let phase = if now < timing.measure_start {
            "warming up".to_string()
        } else {
            format!(
                "{:.1} s measured",
                now.duration_since(timing.measure_start).as_secs_f64()
            )
        };
        self.bar.set_message(format!(
            "{phase}: {} answered, {}/s, {} errors",
            report::group(answered),
            report::group(rate as u64),
            report::group(errors)
        ));
        self.bar.tick();
    }
}

/// The run's seconds as the threads close them: added, then written to the
/// interval log and read for the per-second percentiles once over.
struct Seconds {
    merger: IntervalMerger,
    /// Seconds every thread closed, waiting for their end to pass (a
    /// thread that finished early closes its last second early).
    held: VecDeque<(usize, Vec<Latencies>)>,
    latency: Vec<IntervalLatency>,
    measure_start: Instant,
}

impl Seconds {
    /// Take `done` seconds; write those over by `now`.
    fn take(
        &mut self,
        done: Vec<(usize, Vec<Latencies>)>,
        now: Instant,
        hlog: Option<&mut Hlog>,
    ) -> Result<(), String> {
        self.held.extend(done);
        let measure_start = self.measure_start;
        let over = |index: usize| measure_start + INTERVAL * (index as u32 + 1) <= now;
        let mut hlog = hlog;
        while self.held.front().is_some_and(|(index, _)| over(*index)) {
            let (index, latencies) = self.held.pop_front().expect("checked above");
            self.write(index, INTERVAL, &latencies, hlog.as_deref_mut())?;
        }
        Ok(())
    }

    /// The run ended at `end`: write what is held, the last second cut there.
    fn flush(&mut self, end: Instant, mut hlog: Option<&mut Hlog>) -> Result<(), String> {
        while let Some((index, latencies)) = self.held.pop_front() {
            let start = self.measure_start + INTERVAL * index as u32;
            let length = end.saturating_duration_since(start).min(INTERVAL);
            self.write(index, length, &latencies, hlog.as_deref_mut())?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        index: usize,
        length: Duration,
        latencies: &[Latencies],
        hlog: Option<&mut Hlog>,
    ) -> Result<(), String> {
        if let Some(hlog) = hlog {
            hlog.write(index, length, latencies)?;
        }
        let mut all = Latencies::new();
        for l in latencies {
            all.add(l);
        }
        self.latency.push(IntervalLatency::of(index, length, &all));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for total in [1u64, 7, 64, 1000] {
            for parts in 1..=5usize {
                let shares: Vec<u64> = (0..parts).map(|i| share(total, parts, i)).collect();
                assert_eq!(shares.iter().sum::<u64>(), total);
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
    }
}
