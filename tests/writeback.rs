//! The database core (`millrace writeback`) between a real Redis Cluster and
//! a real PostgreSQL: every queued write lands once, the last write to a key
//! wins, a crash between commit and acknowledgement duplicates nothing, and
//! a database outage loses nothing.

mod common;

use std::process::{Child, Command as Process, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::postgres::Postgres;
use common::stop_writeback;
use millrace::payload::{Event, encode_event_batch};
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::{Caps, Queue, Record};

const PARTITIONS: u16 = 16;

/// The database core as a separate process.
fn writeback(cluster: &RedisCluster, postgres: &Postgres, env: &[(&str, &str)]) -> Child {
    let seeds = cluster.seed_list();
    Process::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("writeback")
        .env("MILLRACE_REDIS_SEEDS", seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .env("MILLRACE_WRITEBACK_PARTITIONS", PARTITIONS.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start millrace writeback")
}

fn event(n: u64) -> Event {
    let mut client_id = [0u8; 16];
    client_id[8..].copy_from_slice(&n.to_be_bytes());
    Event {
        client_id,
        key: format!("user:{}", n % 1000),
        kind: (n % 7) as i32,
        timestamp_us: 1_700_000_000_000_000 + n as i64,
        payload: format!("payload {n}").into_bytes(),
    }
}

/// Events `range` as posts of 100 events each.
fn batches(range: std::ops::Range<u64>) -> impl Iterator<Item = Record> {
    let events: Vec<Event> = range.map(event).collect();
    events
        .chunks(100)
        .map(|chunk| millrace::routes::events::record(encode_event_batch(chunk)).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
}

/// Queue `records` as the API would, checking each XADD succeeded.
fn enqueue(client: &mut Client, records: impl Iterator<Item = Record>) {
    let queue = Queue::new(PARTITIONS);
    let records: Vec<Record> = records.collect();
    for chunk in records.chunks(10_000) {
        for reply in client.execute(
            chunk
                .iter()
                .map(|r| queue.append(r, r.table == "kv", Caps::UNLIMITED))
                .collect(),
        ) {
            assert!(matches!(reply, Ok(OwnedReply::Bulk(_))), "{reply:?}");
        }
    }
}

/// Entries still in the streams (XDEL removes them once committed).
fn backlog(client: &mut Client) -> i64 {
    let queue = Queue::new(PARTITIONS);
    client
        .execute(
            (0..PARTITIONS)
                .map(|p| Command::new(&[&b"XLEN"[..], queue.stream(p)], Some(1)))
                .collect(),
        )
        .into_iter()
        .map(|r| match r {
            Ok(OwnedReply::Integer(n)) => n,
            other => panic!("{other:?}"),
        })
        .sum()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_event_lands_exactly_once() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    enqueue(&mut client, batches(0..100_000));
    let core = writeback(&cluster, &postgres, &[]);
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        backlog(&mut client) == 0
    });
    assert_eq!(postgres.query("select count(*) from events"), "100000");
    assert_eq!(
        postgres.query(
            "select convert_from(payload, 'UTF8') || ' ' || kind || ' ' || timestamp_us from events \
             where client_id = decode('0000000000000000000000000000a455', 'hex')"
        ),
        "payload 42069 6 1700000000042069"
    );
    // The same ids again, as a client retrying would: nothing new.
    enqueue(&mut client, batches(0..100_000));
    wait_for(
        "the backlog to drain again",
        Duration::from_secs(60),
        || backlog(&mut client) == 0,
    );
    assert_eq!(postgres.query("select count(*) from events"), "100000");
    stop_writeback(core);
    // Every entry was acknowledged.
    let written = client
        .call(Command::new(
            &["HGET", "{millrace:stats}", "written"],
            Some(1),
        ))
        .unwrap();
    assert_eq!(written, OwnedReply::Bulk(b"200000".to_vec()));
}

#[test]
fn the_last_write_to_each_key_wins() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    // 10,000 writes over 100 keys, in a known order, some of them deletes.
    let mut last = vec![None; 100];
    let records: Vec<Record> = (0..10_000u32)
        .map(|i| {
            let k = (i * 7919) % 100;
            let key = format!("key:{k}").into_bytes();
            if i % 13 == 0 {
                last[k as usize] = None;
                Record::new("kv", &key, None, 1)
            } else {
                let value = format!("value {i}").into_bytes();
                last[k as usize] = Some(String::from_utf8(value.clone()).unwrap());
                Record::new("kv", &key, Some(&value), 1)
            }
        })
        .collect();
    // Small batches, so that one key's writes cross many transactions.
    let core = writeback(&cluster, &postgres, &[("MILLRACE_BATCH_ROWS", "97")]);
    for chunk in records.chunks(500) {
        enqueue(&mut client, chunk.iter().cloned());
    }
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        backlog(&mut client) == 0
    });
    stop_writeback(core);
    for (k, expected) in last.iter().enumerate() {
        let stored = postgres.query(&format!(
            "select coalesce(convert_from(value, 'UTF8'), '<deleted>') from kv where key = 'key:{k}'::bytea"
        ));
        assert_eq!(
            stored,
            expected.clone().unwrap_or("<deleted>".into()),
            "key:{k}"
        );
    }
}

#[test]
fn a_crash_between_commit_and_ack_duplicates_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    enqueue(&mut client, batches(0..20_000));
    let mut crashing = writeback(
        &cluster,
        &postgres,
        &[
            ("MILLRACE_FAULT", "kill-after-commit"),
            ("MILLRACE_BATCH_ROWS", "5000"),
        ],
    );
    let status = crashing.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let committed: u64 = postgres
        .query("select count(*) from events")
        .parse()
        .unwrap();
    assert!(committed > 0, "the first batch was committed");
    assert_eq!(
        backlog(&mut client),
        200,
        "and not acknowledged (200 posts of 100 events)"
    );
    // The same consumer, restarted, finds its pending entries first.
    let core = writeback(&cluster, &postgres, &[]);
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        backlog(&mut client) == 0
    });
    stop_writeback(core);
    assert_eq!(postgres.query("select count(*) from events"), "20000");
}

#[test]
fn a_database_outage_loses_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let core = writeback(&cluster, &postgres, &[]);
    enqueue(&mut client, batches(0..5_000));
    wait_for("the first writes", Duration::from_secs(30), || {
        backlog(&mut client) == 0
    });
    postgres.pause();
    // For 10 s with the database down, posts keep coming (one of 100 events
    // every 50 ms); they wait in Redis, and nothing is acknowledged.
    let outage = Instant::now();
    let mut next = 5_000;
    while outage.elapsed() < Duration::from_secs(10) {
        enqueue(&mut client, batches(next..next + 100));
        next += 100;
        thread::sleep(Duration::from_millis(50));
    }
    let posted = (next - 5_000) / 100;
    assert_eq!(
        backlog(&mut client),
        posted as i64,
        "nothing is acknowledged while the database is down"
    );
    postgres.resume();
    wait_for(
        "the backlog to drain after the outage",
        Duration::from_secs(60),
        || backlog(&mut client) == 0,
    );
    stop_writeback(core);
    assert_eq!(
        postgres.query("select count(*) from events"),
        next.to_string()
    );
}

/// A `millrace writeback` under consumer name `name` (lease 2 s) whose log
/// is kept; the child and the log's path.
fn named_core(
    cluster: &RedisCluster,
    postgres: &Postgres,
    name: &str,
    log: &str,
) -> (Child, std::path::PathBuf) {
    let path =
        std::env::temp_dir().join(format!("millrace-lease-{}-{log}.log", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let seeds = cluster.seed_list();
    let child = Process::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["writeback", "--consumer", name, "--lease-ms", "2000"])
        .env("MILLRACE_REDIS_SEEDS", seeds)
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (child, path)
}

fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_second_core_under_one_consumer_name_refuses_and_a_dead_ones_name_is_taken_over() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let holding = "holding the consumer name's lease";
    let (mut first, first_log) = named_core(&cluster, &postgres, "shared", "first");
    wait_for("the first core's lease", Duration::from_secs(30), || {
        read_log(&first_log).contains(holding)
    });
    // A second core under the same name watches the lease being renewed,
    // and refuses, naming the holder's process.
    let (mut second, second_log) = named_core(&cluster, &postgres, "shared", "second");
    let status = second.wait().unwrap();
    assert!(!status.success());
    let log = read_log(&second_log);
    assert!(log.contains("is held by"), "{log}");
    assert!(
        log.contains(&format!(":{}:", first.id())),
        "names the holder: {log}"
    );
    assert!(!log.contains(holding), "{log}");
    // Another name is no conflict.
    let (other, other_log) = named_core(&cluster, &postgres, "another", "other");
    wait_for("another name's lease", Duration::from_secs(30), || {
        read_log(&other_log).contains(holding)
    });
    // The holder dies without giving the lease up: a restart under its
    // name waits for the lease to run out, then takes it.
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    let (restarted, restarted_log) = named_core(&cluster, &postgres, "shared", "restarted");
    wait_for(
        "the dead core's name taken over",
        Duration::from_secs(30),
        || read_log(&restarted_log).contains(holding),
    );
    assert!(read_log(&restarted_log).contains("waiting for it to run out"));
    // A clean stop gives the lease up: the next start takes it at once.
    stop_writeback(restarted);
    let (next, next_log) = named_core(&cluster, &postgres, "shared", "next");
    wait_for("the released name taken", Duration::from_secs(30), || {
        read_log(&next_log).contains(holding)
    });
    assert!(!read_log(&next_log).contains("waiting for it to run out"));
    stop_writeback(next);
    stop_writeback(other);
}
