//! `GET /plaintext` on may_minihttp with one worker thread, as the
//! TechEmpower entry does it. Usage: peer-may-minihttp [ADDR]
use std::io;

use may_minihttp::{HttpServer, HttpService, Request, Response};

#[derive(Clone)]
struct Plaintext;

impl HttpService for Plaintext {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        if req.path() == "/plaintext" {
            rsp.header("Content-Type: text/plain").body("Hello, World!");
        } else {
            rsp.status_code(404, "Not Found");
        }
        Ok(())
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    may::config().set_workers(1).set_pool_capacity(500).set_stack_size(0x1000);
    let server = HttpServer(Plaintext).start(&addr).expect("listen");
    println!("listening on {addr}");
    server.wait();
}
