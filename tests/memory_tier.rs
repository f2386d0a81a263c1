//! The memory tier as a client and an operator see it: versions as ETags,
//! conditional requests, cached misses, the byte cap, and the start-up
//! checks that refuse a Redis or a queue layout that would lose writes.

mod common;

use std::io::Write;
use std::process::Command as Process;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::postgres::Postgres;
use common::{Response, Server, read_response};
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::Queue;

/// `method /v1/kv/key` with `headers` and `body`.
fn kv(
    stream: &mut std::net::TcpStream,
    method: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut request = format!("{method} /v1/kv/{key} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    if method == "HEAD" {
        common::read_head_response(stream)
    } else {
        read_response(stream)
    }
}

fn etag(response: &Response) -> String {
    response
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {response:?}"))
        .to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn versions_are_etags_and_conditional_requests_follow_rfc_9110() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let server = Server::start(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--postgres-url",
        &postgres.url,
    ]);
    let mut s = server.connect();

    // Create-only: the first wins, the second is told the current version.
    let created = kv(&mut s, "PUT", "doc", &[("If-None-Match", "*")], b"one");
    assert_eq!(created.status, 202, "{}", created.text());
    let v1 = etag(&created);
    assert_eq!(created.text(), format!("{{\"version\":{v1}}}"));
    let again = kv(&mut s, "PUT", "doc", &[("If-None-Match", "*")], b"two");
    assert_eq!(again.status, 412, "{}", again.text());
    assert_eq!(etag(&again), v1);

    // GET: the version as the ETag; If-None-Match naming it (or *) is 304
    // with no body, on GET and HEAD; another version is the full answer.
    let get = kv(&mut s, "GET", "doc", &[], b"");
    assert_eq!(
        (get.status, get.text().as_str(), etag(&get)),
        (200, "one", v1.clone())
    );
    for condition in [v1.as_str(), "*", &format!("\"1-0\", W/{v1}")] {
        let not_modified = kv(&mut s, "GET", "doc", &[("If-None-Match", condition)], b"");
        assert_eq!(not_modified.status, 304, "{condition}");
        assert!(not_modified.body.is_empty());
        assert_eq!(etag(&not_modified), v1);
    }
    let head = kv(&mut s, "HEAD", "doc", &[("If-None-Match", &v1)], b"");
    assert_eq!(head.status, 304);
    let other = kv(&mut s, "GET", "doc", &[("If-None-Match", "\"1-0\"")], b"");
    assert_eq!(other.status, 200);

    // If-Match: compare-and-set. A stale version, a weak tag and a tag that
    // is no version all fail; the current one wins.
    for stale in ["\"1-0\"", &format!("W/{v1}"), "\"abc\""] {
        let refused = kv(&mut s, "PUT", "doc", &[("If-Match", stale)], b"x");
        assert_eq!(refused.status, 412, "{stale}: {}", refused.text());
    }
    let swapped = kv(&mut s, "PUT", "doc", &[("If-Match", &v1)], b"two");
    assert_eq!(swapped.status, 202, "{}", swapped.text());
    let v2 = etag(&swapped);
    assert_ne!(v1, v2);
    let get = kv(&mut s, "GET", "doc", &[], b"");
    assert_eq!((get.text().as_str(), etag(&get)), ("two", v2.clone()));
    // A conditional DELETE, then If-Match fails on the deleted key.
    let deleted = kv(&mut s, "DELETE", "doc", &[("If-Match", &v2)], b"");
    assert_eq!(deleted.status, 202);
    assert_eq!(
        kv(&mut s, "PUT", "doc", &[("If-Match", "*")], b"x").status,
        412
    );
    assert_eq!(kv(&mut s, "GET", "doc", &[], b"").status, 404);
    // A malformed tag is a 400 that leaves nothing.
    let malformed = kv(&mut s, "PUT", "doc", &[("If-Match", "1-0")], b"x");
    assert_eq!(malformed.status, 400);

    // Many clients naming the same version at once, each on its own
    // connection: exactly one wins; the others get 412.
    let base = kv(&mut s, "PUT", "race", &[], b"start");
    let v = etag(&base);
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let mut stream = server.connect();
            let v = v.clone();
            thread::spawn(move || {
                kv(
                    &mut stream,
                    "PUT",
                    "race",
                    &[("If-Match", &v)],
                    format!("racer {i}").as_bytes(),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 202 || s == 412),
        "{statuses:?}"
    );

    // Not cached: read from the database, then compared. Once written back,
    // the cache is emptied behind the server's back.
    let stored = kv(&mut s, "PUT", "cold", &[], b"stored");
    let vc = etag(&stored);
    let queue = Queue::new(16);
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    wait_until("the write landed", || {
        postgres
            .try_query("select count(*) from kv where key = 'cold'")
            .as_deref()
            == Some("1")
    });
    client
        .call(Command::del(&queue.cache_key("kv", b"cold")))
        .unwrap();
    let stale = kv(&mut s, "PUT", "cold", &[("If-Match", "\"1-0\"")], b"x");
    assert_eq!(
        (stale.status, etag(&stale)),
        (412, vc.clone()),
        "{}",
        stale.text()
    );
    client
        .call(Command::del(&queue.cache_key("kv", b"cold")))
        .unwrap();
    let fresh = kv(&mut s, "PUT", "cold", &[("If-Match", &vc)], b"swapped");
    assert_eq!(fresh.status, 202, "{}", fresh.text());
    assert_eq!(kv(&mut s, "GET", "cold", &[], b"").text(), "swapped");
    // A key never written: create-only holds, read from the database.
    let new = kv(&mut s, "PUT", "brand-new", &[("If-None-Match", "*")], b"n");
    assert_eq!(new.status, 202, "{}", new.text());
}

#[test]
fn without_read_through_a_conditional_write_on_an_uncached_key_is_refused() {
    let cluster = RedisCluster::start(3, 0);
    let server = Server::start(&["--redis-seeds", &cluster.seed_list()]);
    let mut s = server.connect();
    let refused = kv(&mut s, "PUT", "k", &[("If-None-Match", "*")], b"v");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("postgres_url"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Nothing was queued.
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let queue = Queue::new(16);
    let stream = queue.stream(queue.partition_of(b"k"));
    let length = client.call(Command::new(&[&b"XLEN"[..], stream], Some(1)));
    assert_eq!(length.unwrap(), OwnedReply::Integer(0));
}

#[test]
fn a_miss_is_cached_briefly_and_a_write_replaces_it_at_once() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let server = Server::start(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--postgres-url",
        &postgres.url,
        "--miss-ttl-ms",
        "1500",
    ]);
    let mut s = server.connect();
    let queue = Queue::new(16);
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let cached = |client: &mut Client| client.call(queue.cached("kv", b"ghost")).unwrap();
    assert_eq!(kv(&mut s, "GET", "ghost", &[], b"").status, 404);
    wait_until("the miss was cached", || {
        cached(&mut client) == OwnedReply::Bulk(b"n".to_vec())
    });
    let ttl = client
        .call(Command::new(
            &[&b"PTTL"[..], &queue.cache_key("kv", b"ghost")],
            Some(1),
        ))
        .unwrap();
    assert!(matches!(ttl, OwnedReply::Integer(1..=1500)), "{ttl:?}");
    // A hundred more reads of the missing key: answered from the cache.
    for _ in 0..100 {
        assert_eq!(kv(&mut s, "GET", "ghost", &[], b"").status, 404);
    }
    // A write replaces the negative entry at once.
    assert_eq!(kv(&mut s, "PUT", "ghost", &[], b"real").status, 202);
    assert_eq!(kv(&mut s, "GET", "ghost", &[], b"").text(), "real");
    // One lookup for the 101 reads (more only if the entry expired first).
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    let log = server.log();
    let misses: u64 = log
        .lines()
        .filter(|l| l.contains("read-through stopped"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("misses=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no read-through figures in:\n{log}"));
    assert!(
        misses <= 2,
        "{misses} misses reached the database core:\n{log}"
    );
}

#[test]
fn the_backlog_cap_in_bytes_sheds_with_503_and_leaves_nothing() {
    let cluster = RedisCluster::start(3, 0);
    // 16 partitions of 64 KiB each; no database core drains them.
    let server = Server::start(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--max-backlog-bytes",
        &(16 * 65_536).to_string(),
    ]);
    let mut s = server.connect();
    let value = vec![b'v'; 16_000];
    let (mut accepted, mut shed) = (0usize, 0usize);
    for i in 0..200 {
        let response = kv(&mut s, "PUT", &format!("k{i}"), &[], &value);
        match response.status {
            202 => accepted += 1,
            503 => {
                assert!(
                    response.text().contains("max_backlog_bytes"),
                    "{}",
                    response.text()
                );
                shed += 1;
            }
            other => panic!("{other}: {}", response.text()),
        }
    }
    assert!(accepted > 0 && shed > 0, "{accepted} accepted, {shed} shed");
    // At most one entry over the cap per partition: 5 of 16,000 bytes.
    assert!(accepted <= 16 * 5, "{accepted}");
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let queue = Queue::new(16);
    let (mut entries, mut cached) = (0, 0);
    for p in 0..16 {
        match client.call(Command::new(&[&b"XLEN"[..], queue.stream(p)], Some(1))) {
            Ok(OwnedReply::Integer(n)) => entries += n as usize,
            other => panic!("{other:?}"),
        }
    }
    for i in 0..200 {
        if client
            .call(queue.cached("kv", format!("k{i}").as_bytes()))
            .unwrap()
            != OwnedReply::Nil
        {
            cached += 1;
        }
    }
    assert_eq!(
        (entries, cached),
        (accepted, accepted),
        "a refused write left nothing"
    );
}

fn serve_output(args: &[&str]) -> std::process::Output {
    Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--admin-listen",
            "",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn a_different_partition_count_is_refused_saying_both_numbers() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let _first = Server::start(&["--redis-seeds", &seeds]);
    let output = serve_output(&["--redis-seeds", &seeds, "--writeback-partitions", "8"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("16 partitions") && stderr.contains("started with 8"),
        "{stderr}"
    );
    let postgres = Postgres::start();
    let core = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["writeback", "--partitions", "8"])
        .env("MILLRACE_REDIS_SEEDS", &seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .output()
        .unwrap();
    assert!(!core.status.success());
    let stderr = String::from_utf8_lossy(&core.stderr);
    assert!(
        stderr.contains("16 partitions") && stderr.contains("started with 8"),
        "{stderr}"
    );
}

#[test]
fn redis_that_would_lose_acknowledged_writes_is_refused_unless_accepted() {
    for (options, says) in [
        (&["--appendonly", "no"][..], "appendonly no"),
        (&["--maxmemory-policy", "allkeys-lru"][..], "allkeys-lru"),
    ] {
        let cluster = RedisCluster::start_configured(3, 0, None, 2000, options);
        let seeds = cluster.seed_list();
        let refused = serve_output(&["--redis-seeds", &seeds]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(says) && stderr.contains("accept_unsafe_durability"),
            "{stderr}"
        );
        // Accepted: it starts, and says so as an error.
        let server = Server::start(&[
            "--redis-seeds",
            &seeds,
            "--accept-unsafe-durability",
            "true",
        ]);
        let log = server.log();
        assert!(log.contains("ERROR") && log.contains(says), "{log}");
        // doctor says the same, and fails.
        let doctor = Process::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["doctor", "--redis-seeds", &seeds])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert!(!doctor.status.success(), "{report}");
        assert!(report.contains("FAIL") && report.contains(says), "{report}");
    }
    // The project's own settings pass, and doctor says what they survive.
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let doctor = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args([
            "doctor",
            "--redis-seeds",
            &cluster.seed_list(),
            "--postgres-url",
            &postgres.url,
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}");
    for phrase in [
        "appendfsync everysec",
        "volatile-lru",
        "synchronous_commit = on",
    ] {
        assert!(report.contains(phrase), "{phrase}:\n{report}");
    }
    // PostgreSQL that acknowledges commits before they are on disk is refused.
    postgres.query("alter database millrace set synchronous_commit = off");
    let refused = serve_output(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--postgres-url",
        &postgres.url,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("synchronous_commit = off"), "{stderr}");
}

/// The version in a 202's body.
fn version_of(response: &Response) -> millrace::writeback::queue::Version {
    assert_eq!(response.status, 202, "{}", response.text());
    let text = response.text();
    let id = text
        .strip_prefix("{\"version\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    millrace::writeback::queue::Version::parse(id.as_bytes()).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Move `key`'s partition stream's last id to `ms`-0, as if a master whose
/// clock ran `ms` had written it.
fn set_stream_id(client: &mut Client, key: &[u8], ms: i64) {
    let queue = Queue::new(16);
    let stream = queue.stream(queue.partition_of(key)).to_vec();
    let id = format!("{ms}-0");
    let reply = client
        .call(Command::new(
            &[&b"XSETID"[..], &stream, id.as_bytes()],
            Some(1),
        ))
        .unwrap();
    assert_eq!(reply, OwnedReply::Status(b"OK".to_vec()));
}

/// The master node that holds `key`'s partition.
fn master_of(cluster: &RedisCluster, key: &[u8]) -> u16 {
    let queue = Queue::new(16);
    let slot = millrace::redis::slot::Slot::of(queue.stream(queue.partition_of(key))).get();
    let table = cluster.nodes_table();
    table
        .iter()
        .find(|(_, _, flags, _, slots)| {
            flags.contains("master")
                && slots.split_whitespace().any(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    (low.parse::<u16>().unwrap()..=high.parse().unwrap()).contains(&slot)
                })
        })
        .map(|n| n.1)
        .expect("a master for the slot")
}

fn stored(postgres: &Postgres, key: &str) -> Option<String> {
    postgres.try_query(&format!(
        "select encode(value, 'escape') || ' ' || version_ms || '-' || version_seq from kv where key = '{key}'"
    ))
}

#[test]
fn versions_stay_ordered_when_the_masters_clock_is_behind_and_through_a_restart() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let server = Server::start(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--postgres-url",
        &postgres.url,
    ]);
    let mut s = server.connect();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let first = version_of(&kv(&mut s, "PUT", "clock", &[], b"v1"));
    // Versions handed out by a master whose clock was an hour ahead: this
    // one's clock is now an hour behind them.
    let ahead = now_ms() + 3_600_000;
    set_stream_id(&mut client, b"clock", ahead);
    let second = version_of(&kv(&mut s, "PUT", "clock", &[], b"v2"));
    assert!(
        second > first && second.ms >= ahead,
        "{second} after {first}, ahead {ahead}"
    );
    // The last id survives a restart (the append-only file), so the next
    // version is above it still.
    cluster.restart(master_of(&cluster, b"clock"));
    let mut server = server;
    assert!(server.running(), "{}", server.log());
    let mut s = server.connect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let third = loop {
        let response = kv(&mut s, "PUT", "clock", &[], b"v3");
        if response.status == 202 {
            break version_of(&response);
        }
        assert!(Instant::now() < deadline, "{}", response.text());
        thread::sleep(Duration::from_millis(100));
    };
    assert!(third > second, "{third} after {second}");
    let expected = format!("v3 {third}");
    wait_until("the newest write landed", || {
        stored(&postgres, "clock").as_deref() == Some(&expected)
    });
}

#[test]
fn versions_stay_ordered_through_a_failover() {
    let cluster = RedisCluster::start_with(3, 1, None, 1000);
    let postgres = Postgres::start();
    let server = Server::start(&[
        "--redis-seeds",
        &cluster.seed_list(),
        "--postgres-url",
        &postgres.url,
        "--ack-replicas",
        "1",
        "--ack-timeout-ms",
        "200",
        "--redis-command-timeout-ms",
        "500",
    ]);
    let mut s = server.connect();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    version_of(&kv(&mut s, "PUT", "failover", &[], b"first"));
    let ahead = now_ms() + 3_600_000;
    set_stream_id(&mut client, b"failover", ahead);
    let before = version_of(&kv(&mut s, "PUT", "failover", &[], b"before"));
    assert!(before.ms >= ahead);
    // The master dies; its replica (which confirmed the write) takes over
    // with the stream's last id.
    let master = master_of(&cluster, b"failover");
    let table = cluster.nodes_table();
    let id = &table.iter().find(|n| n.1 == master).unwrap().0;
    let replica = table
        .iter()
        .find(|n| &n.3 == id)
        .expect("the master's replica")
        .1;
    // SAFETY: kill(2) on a Redis node this test started.
    unsafe { libc::kill(cluster.pid(master), libc::SIGKILL) };
    // Once its replica is promoted, the old master comes back as the new
    // one's replica, so that ack_replicas = 1 can be met again.
    wait_until("the replica took over", || {
        cluster.cli(replica, &["role"]).starts_with("master")
    });
    cluster.restart(master);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let response = kv(&mut s, "PUT", "failover", &[], b"after");
        if response.status == 202 {
            break version_of(&response);
        }
        assert!(Instant::now() < deadline, "{}", response.text());
        thread::sleep(Duration::from_millis(200));
    };
    assert!(after > before, "{after} after {before}");
    let expected = format!("after {after}");
    wait_until("the write after the failover landed", || {
        stored(&postgres, "failover").as_deref() == Some(&expected)
    });
}

#[test]
fn a_lost_stream_starts_above_the_database_and_a_write_behind_it_is_reported() {
    // The documented unsafe setting: no append-only file.
    let cluster = RedisCluster::start_configured(3, 0, None, 2000, &["--appendonly", "no"]);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--accept-unsafe-durability",
        "true",
    ]);
    let log = std::env::temp_dir().join(format!("millrace-lost-stream-{}.log", std::process::id()));
    let core = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["writeback", "--accept-unsafe-durability"])
        .env("MILLRACE_REDIS_SEEDS", &seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let core_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut s = server.connect();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    version_of(&kv(&mut s, "PUT", "lost", &[], b"zero"));
    let ahead = now_ms() + 3_600_000;
    set_stream_id(&mut client, b"lost", ahead);
    let written = version_of(&kv(&mut s, "PUT", "lost", &[], b"first"));
    let expected = format!("first {written}");
    wait_until("the first write landed", || {
        stored(&postgres, "lost").as_deref() == Some(&expected)
    });

    // The master restarts empty. The database core finds the partition
    // lost, says so, and starts its new stream above what it wrote back.
    let master = master_of(&cluster, b"lost");
    cluster.restart(master);
    wait_until("the loss was reported", || core_log().contains("was lost"));
    let mut s = server.connect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = loop {
        let response = kv(&mut s, "PUT", "lost", &[], b"second");
        if response.status == 202 {
            break version_of(&response);
        }
        assert!(Instant::now() < deadline, "{}", response.text());
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        next > written,
        "{next} after {written}: the new stream starts above the database"
    );
    let expected = format!("second {next}");
    wait_until("the write after the loss landed", || {
        stored(&postgres, "lost").as_deref() == Some(&expected)
    });

    // The limit: a write taken after the loss and before the core's next
    // read of the partition gets the master's clock, behind the database.
    // The core is held still to make that window wide.
    // SAFETY: kill(2) on the database core this test started.
    unsafe { libc::kill(core.id() as i32, libc::SIGSTOP) };
    cluster.restart(master);
    let mut s = server.connect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let behind = loop {
        let response = kv(&mut s, "PUT", "lost", &[], b"third");
        if response.status == 202 {
            break version_of(&response);
        }
        assert!(Instant::now() < deadline, "{}", response.text());
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        behind < next,
        "the restarted master's clock is behind {next}: {behind}"
    );
    // SAFETY: as above.
    unsafe { libc::kill(core.id() as i32, libc::SIGCONT) };
    wait_until("the write behind the database was reported", || {
        core_log().contains("versioned behind one already written back")
    });
    // The merge keeps the newer version: the older write stays.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stored(&postgres, "lost").as_deref(),
        Some(expected.as_str())
    );
    common::stop_writeback(core);
    let _ = std::fs::remove_file(&log);
}
