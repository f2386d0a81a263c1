//! SVG charts: latency by percentile, the x axis stretching the tail (90%,
//! 99%, 99.9%, ... equally spaced) as HdrHistogram's plotter does; and a
//! run's timeline, requests/s and p99 per second.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::report::{IntervalLatency, Latency};

/// Points per halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 10;

/// Draw each `(name, histogram)` (nanoseconds) as one curve into `path`.
pub fn latency_by_percentile(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<(), String> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, histogram)| (name.clone(), curve(histogram)))
        .collect();
    percentile_chart(path, title, &curves)
}

/// Draw `(1 / (1 - quantile), milliseconds)` curves, such as [`hgrm_curve`]
/// reads back, into `path`.
pub fn percentile_chart(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let x_max = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(100.0_f64, f64::max);
    let y_max = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.001_f64, f64::max)
        * 1.05;
    draw(path, title, curves, x_max, y_max)
        .map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

/// The `(1 / (1 - quantile), milliseconds)` points of an `.hgrm` file, as
/// `millrace load --hgrm` (and wrk2, and HdrHistogram) write them.
pub fn hgrm_curve(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [value, quantile, _count, _inverse] = fields.as_slice() else {
                return None;
            };
            let (value, quantile) = (value.parse::<f64>().ok()?, quantile.parse::<f64>().ok()?);
            (quantile < 1.0).then(|| (1.0 / (1.0 - quantile), value))
        })
        .collect();
    if points.is_empty() {
        return Err("no percentile rows (Value Percentile TotalCount 1/(1-Percentile))".into());
    }
    Ok(points)
}

/// A bar per `(name, value)` into `path`, such as requests per CPU-second
/// per server.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
) -> Result<(), String> {
    draw_bars(path, title, y_desc, bars).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    let y_max = bars.iter().map(|b| b.1).fold(1.0_f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(64)
        .y_label_area_size(84)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(bars.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
        let color = Palette99::pick(i).to_rgba();
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *value),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
        Text::new(
            format!("{value:.0}"),
            (SegmentValue::CenterOf(i), *value * 1.02),
            ("sans-serif", 14),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Requests per second and p99 per second (corrected and uncorrected) over
/// the run, two charts one above the other, into `path`.
pub fn timeline(path: &Path, title: &str, seconds: &[IntervalLatency]) -> Result<(), String> {
    draw_timeline(path, title, seconds).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_timeline(
    path: &Path,
    title: &str,
    seconds: &[IntervalLatency],
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = seconds
        .iter()
        .map(|s| s.start_s + s.length_s)
        .fold(1.0_f64, f64::max);
    let rate = |s: &IntervalLatency| {
        if s.length_s > 0.0 {
            s.answered as f64 / s.length_s
        } else {
            0.0
        }
    };
    let mid = |s: &IntervalLatency| s.start_s + s.length_s / 2.0;
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(340);
    let rate_max = seconds.iter().map(rate).fold(1.0_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(84)
        .build_cartesian_2d(0.0..x_max, 0.0..rate_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests/s")
        .draw()?;
    chart.draw_series(LineSeries::new(
        seconds.iter().map(|s| (mid(s), rate(s))),
        Palette99::pick(0).stroke_width(2),
    ))?;
    let ms_max = seconds
        .iter()
        .map(|s| s.p99.max(s.uncorrected_p99))
        .fold(0.001_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(84)
        .build_cartesian_2d(0.0..x_max, 0.0..ms_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("p99 latency (ms)")
        .draw()?;
    for (i, (name, of)) in [
        (
            "p99 corrected",
            (|s: &IntervalLatency| s.p99) as fn(&IntervalLatency) -> f64,
        ),
        ("p99 uncorrected", |s: &IntervalLatency| s.uncorrected_p99),
    ]
    .into_iter()
    .enumerate()
    {
        let color = Palette99::pick(i + 1).to_rgba();
        draw_line(
            &mut chart,
            name,
            color,
            seconds.iter().map(|s| (mid(s), of(s))),
        )?;
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// `--slo`'s curve: p50, p99 and p99.9 against the rate answered, one
/// point per `(requests/s answered, corrected latency)`, into `path`.
pub fn latency_against_throughput(
    path: &Path,
    title: &str,
    points: &[(f64, Latency)],
) -> Result<(), String> {
    let mut points = points.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    draw_curve(path, title, &points).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_curve(
    path: &Path,
    title: &str,
    steps: &[(f64, Latency)],
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = steps.iter().map(|s| s.0).fold(1.0_f64, f64::max) * 1.05;
    let y_max = steps.iter().map(|s| s.1.p99_9).fold(0.001_f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d(0.0..x_max, (0.001..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("requests/s answered")
        .y_desc("corrected latency (ms)")
        .draw()?;
    for (i, (name, of)) in [
        ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> f64),
        ("p99", |l: &Latency| l.p99),
        ("p99.9", |l: &Latency| l.p99_9),
    ]
    .into_iter()
    .enumerate()
    {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = steps
            .iter()
            .map(|(rate, latency)| (*rate, of(latency).max(0.001)))
            .collect();
        draw_line(&mut chart, name, color, line.iter().copied())?;
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// A labelled line of `points` in `color`.
fn draw_line<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    name: &str,
    color: RGBAColor,
    points: impl Iterator<Item = (X::ValueType, Y::ValueType)>,
) -> Result<(), Box<dyn std::error::Error>>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The lines' names, boxed in the upper left.
fn draw_legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// `(1 / (1 - quantile), latency in ms)` from 0% up to the last point before 100%.
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
        .filter(|&(q, _)| q < 1.0)
        .map(|(q, value)| (1.0 / (1.0 - q), value as f64 / 1e6))
        .collect()
}

fn draw(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<(f64, f64)>)],
    x_max: f64,
    y_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    for (i, (name, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        draw_line(&mut chart, name, color, points.iter().copied())?;
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// `10` as `90%`, `1000` as `99.9%`.
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / x);
    let digits = x.log10().round().max(2.0) as usize - 2;
    format!("{percent:.digits$}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn hgrm_files_read_back_and_bars_draw() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for i in 1..=1000u64 {
            histogram.record(i * 10_000).unwrap();
        }
        let points = hgrm_curve(&crate::load::report::hgrm(&histogram)).unwrap();
        assert_eq!(points[0].0, 1.0);
        assert!(
            points
                .iter()
                .any(|&(x, ms)| (x - 2.0).abs() < 1e-9 && (ms - 5.0).abs() < 0.01)
        );
        assert!(hgrm_curve("not a histogram\n").is_err());
        let path = std::env::temp_dir().join(format!("millrace-bars-{}.svg", std::process::id()));
        bar_chart(
            &path,
            "test",
            "req/s",
            &[("a".into(), 10.0), ("b".into(), 20.0)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("\nb\n"), "{svg}");
    }

    #[test]
    fn draws_a_timeline() {
        let seconds: Vec<IntervalLatency> = (0..5)
            .map(|i| IntervalLatency {
                start_s: i as f64,
                length_s: if i == 4 { 0.5 } else { 1.0 },
                answered: 1000 + i * 100,
                p50: 0.1,
                p99: 1.0 + i as f64,
                p99_9: 5.0,
                max: 9.0,
                uncorrected_p99: 0.5,
            })
            .collect();
        let path =
            std::env::temp_dir().join(format!("millrace-timeline-{}.svg", std::process::id()));
        timeline(&path, "test", &seconds).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("requests/s"),
            "{svg}"
        );
        assert!(svg.contains("p99 uncorrected") && svg.matches("polyline").count() >= 3);
    }

    #[test]
    fn draws_an_svg() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for i in 1..=1000u64 {
            histogram.record(i * 10_000).unwrap();
        }
        let path = std::env::temp_dir().join(format!("millrace-plot-{}.svg", std::process::id()));
        latency_by_percentile(&path, "test", &[("a".into(), &histogram)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("99%"));
        assert!(svg.contains("polyline"));
    }
}
