//! The application side: what a service built on millrace writes, and
//! what millrace's own routes are written with.
//!
//! A service declares its routes in one place ([`Routes`]: a method, a
//! path pattern with parameters, a handler), its write-back tables
//! ([`Table`]) and its per-core state, and hands them to an
//! [`App`](crate::App), which starts the server the way `millrace serve`
//! starts.
//!
//! A handler gets the core's context ([`Cx`]: its state, its [`Store`]
//! and [`Io`]), the request ([`Request`]) and a [`Responder`] to answer
//! with, once. It answers at once (no allocation), or hands the responder
//! a future ([`Responder::later`]) whose steps are straight-line code:
//!
//! ```no_run
//! use millrace::app::{Cx, Request, Responder, Response, Sent, Status};
//!
//! fn get_link(cx: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>) -> Sent {
//!     let code = request.param("code").unwrap_or_default();
//!     // Sent at once; the future owns what it needs.
//!     let read = cx.store().read("links", code);
//!     response.later(async move {
//!         match read.await {
//!             Ok(found) => match found.into_value() {
//!                 Some(url) => Response::new(Status::Found)
//!                     .header("Location", &String::from_utf8_lossy(&url)),
//!                 None => Response::text(Status::NotFound, "no such link\n"),
//!             },
//!             Err(e) => Response::text(Status::ServiceUnavailable, e.to_string()),
//!         }
//!     })
//! }
//! ```
//!
//! Per-core state needs neither `Send` nor `Sync`: each core makes its own
//! with the function given to [`App::new`](crate::App::new), on its own thread, and a
//! handler's future may keep an `Rc` of it. Deadlines
//! (`request_timeout_ms`), shedding (`max_redis_in_flight`), metrics per
//! route and graceful drain apply to every route alike.
//!
//! - [`router`]: patterns and the routing table.
//! - [`store`]: the write-back queue and the cache, as a handler uses them.
//! - [`auth`]: bearer tokens for protected routes.

pub mod auth;
pub mod router;
pub mod store;

use std::borrow::Cow;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use crate::http;
use crate::lifecycle::{Lifecycle, Readiness};
use crate::metrics::{CoreMetrics, MetricsRegistry};
use crate::runtime::{Application, TaskFuture, Turn};

pub use crate::http::{FixedResponse, Method, Rejection, Response, Sent, Status};
pub use crate::metrics::RouteId;
pub use crate::redis::command::Command;
pub use crate::redis::resp::OwnedReply;
pub use crate::runtime::{Failure, Io, buffer, recycle};
pub use crate::writeback::queue::{Cached, Preconditions, TagList, Version};
pub use crate::writeback::table::{ColumnType, Fields, Merge, Row, Table};
pub use router::{Methods, Pattern};
pub use store::{Found, ReadError, Store, WriteError, WritePath};

use router::{Matched, Params, RouteSpec};

/// A request as a handler sees it: the HTTP request, borrowed from the
/// receive buffer, and the parameters its route's pattern named.
pub struct Request<'r> {
    http: &'r http::Request<'r>,
    params: Params,
    names: &'r [Box<str>],
}

impl<'r> Request<'r> {
    /// The method.
    pub fn method(&self) -> Method {
        self.http.method
    }

    /// The path, percent-encoding untouched.
    pub fn path(&self) -> &'r [u8] {
        self.http.path
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&'r [u8]> {
        self.http.query
    }

    /// The body, decoded if it was chunked.
    pub fn body(&self) -> &'r [u8] {
        self.http.body
    }

    /// The first header field called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&'r [u8]> {
        self.http.header(name)
    }

    /// Parameter `name` of the route's pattern, as sent (percent-encoding
    /// kept; see [`percent_decode`]).
    pub fn param(&self, name: &str) -> Option<&'r [u8]> {
        let index = self.names.iter().position(|n| &**n == name)?;
        self.params.get(index, self.http.path)
    }
}

/// `encoded` with each `%XX` decoded; at most `max_bytes` long once
/// decoded, any bytes (`%00` included). Borrowed when there is nothing to
/// decode.
pub fn percent_decode(encoded: &[u8], max_bytes: usize) -> Result<Cow<'_, [u8]>, Rejection> {
    if !encoded.contains(&b'%') {
        return match encoded.len() <= max_bytes {
            true => Ok(Cow::Borrowed(encoded)),
            false => Err(Rejection::new(Status::UriTooLong, "longer than allowed")),
        };
    }
    const BAD_ESCAPE: Rejection = Rejection::new(Status::BadRequest, "malformed percent-escape");
    let hex = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    };
    // Decoding never lengthens; a value too long encoded may still fit.
    let mut decoded = Vec::with_capacity(encoded.len().min(max_bytes + 1));
    let mut rest = encoded;
    while let Some((&byte, after)) = rest.split_first() {
        let byte = match byte {
            b'%' => match after {
                [high, low, ..] => match (hex(*high), hex(*low)) {
                    (Some(h), Some(l)) => {
                        rest = &after[2..];
                        h << 4 | l
                    }
                    _ => return Err(BAD_ESCAPE),
                },
                _ => return Err(BAD_ESCAPE),
            },
            _ => {
                rest = after;
                byte
            }
        };
        if decoded.len() == max_bytes {
            return Err(Rejection::new(Status::UriTooLong, "longer than allowed"));
        }
        decoded.push(byte);
    }
    Ok(Cow::Owned(decoded))
}

/// What every core shares, read-only.
pub struct Shared {
    /// Starting, ready or draining.
    pub lifecycle: Arc<Lifecycle>,
    /// What `/readyz` answers: the stage, and the dependencies asked for.
    pub readiness: Arc<Readiness>,
    /// Every core's published metrics.
    pub registry: Arc<MetricsRegistry>,
    /// Bearer tokens protected routes require; `None`: open.
    pub auth: Option<auth::Tokens>,
    /// Whether `/metrics` is served on the public port too.
    pub public_metrics: bool,
}

/// What a handler may use besides the request: its core's state, store
/// and operations, and what the server shares.
pub struct Cx<'a, S> {
    state: &'a Rc<S>,
    store: &'a Store,
    shared: &'a Shared,
    metrics: &'a CoreMetrics,
    executor: usize,
}

impl<S> Cx<'_, S> {
    /// This core's state.
    pub fn state(&self) -> &Rc<S> {
        self.state
    }

    /// This core's write-back queue and cache.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// This core's operations: Redis commands, lookups, tasks.
    pub fn io(&self) -> &Io {
        self.store.io()
    }

    /// Starting, ready or draining.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.shared.lifecycle
    }

    /// What the server shares.
    pub fn shared(&self) -> &Shared {
        self.shared
    }

    /// Copy this core's figures, as of now, into the registry (a scrape
    /// answered here then sees them).
    pub fn publish_metrics(&self) {
        self.shared.registry.publish(self.executor, self.metrics);
    }
}

/// Answers one request, once: now, or later from a future.
pub struct Responder<'a> {
    writer: http::ResponseWriter<'a>,
    later: &'a mut Option<TaskFuture<Response>>,
}

impl Responder<'_> {
    /// A complete response.
    pub fn send(self, status: Status, content_type: &str, body: &[u8]) -> Sent {
        self.writer.send(status, content_type, body)
    }

    /// A complete response with extra header fields.
    pub fn send_with_headers(
        self,
        status: Status,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Sent {
        self.writer
            .send_with_headers(status, headers, content_type, body)
    }

    /// A response rendered at compile time.
    pub fn send_fixed(self, response: &FixedResponse) -> Sent {
        self.writer.send_fixed(response)
    }

    /// `304 Not Modified` with `headers`.
    pub fn not_modified(self, headers: &[(&str, &str)]) -> Sent {
        self.writer.not_modified(headers)
    }

    /// A response built as a value.
    pub fn respond(self, response: &Response) -> Sent {
        self.writer.send_response(response)
    }

    /// A refusal: its status and reason.
    pub fn reject(self, rejection: Rejection) -> Sent {
        self.writer.reject(rejection)
    }

    /// A refusal with extra header fields.
    pub fn reject_with_headers(self, rejection: Rejection, headers: &[(&str, &str)]) -> Sent {
        self.writer.reject_with_headers(rejection, headers)
    }

    /// Answer with what `future` gives, when it does. The connection's
    /// later requests are answered after this one, in order; the future
    /// runs on this core (it need not be `Send`) and is dropped, the
    /// request answered 503, if it takes longer than `request_timeout_ms`.
    pub fn later(self, future: impl Future<Output = Response> + 'static) -> Sent {
        *self.later = Some(TaskFuture::new(future));
        self.writer.defer()
    }
}

/// A request handler: answer through the responder, exactly once.
/// Handlers are shared by every core (`Send + Sync`); per-core state is
/// in [`Cx::state`].
pub trait Handler<S>: Send + Sync + 'static {
    /// Answer `request`.
    fn call(&self, cx: &Cx<'_, S>, request: &Request<'_>, response: Responder<'_>) -> Sent;
}

impl<S, F> Handler<S> for F
where
    F: Fn(&Cx<'_, S>, &Request<'_>, Responder<'_>) -> Sent + Send + Sync + 'static,
{
    fn call(&self, cx: &Cx<'_, S>, request: &Request<'_>, response: Responder<'_>) -> Sent {
        self(cx, request, response)
    }
}

/// The routes of a service, declared in one place, tried in order.
pub struct Routes<S> {
    specs: Vec<RouteSpec>,
    handlers: Vec<Box<dyn Handler<S>>>,
    protected: Vec<bool>,
    errors: Vec<String>,
}

impl<S: 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            specs: Vec::new(),
            handlers: Vec::new(),
            protected: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl<S: 'static> Routes<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `handler` answers `methods` on paths that match `pattern` (see
    /// [`router`]). Its metrics label is `METHOD pattern` until
    /// [`Routes::named`] names it.
    pub fn route(mut self, methods: &[Method], pattern: &str, handler: impl Handler<S>) -> Self {
        match Pattern::parse(pattern) {
            Ok(parsed) => {
                let label = Methods::of(methods).allow().replace(", ", ",");
                self.specs.push(RouteSpec {
                    name: format!("{label} {pattern}").into(),
                    methods: Methods::of(methods),
                    pattern: parsed,
                });
                self.handlers.push(Box::new(handler));
                self.protected.push(false);
            }
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// `GET` (and `HEAD`) on `pattern`.
    pub fn get(self, pattern: &str, handler: impl Handler<S>) -> Self {
        self.route(&[Method::Get, Method::Head], pattern, handler)
    }

    /// `POST` on `pattern`.
    pub fn post(self, pattern: &str, handler: impl Handler<S>) -> Self {
        self.route(&[Method::Post], pattern, handler)
    }

    /// `PUT` on `pattern`.
    pub fn put(self, pattern: &str, handler: impl Handler<S>) -> Self {
        self.route(&[Method::Put], pattern, handler)
    }

    /// `DELETE` on `pattern`.
    pub fn delete(self, pattern: &str, handler: impl Handler<S>) -> Self {
        self.route(&[Method::Delete], pattern, handler)
    }

    /// Name the route declared last: its `route` label in metrics.
    pub fn named(mut self, name: &str) -> Self {
        if let Some(spec) = self.specs.last_mut() {
            spec.name = name.to_string().into();
        }
        self
    }

    /// The route declared last requires a bearer token, when the server
    /// has tokens configured (`auth_tokens_file`, `MILLRACE_AUTH_TOKENS`):
    /// without one it is answered 401.
    pub fn protected(mut self) -> Self {
        if let Some(p) = self.protected.last_mut() {
            *p = true;
        }
        self
    }

    /// Add every route of `other` after these.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.specs.extend(other.specs);
        self.handlers.extend(other.handlers);
        self.protected.extend(other.protected);
        self.errors.extend(other.errors);
        self
    }

    /// The compiled table, or what is wrong with the declarations.
    pub fn compile(self) -> Result<RouteTable<S>, String> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let table = router::Table::new(self.specs)?;
        let unmatched = table.routes().len() as RouteId;
        let mut names: Vec<String> = table.routes().iter().map(|r| r.name.to_string()).collect();
        names.push("unmatched".into());
        Ok(RouteTable {
            table,
            handlers: self.handlers,
            protected: self.protected,
            unmatched,
            names,
        })
    }
}

/// Compiled routes, shared by every core.
pub struct RouteTable<S> {
    table: router::Table,
    handlers: Vec<Box<dyn Handler<S>>>,
    protected: Vec<bool>,
    /// The metrics label of requests no route took: the last one.
    unmatched: RouteId,
    names: Vec<String>,
}

impl<S> RouteTable<S> {
    /// Every route's metrics label, by [`RouteId`], `unmatched` last.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// One core's application: the shared routes with this core's state.
pub struct CoreApp<S> {
    routes: Arc<RouteTable<S>>,
    state: Rc<S>,
    store: Store,
    shared: Arc<Shared>,
}

impl<S: 'static> CoreApp<S> {
    /// Serve `routes` with this core's `state` and `store`.
    pub fn new(
        routes: Arc<RouteTable<S>>,
        state: S,
        store: Store,
        shared: Arc<Shared>,
    ) -> CoreApp<S> {
        CoreApp {
            routes,
            state: Rc::new(state),
            store,
            shared,
        }
    }
}

impl<S: 'static> Application for CoreApp<S> {
    fn handle(
        &mut self,
        request: &http::Request<'_>,
        response: http::ResponseWriter<'_>,
        turn: &mut Turn<'_>,
    ) -> (RouteId, Sent) {
        let routes = &*self.routes;
        let (id, params) = match routes.table.find(request.method, request.path) {
            Matched::Route(id, params) => (id, params),
            Matched::NotFound => {
                let rejection = Rejection::new(Status::NotFound, "no such route");
                return (routes.unmatched, response.reject(rejection));
            }
            Matched::WrongMethod(id, allow) => {
                let rejection =
                    Rejection::new(Status::MethodNotAllowed, "method not allowed on this route");
                return (
                    id,
                    response.reject_with_headers(rejection, &[("Allow", allow)]),
                );
            }
        };
        let index = usize::from(id);
        if routes.protected[index]
            && let Some(tokens) = &self.shared.auth
            && !tokens.allow(request.header("authorization"))
        {
            let rejection = Rejection::new(Status::Unauthorized, "missing or invalid bearer token");
            let sent = response.reject_with_headers(rejection, &[("WWW-Authenticate", "Bearer")]);
            return (id, sent);
        }
        let request = Request {
            http: request,
            params,
            names: routes.table.routes()[index].pattern.names(),
        };
        let mut later = None;
        let sent = {
            let cx = Cx {
                state: &self.state,
                store: &self.store,
                shared: &self.shared,
                metrics: turn.metrics(),
                executor: turn.executor(),
            };
            let responder = Responder {
                writer: response,
                later: &mut later,
            };
            routes.handlers[index].call(&cx, &request, responder)
        };
        if let Some(future) = later {
            turn.later(id, future);
        }
        (id, sent)
    }

    fn reject(
        &mut self,
        rejection: Rejection,
        response: http::ResponseWriter<'_>,
        _: &mut Turn<'_>,
    ) -> (RouteId, Sent) {
        (self.routes.unmatched, response.reject(rejection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_bounded_and_strict() {
        assert_eq!(&*percent_decode(b"a%2Fb%00%ff", 16).unwrap(), b"a/b\0\xff");
        assert_eq!(&*percent_decode(b"%41%4a", 16).unwrap(), b"AJ");
        assert_eq!(percent_decode(&b"%6b".repeat(16), 16).unwrap().len(), 16);
        // Nothing to decode: the bytes as given, not a copy.
        assert!(matches!(
            percent_decode(b"user:1", 16),
            Ok(Cow::Borrowed(b"user:1"))
        ));
        assert!(percent_decode(&[b'k'; 16], 16).is_ok());
        assert_eq!(
            percent_decode(&[b'k'; 17], 16).unwrap_err().status,
            Status::UriTooLong
        );
        for bad in [&b"%"[..], b"%4", b"%zz", b"%4g"] {
            assert_eq!(
                percent_decode(bad, 16).unwrap_err().status,
                Status::BadRequest
            );
        }
    }

    #[test]
    fn a_route_is_labelled_by_its_methods_and_pattern_until_named() {
        let handler = |_: &Cx<'_, ()>, _: &Request<'_>, r: Responder<'_>| {
            r.send(Status::Ok, "text/plain", b"")
        };
        let table = Routes::new()
            .get("/a/{id}", handler)
            .post("/b", handler)
            .named("b")
            .compile()
            .unwrap();
        assert_eq!(table.names(), ["GET,HEAD /a/{id}", "b", "unmatched"]);
        let error = Routes::<()>::new()
            .get("nope", handler)
            .compile()
            .err()
            .unwrap();
        assert!(error.contains("must start with /"), "{error}");
    }
}
