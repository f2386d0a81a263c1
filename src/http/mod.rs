//! HTTP/1.1, sans-IO: bytes in, responses out, no sockets.
//!
//! - [`request`]: a request head from bytes, validated ([`RequestHead`]).
//! - [`chunked`]: the chunked transfer coding of request bodies.
//! - [`response`]: status codes, the cached `Date` header and the response encoder.
//! - [`client`]: responses read back, for the load generator.
//! - [`proxy`]: the PROXY protocol header a load balancer sends first.
//! - [`conn`]: one connection's state: framing, pipelining, keep-alive,
//!   `100-continue`, limits. It hands each complete request to a [`Service`].
//!
//! The reactor feeds received bytes to an [`HttpConnection`] and sends what it
//! wrote; the load generator reuses the same encoder and status table.

pub mod chunked;
pub mod client;
pub mod conn;
pub mod proxy;
pub mod request;
pub mod response;

pub use conn::{HttpConnection, HttpEnv, Limits, Phase, Request, Service};
pub use request::{Method, RequestHead, Version};
pub use response::{DateHeader, FixedResponse, Rejection, Response, ResponseWriter, Sent, Status};
