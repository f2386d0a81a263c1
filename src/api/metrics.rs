//! `GET /metrics`: every core's figures in the Prometheus text format.

use crate::http::{ResponseWriter, Sent, Status};
use crate::metrics::{CONTENT_TYPE, MetricsRegistry};

/// Render the registry. Allocates: a scrape is rare and not on the hot path.
pub fn handle(registry: &MetricsRegistry, response: ResponseWriter<'_>) -> Sent {
    let mut text = String::with_capacity(8 * 1024);
    registry.render(&mut text);
    response.send(Status::Ok, CONTENT_TYPE, text.as_bytes())
}
