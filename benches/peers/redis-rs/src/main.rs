//! Usage: peer-redis-rs SEEDS [--requests N] [--depth D] [--value-bytes B] [--keys K]
//! SET and GET alternately on random keys, D commands in flight on one
//! multiplexed cluster connection, on a current-thread runtime. Prints one
//! JSON line like benches/redis_client.rs.

use std::time::Instant;

use futures::StreamExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: Vec<String> = args
        .next()
        .expect("usage: peer-redis-rs SEEDS [--requests N] [--depth D] [--value-bytes B] [--keys K]")
        .split(',')
        .map(|s| format!("redis://{s}/"))
        .collect();
    let (mut requests, mut depth, mut value_bytes, mut keys) = (1_000_000u64, 800usize, 3usize, 100_000u64);
    while let Some(flag) = args.next() {
        let value = args.next().expect("a value after each flag");
        match flag.as_str() {
            "--requests" => requests = value.parse().unwrap(),
            "--depth" => depth = value.parse().unwrap(),
            "--value-bytes" => value_bytes = value.parse().unwrap(),
            "--keys" => keys = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let client = redis::cluster::ClusterClient::new(seeds).unwrap();
        let connection = client.get_async_connection().await.unwrap();
        let value = vec![b'x'; value_bytes];
        let names: Vec<String> = (0..keys).map(|k| format!("key:{k:012}")).collect();
        // The same key sequence as benches/redis_client.rs (SplitMix64, seed 1).
        let mut state = 1u64;
        let mut next_key = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((u128::from(z ^ (z >> 31)) * u128::from(keys)) >> 64) as usize
        };
        // Commands are built before the clock starts: only sending them is timed.
        let commands: Vec<redis::Cmd> = (0..requests)
            .map(|i| {
                let key = &names[next_key()];
                if i % 2 == 0 {
                    redis::cmd("SET").arg(key).arg(&value[..]).to_owned()
                } else {
                    redis::cmd("GET").arg(key).to_owned()
                }
            })
            .collect();
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let errors = futures::stream::iter(commands)
            .map(|command| {
                let mut connection = connection.clone();
                async move { command.query_async::<redis::Value>(&mut connection).await.is_err() }
            })
            .buffer_unordered(depth)
            .fold(0u64, |errors, failed| async move { errors + u64::from(failed) })
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        println!(
            "{{\"requests\": {requests}, \"errors\": {errors}, \"depth\": {depth}, \"seconds\": {seconds:.3}, \"requests_per_second\": {:.0}, \"cpu_seconds\": {cpu:.3}}}",
            requests as f64 / seconds
        );
    });
}

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
