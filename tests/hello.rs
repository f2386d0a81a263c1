//! `examples/hello`, the guide's first service: its route answers from the
//! path parameter, the health probes it took from `routes::health()` answer,
//! its responses are counted under its route's label, and SIGTERM drains it
//! to a clean exit.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{PATIENCE, Server, sample};

#[test]
fn the_guides_first_service_serves_its_route_and_the_health_probes() {
    let hello = common::example("hello");
    let mut server = Server::start_program(&hello, &[], &[]);

    let answer = server.get("/hello/you");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "hello, you\n");
    assert_eq!(
        server.get("/hello/").status,
        404,
        "a parameter is not empty"
    );
    assert_eq!(server.get("/livez").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/plaintext").status, 404, "only its own routes");

    // Figures are published every 100 ms.
    let series =
        r#"millrace_http_requests_total{core="0",route="GET,HEAD /hello/{name}",status="200"}"#;
    let deadline = Instant::now() + PATIENCE;
    let mut metrics = server.metrics();
    while sample(&metrics, series) != 1 {
        assert!(
            Instant::now() < deadline,
            "{series} never reached 1:\n{metrics}"
        );
        thread::sleep(Duration::from_millis(50));
        metrics = server.metrics();
    }

    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
}
