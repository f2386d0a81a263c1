//! millrace's own routes and write-back tables, written on the public API
//! ([`crate::app`]) the way a service built on millrace writes its own:
//! one file per endpoint, each decode → execute → encode.
//!
//! | route | file |
//! |---|---|
//! | `GET /plaintext` | [`plaintext`] |
//! | `GET /livez`, `GET /readyz` | [`livez`], [`readyz`] |
//! | `GET /metrics` | [`metrics`] |
//! | `POST /v1/events` | [`events`] (table `events`) |
//! | `GET`, `PUT`, `DELETE /v1/kv/{key}` | [`kv`] (table `kv`) |
//! | `GET /v1/stats` | [`stats`] |

pub mod events;
pub mod kv;
pub mod livez;
pub mod metrics;
pub mod plaintext;
pub mod readyz;
pub mod stats;

use crate::App;
use crate::app::{Rejection, Responder, Response, Routes, Sent, Status, Table};
use crate::payload::BatchLimits;

/// What the built-in routes are held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// What an event batch may hold.
    pub batch: BatchLimits,
    /// Longest key, in bytes once percent-decoded.
    pub max_key_bytes: usize,
    /// Longest value a PUT may store, in bytes.
    pub max_value_bytes: usize,
}

/// `GET /livez` and `GET /readyz`, for any service: what load balancers
/// probe on the public port (the admin listener serves them too).
pub fn health<S: 'static>() -> Routes<S> {
    Routes::new()
        .get("/livez", livez::handle::<S>)
        .named("livez")
        .get("/readyz", readyz::handle::<S>)
        .named("readyz")
}

/// Every built-in route, in the order they are tried.
pub fn routes(limits: Limits) -> Routes<()> {
    Routes::new()
        .get("/plaintext", plaintext::handle)
        .named("plaintext")
        .merge(health())
        .get("/metrics", metrics::handle)
        .named("metrics")
        .merge(events::routes(limits.batch))
        .merge(kv::routes(limits.max_key_bytes, limits.max_value_bytes))
        .get("/v1/stats", stats::handle)
        .named("stats")
        .protected()
}

/// The built-in write-back tables.
pub fn tables() -> Vec<Table> {
    vec![events::table(), kv::table()]
}

/// `millrace serve`'s service: the built-in routes and tables.
pub fn app(limits: Limits) -> App<()> {
    let mut app = App::new(|_| ()).routes(routes(limits));
    for table in tables() {
        app = app.table(table);
    }
    app
}

/// 503 with `Retry-After`: this server has no Redis Cluster.
fn no_redis(response: Responder<'_>) -> Sent {
    response.reject_with_headers(
        Rejection::new(Status::ServiceUnavailable, "no Redis Cluster is configured"),
        &[("Retry-After", "1")],
    )
}

/// 503 with `Retry-After`, saying why.
fn unavailable(why: &str) -> Response {
    Response::text(Status::ServiceUnavailable, format!("{why}\n")).header("Retry-After", "1")
}
