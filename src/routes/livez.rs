//! `GET /livez`: the process is up and its executor is turning.

use crate::app::{Cx, Request, Responder, Sent, Status};

/// Always 200: an executor that can answer is alive.
pub fn handle<S>(_: &Cx<'_, S>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    response.send(Status::Ok, "text/plain; charset=utf-8", b"live\n")
}
