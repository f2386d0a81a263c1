//! The write-back queue's scripts against a real Redis Cluster: what each
//! one leaves behind, what it refuses, and that a refusal leaves nothing.

mod common;

use common::cluster::RedisCluster;
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::{Caps, GROUP, Preconditions, Queue, Record, TagList};

const PARTITIONS: u16 = 4;

fn connect(cluster: &RedisCluster) -> Client {
    Client::connect(ClusterConfig::new(cluster.seeds())).unwrap()
}

fn call(client: &mut Client, command: Command) -> OwnedReply {
    client.call(command).unwrap()
}

fn bulk(reply: OwnedReply) -> Vec<u8> {
    match reply {
        OwnedReply::Bulk(bytes) => bytes,
        other => panic!("not a bulk string: {other:?}"),
    }
}

fn error(reply: OwnedReply) -> String {
    match reply {
        OwnedReply::Error(e) => String::from_utf8_lossy(&e).into_owned(),
        other => panic!("not an error: {other:?}"),
    }
}

fn integer(reply: OwnedReply) -> i64 {
    match reply {
        OwnedReply::Integer(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// `args` routed by the key at `key`.
fn raw(client: &mut Client, args: &[&[u8]], key: usize) -> OwnedReply {
    call(client, Command::new(args, Some(key)))
}

fn entry(client: &mut Client, queue: &Queue, key: &[u8]) -> Option<Vec<u8>> {
    match call(client, queue.cached("kv", key)) {
        OwnedReply::Nil => None,
        reply => Some(bulk(reply)),
    }
}

fn pttl(client: &mut Client, queue: &Queue, key: &[u8]) -> i64 {
    integer(raw(client, &[b"PTTL", &queue.cache_key("kv", key)], 1))
}

fn put(client: &mut Client, queue: &Queue, key: &[u8], value: &[u8], caps: Caps) -> OwnedReply {
    let cache = queue.cache_key("kv", key);
    call(client, queue.put("kv", key, value, &cache, caps).command())
}

fn counter(client: &mut Client, queue: &Queue, key: &[u8]) -> Vec<u8> {
    match call(client, queue.release_counter(key)) {
        OwnedReply::Nil => Vec::new(),
        reply => bulk(reply),
    }
}

fn bytes_queued(client: &mut Client, queue: &Queue, partition: u16) -> i64 {
    match raw(client, &[b"GET", queue.bytes_counter(partition)], 1) {
        OwnedReply::Nil => 0,
        reply => String::from_utf8(bulk(reply)).unwrap().parse().unwrap(),
    }
}

fn xlen(client: &mut Client, queue: &Queue, partition: u16) -> i64 {
    integer(raw(client, &[b"XLEN", queue.stream(partition)], 1))
}

#[test]
fn a_cache_entry_is_pinned_until_the_database_holds_exactly_its_version() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let queue = Queue::new(PARTITIONS);
    let key = b"pinned";
    let v1 = bulk(put(&mut client, &queue, key, b"one", Caps::UNLIMITED));
    let v2 = bulk(put(&mut client, &queue, key, b"two", Caps::UNLIMITED));
    assert_eq!(
        entry(&mut client, &queue, key),
        Some([b"v", &v2[..], b" two"].concat())
    );
    assert_eq!(
        pttl(&mut client, &queue, key),
        -1,
        "not evictable before the write-back"
    );
    let bucket_before = counter(&mut client, &queue, key);

    // The older write is written back: the entry holds the newer one, stays pinned.
    assert_eq!(
        integer(call(
            &mut client,
            queue.release("kv", key, &v1, false, 60_000)
        )),
        0
    );
    assert_eq!(pttl(&mut client, &queue, key), -1);
    assert_eq!(counter(&mut client, &queue, key), bucket_before);
    // Its own version: a TTL, and the release counted in the key's bucket.
    assert_eq!(
        integer(call(
            &mut client,
            queue.release("kv", key, &v2, false, 60_000)
        )),
        1
    );
    let ttl = pttl(&mut client, &queue, key);
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    assert_ne!(counter(&mut client, &queue, key), bucket_before);

    // A delete pins a tombstone again (its SET drops the TTL).
    let cache = queue.cache_key("kv", key);
    let v3 = bulk(call(
        &mut client,
        queue.delete("kv", key, &cache, Caps::UNLIMITED).command(),
    ));
    assert_eq!(
        entry(&mut client, &queue, key),
        Some([b"t", &v3[..]].concat())
    );
    assert_eq!(pttl(&mut client, &queue, key), -1);
    // A tombstone is matched whole: an id that is a prefix of its id is not it.
    let prefix = &v3[..v3.len() - 1];
    assert_eq!(
        integer(call(
            &mut client,
            queue.release("kv", key, prefix, true, 1000)
        )),
        0
    );
    assert_eq!(pttl(&mut client, &queue, key), -1);
    assert_eq!(
        integer(call(&mut client, queue.release("kv", key, &v3, true, 1000))),
        1
    );
    assert!(pttl(&mut client, &queue, key) > 0);
}

#[test]
fn a_fill_never_replaces_an_entry_and_never_lands_after_a_release() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let queue = Queue::new(PARTITIONS);
    let key = b"filled";
    // The read-through's order: the counter, then the database, then the fill.
    let before = counter(&mut client, &queue, key);
    let stale = b"v1-0 old".to_vec();
    // Meanwhile a delete is accepted, written back and released, and its
    // tombstone leaves the cache (expired, or evicted).
    let cache = queue.cache_key("kv", key);
    let id = bulk(call(
        &mut client,
        queue.delete("kv", key, &cache, Caps::UNLIMITED).command(),
    ));
    assert_eq!(
        integer(call(
            &mut client,
            queue.release("kv", key, &id, true, 60_000)
        )),
        1
    );
    raw(&mut client, &[b"DEL", &cache], 1);
    // The old row read before the delete must not come back.
    assert_eq!(
        integer(call(
            &mut client,
            queue.fill("kv", key, &stale, 60_000, &before)
        )),
        0
    );
    assert_eq!(entry(&mut client, &queue, key), None);
    // A lookup that read its counter after the release fills the cache.
    let after = counter(&mut client, &queue, key);
    let row = format!("t{}", String::from_utf8_lossy(&id)).into_bytes();
    assert_eq!(
        integer(call(
            &mut client,
            queue.fill("kv", key, &row, 60_000, &after)
        )),
        1
    );
    assert_eq!(entry(&mut client, &queue, key), Some(row.clone()));
    assert!(pttl(&mut client, &queue, key) > 0, "a fill is evictable");
    // Whatever is cached is at least as new as the database: never replaced.
    assert_eq!(
        integer(call(
            &mut client,
            queue.fill("kv", key, &stale, 60_000, &after)
        )),
        0
    );
    let v = bulk(put(&mut client, &queue, key, b"new", Caps::UNLIMITED));
    assert_eq!(
        integer(call(
            &mut client,
            queue.fill("kv", key, &row, 60_000, &after)
        )),
        0
    );
    assert_eq!(
        entry(&mut client, &queue, key),
        Some([b"v", &v[..], b" new"].concat())
    );
}

fn write_if(
    client: &mut Client,
    queue: &Queue,
    key: &[u8],
    value: Option<&[u8]>,
    preconditions: &Preconditions,
    known: Option<(&[u8], &[u8])>,
) -> OwnedReply {
    let cache = queue.cache_key("kv", key);
    let call = queue.write_if(
        "kv",
        key,
        value,
        preconditions,
        known,
        &cache,
        Caps::UNLIMITED,
    );
    client.call(call.command()).unwrap()
}

fn if_match(version: &[u8]) -> Preconditions {
    Preconditions {
        if_match: Some(TagList::Versions(vec![version.to_vec()])),
        if_none_match: None,
    }
}

#[test]
fn conditional_writes_compare_the_current_version_in_the_writing_script() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let queue = Queue::new(PARTITIONS);
    let key = b"cas";
    let create_only = Preconditions {
        if_match: None,
        if_none_match: Some(TagList::Any),
    };
    // Not cached and nothing known: the caller must read the database.
    let missed = write_if(&mut client, &queue, key, Some(b"a"), &create_only, None);
    assert!(error(missed).starts_with("MISS"));
    assert_eq!(xlen(&mut client, &queue, queue.partition_of(key)), 0);
    // What the database said, with a counter that has moved: still a miss.
    let moved = write_if(
        &mut client,
        &queue,
        key,
        Some(b"a"),
        &create_only,
        Some((b"n", b"999")),
    );
    assert!(error(moved).starts_with("MISS"));
    // With the counter read before the database: no row, so create-only holds.
    let now = counter(&mut client, &queue, key);
    let v1 = bulk(write_if(
        &mut client,
        &queue,
        key,
        Some(b"a"),
        &create_only,
        Some((b"n", &now)),
    ));
    // Cached now: create-only fails with the current version.
    let refused = error(write_if(
        &mut client,
        &queue,
        key,
        Some(b"b"),
        &create_only,
        None,
    ));
    assert_eq!(
        refused,
        format!("PRECONDITION {}", String::from_utf8_lossy(&v1))
    );
    // If-Match: the current version wins, an old one does not.
    let v2 = bulk(write_if(
        &mut client,
        &queue,
        key,
        Some(b"b"),
        &if_match(&v1),
        None,
    ));
    let stale = error(write_if(
        &mut client,
        &queue,
        key,
        Some(b"c"),
        &if_match(&v1),
        None,
    ));
    assert!(stale.ends_with(&*String::from_utf8_lossy(&v2)), "{stale}");
    assert_eq!(
        entry(&mut client, &queue, key),
        Some([b"v", &v2[..], b" b"].concat())
    );

    // Many writers naming the same version at once: exactly one wins.
    let cache = queue.cache_key("kv", key);
    let racers: Vec<Command> = (0..32)
        .map(|i| {
            let value = format!("racer {i}").into_bytes();
            let call = queue.write_if(
                "kv",
                key,
                Some(&value),
                &if_match(&v2),
                None,
                &cache,
                Caps::UNLIMITED,
            );
            call.command()
        })
        .collect();
    let outcomes = client.execute(racers);
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(OwnedReply::Bulk(_))))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| match o {
        Ok(OwnedReply::Bulk(_)) => true,
        Ok(OwnedReply::Error(e)) => e.starts_with(b"PRECONDITION"),
        _ => false,
    }));

    // A conditional delete, then If-Match on a deleted key fails with no version.
    let current = entry(&mut client, &queue, key).unwrap();
    let version = &current[1..current.iter().position(|&b| b == b' ').unwrap()];
    bulk(write_if(
        &mut client,
        &queue,
        key,
        None,
        &if_match(version),
        None,
    ));
    let gone = error(write_if(
        &mut client,
        &queue,
        key,
        Some(b"x"),
        &if_match(version),
        None,
    ));
    assert_eq!(gone, "PRECONDITION ");
    // The queue holds exactly the writes that won: 2 + 1 racer + 1 delete.
    assert_eq!(xlen(&mut client, &queue, queue.partition_of(key)), 4);
}

#[test]
fn the_backlog_caps_count_entries_and_bytes_and_acknowledgements_free_them() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let queue = Queue::new(PARTITIONS);
    let key = b"capped";
    let partition = queue.partition_of(key);
    let value = [b'x'; 50];
    let size = Record::new("kv", key, Some(&value), 1).queued_bytes() as i64;
    // Room for two such entries by bytes (admitted while below the cap).
    let caps = Caps {
        entries: 100,
        bytes: 2 * size as u64 - 1,
    };
    bulk(put(&mut client, &queue, key, &value, caps));
    bulk(put(&mut client, &queue, key, &value, caps));
    let cached = entry(&mut client, &queue, key);
    let refused = error(put(&mut client, &queue, key, b"refused", caps));
    assert!(refused.contains("max_backlog_bytes"), "{refused}");
    // The refusal left nothing: not queued, not cached, not counted.
    assert_eq!(xlen(&mut client, &queue, partition), 2);
    assert_eq!(bytes_queued(&mut client, &queue, partition), 2 * size);
    assert_eq!(entry(&mut client, &queue, key), cached);
    let by_count = Caps {
        entries: 2,
        bytes: u64::MAX >> 1,
    };
    assert!(error(put(&mut client, &queue, key, b"x", by_count)).contains("max_backlog"));

    // The database core reads them, and acknowledging takes their bytes
    // off, once: a second acknowledgement of the same ids frees nothing.
    raw(
        &mut client,
        &[b"XGROUP", b"CREATE", queue.stream(partition), GROUP, b"0"],
        2,
    );
    let read = raw(
        &mut client,
        &[
            b"XREADGROUP",
            b"GROUP",
            GROUP,
            b"c",
            b"STREAMS",
            queue.stream(partition),
            b">",
        ],
        5,
    );
    let OwnedReply::Array(streams) = read else {
        panic!("{read:?}")
    };
    let OwnedReply::Array(parts) = &streams[0] else {
        panic!()
    };
    let OwnedReply::Array(messages) = &parts[1] else {
        panic!()
    };
    let ids: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| match m {
            OwnedReply::Array(m) => m[0].bytes().unwrap().to_vec(),
            other => panic!("{other:?}"),
        })
        .collect();
    let acked: Vec<(&[u8], u64)> = ids.iter().map(|id| (id.as_slice(), size as u64)).collect();
    assert_eq!(
        integer(call(&mut client, queue.acknowledge(partition, &acked))),
        2 * size
    );
    assert_eq!(
        integer(call(&mut client, queue.acknowledge(partition, &acked))),
        0
    );
    assert_eq!(bytes_queued(&mut client, &queue, partition), 0);
    bulk(put(&mut client, &queue, key, &value, caps));
    // A count that drifted (a failover lost its last change) is set right
    // when the stream is trimmed empty.
    raw(
        &mut client,
        &[b"SET", queue.bytes_counter(partition), b"12345"],
        1,
    );
    let newest = bulk(raw(
        &mut client,
        &[
            b"XADD",
            queue.stream(partition),
            b"*",
            b"t",
            b"del",
            b"k",
            b"z",
        ],
        1,
    ));
    let above = format!("{}9", String::from_utf8_lossy(&newest));
    call(&mut client, queue.trim(partition, above.as_bytes()));
    assert_eq!(xlen(&mut client, &queue, partition), 0);
    assert_eq!(bytes_queued(&mut client, &queue, partition), 0);
}

#[test]
fn at_maxmemory_a_write_is_refused_whole_while_reads_and_the_drain_go_on() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let queue = Queue::new(PARTITIONS);
    let key = b"full";
    let partition = queue.partition_of(key);
    let v1 = bulk(put(&mut client, &queue, key, b"kept", Caps::UNLIMITED));
    // The database core's group exists before memory runs out.
    raw(
        &mut client,
        &[b"XGROUP", b"CREATE", queue.stream(partition), GROUP, b"0"],
        2,
    );
    // The master of the key's partition is out of memory, with nothing
    // evictable (no key has a TTL).
    let node = cluster
        .seeds()
        .into_iter()
        .find(|node| {
            let slot = millrace::redis::slot::Slot::of(queue.stream(partition)).get();
            cluster
                .cli(
                    node.port(),
                    &["cluster", "countkeysinslot", &slot.to_string()],
                )
                .trim()
                != "0"
        })
        .expect("the node holding the partition");
    assert!(
        cluster
            .cli(node.port(), &["config", "set", "maxmemory", "1"])
            .contains("OK")
    );
    let refused = error(put(&mut client, &queue, key, b"lost", Caps::UNLIMITED));
    assert!(refused.starts_with("OOM"), "{refused}");
    // Nothing partial: the queue, the cache and the counters as they were.
    assert_eq!(xlen(&mut client, &queue, partition), 1);
    assert_eq!(
        entry(&mut client, &queue, key),
        Some([b"v", &v1[..], b" kept"].concat())
    );
    let size = Record::new("kv", key, Some(b"kept"), 1).queued_bytes() as i64;
    assert_eq!(bytes_queued(&mut client, &queue, partition), size);
    // What frees memory still runs: the release after a write-back (and
    // then the entry can be evicted), the acknowledgement, the trim.
    assert_eq!(
        integer(call(
            &mut client,
            queue.release("kv", key, &v1, false, 60_000)
        )),
        1
    );
    raw(
        &mut client,
        &[
            b"XREADGROUP",
            b"GROUP",
            GROUP,
            b"c",
            b"STREAMS",
            queue.stream(partition),
            b">",
        ],
        5,
    );
    let acked = [(v1.as_slice(), size as u64)];
    assert_eq!(
        integer(call(&mut client, queue.acknowledge(partition, &acked))),
        size
    );
    let above = format!("{}9", String::from_utf8_lossy(&v1));
    call(&mut client, queue.trim(partition, above.as_bytes()));
    assert_eq!(xlen(&mut client, &queue, partition), 0);
    // Room again: writes go through.
    assert!(
        cluster
            .cli(node.port(), &["config", "set", "maxmemory", "0"])
            .contains("OK")
    );
    bulk(put(&mut client, &queue, key, b"again", Caps::UNLIMITED));
}

#[test]
fn the_partition_count_is_recorded_once_and_a_different_one_refused() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = connect(&cluster);
    let sixteen = Queue::new(16);
    let recorded = bulk(call(&mut client, sixteen.record_layout()));
    assert_eq!(recorded, b"16");
    sixteen.check_layout(&recorded).unwrap();
    let eight = Queue::new(8);
    let recorded = bulk(call(&mut client, eight.record_layout()));
    assert_eq!(recorded, b"16", "the first count stays");
    let error = eight.check_layout(&recorded).unwrap_err();
    assert!(
        error.contains("16 partitions") && error.contains("started with 8"),
        "{error}"
    );
}
