//! Host tooling: what this machine, and the Redis and PostgreSQL it runs
//! against, offer and need. None of it is on a request's path.
//!
//! - [`probe`]: the io_uring features this kernel has, found by trying them.
//! - [`doctor`]: `millrace doctor`: the probe, limits, a tuning profile's drift.
//! - [`tuning`]: `tuning/` profiles: parse them, compare a host with one.
//! - [`durability`]: what a 202 survives on the Redis and PostgreSQL in use.
//! - [`plan`]: `millrace plan`: the hardware a target load needs.

pub mod doctor;
pub mod durability;
pub mod plan;
pub mod probe;
pub mod tuning;
