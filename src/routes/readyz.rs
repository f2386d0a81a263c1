//! `GET /readyz`: whether to send this instance traffic. 503 while starting
//! or draining, so a load balancer stops routing here before connections
//! close, and while a dependency `readyz_checks` names is unwell.

use crate::app::{Cx, Request, Responder, Sent, Status};

/// 200 when ready, 503 with the reason otherwise.
pub fn handle<S>(cx: &Cx<'_, S>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    const TEXT: &str = "text/plain; charset=utf-8";
    match cx.shared().readiness.check() {
        Ok(()) => response.send(Status::Ok, TEXT, b"ready\n"),
        Err(why) => response.send(
            Status::ServiceUnavailable,
            TEXT,
            format!("{why}\n").as_bytes(),
        ),
    }
}
