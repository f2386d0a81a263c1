//! Decoding RESP replies from a plain byte slice, as a connection's receive
//! buffer holds them, three ways redis-protocol allows:
//!
//! - `decode`: owned frames, every value copied out;
//! - `decode_bytes`: zero-copy, but over `Bytes`, so the received slice must
//!   first be copied into one (once per read here, the cheapest it can be);
//! - `decode_range`: ranges into the slice itself, nothing copied (what
//!   millrace's client uses).
//!
//! Usage: cargo bench --bench resp_decode [-- VALUE_BYTES]
//! Prints nanoseconds per reply for each, for GET replies of VALUE_BYTES
//! (default 100), 1,000 replies per read.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use redis_protocol::resp2::decode::{decode, decode_bytes, decode_range};

const REPLIES: usize = 1000;
const ROUNDS: usize = 2000;

fn main() {
    let value_bytes: usize = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map_or(100, |a| a.parse().expect("VALUE_BYTES"));
    let mut read = Vec::new();
    for _ in 0..REPLIES {
        read.extend_from_slice(format!("${value_bytes}\r\n").as_bytes());
        read.extend(std::iter::repeat_n(b'v', value_bytes));
        read.extend_from_slice(b"\r\n");
    }
    let read = read.as_slice();
    let report = |name: &str, started: Instant| {
        let ns = started.elapsed().as_nanos() as f64 / (ROUNDS * REPLIES) as f64;
        println!("{name:<34} {ns:8.1} ns per reply ({value_bytes}-byte values)");
    };

    let started = Instant::now();
    for _ in 0..ROUNDS {
        let mut pos = 0;
        while pos < read.len() {
            let (frame, len) = decode(black_box(&read[pos..])).unwrap().unwrap();
            black_box(frame);
            pos += len;
        }
    }
    report("decode (owned: values copied)", started);

    let started = Instant::now();
    for _ in 0..ROUNDS {
        let mut bytes = Bytes::copy_from_slice(black_box(read));
        while !bytes.is_empty() {
            let (frame, len) = decode_bytes(&bytes).unwrap().unwrap();
            black_box(frame);
            bytes = bytes.slice(len..);
        }
    }
    report("decode_bytes (read copied once)", started);

    let started = Instant::now();
    for _ in 0..ROUNDS {
        let mut pos = 0;
        while pos < read.len() {
            let (frame, len) = decode_range(black_box(&read[pos..])).unwrap().unwrap();
            black_box(frame);
            pos += len;
        }
    }
    report("decode_range (in place)", started);
}
