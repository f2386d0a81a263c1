//! The fault suite. Each scenario drives seeded open-loop event load
//! (`millrace load --ledger`) through millrace into a real Redis Cluster and
//! a real PostgreSQL, and beside it a kv history (`common::history`: PUT,
//! DELETE, GET and conditional PUT over a small key set), injects one
//! fault, lets the queue drain, and checks both: every event answered 202
//! is in the table, delivered once, and none answered otherwise is there
//! at all (events whose request got no answer may be either); the kv
//! history holds no lost write, stale read, key come back, refused value
//! stored or double compare-and-set win.
//!
//! `scripts/chaos.sh` runs it with its ledgers printed as tables;
//! `MILLRACE_CHAOS_SEED` (default 1) seeds the load and the injected jitter,
//! `MILLRACE_CHAOS_OUTAGE_S` (default 10; the script uses 60) is how long
//! PostgreSQL stays down, and `MILLRACE_CHAOS_REPORT`, if set, is a file
//! each scenario appends its ledger row to (its kv row goes to the same
//! name with `.kv` after it).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{ListenPort, RedisCluster};
use common::history::{History, KV_TABLE_HEAD, KvTally, Recorded};
use common::postgres::Postgres;
use common::proxy::{Mode, Proxy};
use common::{PATIENCE, Server, read_response};
use millrace::load::ledger::{self, Entry};

fn seed() -> u64 {
    std::env::var("MILLRACE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn outage() -> Duration {
    let seconds = std::env::var("MILLRACE_CHAOS_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(seconds)
}

/// A Redis Cluster, a PostgreSQL, and the arguments a millrace serving them
/// takes, on a port of its own so that a restart keeps its address.
struct Stack {
    cluster: RedisCluster,
    postgres: Postgres,
    addr: SocketAddr,
    args: Vec<String>,
    /// Keeps `addr` this test's while the server is down.
    _port: ListenPort,
}

impl Stack {
    /// `replicas` per master (3 masters); `extra` serve options.
    fn start(replicas: usize, extra: &[&str]) -> Stack {
        Stack::start_configured(replicas, &[], extra)
    }

    /// The same, with options of scripts/redis-cluster.sh for the cluster.
    fn start_configured(replicas: usize, cluster_options: &[&str], extra: &[&str]) -> Stack {
        let cluster = RedisCluster::start_configured(3, replicas, None, 1000, cluster_options);
        let postgres = Postgres::start();
        let port = ListenPort::claim();
        let addr = port.addr;
        let seeds = cluster.seed_list();
        let mut args: Vec<String> = [
            "--listen",
            &addr.to_string(),
            "--cores",
            "1",
            "--redis-seeds",
            &seeds,
            "--postgres-url",
            &postgres.url,
            "--drain-delay-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Stack {
            cluster,
            postgres,
            addr,
            args,
            _port: port,
        }
    }

    /// A millrace on the stack's address.
    fn serve(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Server::start_with(&args)
    }

    /// A millrace on the stack's address without a database core of its
    /// own: its writes wait in Redis for `millrace writeback` processes.
    fn serve_front_door(&self) -> Server {
        let args: Vec<&str> = self
            .args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|pair| pair[0] != "--postgres-url")
            .flatten()
            .copied()
            .collect();
        Server::start_with(&args)
    }

    /// `millrace writeback` on the stack with `args`, and its fault switch.
    fn database_core(&self, args: &[&str], fault: Option<&str>) -> std::process::Child {
        let seeds = self.cluster.seed_list();
        let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
        command
            .arg("writeback")
            .args(args)
            .env("MILLRACE_REDIS_SEEDS", seeds)
            .env("MILLRACE_POSTGRES_URL", &self.postgres.url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(fault) = fault {
            command.env("MILLRACE_FAULT", fault);
        }
        command.spawn().expect("start millrace writeback")
    }

    /// Wait until the database cores have written every event `finished`
    /// got 202 for and nothing waits (the figures `server` reads from
    /// Redis: a writeback process has no /v1/stats of its own).
    fn wait_written(&self, server: &Server, finished: &Finished) {
        let accepted = finished
            .entries
            .iter()
            .filter(|e| e.status == Some(202))
            .map(|e| u64::from(e.events.count))
            .sum::<u64>();
        let deadline = Instant::now() + PATIENCE * 6;
        loop {
            let stats: serde_json::Value =
                serde_json::from_slice(&server.get("/v1/stats").body).unwrap();
            if stats["backlog"] == 0 && stats["written"].as_u64() >= Some(accepted) {
                return;
            }
            assert!(Instant::now() < deadline, "never drained: {stats}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The load's end: its ledger, once the queue has drained, against the
    /// table.
    fn settle(&self, load: Load, server: &Server, scenario: &str) -> Tally {
        let finished = load.finish();
        self.drain(server);
        Tally::check(scenario, &finished, &self.postgres)
    }

    /// Wait until the queue is empty and the table has stopped growing.
    fn drain(&self, server: &Server) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_rows = String::new();
        let mut quiet = 0;
        while quiet < 3 {
            assert!(Instant::now() < deadline, "the queue never drained");
            thread::sleep(Duration::from_millis(400));
            let stats = server.get("/v1/stats");
            let backlog = serde_json::from_slice::<serde_json::Value>(&stats.body)
                .ok()
                .and_then(|s| s["backlog"].as_i64());
            let rows = self
                .postgres
                .try_query("select count(*) from events")
                .unwrap_or_default();
            if stats.status == 200 && backlog == Some(0) && rows == last_rows {
                quiet += 1;
            } else {
                quiet = 0;
            }
            last_rows = rows;
        }
    }
}

/// `millrace load` posting batches of 10 events with a ledger: open loop
/// at `rate` requests/s, or closed loop without one; and a kv history
/// beside it for as long.
struct Load {
    child: Child,
    ledger: PathBuf,
    json: PathBuf,
    kv: History,
}

/// A load's end: the events ledger, the run's JSON report, the kv history.
struct Finished {
    entries: Vec<Entry>,
    report: serde_json::Value,
    kv: Recorded,
}

impl Load {
    /// 8 connections, the suite's seed.
    fn start(addr: SocketAddr, rate: u32, seconds: u32, name: &str) -> Load {
        Load::start_with(addr, Some(rate), seconds, name, 8, seed())
    }

    fn start_with(
        addr: SocketAddr,
        rate: Option<u32>,
        seconds: u32,
        name: &str,
        connections: u32,
        seed: u64,
    ) -> Load {
        let file = |ext: &str| {
            std::env::temp_dir().join(format!(
                "millrace-chaos-{}-{name}.{ext}",
                std::process::id()
            ))
        };
        let (ledger, json) = (file("ledger"), file("json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
        command.args([
            "load",
            &format!("http://{addr}"),
            "--workload",
            "events",
            "--batch",
            "10",
            "--connections",
            &connections.to_string(),
            "--duration",
            &format!("{seconds}s"),
            "--timeout",
            "3s",
            "--max-error-ratio",
            "1",
            "--seed",
            &seed.to_string(),
        ]);
        if let Some(rate) = rate {
            command.args(["--rate", &rate.to_string()]);
        }
        let child = command
            .arg("--ledger")
            .arg(&ledger)
            .arg("--json")
            .arg(&json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start millrace load");
        Load {
            child,
            ledger,
            json,
            kv: History::start(addr, name, seed),
        }
    }

    /// Wait for the load's end, then stop the kv history.
    fn finish(mut self) -> Finished {
        let status = self.child.wait().unwrap();
        assert!(
            status.code().is_some_and(|c| c <= 1),
            "millrace load failed: {status}"
        );
        let entries = ledger::read(&self.ledger).unwrap();
        let report = std::fs::read(&self.json)
            .ok()
            .and_then(|j| serde_json::from_slice(&j).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&self.ledger);
        let _ = std::fs::remove_file(&self.json);
        Finished {
            entries,
            report,
            kv: self.kv.finish(),
        }
    }
}

/// What a scenario's ledger says against the table.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    statuses: BTreeMap<u16, u64>,
    no_answer: u64,
    accepted: u64,
    rows: u64,
    missing: u64,
    /// Events that reached the database more than once (redelivered after
    /// a crash between commit and acknowledgement), absorbed by the merge.
    redelivered: u64,
    unexpected: u64,
    kv: KvTally,
}

impl Tally {
    fn check(scenario: &str, finished: &Finished, postgres: &Postgres) -> Tally {
        let entries = &finished.entries;
        let mut tally = Tally {
            requests: entries.len(),
            kv: finished.kv.check(postgres),
            ..Tally::default()
        };
        let (mut accepted, mut maybe) = (HashSet::new(), HashSet::new());
        for entry in entries {
            match entry.status {
                Some(status) => *tally.statuses.entry(status).or_default() += 1,
                None => tally.no_answer += 1,
            }
            let into = match entry.status {
                Some(202) => &mut accepted,
                None => &mut maybe,
                Some(_) => continue,
            };
            into.extend(entry.events.ids());
        }
        tally.accepted = accepted.len() as u64;
        // This run's rows: its ids start with the run's 8 bytes.
        let runs: HashSet<u64> = entries
            .iter()
            .map(|e| (e.events.first >> 64) as u64)
            .collect();
        let rows: Vec<(u128, u64)> = postgres
            .query("select encode(client_id, 'hex'), deliveries from events")
            .lines()
            .filter_map(|line| {
                let (id, deliveries) = line.split_once('|')?;
                Some((u128::from_str_radix(id, 16).ok()?, deliveries.parse().ok()?))
            })
            .filter(|(id, _)| runs.contains(&((id >> 64) as u64)))
            .collect();
        tally.rows = rows.len() as u64;
        tally.redelivered = rows.iter().map(|(_, d)| d - 1).sum();
        let stored: HashSet<u128> = rows.iter().map(|&(id, _)| id).collect();
        tally.missing = accepted.difference(&stored).count() as u64;
        tally.unexpected = stored
            .iter()
            .filter(|id| !accepted.contains(id) && !maybe.contains(id))
            .count() as u64;
        tally.report(scenario);
        tally
    }

    /// Print the row (and append it to the report file, if any).
    fn report(&self, scenario: &str) {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let row = format!(
            "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.requests,
            statuses.join(", "),
            self.no_answer,
            self.accepted,
            self.rows,
            self.missing,
            self.redelivered,
            self.unexpected
        );
        let kv_row = self.kv.row(scenario);
        println!(
            "| scenario | requests | answers | no answer | events accepted | rows | missing | redelivered | unexpected |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n{row}\n\n{KV_TABLE_HEAD}\n{kv_row}"
        );
        for note in &self.kv.notes {
            println!("kv: {note}");
        }
        if let Ok(path) = std::env::var("MILLRACE_CHAOS_REPORT") {
            for (path, row) in [(path.clone(), &row), (format!("{path}.kv"), &kv_row)] {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                writeln!(file, "{row}").unwrap();
            }
        }
    }

    /// Nothing acknowledged lost, nothing refused stored; the kv history
    /// consistent.
    fn assert_exact(&self) {
        assert!(self.accepted > 0, "some writes were accepted: {self:?}");
        assert_eq!(self.missing, 0, "acknowledged events lost: {self:?}");
        assert_eq!(self.unexpected, 0, "refused events stored: {self:?}");
        self.kv.assert_consistent();
    }

    /// Nothing acknowledged lost, and nothing refused stored but for
    /// writes whose answer was lost (a 503 after Redis took the write; 10
    /// events each); the kv history consistent.
    fn assert_acknowledged_kept(&self) {
        assert!(self.accepted > 0, "some writes were accepted: {self:?}");
        assert_eq!(self.missing, 0, "acknowledged events lost: {self:?}");
        assert!(
            self.unexpected <= 10 * self.answered(503),
            "only writes whose answer was lost may land: {self:?}"
        );
        self.kv.assert_consistent();
    }

    fn answered(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// This process (and the servers it starts) may hold `want` descriptors.
fn raise_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid, signal) };
}

#[test]
fn sigkill_under_load_then_restart_loses_no_acknowledged_write() {
    let stack = Stack::start(0, &[]);
    let mut server = stack.serve();
    let load = Load::start(stack.addr, 500, 6, "sigkill");
    thread::sleep(Duration::from_secs(2));
    server.signal(libc::SIGKILL);
    server.wait();
    thread::sleep(Duration::from_millis(500));
    let server = stack.serve();
    let tally = stack.settle(load, &server, "SIGKILL under load, restart");
    tally.assert_exact();
}

#[test]
fn sigterm_under_load_fails_readiness_first_and_loses_nothing() {
    let stack = Stack::start(0, &[]);
    let mut server = stack.serve();
    let load = Load::start(stack.addr, 500, 5, "sigterm");
    thread::sleep(Duration::from_secs(2));
    // A connection opened before the signal asks for readiness after it.
    let mut probe = server.connect();
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(50));
    write!(probe, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let ready = read_response(&mut probe);
    assert_eq!(ready.status, 503, "readiness fails while draining");
    assert!(server.wait().success(), "exit 0 after the drain");
    let server = stack.serve();
    let tally = stack.settle(load, &server, "SIGTERM under load, restart");
    tally.assert_exact();
}

#[test]
fn database_outage_grows_the_backlog_then_sheds_then_drains() {
    let stack = Stack::start(0, &["--max-backlog", "400"]);
    let server = stack.serve();
    let seconds = outage().as_secs() as u32 + 6;
    let load = Load::start(stack.addr, 200, seconds, "pg-outage");
    thread::sleep(Duration::from_secs(2));
    stack.postgres.pause();
    thread::sleep(outage());
    stack.postgres.resume();
    let tally = stack.settle(
        load,
        &server,
        &format!("PostgreSQL stopped {} s", outage().as_secs()),
    );
    tally.assert_exact();
    assert!(
        tally.answered(503) > 0,
        "the backlog cap was reached and shed: {tally:?}"
    );
}

#[test]
fn database_crash_during_commits_loses_and_duplicates_nothing() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve();
    let load = Load::start(stack.addr, 1000, 6, "pg-crash");
    // Crash it twice while batches are being committed.
    for _ in 0..2 {
        thread::sleep(Duration::from_secs(2));
        stack.postgres.crash();
        thread::sleep(Duration::from_millis(500));
        stack.postgres.resume();
    }
    let tally = stack.settle(load, &server, "PostgreSQL stop -m immediate, twice");
    tally.assert_exact();
}

/// The database core as its own process (`millrace writeback`), crashed by
/// its fault switch, then started again without it.
fn database_core_crash(fault: &str) {
    let stack = Stack::start(0, &[]);
    let server = stack.serve_front_door();
    let load = Load::start(stack.addr, 500, 4, fault);
    thread::sleep(Duration::from_secs(1));
    let crashed = stack.database_core(&[], Some(fault)).wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(crashed.signal(), Some(libc::SIGKILL), "{crashed}");
    let mut restarted = stack.database_core(&[], None);
    let finished = load.finish();
    stack.wait_written(&server, &finished);
    stack.drain(&server);
    signal(restarted.id() as i32, libc::SIGTERM);
    restarted.wait().unwrap();
    let tally = Tally::check(
        &format!("database core SIGKILL ({fault})"),
        &finished,
        &stack.postgres,
    );
    tally.assert_exact();
    if fault == "kill-after-commit" {
        // The committed batch came again, and the merge absorbed it.
        assert!(tally.redelivered > 0, "a batch was redelivered: {tally:?}");
    }
}

/// Two database cores share the partitions; one is killed (SIGKILL) under
/// load, and the other takes its pending entries over: every accepted event
/// lands once.
#[test]
fn two_database_cores_one_killed_under_load_lose_and_duplicate_nothing() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve_front_door();
    // Small batches, taken over after 1 s idle.
    let options = |name| {
        [
            "--consumer",
            name,
            "--claim-idle-ms",
            "1000",
            "--batch-rows",
            "50",
        ]
    };
    let mut survivor = stack.database_core(&options("db-b"), None);
    let load = Load::start(stack.addr, 500, 4, "two-cores-one-killed");
    thread::sleep(Duration::from_secs(1));
    // The second core joins mid-load, takes its share of the partitions'
    // entries, and is killed (SIGKILL, by its fault switch) after a commit
    // and before its acknowledgement: its batch is left pending under its
    // name, for the survivor to take over.
    let crashed = stack
        .database_core(&options("db-a"), Some("kill-after-commit"))
        .wait()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(crashed.signal(), Some(libc::SIGKILL), "{crashed}");
    let finished = load.finish();
    // The survivor alone drains the rest, the dead core's pending entries
    // included (taken over once idle for claim_idle_ms).
    stack.wait_written(&server, &finished);
    stack.drain(&server);
    signal(survivor.id() as i32, libc::SIGTERM);
    assert!(survivor.wait().unwrap().success());
    let tally = Tally::check(
        "two database cores, one SIGKILLed under load",
        &finished,
        &stack.postgres,
    );
    tally.assert_exact();
    assert!(
        tally.redelivered > 0,
        "the dead core's committed batch came again from the survivor: {tally:?}"
    );
}

#[test]
fn database_core_killed_before_its_insert_redelivers() {
    database_core_crash("kill-before-insert");
}

#[test]
fn database_core_killed_between_commit_and_ack_duplicates_nothing() {
    database_core_crash("kill-after-commit");
}

/// Kill the first master (SIGKILL) during writes; its replica takes over.
fn master_failover(ack_replicas: &str) -> Tally {
    let stack = Stack::start(
        1,
        &[
            "--ack-replicas",
            ack_replicas,
            "--ack-timeout-ms",
            "200",
            "--redis-command-timeout-ms",
            "500",
        ],
    );
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 8, &format!("failover-{ack_replicas}"));
    thread::sleep(Duration::from_secs(2));
    signal(stack.cluster.pid(stack.cluster.port), libc::SIGKILL);
    stack.settle(
        load,
        &server,
        &format!("Redis master SIGKILL, ack_replicas = {ack_replicas}"),
    )
}

#[test]
fn master_failover_with_ack_replicas_loses_no_acknowledged_write() {
    let tally = master_failover("1");
    assert!(tally.accepted > 0, "{tally:?}");
    assert_eq!(tally.missing, 0, "acknowledged events lost: {tally:?}");
    // The one documented exception: a write Redis took but no replica
    // confirmed in time is answered 503 ("queued but unconfirmed") and may
    // still land. Nothing else refused may.
    assert!(
        tally.unexpected <= 10 * tally.answered(503),
        "only unconfirmed writes may land: {tally:?}"
    );
    // Every acknowledged kv write kept, one winner per version. (A read
    // may see a write its replica had not confirmed yet, which the
    // failover then loses: counted as a stale read, documented.)
    assert_eq!(tally.kv.lost, 0, "{tally:?}");
    assert_eq!(tally.kv.refused_stored, 0, "{tally:?}");
    assert_eq!(tally.kv.double_wins, 0, "{tally:?}");
}

#[test]
fn master_failover_without_ack_replicas_is_measured() {
    // Replication is asynchronous: a write the master acknowledged and
    // never passed on is lost with it. The loss is measured, not asserted;
    // docs/reliability.md states it. Nothing refused may appear but a
    // write whose reply the kill cut off after the master had taken it
    // and passed it on (answered 503, then kept by the promoted replica).
    let tally = master_failover("0");
    assert!(tally.accepted > 0);
    assert!(
        tally.unexpected <= 10 * tally.answered(503),
        "only writes whose answer was lost may land: {tally:?}"
    );
    assert_eq!(tally.kv.double_wins, 0, "{tally:?}");
}

#[test]
fn resharding_during_writes_loses_nothing() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 8, "reshard");
    thread::sleep(Duration::from_secs(1));
    let table = stack.cluster.nodes_table();
    let id = |port: u16| table.iter().find(|n| n.1 == port).unwrap().0.clone();
    let output = Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", stack.cluster.port),
            "--cluster-from",
            &id(stack.cluster.port),
            "--cluster-to",
            &id(stack.cluster.port + 1),
            "--cluster-slots",
            "2000",
            "--cluster-yes",
            "--cluster-pipeline",
            "10",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let tally = stack.settle(load, &server, "2,000 slots resharded during writes");
    tally.assert_exact();
}

#[test]
fn network_faults_to_the_database_lose_and_duplicate_nothing() {
    let mut stack = Stack::start(0, &["--db-timeout-ms", "1500"]);
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], stack.postgres.port)),
        seed(),
    );
    let through_proxy = stack.postgres.url.replace(
        &format!(":{}/", stack.postgres.port),
        &format!(":{}/", proxy.addr.port()),
    );
    for arg in &mut stack.args {
        if *arg == stack.postgres.url {
            *arg = through_proxy.clone();
        }
    }
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 10, "db-network");
    thread::sleep(Duration::from_secs(1));
    proxy.set(Mode::Delay {
        base: Duration::from_millis(20),
        jitter: Duration::from_millis(30),
    });
    thread::sleep(Duration::from_secs(2));
    // Silent for longer than db_timeout_ms: the write times out, the
    // connection is dropped, the batch is written again.
    proxy.set(Mode::Stall);
    thread::sleep(Duration::from_secs(3));
    proxy.set(Mode::Pass);
    thread::sleep(Duration::from_secs(1));
    // Cut mid-stream, twice.
    for _ in 0..2 {
        proxy.cut();
        thread::sleep(Duration::from_millis(700));
    }
    let tally = stack.settle(
        load,
        &server,
        "PostgreSQL link: 20-50 ms latency, 3 s stall, 2 cuts",
    );
    tally.assert_exact();
    assert!(
        server.log().contains("timed out"),
        "the stall hit db_timeout_ms:\n{}",
        server.log()
    );
}

#[test]
fn abuse_leaves_legitimate_traffic_served_and_memory_bounded() {
    raise_open_files(8192);
    // Requests in the flood: unread answers to them would take tens of MiB.
    const FLOOD: usize = 300_000;
    let stack = Stack::start(
        0,
        &["--max-connections", "3000", "--header-timeout-ms", "4000"],
    );
    let server = stack.serve();
    let rss_start = server.rss_bytes();
    // Slowloris: 2,500 connections each holding half a request head.
    let slow: Vec<TcpStream> = (0..2500)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // The cap: 500 more fill it, the 100 beyond it are closed at once.
    // Then these go, to leave room for what follows.
    let over: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(300));
    drop(over);
    thread::sleep(Duration::from_millis(300));
    // A pipeline flood: FLOOD requests in one stream, read slowly.
    let mut flood = TcpStream::connect(server.addr).unwrap();
    flood.set_read_timeout(Some(PATIENCE)).unwrap();
    let writer = {
        let mut flood = flood.try_clone().unwrap();
        thread::spawn(move || {
            let request = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";
            let chunk: Vec<u8> = request.repeat(1000);
            for _ in 0..FLOOD / 1000 {
                if flood.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut answered = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut peak_rss = server.rss_bytes();
    let mut read_bytes = 0usize;
    let mut probe = server.connect();
    write!(probe, "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut probe).status,
        200,
        "served during the flood"
    );
    // Read the flood slowly until all its answers are in. Every
    // answer ends with its body; one split across reads is found in the
    // bytes carried over.
    const BODY: &[u8] = b"Hello, World!";
    let mut carried: Vec<u8> = Vec::new();
    while answered < FLOOD {
        let n = flood.read(&mut buf).expect("the flood is answered");
        assert!(n > 0, "the flood connection closed after {answered}");
        read_bytes += n;
        carried.extend_from_slice(&buf[..n]);
        answered += carried.windows(BODY.len()).filter(|w| *w == BODY).count();
        let keep = carried.len().min(BODY.len() - 1);
        carried.drain(..carried.len() - keep);
        if read_bytes % (1 << 20) < n {
            peak_rss = peak_rss.max(server.rss_bytes());
            thread::sleep(Duration::from_millis(1)); // A slow reader.
        }
    }
    writer.join().unwrap();
    peak_rss = peak_rss.max(server.rss_bytes());
    // Legitimate traffic, with the slow connections still open.
    let load = Load::start(stack.addr, 200, 3, "abuse");
    let tally = stack.settle(
        load,
        &server,
        "2,500 slowloris + 600 over the cap + 300,000-request flood",
    );
    let metrics = server.metrics();
    let refused = common::sample(
        &metrics,
        "millrace_shed_total{core=\"0\",cause=\"max_connections\"}",
    );
    tally.assert_exact();
    // Every legitimate request answered 202, but for those still in flight
    // when the run ended (one per connection at most).
    assert_eq!(
        tally.answered(202) + tally.no_answer,
        tally.requests as u64,
        "{tally:?}"
    );
    assert!(
        tally.no_answer <= 8,
        "legitimate requests answered: {tally:?}"
    );
    // 100 beyond the cap, fewer if slow heads timed out meanwhile.
    assert!(refused > 0, "connections over the cap refused: {refused}");
    let grown = peak_rss.saturating_sub(rss_start);
    // Without back-pressure the server would have read the whole flood and
    // held every answer: at least this much.
    let unbuffered = read_bytes;
    println!(
        "peak RSS {:.1} MiB ({:.1} MiB over the start; the flood's answers are {:.1} MiB), {refused} connections refused",
        peak_rss as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        unbuffered as f64 / 1048576.0
    );
    assert!(
        grown < unbuffered as u64 / 4,
        "memory stays bounded: grew {grown} bytes, the flood's answers are {unbuffered}"
    );
    // Every slow head got its 408 at header_timeout_ms, and was closed.
    let mut timed_out = 0;
    for mut s in slow {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        if common::try_read_response(&mut s).is_ok_and(|r| r.status == 408) {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 2500, "slowloris connections answered 408");
}

#[test]
fn open_loop_load_around_capacity_loses_nothing() {
    // 24 Redis commands in flight at most: the open-loop runs' 64
    // connections can exceed it, and beyond capacity they are shed.
    let stack = Stack::start(0, &["--max-redis-in-flight", "24"]);
    let server = stack.serve();
    // Capacity: closed loop on 16 connections.
    let finished = Load::start_with(stack.addr, None, 3, "capacity", 16, seed()).finish();
    let capacity = finished.report["requests_per_s"].as_f64().expect("a rate");
    stack.drain(&server);
    Tally::check(
        &format!("closed loop, 16 connections: capacity {capacity:.0} requests/s"),
        &finished,
        &stack.postgres,
    )
    .assert_exact();
    for percent in [50u32, 80, 100, 120] {
        let rate = (capacity * f64::from(percent) / 100.0).max(1.0) as u32;
        let name = format!("capacity-{percent}");
        let load = Load::start_with(
            stack.addr,
            Some(rate),
            3,
            &name,
            64,
            seed() + u64::from(percent),
        );
        let finished = load.finish();
        stack.drain(&server);
        let p99 = |key: &str| finished.report[key]["p99"].as_f64().unwrap_or(f64::NAN);
        let tally = Tally::check(
            &format!(
                "open loop at {percent}% ({rate}/s): p99 {:.2} ms from schedule, {:.2} ms from send",
                p99("latency_ms"),
                p99("uncorrected_latency_ms")
            ),
            &finished,
            &stack.postgres,
        );
        tally.assert_exact();
    }
}

#[test]
fn network_faults_to_redis_lose_no_acknowledged_write() {
    let mut stack = Stack::start(0, &["--redis-command-timeout-ms", "500"]);
    // A proxy in front of each master, announced by the cluster as the
    // node's address, so that every client reaches Redis through one.
    let masters = stack.cluster.seeds();
    let proxies: Vec<Proxy> = masters
        .iter()
        .zip(0u64..)
        .map(|(&node, i)| Proxy::start(node, seed() + i))
        .collect();
    for (node, proxy) in masters.iter().zip(&proxies) {
        let port = proxy.addr.port().to_string();
        let bus = (node.port() + 10_000).to_string();
        for (key, value) in [
            ("cluster-announce-bus-port", &bus),
            ("cluster-announce-port", &port),
        ] {
            let reply = stack
                .cluster
                .cli(node.port(), &["config", "set", key, value]);
            assert!(reply.contains("OK"), "{key}: {reply}");
        }
    }
    let deadline = Instant::now() + PATIENCE;
    while !proxies.iter().all(|p| {
        stack
            .cluster
            .cli(stack.cluster.port, &["cluster", "slots"])
            .lines()
            .any(|l| l.trim() == p.addr.port().to_string())
    }) {
        assert!(
            Instant::now() < deadline,
            "the cluster never announced the proxies"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let seeds: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let at = stack
        .args
        .iter()
        .position(|a| a == "--redis-seeds")
        .unwrap()
        + 1;
    stack.args[at] = seeds.join(",");
    let server = stack.serve();

    let load = Load::start(stack.addr, 500, 10, "redis-network");
    thread::sleep(Duration::from_secs(1));
    for proxy in &proxies {
        proxy.set(Mode::Delay {
            base: Duration::from_millis(5),
            jitter: Duration::from_millis(20),
        });
    }
    thread::sleep(Duration::from_secs(2));
    for proxy in &proxies {
        proxy.set(Mode::Pass);
    }
    // One master silent for longer than redis_command_timeout_ms: its
    // commands time out (503), the stuck connection is closed and made again.
    proxies[0].set(Mode::Stall);
    thread::sleep(Duration::from_millis(1500));
    proxies[0].set(Mode::Pass);
    thread::sleep(Duration::from_secs(1));
    // Every Redis connection cut mid-stream, twice.
    for _ in 0..2 {
        for proxy in &proxies {
            proxy.cut();
        }
        thread::sleep(Duration::from_millis(700));
    }
    let tally = stack.settle(
        load,
        &server,
        "Redis links: 5-25 ms latency, a master silent 1.5 s, 2 cuts",
    );
    // A write Redis took whose reply was lost (a timeout, a cut) is
    // answered 503 and may still land; it is written once all the same.
    tally.assert_acknowledged_kept();
}

/// The database core found no partition lost: its stream and group were
/// where it left them.
fn assert_no_loss_reported(server: &Server) {
    let stats: serde_json::Value = serde_json::from_slice(&server.get("/v1/stats").body).unwrap();
    assert_eq!(stats["queue_losses"], 0, "{stats}");
    assert!(!server.log().contains("was lost"), "{}", server.log());
    let metrics = server.metrics();
    assert_eq!(
        common::sample(&metrics, "millrace_writeback_queue_losses_total"),
        0
    );
}

#[test]
fn a_master_killed_and_restarted_from_its_aof_loses_nothing() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 8, "aof-restart");
    thread::sleep(Duration::from_secs(2));
    stack.cluster.restart(stack.cluster.port);
    let tally = stack.settle(
        load,
        &server,
        "Redis master SIGKILL, restarted from its AOF (no replica)",
    );
    tally.assert_acknowledged_kept();
    assert_no_loss_reported(&server);
}

#[test]
fn the_whole_cluster_restarted_at_once_loses_nothing() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 8, "cluster-restart");
    thread::sleep(Duration::from_secs(2));
    stack.cluster.restart_all();
    let tally = stack.settle(
        load,
        &server,
        "every Redis node SIGKILLed at once, restarted from its AOF",
    );
    tally.assert_acknowledged_kept();
    assert_no_loss_reported(&server);
}

#[test]
fn a_master_restarted_without_persistence_reports_the_loss_and_every_partition_drains() {
    // The documented unsafe setting, accepted.
    let stack = Stack::start_configured(
        0,
        &["--appendonly", "no"],
        &["--accept-unsafe-durability", "true"],
    );
    let server = stack.serve();
    let victim = stack.cluster.port;
    let before = Load::start(stack.addr, 500, 4, "no-aof-before");
    thread::sleep(Duration::from_secs(1));
    // Writes wait in the queue when the master goes: held there 3 s.
    let lock = hold_drain(&stack.postgres, 3);
    thread::sleep(Duration::from_secs(1));
    stack.cluster.restart(victim);
    lock.join().unwrap();
    let lost = stack.settle(
        before,
        &server,
        "Redis master SIGKILL, restarted empty (AOF off): writes before it",
    );
    // Said, counted, named.
    let log = server.log();
    assert!(log.contains("was lost"), "{log}");
    let metrics = server.metrics();
    let losses = common::sample(&metrics, "millrace_writeback_queue_losses_total");
    assert!(losses > 0, "{metrics}");
    let stats: serde_json::Value = serde_json::from_slice(&server.get("/v1/stats").body).unwrap();
    assert!(stats["queue_losses"].as_u64() > Some(0), "{stats}");
    // Whatever was lost was on the partitions of the master that restarted.
    let queue = millrace::writeback::queue::Queue::new(16);
    let table = stack.cluster.nodes_table();
    let victim_slots = &table.iter().find(|n| n.1 == victim).expect("the victim").4;
    let owner = |key: &str| {
        let stream = queue.stream(queue.partition_of(key.as_bytes()));
        slot_in(victim_slots, millrace::redis::slot::Slot::of(stream).get())
    };
    for key in &lost.kv.lost_keys {
        assert!(
            owner(key),
            "a write lost on a partition the restart did not touch: {key}"
        );
    }
    assert_eq!(lost.unexpected, 0, "{lost:?}");
    // After it, every partition drains, the lost ones included.
    let after = Load::start_with(stack.addr, Some(500), 4, "no-aof-after", 8, seed() + 1);
    let tally = stack.settle(
        after,
        &server,
        "Redis master SIGKILL, restarted empty (AOF off): writes after it",
    );
    tally.assert_exact();
}

/// Hold the database core's commits for `seconds`: a lock on the events
/// table that its COPY waits for (kv stays open to read-through).
fn hold_drain(postgres: &Postgres, seconds: u32) -> thread::JoinHandle<()> {
    let url = postgres.url.clone();
    let sql = format!(
        "begin; lock table events in access exclusive mode; select pg_sleep({seconds}); commit;"
    );
    thread::spawn(move || {
        let output = Command::new("psql")
            .args([&url, "-v", "ON_ERROR_STOP=1", "-c", &sql])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    })
}

/// Whether `slot` is in a `CLUSTER NODES` slot list (`0-5460 5461`).
fn slot_in(slots: &str, slot: u16) -> bool {
    slots.split_whitespace().any(|range| {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        match (low.parse::<u16>(), high.parse::<u16>()) {
            (Ok(low), Ok(high)) => (low..=high).contains(&slot),
            _ => false,
        }
    })
}

#[test]
fn redis_at_maxmemory_sheds_writes_keeps_reads_and_recovers_by_itself() {
    let stack = Stack::start(0, &[]);
    let server = stack.serve();
    let load = Load::start(stack.addr, 500, 16, "maxmemory");
    thread::sleep(Duration::from_secs(2));
    // The drain held 8 s (read-through reads kv, which stays open).
    let lock = hold_drain(&stack.postgres, 8);
    // Each master may hold 1 MiB more than it does now.
    let masters: Vec<u16> = stack.cluster.seeds().iter().map(|s| s.port()).collect();
    for &port in &masters {
        let info = stack.cluster.cli(port, &["info", "memory"]);
        let used: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        let limit = (used + (1 << 20)).to_string();
        assert!(
            stack
                .cluster
                .cli(port, &["config", "set", "maxmemory", &limit])
                .contains("OK")
        );
    }
    lock.join().unwrap();
    let tally = stack.settle(
        load,
        &server,
        "Redis at maxmemory (1 MiB of room) with the drain held 8 s",
    );
    tally.assert_acknowledged_kept();
    assert!(
        tally.answered(503) > 0,
        "maxmemory was reached and shed: {tally:?}"
    );
    // Reads kept working throughout: hits, and read-through for what was evicted.
    assert_eq!(tally.kv.unread, 0, "every read answered: {tally:?}");
    // Recovered by itself, maxmemory unchanged: writes are taken again.
    let mut stream = server.connect();
    for i in 0..20 {
        let body = format!("after {i}");
        write!(
            stream,
            "PUT /v1/kv/recovered{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, 202, "{}", response.text());
    }
}
