//! The per-core runtime: one pinned executor per core, each owning its
//! ring, its listener, its connections, its Redis Cluster connections and
//! the tasks its handlers wait on. It knows no route: it hands every
//! complete request to an [`Application`] and writes the answer it gets,
//! now or when the task the application started finishes.
//!
//! - [`executor`]: the loop: accept, receive, HTTP, tasks, send, timers.
//! - [`tasks`]: the futures deferred answers run as, and their deadlines;
//!   [`future`]: where those futures are kept.
//! - [`io`]: what a task can wait for ([`Io`]): Redis commands, read-through
//!   lookups, the end of a turn.
//! - `connection`, `timers`: a client connection's state and deadlines.

pub mod access_log;
mod connection;
mod door;
pub mod executor;
pub mod future;
pub mod io;
pub mod tasks;
mod timers;

pub use executor::{Executor, ExecutorConfig, ExecutorTls, REJECT_SLOTS};
pub use future::TaskFuture;
pub use io::{Failure, Io, IoConfig, LookupCall, RedisCall, Row, buffer, recycle, script};

use crate::http::{Rejection, Request, Response, ResponseWriter, Sent};
use crate::metrics::{CoreMetrics, RouteId};

/// What an executor serves: one instance per core, made on the core's own
/// thread, so it may hold state that is not `Send`.
pub trait Application: 'static {
    /// Answer a complete request: write the response now, or defer it
    /// ([`Turn::later`]). Returns the route it took, for metrics.
    fn handle(
        &mut self,
        request: &Request<'_>,
        response: ResponseWriter<'_>,
        turn: &mut Turn<'_>,
    ) -> (RouteId, Sent);

    /// Answer a request the HTTP layer refused (the connection closes
    /// after it). Returns the route to count it under.
    fn reject(
        &mut self,
        rejection: Rejection,
        response: ResponseWriter<'_>,
        turn: &mut Turn<'_>,
    ) -> (RouteId, Sent);
}

/// An answer a handler deferred: the future that makes it.
pub struct Later {
    /// The route, for metrics.
    pub route: RouteId,
    /// The answer, when ready.
    pub future: TaskFuture<Response>,
}

/// What an application may touch of its executor while it answers.
pub struct Turn<'a> {
    pub(crate) metrics: &'a mut CoreMetrics,
    pub(crate) later: &'a mut Vec<Later>,
    pub(crate) executor: usize,
}

impl Turn<'_> {
    /// The answer just deferred ([`ResponseWriter::defer`]) comes from
    /// `future`: call exactly once for each deferred answer, in order.
    pub fn later(&mut self, route: RouteId, future: TaskFuture<Response>) {
        self.later.push(Later { route, future });
    }

    /// This core's figures as of now.
    pub fn metrics(&self) -> &CoreMetrics {
        self.metrics
    }

    /// This executor's index among all executors.
    pub fn executor(&self) -> usize {
        self.executor
    }
}
