//! The Redis Cluster client against real clusters started by
//! scripts/redis-cluster.sh, and against a fake server for the faults a
//! real one will not produce.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::{Command, Error};
use millrace::redis::driver::Client;
use millrace::redis::resp::{OwnedReply, Protocol};
use millrace::redis::slot::Slot;
use millrace::rng::Rng;

fn client(cluster: &RedisCluster) -> Client {
    let mut config = ClusterConfig::new(cluster.seeds());
    config.password = cluster.password.clone();
    Client::connect(config).expect("connect to the cluster")
}

fn bulk(value: &[u8]) -> OwnedReply {
    OwnedReply::Bulk(value.to_vec())
}

#[test]
fn slots_agree_with_cluster_keyslot() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = client(&cluster);
    let mut rng = Rng::new(42);
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            // Random bytes, some with hash tags.
            let len = 1 + rng.below(24) as usize;
            let mut key: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            if i % 5 == 0 {
                key.splice(0..0, *b"{tag");
                key.push(b'}');
            }
            key
        })
        .collect();
    let replies = client.execute(
        keys.iter()
            .map(|k| Command::new(&[&b"CLUSTER"[..], b"KEYSLOT", k], None))
            .collect(),
    );
    for (key, reply) in keys.iter().zip(replies) {
        assert_eq!(
            reply.unwrap(),
            OwnedReply::Integer(i64::from(Slot::of(key).get())),
            "{key:?}"
        );
    }
}

#[test]
fn set_and_get_across_every_master() {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let cluster = RedisCluster::start(3, 0);
        let mut config = ClusterConfig::new(cluster.seeds());
        config.protocol = protocol;
        let mut client = Client::connect(config).unwrap();
        assert_eq!(client.masters().len(), 3);
        let keys: Vec<String> = (0..3000).map(|i| format!("key:{i}")).collect();
        let sets = client.execute(
            keys.iter()
                .map(|k| Command::set(k.as_bytes(), format!("value of {k}").as_bytes()))
                .collect(),
        );
        assert!(
            sets.iter()
                .all(|r| r == &Ok(OwnedReply::Status(b"OK".to_vec())))
        );
        let gets = client.execute(keys.iter().map(|k| Command::get(k.as_bytes())).collect());
        for (key, reply) in keys.iter().zip(gets) {
            assert_eq!(reply.unwrap(), bulk(format!("value of {key}").as_bytes()));
        }
        assert_eq!(
            client.call(Command::get(b"absent")).unwrap(),
            OwnedReply::Nil
        );
        // Every master holds a share.
        for port in cluster.port..cluster.port + 3 {
            let size: u64 = cluster.cli(port, &["dbsize"]).trim().parse().unwrap();
            assert!(size > 500, "{port}: {size}");
        }
        // Error replies that are not about the cluster reach the caller.
        let reply = client
            .call(Command::new(&["LPUSH", "key:1", "x"], Some(1)))
            .unwrap();
        assert!(matches!(reply, OwnedReply::Error(e) if e.starts_with(b"WRONGTYPE")));
    }
}

#[test]
fn streams_commands_work() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = client(&cluster);
    let stream = b"{queue:0}";
    assert_eq!(
        client
            .call(Command::xgroup_create(stream, b"db", b"0"))
            .unwrap(),
        OwnedReply::Status(b"OK".to_vec())
    );
    for i in 0..5 {
        let id = client
            .call(Command::xadd(stream, &[(b"n", i.to_string().as_bytes())]))
            .unwrap();
        assert!(matches!(id, OwnedReply::Bulk(_)));
    }
    let read = client
        .call(Command::xreadgroup(stream, b"db", b"c1", 10, b">"))
        .unwrap();
    let OwnedReply::Array(streams) = read else {
        panic!("{read:?}")
    };
    let OwnedReply::Array(entry) = &streams[0] else {
        panic!()
    };
    let OwnedReply::Array(messages) = &entry[1] else {
        panic!()
    };
    assert_eq!(messages.len(), 5);
    let ids: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| match m {
            OwnedReply::Array(parts) => parts[0].bytes().unwrap().to_vec(),
            _ => panic!(),
        })
        .collect();
    let id_refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
    assert_eq!(
        client.call(Command::xack(stream, b"db", &id_refs)).unwrap(),
        OwnedReply::Integer(5)
    );
    let claimed = client
        .call(Command::xautoclaim(
            stream,
            b"db",
            b"c2",
            Duration::ZERO,
            b"0",
            10,
        ))
        .unwrap();
    assert!(matches!(claimed, OwnedReply::Array(_)));
    assert_eq!(
        client
            .call(Command::wait(stream, 0, Duration::from_millis(10)))
            .unwrap(),
        OwnedReply::Integer(0)
    );
}

#[test]
fn live_resharding_fails_no_command() {
    let cluster = RedisCluster::start(3, 0);
    let mut client = client(&cluster);
    let table = cluster.nodes_table();
    let from = table
        .iter()
        .find(|n| n.1 == cluster.port)
        .unwrap()
        .0
        .clone();
    let to = table
        .iter()
        .find(|n| n.1 == cluster.port + 1)
        .unwrap()
        .0
        .clone();
    let done = Arc::new(AtomicBool::new(false));
    let reshard = {
        let done = Arc::clone(&done);
        let port = cluster.port;
        thread::spawn(move || {
            let output = std::process::Command::new("redis-cli")
                .args([
                    "--cluster",
                    "reshard",
                    &format!("127.0.0.1:{port}"),
                    "--cluster-from",
                    &from,
                    "--cluster-to",
                    &to,
                    "--cluster-slots",
                    "1000",
                    "--cluster-yes",
                    "--cluster-pipeline",
                    "10",
                ])
                .output()
                .unwrap();
            done.store(true, Ordering::SeqCst);
            output
        })
    };
    let mut written = 0u64;
    let mut round = 0u64;
    while !done.load(Ordering::SeqCst) || round < 3 {
        let start = written;
        let batch: Vec<Command> = (start..start + 200)
            .map(|i| Command::set(format!("rk:{i}").as_bytes(), format!("v{i}").as_bytes()))
            .collect();
        for (i, reply) in client.execute(batch).into_iter().enumerate() {
            assert_eq!(
                reply,
                Ok(OwnedReply::Status(b"OK".to_vec())),
                "SET rk:{} during resharding",
                start + i as u64
            );
        }
        written += 200;
        let reads: Vec<Command> = (0..written)
            .step_by(7)
            .map(|i| Command::get(format!("rk:{i}").as_bytes()))
            .collect();
        for (n, reply) in client.execute(reads).into_iter().enumerate() {
            let i = n as u64 * 7;
            assert_eq!(
                reply,
                Ok(bulk(format!("v{i}").as_bytes())),
                "GET rk:{i} during resharding"
            );
        }
        round += 1;
    }
    let output = reshard.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // Every value reads back after the move.
    let reads = client.execute(
        (0..written)
            .map(|i| Command::get(format!("rk:{i}").as_bytes()))
            .collect(),
    );
    for (i, reply) in reads.into_iter().enumerate() {
        assert_eq!(reply, Ok(bulk(format!("v{i}").as_bytes())));
    }
    eprintln!("{written} keys written and read back across a live move of 1000 slots");
}

#[test]
fn a_failed_master_is_replaced_and_found() {
    let cluster = RedisCluster::start_with(3, 1, None, 1000);
    let mut config = ClusterConfig::new(cluster.seeds());
    config.command_timeout = Duration::from_millis(500);
    let mut client = Client::connect(config).unwrap();
    // A key on the first master.
    let table = cluster.nodes_table();
    let victim = table
        .iter()
        .find(|n| n.1 == cluster.port && n.2.contains("master"))
        .expect("the first node is a master");
    let key = (0..)
        .map(|i| format!("fk:{i}"))
        .find(|k| {
            let slot = Slot::of(k.as_bytes()).get();
            victim.4.split_whitespace().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&slot)
            })
        })
        .unwrap();
    assert_eq!(
        client
            .call(Command::set(key.as_bytes(), b"before"))
            .unwrap(),
        OwnedReply::Status(b"OK".to_vec())
    );
    // SAFETY: kill(2) on a redis-server this test started.
    unsafe { libc::kill(cluster.pid(cluster.port), libc::SIGKILL) };
    let killed = Instant::now();
    let mut failures = 0;
    loop {
        match client.call(Command::set(key.as_bytes(), b"after")) {
            Ok(OwnedReply::Status(s)) if s == b"OK" => break,
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                failures += 1;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no new master after 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    assert_eq!(
        client.call(Command::get(key.as_bytes())).unwrap(),
        bulk(b"after")
    );
    assert!(
        !client
            .masters()
            .contains(&SocketAddr::from(([127, 0, 0, 1], cluster.port)))
    );
    eprintln!(
        "failover: commands succeeded again {took:?} after SIGKILL of the master ({failures} retryable errors before)"
    );
}

#[test]
fn credentials_are_checked_and_never_shown() {
    let cluster = RedisCluster::start_with(3, 0, Some("s3cret-pass"), 2000);
    let mut config = ClusterConfig::new(cluster.seeds());
    config.password = Some("wrong-pass".into());
    let error = Client::connect(config.clone())
        .err()
        .expect("a wrong password fails");
    assert!(
        matches!(&error, Error::Auth(why) if why.contains("WRONGPASS")),
        "{error}"
    );
    assert!(!format!("{config:?}").contains("wrong-pass"));
    // An ACL user of its own, on every node.
    for node in &cluster.nodes {
        let reply = cluster.cli(
            node.port(),
            &[
                "acl",
                "setuser",
                "app",
                "on",
                ">app-pass",
                "~*",
                "&*",
                "+@all",
            ],
        );
        assert_eq!(reply.trim(), "OK");
    }
    let mut config = ClusterConfig::new(cluster.seeds());
    config.user = Some("app".into());
    config.password = Some("app-pass".into());
    let mut client = Client::connect(config).unwrap();
    assert_eq!(
        client.call(Command::new(&["ACL", "WHOAMI"], None)).unwrap(),
        OwnedReply::Bulk(b"app".to_vec())
    );
    for (user, protocol) in [(None, Protocol::Resp2), (Some("default"), Protocol::Resp3)] {
        let mut config = ClusterConfig::new(cluster.seeds());
        config.password = Some("s3cret-pass".into());
        config.user = user.map(str::to_string);
        config.protocol = protocol;
        let mut client = Client::connect(config).unwrap();
        assert_eq!(
            client.call(Command::set(b"a", b"b")).unwrap(),
            OwnedReply::Status(b"OK".to_vec())
        );
    }
}

#[test]
fn reads_can_go_to_replicas() {
    let cluster = RedisCluster::start(3, 1);
    let mut config = ClusterConfig::new(cluster.seeds());
    config.read_from_replicas = true;
    let mut client = Client::connect(config).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("rr:{i}")).collect();
    let sets = client.execute(
        keys.iter()
            .map(|k| Command::set(k.as_bytes(), b"v"))
            .collect(),
    );
    assert!(sets.iter().all(Result::is_ok));
    // Replicas lag: wait until each master's replica has the writes.
    let waits = client.execute(
        keys.iter()
            .map(|k| Command::wait(k.as_bytes(), 1, Duration::from_secs(2)))
            .collect(),
    );
    assert!(
        waits.iter().all(|w| w == &Ok(OwnedReply::Integer(1))),
        "{waits:?}"
    );
    let gets = client.execute(keys.iter().map(|k| Command::get(k.as_bytes())).collect());
    assert!(gets.iter().all(|g| g == &Ok(bulk(b"v"))), "{gets:?}");
    // The GETs ran on replicas, none on masters.
    let mut on_replicas = 0;
    for (_, port, flags, _, _) in cluster.nodes_table() {
        let stats = cluster.cli(port, &["info", "commandstats"]);
        let gets: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap());
        if flags.contains("master") {
            assert_eq!(gets, 0, "a master served GET");
        } else {
            on_replicas += gets;
        }
    }
    assert_eq!(on_replicas, 300);
}

#[test]
fn unreachable_seeds_are_a_clear_error() {
    let ports: Vec<SocketAddr> = (0..2)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let error = Client::connect(ClusterConfig::new(ports.clone()))
        .err()
        .unwrap();
    let text = error.to_string();
    assert!(text.contains("none of the Redis seeds answered"), "{text}");
    for port in &ports {
        assert!(text.contains(&port.to_string()), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_cluster_that_is_not_ok_is_a_clear_error() {
    let cluster = RedisCluster::start(3, 0);
    // Leave slot 0 unserved: the cluster goes to cluster_state:fail.
    cluster.cli(cluster.port, &["cluster", "delslots", "0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster
        .cli(cluster.port, &["cluster", "info"])
        .contains("cluster_state:fail")
    {
        assert!(Instant::now() < deadline, "the cluster did not fail");
        thread::sleep(Duration::from_millis(50));
    }
    let error = Client::connect(ClusterConfig::new(cluster.seeds()))
        .err()
        .unwrap();
    assert!(error.to_string().contains("cluster_state:fail"), "{error}");
}

/// How the fake node misbehaves once the layout has been read.
#[derive(Clone, Copy)]
enum Fault {
    Garbage,
    TruncatedThenClose,
    CloseMidReply,
    Silent,
}

/// A one-node "cluster" on a free port that serves its layout and then
/// answers every other command with `fault`.
fn fake_node(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                let mut held = Vec::new();
                loop {
                    let n = match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    held.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&held).to_ascii_uppercase();
                    let reply: Vec<u8> = if text.contains("SHARDS") {
                        format!(
                            "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
*8\r\n$4\r\nport\r\n:{}\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
                            address.port()
                        )
                        .into_bytes()
                    } else if text.contains("INFO") {
                        b"$16\r\ncluster_state:ok\r\n".to_vec()
                    } else if text.contains("GET") {
                        match fault {
                            Fault::Garbage => b"!?garbage\r\n".to_vec(),
                            Fault::TruncatedThenClose | Fault::CloseMidReply => {
                                let _ = stream.write_all(b"$100\r\nonly part");
                                return;
                            }
                            Fault::Silent => Vec::new(),
                        }
                    } else {
                        continue;
                    };
                    held.clear();
                    if matches!(fault, Fault::CloseMidReply) && text.contains("GET") {
                        return;
                    }
                    if stream.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn a_misbehaving_server_is_a_clean_error() {
    for fault in [
        Fault::Garbage,
        Fault::TruncatedThenClose,
        Fault::CloseMidReply,
        Fault::Silent,
    ] {
        let address = fake_node(fault);
        let mut config = ClusterConfig::new(vec![address]);
        config.command_timeout = Duration::from_millis(300);
        let mut client = Client::connect(config).unwrap();
        let started = Instant::now();
        let result = client.call(Command::get(b"k"));
        let error = result.expect_err("no valid reply");
        assert!(error.is_retryable(), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
}
