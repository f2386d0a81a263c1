//! `GET /plaintext`: TechEmpower's plaintext test. A fixed body, every
//! required header, nothing computed per request.

use crate::http::{ResponseWriter, Sent, Status};

const BODY: &[u8] = b"Hello, World!";

/// Answer with `Hello, World!`.
pub fn handle(response: ResponseWriter<'_>) -> Sent {
    response.send(Status::Ok, "text/plain", BODY)
}
