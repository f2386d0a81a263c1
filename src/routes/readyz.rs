//! `GET /readyz`: whether to send this instance traffic. 503 while starting
//! or draining, so a load balancer stops routing here before connections close.

use crate::app::{Cx, Rejection, Request, Responder, Sent, Status};

/// 200 when ready, 503 with the reason otherwise.
pub fn handle<S>(cx: &Cx<'_, S>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    match cx.lifecycle().stage().readiness() {
        Ok(()) => response.send(Status::Ok, "text/plain; charset=utf-8", b"ready\n"),
        Err(why) => response.reject(Rejection::new(Status::ServiceUnavailable, why)),
    }
}
