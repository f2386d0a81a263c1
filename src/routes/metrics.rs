//! `GET /metrics`: every core's figures in the Prometheus text format, on
//! the public port only with `public_metrics` (the admin listener always
//! serves them).

use crate::app::{Cx, Rejection, Request, Responder, Sent, Status};
use crate::metrics::CONTENT_TYPE;

/// Render the registry, this core's figures as of now. Allocates: a scrape
/// is rare and not on the hot path.
pub fn handle(cx: &Cx<'_, ()>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    if !cx.shared().public_metrics {
        return response.reject(Rejection::new(
            Status::NotFound,
            "/metrics is served on the admin listener (admin_listen)",
        ));
    }
    cx.publish_metrics();
    let mut text = String::with_capacity(8 * 1024);
    cx.shared().registry.render(&mut text);
    cx.shared().readiness.render(&mut text);
    response.send(Status::Ok, CONTENT_TYPE, text.as_bytes())
}
