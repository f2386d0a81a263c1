//! Write-back throughput: rows per second through the database core, against
//! the same rows written straight to PostgreSQL with binary COPY, and with
//! multi-row INSERT statements of 5,000 rows. The write-back half of
//! scripts/bench-writeback.sh.
//!
//! Usage: cargo bench --bench writeback -- SEEDS POSTGRES_URL [--rows N]
//! Prints one JSON line with rows per second for each way.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, atomic::Ordering};
use std::time::{Duration, Instant};

use millrace::payload;
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::routes;
use millrace::writeback::db;
use millrace::writeback::drain::{self, WritebackConfig};
use millrace::writeback::queue::{Caps, Queue};
use millrace::writeback::table::Tables;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client as Postgres, NoTls};

/// Rows per transaction (direct COPY) and per statement (INSERT).
const BATCH: usize = 5000;

struct Event {
    client_id: Vec<u8>,
    key: Vec<u8>,
    kind: i32,
    timestamp_us: i64,
    payload: Vec<u8>,
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(seeds), Some(url)) = (args.next(), args.next()) else {
        println!(
            "writeback: skipped; it needs SEEDS and POSTGRES_URL (scripts/bench-writeback.sh runs it)"
        );
        return;
    };
    let mut rows = 200_000usize;
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--rows", Some(n)) => rows = n.parse().expect("--rows N"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    let seeds: Vec<SocketAddr> = seeds
        .split(',')
        .map(|s| s.parse().expect("host:port"))
        .collect();
    let events: Vec<Event> = (0..rows as u64)
        .map(|n| {
            let mut client_id = vec![0u8; 16];
            client_id[8..].copy_from_slice(&n.to_be_bytes());
            Event {
                client_id,
                key: format!("user:{}", n % 10_000).into_bytes(),
                kind: (n % 7) as i32,
                timestamp_us: 1_700_000_000_000_000 + n as i64,
                payload: vec![b'p'; 64],
            }
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (copy, insert) = runtime.block_on(async {
        let (postgres, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        postgres
            .batch_execute(db::CORE_SCHEMA)
            .await
            .expect("apply the schema");
        for table in routes::tables() {
            postgres
                .batch_execute(table.schema())
                .await
                .expect("apply the tables' schemas");
        }
        postgres
            .batch_execute(
                "drop table if exists bench_copy, bench_insert;
                 truncate events;
                 create table bench_copy (like events including all);
                 create table bench_insert (like events including all);",
            )
            .await
            .expect("create the comparison tables");
        let copy = direct_copy(&postgres, &events).await;
        let insert = multi_row_insert(&postgres, &events).await;
        postgres
            .batch_execute("drop table bench_copy, bench_insert")
            .await
            .unwrap();
        (copy, insert)
    });

    // The database core: queue the rows (not timed), then drain them.
    let mut client = Client::connect(ClusterConfig::new(seeds.clone())).expect("connect to Redis");
    let partitions = 16;
    let queue = Queue::new(partitions);
    // As the API queues them: a post of 100 events is one stream entry.
    for chunk in events.chunks(10_000) {
        let commands = chunk
            .chunks(100)
            .map(|post| {
                let batch: Vec<payload::Event> = post
                    .iter()
                    .map(|e| payload::Event {
                        client_id: e.client_id.as_slice().try_into().unwrap(),
                        key: String::from_utf8(e.key.clone()).unwrap(),
                        kind: e.kind,
                        timestamp_us: e.timestamp_us,
                        payload: e.payload.clone(),
                    })
                    .collect();
                queue.append(
                    &routes::events::record(payload::encode_event_batch(&batch)).unwrap(),
                    false,
                    Caps::UNLIMITED,
                )
            })
            .collect();
        for reply in client.execute(commands) {
            assert!(matches!(reply, Ok(OwnedReply::Bulk(_))), "{reply:?}");
        }
    }
    let tables = Tables::new(routes::tables()).unwrap();
    let mut config = WritebackConfig::new(ClusterConfig::new(seeds), url.clone(), tables);
    config.partitions = partitions;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || drain::run(&config, &stop, None))
    };
    loop {
        let lengths = client.execute(
            (0..partitions)
                .map(|p| Command::new(&[&b"XLEN"[..], queue.stream(p)], Some(1)))
                .collect(),
        );
        if lengths.iter().all(|l| l == &Ok(OwnedReply::Integer(0))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let core_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().expect("the database core failed");

    let per_second = |seconds: f64| (rows as f64 / seconds).round();
    println!(
        "{{\"rows\": {rows}, \"core_rows_per_second\": {}, \"direct_copy_rows_per_second\": {}, \"insert_rows_per_second\": {}}}",
        per_second(core_seconds),
        per_second(copy),
        per_second(insert)
    );
}

/// Binary COPY straight into a copy of the events table, 5,000 rows per transaction.
async fn direct_copy(postgres: &Postgres, events: &[Event]) -> f64 {
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        postgres.batch_execute("begin").await.unwrap();
        let sink = postgres
            .copy_in(
                "copy bench_copy (client_id, key, kind, timestamp_us, payload) from stdin binary",
            )
            .await
            .unwrap();
        let mut writer = pin!(BinaryCopyInWriter::new(
            sink,
            &[
                Type::BYTEA,
                Type::BYTEA,
                Type::INT4,
                Type::INT8,
                Type::BYTEA
            ]
        ));
        for e in chunk {
            let row: [&(dyn ToSql + Sync); 5] =
                [&e.client_id, &e.key, &e.kind, &e.timestamp_us, &e.payload];
            writer.as_mut().write(&row).await.unwrap();
        }
        writer.finish().await.unwrap();
        postgres.batch_execute("commit").await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// INSERT statements of 5,000 rows each, one per transaction.
async fn multi_row_insert(postgres: &Postgres, events: &[Event]) -> f64 {
    let statement = postgres.prepare(&insert_sql(BATCH)).await.unwrap();
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(BATCH * 5);
        for e in chunk {
            params.extend_from_slice(&[&e.client_id, &e.key, &e.kind, &e.timestamp_us, &e.payload]);
        }
        if chunk.len() == BATCH {
            postgres.execute(&statement, &params).await.unwrap();
        } else {
            // The last, shorter chunk: a statement of its own length.
            let short = insert_sql(chunk.len());
            postgres.execute(&short, &params).await.unwrap();
        }
    }
    started.elapsed().as_secs_f64()
}

/// `INSERT ... VALUES` with placeholders for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "insert into bench_insert (client_id, key, kind, timestamp_us, payload) values ",
    );
    for row in 0..rows {
        let base = row * 5;
        if row > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${},${},${},${},${})",
            base + 1,
            base + 2,
            base + 3,
            base + 4,
            base + 5
        ));
    }
    sql
}
