//! The server as an operator runs it: executors, signals, configuration,
//! `millrace doctor`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{Server, closed_by_server, get_on, read_response, sample};

fn millrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn sigterm_drains_a_request_in_flight_then_exits_zero() {
    let mut server = Server::start(&["--drain-delay-ms", "400"]);
    let mut idle = server.connect();
    assert_eq!(get_on(&mut idle, "/livez").status, 200);
    assert_eq!(server.get("/readyz").text(), "ready\n");

    // A request whose body is half sent when the signal arrives.
    let mut in_flight = server.connect();
    in_flight
        .write_all(b"PUT /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(100));

    // During the drain delay readiness fails but connections are still served.
    let readyz = server.get("/readyz");
    assert_eq!((readyz.status, readyz.text().as_str()), (503, "draining\n"));
    assert!(server.running());

    // After it, accepting stops and idle connections close.
    thread::sleep(Duration::from_millis(500));
    assert!(closed_by_server(&mut idle));
    assert!(server.running(), "waits for the request in flight");

    in_flight.write_all(b"56789").unwrap();
    let response = read_response(&mut in_flight);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut in_flight));

    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--shutdown-timeout-ms", "60000"]);
    let mut in_flight = server.connect();
    in_flight
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGINT);
    thread::sleep(Duration::from_millis(200));
    assert!(
        server.running(),
        "the first signal waits for the request in flight"
    );
    server.signal(libc::SIGINT);
    let status = server.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{}", server.log());
}

#[test]
fn the_shutdown_timeout_cuts_stalled_connections() {
    let mut server = Server::start(&["--shutdown-timeout-ms", "300"]);
    let mut stalled = server.connect();
    stalled
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGTERM);
    assert!(closed_by_server(&mut stalled));
    assert_eq!(server.wait().code(), Some(0));
    assert!(server.log().contains("shutdown timeout reached"));
}

#[test]
fn metrics_cover_requests_connections_ring_and_bytes() {
    let server = Server::start(&[]);
    server.get("/plaintext");
    server.get("/nope");
    let metrics = server.metrics();
    for series in [
        "millrace_http_requests_total{core=\"0\",route=\"plaintext\",status=\"200\"} 1",
        "millrace_http_requests_total{core=\"0\",route=\"unmatched\",status=\"404\"} 1",
        "millrace_http_requests_in_flight{core=\"0\"} ",
        "millrace_http_request_duration_seconds_count{core=\"0\"} 2",
        "millrace_connections_accepted_total{core=\"0\"} 2",
    ] {
        assert!(metrics.contains(series), "missing {series}:\n{metrics}");
    }
    for counter in [
        "millrace_ring_submissions_total{core=\"0\"}",
        "millrace_ring_completions_total{core=\"0\"}",
        "millrace_ring_enters_total{core=\"0\"}",
        "millrace_bytes_received_total{core=\"0\"}",
        "millrace_bytes_sent_total{core=\"0\"}",
    ] {
        assert!(sample(&metrics, counter) > 0, "{counter}:\n{metrics}");
    }
}

#[test]
fn configuration_precedence_is_flag_env_file_default() {
    let dir = std::env::temp_dir().join(format!("millrace-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("millrace.toml");
    std::fs::write(
        &file,
        "max_headers = 10\nmax_body_bytes = 11\nidle_timeout_ms = 12\ncores = \"0,\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args([
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
            "--max-headers",
            "30",
        ])
        .env("MILLRACE_MAX_HEADERS", "20")
        .env("MILLRACE_MAX_BODY_BYTES", "21")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in [
        "max_headers = 30",
        "max_body_bytes = 21",
        "idle_timeout_ms = 12",
        "cores = \"0,\"",
        "header_timeout_ms = 10000",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "missing {line}:\n{printed}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_configuration_gets_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--cores", "99"], "asks for 99 CPUs"),
        (&["serve", "--cores", "0,999"], "CPU 999"),
        (&["serve", "--cores", "x"], "invalid core list"),
        (
            &["serve", "--max-headers", "0"],
            "max_headers must be at least 1",
        ),
        (
            &["serve", "--recv-buffers", "3"],
            "recv_buffers must be a power of two",
        ),
        (
            &["serve", "--header-timeout-ms", "soon"],
            "invalid value 'soon'",
        ),
        (
            &["serve", "--config", "/nonexistent/millrace.toml"],
            "cannot read config file",
        ),
    ];
    for (args, needle) in cases {
        let output = millrace(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = millrace(&["serve", "--listen", &addr, "--cores", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn serve_help_documents_every_option_with_its_unit() {
    let output = millrace(&["serve", "--help"]);
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--listen",
        "--cores",
        "--max-connections",
        "--max-request-line-bytes",
        "--max-header-bytes",
        "--max-headers",
        "--max-body-bytes",
        "--max-pipeline-depth",
        "--header-timeout-ms",
        "--idle-timeout-ms",
        "--close-linger-ms",
        "--drain-delay-ms",
        "--shutdown-timeout-ms",
        "--ring-entries",
        "--recv-buffers",
        "--recv-buffer-bytes",
        "--config",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    for env in [
        "MILLRACE_LISTEN",
        "MILLRACE_MAX_HEADER_BYTES",
        "MILLRACE_CONFIG",
    ] {
        assert!(help.contains(env), "{env} missing");
    }
    assert!(help.contains("in bytes") && help.contains("in milliseconds"));
}

#[test]
fn doctor_reports_io_uring_features() {
    let output = millrace(&["doctor"]);
    let report = String::from_utf8(output.stdout).unwrap();
    for check in [
        "kernel",
        "io_uring",
        "ring setup flags",
        "buffer rings",
        "multishot accept",
        "multishot recv",
        "SEND_ZC",
        "memlock limit",
        "open files limit",
        "net.core.somaxconn",
        "CPUs",
    ] {
        assert!(report.contains(check), "{check} missing:\n{report}");
    }
    // This suite runs on hosts that can run millrace.
    assert!(output.status.success(), "{report}");
    assert!(report.contains("millrace can run on this host"));
}

/// One request to `addr` on a fresh connection, answered and closed.
fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> common::Response {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let response = if method == "HEAD" {
        common::read_head_response(&mut stream)
    } else {
        read_response(&mut stream)
    };
    assert_eq!(response.header("Connection"), Some("close"));
    response
}

/// Two executors share one port; each takes the connections whose SYN its
/// CPU processed (SO_INCOMING_CPU), so clients on both CPUs reach both.
#[test]
fn a_connection_is_served_by_the_executor_of_the_cpu_it_came_in_on() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs, this machine has {cpus}"
    );
    let server = Server::start_with(&["--listen", "127.0.0.1:0", "--cores", "0,1"]);
    let url = format!("http://{}/plaintext", server.addr);
    let accepted = |metrics: &str, core: u32| {
        sample(
            metrics,
            &format!("millrace_connections_accepted_total{{core=\"{core}\"}}"),
        )
    };
    for cpu in [1u32, 0] {
        let before = server.metrics();
        // Each curl a new connection, its SYN processed on `cpu` (loopback
        // delivers on the sender's CPU).
        for _ in 0..8 {
            let status = Command::new("taskset")
                .args([
                    "-c",
                    &cpu.to_string(),
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    &url,
                ])
                .status()
                .expect("run taskset curl");
            assert!(status.success());
        }
        // Figures are published every 100 ms.
        thread::sleep(Duration::from_millis(300));
        let after = server.metrics();
        let other = 1 - cpu;
        assert_eq!(accepted(&after, cpu) - accepted(&before, cpu), 8, "{after}");
        assert_eq!(accepted(&after, other), accepted(&before, other), "{after}");
    }
}

#[test]
fn connections_close_after_their_last_request_or_past_their_age() {
    use std::net::TcpStream;
    let server = Server::start(&["--max-connection-requests", "3"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 1..=3 {
        let response = get_on(&mut stream, "/plaintext");
        assert_eq!(response.status, 200);
        let close = response.header("Connection") == Some("close");
        assert_eq!(
            close,
            i == 3,
            "request {i}: {:?}",
            response.header("Connection")
        );
    }
    assert!(
        closed_by_server(&mut stream),
        "closed after its third request"
    );
    // A fresh connection starts its count again.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    assert_eq!(get_on(&mut stream, "/plaintext").header("Connection"), None);

    let server = Server::start(&["--max-connection-age-ms", "300"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(get_on(&mut stream, "/plaintext").header("Connection"), None);
    thread::sleep(Duration::from_millis(400));
    let response = get_on(&mut stream, "/plaintext");
    assert_eq!(response.status, 200, "the request in hand is answered");
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream));
}

#[test]
fn stalled_admin_clients_keep_no_probe_waiting() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Instant;
    let server = Server::start(&[]);
    let admin = server.admin.expect("an admin listener");
    // Three clients that trickle a request a byte every 400 ms, for ever.
    let tricklers: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = TcpStream::connect(admin).unwrap();
                let started = Instant::now();
                stream.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
                while stream.write_all(b"X").is_ok() && started.elapsed() < Duration::from_secs(10)
                {
                    thread::sleep(Duration::from_millis(400));
                }
                started.elapsed()
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert_eq!(request(admin, "GET", "/readyz").status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "a probe waited {:?}",
        asked.elapsed()
    );
    // Each trickler is closed once its 2 s for the whole request are up,
    // however steadily it sends.
    for trickler in tricklers {
        let held = trickler.join().unwrap();
        assert!(
            held < Duration::from_secs(4),
            "a trickling client was held {held:?}"
        );
    }
    // Past 16 clients at once, the next is told so at once.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(admin).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    drop(idle);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(request(admin, "GET", "/livez").status, 200);
}

#[test]
fn the_admin_listener_serves_metrics_and_probes_apart_from_the_public_port() {
    let defaults = String::from_utf8(millrace(&["serve", "--print-config"]).stdout).unwrap();
    assert!(
        defaults.contains("admin_listen = \"127.0.0.1:9180\""),
        "loopback by default:\n{defaults}"
    );
    let mut server = Server::start(&["--drain-delay-ms", "400"]);
    let admin = server.admin.expect("an admin listener");
    assert_ne!(admin.port(), server.addr.port());
    assert_eq!(request(admin, "GET", "/livez").status, 200);
    assert_eq!(request(admin, "GET", "/readyz").text(), "ready\n");
    let metrics = request(admin, "GET", "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("millrace_connections_open{core=\"0\"}")
    );
    let head = request(admin, "HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = request(admin, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    assert_eq!(request(admin, "GET", "/v1/stats").status, 404);
    // Not on the public port, where the probes stay for load balancers.
    let public = server.get("/metrics");
    assert_eq!(public.status, 404);
    assert!(public.text().contains("admin"), "{}", public.text());
    assert_eq!(server.get("/readyz").status, 200);
    // Draining shows there too.
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(100));
    let draining = request(admin, "GET", "/readyz");
    assert_eq!(
        (draining.status, draining.text().as_str()),
        (503, "draining\n")
    );
    assert!(server.wait().success());

    // Without one, /metrics can be public.
    let server = Server::start(&["--admin-listen", "", "--public-metrics", "true"]);
    assert_eq!(server.admin, None);
    assert_eq!(server.get("/metrics").status, 200);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let output = millrace(&["serve", "--listen", "127.0.0.1:0", "--admin-listen", &port]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("(admin)"), "{stderr}");
    let output = millrace(&["serve", "--admin-listen", "localhost"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin_listen"));
}

#[test]
fn napi_busy_polling_registers_on_each_ring_and_serves() {
    // The kernel takes the registration (6.9+) on every executor's ring;
    // on loopback nothing has a NAPI id, so requests are served as without it.
    let server = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--napi-busy-poll-us",
        "50",
    ]);
    for _ in 0..4 {
        let response = server.get("/plaintext");
        assert_eq!(response.status, 200);
    }
    let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("NAPI busy polling"))
        .unwrap_or_else(|| panic!("doctor reports NAPI:\n{text}"));
    assert!(line.contains(" ok "), "{line}");
}

/// Every response that closes its connection shuts that connection's
/// write side: a shutdown still queued in the kernel when the socket's
/// direct descriptor was closed and handed to the next connection once
/// shut that one instead, and its client read an empty answer.
#[test]
fn closing_a_connection_never_shuts_the_next_one() {
    let server = Server::start(&[]);
    let http = format!("http://{}/plaintext", server.addr);
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["load", &http, "-c", "16", "-n", "10000"])
        .args(["-H", "Connection: close", "--max-error-ratio", "0"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(table.contains("Errors       0 "), "{table}");
    let metrics = server.metrics();
    assert!(sample(&metrics, "millrace_connections_accepted_total{core=\"0\"}") >= 10000);
}

/// SIGHUP reloads certificates; without an HTTPS listener it is logged and
/// changes nothing (it used to end the process, as SIGHUP's default does).
#[test]
fn sighup_without_tls_is_logged_and_serving_goes_on() {
    let mut server = Server::start(&[]);
    server.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !server.log().contains("SIGHUP: nothing to reload") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        thread::sleep(Duration::from_millis(20));
    }
    assert!(server.running());
    assert_eq!(server.get("/plaintext").status, 200);
}
