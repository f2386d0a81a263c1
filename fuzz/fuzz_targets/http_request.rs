//! Arbitrary bytes into an HTTP connection, whole and in pieces.
//!
//! Properties: nothing panics; what is answered does not depend on how the
//! bytes were split across reads (interim `100 Continue` responses aside,
//! which only a missing body triggers); the connection never holds more than
//! the input; no request a handler sees has a fragment (`#`) in its target
//! or a `Host` with a space, a slash or user-info.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::http::request::HeadLimits;
use millrace::http::{
    DateHeader, HttpConnection, HttpEnv, Limits, Request, ResponseWriter, Sent, Service, Status,
};

/// Answers with what it was asked, so differences show.
struct Echo;

impl Service for Echo {
    fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
        assert!(!request.path.contains(&b'#'), "a fragment reached a handler");
        assert!(!request.query.is_some_and(|q| q.contains(&b'#')));
        if let Some(host) = request.header("host") {
            assert!(
                !host.iter().any(|b| matches!(b, b' ' | b'\t' | b'/' | b'@')),
                "a malformed Host reached a handler"
            );
        }
        let mut body = Vec::with_capacity(request.path.len() + request.body.len() + 1);
        body.extend_from_slice(request.path);
        body.push(b'|');
        body.extend_from_slice(request.body);
        response.send(Status::Ok, "text/plain", &body)
    }
}

const LIMITS: Limits = Limits {
    head: HeadLimits {
        max_request_line_bytes: 256,
        max_header_bytes: 512,
        max_headers: 8,
    },
    max_body_bytes: 1024,
    max_pipeline_depth: 3,
    max_connection_requests: None,
};

/// Feed `pieces` in order, sending responses as a reactor would; return all output.
fn run(pieces: &[&[u8]], date: &DateHeader) -> Vec<u8> {
    let env = HttpEnv {
        limits: &LIMITS,
        date,
        max_out_bytes: usize::MAX,
    };
    let mut conn = HttpConnection::new();
    let mut out = Vec::new();
    for piece in pieces {
        let mut written = conn.receive(piece, &mut Echo, &mut out, &env);
        // Drain the pipeline as sends completing would.
        while written > 0 {
            conn.responses_sent(written);
            written = conn.resume(&mut Echo, &mut out, &env);
        }
        assert_eq!(conn.unsent(), 0);
    }
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut answers = Vec::with_capacity(out.len());
    let mut rest = out.as_slice();
    while !rest.is_empty() {
        if rest.starts_with(CONTINUE) {
            rest = &rest[CONTINUE.len()..];
        } else {
            answers.push(rest[0]);
            rest = &rest[1..];
        }
    }
    answers
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the rest is the traffic.
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let date = DateHeader::new();
    let whole = run(&[input], &date);
    let size = usize::from(split % 16) + 1;
    let pieces: Vec<&[u8]> = input.chunks(size).collect();
    let split = run(&pieces, &date);
    assert_eq!(whole, split, "answers depend on how the input was split ({size}-byte reads)");
});
