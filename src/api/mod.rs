//! The HTTP API: one routing table, one file per endpoint, each
//! decode → execute → encode. [`Api`] is the [`Service`] an executor hands its
//! connections.

mod events;
mod livez;
mod metrics;
mod plaintext;
mod readyz;

use std::sync::Arc;

use crate::http::{Method, Rejection, Request, ResponseWriter, Sent, Service, Status};
use crate::lifecycle::Lifecycle;
use crate::metrics::{CoreMetrics, MetricsRegistry};
use crate::payload::{BatchLimits, encode_accepted};
use crate::redis::command::{Command, Error as RedisError};
use crate::writeback::queue::Queue;

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
    /// No route: 404, or refused by the HTTP layer before routing.
    Unmatched,
}

/// The routing table: path, route, methods allowed (HEAD goes with GET), and
/// the `Allow` header a 405 carries.
const ROUTES: &[(&[u8], Route, &[Method], &str)] = &[
    (
        b"/plaintext",
        Route::Plaintext,
        &[Method::Get, Method::Head],
        "GET, HEAD",
    ),
    (
        b"/livez",
        Route::Livez,
        &[Method::Get, Method::Head],
        "GET, HEAD",
    ),
    (
        b"/readyz",
        Route::Readyz,
        &[Method::Get, Method::Head],
        "GET, HEAD",
    ),
    (
        b"/metrics",
        Route::Metrics,
        &[Method::Get, Method::Head],
        "GET, HEAD",
    ),
    (b"/v1/events", Route::Events, &[Method::Post], "POST"),
];

impl Route {
    /// Every route, in the order of [`Route::index`].
    pub const ALL: [Route; 6] = [
        Route::Plaintext,
        Route::Livez,
        Route::Readyz,
        Route::Metrics,
        Route::Events,
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
    match ROUTES.iter().find(|(p, ..)| *p == path) {
        None => Lookup::NotFound,
        Some((_, route, methods, _)) if methods.contains(&method) => Lookup::Found(*route),
        Some((_, route, _, allow)) => Lookup::WrongMethod(*route, allow),
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
}

/// The write-back queue and what a write may be.
pub struct WritePath {
    /// The partitions writes are queued on.
    pub queue: Queue,
    /// What an event batch may hold.
    pub limits: BatchLimits,
    /// Entries one partition may hold before writes to it get 503.
    pub backlog_cap_per_partition: u64,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A queued event batch: 202 with the count, in the body's format.
    Events {
        /// Events queued.
        count: u32,
        /// The request was JSON, so is the answer.
        json: bool,
    },
}

impl Answer {
    /// Write the answer to a reply that came: `queued` if Redis took the
    /// write, else the reason it did not.
    pub fn respond(self, queued: Result<(), String>, response: ResponseWriter<'_>) -> Sent {
        match (self, queued) {
            (Answer::Events { count, json }, Ok(())) => {
                if json {
                    let body = format!("{{\"count\":{count}}}");
                    response.send(Status::Accepted, "application/json", body.as_bytes())
                } else {
                    let body = encode_accepted(count);
                    response.send(Status::Accepted, "application/x-flatbuffers", &body)
                }
            }
            (Answer::Events { .. }, Err(why)) => {
                let body = format!("the write could not be queued: {why}\n");
                response.send_with_headers(
                    Status::ServiceUnavailable,
                    &[("Retry-After", "1")],
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                )
            }
        }
    }

    /// Whether a reply means the write was queued.
    pub fn queued(reply: Result<crate::redis::resp::Reply<'_>, RedisError>) -> Result<(), String> {
        match reply {
            Ok(crate::redis::resp::Reply::Bulk(_)) => Ok(()),
            Ok(crate::redis::resp::Reply::Error(e)) => Err(String::from_utf8_lossy(e).into_owned()),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
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
    /// The Redis command a handler issued for a deferred answer.
    pub outgoing: Option<Outgoing>,
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
            Lookup::Found(Route::Events) => (
                Route::Events,
                events::handle(
                    request,
                    response,
                    self.shared.writes.as_ref(),
                    &mut self.outgoing,
                ),
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
            Route::Metrics => {
                // The scrape sees this core's figures as of now.
                self.shared.registry.publish(self.executor, self.metrics);
                metrics::handle(&self.shared.registry, response)
            }
            Route::Events => {
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
    fn every_route_is_in_the_table_once() {
        for route in Route::ALL {
            let rows = ROUTES.iter().filter(|(_, r, ..)| *r == route).count();
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
    }
}
