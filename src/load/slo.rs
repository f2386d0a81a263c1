//! `millrace load --slo 'p99<1ms' --rate-range LOW..HIGH`: the highest
//! open-loop rate at which a latency objective still holds.
//!
//! Steps up from LOW, doubling, until a rate misses the objective (or HIGH
//! is reached), then bisects between the last rate that met it and the
//! first that missed, until they are within [`RESOLUTION`] of each other.
//! Every step is a whole run of its own: fresh connections, its warm-up,
//! and a measured time long enough for the percentile asked (at least
//! [`TAIL_SAMPLES`] requests beyond it). A step whose generator fell behind
//! its schedule is not measured: it neither meets nor misses, and the
//! search does not go above it.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::options::LoadPlan;
use super::report::{Latency, Report, group};
use super::{Measured, Outcome, measure};

/// The search stops when the rate that missed is within this share of the
/// rate that met.
pub const RESOLUTION: f64 = 0.05;

/// Steps at most, doubling and bisecting together.
pub const MAX_STEPS: usize = 24;

/// The longest a step may measure: a percentile that needs more requests
/// than the range's lowest rate gives in this time is refused up front.
pub const MAX_STEP: Duration = Duration::from_secs(600);

/// Requests a step measures beyond the percentile asked: for p99, 1,000
/// requests in all; for p99.9, 10,000.
pub const TAIL_SAMPLES: f64 = 10.0;

/// One objective: a percentile of the corrected latency below a bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Objective {
    /// As written: `p99`, `p99.9`, `p50`.
    pub percentile: String,
    /// The percentile as a quantile (0.99).
    pub quantile: f64,
    /// The bound, in milliseconds.
    pub below_ms: f64,
}

/// Parse `p99<1ms`, or several joined by commas (`p99<1ms,p99.9<5ms`).
pub fn parse_objectives(text: &str) -> Result<Vec<Objective>, String> {
    let bad = |part: &str| {
        format!(
            "--slo {part:?}: expected PERCENTILE<TIME, such as p99<1ms or p99.9<500us (several joined by commas)"
        )
    };
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (name, bound) = part.split_once('<').ok_or_else(|| bad(part))?;
            let name = name.trim();
            let percent: f64 = name
                .strip_prefix('p')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad(part))?;
            if !(percent > 0.0 && percent < 100.0) {
                return Err(format!(
                    "--slo {part:?}: a percentile is above 0 and below 100"
                ));
            }
            let bound = super::options::parse_duration(bound.trim()).map_err(|_| bad(part))?;
            if bound.is_zero() {
                return Err(format!("--slo {part:?}: no latency is below 0"));
            }
            Ok(Objective {
                percentile: name.to_string(),
                quantile: percent / 100.0,
                below_ms: bound.as_secs_f64() * 1e3,
            })
        })
        .collect()
}

/// Parse `LOW..HIGH` requests per second.
pub fn parse_rate_range(text: &str) -> Result<(f64, f64), String> {
    let bad = || {
        format!(
            "--rate-range {text:?}: expected LOW..HIGH in requests per second, such as 1000..200000"
        )
    };
    let (low, high) = text.split_once("..").ok_or_else(bad)?;
    let low: f64 = low.trim().parse().map_err(|_| bad())?;
    let high: f64 = high.trim().parse().map_err(|_| bad())?;
    if !(low > 0.0 && low < high && high <= 1e9) {
        return Err(format!(
            "--rate-range {text:?}: LOW must be above 0 and below HIGH, HIGH at most 1e9"
        ));
    }
    Ok((low, high))
}

/// What a step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every objective held.
    Met,
    /// An objective did not hold, or errors passed `--max-error-ratio`.
    Missed,
    /// The generator fell behind: nothing is known of the server.
    NotMeasured,
}

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The rate offered.
    pub rate_per_s: f64,
    /// The rate answered.
    pub answered_per_s: f64,
    /// Measured seconds.
    pub measured_s: f64,
    /// Corrected latency.
    pub latency_ms: Latency,
    /// Errors over everything that ended.
    pub error_ratio: f64,
    /// What it found.
    pub verdict: Verdict,
    /// Why it missed or was not measured.
    pub why: Option<String>,
}

/// The search's result: what `--json` writes with `--slo`.
#[derive(Debug, Serialize)]
pub struct SloReport {
    /// The objectives.
    pub objectives: Vec<Objective>,
    /// The range searched.
    pub rate_range: (f64, f64),
    /// The highest rate that met every objective; `None`: none did.
    pub best_rate_per_s: Option<f64>,
    /// The lowest rate that missed, or at which the generator fell behind;
    /// `None`: none did.
    pub first_missed_per_s: Option<f64>,
    /// `first_missed_per_s` is where the generator fell behind, not where
    /// the objective failed: the server's knee is at least `best_rate_per_s`.
    pub stopped_by_generator: bool,
    /// Every step, in the order run.
    pub steps: Vec<Step>,
    /// The report of the step at the best rate.
    pub best: Option<Report>,
}

/// Run the search `plan` and `objectives` ask for, print its steps and
/// curve, write the files asked for.
pub fn search(plan: &LoadPlan, objectives: &[Objective]) -> Result<Outcome, String> {
    let (low, high) = plan
        .rate_range
        .ok_or("--slo needs --rate-range LOW..HIGH")?;
    let tail = objectives
        .iter()
        .map(|o| 1.0 - o.quantile)
        .fold(1.0, f64::min);
    let min_requests = TAIL_SAMPLES / tail;
    let longest = Duration::from_secs_f64(min_requests / low);
    if longest > MAX_STEP {
        return Err(format!(
            "--slo: the percentile asked needs {} requests per step, {:.0} s at {} requests/s; steps last at most {} s: raise LOW in --rate-range or ask a lower percentile",
            group(min_requests.ceil() as u64),
            longest.as_secs_f64(),
            group(low as u64),
            MAX_STEP.as_secs()
        ));
    }
    let described: Vec<String> = objectives
        .iter()
        .map(|o| format!("{} < {} ms", o.percentile, o.below_ms))
        .collect();
    println!(
        "millrace load {}: the highest rate with {} (corrected latency), between {} and {} requests/s",
        plan.target.url,
        described.join(" and "),
        group(low as u64),
        group(high as u64)
    );
    println!(
        "  {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}  verdict",
        "offered/s", "answered/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut steps: Vec<(Step, Report)> = Vec::new();
    let mut run_step = |rate: f64| -> Result<Verdict, String> {
        let step = run_one(plan, objectives, rate, min_requests)?;
        let verdict = step.0.verdict;
        print_step(&step.0);
        steps.push(step);
        Ok(verdict)
    };

    let mut met: Option<f64> = None;
    let mut missed: Option<f64> = None;
    let mut by_generator = false;
    let mut rate = low;
    let mut count = 0;
    loop {
        count += 1;
        match run_step(rate)? {
            Verdict::Met => met = Some(rate),
            verdict => {
                missed = Some(rate);
                by_generator = verdict == Verdict::NotMeasured;
                break;
            }
        }
        if rate >= high || count >= MAX_STEPS {
            break;
        }
        rate = (rate * 2.0).min(high);
    }
    while let (Some(m), Some(x)) = (met, missed) {
        if x <= m * (1.0 + RESOLUTION) || count >= MAX_STEPS {
            break;
        }
        count += 1;
        let mid = (m + x) / 2.0;
        match run_step(mid)? {
            Verdict::Met => met = Some(mid),
            verdict => {
                missed = Some(mid);
                by_generator = verdict == Verdict::NotMeasured;
            }
        }
    }

    let best = met.and_then(|m| {
        steps
            .iter()
            .find(|(s, _)| s.rate_per_s == m)
            .map(|(_, r)| r.clone())
    });
    let result = SloReport {
        objectives: objectives.to_vec(),
        rate_range: (low, high),
        best_rate_per_s: met,
        first_missed_per_s: missed,
        stopped_by_generator: by_generator,
        steps: steps.iter().map(|(s, _)| s.clone()).collect(),
        best: best.clone(),
    };
    match (met, missed) {
        (Some(m), Some(x)) if by_generator => println!(
            "  met at {} requests/s; at {} the generator fell behind, so the server's knee is at {} or above (use more --cores)",
            group(m as u64),
            group(x as u64),
            group(m as u64)
        ),
        (Some(m), Some(x)) => println!(
            "  met at {} requests/s, missed at {} (within {:.1}%)",
            group(m as u64),
            group(x as u64),
            (x / m - 1.0) * 100.0
        ),
        (Some(m), None) => println!(
            "  met at {} requests/s, the top of --rate-range: the knee is higher",
            group(m as u64)
        ),
        (None, _) => println!(
            "  missed at every rate tried, down to {} requests/s",
            group(low as u64)
        ),
    }
    if steps.iter().any(|(s, _)| s.verdict == Verdict::NotMeasured) {
        println!(
            "  a step's generator fell behind its schedule: the search went no higher (use more --cores)"
        );
    }
    if let Some(path) = &plan.outputs.json {
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &plan.outputs.plot {
        let title = format!("{} latency against throughput", plan.target.url);
        let points: Vec<(f64, Latency)> = result
            .steps
            .iter()
            .filter(|s| s.verdict != Verdict::NotMeasured)
            .map(|s| (s.answered_per_s, s.latency_ms))
            .collect();
        super::plot::latency_against_throughput(path, &title, &points)?;
    }
    let report = match best {
        Some(report) => report,
        None => steps
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .ok_or("no step ran")?,
    };
    Ok(Outcome {
        report,
        too_many_errors: false,
        generator_behind: false,
        slo_missed: met.is_none(),
    })
}

/// One step at `rate`: a run of its own, judged.
fn run_one(
    plan: &LoadPlan,
    objectives: &[Objective],
    rate: f64,
    min_requests: f64,
) -> Result<(Step, Report), String> {
    let base = plan.duration.unwrap_or(Duration::from_secs(3));
    let duration = base.max(Duration::from_secs_f64(min_requests / rate));
    let step_plan = LoadPlan {
        rate: Some(rate),
        duration: Some(duration),
        requests: None,
        slo: None,
        rate_range: None,
        outputs: Default::default(),
        hlog: None,
        ledger: None,
        start_at: None,
        ..plan.clone()
    };
    let Measured { report, stats, .. } = measure(&step_plan, None, false)?;
    let (verdict, why) = judge(
        &report,
        &stats.corrected(),
        objectives,
        plan.max_error_ratio,
    );
    let step = Step {
        rate_per_s: rate,
        answered_per_s: report.requests_per_s,
        measured_s: report.elapsed_s,
        latency_ms: report.latency_ms,
        error_ratio: report.error_ratio,
        verdict,
        why,
    };
    Ok((step, report))
}

/// Whether `report`, whose corrected latencies `corrected` holds, meets
/// `objectives`.
pub fn judge(
    report: &Report,
    corrected: &Histogram<u64>,
    objectives: &[Objective],
    max_error_ratio: f64,
) -> (Verdict, Option<String>) {
    if report.generator.behind {
        return (Verdict::NotMeasured, report.generator.note.clone());
    }
    if report.error_ratio > max_error_ratio {
        return (
            Verdict::Missed,
            Some(format!(
                "errors {:.3}% above --max-error-ratio",
                report.error_ratio * 100.0
            )),
        );
    }
    let missed: Vec<String> = objectives
        .iter()
        .filter_map(|o| {
            let value = corrected.value_at_quantile(o.quantile) as f64 / 1e6;
            (value >= o.below_ms).then(|| format!("{} {value:.3} ms", o.percentile))
        })
        .collect();
    if missed.is_empty() {
        (Verdict::Met, None)
    } else {
        (Verdict::Missed, Some(missed.join(", ")))
    }
}

fn print_step(step: &Step) {
    let l = &step.latency_ms;
    let verdict = match step.verdict {
        Verdict::Met => "met".to_string(),
        Verdict::Missed => format!("missed: {}", step.why.as_deref().unwrap_or("")),
        Verdict::NotMeasured => "not measured: the generator fell behind".to_string(),
    };
    println!(
        "  {:>12} {:>12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {verdict}",
        group(step.rate_per_s.round() as u64),
        group(step.answered_per_s.round() as u64),
        l.p50,
        l.p99,
        l.p99_9,
        l.max
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_and_bad_ones_say_why() {
        let o = parse_objectives("p99<1ms, p99.9<500us").unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].quantile, o[0].below_ms), (0.99, 1.0));
        assert!((o[1].quantile - 0.999).abs() < 1e-12);
        assert!((o[1].below_ms - 0.5).abs() < 1e-12);
        for bad in [
            "p99", "99<1ms", "p100<1ms", "p0<1ms", "p99<fast", "p99<0ms", "",
        ] {
            assert!(parse_objectives(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_ranges_parse() {
        assert_eq!(parse_rate_range("1000..200000"), Ok((1000.0, 200000.0)));
        for bad in ["1000", "0..10", "10..10", "20..10", "a..b", "1..2e9"] {
            assert!(parse_rate_range(bad).is_err(), "{bad}");
        }
    }
}
