//! `GET /plaintext`: TechEmpower's plaintext test. A fixed body, every
//! required header, rendered at compile time: nothing computed per request.

use crate::app::{Cx, FixedResponse, Request, Responder, Sent, Status};

const HELLO: FixedResponse = FixedResponse::new(
    Status::Ok,
    b"Content-Type: text/plain\r\nContent-Length: 13\r\n",
    b"Hello, World!",
);

/// Answer with `Hello, World!`.
pub fn handle(_: &Cx<'_, ()>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    response.send_fixed(&HELLO)
}
