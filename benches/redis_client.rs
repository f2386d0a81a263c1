//! millrace's Redis Cluster client doing SET and GET, pipelined, on the
//! calling thread: the client half of scripts/bench-redis.sh.
//!
//! Usage: cargo bench --bench redis_client -- SEEDS [--requests N] [--depth D] [--value-bytes B] [--keys K]
//! SEEDS is host:port[,host:port...]. Prints one JSON line: requests, seconds,
//! requests per second, and the process's CPU seconds (user + system).

use std::net::SocketAddr;
use std::time::Instant;

use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::Reply;
use millrace::rng::Rng;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(seeds) = args.next() else {
        // `cargo bench` runs every bench; this one needs a cluster.
        println!("redis_client: skipped; it needs SEEDS (scripts/bench-redis.sh runs it)");
        return;
    };
    let seeds: Vec<SocketAddr> = seeds
        .split(',')
        .map(|s| s.parse().expect("a seed host:port"))
        .collect();
    let (mut requests, mut depth, mut value_bytes, mut keys) =
        (1_000_000u64, 800usize, 3usize, 100_000u64);
    while let Some(flag) = args.next() {
        let value = args.next().expect("a value after each flag");
        match flag.as_str() {
            "--requests" => requests = value.parse().expect("--requests N"),
            "--depth" => depth = value.parse().expect("--depth D"),
            "--value-bytes" => value_bytes = value.parse().expect("--value-bytes B"),
            "--keys" => keys = value.parse().expect("--keys K"),
            other => panic!("unknown flag {other}"),
        }
    }
    let mut client = Client::connect(ClusterConfig::new(seeds)).expect("connect");
    let value = vec![b'x'; value_bytes];
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|k| format!("key:{k:012}").into_bytes())
        .collect();
    let mut rng = Rng::new(1);
    let mut errors = 0u64;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    client
        .pipeline(
            requests,
            depth,
            |i| {
                let key = &names[rng.below(keys) as usize];
                if i % 2 == 0 {
                    Command::set(key, &value)
                } else {
                    Command::get(key)
                }
            },
            |_, result| {
                if !matches!(result, Ok(Reply::Status(_) | Reply::Bulk(_) | Reply::Nil)) {
                    errors += 1;
                }
            },
        )
        .expect("the ring failed");
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{{\"requests\": {requests}, \"errors\": {errors}, \"depth\": {depth}, \"seconds\": {seconds:.3}, \"requests_per_second\": {:.0}, \"cpu_seconds\": {cpu:.3}}}",
        requests as f64 / seconds
    );
}

/// This process's user + system CPU time so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
