//! millrace: a thread-per-core io_uring API server.
//!
//! Layout, with data flowing down the list:
//!
//! - [`http`]: HTTP/1.1, sans-IO. Request heads, chunked bodies, responses,
//!   one connection's state. Pure functions over bytes.
pub mod http;
