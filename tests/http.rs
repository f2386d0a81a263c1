//! HTTP/1.1 as clients send it, over real sockets to the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, closed_by_server, get_on, read_response, sample};

/// The three routes a pipelining test cycles through, with what each answers.
const CYCLE: [(&str, u16, &str); 3] = [
    ("/plaintext", 200, "Hello, World!"),
    ("/livez", 200, "live\n"),
    ("/missing", 404, "no such route\n"),
];

fn pipelined_requests(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", CYCLE[i % 3].0).into_bytes())
        .collect()
}

fn assert_cycle_answers(stream: &mut impl Read, count: usize) {
    for i in 0..count {
        let response = read_response(stream);
        let (_, status, body) = CYCLE[i % 3];
        assert_eq!(
            (response.status, response.text().as_str()),
            (status, body),
            "response {i}"
        );
    }
}

#[test]
fn plaintext_follows_techempower_rules() {
    let server = Server::start(&[]);
    let response = server.get("/plaintext");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "Hello, World!");
    assert_eq!(response.header("Content-Type"), Some("text/plain"));
    assert_eq!(response.header("Content-Length"), Some("13"));
    assert_eq!(response.header("Server"), Some("millrace"));
    let date = response.header("Date").unwrap();
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
}

#[test]
fn hundred_pipelined_requests_in_one_write_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream.write_all(&pipelined_requests(100)).unwrap();
    assert_cycle_answers(&mut stream, 100);
}

#[test]
fn the_same_bytes_one_byte_per_write_get_the_same_answers() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    let bytes = pipelined_requests(12);
    for byte in &bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    assert_cycle_answers(&mut stream, 12);
}

#[test]
fn keep_alive_reuses_one_connection() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    for _ in 0..5 {
        stream
            .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), None);
    }
    let metrics = server.metrics();
    // This connection only (the metrics come from the admin listener).
    assert_eq!(
        sample(&metrics, "millrace_connections_accepted_total{core=\"0\"}"),
        1
    );
    assert_eq!(
        sample(
            &metrics,
            "millrace_http_requests_total{core=\"0\",route=\"plaintext\",status=\"200\"}"
        ),
        5
    );
}

#[test]
fn http10_closes_by_default_and_keeps_alive_when_asked() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /plaintext HTTP/1.0\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream));

    let mut stream = server.connect();
    for _ in 0..3 {
        stream
            .write_all(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream));
}

#[test]
fn head_gets_headers_only() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8];
    while !buf.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    assert!(head.contains("Content-Length: 13\r\n"), "{head}");
    // The connection is still in sync: the next response starts right away.
    assert_eq!(get_on(&mut stream, "/livez").text(), "live\n");
}

#[test]
fn expect_100_continue_gets_an_interim_response_before_the_body() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"PUT /livez HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
    let interim = read_response(&mut stream);
    assert_eq!(interim.status, 100);
    stream.write_all(b"hello").unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET, HEAD"));
    // The body was consumed: the connection carries on.
    assert_eq!(get_on(&mut stream, "/livez").status, 200);
}

#[test]
fn chunked_bodies_are_framed_and_limited() {
    let server = Server::start(&["--max-body-bytes", "16"]);
    let mut stream = server.connect();
    stream
        .write_all(b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    stream
        .write_all(b"6;x=y\r\n world\r\n0\r\n\r\nGET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 405);
    assert_eq!(read_response(&mut stream).status, 200);

    let mut stream = server.connect();
    stream
        .write_all(
            b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n",
        )
        .unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 413);
    assert!(closed_by_server(&mut stream));
}

#[test]
fn content_length_bodies_split_across_writes() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(b"PUT /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    stream
        .write_all(b"56789GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 405);
    assert_eq!(read_response(&mut stream).status, 200);
}

/// Each bad request gets its status, a reason in the body, and a close.
#[test]
fn every_error_code() {
    let server = Server::start(&[
        "--max-request-line-bytes",
        "256",
        "--max-header-bytes",
        "512",
        "--max-headers",
        "8",
        "--max-body-bytes",
        "100",
    ]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(300));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "v".repeat(600)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..9).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("bare LF", b"GET /plaintext HTTP/1.1\nHost: t\n\n".to_vec(), 400, true),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n".to_vec(), 400, true),
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400, true),
        ("conflicting CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n".to_vec(), 400, true),
        ("malformed line", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400, true),
        ("not found", b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 404, false),
        ("wrong method", b"DELETE /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 405, false),
        ("body too large", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n".to_vec(), 413, true),
        ("request line too long", long_target.into_bytes(), 414, true),
        ("expectation", b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n".to_vec(), 417, true),
        ("header section too large", big_header.into_bytes(), 431, true),
        ("too many headers", many_headers.into_bytes(), 431, true),
        ("unknown method", b"BREW /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 501, true),
        ("unknown coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501, true),
        ("version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505, true),
    ];
    for (name, request, status, closes) in cases {
        let mut stream = server.connect();
        stream.write_all(&request).unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, status, "{name}: {}", response.text());
        assert!(
            response.body.len() > 1 && response.body.ends_with(b"\n"),
            "{name}: a reason"
        );
        if status == 405 {
            assert_eq!(response.header("Allow"), Some("GET, HEAD"), "{name}");
        }
        if closes {
            assert_eq!(response.header("Connection"), Some("close"), "{name}");
            assert!(closed_by_server(&mut stream), "{name}");
        } else {
            stream
                .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(
                read_response(&mut stream).status,
                200,
                "{name}: still usable"
            );
        }
    }
    assert_eq!(server.get("/livez").status, 200, "still serving");
}

#[test]
fn a_slow_header_gets_408_and_a_close() {
    let server = Server::start(&["--header-timeout-ms", "300"]);
    let mut stream = server.connect();
    let start = Instant::now();
    stream
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // A header field every 50 ms for 1.5 s, five times the timeout: if
    // each byte that came extended the deadline, the 408 would wait for
    // the trickle to end.
    let mut trickle = stream.try_clone().unwrap();
    let trickler = thread::spawn(move || {
        for _ in 0..30 {
            thread::sleep(Duration::from_millis(50));
            if trickle.write_all(b"X: y\r\n").is_err() {
                break;
            }
        }
    });
    let response = read_response(&mut stream);
    assert_eq!(response.status, 408);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1200),
        "408 after {waited:?}: the deadline runs from the head's first byte"
    );
    trickler.join().unwrap();
    assert!(closed_by_server(&mut stream));
    // A connection that never sends anything is closed without a response.
    let mut silent = server.connect();
    assert!(closed_by_server(&mut silent));
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_connection_timeouts_total{core=\"0\",kind=\"header\"}"
        ),
        2
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = Server::start(&["--idle-timeout-ms", "300"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 200);
    let start = Instant::now();
    assert!(closed_by_server(&mut stream));
    assert!(start.elapsed() >= Duration::from_millis(250));
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_connection_timeouts_total{core=\"0\",kind=\"idle\"}"
        ),
        1
    );
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut first = server.connect();
    let mut second = server.connect();
    for stream in [&mut first, &mut second] {
        assert_eq!(get_on(stream, "/livez").status, 200);
    }
    let mut third = server.connect();
    let _ = third.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(closed_by_server(&mut third));
    drop(first);
    // With one slot free again, the scrape itself gets in.
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_shed_total{core=\"0\",cause=\"max_connections\"}"
        ),
        1
    );
}

/// Accepted sockets live in each ring's table of direct descriptors, which
/// the kernel keeps within the open-files limit: under a low limit the
/// server starts anyway, says it cut max_connections, and holds that many.
/// A burst of connects beyond the table is refused without stopping the
/// accepts for good.
#[test]
fn a_low_open_files_limit_caps_connections_and_a_burst_over_it_is_refused() {
    let server = Server::start_with_open_files_limit(64, &[]);
    // 64 slots: 48 for connections, 16 for rejected ones on their way out.
    assert!(
        server
            .log()
            .contains("the open files limit caps each core's connections"),
        "{}",
        server.log()
    );
    let mut held: Vec<TcpStream> = (0..48).map(|_| server.connect()).collect();
    for stream in &mut held {
        assert_eq!(get_on(stream, "/livez").status, 200);
    }
    let mut burst: Vec<TcpStream> = (0..200).map(|_| server.connect()).collect();
    for stream in &mut burst {
        assert!(closed_by_server(stream));
    }
    drop(burst);
    held.pop();
    // One connection slot is free: the scrape itself gets in.
    let metrics = server.metrics();
    assert!(
        sample(
            &metrics,
            "millrace_shed_total{core=\"0\",cause=\"max_connections\"}"
        ) >= 1
    );
    let mut again = server.connect();
    assert_eq!(get_on(&mut again, "/livez").status, 200);
}

/// A client that writes and never reads: the server stops reading once
/// `max_pipeline_depth` responses are unsent, so what it holds stays bounded,
/// and every request is still answered, in order, once the client reads.
#[test]
fn a_deep_pipeline_is_throttled_not_buffered() {
    let server = Server::start(&["--max-pipeline-depth", "8"]);
    let rss_before = server.rss_bytes();
    let mut stream = server.connect();
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let batch = pipelined_requests(300);
    let (mut batches, mut offset) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.write(&batch[offset..]) {
            Ok(n) => {
                offset += n;
                if offset == batch.len() {
                    batches += 1;
                    offset = 0;
                }
            }
            // The write stalled: the server stopped reading.
            Err(_) => break,
        }
    }
    assert!(
        Instant::now() < deadline,
        "the server kept reading everything"
    );
    let held = server.rss_bytes().saturating_sub(rss_before);
    assert!(held < 16 << 20, "the server grew by {held} bytes");

    // Finish the half-written batch while reading every answer.
    let requests = (batches + usize::from(offset > 0)) * 300;
    stream.set_write_timeout(Some(common::PATIENCE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let rest = batch[offset..].to_vec();
    let finish = thread::spawn(move || {
        if offset > 0 {
            writer.write_all(&rest).unwrap();
        }
    });
    let mut reader = std::io::BufReader::with_capacity(1 << 16, stream.try_clone().unwrap());
    assert_cycle_answers(&mut reader, requests);
    finish.join().unwrap();
    assert_eq!(get_on(&mut stream, "/livez").status, 200);
}

/// Framing RFC 9112 and 9110 refuse, each refused with 400 and a close: a
/// server that read them some other way than the proxy in front of it
/// could be made to see requests the proxy never saw.
#[test]
fn ambiguous_framing_is_refused_and_closed() {
    let server = Server::start(&["--max-body-bytes", "100"]);
    let cases: Vec<(&str, &[u8])> = vec![
        ("empty Transfer-Encoding", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \r\n\r\n"),
        ("comma-only Transfer-Encoding", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: , ,\r\n\r\n"),
        ("a space in Host", b"GET /plaintext HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("a slash in Host", b"GET /plaintext HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        ("an at in Host", b"GET /plaintext HTTP/1.1\r\nHost: user@a\r\n\r\n"),
        ("user-info in an absolute target", b"GET http://user:pw@t/plaintext HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("a fragment in the target", b"GET /plaintext#top HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("a fragment after a query", b"GET /v1/kv/a?x=1#y HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("two Authorization fields", b"GET /plaintext HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"),
        ("a trailer with a NUL", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\0b\r\n\r\n"),
        ("a trailer without a colon", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nXa\r\n\r\n"),
        ("a folded trailer", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n"),
    ];
    for (name, request) in cases {
        let mut stream = server.connect();
        stream.write_all(request).unwrap();
        // Whatever might be read as a second request is never answered.
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, 400, "{name}: {}", response.text());
        assert_eq!(response.header("Connection"), Some("close"), "{name}");
        assert!(closed_by_server(&mut stream), "{name}");
    }
    // What is legal stays so: a chunk size with leading zeros (limited by
    // its value), a valid trailer, a port in Host, an absolute target.
    let legal: Vec<(&str, &[u8], u16)> = vec![
        ("leading zeros", b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000000005\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", 405),
        ("a port in Host", b"GET /plaintext HTTP/1.1\r\nHost: t:8080\r\n\r\n", 200),
        ("an absolute target", b"GET http://t/plaintext HTTP/1.1\r\nHost: t\r\n\r\n", 200),
    ];
    for (name, request, status) in legal {
        let mut stream = server.connect();
        stream.write_all(request).unwrap();
        assert_eq!(read_response(&mut stream).status, status, "{name}");
    }
    // A size whose value is too large is refused however it is written.
    let mut stream = server.connect();
    stream
        .write_all(b"POST /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000000000000000000010000000000000000\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 413);
}
