//! Per-operation times of the hot pieces, with criterion: the HTTP request
//! head parse, response encoding, RESP encode and decode, slot hashing,
//! FlatBuffers verification and reading, and a COPY row's binary encoding.
//!
//! Usage: cargo bench --bench micro [-- FILTER]

// criterion's macros generate the undocumented entry points.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use millrace::http::request::{HeadLimits, parse_head};
use millrace::http::{DateHeader, FixedResponse, ResponseWriter, Status};
use millrace::payload::{BatchLimits, Event, encode_event_batch, verify_event_batch};
use millrace::redis::resp::{Protocol, decode, encode_command};
use millrace::redis::slot::Slot;
use tokio_postgres::types::{ToSql, Type};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line_bytes: 8192,
    max_header_bytes: 8192,
    max_headers: 64,
};

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    let wrk = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
    group.bench_function("parse GET /plaintext (wrk)", |b| {
        b.iter(|| parse_head(black_box(wrk), &LIMITS).unwrap())
    });
    // As may_minihttp calls it: 16 fields, left uninitialised.
    group.bench_function("httparse: parse GET /plaintext (wrk), for scale", |b| {
        b.iter(|| {
            let mut fields = [const { std::mem::MaybeUninit::uninit() }; 16];
            let mut request = httparse::Request::new(&mut []);
            request
                .parse_with_uninit_headers(black_box(wrk), &mut fields)
                .unwrap()
                .unwrap()
        })
    });
    let browser = b"GET /v1/kv/user%3A42?fields=all HTTP/1.1\r\nHost: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: application/json, text/plain, */*\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f9a8c7e2b1d0f3a6e5c9b8a7d6f5e4c; theme=dark\r\nConnection: keep-alive\r\n\r\n";
    group.bench_function("parse a browser GET (7 fields)", |b| {
        b.iter(|| parse_head(black_box(browser), &LIMITS).unwrap())
    });
    let date = DateHeader::new();
    const HELLO: FixedResponse = FixedResponse::new(
        Status::Ok,
        b"Content-Type: text/plain\r\nContent-Length: 13\r\n",
        b"Hello, World!",
    );
    let mut out = Vec::with_capacity(4096);
    group.bench_function("encode a fixed response (/plaintext)", |b| {
        b.iter(|| {
            out.clear();
            let _ = ResponseWriter::keep_alive(&mut out, &date).send_fixed(black_box(&HELLO));
        })
    });
    let value = [b'v'; 512];
    group.bench_function("encode a 512-byte value response", |b| {
        b.iter(|| {
            out.clear();
            let _ = ResponseWriter::keep_alive(&mut out, &date).send(
                Status::Ok,
                "application/octet-stream",
                black_box(&value),
            );
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let mut group = c.benchmark_group("redis");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    let value = [b'v'; 100];
    group.bench_function("encode SET key 100-byte value", |b| {
        b.iter(|| {
            out.clear();
            encode_command(&mut out, black_box(&[&b"SET"[..], b"user:42", &value]));
        })
    });
    let reply = [b"$100\r\n".as_slice(), &value, b"\r\n"].concat();
    group.bench_function("decode a 100-byte bulk reply", |b| {
        b.iter(|| decode(Protocol::Resp2, black_box(&reply)).unwrap().unwrap())
    });
    let array = b"*2\r\n$15\r\n1700000000000-0\r\n:42\r\n";
    group.bench_function("decode a 2-element array reply", |b| {
        b.iter(|| decode(Protocol::Resp2, black_box(array)).unwrap().unwrap())
    });
    group.bench_function("slot of a 16-byte key", |b| {
        b.iter(|| Slot::of(black_box(b"user:1234567890a")))
    });
    group.bench_function("slot of a hash-tagged key", |b| {
        b.iter(|| Slot::of(black_box(b"{millrace:wb:7}kv:user:42")))
    });
    group.finish();
}

fn payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("flatbuffers");
    let events: Vec<Event> = (0..100u8)
        .map(|n| Event {
            client_id: [n; 16],
            key: format!("user:{n}"),
            kind: 1,
            timestamp_us: 1_700_000_000_000_000 + i64::from(n),
            payload: vec![n; 64],
        })
        .collect();
    let batch = encode_event_batch(&events);
    let limits = BatchLimits::default();
    group.throughput(Throughput::Elements(100));
    group.bench_function("verify a batch of 100 events", |b| {
        b.iter(|| verify_event_batch(black_box(&batch), &limits).unwrap())
    });
    group.bench_function("verify and read every field of 100 events", |b| {
        b.iter(|| {
            let batch = verify_event_batch(black_box(&batch), &limits).unwrap();
            let mut sum = 0i64;
            for event in batch.events() {
                sum += event.timestamp_us()
                    + i64::from(event.kind())
                    + event.key().len() as i64
                    + event.payload().map_or(0, |p| p.len()) as i64
                    + i64::from(event.client_id().0[0]);
            }
            sum
        })
    });
    group.finish();
}

fn copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy");
    group.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(1 << 20);
    let key: &[u8] = b"user:42";
    let value: Option<&[u8]> = Some(&[b'v'; 100]);
    let (ms, seq) = (1_700_000_000_000i64, 7i64);
    // What binary COPY writes per kv row: a field count, then each field's
    // length and bytes, as tokio-postgres's BinaryCopyInWriter does.
    group.bench_function("encode a kv row (bytea, bytea, int8, int8)", |b| {
        b.iter(|| {
            if buf.len() > (1 << 19) {
                buf.clear();
            }
            buf.put_i16(4);
            let fields: [(&(dyn ToSql + Sync), Type); 4] = [
                (&key, Type::BYTEA),
                (&value, Type::BYTEA),
                (&ms, Type::INT8),
                (&seq, Type::INT8),
            ];
            for (field, ty) in fields {
                let at = buf.len();
                buf.put_i32(0);
                match black_box(field).to_sql_checked(&ty, &mut buf).unwrap() {
                    tokio_postgres::types::IsNull::Yes => {
                        buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes())
                    }
                    tokio_postgres::types::IsNull::No => {
                        let len = (buf.len() - at - 4) as i32;
                        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                    }
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, http, redis, payload, copy);
criterion_main!(benches);
