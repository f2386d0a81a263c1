//! The write routes end to end: millrace serve with a real Redis Cluster,
//! the database core and a real PostgreSQL.

mod common;

use std::io::Write;
use std::process::{Child, Command as Process, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::postgres::Postgres;
use common::{Server, kv, kv_request, read_response, stop_writeback};
use millrace::payload::schema;
use millrace::payload::{Event, encode_event_batch};
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::Queue;

fn event(n: u8) -> Event {
    Event {
        client_id: [n; 16],
        key: format!("user:{n}"),
        kind: 1,
        timestamp_us: 1_700_000_000_000_000 + i64::from(n),
        payload: vec![n; 4],
    }
}

fn post(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn writeback(cluster: &RedisCluster, postgres: &Postgres) -> Child {
    let seeds = cluster.seed_list();
    Process::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("writeback")
        .env("MILLRACE_REDIS_SEEDS", seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Entries in each of the 16 write-back streams.
fn queue_lengths(client: &mut Client) -> Vec<i64> {
    let queue = Queue::new(16);
    client
        .execute(
            (0..16)
                .map(|p| Command::new(&[&b"XLEN"[..], queue.stream(p)], Some(1)))
                .collect(),
        )
        .into_iter()
        .map(|reply| match reply.unwrap() {
            OwnedReply::Integer(n) => n,
            other => panic!("XLEN answered {other:?}"),
        })
        .collect()
}

#[test]
fn posted_events_are_accepted_queued_and_written() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    let server = Server::start(&["--redis-seeds", &seeds, "--max-batch-events", "3"]);
    let core = writeback(&cluster, &postgres);

    // FlatBuffers, twice pipelined on one connection: two 202s in order.
    let mut stream = server.connect();
    let first = post(
        "application/x-flatbuffers",
        &encode_event_batch(&[event(1), event(2)]),
    );
    let second = post(
        "application/x-flatbuffers",
        &encode_event_batch(&[event(3)]),
    );
    stream.write_all(&[first, second].concat()).unwrap();
    for count in [2, 1] {
        let response = read_response(&mut stream);
        assert_eq!(response.status, 202, "{}", response.text());
        let accepted = flatbuffers::root::<schema::Accepted>(&response.body).unwrap();
        assert_eq!(accepted.count(), count);
    }
    // JSON.
    let json = br#"{"events":[{"client_id":"04040404040404040404040404040404","key":"user:4","kind":1,"timestamp_us":1,"payload":"x"}]}"#;
    stream.write_all(&post("application/json", json)).unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 202);
    assert_eq!(response.text(), r#"{"count":1}"#);

    // Refused requests: clear 4xx, and the connection goes on.
    for (content_type, body, status, why) in [
        ("text/plain", b"hello".to_vec(), 415, "Content-Type"),
        (
            "application/x-flatbuffers",
            vec![0xff; 40],
            400,
            "not a valid EventBatch",
        ),
        (
            "application/x-flatbuffers",
            encode_event_batch(&[event(5), event(6), event(7), event(8)]),
            400,
            "1 to 3 events",
        ),
        (
            "application/json",
            b"{\"events\":[]}".to_vec(),
            400,
            "1 to 3 events",
        ),
    ] {
        stream.write_all(&post(content_type, &body)).unwrap();
        let response = read_response(&mut stream);
        assert_eq!(
            response.status,
            status,
            "{content_type}: {}",
            response.text()
        );
        assert!(response.text().contains(why), "{}", response.text());
    }

    // Every accepted event reaches PostgreSQL; nothing of the refused ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres.try_query("select count(*) from events").as_deref() != Some("4") {
        assert!(
            Instant::now() < deadline,
            "the accepted events did not land"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(postgres.query("select count(*) from events"), "4");
    assert_eq!(
        postgres
            .query("select string_agg(convert_from(key, 'UTF8'), ',' order by key) from events"),
        "user:1,user:2,user:3,user:4"
    );
    // The queue's figures: 4 events accepted and written, nothing waiting.
    // The figures are refreshed every 250 ms: wait for a refresh that
    // counts the writes (an earlier one may predate them).
    let stats = wait_for_stats(&server, |s| {
        s["accepted"] == 4 && s["backlog"] == 0 && s["written"] == 4
    });
    assert_eq!(stats["oldest_pending_age_ms"], 0, "{stats}");
    let metrics = server.metrics();
    assert!(
        metrics.contains("route=\"events\",status=\"202\"} 3"),
        "{metrics}"
    );
    stop_writeback(core);
}

#[test]
fn without_redis_writes_are_refused_with_503() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(&post(
            "application/x-flatbuffers",
            &encode_event_batch(&[event(1)]),
        ))
        .unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
}

#[test]
fn an_unreachable_cluster_is_a_start_up_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--redis-seeds", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot use the Redis Cluster"), "{stderr}");
}

#[test]
fn the_backlog_cap_sheds_with_503_and_leaves_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    // 16 entries over 16 partitions: one waiting post per partition. No
    // database core runs, so nothing drains.
    let server = Server::start(&["--redis-seeds", &seeds, "--max-backlog", "16"]);
    let mut stream = server.connect();
    let (mut accepted, mut shed) = (0, 0);
    for n in 0..60u8 {
        stream
            .write_all(&post(
                "application/x-flatbuffers",
                &encode_event_batch(&[event(n)]),
            ))
            .unwrap();
        let response = read_response(&mut stream);
        match response.status {
            202 => accepted += 1,
            503 => {
                assert_eq!(response.header("retry-after"), Some("1"));
                assert!(response.text().contains("backlog"), "{}", response.text());
                shed += 1;
            }
            other => panic!("{other}: {}", response.text()),
        }
    }
    assert!(accepted > 0 && shed > 0, "{accepted} accepted, {shed} shed");
    // What is queued is exactly what was accepted, at most one per partition.
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let lengths = queue_lengths(&mut client);
    assert!(lengths.iter().all(|&n| n <= 1), "{lengths:?}");
    assert_eq!(lengths.iter().sum::<i64>(), accepted);
}

/// Poll `GET /v1/stats` until `done` holds for its figures (the database
/// core refreshes them every 250 ms).
fn wait_for_stats(server: &Server, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = server.get("/v1/stats");
        assert_eq!(response.status, 200, "{}", response.text());
        let stats: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never got there: {stats}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// WAIT commands the masters have run, from INFO commandstats.
fn wait_calls(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes_table()
        .iter()
        .filter(|node| node.2.contains("master"))
        .map(|node| {
            cluster
                .cli(node.1, &["info", "commandstats"])
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        })
        .sum()
}

/// The TTL of `key`'s cache entry, in milliseconds (-1: none, -2: no entry).
fn pttl(client: &mut Client, key: &[u8]) -> i64 {
    let cache = Queue::new(16).cache_key("kv", key);
    match client
        .execute(vec![Command::new(&[&b"PTTL"[..], &cache], Some(1))])
        .remove(0)
        .unwrap()
    {
        OwnedReply::Integer(ms) => ms,
        other => panic!("PTTL: {other:?}"),
    }
}

#[test]
fn kv_writes_are_cached_queued_and_written_last_write_wins() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--max-key-bytes",
        "8",
        "--max-value-bytes",
        "16",
    ]);
    let mut stream = server.connect();

    let put = kv(&mut stream, "PUT", "a", b"1");
    assert_eq!(put.status, 202, "{}", put.text());
    assert!(put.text().starts_with(r#"{"version":""#), "{}", put.text());
    assert_eq!(kv(&mut stream, "GET", "a", b"").body, b"1");
    assert_eq!(kv(&mut stream, "PUT", "a", b"2").status, 202);
    let get = kv(&mut stream, "GET", "a", b"");
    assert_eq!((get.status, get.body.as_slice()), (200, &b"2"[..]));
    assert_eq!(get.header("content-type"), Some("application/octet-stream"));
    // Any bytes, any key bytes (percent-encoded).
    assert_eq!(
        kv(&mut stream, "PUT", "x%2Fy%00", b"\0\xff\r\n").status,
        202
    );
    assert_eq!(kv(&mut stream, "GET", "x%2Fy%00", b"").body, b"\0\xff\r\n");
    // Pipelined: a PUT, the GET behind it sees it, a DELETE, the GET behind that does not.
    stream
        .write_all(
            &[
                kv_request("PUT", "b", b"3"),
                kv_request("GET", "b", b""),
                kv_request("DELETE", "b", b""),
                kv_request("GET", "b", b""),
            ]
            .concat(),
        )
        .unwrap();
    let statuses: Vec<u16> = (0..4).map(|_| read_response(&mut stream).status).collect();
    assert_eq!(statuses, [202, 200, 202, 404]);
    // Refused: nothing queued for any of them.
    for (method, key, value, status) in [
        ("GET", "a%2", &b""[..], 400),
        ("PUT", "a/b", b"1", 400),
        ("PUT", "123456789", b"1", 414),
        ("PUT", "c", &[b'v'; 17], 413),
        ("POST", "c", b"1", 405),
    ] {
        let response = kv(&mut stream, method, key, value);
        assert_eq!(
            response.status,
            status,
            "{method} {key}: {}",
            response.text()
        );
    }
    let head = {
        stream.write_all(&kv_request("HEAD", "a", b"")).unwrap();
        common::read_head_response(&mut stream)
    };
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1"));

    // Exactly the accepted writes were queued: 4 PUTs and 1 DELETE; none
    // is written back yet, so their cache entries cannot leave Redis.
    let queue = Queue::new(16);
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    assert_eq!(queue_lengths(&mut client).iter().sum::<i64>(), 5);
    assert_eq!(pttl(&mut client, b"a"), -1, "no TTL before the write-back");

    // The database core writes the newest value of each key, and the
    // delete as a row without a value; then the tombstone leaves the cache.
    let core = writeback(&cluster, &postgres);
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = "select string_agg(encode(key, 'escape') || '=' || coalesce(case when key = 'x/y\\000'::bytea then encode(value, 'hex') else encode(value, 'escape') end, ''), ',' order by key) from kv";
    while postgres.try_query("select count(*) from kv").as_deref() != Some("3") {
        assert!(
            Instant::now() < deadline,
            "the accepted writes did not land"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(postgres.query(listing), "a=2,b=,x/y\\000=00ff0d0a");
    // Written back, the value's cache entry may leave Redis: it has a TTL
    // (cache_ttl_ms); a write not yet written back has none.
    while pttl(&mut client, b"a") < 0 {
        assert!(
            Instant::now() < deadline,
            "the written value never got a TTL"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(pttl(&mut client, b"a") <= 3_600_000);
    let tombstone = queue.cache_key("kv", b"b");
    while client
        .execute(vec![Command::get(&tombstone)])
        .remove(0)
        .unwrap()
        != OwnedReply::Nil
    {
        assert!(
            Instant::now() < deadline,
            "the tombstone stayed in the cache"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(kv(&mut stream, "GET", "b", b"").status, 404);
    let metrics = server.metrics();
    assert!(
        metrics.contains("route=\"kv_put\",status=\"202\"} 4"),
        "{metrics}"
    );
    stop_writeback(core);
}

#[test]
fn a_miss_reads_through_the_database_core_and_fills_the_cache() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let seeds = cluster.seed_list();
    let server = Server::start(&["--redis-seeds", &seeds, "--postgres-url", &postgres.url]);
    let mut stream = server.connect();
    // Written through this server's own database core.
    assert_eq!(kv(&mut stream, "PUT", "kept", b"v1").status, 202);
    assert_eq!(kv(&mut stream, "PUT", "gone", b"v2").status, 202);
    assert_eq!(kv(&mut stream, "DELETE", "gone", b"").status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres.try_query("select count(*) from kv").as_deref() != Some("2") {
        assert!(Instant::now() < deadline, "the writes did not land");
        thread::sleep(Duration::from_millis(100));
    }
    // Rows only the database has: the cache is emptied behind the server's back.
    postgres.query(
        "insert into kv (key, value, version_ms, version_seq) \
         select ('cold:' || i)::bytea, ('value ' || i)::bytea, 1, 0 from generate_series(1, 50) i",
    );
    let queue = Queue::new(16);
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    client.execute(vec![Command::del(&queue.cache_key("kv", b"kept"))]);
    let tombstone = queue.cache_key("kv", b"gone");
    while client
        .execute(vec![Command::get(&tombstone)])
        .remove(0)
        .unwrap()
        != OwnedReply::Nil
    {
        assert!(
            Instant::now() < deadline,
            "the tombstone stayed in the cache"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // A refresh that counts the three writes (an earlier one may predate them).
    let stats = wait_for_stats(&server, |s| {
        s["accepted"] == 3 && s["backlog"] == 0 && s["written"] == 3
    });
    assert!(
        stats["figures_age_ms"]
            .as_i64()
            .is_some_and(|age| age < 5000),
        "{stats}"
    );

    let get = kv(&mut stream, "GET", "kept", b"");
    assert_eq!(
        (get.status, get.body.as_slice()),
        (200, &b"v1"[..]),
        "{}",
        get.text()
    );
    // A deleted row and a key never written: 404 from the database.
    assert_eq!(kv(&mut stream, "GET", "gone", b"").status, 404);
    assert_eq!(kv(&mut stream, "GET", "never", b"").status, 404);
    // Many misses at once, pipelined over several connections: two ask for
    // the same keys in the same order, two for others.
    let key_of = |connection: usize, i: usize| (i + [0, 0, 7, 13][connection]) % 25 + 1;
    let mut streams: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for (c, stream) in streams.iter_mut().enumerate() {
        let requests: Vec<u8> = (1..=50)
            .flat_map(|i| kv_request("GET", &format!("cold:{}", key_of(c, i)), b""))
            .collect();
        stream.write_all(&requests).unwrap();
    }
    for (c, stream) in streams.iter_mut().enumerate() {
        for i in 1..=50 {
            let response = read_response(stream);
            let expected = format!("value {}", key_of(c, i));
            assert_eq!(response.status, 200, "{}", response.text());
            assert_eq!(response.text(), expected);
        }
    }
    // What the database said went back into the cache: found values and,
    // for a short while, the misses.
    let cached = |key: &[u8], client: &mut Client| {
        client
            .execute(vec![Command::get(&queue.cache_key("kv", key))])
            .remove(0)
            .unwrap()
    };
    // Each with the version the database holds; misses (no row, a deleted
    // row) as negative entries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cached(b"cold:7", &mut client) != OwnedReply::Bulk(b"v1-0 value 7".to_vec()) {
        assert!(Instant::now() < deadline, "the found value was not cached");
        thread::sleep(Duration::from_millis(20));
    }
    let kept = cached(b"kept", &mut client);
    let kept = kept.bytes().unwrap_or_default();
    assert!(
        kept.starts_with(b"v") && kept.ends_with(b" v1"),
        "{}",
        String::from_utf8_lossy(kept)
    );
    let version = String::from_utf8_lossy(&kept[1..kept.len() - 3]);
    assert_eq!(get.header("etag"), Some(format!("\"{version}\"").as_str()));
    assert_eq!(
        cached(b"never", &mut client),
        OwnedReply::Bulk(b"n".to_vec())
    );
    let gone = cached(b"gone", &mut client);
    assert!(
        gone.bytes().is_some_and(|e| e.starts_with(b"t")),
        "a deleted row is cached as a tombstone: {gone:?}"
    );

    // Up to 203 misses (fewer as fills land) for 28 distinct keys:
    // concurrent misses for one key shared a lookup, and queries took
    // whatever keys missed while the one before ran.
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    let log = server.log();
    let figure = |name: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("read-through stopped"))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(name)))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{log}"))
    };
    let (misses, keys, queries) = (figure("misses="), figure("keys="), figure("queries="));
    eprintln!("read-through: {misses} misses, {keys} keys looked up, {queries} queries");
    assert!((28..=203).contains(&misses), "{log}");
    assert!(keys < misses && queries <= keys, "{log}");
}

#[test]
fn ack_replicas_waits_for_replicas_and_says_when_they_fall_short() {
    let cluster = RedisCluster::start(3, 1);
    let seeds = cluster.seed_list();
    // One replica per master: WAIT 1 is met.
    let server = Server::start(&["--redis-seeds", &seeds, "--ack-replicas", "1"]);
    let mut stream = server.connect();
    let put = kv(&mut stream, "PUT", "replicated", b"1");
    assert_eq!(put.status, 202, "{}", put.text());
    assert!(put.text().starts_with(r#"{"version":""#), "{}", put.text());
    stream
        .write_all(&post(
            "application/x-flatbuffers",
            &encode_event_batch(&[event(1)]),
        ))
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 202);
    assert_eq!(kv(&mut stream, "GET", "replicated", b"").body, b"1");
    // A pipelined burst: one WAIT per partition per turn confirms many
    // writes, not one WAIT each.
    let waits_before = wait_calls(&cluster);
    let burst: Vec<u8> = (0..64)
        .flat_map(|i| kv_request("PUT", &format!("burst{i}"), b"v"))
        .collect();
    stream.write_all(&burst).unwrap();
    for i in 0..64 {
        let put = read_response(&mut stream);
        assert_eq!(put.status, 202, "burst{i}: {}", put.text());
    }
    let waits = wait_calls(&cluster) - waits_before;
    println!("{waits} WAITs confirmed 64 pipelined writes");
    assert!(waits < 64, "{waits} WAITs for 64 writes");
    drop(server);

    // WAIT 2 cannot be met: 503 that says the write is queued but unconfirmed.
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--ack-replicas",
        "2",
        "--ack-timeout-ms",
        "50",
    ]);
    let mut stream = server.connect();
    // A read first: the executor has read the cluster layout after it.
    assert_eq!(kv(&mut stream, "GET", "unconfirmed", b"").status, 404);
    let put = kv(&mut stream, "PUT", "unconfirmed", b"2");
    assert_eq!(put.status, 503, "{}", put.text());
    assert_eq!(put.header("retry-after"), Some("1"));
    // The layout shows one replica: the write is refused before anything
    // is written, and the connection goes on.
    assert!(
        put.text().contains("could not be queued")
            && put.text().contains("master has 1 online replicas"),
        "{}",
        put.text()
    );
    assert_eq!(kv(&mut stream, "GET", "unconfirmed", b"").status, 404);
    drop(server);

    // Replicas that stop answering (SIGSTOP) while the cluster still counts
    // them: WAIT 1 runs out its time.
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--ack-replicas",
        "1",
        "--ack-timeout-ms",
        "50",
    ]);
    let mut stream = server.connect();
    let replicas: Vec<i32> = cluster.nodes[3..]
        .iter()
        .map(|node| cluster.pid(node.port()))
        .collect();
    for &pid in &replicas {
        // SAFETY: kill(2) on a redis-server this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let put = kv(&mut stream, "PUT", "stalled", b"3");
    for &pid in &replicas {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert_eq!(put.status, 503, "{}", put.text());
    assert!(
        put.text().contains("0 of 1 replicas confirmed"),
        "{}",
        put.text()
    );
}

#[test]
fn bearer_tokens_guard_the_v1_routes_and_secrets_stay_out_of_sight() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let token = "t0k3n-0123456789abcdef";
    let dir = std::env::temp_dir().join(format!("millrace-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, format!("# one per line\n{token}\n")).unwrap();
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--auth-tokens-file",
        file.to_str().unwrap(),
    ]);
    let mut stream = server.connect();
    let put = |stream: &mut std::net::TcpStream, authorization: Option<&str>| {
        let header = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let request =
            format!("PUT /v1/kv/guarded HTTP/1.1\r\nHost: t\r\n{header}Content-Length: 1\r\n\r\nx");
        stream.write_all(request.as_bytes()).unwrap();
        read_response(stream)
    };
    for bad in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some(&format!("Basic {token}")[..]),
    ] {
        let response = put(&mut stream, bad);
        assert_eq!(response.status, 401, "{bad:?}: {}", response.text());
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(server.get("/v1/stats").status, 401);
    // Nothing of the refused writes reached Redis.
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let cached = Command::get(&Queue::new(16).cache_key("kv", b"guarded"));
    assert_eq!(
        client.execute(vec![cached]).remove(0).unwrap(),
        OwnedReply::Nil
    );
    let ok = put(&mut stream, Some(&format!("Bearer {token}")));
    assert_eq!(ok.status, 202, "{}", ok.text());
    // The operational routes stay open.
    assert_eq!(server.get("/livez").status, 200);
    assert_eq!(server.get("/plaintext").status, 200);
    assert!(!server.log().contains(token), "the token is never logged");

    // --print-config shows no password, in any of the URL's forms.
    for (url, shown) in [
        (
            "postgres://millrace:s3cret@127.0.0.1:5440/db",
            "postgres://millrace:***@127.0.0.1:5440/db",
        ),
        (
            "postgres://millrace@127.0.0.1:5440/db?password=s3cret",
            "postgres://millrace@127.0.0.1:5440/db?password=***",
        ),
        (
            "host=127.0.0.1 port=5440 user=millrace password=s3cret dbname=db",
            "host=127.0.0.1 port=5440 user=millrace password=*** dbname=db",
        ),
    ] {
        let printed = Process::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["serve", "--print-config", "--redis-seeds", "127.0.0.1:7000"])
            .env("MILLRACE_POSTGRES_URL", url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&printed.stdout);
        assert!(text.contains(shown), "{url}: {text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_requests_get_their_4xx_and_queue_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let server = Server::start(&["--redis-seeds", &seeds]);
    let batch = encode_event_batch(&[event(1)]);
    let events = |extra: &str, body: &[u8]| {
        let mut request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-flatbuffers\r\n{extra}\r\n"
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let many_headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            events(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    batch.len()
                ),
                &batch,
            ),
            400,
        ),
        (
            "two different Content-Lengths",
            events(
                &format!("Content-Length: {}\r\nContent-Length: 3\r\n", batch.len()),
                &batch,
            ),
            400,
        ),
        (
            "a bare LF",
            b"PUT /v1/kv/a HTTP/1.1\nHost: t\nContent-Length: 1\n\nx".to_vec(),
            400,
        ),
        (
            "obs-fold",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\nContent-Length: 1\r\n\r\nx"
                .to_vec(),
            400,
        ),
        (
            "1,000 header fields",
            events(
                &format!("{many_headers}Content-Length: {}\r\n", batch.len()),
                &batch,
            ),
            431,
        ),
        (
            "a 1 MiB header field",
            events(
                &format!("{huge_header}Content-Length: {}\r\n", batch.len()),
                &batch,
            ),
            431,
        ),
        (
            "a chunk size of 2^72",
            events("Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nx"),
            413,
        ),
        (
            "invalid UTF-8 in the path",
            b"PUT /v1/kv/\xff\xfe HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            400,
        ),
        (
            "an empty key",
            b"PUT /v1/kv/ HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            404,
        ),
        (
            "a 1 MiB key",
            format!(
                "PUT /v1/kv/{} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
                "k".repeat(1 << 20)
            )
            .into_bytes(),
            414,
        ),
        (
            "a raw NUL in the key",
            b"PUT /v1/kv/a\0b HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            400,
        ),
    ];
    for (what, request, status) in &cases {
        let mut stream = server.connect();
        // A large request may be refused before all of it is written.
        let _ = stream.write_all(request);
        let response = read_response(&mut stream);
        assert_eq!(response.status, *status, "{what}: {}", response.text());
    }
    // Nothing of any of them was queued or cached, and the server still serves.
    let queue = Queue::new(16);
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    assert_eq!(
        queue_lengths(&mut client).iter().sum::<i64>(),
        0,
        "a refused request was queued"
    );
    assert_eq!(
        client
            .execute(vec![Command::get(&queue.cache_key("kv", b"a"))])
            .remove(0)
            .unwrap(),
        OwnedReply::Nil
    );
    assert_eq!(server.get("/livez").status, 200);
    let mut stream = server.connect();
    assert_eq!(kv(&mut stream, "PUT", "a", b"fine").status, 202);
}

#[test]
fn the_database_core_speaks_tls_and_checks_the_certificate() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start_tls();
    let seeds = cluster.seed_list();
    let tls_url = format!("{}?sslmode=require", postgres.url);
    let ca = postgres.ca_file();
    let ca = ca.to_str().unwrap();

    // A CA file without TLS asked for is a start-up error.
    let output = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--redis-seeds", &seeds, "--postgres-url", &postgres.url])
        .args(["--postgres-ca-file", ca])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sslmode=require"), "{stderr}");
    assert!(!stderr.contains("millrace@"), "no URL in errors: {stderr}");

    // The private CA trusted: writes land over TLS.
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--postgres-url",
        &tls_url,
        "--postgres-ca-file",
        ca,
    ]);
    let mut stream = server.connect();
    assert_eq!(kv(&mut stream, "PUT", "sealed", b"v1").status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres.try_query("select count(*) from kv").as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "the write did not land");
        thread::sleep(Duration::from_millis(100));
    }
    let encrypted = postgres.query(
        "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where s.ssl and a.usename = 'millrace' and a.application_name <> 'psql'",
    );
    assert_ne!(encrypted, "0", "the database core's connections are TLS");
    assert!(
        server
            .log()
            .contains("transport=\"TLS, the certificate and the host name verified"),
        "the log says what the connections are: {}",
        server.log()
    );
    drop(stream);
    drop(server);

    // Not trusted: the certificate is refused and nothing is written.
    let server = Server::start(&["--redis-seeds", &seeds, "--postgres-url", &tls_url]);
    let mut stream = server.connect();
    assert_eq!(kv(&mut stream, "PUT", "unsealed", b"v2").status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("certificate verify failed") {
        assert!(Instant::now() < deadline, "{}", server.log());
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(postgres.query("select count(*) from kv"), "1");
    assert!(!server.log().contains(":millrace@"), "{}", server.log());
}

#[test]
fn overload_sheds_at_the_door_and_leaves_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seed_list();
    let server = Server::start(&["--redis-seeds", &seeds, "--max-redis-in-flight", "1"]);
    let mut stream = server.connect();
    // Twenty writes in one packet: one Redis command may be out at a time.
    let burst: Vec<u8> = (0..20)
        .flat_map(|i| kv_request("PUT", &format!("burst{i}"), b"v"))
        .collect();
    stream.write_all(&burst).unwrap();
    let answers: Vec<common::Response> = (0..20).map(|_| read_response(&mut stream)).collect();
    let shed: Vec<usize> = (0..20).filter(|&i| answers[i].status == 503).collect();
    let accepted = answers.iter().filter(|a| a.status == 202).count();
    assert_eq!(accepted + shed.len(), 20, "each is 202 or 503");
    assert!(!shed.is_empty(), "the burst was shed");
    let first = &answers[shed[0]];
    assert!(
        first.text().contains("max_redis_in_flight"),
        "{}",
        first.text()
    );
    assert_eq!(first.header("Retry-After"), Some("1"));
    // Nothing of a shed write is queued or cached.
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let queued: i64 = queue_lengths(&mut client).iter().sum();
    assert_eq!(queued, accepted as i64);
    for i in shed {
        assert_eq!(
            kv(&mut stream, "GET", &format!("burst{i}"), b"").status,
            404
        );
    }
    let metrics = server.metrics();
    assert!(
        common::sample(
            &metrics,
            "millrace_shed_total{core=\"0\",cause=\"max_redis_in_flight\"}"
        ) > 0,
        "{metrics}"
    );
}

/// libpq's modes mean here what they say: `verify-full` (and `require`)
/// check the certificate and the host name, `verify-ca` the certificate
/// only. The server's certificate names 127.0.0.1 and localhost; the URL
/// names another host and reaches 127.0.0.1 through `hostaddr`.
#[test]
fn postgres_verify_modes_check_the_host_name_only_where_they_say() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start_tls();
    let seeds = cluster.seed_list();
    let ca = postgres.ca_file();
    let ca = ca.to_str().unwrap();
    let elsewhere = |mode: &str| {
        let url = postgres
            .url
            .replace("@127.0.0.1:", "@db.elsewhere.example:");
        format!("{url}?hostaddr=127.0.0.1&sslmode={mode}")
    };
    // verify-full and require: refused for the name, and retried (the
    // database core waits out a database it cannot use).
    for mode in ["verify-full", "require"] {
        let server = Server::start(&[
            "--redis-seeds",
            &seeds,
            "--postgres-url",
            &elsewhere(mode),
            "--postgres-ca-file",
            ca,
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.log().contains("hostname mismatch") {
            assert!(Instant::now() < deadline, "{mode}: {}", server.log());
            thread::sleep(Duration::from_millis(50));
        }
        assert!(!server.log().contains(":millrace@"), "{}", server.log());
    }
    // verify-ca: the chain is enough, and writes land over TLS.
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--postgres-url",
        &elsewhere("verify-ca"),
        "--postgres-ca-file",
        ca,
    ]);
    let mut stream = server.connect();
    assert_eq!(kv(&mut stream, "PUT", "chain-only", b"v").status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres.try_query("select count(*) from kv").as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the write did not land: {}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server
            .log()
            .contains("transport=\"TLS, the certificate verified, not the host name"),
        "{}",
        server.log()
    );
    // verify-full with a name the certificate holds: served.
    let named = postgres.url.replace("@127.0.0.1:", "@localhost:");
    let server = Server::start(&[
        "--redis-seeds",
        &seeds,
        "--postgres-url",
        &format!("{named}?sslmode=verify-full"),
        "--postgres-ca-file",
        ca,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .log()
        .contains("transport=\"TLS, the certificate and the host name verified")
    {
        assert!(Instant::now() < deadline, "{}", server.log());
        thread::sleep(Duration::from_millis(50));
    }
}
