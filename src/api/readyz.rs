//! `GET /readyz`: whether to send this instance traffic. 503 while starting
//! or draining, so a load balancer stops routing here before connections close.

use crate::http::{Rejection, ResponseWriter, Sent, Status};
use crate::lifecycle::{Lifecycle, Stage};

/// 200 when ready, 503 with the reason otherwise.
pub fn handle(lifecycle: &Lifecycle, response: ResponseWriter<'_>) -> Sent {
    match lifecycle.stage() {
        Stage::Ready => response.send(Status::Ok, "text/plain; charset=utf-8", b"ready\n"),
        Stage::Starting => response.reject(Rejection::new(Status::ServiceUnavailable, "starting")),
        Stage::Draining => response.reject(Rejection::new(Status::ServiceUnavailable, "draining")),
    }
}
