//! What an operator sees: `/metrics` against a real Redis Cluster and
//! PostgreSQL, checked value by value and by `promtool check metrics`, and
//! `/readyz` following the dependencies it is asked to.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{ListenPort, RedisCluster};
use common::postgres::Postgres;
use common::{PATIENCE, Server, kv, read_response, sample};

/// One admin request; the status and the body.
fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    try_admin_get(admin, path).expect("connect to the admin listener")
}

/// One admin request, `None` if nothing listens yet.
fn try_admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let response = read_response(&mut stream);
    Some((response.status, response.text()))
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the scrape:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The sum of every sample of `name` whose labels contain each of `labels`.
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{'))
                .then_some(())
                .filter(|()| labels.iter().all(|label| rest.contains(label)))?;
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Scrape until `done` holds (the executors publish every 100 ms, the
/// database core's queue figures every 250 ms).
fn scrape_until(server: &Server, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.metrics();
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never came:\n{metrics}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_scrape_shows_routes_redis_writeback_and_read_through_and_passes_promtool() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--postgres-url",
        &postgres.url,
        "--miss-ttl-ms",
        "600000",
    ]);
    let mut stream = server.connect();
    for i in 0..20 {
        let response = kv(&mut stream, "PUT", &format!("key{i}"), b"value");
        assert_eq!(response.status, 202, "{}", response.text());
    }
    for i in 0..20 {
        assert_eq!(kv(&mut stream, "GET", &format!("key{i}"), b"").status, 200);
    }
    // Keys nobody wrote: each read goes through to PostgreSQL once, and its
    // "no such key" is cached; the second read is a negative hit.
    for round in 0..2 {
        for i in 0..5 {
            let response = kv(&mut stream, "GET", &format!("absent{i}"), b"");
            assert_eq!(response.status, 404, "round {round}: {}", response.text());
        }
    }
    server.get("/plaintext");

    let metrics = scrape_until(&server, |m| {
        sum(m, "millrace_writeback_rows_written_total", &[]) >= 20.0
            && sum(m, "millrace_writeback_backlog_entries", &[]) == 0.0
    });
    promtool_check_metrics(&metrics);
    assert_eq!(sample(&metrics, "millrace_ready"), 1);
    // No sslmode: the log says plainly that there is no TLS.
    assert!(
        server
            .log()
            .contains("transport=\"plain TCP, no TLS: millrace uses TLS only with sslmode=require"),
        "{}",
        server.log()
    );

    // Every route's latency, all cores together: one observation per response.
    for (route, count) in [("kv_put", 20.0), ("kv_get", 30.0), ("plaintext", 1.0)] {
        let label = format!("route=\"{route}\"");
        assert_eq!(
            sum(
                &metrics,
                "millrace_http_route_duration_seconds_count",
                &[&label]
            ),
            count,
            "{route}\n{metrics}"
        );
        let responses = sum(&metrics, "millrace_http_requests_total", &[&label]);
        assert_eq!(responses, count, "{route}");
    }
    // A deferred answer waited for Redis: its time is above 0; /plaintext
    // was answered at once and sits in the first bucket.
    assert!(
        sum(
            &metrics,
            "millrace_http_route_duration_seconds_sum",
            &["route=\"kv_get\""]
        ) > 0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "millrace_http_route_duration_seconds_bucket{route=\"plaintext\",le=\"0.00005\"}"
        ),
        1
    );

    // The Redis client, per master: three nodes, each connected, each
    // answering; each reply timed once.
    let nodes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("millrace_redis_connects_total{"))
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for line in &nodes {
        assert!(
            line.ends_with(" 1"),
            "one connection per node and core: {line}"
        );
    }
    let replies = sum(&metrics, "millrace_redis_replies_total", &[]);
    assert!(
        replies >= 50.0,
        "20 writes, 30 reads, 5 fills at least: {replies}"
    );
    assert_eq!(
        sum(
            &metrics,
            "millrace_redis_command_duration_seconds_count",
            &[]
        ),
        replies
    );
    assert_eq!(sum(&metrics, "millrace_redis_failures_total", &[]), 0.0);
    assert_eq!(sum(&metrics, "millrace_redis_in_flight", &[]), 0.0);

    // The write-back: 20 rows in batches whose sizes add up to them.
    assert_eq!(
        sum(&metrics, "millrace_writeback_rows_written_total", &[]),
        20.0
    );
    assert_eq!(
        sum(&metrics, "millrace_writeback_batch_rows_sum", &[]),
        20.0
    );
    let batches = sum(&metrics, "millrace_writeback_batch_rows_count", &[]);
    assert!(batches >= 1.0);
    assert_eq!(
        sum(
            &metrics,
            "millrace_writeback_commit_duration_seconds_count",
            &[]
        ),
        batches
    );
    assert!(
        sum(
            &metrics,
            "millrace_writeback_last_commit_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("millrace_writeback_backlog_entries{"))
            .count(),
        16,
        "one per partition"
    );
    assert_eq!(
        sum(
            &metrics,
            "millrace_writeback_oldest_pending_age_seconds",
            &[]
        ),
        0.0
    );

    // Read-through: 20 hits, 5 misses looked up once each, 5 negative hits.
    assert_eq!(
        sum(&metrics, "millrace_cache_reads_total", &["result=\"hit\""]),
        20.0
    );
    assert_eq!(
        sum(
            &metrics,
            "millrace_cache_reads_total",
            &["result=\"negative_hit\""]
        ),
        5.0
    );
    assert_eq!(
        sum(&metrics, "millrace_readthrough_lookups_total", &[]),
        5.0
    );
    assert_eq!(
        sum(&metrics, "millrace_readthrough_lookups_waiting", &[]),
        0.0
    );
    assert_eq!(
        sum(&metrics, "millrace_readthrough_query_keys_total", &[]),
        5.0
    );
    assert!(sum(&metrics, "millrace_readthrough_queries_total", &[]) >= 1.0);

    // The dashboard and the alerts graph what a real scrape has.
    dashboards_and_alerts_name_only_real_metrics(&metrics);

    // Nothing was shed, and every cause is there to graph.
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("millrace_shed_total{") && l.ends_with(" 0"))
            .count(),
        6,
        "{metrics}"
    );
}

#[test]
fn the_backlog_cap_and_the_redis_in_flight_cap_are_counted_by_cause() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    // One entry per partition at most; nothing drains.
    let server = Server::start(&["--redis-seeds", &seeds, "--max-backlog", "16"]);
    let mut stream = server.connect();
    let mut shed = 0;
    for i in 0..60 {
        match kv(&mut stream, "PUT", &format!("k{i}"), b"v").status {
            202 => {}
            503 => shed += 1,
            other => panic!("{other}"),
        }
    }
    assert!(shed > 0);
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_shed_total{core=\"0\",cause=\"max_backlog\"}"
        ),
        shed
    );
    assert_eq!(
        sample(
            &metrics,
            "millrace_shed_total{core=\"0\",cause=\"max_redis_in_flight\"}"
        ),
        0
    );
    // The script's refusal is a reply the caller got, from some master.
    assert_eq!(
        sum(&metrics, "millrace_redis_error_replies_total", &[]),
        shed as f64
    );
}

/// Poll `path` on the admin listener until it answers `status`.
fn wait_for_status(admin: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = try_admin_get(admin, path).unwrap_or((0, "not listening".into()));
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {got} ({body}), not {status}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_follows_redis_only_where_asked() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let checked = Server::start(&["--redis-seeds", &seeds, "--readyz-checks", "redis"]);
    let unchecked = Server::start(&["--redis-seeds", &seeds]);
    let (checked_admin, unchecked_admin) = (checked.admin.unwrap(), unchecked.admin.unwrap());
    wait_for_status(checked_admin, "/readyz", 200);
    // A master goes away: the instance that asked for it says so, on both
    // listeners; the other keeps taking traffic.
    let port = cluster.seeds()[0].port();
    // SAFETY: kill(2) on a Redis node this test started.
    unsafe { libc::kill(cluster.pid(port), libc::SIGKILL) };
    let stopped = Instant::now();
    let why = wait_for_status(checked_admin, "/readyz", 503);
    assert!(why.contains("Redis"), "{why}");
    let public = checked.get("/readyz");
    assert_eq!(public.status, 503, "{}", public.text());
    assert_eq!(admin_get(unchecked_admin, "/readyz").0, 200);
    assert!(stopped.elapsed() < Duration::from_secs(10));
    cluster.restart(port);
    wait_for_status(checked_admin, "/readyz", 200);
    assert_eq!(checked.get("/readyz").status, 200);
}

#[test]
fn readyz_follows_the_drain_and_a_lone_database_core_serves_its_own_metrics() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    // The database core alone, with its own admin listener.
    let admin = ListenPort::claim();
    let core = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["writeback", "--admin-listen", &admin.addr.to_string()])
        .args([
            "--readyz-checks",
            "writeback",
            "--readyz-drain-stall-ms",
            "1500",
        ])
        .env("MILLRACE_REDIS_SEEDS", &seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server::start(&["--redis-seeds", &seeds]);
    wait_for_status(admin.addr, "/readyz", 200);
    let mut stream = server.connect();
    assert_eq!(kv(&mut stream, "PUT", "a", b"1").status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, metrics) = admin_get(admin.addr, "/metrics");
        assert_eq!(status, 200);
        if sum(&metrics, "millrace_writeback_rows_written_total", &[]) == 1.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        thread::sleep(Duration::from_millis(100));
    };
    promtool_check_metrics(&metrics);
    assert!(!metrics.contains("millrace_http_"), "no executors here");

    // PostgreSQL stops: writes still queue, nothing drains, and past the
    // stall time the core says it is not ready, and why.
    postgres.pause();
    assert_eq!(kv(&mut stream, "PUT", "b", b"2").status, 202);
    let why = wait_for_status(admin.addr, "/readyz", 503);
    assert!(why.contains("has not drained"), "{why}");
    let (_, metrics) = admin_get(admin.addr, "/metrics");
    assert!(
        sum(
            &metrics,
            "millrace_writeback_oldest_pending_age_seconds",
            &[]
        ) > 1.0
    );
    assert_eq!(
        sum(&metrics, "millrace_writeback_backlog_entries", &[]),
        1.0
    );
    // It comes back, the entry lands, and readiness with it.
    postgres.resume();
    wait_for_status(admin.addr, "/readyz", 200);
    assert_eq!(
        postgres.query("select encode(value, 'escape') from kv where key = 'b'"),
        "2"
    );
    common::stop_writeback(core);
}

/// Every `millrace_...` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("millrace_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

fn monitoring_file(name: &str) -> String {
    let path = format!("{}/docs/monitoring/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each metric the dashboard and the alert rules use is one a scrape has
/// (a histogram's `_bucket`, `_sum` and `_count` by its family): a renamed
/// metric cannot leave a panel or an alert silently empty.
fn dashboards_and_alerts_name_only_real_metrics(metrics: &str) {
    let families: Vec<(&str, &str)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let known = |name: &str| {
        families.iter().any(|&(family, kind)| {
            family == name
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family)))
        })
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring_file("grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    assert!(used.len() >= 20, "{used:?}");
    for name in used
        .iter()
        .chain(&metric_names(&monitoring_file("alerts.yml")))
    {
        assert!(
            known(name),
            "{name} is graphed or alerted on, but no scrape has it"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_on_the_histories_they_should() {
    let dir = format!("{}/docs/monitoring", env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts-test.yml"][..],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// HAProxy in front of `upstream`, sending the PROXY header `send_proxy`
/// (`send-proxy` or `send-proxy-v2`); listens on the returned address.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Haproxy {
    fn start(upstream: SocketAddr, send_proxy: &str) -> Haproxy {
        let port = ListenPort::claim();
        let dir = std::env::temp_dir().join(format!(
            "millrace-haproxy-{}-{}",
            std::process::id(),
            port.addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\nfrontend front\n  bind {}\n  \
                 default_backend millrace\nbackend millrace\n  server m {upstream} {send_proxy}\n",
                port.addr
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run haproxy (Debian's package; scripts/test.sh installs it)");
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(port.addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            child,
            addr: port.addr,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` through `to` from a socket bound to `from` (port chosen by
/// the kernel); the response and the local address used.
fn get_from(
    from: [u8; 4],
    to: SocketAddr,
    path: &str,
    extra: &str,
) -> (common::Response, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let local = stream.local_addr().unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").unwrap();
    (read_response(&mut stream), local)
}

/// The access log's lines so far.
fn access_lines(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains(" request ") && l.contains("route="))
        .map(str::to_string)
        .collect()
}

#[test]
fn behind_haproxy_the_client_address_reaches_the_access_log() {
    let server = Server::start(&["--proxy-protocol", "true", "--access-log-sample", "1"]);
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let haproxy = Haproxy::start(server.addr, send_proxy);
        // The client comes from 127.0.0.2; HAProxy connects from 127.0.0.1.
        let (response, client) = get_from([127, 0, 0, 2], haproxy.addr, "/plaintext", "");
        assert_eq!(response.status, 200, "{send_proxy}: {}", response.text());
        let deadline = Instant::now() + PATIENCE;
        let line = loop {
            let lines = access_lines(&server);
            if let Some(line) = lines
                .iter()
                .find(|l| l.contains(&format!("client={client}")))
            {
                break line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{send_proxy}: no line for {client}:\n{}",
                server.log()
            );
            thread::sleep(Duration::from_millis(50));
        };
        for field in [
            "method=\"GET\"",
            "route=\"plaintext\"",
            "status=200",
            "bytes_out=13",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    // Straight to the server, without a header: refused, nothing answered.
    let mut direct = server.connect();
    write!(direct, "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(
        common::closed_by_server(&mut direct),
        "answered without a PROXY header"
    );
    // A header cut short, or garbage in its place: closed too.
    for bad in [&b"PROXY TCP4 1.2.3.4\r\n"[..], b"\r\n\r\n\0\r\nQUIX\n"] {
        let mut stream = server.connect();
        stream.write_all(bad).unwrap();
        assert!(common::closed_by_server(&mut stream));
    }
    // A v1 header written by hand, in two pieces, with the request behind it.
    let mut stream = server.connect();
    stream
        .write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 4711")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    stream
        .write_all(b" 80\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 200);
    thread::sleep(Duration::from_millis(200));
    assert!(
        access_lines(&server)
            .iter()
            .any(|l| l.contains("client=192.0.2.9:4711")),
        "{}",
        server.log()
    );
}

#[test]
fn the_access_log_samples_one_in_n_and_never_writes_header_values_or_bodies() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let server = Server::start(&["--redis-seeds", &seeds, "--access-log-sample", "4"]);
    let mut stream = server.connect();
    for i in 0..20 {
        write!(
            stream,
            "PUT /v1/kv/secret-key-{i} HTTP/1.1\r\nHost: t\r\nX-Token: hunter2\r\nContent-Length: 11\r\n\r\nbody-secret"
        )
        .unwrap();
        assert_eq!(read_response(&mut stream).status, 202);
    }
    thread::sleep(Duration::from_millis(200));
    let lines = access_lines(&server);
    assert_eq!(lines.len(), 5, "one in 4 of 20:\n{lines:#?}");
    for line in &lines {
        for field in [
            "method=\"PUT\"",
            "route=\"kv_put\"",
            "status=202",
            "bytes_in=11",
            "client=-",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        // A deferred answer's latency is the store's round trip.
        assert!(!line.contains("latency_us=0 "), "{line}");
    }
    let log = server.log();
    for secret in ["hunter2", "body-secret", "secret-key"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // A request the HTTP layer refuses is logged too, without a method.
    let every = Server::start(&["--access-log-sample", "1"]);
    let mut stream = every.connect();
    stream
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nBad Field: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 400);
    thread::sleep(Duration::from_millis(200));
    let lines = access_lines(&every);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=\"-\"") && l.contains("status=400")),
        "{lines:#?}"
    );
    // Off, nothing is written.
    let quiet = Server::start(&[]);
    for _ in 0..10 {
        quiet.get("/plaintext");
    }
    assert!(access_lines(&quiet).is_empty());
}
