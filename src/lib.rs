//! millrace: a thread-per-core io_uring API server, and an engine for
//! services of one's own on the same runtime.
//!
//! Layers, each using only those below it (`tests/layers.rs` checks):
//!
//! 1. Protocols and leaves, sans-IO: [`http`] (HTTP/1.1 heads, bodies,
//!    responses, one connection's state), [`redis`]'s RESP, slots, layout
//!    and cluster state machine, [`payload`] (FlatBuffers), the write-back
//!    [`writeback::queue`] scripts and [`writeback::table`] rows,
//!    [`metrics`], [`lifecycle`], [`rng`], [`tls`] (rustls sessions as
//!    record layers, certificates and their reloads).
//! 2. [`ring`]: the io_uring layer: the ring and its one submission path,
//!    tokens as (owner, operation), a socket on a ring
//!    ([`ring::socket::RingSocket`]), provided buffers.
//! 3. I/O on it: the Redis Cluster's sockets ([`redis::links`]), the blocking
//!    [`redis::driver`], and the database core ([`writeback`]: PostgreSQL,
//!    read-through).
//! 4. [`runtime`]: one pinned executor per core: its listener, connections,
//!    tasks and [`runtime::Io`]. It knows no route.
//! 5. [`app`]: the public API a service is written with: routes, handlers,
//!    the store, write-back tables.
//! 6. [`routes`]: millrace's own routes and tables, written on [`app`].
//! 7. The process: [`server`] ([`App`], which starts a service, its
//!    configuration, admin listener and signals, and `millrace
//!    writeback`); beside it the host tooling ([`host`]: probe, doctor,
//!    tuning, durability, plan) and [`load`], the load generator (on
//!    [`ring`] and [`http`]).

pub mod app;
pub mod host;
pub mod http;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod payload;
pub mod redis;
pub mod ring;
pub mod rng;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod writeback;

pub use server::{App, Core};
