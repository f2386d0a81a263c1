//! `millrace load`: an HTTP/1.1 load generator built on the server's engine
//! (one pinned thread per CPU, one io_uring ring each), measuring latency
//! with HdrHistogram and correcting for coordinated omission in open loop.
//!
//! - [`options`]: flags, checked into a [`LoadPlan`].
//! - [`workload`]: what each request is (a URL, a key-value mix, event batches).
//! - [`engine`]: one thread's connections, requests and answers.
//! - [`stats`]: what a thread measured, merged exactly across threads.
//! - [`ledger`]: which events each request carried and how it was answered.
//! - [`report`] and [`plot`]: the table, JSON, `.hgrm` and SVG.

pub mod engine;
pub mod ledger;
pub mod options;
pub mod plot;
pub mod report;
pub mod stats;
pub mod workload;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use engine::{Engine, Progress, ThreadPlan, Timing};
use options::LoadPlan;
use report::{Report, Shape};
use stats::Stats;
use workload::Workload;

pub use options::LoadOptions;

/// When the threads start, after they have all set up.
const START_DELAY: Duration = Duration::from_millis(20);

/// How a run ended, for the exit status.
#[derive(Debug)]
pub struct Outcome {
    /// What was measured.
    pub report: Report,
    /// Errors exceeded `--max-error-ratio`.
    pub too_many_errors: bool,
}

/// Run the load `options` describe, print the table, write the files asked
/// for. Errors are sentences for the user.
pub fn run(options: LoadOptions) -> Result<Outcome, String> {
    let plan = options.resolve(&crate::server::available_cpus())?;
    let shape = shape(&plan);
    let operations = plan.workload.operations().len();
    let threads = plan.cpus.len();
    let progress: Vec<Arc<Progress>> = (0..threads).map(|_| Arc::default()).collect();

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut starts = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (index, thread_plan) in thread_plans(&plan).into_iter().enumerate() {
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
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a load thread exited during set-up".into()),
        }
    }

    let start = Instant::now() + START_DELAY;
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
    let display = std::io::stderr().is_terminal().then(|| {
        eprintln!("{}", header(&shape));
        show_progress(&progress, timing, &handles)
    });
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
    if let Some(bar) = display {
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let finished = Instant::now().min(end);
    let elapsed = finished.saturating_duration_since(measure_start);
    let report = Report::new(shape, &total, elapsed.as_secs_f64());
    print!("{}", report.table());
    write_outputs(&plan, &report, &total)?;
    if let Some(path) = &plan.ledger {
        ledger::write(path, &ledger)?;
        println!("{}", ledger_summary(&ledger, path));
    }
    let too_many_errors = report.error_ratio > plan.max_error_ratio;
    Ok(Outcome {
        report,
        too_many_errors,
    })
}

/// Split connections, rate and request budget over the threads.
fn thread_plans(plan: &LoadPlan) -> Vec<ThreadPlan> {
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

/// A one-line display on a terminal, updated until every thread is done.
fn show_progress(
    progress: &[Arc<Progress>],
    timing: Timing,
    handles: &[thread::JoinHandle<Result<Stats, String>>],
) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut last = (Instant::now(), 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
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
        last = (now, answered);
        let phase = if now < timing.measure_start {
            "warming up".to_string()
        } else {
            format!(
                "{:.1} s measured",
                now.duration_since(timing.measure_start).as_secs_f64()
            )
        };
        bar.set_message(format!(
            "{phase}: {} answered, {}/s, {} errors",
            report::group(answered),
            report::group(rate as u64),
            report::group(errors)
        ));
        bar.tick();
    }
    bar
}

fn write_outputs(plan: &LoadPlan, report: &Report, stats: &Stats) -> Result<(), String> {
    if let Some(path) = &plan.hgrm {
        std::fs::write(path, report::hgrm(&stats.corrected))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &plan.json {
        let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &plan.plot {
        let mut series = vec![("corrected".to_string(), &stats.corrected)];
        if plan.rate.is_some() {
            series.push(("uncorrected".to_string(), &stats.uncorrected));
        }
        let title = format!("{} latency by percentile", plan.target.url);
        plot::latency_by_percentile(path, &title, &series)?;
    }
    Ok(())
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
