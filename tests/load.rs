//! `millrace load` against the real server and against a small fake one
//! that injects the faults a real server will not produce on demand.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, sample};
use serde_json::Value;

/// What the fake server does with each request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// GET gets 404, anything else 202; responses written a few bytes at a time.
    ByMethod,
    /// Reads, never answers.
    Silent,
    /// Answers the first `n` requests of each connection, then closes.
    CloseAfter(u64),
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// GET answered at once, anything else after the delay.
    SlowWrites(Duration),
    /// Answers this many requests per second at most, over every
    /// connection, in arrival order: below that rate at once, above it
    /// each waits behind those before it (a latency knee at that rate).
    Capacity(u32),
    /// Answers at once, except that every answer due in the window from
    /// `at` to `at + length` after start waits for the window's end.
    StallOnce { at: Duration, length: Duration },
}

/// A fake HTTP/1.1 server on a free loopback port, one thread per connection.
struct FakeServer {
    addr: SocketAddr,
    gets: Arc<AtomicU64>,
    others: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(behaviour: Behaviour) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let gets = Arc::new(AtomicU64::new(0));
        let others = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (g, o, s) = (Arc::clone(&gets), Arc::clone(&others), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (g, o) = (Arc::clone(&g), Arc::clone(&o));
                thread::spawn(move || serve(stream, behaviour, started, &g, &o));
            }
        });
        FakeServer {
            addr,
            gets,
            others,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // Wake the accept loop.
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    started: Instant,
    gets: &AtomicU64,
    others: &AtomicU64,
) {
    stream.set_nodelay(true).unwrap();
    let mut input = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut answered = 0u64;
    loop {
        let n = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&buffer[..n]);
        let mut out = Vec::new();
        while let Some((method, len)) = next_request(&input) {
            input.drain(..len);
            let get = method == "GET";
            if get {
                gets.fetch_add(1, Ordering::Relaxed);
            } else {
                others.fetch_add(1, Ordering::Relaxed);
            }
            match behaviour {
                Behaviour::Silent => {}
                Behaviour::Garbage => out.extend_from_slice(b"this is not HTTP\r\n\r\n"),
                Behaviour::CloseAfter(limit) if answered >= limit => {
                    let _ = stream.write_all(&out);
                    return;
                }
                Behaviour::ByMethod if get => {
                    out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\n\r\nabsent");
                }
                Behaviour::ByMethod => out.extend_from_slice(
                    b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                ),
                Behaviour::Capacity(per_second) => {
                    thread::sleep(capacity_slot(per_second).saturating_duration_since(Instant::now()));
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                }
                Behaviour::SlowWrites(delay) => {
                    if !get {
                        thread::sleep(delay);
                    }
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
                Behaviour::CloseAfter(_) | Behaviour::StallOnce { .. } => {
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            }
            answered += 1;
        }
        if let Behaviour::StallOnce { at, length } = behaviour {
            let since = started.elapsed();
            if since >= at && since < at + length {
                thread::sleep(at + length - since);
            }
        }
        let written = if let Behaviour::ByMethod = behaviour {
            // Small pieces, so that answers arrive split at every boundary.
            out.chunks(7).try_for_each(|piece| stream.write_all(piece))
        } else {
            stream.write_all(&out)
        };
        if written.is_err() {
            return;
        }
    }
}

/// When the next request may be answered under `Behaviour::Capacity`: one
/// slot every `1 / per_second` seconds, shared by every connection.
fn capacity_slot(per_second: u32) -> Instant {
    static NEXT_FREE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut next = NEXT_FREE.lock().unwrap();
    let now = Instant::now();
    // Idle time is not saved up: a slot is never earlier than now.
    let slot = next.map_or(now, |n| n.max(now)) + Duration::from_secs(1) / per_second;
    *next = Some(slot);
    slot
}

/// The method and length of the first whole request in `input`.
fn next_request(input: &[u8]) -> Option<(String, usize)> {
    let end = input.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&input[..end]).ok()?;
    let method = head.split(' ').next()?.to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (input.len() >= end + length).then_some((method, end + length))
}

/// Run `millrace load` with `args` and a JSON report; returns the report
/// and the process output.
fn load(args: &[&str]) -> (Value, Output) {
    let json = tempfile("json");
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run millrace load");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no report; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (serde_json::from_str(&text).unwrap(), output)
}

fn tempfile(extension: &str) -> std::path::PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "millrace-load-test-{}-{}.{extension}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn count(report: &Value, path: &str) -> u64 {
    report
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing from {report}"))
}

/// `issued = answered + failed + unfinished`, and failed is the sum of its kinds.
fn assert_counts_add_up(report: &Value) {
    let issued = count(report, "/requests/issued");
    let answered = count(report, "/requests/answered");
    let failed = count(report, "/requests/failed");
    let unfinished = count(report, "/requests/unfinished");
    assert_eq!(issued, answered + failed + unfinished, "{report}");
    let kinds: u64 = ["timeout", "read", "write", "malformed"]
        .iter()
        .map(|k| count(report, &format!("/errors/{k}")))
        .sum();
    assert_eq!(failed, kinds, "{report}");
    let by_operation: u64 = report["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| op["answered"].as_u64().unwrap())
        .sum();
    assert_eq!(by_operation, answered, "{report}");
    let statuses: u64 = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| count(report, &format!("/statuses/{c}")))
        .sum();
    assert_eq!(answered, statuses, "{report}");
}

#[test]
fn counts_add_up_against_millrace() {
    let server = Server::start(&[]);
    let url = format!("http://{}/plaintext", server.addr);
    let hgrm = tempfile("hgrm");
    let (report, output) = load(&[
        &url,
        "-c",
        "8",
        "-p",
        "16",
        "-d",
        "1s",
        "--hgrm",
        hgrm.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_counts_add_up(&report);
    // Closed loop: a request is issued when it is sent.
    assert_eq!(
        count(&report, "/requests/sent"),
        count(&report, "/requests/issued")
    );
    let answered = count(&report, "/requests/answered");
    assert!(answered > 1000, "{report}");
    assert_eq!(count(&report, "/statuses/2xx"), answered);
    assert_eq!(report["error_ratio"], 0.0);
    let served = sample(
        &server.metrics(),
        "millrace_http_requests_total{core=\"0\",route=\"plaintext\",status=\"200\"}",
    );
    assert!(served >= answered, "served {served} < answered {answered}");

    // The table names the figures.
    let table = String::from_utf8_lossy(&output.stdout);
    for word in ["Requests/s", "p99.9", "Errors", "issued"] {
        assert!(table.contains(word), "{table}");
    }

    // The .hgrm rows give back the report's percentiles.
    let text = std::fs::read_to_string(&hgrm).unwrap();
    std::fs::remove_file(&hgrm).unwrap();
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
    assert_eq!(rows.last().unwrap().2, answered);
    let max = report["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        (rows.last().unwrap().0 - max).abs() < 0.0015,
        "{max} {rows:?}"
    );
    for (name, quantile) in [
        ("p50", 0.5),
        ("p75", 0.75),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
    ] {
        let value = report["latency_ms"][name].as_f64().unwrap();
        let at = rows.iter().position(|r| r.1 >= quantile).unwrap();
        // Between the rows either side of it. Even where a row is at the
        // quantile exactly, the row may name the next value: the .hgrm walk
        // compares count / total with the quantile, the percentile takes
        // ceil(quantile * total) as a count, and the two can disagree by one
        // rounding at the boundary.
        let below = rows[at.saturating_sub(1)].0;
        assert!(
            below - 0.0015 <= value && value <= rows[at].0 + 0.0015,
            "{name}: {value} vs {below} and {:?}",
            rows[at]
        );
    }
}

#[test]
fn pipelined_answers_are_matched_in_order() {
    let fake = FakeServer::start(Behaviour::ByMethod);
    let (report, output) = load(&[
        &fake.url(),
        "--workload",
        "kv",
        "--read-ratio",
        "0.5",
        "-c",
        "4",
        "-p",
        "16",
        "-n",
        "4000",
        "-d",
        "20s",
        "--seed",
        "7",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_counts_add_up(&report);
    assert_eq!(count(&report, "/requests/answered"), 4000);
    let gets = fake.gets.load(Ordering::Relaxed);
    let puts = fake.others.load(Ordering::Relaxed);
    assert_eq!(gets + puts, 4000);
    // Every GET's answer was the 404, every PUT's the 202: one answer
    // attributed to the wrong request would show up here.
    assert_eq!(
        count(&report, "/operations/GET/statuses/4xx"),
        gets,
        "{report}"
    );
    assert_eq!(
        count(&report, "/operations/GET/statuses/2xx"),
        0,
        "{report}"
    );
    assert_eq!(
        count(&report, "/operations/PUT/statuses/2xx"),
        puts,
        "{report}"
    );
    assert_eq!(
        count(&report, "/operations/PUT/statuses/4xx"),
        0,
        "{report}"
    );
    // A read of an absent key is an answer, not an error.
    assert_eq!(count(&report, "/errors/status"), 0);
}

/// The run must end on time whatever the server does.
#[test]
fn each_operation_has_its_own_latency() {
    let delay = Duration::from_millis(40);
    let fake = FakeServer::start(Behaviour::SlowWrites(delay));
    let (report, output) = load(&[
        &fake.url(),
        "--workload",
        "kv",
        "--read-ratio",
        "0.5",
        "-c",
        "4",
        "-n",
        "200",
        "-d",
        "20s",
        "--seed",
        "3",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_counts_add_up(&report);
    let gets = count(&report, "/operations/GET/answered");
    let puts = count(&report, "/operations/PUT/answered");
    assert_eq!(gets, fake.gets.load(Ordering::Relaxed));
    assert_eq!(gets + puts, 200);
    let ms = |path: &str| report.pointer(path).and_then(Value::as_f64).unwrap();
    // One histogram for both would put the median of one near the other's.
    let slow = delay.as_secs_f64() * 1000.0;
    assert!(ms("/operations/PUT/latency_ms/p50") >= slow, "{report}");
    assert!(
        ms("/operations/GET/latency_ms/p50") < slow / 2.0,
        "{report}"
    );
    assert!(ms("/latency_ms/max") >= ms("/operations/PUT/latency_ms/max"));
    // Deletes are an operation of their own too.
    let (report, output) = load(&[
        &fake.url(),
        "--workload",
        "kv",
        "--read-ratio",
        "0.5",
        "--delete-ratio",
        "0.25",
        "-c",
        "4",
        "-n",
        "400",
    ]);
    assert!(output.status.success(), "{output:?}");
    let deletes = count(&report, "/operations/DELETE/answered");
    assert!((60..=140).contains(&deletes), "{report}");
    let delete_p50 = report["operations"]["DELETE"]["latency_ms"]["p50"]
        .as_f64()
        .unwrap();
    assert!(delete_p50 >= slow, "a DELETE waits like a PUT: {report}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Operation") && text.contains("    PUT"),
        "{text}"
    );
}

/// The Python with the `hdrhistogram` package scripts/test.sh sets up.
fn hdrh_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("var/pyvenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh makes it (hdrh_python in scripts/lib.sh)",
        python.display()
    );
    python
}

/// scripts/hlog_summary.py over `logs`: per tag, counts and percentiles.
fn python_summary(logs: &[&std::path::Path]) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hlog_summary.py");
    let output = Command::new(hdrh_python())
        .arg(script)
        .args(logs)
        .output()
        .expect("run scripts/hlog_summary.py");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `a` and `b` (milliseconds, each from a count of nanoseconds) are the
/// same value.
fn same_value(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

#[test]
fn interval_logs_read_elsewhere_give_the_reports_figures() {
    let fake = FakeServer::start(Behaviour::SlowWrites(Duration::from_millis(3)));
    let hlog = tempfile("hlog");
    let timeline = tempfile("svg");
    let (report, output) = load(&[
        &fake.url(),
        "--workload",
        "kv",
        "--read-ratio",
        "0.7",
        "-c",
        "8",
        "-d",
        "2500ms",
        "--hlog",
        hlog.to_str().unwrap(),
        "--timeline",
        timeline.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let svg = std::fs::read_to_string(&timeline).unwrap();
    assert!(
        svg.contains("p99 corrected") && svg.contains("polyline"),
        "{svg}"
    );
    let summary = python_summary(&[&hlog]);
    for op in ["GET", "PUT"] {
        for (tag, latency) in [
            (op.to_string(), "latency_ms"),
            (format!("{op}.uncorrected"), "uncorrected_latency_ms"),
        ] {
            let theirs = &summary[&tag];
            // A 2.5 s run: seconds 0, 1 and the half second 2.
            assert_eq!(theirs["intervals"], 3, "{tag}: {summary}");
            assert_eq!(
                theirs["count"].as_u64().unwrap(),
                count(&report, &format!("/operations/{op}/answered")),
                "{tag}"
            );
            for (p, ours) in [
                ("p50_ms", "p50"),
                ("p99_ms", "p99"),
                ("p99.9_ms", "p99.9"),
                ("max_ms", "max"),
            ] {
                let ours = report["operations"][op][latency][ours].as_f64().unwrap();
                let theirs = theirs[p].as_f64().unwrap();
                assert!(
                    same_value(ours, theirs),
                    "{tag} {p}: ours {ours}, theirs {theirs}"
                );
            }
        }
    }
    let seconds = report["interval_latency_ms"].as_array().unwrap();
    assert_eq!(seconds.len(), 3, "{report}");
    let answered: u64 = seconds
        .iter()
        .map(|s| s["answered"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, count(&report, "/requests/answered"));
    let _ = std::fs::remove_file(hlog);
    let _ = std::fs::remove_file(timeline);
}

#[test]
fn report_adds_runs_as_one() {
    let fake = FakeServer::start(Behaviour::SlowWrites(Duration::from_millis(2)));
    let logs = [tempfile("hlog"), tempfile("hlog")];
    let mut reports = Vec::new();
    for (log, read_ratio) in logs.iter().zip(["0.9", "0.2"]) {
        let (report, output) = load(&[
            &fake.url(),
            "--workload",
            "kv",
            "--read-ratio",
            read_ratio,
            "-c",
            "4",
            "-n",
            "600",
            "--hlog",
            log.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{output:?}");
        reports.push(report);
    }
    let json = tempfile("json");
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("report")
        .args(&logs)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run millrace report");
    assert!(output.status.success(), "{output:?}");
    let merged: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let sum = |path: &str| reports.iter().map(|r| count(r, path)).sum::<u64>();
    for path in [
        "/requests/answered",
        "/requests/issued",
        "/operations/GET/answered",
        "/operations/PUT/answered",
        "/shape/connections",
    ] {
        assert_eq!(count(&merged, path), sum(path), "{path}");
    }
    // The merged percentiles are those of every sample at once, as an
    // independent reader adds them: not an average of the two runs'.
    let summary = python_summary(&[&logs[0], &logs[1]]);
    for op in ["GET", "PUT"] {
        for (p, ours) in [("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")] {
            let ours = merged["operations"][op]["latency_ms"][ours]
                .as_f64()
                .unwrap();
            let theirs = summary[op][p].as_f64().unwrap();
            assert!(
                same_value(ours, theirs),
                "{op} {p}: ours {ours}, theirs {theirs}"
            );
        }
    }
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("2 logs added"), "{text}");
    // Not logs: a clear error, exit status 2.
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["report", "Cargo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Cargo.toml"),
        "{output:?}"
    );
    for path in logs.iter().chain([&json]) {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn generators_started_at_one_time_start_together() {
    let fake = FakeServer::start(Behaviour::CloseAfter(u64::MAX));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = format!("{:.3}", now + 1.5);
    let invoked = Instant::now();
    let (report, output) = load(&[&fake.url(), "-n", "20", "--start-at", &at]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        invoked.elapsed() >= Duration::from_millis(1400),
        "it waited for --start-at"
    );
    assert_eq!(count(&report, "/requests/answered"), 20);
    assert_eq!(
        report["shape"]["start_at"].as_f64().unwrap(),
        at.parse::<f64>().unwrap()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("clocks must agree"), "{text}");
}

#[test]
fn a_starved_generator_is_reported_behind_not_as_server_latency() {
    let fake = FakeServer::start(Behaviour::CloseAfter(u64::MAX));
    // The generator's CPU, kept busy by three spinning processes: it gets
    // about a quarter of it, in slices of milliseconds.
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = (cpus - 1).to_string();
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            Command::new("taskset")
                .args(["-c", &cpu, "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("run taskset")
        })
        .collect();
    let (report, output) = load(&[
        &fake.url(),
        "--cores",
        &format!("{cpu},"),
        "-c",
        "8",
        "-R",
        "20000",
        "-d",
        "2s",
        "--max-send-lag",
        "1ms",
    ]);
    for mut spinner in spinners {
        let _ = spinner.kill();
        let _ = spinner.wait();
    }
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(report["generator"]["behind"], true, "{report}");
    let lag_p99 = report["generator"]["send_lag_ms"]["p99"].as_f64().unwrap();
    assert!(lag_p99 > 1.0, "{report}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("INVALID"), "{text}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not the server's"));
}

#[test]
fn a_generator_with_time_to_spare_is_not_behind() {
    let fake = FakeServer::start(Behaviour::CloseAfter(u64::MAX));
    let (report, output) = load(&[
        &fake.url(),
        "-c",
        "4",
        "-R",
        "200",
        "-d",
        "1s",
        "--max-send-lag",
        "50ms",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(report["generator"]["behind"], false, "{report}");
    let lag = &report["generator"]["send_lag_ms"];
    assert!(lag["p99"].as_f64().unwrap() < 50.0, "{report}");
    assert!(
        report["generator"]["cpu_busy"].as_f64().unwrap() < 0.97,
        "{report}"
    );
    // A closed loop has no schedule to fall behind.
    let (report, output) = load(&[&fake.url(), "-c", "2", "-n", "100"]);
    assert!(output.status.success(), "{output:?}");
    assert!(report["generator"]["send_lag_ms"].is_null(), "{report}");
}

#[test]
fn the_slo_search_finds_a_known_knee() {
    let capacity = 2000.0;
    let fake = FakeServer::start(Behaviour::Capacity(capacity as u32));
    let json = tempfile("json");
    let plot = tempfile("svg");
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args([
            "load",
            &fake.url(),
            "-c",
            "16",
            "--warmup",
            "200ms",
            "-d",
            "1s",
        ])
        .args(["--slo", "p99<20ms", "--rate-range", "500..16000"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run millrace load");
    assert!(output.status.success(), "{output:?}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let best = result["best_rate_per_s"].as_f64().unwrap();
    let missed = result["first_missed_per_s"].as_f64().unwrap();
    assert!(
        (capacity * 0.9..=capacity * 1.02).contains(&best),
        "the knee is at {capacity}/s; the search says {best}: {result}"
    );
    assert!(missed > best && missed <= best * 1.05 + 1.0, "{result}");
    let steps = result["steps"].as_array().unwrap();
    assert!(steps.len() >= 5, "{result}");
    // A step may be not measured (its generator fell behind on a busy
    // machine); the search goes no higher than it and still converges.
    for verdict in ["met", "missed"] {
        assert!(steps.iter().any(|s| s["verdict"] == verdict), "{result}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("p99.9") && svg.contains("requests/s answered"),
        "{svg}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("met at"), "{text}");
    // No rate meets an objective below the server's own time: exit 1.
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["load", &fake.url(), "-c", "4", "-d", "300ms"])
        .args(["--slo", "p50<1us", "--rate-range", "1000..2000"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("missed at every rate"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(plot);
}

#[test]
fn each_scenario_template_is_an_operation() {
    let fake = FakeServer::start(Behaviour::ByMethod);
    let scenario = tempfile("toml");
    std::fs::write(
        &scenario,
        r#"
[variables]
id = { zipf = [1, 50] }

[[request]]
name = "look"
weight = 4
path = "/things/{id}"
absent_ok = true

[[request]]
name = "store"
method = "POST"
path = "/things"
body = '{"id": {id}}'
"#,
    )
    .unwrap();
    let (report, output) = load(&[
        &fake.url(),
        "--scenario",
        scenario.to_str().unwrap(),
        "-c",
        "4",
        "-n",
        "1000",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_counts_add_up(&report);
    // The fake answers GET with 404 (an answer here) and anything else 202.
    let looks = count(&report, "/operations/look/answered");
    let stores = count(&report, "/operations/store/answered");
    assert_eq!(looks, fake.gets.load(Ordering::Relaxed));
    assert_eq!(stores, fake.others.load(Ordering::Relaxed));
    assert_eq!(count(&report, "/operations/look/statuses/4xx"), looks);
    assert_eq!(count(&report, "/operations/store/statuses/2xx"), stores);
    assert_eq!(count(&report, "/errors/status"), 0);
    assert!(
        (700..=900).contains(&looks),
        "weights 4:1 over 1,000: {looks}"
    );
    assert_eq!(report["shape"]["workload"], "scenario");
    let _ = std::fs::remove_file(scenario);
}

fn assert_ends_on_time(started: Instant, duration: Duration) {
    let took = started.elapsed();
    assert!(took < duration + Duration::from_secs(3), "took {took:?}");
}

#[test]
fn refused_connections_are_counted() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let (report, output) = load(&[&format!("http://127.0.0.1:{port}/"), "-c", "4", "-d", "1s"]);
    assert_ends_on_time(started, Duration::from_secs(1));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(count(&report, "/errors/connect") >= 4, "{report}");
    assert_eq!(count(&report, "/requests/answered"), 0);
    assert!(String::from_utf8_lossy(&output.stderr).contains("error ratio"));
}

#[test]
fn a_server_that_never_accepts_times_out_connects() {
    // A listen queue of one that is never accepted from: later SYNs are
    // dropped, as by a host that does not answer.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let started = Instant::now();
    let (report, output) = load(&[
        &format!("http://{addr}/"),
        "-c",
        "8",
        "-d",
        "1500ms",
        "--timeout",
        "300ms",
    ]);
    assert_ends_on_time(started, Duration::from_millis(1500));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(count(&report, "/errors/connect") >= 4, "{report}");
    assert_counts_add_up(&report);
    drop(socket);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let fake = FakeServer::start(Behaviour::Silent);
    let started = Instant::now();
    let (report, output) = load(&[
        &fake.url(),
        "-c",
        "4",
        "-p",
        "2",
        "-d",
        "1s",
        "--timeout",
        "200ms",
    ]);
    assert_ends_on_time(started, Duration::from_secs(1));
    assert_eq!(output.status.code(), Some(1));
    assert_counts_add_up(&report);
    assert_eq!(count(&report, "/requests/answered"), 0);
    // Each connection times out its two requests about every 200 ms.
    assert!(count(&report, "/errors/timeout") >= 16, "{report}");
}

#[test]
fn a_server_closing_mid_pipeline_costs_the_requests_behind() {
    let fake = FakeServer::start(Behaviour::CloseAfter(3));
    let (report, output) = load(&[&fake.url(), "-c", "2", "-p", "8", "-d", "1s"]);
    assert_eq!(output.status.code(), Some(1));
    assert_counts_add_up(&report);
    assert!(count(&report, "/requests/answered") >= 6, "{report}");
    assert!(count(&report, "/errors/read") >= 5, "{report}");
    assert!(
        count(&report, "/requests/connections_opened") >= 2,
        "{report}"
    );
}

#[test]
fn malformed_answers_are_counted() {
    let fake = FakeServer::start(Behaviour::Garbage);
    let (report, output) = load(&[&fake.url(), "-c", "2", "-d", "500ms"]);
    assert_eq!(output.status.code(), Some(1));
    assert_counts_add_up(&report);
    assert!(count(&report, "/errors/malformed") >= 2, "{report}");
    assert_eq!(count(&report, "/requests/answered"), 0);
}

#[test]
fn open_loop_latency_shows_a_stall_that_closed_loop_timing_hides() {
    let fake = FakeServer::start(Behaviour::StallOnce {
        at: Duration::from_secs(4),
        length: Duration::from_secs(1),
    });
    let (report, output) = load(&[
        &fake.url(),
        "-c",
        "8",
        "-R",
        "4000",
        "-d",
        "10s",
        "--seed",
        "1",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_counts_add_up(&report);
    let corrected = report["latency_ms"]["p99.9"].as_f64().unwrap();
    let uncorrected = report["uncorrected_latency_ms"]["p99.9"].as_f64().unwrap();
    assert!(corrected >= 500.0, "corrected p99.9 {corrected} ms");
    assert!(uncorrected < 500.0, "uncorrected p99.9 {uncorrected} ms");
    // The open loop kept its rate: about 40,000 requests in 10 s.
    let issued = count(&report, "/requests/issued");
    assert!((39_000..=41_000).contains(&issued), "{issued}");
}

#[test]
fn invalid_flags_get_clear_errors() {
    for (args, expected) in [
        (
            &["https://127.0.0.1:1/", "--ca-file", "/nonexistent/ca.pem"][..],
            "/nonexistent/ca.pem",
        ),
        (
            &["https://127.0.0.1:1/", "--insecure", "--ca-file", "x.pem"],
            "drop --ca-file",
        ),
        (&["127.0.0.1:80"], "expected a URL"),
        (&["http://127.0.0.1:1/", "-c", "0"], "--connections"),
        (&["http://127.0.0.1:1/", "-p", "0"], "--pipeline"),
        (&["http://127.0.0.1:1/", "-R", "0"], "--rate"),
        (&["http://127.0.0.1:1/", "--plot", "x.png"], "SVG"),
        (&["http://127.0.0.1:1/", "-d", "ten"], "invalid time"),
        (&["http://127.0.0.1:1/", "--key-dist", "zipf:0"], "zipf"),
        (
            &["http://127.0.0.1:1/", "--body", "@/nonexistent/file"],
            "cannot read",
        ),
        (&["http://127.0.0.1:1/", "-H", "no colon"], "Name: value"),
        (&["http://127.0.0.1:1/", "--start-at", "1000"], "ago"),
        (&["http://127.0.0.1:1/", "--slo", "p99<1ms"], "--rate-range"),
        (
            &[
                "http://127.0.0.1:1/",
                "--slo",
                "p99",
                "--rate-range",
                "1..2",
            ],
            "PERCENTILE<TIME",
        ),
        (
            &[
                "http://127.0.0.1:1/",
                "--slo",
                "p99<1ms",
                "--rate-range",
                "1..2",
                "-R",
                "5",
            ],
            "not for --slo",
        ),
        (
            &["http://127.0.0.1:1/", "--rate-range", "1..2"],
            "is for --slo",
        ),
        (
            &["http://127.0.0.1:1/", "--scenario", "/nonexistent.toml"],
            "cannot read",
        ),
        (
            &["http://127.0.0.1:1/", "--workload", "scenario"],
            "needs --scenario",
        ),
        (
            &["http://127.0.0.1:1/", "--hlog", "/nonexistent/dir/x.hlog"],
            "cannot write",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .arg("load")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
