//! millrace: a thread-per-core io_uring API server.
//!
//! Layout, with requests flowing down the list:
//!
//! - [`server`]: `millrace serve`: probes the kernel, binds one SO_REUSEPORT
//!   listener per executor, starts the pinned executors, handles signals.
//! - [`reactor`]: one executor per core: its io_uring ring, provided buffers,
//!   connections and timers. Moves bytes; knows nothing of HTTP's rules.
//! - [`http`]: HTTP/1.1, sans-IO: request heads, chunked bodies, responses,
//!   one connection's state. Pure functions over bytes.
//! - [`api`]: the routing table and one file per endpoint.
//! - [`metrics`]: per-core counters and their Prometheus exposition.
//! - [`admin`]: the admin listener, apart from the public port, serving
//!   `/metrics`, `/livez` and `/readyz` from what the executors publish.
//!
//! Beside them: [`load`] (`millrace load`, the load generator, on the same
//! engine and HTTP code), [`config`] (flags > environment > file > defaults),
//! [`lifecycle`] (starting, ready, draining), [`probe`] and [`doctor`]
//! (what this kernel offers), [`durability`] (what a 202 survives on the
//! Redis and PostgreSQL it runs against).

pub mod admin;
pub mod api;
pub mod config;
pub mod doctor;
pub mod durability;
pub mod http;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod payload;
pub mod plan;
pub mod probe;
pub mod reactor;
pub mod redis;
pub mod server;
pub mod signals;
pub mod tuning;
pub mod writeback;
