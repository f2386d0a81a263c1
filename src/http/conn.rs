//! One HTTP/1.1 connection, sans-IO: received bytes go in, complete requests
//! go to a [`Service`], responses come out in request order.
//!
//! Requests are parsed straight from the bytes handed in (the reactor's
//! receive buffer). Only an incomplete request, or requests left unparsed
//! while the pipeline is full, are copied into the connection's own buffer.

use super::chunked::{ChunkedDecoder, ChunkedLimits};
use std::collections::VecDeque;

use super::request::{
    BodyFraming, FieldNames, HeadLimits, Method, RequestHead, Version, parse_head,
};
use super::response::{
    CONTINUE, ConnectionHeader, DateHeader, Deferred, Rejection, ResponseWriter, Sent, Status,
};

/// The limits one connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and header section limits.
    pub head: HeadLimits,
    /// Largest request body, after chunked decoding.
    pub max_body_bytes: usize,
    /// Most responses written but not yet sent; past it the connection stops
    /// parsing (and the reactor stops reading) until sends drain.
    pub max_pipeline_depth: usize,
    /// Requests one connection may make; the last is answered with
    /// `Connection: close`. `None`: no limit.
    pub max_connection_requests: Option<u64>,
}

/// What a connection needs from its executor besides bytes.
pub struct HttpEnv<'a> {
    /// Limits.
    pub limits: &'a Limits,
    /// The cached `Date` header.
    pub date: &'a DateHeader,
    /// Requests are answered only while the output buffer holds fewer
    /// bytes than this (a TLS connection's room for records not yet
    /// sealed); the rest wait, unparsed, as for a full pipeline.
    pub max_out_bytes: usize,
}

/// A complete request as a handler sees it. Borrowed from the receive
/// buffer (or the connection's copy); nothing is allocated for it.
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The version.
    pub version: Version,
    /// The path, percent-encoding untouched.
    pub path: &'a [u8],
    /// The query string after `?`, if any.
    pub query: Option<&'a [u8]>,
    /// The body, decoded if it was chunked.
    pub body: &'a [u8],
    /// Request line and header section, already validated.
    head: &'a [u8],
    /// The names in `head`'s fields, as a filter.
    names: FieldNames,
}

impl<'a> Request<'a> {
    /// The value of the first header field called `name` (any case),
    /// surrounding whitespace trimmed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let (head, name) = (self.head, name.as_bytes());
        if !self.names.may_hold(name) {
            return None;
        }
        // A field starts after each line feed. The parser let through only
        // names of token characters ended by their colon, so a line holds
        // field `name` exactly when `name` and a colon start it.
        memchr::memchr_iter(b'\n', head).find_map(|at| {
            let line = &head[at + 1..];
            let field = line.get(..name.len() + 1)?;
            (field[name.len()] == b':' && field[..name.len()].eq_ignore_ascii_case(name)).then(
                || {
                    let value = &line[name.len() + 1..];
                    let end = memchr::memchr(b'\n', value).unwrap_or(value.len());
                    value[..end].trim_ascii()
                },
            )
        })
    }
}

/// The deepest pipeline a connection may be allowed: its deferred answers
/// are numbered in 16 bits, and half the range keeps every number in
/// flight distinct from the next one given.
pub const MAX_PIPELINE_DEPTH: usize = 32_768;

/// The application behind the HTTP layer.
pub trait Service {
    /// Answer a complete request by writing exactly one response.
    fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent;

    /// Answer a request the HTTP layer refused. The connection closes after it.
    fn reject(&mut self, rejection: Rejection, response: ResponseWriter<'_>) -> Sent {
        response.reject(rejection)
    }
}

/// Where a connection is in its request cycle; the reactor picks the timeout
/// that applies from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received of a next request, nothing unsent.
    Idle,
    /// Part of a request head received, or requests waiting for the pipeline
    /// to drain.
    Head,
    /// A head received, its body still arriving.
    Body,
    /// A response that closes the connection has been written; input is
    /// discarded.
    Closing,
    /// A request's answer is deferred until what it waits for comes.
    Waiting,
}

/// A request whose head is parsed and whose body is still arriving.
struct BodyInProgress {
    head: RequestHead,
    chunked: Option<ChunkedBody>,
    /// `100 Continue` already written for this request.
    continued: bool,
}

struct ChunkedBody {
    decoder: ChunkedDecoder,
    /// How far into the request's bytes the decoder has read.
    read_to: usize,
}

/// The HTTP state of one connection.
#[derive(Default)]
pub struct HttpConnection {
    /// Bytes of a request not yet complete (or not yet parsed while the
    /// pipeline is full). It always starts at the start of a request.
    pending: Vec<u8>,
    body: Option<BodyInProgress>,
    /// The decoded body of a chunked request, reused between requests.
    decoded: Vec<u8>,
    /// Responses written and not yet reported sent.
    unsent: usize,
    /// A response carrying `Connection: close` has been written.
    closing: bool,
    /// Answers not yet written, in request order, from the first deferred
    /// one on: deferred ones until [`HttpConnection::complete`] fills them,
    /// and the ready answers behind them, held so that responses leave in
    /// request order.
    queue: VecDeque<Queued>,
    /// The number the next deferred answer gets.
    next_deferred: u16,
    /// An answer in the queue closes the connection: read no more requests.
    close_queued: bool,
    /// The server is shutting down, or the connection has lived its time:
    /// the next response closes the connection.
    draining: bool,
    /// Requests answered, for `max_connection_requests`.
    answered: u64,
}

/// An answer waiting its turn.
struct Queued {
    /// `Some((number, how to write it))` until the deferred answer comes.
    deferred: Option<(u16, Deferred)>,
    /// The response, once written.
    bytes: Vec<u8>,
    /// It carries `Connection: close`.
    close: bool,
}

enum Step {
    /// One request answered (`written` 1 if its response went out, 0 if it
    /// waits in the queue); `consumed` bytes of input belonged to it.
    Answered { consumed: usize, written: usize },
    /// The next request is not complete yet.
    NeedMore,
}

impl HttpConnection {
    /// A connection with nothing received.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take received bytes: answer every complete request (up to the pipeline
    /// limit), keep a copy of whatever is left. Returns the number of
    /// responses written to `out`.
    pub fn receive<S: Service>(
        &mut self,
        input: &[u8],
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> usize {
        if self.closing {
            return 0;
        }
        if self.pending.is_empty() {
            let (consumed, written) = self.process(input, service, out, env);
            if !self.closing {
                self.pending.extend_from_slice(&input[consumed..]);
                self.compact_chunked();
            }
            return written;
        }
        self.pending.extend_from_slice(input);
        let pending = std::mem::take(&mut self.pending);
        let (consumed, written) = self.process(&pending, service, out, env);
        self.pending = pending;
        if self.closing {
            self.pending.clear();
        } else {
            self.pending.drain(..consumed);
            self.compact_chunked();
        }
        written
    }

    /// Parse what is already buffered, after [`responses_sent`] made room in
    /// the pipeline. Returns the number of responses written.
    ///
    /// [`responses_sent`]: HttpConnection::responses_sent
    pub fn resume<S: Service>(
        &mut self,
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> usize {
        self.receive(&[], service, out, env)
    }

    /// `count` responses have been handed to the kernel.
    pub fn responses_sent(&mut self, count: usize) {
        debug_assert!(count <= self.unsent);
        self.unsent -= count;
    }

    /// Responses written and not yet reported sent.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// The pipeline is full (answers written but unsent, or still queued),
    /// or a queued answer will close the connection: stop reading until
    /// responses are sent or answers come.
    pub fn is_paused(&self, limits: &Limits) -> bool {
        !self.closing
            && (self.unsent + self.queue.len() >= limits.max_pipeline_depth || self.close_queued)
    }

    /// Some answer is deferred and has not come yet.
    pub fn is_awaiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The numbers the deferred answers of the last step got, in request
    /// order: those from `first` up to the next number to be given.
    pub fn deferred_since(&self, first: u16) -> impl ExactSizeIterator<Item = u16> {
        let count = self.next_deferred.wrapping_sub(first);
        (0..count).map(move |i| first.wrapping_add(i))
    }

    /// The number the next deferred answer will get.
    pub fn next_deferred(&self) -> u16 {
        self.next_deferred
    }

    /// Write deferred answer `number` (`respond` writes it), then every
    /// answer behind it that is ready, up to the next still deferred, and go
    /// on with requests that waited for room. Returns the number of
    /// responses written to `out`.
    pub fn complete<S: Service>(
        &mut self,
        number: u16,
        respond: impl FnOnce(ResponseWriter<'_>) -> Sent,
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> usize {
        let Some(at) = self
            .queue
            .iter()
            .position(|q| q.deferred.is_some_and(|(n, _)| n == number))
        else {
            return 0;
        };
        let queued = &mut self.queue[at];
        let (_, deferred) = queued.deferred.take().expect("found by its number");
        // At the head of the queue it goes straight to the output; behind
        // another it waits, rendered, for its turn.
        let target = if at == 0 && !self.closing {
            &mut *out
        } else {
            &mut queued.bytes
        };
        let writer = ResponseWriter::new(target, env.date, deferred.connection, deferred.head_only);
        let sent = respond(writer);
        debug_assert!(sent.deferred.is_none(), "an answer is deferred only once");
        queued.close |= sent.close;
        let mut written = 0;
        if at == 0 {
            let first = self.queue.pop_front().expect("found");
            if !self.closing {
                self.unsent += 1;
                written += 1;
                self.closing |= first.close;
            }
        }
        while self.queue.front().is_some_and(|q| q.deferred.is_none()) {
            let ready = self.queue.pop_front().expect("checked");
            if self.closing {
                continue; // Nothing goes out after a closing response.
            }
            out.extend_from_slice(&ready.bytes);
            self.unsent += 1;
            written += 1;
            self.closing |= ready.close;
        }
        if self.queue.is_empty() {
            self.close_queued = false;
        }
        written + self.resume(service, out, env)
    }

    /// The connection closes once its output is sent.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Nothing received, nothing unsent: safe to close without losing a request.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.body.is_none() && self.unsent == 0 && self.queue.is_empty()
    }

    /// Where the connection is in its request cycle.
    pub fn phase(&self) -> Phase {
        if self.closing {
            Phase::Closing
        } else if !self.queue.is_empty() {
            Phase::Waiting
        } else if self.body.is_some() {
            Phase::Body
        } else if !self.pending.is_empty() {
            Phase::Head
        } else {
            Phase::Idle
        }
    }

    /// The server is shutting down: finish the request in progress, answer
    /// it with `Connection: close`, accept no other.
    pub fn start_drain(&mut self) {
        self.draining = true;
    }

    /// The request head did not arrive in time: answer 408 if any of it
    /// arrived. Returns the number of responses written (0 or 1); either way
    /// the connection is closing afterwards.
    pub fn time_out<S: Service>(
        &mut self,
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> usize {
        let answer = !self.closing && self.phase() == Phase::Head && self.unsent == 0;
        self.closing = true;
        self.pending.clear();
        if !answer {
            return 0;
        }
        let rejection = Rejection::new(Status::RequestTimeout, "request head not received in time");
        self.reject(rejection, service, out, env);
        1
    }

    /// Answer requests from `data` until it runs out, the pipeline is full or
    /// the connection is closing. Returns (bytes consumed, responses written).
    fn process<S: Service>(
        &mut self,
        data: &[u8],
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> (usize, usize) {
        let mut pos = 0;
        let mut written = 0;
        while !self.closing
            && !self.close_queued
            && self.unsent + self.queue.len() < env.limits.max_pipeline_depth
            && out.len() < env.max_out_bytes
        {
            let rest = &data[pos..];
            let step = match self.body.take() {
                None => self.start_request(rest, service, out, env),
                Some(body) => self.continue_body(body, rest, service, out, env),
            };
            match step {
                Step::Answered {
                    consumed,
                    written: now,
                } => {
                    pos += consumed;
                    written += now;
                }
                Step::NeedMore => break,
            }
        }
        (pos, written)
    }

    fn start_request<S: Service>(
        &mut self,
        rest: &[u8],
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> Step {
        if rest.is_empty() {
            return Step::NeedMore;
        }
        // A partial head is parsed again whenever bytes arrive, so the answer
        // never depends on how the bytes were split into reads. The work is
        // bounded by the head size limits and the header timeout.
        // Borrowed, not moved out of the result: the head stays where the
        // parser wrote it (moving it measurably stalled the hot path).
        let parsed = parse_head(rest, &env.limits.head);
        let head = match &parsed {
            Err(rejection) => return self.reject(*rejection, service, out, env),
            Ok(None) => return Step::NeedMore,
            Ok(Some(head)) => head,
        };
        let chunked = match head.framing {
            BodyFraming::None => {
                let len = head.len;
                let written = self.answer(head, &rest[..len], &[], service, out, env);
                return Step::Answered {
                    consumed: len,
                    written,
                };
            }
            BodyFraming::Length(n) if n > env.limits.max_body_bytes as u64 => {
                let rejection =
                    Rejection::new(Status::PayloadTooLarge, "body larger than max_body_bytes");
                return self.reject(rejection, service, out, env);
            }
            BodyFraming::Length(_) => None,
            BodyFraming::Chunked => {
                self.decoded.clear();
                Some(ChunkedBody {
                    decoder: ChunkedDecoder::new(),
                    read_to: head.len,
                })
            }
        };
        let body = BodyInProgress {
            head: head.clone(),
            chunked,
            continued: false,
        };
        self.continue_body(body, rest, service, out, env)
    }

    fn continue_body<S: Service>(
        &mut self,
        mut body: BodyInProgress,
        rest: &[u8],
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> Step {
        let head_len = body.head.len;
        let complete = match (&mut body.chunked, body.head.framing) {
            (None, BodyFraming::Length(n)) => {
                let end = head_len + n as usize;
                if rest.len() >= end {
                    let written = self.answer(
                        &body.head,
                        &rest[..head_len],
                        &rest[head_len..end],
                        service,
                        out,
                        env,
                    );
                    return Step::Answered {
                        consumed: end,
                        written,
                    };
                }
                false
            }
            (Some(chunked), _) => {
                let limits = ChunkedLimits {
                    max_body_bytes: env.limits.max_body_bytes,
                    max_trailer_bytes: env.limits.head.max_header_bytes,
                };
                match chunked
                    .decoder
                    .decode(&rest[chunked.read_to..], &mut self.decoded, &limits)
                {
                    Err(rejection) => return self.reject(rejection, service, out, env),
                    Ok(progress) => {
                        chunked.read_to += progress.consumed;
                        progress.done
                    }
                }
            }
            (None, _) => unreachable!("a body in progress is either sized or chunked"),
        };
        if complete {
            let consumed = body.chunked.as_ref().map_or(0, |c| c.read_to);
            let decoded = std::mem::take(&mut self.decoded);
            let written = self.answer(&body.head, &rest[..head_len], &decoded, service, out, env);
            self.decoded = decoded;
            return Step::Answered { consumed, written };
        }
        // Not while earlier answers are queued: it would overtake them (the
        // client sends the body anyway after its own short wait).
        if body.head.expect_continue && !body.continued && self.queue.is_empty() {
            out.extend_from_slice(CONTINUE);
            body.continued = true;
        }
        self.body = Some(body);
        Step::NeedMore
    }

    /// Drop the chunked framing already decoded from `pending`, keeping the
    /// head, so a long chunked body is held once (decoded), not twice.
    fn compact_chunked(&mut self) {
        if let Some(BodyInProgress {
            head,
            chunked: Some(chunked),
            ..
        }) = &mut self.body
            && chunked.read_to > head.len
        {
            self.pending.drain(head.len..chunked.read_to);
            chunked.read_to = head.len;
        }
    }

    fn answer<S: Service>(
        &mut self,
        head: &RequestHead,
        head_bytes: &[u8],
        body: &[u8],
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> usize {
        self.answered += 1;
        let last = env
            .limits
            .max_connection_requests
            .is_some_and(|max| self.answered >= max);
        let keep_alive = head.keep_alive && !self.draining && !last;
        let connection = match (keep_alive, head.version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::Http10) => ConnectionHeader::KeepAlive,
            (true, Version::Http11) => ConnectionHeader::None,
        };
        let request = Request {
            method: head.method,
            version: head.version,
            path: &head_bytes[head.path.clone()],
            query: head.query.clone().map(|q| &head_bytes[q]),
            body,
            head: head_bytes,
            names: head.names,
        };
        let head_only = head.method == Method::Head;
        if self.queue.is_empty() {
            let sent = service.handle(
                &request,
                ResponseWriter::new(out, env.date, connection, head_only),
            );
            return self.emitted(sent, None);
        }
        // Answers before this one are still queued: this one waits behind them.
        let mut held = Vec::new();
        let sent = service.handle(
            &request,
            ResponseWriter::new(&mut held, env.date, connection, head_only),
        );
        self.emitted(sent, Some(held))
    }

    /// Account for a response written to the output (`held` is `None`) or
    /// into `held`, or for a deferred answer. Returns the responses that
    /// went to the output: 1 or 0.
    fn emitted(&mut self, sent: Sent, held: Option<Vec<u8>>) -> usize {
        if let Some(deferred) = sent.deferred {
            let number = self.next_deferred;
            self.next_deferred = self.next_deferred.wrapping_add(1);
            self.close_queued |= deferred.connection == ConnectionHeader::Close;
            self.queue.push_back(Queued {
                deferred: Some((number, deferred)),
                bytes: Vec::new(),
                close: false,
            });
            return 0;
        }
        match held {
            None => {
                self.unsent += 1;
                self.closing |= sent.close;
                1
            }
            Some(bytes) => {
                self.close_queued |= sent.close;
                self.queue.push_back(Queued {
                    deferred: None,
                    bytes,
                    close: sent.close,
                });
                0
            }
        }
    }

    fn reject<S: Service>(
        &mut self,
        rejection: Rejection,
        service: &mut S,
        out: &mut Vec<u8>,
        env: &HttpEnv<'_>,
    ) -> Step {
        self.body = None;
        let written = if self.queue.is_empty() {
            let writer = ResponseWriter::new(out, env.date, ConnectionHeader::Close, false);
            let sent = service.reject(rejection, writer);
            self.emitted(sent, None)
        } else {
            let mut held = Vec::new();
            let writer = ResponseWriter::new(&mut held, env.date, ConnectionHeader::Close, false);
            let sent = service.reject(rejection, writer);
            self.emitted(sent, Some(held))
        };
        Step::Answered {
            consumed: 0,
            written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `200` with `path|body` so tests can see which request it was.
    struct Echo;

    impl Service for Echo {
        fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
            let body = [request.path, b"|", request.body].concat();
            response.send(Status::Ok, "text/plain", &body)
        }
    }

    const LIMITS: Limits = Limits {
        head: HeadLimits {
            max_request_line_bytes: 256,
            max_header_bytes: 512,
            max_headers: 16,
        },
        max_body_bytes: 64,
        max_pipeline_depth: 1000,
        max_connection_requests: None,
    };

    /// Feed `chunks` one after another; return everything written.
    fn run(conn: &mut HttpConnection, limits: &Limits, chunks: &[&[u8]]) -> String {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut out = Vec::new();
        for chunk in chunks {
            let written = conn.receive(chunk, &mut Echo, &mut out, &env);
            conn.responses_sent(written);
        }
        String::from_utf8(out).unwrap()
    }

    /// The bodies of the responses in `text`, in order.
    fn bodies(text: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        let mut rest = text;
        while let Some(head_end) = rest.find("\r\n\r\n") {
            let head = &rest[..head_end];
            if head.starts_with("HTTP/1.1 100") {
                rest = &rest[head_end + 4..];
                continue;
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            let body_start = head_end + 4;
            bodies.push(rest[body_start..body_start + length].to_string());
            rest = &rest[body_start + length..];
        }
        bodies
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let input: String = (0..100).map(|i| get(&format!("/{i}"))).collect();
        let out = run(&mut HttpConnection::new(), &LIMITS, &[input.as_bytes()]);
        let expected: Vec<String> = (0..100).map(|i| format!("/{i}|")).collect();
        assert_eq!(bodies(&out), expected);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_answers() {
        let input = (0..10).map(|i| get(&format!("/{i}"))).collect::<String>()
            + "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            + "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n";
        let whole = run(&mut HttpConnection::new(), &LIMITS, &[input.as_bytes()]);
        let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
        let mut conn = HttpConnection::new();
        let split = run(&mut conn, &LIMITS, &bytes);
        assert_eq!(bodies(&split), bodies(&whole));
        assert_eq!(bodies(&split).len(), 12);
        assert_eq!(
            bodies(&split)[10..],
            ["/b|abc".to_string(), "/c|xy".to_string()]
        );
        assert!(conn.is_idle());
    }

    #[test]
    fn a_full_pipeline_pauses_until_responses_are_sent() {
        let limits = Limits {
            max_pipeline_depth: 4,
            max_connection_requests: None,
            ..LIMITS
        };
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &limits,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let input: String = (0..10).map(|i| get(&format!("/{i}"))).collect();
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        assert_eq!(conn.receive(input.as_bytes(), &mut Echo, &mut out, &env), 4);
        assert!(conn.is_paused(&limits));
        assert_eq!(conn.phase(), Phase::Head);
        conn.responses_sent(4);
        assert_eq!(conn.resume(&mut Echo, &mut out, &env), 4);
        conn.responses_sent(3);
        assert_eq!(conn.resume(&mut Echo, &mut out, &env), 2);
        conn.responses_sent(3);
        assert_eq!(conn.resume(&mut Echo, &mut out, &env), 0);
        assert!(conn.is_idle());
        let expected: Vec<String> = (0..10).map(|i| format!("/{i}|")).collect();
        assert_eq!(bodies(&String::from_utf8(out).unwrap()), expected);
    }

    #[test]
    fn a_full_output_buffer_holds_the_rest_unparsed() {
        let date = DateHeader::new();
        let mut env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: 1,
        };
        let input: String = (0..10).map(|i| get(&format!("/{i}"))).collect();
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        // One answer fills it; the others wait whole.
        assert_eq!(conn.receive(input.as_bytes(), &mut Echo, &mut out, &env), 1);
        assert_eq!(conn.phase(), Phase::Head);
        let first = out.len();
        // Still full: nothing more.
        assert_eq!(conn.resume(&mut Echo, &mut out, &env), 0);
        // Sent, and room for everything: the nine in order.
        out.clear();
        conn.responses_sent(1);
        env.max_out_bytes = usize::MAX;
        assert_eq!(conn.resume(&mut Echo, &mut out, &env), 9);
        assert!(first > 0);
        let expected: Vec<String> = (1..10).map(|i| format!("/{i}|")).collect();
        assert_eq!(bodies(&String::from_utf8(out).unwrap()), expected);
    }

    #[test]
    fn bodies_split_across_reads() {
        let mut conn = HttpConnection::new();
        let out = run(
            &mut conn,
            &LIMITS,
            &[
                b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Le",
                b"ngth: 10\r\n\r\n01234",
                b"56789GET /n",
                b"ext HTTP/1.1\r\nHost: t\r\n\r\n",
            ],
        );
        assert_eq!(bodies(&out), ["/k|0123456789", "/next|"]);
        let out = run(
            &mut conn,
            &LIMITS,
            &[
                b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                b"c\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n",
            ],
        );
        assert_eq!(bodies(&out), ["/c|abcdefg", "/after|"]);
        assert!(conn.is_idle());
    }

    #[test]
    fn expect_continue_is_answered_only_while_the_body_is_missing() {
        let head =
            "PUT /k HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let out = run(
            &mut HttpConnection::new(),
            &LIMITS,
            &[head.as_bytes(), b"ok"],
        );
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("100 Continue").count(), 1);
        assert_eq!(bodies(&out), ["/k|ok"]);

        let whole = format!("{head}ok");
        let out = run(&mut HttpConnection::new(), &LIMITS, &[whole.as_bytes()]);
        assert!(!out.contains("100 Continue"), "{out}");

        let too_big =
            "PUT /k HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 65\r\n\r\n";
        let out = run(&mut HttpConnection::new(), &LIMITS, &[too_big.as_bytes()]);
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        assert!(!out.contains("100 Continue"), "{out}");
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let mut conn = HttpConnection::new();
        let out = run(
            &mut conn,
            &LIMITS,
            &[b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n"],
        );
        assert_eq!(bodies(&out), ["/a|"]);
        assert!(out.contains("Connection: close\r\n"));
        assert!(conn.is_closing());

        let mut conn = HttpConnection::new();
        let out = run(
            &mut conn,
            &LIMITS,
            &[b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
        );
        assert!(out.contains("Connection: keep-alive\r\n"));
        assert!(!conn.is_closing());
    }

    #[test]
    fn connection_close_is_honoured() {
        let mut conn = HttpConnection::new();
        let out = run(
            &mut conn,
            &LIMITS,
            &[b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"],
        );
        assert_eq!(bodies(&out), ["/a|"]);
        assert!(out.contains("Connection: close\r\n"));
        assert_eq!(conn.phase(), Phase::Closing);
    }

    #[test]
    fn errors_close_and_discard_what_follows() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.1\nHost: t\n\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n",
                "413",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n",
                "413",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "400",
            ),
        ];
        for (input, status) in cases {
            let mut conn = HttpConnection::new();
            let out = run(
                &mut conn,
                &LIMITS,
                &[input, b"GET /more HTTP/1.1\r\nHost: t\r\n\r\n"],
            );
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
            assert!(out.contains("Connection: close\r\n"), "{out}");
            assert!(conn.is_closing());
        }
    }

    #[test]
    fn a_head_that_never_ends_is_refused_at_its_limit() {
        let mut conn = HttpConnection::new();
        let mut chunks: Vec<Vec<u8>> = vec![b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec()];
        chunks.extend((0..100).map(|_| b"X-Filler: 0123456789\r\n".to_vec()));
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = run(&mut conn, &LIMITS, &refs);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(conn.is_closing());
    }

    #[test]
    fn draining_closes_after_the_request_in_progress() {
        let mut conn = HttpConnection::new();
        let out = run(
            &mut conn,
            &LIMITS,
            &[b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"],
        );
        assert_eq!(out, "");
        assert_eq!(conn.phase(), Phase::Body);
        conn.start_drain();
        let out = run(
            &mut conn,
            &LIMITS,
            &[b"okGET / HTTP/1.1\r\nHost: t\r\n\r\n"],
        );
        assert_eq!(bodies(&out), ["/k|ok"]);
        assert!(out.contains("Connection: close\r\n"));
        assert!(conn.is_closing());
    }

    #[test]
    fn timing_out_answers_408_only_for_a_partial_head() {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut out = Vec::new();
        let mut conn = HttpConnection::new();
        assert_eq!(conn.time_out(&mut Echo, &mut out, &env), 0);
        assert!(out.is_empty());

        let mut conn = HttpConnection::new();
        conn.receive(b"GET / HT", &mut Echo, &mut out, &env);
        assert_eq!(conn.phase(), Phase::Head);
        assert_eq!(conn.time_out(&mut Echo, &mut out, &env), 1);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));
        assert!(conn.is_closing());
    }

    /// Found by the fuzzer: the answer must not depend on how the bytes were
    /// split into reads.
    #[test]
    fn answers_do_not_depend_on_how_bytes_arrive() {
        let limits = Limits {
            head: HeadLimits {
                max_request_line_bytes: 32,
                max_header_bytes: 32,
                max_headers: 4,
            },
            ..LIMITS
        };
        let long_then_bad = [b"GET /".as_slice(), &[b'a'; 40], b"\x01 HTTP/1.1\r\n\r\n"].concat();
        let bad_then_long = [b"GET /a\x01".as_slice(), &[b'a'; 40], b" HTTP/1.1\r\n\r\n"].concat();
        let empty_lines_first = [
            b"\r\n".repeat(20).as_slice(),
            b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        ]
        .concat();
        let cases: [(&[u8], &str); 4] = [
            (b"ET /pla\x97\x91A\x8b(THype: text/plain", "HTTP/1.1 400 "),
            (&long_then_bad, "HTTP/1.1 414 "),
            (&bad_then_long, "HTTP/1.1 400 "),
            (&empty_lines_first, "HTTP/1.1 414 "),
        ];
        for (input, status) in cases {
            let whole = run(&mut HttpConnection::new(), &limits, &[input]);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let split = run(&mut HttpConnection::new(), &limits, &bytes);
            assert!(whole.starts_with(status), "{whole}");
            assert_eq!(whole, split, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn head_requests_get_no_body() {
        let out = run(
            &mut HttpConnection::new(),
            &LIMITS,
            &[b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"],
        );
        assert!(out.contains("Content-Length: 3\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    /// What a fresh connection writes for `input`, answered by `service`.
    fn receive_once<S: Service>(service: &mut S, input: &[u8]) -> String {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut out = Vec::new();
        HttpConnection::new().receive(input, service, &mut out, &env);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        struct Look;
        impl Service for Look {
            fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
                let value = request.header("content-type").unwrap_or(b"none");
                response.send(Status::Ok, "text/plain", value)
            }
        }
        let out = receive_once(
            &mut Look,
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-TYPE:  application/json \r\n\r\n",
        );
        assert!(out.ends_with("\r\n\r\napplication/json"));
    }

    #[test]
    fn header_lookup_matches_whole_names_only() {
        struct Look;
        impl Service for Look {
            fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
                let mut body = Vec::new();
                for name in ["if-match", "x", "accept", "host", "get / http/1.1", ""] {
                    body.extend_from_slice(request.header(name).unwrap_or(b"-"));
                    body.push(b'|');
                }
                response.send(Status::Ok, "text/plain", &body)
            }
        }
        let out = receive_once(
            &mut Look,
            b"GET / HTTP/1.1\r\nIf-Match-Not: a\r\nX-Note: if-match: b\r\nIf-Match:\t\"1-2\" \r\nX:\r\nHost: t\r\n\r\n",
        );
        // A longer name, a value that holds the name, the request line and
        // an empty name never match; the first field of the name does,
        // trimmed, even with an empty value.
        assert!(out.ends_with("\r\n\r\n\"1-2\"||-|t|-|-|"), "{}", out);
    }

    /// Defers every request whose path starts with `/later`; echoes the rest.
    struct Later;

    impl Service for Later {
        fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
            if request.path.starts_with(b"/later") {
                response.defer()
            } else {
                Echo.handle(request, response)
            }
        }
    }

    #[test]
    fn deferred_answers_keep_request_order() {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let input = [get("/first"), get("/later"), get("/after")].concat();
        assert_eq!(
            conn.receive(input.as_bytes(), &mut Later, &mut out, &env),
            1,
            "the answer behind a deferred one waits for it"
        );
        assert!(conn.is_awaiting());
        assert!(!conn.is_paused(&LIMITS), "reading goes on behind it");
        assert_eq!(conn.phase(), Phase::Waiting);
        assert!(!conn.is_idle());
        assert_eq!(
            conn.receive(get("/last").as_bytes(), &mut Later, &mut out, &env),
            0
        );
        let written = conn.complete(
            0,
            |response| response.send(Status::Accepted, "text/plain", b"done"),
            &mut Later,
            &mut out,
            &env,
        );
        assert_eq!(written, 3, "the deferred answer, then the two behind it");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(bodies(&text), ["/first|", "done", "/after|", "/last|"]);
        assert!(text.contains("HTTP/1.1 202 Accepted"));
        assert!(!conn.is_awaiting());
        assert_eq!(
            conn.complete(
                0,
                |r| r.send(Status::Ok, "text/plain", b""),
                &mut Later,
                &mut Vec::new(),
                &env
            ),
            0,
            "an answer is written once"
        );
    }

    #[test]
    fn answers_that_come_out_of_order_leave_in_order() {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let input = [get("/later"), get("/a"), get("/later"), get("/b")].concat();
        assert_eq!(
            conn.receive(input.as_bytes(), &mut Later, &mut out, &env),
            0
        );
        let mut respond = |number: u16, body: &'static [u8], out: &mut Vec<u8>| {
            conn.complete(
                number,
                |r| r.send(Status::Ok, "text/plain", body),
                &mut Later,
                out,
                &env,
            )
        };
        assert_eq!(respond(1, b"second", &mut out), 0, "the first is still out");
        assert_eq!(respond(0, b"first", &mut out), 4);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(bodies(&text), ["first", "/a|", "second", "/b|"]);
    }

    #[test]
    fn queued_answers_count_against_the_pipeline_depth() {
        let date = DateHeader::new();
        let limits = Limits {
            max_pipeline_depth: 3,
            max_connection_requests: None,
            ..LIMITS
        };
        let env = HttpEnv {
            limits: &limits,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let input = [get("/later"), get("/a"), get("/b"), get("/c")].concat();
        assert_eq!(
            conn.receive(input.as_bytes(), &mut Later, &mut out, &env),
            0
        );
        assert!(conn.is_paused(&limits), "three queued: the fourth waits");
        let written = conn.complete(
            0,
            |r| r.send(Status::Ok, "text/plain", b"x"),
            &mut Later,
            &mut out,
            &env,
        );
        assert_eq!(written, 3, "the queue; the fourth waits for sends");
        conn.responses_sent(3);
        assert_eq!(conn.resume(&mut Later, &mut out, &env), 1);
    }

    #[test]
    fn a_deferred_answer_keeps_what_its_request_decided() {
        let date = DateHeader::new();
        let env = HttpEnv {
            limits: &LIMITS,
            date: &date,
            max_out_bytes: usize::MAX,
        };
        // HTTP/1.0 with keep-alive, and HEAD: the late answer says keep-alive and has no body.
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let request = b"HEAD /later HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(conn.receive(request, &mut Later, &mut out, &env), 0);
        conn.complete(
            0,
            |r| r.send(Status::Ok, "text/plain", b"body"),
            &mut Later,
            &mut out,
            &env,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Connection: keep-alive\r\n\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body for HEAD: {text}");
        assert!(!conn.is_closing());
        // Connection: close on the request: the late answer closes.
        let mut conn = HttpConnection::new();
        let mut out = Vec::new();
        let request = b"GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n";
        conn.receive(request, &mut Later, &mut out, &env);
        assert!(
            conn.is_paused(&LIMITS),
            "nothing is read after a closing request"
        );
        let written = conn.complete(
            0,
            |r| r.send(Status::Ok, "text/plain", b"x"),
            &mut Later,
            &mut out,
            &env,
        );
        assert_eq!(written, 1, "nothing after a closing answer");
        assert!(conn.is_closing());
    }
}
