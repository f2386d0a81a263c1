//! Usage: peer-axum-redis LISTEN SEEDS
//! The write and read paths as millrace serves them, on axum and redis-rs's
//! ClusterConnection, on one current-thread tokio runtime:
//! - POST /v1/events: verify the FlatBuffers batch, queue it with the same
//!   capped XADD script, 202 with the count;
//! - PUT /v1/kv/{key}: the same script that caches the value and queues
//!   the write, 202 with the version;
//! - GET /v1/kv/{key}: the cache entry, 200 with the value or 404 (no
//!   read-through: the benchmark reads cached keys).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use millrace::payload::{BatchLimits, encode_accepted, verify_event_batch};
use millrace::routes::events;
use millrace::writeback::queue::{Cached, Caps, Queue};

#[derive(Clone)]
struct Peer {
    redis: redis::cluster_async::ClusterConnection,
    queue: std::sync::Arc<Queue>,
}

/// The same caps as millrace's defaults: 1,000,000 entries and 256 MiB
/// over 16 partitions.
const CAPS: Caps = Caps {
    entries: 62_500,
    bytes: 16 << 20,
};

async fn events(State(peer): State<Peer>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/x-flatbuffers") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/x-flatbuffers\n").into_response();
    }
    if let Err(why) = verify_event_batch(&body, &BatchLimits::default()) {
        return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    }
    let (key, count) = match events::record(body.to_vec()) {
        Ok(record) => (record.key, record.rows),
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let call = peer.queue.append_record(events::TABLE, &key, &body, count, CAPS);
    let args = call.args();
    let mut command = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let mut connection = peer.redis.clone();
    match command.query_async::<redis::Value>(&mut connection).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/x-flatbuffers")],
            encode_accepted(count),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{e}\n")).into_response(),
    }
}

/// The value limit millrace applies by default.
const MAX_VALUE_BYTES: usize = 65_536;

async fn put(State(peer): State<Peer>, Path(key): Path<String>, body: Bytes) -> Response {
    if body.len() > MAX_VALUE_BYTES {
        return (StatusCode::PAYLOAD_TOO_LARGE, "value larger than max_value_bytes\n").into_response();
    }
    let cache = peer.queue.cache_key("kv", key.as_bytes());
    let call = peer.queue.put("kv", key.as_bytes(), &body, &cache, CAPS);
    let args = call.args();
    let mut command = redis::cmd("EVAL");
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let mut connection = peer.redis.clone();
    match command.query_async::<redis::Value>(&mut connection).await {
        Ok(redis::Value::BulkString(version)) => {
            let body = [&b"{\"version\":\""[..], &version, b"\"}"].concat();
            (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(other) => (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{other:?}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{e}\n")).into_response(),
    }
}

async fn read(State(peer): State<Peer>, Path(key): Path<String>) -> Response {
    let mut connection = peer.redis.clone();
    let entry: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
        .arg(peer.queue.cache_key("kv", key.as_bytes()))
        .query_async(&mut connection)
        .await;
    match entry.as_ref().map(|e| Cached::from_entry(e.as_deref())) {
        Ok(Ok(Cached::Value { value, .. })) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], value.to_vec()).into_response()
        }
        Ok(Ok(Cached::Absent { .. } | Cached::Missing)) => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
        Ok(Err(why)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response(),
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
        let app = axum::Router::new()
            .route("/v1/events", post(events))
            .route("/v1/kv/{key}", get(read).put(put))
            .with_state(peer);
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        eprintln!("listening on {listen}");
        axum::serve(listener, app).await.unwrap();
    });
}
