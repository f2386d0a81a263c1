//! The smallest service on millrace: one route of its own beside the health
//! probes, answered at once. docs/guide.md starts from it.
//!
//! ```sh
//! cargo run --release --example hello -- serve --listen 127.0.0.1:8080 --cores 0
//! curl http://127.0.0.1:8080/hello/you
//! ```

use millrace::App;
use millrace::app::{Cx, Request, Responder, Routes, Sent, Status};

fn hello(_: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>) -> Sent {
    let name = request.param("name").unwrap_or(b"world");
    let body = [b"hello, ", name, b"\n"].concat();
    response.send(Status::Ok, "text/plain", &body)
}

fn routes() -> Routes<()> {
    millrace::routes::health().get("/hello/{name}", hello)
}

fn main() -> std::process::ExitCode {
    App::new(|_core| ())
        .routes(routes())
        .main("hello", "Says hello")
}
