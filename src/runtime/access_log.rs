//! The sampled access log: one request in `access_log_sample` as one
//! structured line (method, route, status, latency, body bytes in and out,
//! the client's address when a PROXY header named it). Never a header
//! value or a body: a log line must not carry a token or a user's data.
//!
//! Off (the default), it is one compare per request. On, a countdown per
//! executor picks the requests: no clock read, no random number, no lock.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::{Method, Status};
use crate::metrics::RouteId;

/// Where log lines go: `RUST_LOG=millrace::access=info` keeps them alone.
pub const TARGET: &str = "millrace::access";

/// A request picked for the log, until its answer is written.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Its method; `None` for a request the HTTP layer refused before
    /// reading one.
    pub method: Option<Method>,
    /// Its body's length.
    pub bytes_in: usize,
    /// Who sent it, if a PROXY header said.
    pub client: Option<SocketAddr>,
}

/// One executor's sampler and the route names its lines use.
pub struct AccessLog {
    /// One request in this many; 0: off.
    every: u32,
    /// Requests until the next one logged.
    countdown: u32,
    routes: Vec<String>,
    core: usize,
}

impl AccessLog {
    /// Log one request in `every` (0: none) on the executor of CPU `core`,
    /// naming routes by `routes` ([`RouteId`] order).
    pub fn new(every: u32, routes: Vec<String>, core: usize) -> AccessLog {
        AccessLog {
            every,
            countdown: every,
            routes,
            core,
        }
    }

    /// Whether to log the request at hand.
    #[inline]
    pub fn pick(&mut self) -> bool {
        if self.every == 0 {
            return false;
        }
        self.countdown -= 1;
        if self.countdown > 0 {
            return false;
        }
        self.countdown = self.every;
        true
    }

    /// Write the line for `sample`, answered on `route` with `status` and
    /// a body of `bytes_out` after `took` (from the route's call; 0 for an
    /// answer made at once).
    pub fn write(
        &self,
        sample: &Sample,
        route: RouteId,
        status: Status,
        bytes_out: usize,
        took: Duration,
    ) {
        let route = self
            .routes
            .get(usize::from(route))
            .map_or("unknown", String::as_str);
        let client = sample
            .client
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        tracing::info!(
            target: TARGET,
            core = self.core,
            client = %client,
            method = sample.method.map_or("-", Method::as_str),
            route,
            status = status.code(),
            latency_us = took.as_micros() as u64,
            bytes_in = sample.bytes_in,
            bytes_out,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_every_is_picked_and_none_when_off() {
        let mut log = AccessLog::new(3, Vec::new(), 0);
        let picked: Vec<bool> = (0..9).map(|_| log.pick()).collect();
        assert_eq!(
            picked,
            [false, false, true, false, false, true, false, false, true]
        );
        let mut off = AccessLog::new(0, Vec::new(), 0);
        assert!((0..100).all(|_| !off.pick()));
        let mut all = AccessLog::new(1, Vec::new(), 0);
        assert!((0..10).all(|_| all.pick()));
    }
}
