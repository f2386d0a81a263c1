//! The HTTP layer's cost per request, without sockets: parsing a request
//! head, and a whole pipelined batch answered by a plaintext service (parse,
//! route, response encode), as the reactor runs it for each receive.
//!
//! Usage: cargo bench --bench http [-- DEPTH]
//! Prints nanoseconds per request for `GET /plaintext` as wrk sends it, in
//! batches of DEPTH pipelined requests (default 16).

use std::hint::black_box;
use std::time::Instant;

use millrace::http::request::{HeadLimits, parse_head};
use millrace::http::{
    DateHeader, FixedResponse, HttpConnection, HttpEnv, Limits, Rejection, Request, ResponseWriter,
    Sent, Service, Status,
};

const REQUEST: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const REQUESTS: usize = 2_000_000;

const HELLO: FixedResponse = FixedResponse::new(
    Status::Ok,
    b"Content-Type: text/plain\r\nContent-Length: 13\r\n",
    b"Hello, World!",
);

/// Answers every request as `GET /plaintext` does.
struct Plaintext;

impl Service for Plaintext {
    fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
        if request.path == b"/plaintext" {
            response.send_fixed(&HELLO)
        } else {
            response.reject(Rejection::new(Status::NotFound, "no such route"))
        }
    }

    fn reject(&mut self, rejection: Rejection, response: ResponseWriter<'_>) -> Sent {
        response.reject(rejection)
    }
}

fn main() {
    let depth: usize = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map_or(16, |a| a.parse().expect("DEPTH"));
    let limits = Limits {
        head: HeadLimits {
            max_request_line_bytes: 8192,
            max_header_bytes: 8192,
            max_headers: 64,
        },
        max_body_bytes: 1 << 20,
        max_pipeline_depth: 1024,
        max_connection_requests: None,
    };
    let report = |name: &str, started: Instant| {
        let ns = started.elapsed().as_nanos() as f64 / REQUESTS as f64;
        println!("{name:<44} {ns:7.1} ns per request");
    };

    let started = Instant::now();
    for _ in 0..REQUESTS {
        black_box(parse_head(black_box(REQUEST), &limits.head).unwrap());
    }
    report("parse_head", started);

    let batch = REQUEST.repeat(depth);
    let date = DateHeader::new();
    let env = HttpEnv {
        limits: &limits,
        date: &date,
        max_out_bytes: usize::MAX,
    };
    let mut http = HttpConnection::new();
    let mut out = Vec::new();
    let started = Instant::now();
    for _ in 0..REQUESTS / depth {
        out.clear();
        let written = http.receive(black_box(&batch), &mut Plaintext, &mut out, &env);
        http.responses_sent(written);
        black_box(&out);
    }
    report(
        &format!("receive, {depth} pipelined, plaintext answers"),
        started,
    );
}
