//! Usage: peer-axum-redis LISTEN SEEDS
//! POST /v1/events as millrace serves it (verify the FlatBuffers batch,
//! queue it with the same capped XADD script, 202 with the count), on axum
//! and redis-rs's ClusterConnection, on one current-thread tokio runtime.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use millrace::payload::{BatchLimits, encode_accepted, verify_event_batch};
use millrace::writeback::queue::{Queue, Record};

#[derive(Clone)]
struct Peer {
    redis: redis::cluster_async::ClusterConnection,
    queue: std::sync::Arc<Queue>,
}

/// The same cap as millrace's default: 1,000,000 entries over 16 partitions.
const CAP_PER_PARTITION: &str = "62500";

async fn events(State(peer): State<Peer>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/x-flatbuffers") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/x-flatbuffers\n").into_response();
    }
    if let Err(why) = verify_event_batch(&body, &BatchLimits::default()) {
        return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    }
    let record = match Record::events(body.to_vec()) {
        Ok(record) => record,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let count = record.rows().to_string();
    let args = peer.queue.append_capped_args(&record, CAP_PER_PARTITION, &count);
    let mut command = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let mut connection = peer.redis.clone();
    match command.query_async::<redis::Value>(&mut connection).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/x-flatbuffers")],
            encode_accepted(record.rows() as u32),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{e}\n")).into_response(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(seeds)) = (args.next(), args.next()) else {
        eprintln!("usage: peer-axum-redis LISTEN SEEDS");
        std::process::exit(2);
    };
    let seeds: Vec<String> = seeds.split(',').map(|s| format!("redis://{s}/")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let client = redis::cluster::ClusterClient::new(seeds).unwrap();
        let redis = client.get_async_connection().await.unwrap();
        let peer = Peer {
            redis,
            queue: std::sync::Arc::new(Queue::new(16)),
        };
        let app = axum::Router::new().route("/v1/events", post(events)).with_state(peer);
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        eprintln!("listening on {listen}");
        axum::serve(listener, app).await.unwrap();
    });
}
