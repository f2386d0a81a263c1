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
use millrace::redis::cluster::Config;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::Queue;

fn seed_list(cluster: &RedisCluster) -> String {
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| s.to_string()).collect();
    seeds.join(",")
}

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
        &seed_list(&cluster),
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
    let mut client = Client::connect(Config::new(cluster.seeds())).unwrap();
    wait_until("the write landed", || {
        postgres
            .try_query("select count(*) from kv where key = 'cold'")
            .as_deref()
            == Some("1")
    });
    client
        .call(Command::del(&queue.cache_key(b"cold")))
        .unwrap();
    let stale = kv(&mut s, "PUT", "cold", &[("If-Match", "\"1-0\"")], b"x");
    assert_eq!(
        (stale.status, etag(&stale)),
        (412, vc.clone()),
        "{}",
        stale.text()
    );
    client
        .call(Command::del(&queue.cache_key(b"cold")))
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
    let server = Server::start(&["--redis-seeds", &seed_list(&cluster)]);
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
    let mut client = Client::connect(Config::new(cluster.seeds())).unwrap();
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
        &seed_list(&cluster),
        "--postgres-url",
        &postgres.url,
        "--miss-ttl-ms",
        "1500",
    ]);
    let mut s = server.connect();
    let queue = Queue::new(16);
    let mut client = Client::connect(Config::new(cluster.seeds())).unwrap();
    let cached = |client: &mut Client| client.call(queue.cached(b"ghost")).unwrap();
    assert_eq!(kv(&mut s, "GET", "ghost", &[], b"").status, 404);
    wait_until("the miss was cached", || {
        cached(&mut client) == OwnedReply::Bulk(b"n".to_vec())
    });
    let ttl = client
        .call(Command::new(
            &[&b"PTTL"[..], &queue.cache_key(b"ghost")],
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
        &seed_list(&cluster),
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
    let mut client = Client::connect(Config::new(cluster.seeds())).unwrap();
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
            .call(queue.cached(format!("k{i}").as_bytes()))
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
    let seeds = seed_list(&cluster);
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
        let seeds = seed_list(&cluster);
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
            &seed_list(&cluster),
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
        &seed_list(&cluster),
        "--postgres-url",
        &postgres.url,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("synchronous_commit = off"), "{stderr}");
}
