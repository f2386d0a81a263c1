//! The HTTP API: one routing table, one file per endpoint, each
//! decode → execute → encode. [`Api`] is the [`Service`] an executor hands its
//! connections.

pub mod auth;
mod events;
pub mod kv;
mod livez;
mod metrics;
mod plaintext;
mod readyz;
mod stats;

use std::ops::Range;
use std::sync::Arc;

use crate::http::{Method, Rejection, Request, ResponseWriter, Sent, Service, Status};
use crate::lifecycle::Lifecycle;
use crate::metrics::{CoreMetrics, MetricsRegistry};
use crate::payload::{BatchLimits, encode_accepted};
use crate::redis::command::{Command, Error as RedisError};
use crate::redis::resp::Reply;
use crate::writeback::queue::{Caps, Queue};

/// Every route, plus `Unmatched` for requests that reached none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /plaintext`
    Plaintext,
    /// `GET /livez`
    Livez,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `POST /v1/events`
    Events,
    /// `GET /v1/kv/{key}`
    KvGet,
    /// `PUT /v1/kv/{key}`
    KvPut,
    /// `DELETE /v1/kv/{key}`
    KvDelete,
    /// `GET /v1/stats`
    Stats,
    /// No route: 404, or refused by the HTTP layer before routing.
    Unmatched,
}

/// The routing table: a path (one ending in `*` matches any path with
/// that prefix and more), the route each method takes (HEAD goes with GET),
/// and the `Allow` header a 405 carries.
type RouteRow = (&'static [u8], &'static [(Method, Route)], &'static str);

const ROUTES: &[RouteRow] = &[
    (
        b"/plaintext",
        &[
            (Method::Get, Route::Plaintext),
            (Method::Head, Route::Plaintext),
        ],
        "GET, HEAD",
    ),
    (
        b"/livez",
        &[(Method::Get, Route::Livez), (Method::Head, Route::Livez)],
        "GET, HEAD",
    ),
    (
        b"/readyz",
        &[(Method::Get, Route::Readyz), (Method::Head, Route::Readyz)],
        "GET, HEAD",
    ),
    (
        b"/metrics",
        &[
            (Method::Get, Route::Metrics),
            (Method::Head, Route::Metrics),
        ],
        "GET, HEAD",
    ),
    (b"/v1/events", &[(Method::Post, Route::Events)], "POST"),
    (
        b"/v1/stats",
        &[(Method::Get, Route::Stats), (Method::Head, Route::Stats)],
        "GET, HEAD",
    ),
    (
        b"/v1/kv/*",
        &[
            (Method::Get, Route::KvGet),
            (Method::Head, Route::KvGet),
            (Method::Put, Route::KvPut),
            (Method::Delete, Route::KvDelete),
        ],
        "GET, HEAD, PUT, DELETE",
    ),
];

impl Route {
    /// Every route, in the order of [`Route::index`].
    pub const ALL: [Route; 10] = [
        Route::Plaintext,
        Route::Livez,
        Route::Readyz,
        Route::Metrics,
        Route::Events,
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::Stats,
        Route::Unmatched,
    ];

    /// A dense index in `0..Route::ALL.len()`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::Plaintext => "plaintext",
            Route::Livez => "livez",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Events => "events",
            Route::KvGet => "kv_get",
            Route::KvPut => "kv_put",
            Route::KvDelete => "kv_delete",
            Route::Stats => "stats",
            Route::Unmatched => "unmatched",
        }
    }
}

/// What a route lookup found.
enum Lookup {
    Found(Route),
    WrongMethod(Route, &'static str),
    NotFound,
}

fn lookup(method: Method, path: &[u8]) -> Lookup {
    let matches = |pattern: &[u8]| match pattern.strip_suffix(b"*") {
        Some(prefix) => path.len() > prefix.len() && path.starts_with(prefix),
        None => path == pattern,
    };
    match ROUTES.iter().find(|(pattern, ..)| matches(pattern)) {
        None => Lookup::NotFound,
        Some((_, methods, allow)) => match methods.iter().find(|(m, _)| *m == method) {
            Some((_, route)) => Lookup::Found(*route),
            None => Lookup::WrongMethod(methods[0].1, allow),
        },
    }
}

/// What every executor shares with the others, read-only.
pub struct ApiShared {
    /// Starting, ready or draining, for `/readyz`.
    pub lifecycle: Arc<Lifecycle>,
    /// Every core's published metrics, for `/metrics`.
    pub registry: Arc<MetricsRegistry>,
    /// Where writes go; `None` without a Redis Cluster.
    pub writes: Option<WritePath>,
    /// Bearer tokens the `/v1` routes require; `None`: open.
    pub auth: Option<auth::Tokens>,
    /// Whether `/metrics` is served on the public port too (it always is on
    /// the admin listener).
    pub public_metrics: bool,
}

/// The write-back queue and what a write may be.
pub struct WritePath {
    /// The partitions writes are queued on.
    pub queue: Queue,
    /// What an event batch may hold.
    pub limits: BatchLimits,
    /// How full one partition may get before writes to it get 503.
    pub caps: Caps,
    /// TTL of a value read from the database into the cache, in milliseconds.
    pub cache_ttl_ms: u64,
    /// TTL of a cached miss (no row, or a deleted one), in milliseconds.
    pub miss_ttl_ms: u64,
    /// Longest key, in bytes once percent-decoded.
    pub max_key_bytes: usize,
    /// Longest value a PUT may store, in bytes.
    pub max_value_bytes: usize,
    /// Replicas that must confirm a write (`WAIT`) before its 202; 0: none.
    pub ack_replicas: u32,
    /// How long `WAIT` waits for them.
    pub ack_timeout: std::time::Duration,
}

/// A Redis command a handler issued for a deferred answer, and how to
/// answer when its reply comes.
pub struct Outgoing {
    /// The command.
    pub command: Command,
    /// What the answer will be.
    pub answer: Answer,
}

/// How a deferred answer is written from its Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A queued event batch: 202 with the count, in the body's format.
    Events {
        /// Events queued.
        count: u32,
        /// The request was JSON, so is the answer.
        json: bool,
        /// The partition it went to.
        partition: u16,
    },
    /// A queued PUT: 202 with the version.
    KvWritten {
        /// The partition it went to.
        partition: u16,
    },
    /// A queued DELETE: 202 with the version.
    KvDeleted {
        /// The partition it went to.
        partition: u16,
    },
    /// A conditional PUT or DELETE on its way.
    KvWriteIf(Box<kv::WriteIf>),
    /// A queued write waiting for `WAIT` (`ack_replicas`): answered as
    /// `then` once `replicas` replicas have it.
    Replicated {
        /// The answer for the write.
        then: Box<Answer>,
        /// What the write's script answered (its entry id).
        version: Vec<u8>,
        /// Replicas that must confirm it.
        replicas: u32,
    },
    /// `GET /v1/stats`: the figures' values, in [`stats::FIELDS`] order.
    Stats,
    /// A GET on its way.
    KvRead(kv::Read),
}

/// What to do with a deferred answer once what it waited for has come.
#[derive(Debug)]
pub enum Next {
    /// Write the answer now.
    Respond(Answer, Outcome),
    /// Send the command; its reply goes on with the answer.
    Redis(Command, Answer),
    /// Look the key up in the database (read-through); the row goes on
    /// with the answer.
    Lookup(Vec<u8>, Answer),
    /// Write the answer now, and send the command, which nothing waits for.
    RespondAndSend(Answer, Outcome, Command),
}

/// What came back for a deferred answer, kept past the reply's buffer: a
/// bulk string is copied into the executor's arrival bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A bulk string, at this range of the arrival bytes.
    Bulk(Range<usize>),
    /// A nil reply: nothing there.
    Nil,
    /// An array: each element's bytes (an integer as its decimal text), or
    /// `None` for a nil or any other element.
    List(Vec<Option<Range<usize>>>),
    /// An integer.
    Integer(i64),
    /// What the database holds for a key, as a cache entry at this range
    /// of the arrival bytes; `fill`: this answer should put it into the
    /// cache (one per key and lookup).
    Row {
        /// The entry's bytes.
        entry: Range<usize>,
        /// Whether to fill the cache with it.
        fill: bool,
    },
    /// Any other reply that is not an error.
    Done,
    /// Redis refused the command, or it never got an answer.
    Failed(String),
}

impl Outcome {
    /// Keep `reply`, copying a bulk string's bytes to the end of `bytes`.
    pub fn keep(reply: Result<Reply<'_>, RedisError>, bytes: &mut Vec<u8>) -> Outcome {
        match reply {
            Ok(Reply::Bulk(value)) => {
                let start = bytes.len();
                bytes.extend_from_slice(value);
                Outcome::Bulk(start..bytes.len())
            }
            Ok(Reply::Nil) => Outcome::Nil,
            Ok(Reply::Integer(n)) => Outcome::Integer(n),
            Ok(Reply::Array(items)) => Outcome::List(
                items
                    .iter()
                    .map(|item| {
                        let start = bytes.len();
                        match item {
                            Reply::Bulk(value) => bytes.extend_from_slice(value),
                            Reply::Integer(n) => bytes.extend_from_slice(n.to_string().as_bytes()),
                            _ => return None,
                        }
                        Some(start..bytes.len())
                    })
                    .collect(),
            ),
            Ok(Reply::Error(e)) => Outcome::Failed(String::from_utf8_lossy(e).into_owned()),
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

impl Answer {
    /// The route it answers, for metrics.
    pub fn route(&self) -> Route {
        match self {
            Answer::Events { .. } => Route::Events,
            Answer::KvWritten { .. } => Route::KvPut,
            Answer::KvDeleted { .. } => Route::KvDelete,
            Answer::KvWriteIf(write) if write.is_delete() => Route::KvDelete,
            Answer::KvWriteIf(_) => Route::KvPut,
            Answer::Replicated { then, .. } => then.route(),
            Answer::KvRead(_) => Route::KvGet,
            Answer::Stats => Route::Stats,
        }
    }

    /// The partition a write went to; `None` for a read.
    pub fn write_partition(&self) -> Option<u16> {
        match self {
            Answer::Events { partition, .. }
            | Answer::KvWritten { partition }
            | Answer::KvDeleted { partition } => Some(*partition),
            Answer::KvWriteIf(write) => Some(write.partition),
            _ => None,
        }
    }

    /// Go on from what came back: answer, or take the next step. `writes`
    /// is the write path the request came through; `read_through`, whether
    /// this executor can look keys up in the database.
    pub fn next(
        self,
        outcome: Outcome,
        bytes: &[u8],
        writes: &WritePath,
        read_through: bool,
    ) -> Next {
        match self {
            Answer::KvRead(read) => read.next(outcome, bytes, writes, read_through),
            Answer::KvWriteIf(write) => write.next(outcome, bytes, writes, read_through),
            answer => Next::Respond(answer, outcome),
        }
    }

    /// Write the answer to what came back; `bytes` holds the arrival
    /// bytes an [`Outcome::Bulk`] points into.
    pub fn respond(self, outcome: Outcome, bytes: &[u8], response: ResponseWriter<'_>) -> Sent {
        match (self, outcome) {
            (
                Answer::Replicated {
                    then,
                    version,
                    replicas,
                },
                outcome,
            ) => {
                let confirmed = match outcome {
                    Outcome::Integer(n) if n >= i64::from(replicas) => {
                        return then.respond(Outcome::Bulk(0..version.len()), &version, response);
                    }
                    Outcome::Integer(n) => {
                        format!("{n} of {replicas} replicas confirmed it in time")
                    }
                    Outcome::Failed(why) => why,
                    other => format!("WAIT answered {other:?}"),
                };
                // The write is in the stream and cannot be taken back: say so.
                let body = format!(
                    "the write is queued on the primary but not confirmed: {confirmed}; \
                     it may still be written (a retry is safe: writes are idempotent)\n"
                );
                response.send_with_headers(
                    Status::ServiceUnavailable,
                    &[("Retry-After", "1")],
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                )
            }
            (Answer::KvRead(read), outcome) => read.respond(outcome, bytes, response),
            (Answer::KvWriteIf(write), outcome) => write.respond(outcome, bytes, response),
            (Answer::Stats, Outcome::Failed(why)) => {
                unavailable("could not be read", &why, response)
            }
            (_, Outcome::Failed(why)) => {
                unavailable("the write could not be queued", &why, response)
            }
            (Answer::Events { count, json, .. }, _) => {
                if json {
                    let body = format!("{{\"count\":{count}}}");
                    response.send(Status::Accepted, "application/json", body.as_bytes())
                } else {
                    let body = encode_accepted(count);
                    response.send(Status::Accepted, "application/x-flatbuffers", &body)
                }
            }
            (Answer::Stats, outcome) => {
                let mut values = [0i64; stats::FIELDS.len()];
                if let Outcome::List(items) = &outcome {
                    for (value, item) in values.iter_mut().zip(items) {
                        *value = item
                            .as_ref()
                            .and_then(|range| std::str::from_utf8(&bytes[range.clone()]).ok())
                            .and_then(|text| text.parse().ok())
                            .unwrap_or(0);
                    }
                }
                let body = stats::body(values);
                response.send(Status::Ok, "application/json", body.as_bytes())
            }
            (Answer::KvWritten { .. } | Answer::KvDeleted { .. }, outcome) => {
                kv::accepted(&outcome, bytes, response)
            }
        }
    }
}

/// 503 with `Retry-After`, saying what failed and why. A `maxmemory`
/// refusal from Redis is said in words an operator acts on.
fn unavailable(what: &str, why: &str, response: ResponseWriter<'_>) -> Sent {
    let why = if why.starts_with("OOM") {
        "Redis is at maxmemory and can evict nothing that is not yet written back; \
         it frees memory as the database core drains the queue"
    } else {
        why
    };
    let body = format!("{what}: {why}\n");
    response.send_with_headers(
        Status::ServiceUnavailable,
        &[("Retry-After", "1")],
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
}

/// The API as one executor runs it: borrowed for the length of one batch of
/// received bytes.
pub struct Api<'a> {
    /// Shared, read-only state.
    pub shared: &'a ApiShared,
    /// This executor's index in the registry.
    pub executor: usize,
    /// This executor's metrics.
    pub metrics: &'a mut CoreMetrics,
    /// The Redis commands handlers issued for deferred answers, in order.
    pub outgoing: &'a mut Vec<Outgoing>,
}

impl Service for Api<'_> {
    fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
        let (route, sent) = match lookup(request.method, request.path) {
            Lookup::NotFound => (
                Route::Unmatched,
                response.reject(Rejection::new(Status::NotFound, "no such route")),
            ),
            Lookup::WrongMethod(route, allow) => (
                route,
                response.reject_with_headers(
                    Rejection::new(Status::MethodNotAllowed, "method not allowed on this route"),
                    &[("Allow", allow)],
                ),
            ),
            Lookup::Found(
                route @ (Route::Events
                | Route::KvGet
                | Route::KvPut
                | Route::KvDelete
                | Route::Stats),
            ) if self
                .shared
                .auth
                .as_ref()
                .is_some_and(|tokens| !tokens.allow(request.header("authorization"))) =>
            {
                (
                    route,
                    response.reject_with_headers(
                        Rejection::new(Status::Unauthorized, "missing or invalid bearer token"),
                        &[("WWW-Authenticate", "Bearer")],
                    ),
                )
            }
            Lookup::Found(Route::Events) => (
                Route::Events,
                events::handle(
                    request,
                    response,
                    self.shared.writes.as_ref(),
                    self.outgoing,
                ),
            ),
            Lookup::Found(route @ (Route::KvGet | Route::KvPut | Route::KvDelete)) => (
                route,
                kv::handle(
                    request,
                    response,
                    self.shared.writes.as_ref(),
                    self.outgoing,
                ),
            ),
            Lookup::Found(Route::Stats) => (
                Route::Stats,
                stats::handle(response, self.shared.writes.as_ref(), self.outgoing),
            ),
            Lookup::Found(route) => (route, self.dispatch(route, response)),
        };
        // A deferred answer is counted when it is written.
        if !sent.is_deferred() {
            self.metrics.record_response(route, sent.status());
        }
        sent
    }

    fn reject(&mut self, rejection: Rejection, response: ResponseWriter<'_>) -> Sent {
        let sent = response.reject(rejection);
        self.metrics
            .record_response(Route::Unmatched, sent.status());
        sent
    }
}

impl Api<'_> {
    fn dispatch(&mut self, route: Route, response: ResponseWriter<'_>) -> Sent {
        match route {
            Route::Plaintext => plaintext::handle(response),
            Route::Livez => livez::handle(response),
            Route::Readyz => readyz::handle(&self.shared.lifecycle, response),
            Route::Metrics if !self.shared.public_metrics => response.reject(Rejection::new(
                Status::NotFound,
                "/metrics is served on the admin listener (admin_listen)",
            )),
            Route::Metrics => {
                // The scrape sees this core's figures as of now.
                self.shared.registry.publish(self.executor, self.metrics);
                metrics::handle(&self.shared.registry, response)
            }
            Route::Events | Route::KvGet | Route::KvPut | Route::KvDelete | Route::Stats => {
                unreachable!("handled with its request in Api::handle")
            }
            Route::Unmatched => response.reject(Rejection::new(Status::NotFound, "no such route")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_table_on_one_path() {
        for route in Route::ALL {
            let rows = ROUTES
                .iter()
                .filter(|(_, methods, _)| methods.iter().any(|(_, r)| *r == route))
                .count();
            let expected = usize::from(route != Route::Unmatched);
            assert_eq!(rows, expected, "{route:?}");
            assert_eq!(Route::ALL[route.index()], route);
        }
    }

    #[test]
    fn lookup_finds_routes_methods_and_misses() {
        assert!(matches!(
            lookup(Method::Get, b"/plaintext"),
            Lookup::Found(Route::Plaintext)
        ));
        assert!(matches!(
            lookup(Method::Head, b"/livez"),
            Lookup::Found(Route::Livez)
        ));
        assert!(matches!(
            lookup(Method::Post, b"/readyz"),
            Lookup::WrongMethod(Route::Readyz, "GET, HEAD")
        ));
        assert!(matches!(
            lookup(Method::Get, b"/plaintext/"),
            Lookup::NotFound
        ));
        assert!(matches!(lookup(Method::Get, b"/"), Lookup::NotFound));
        assert!(matches!(
            lookup(Method::Put, b"/v1/kv/a"),
            Lookup::Found(Route::KvPut)
        ));
        assert!(matches!(
            lookup(Method::Head, b"/v1/kv/a"),
            Lookup::Found(Route::KvGet)
        ));
        assert!(matches!(
            lookup(Method::Post, b"/v1/kv/a"),
            Lookup::WrongMethod(Route::KvGet, "GET, HEAD, PUT, DELETE")
        ));
        assert!(matches!(lookup(Method::Get, b"/v1/kv/"), Lookup::NotFound));
    }
}
