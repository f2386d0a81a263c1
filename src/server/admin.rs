//! The admin listener: `/metrics`, `/livez` and `/readyz` on an address of
//! their own (loopback by default), apart from the public port, so that the
//! figures are not open to every client and a scraper never waits behind
//! public traffic.
//!
//! One plain thread accepts; each client gets a thread of its own, up to
//! `admin_max_clients` at once (past that, a 503 and close), and is closed
//! after one answer: scrapes and probes are rare, and nothing here touches
//! the executors' hot path. It reads what the executors publish (the
//! metrics registry, the lifecycle stage). A client has `admin_timeout_ms`
//! for the whole exchange, however it trickles its bytes, so one that
//! stalls never keeps a probe from being answered.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::request::{HeadLimits, Method, parse_head};
use crate::lifecycle::Readiness;
use crate::metrics::{CONTENT_TYPE, MetricsRegistry};

/// How many admin clients are served at once, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Clients served at once; one more is answered 503 and closed.
    pub max_clients: usize,
    /// How long one client may take to send its request and read the
    /// answer, all of it: a deadline from its accept, not a per-read timeout.
    pub timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_clients: 16,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Largest admin request head, in bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The running admin listener.
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    timeout: Duration,
}

impl Admin {
    /// Bind `addr` and serve from a thread of its own.
    pub fn start(
        addr: SocketAddr,
        registry: Arc<MetricsRegistry>,
        readiness: Arc<Readiness>,
        limits: AdminLimits,
    ) -> Result<Admin, String> {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("admin listener: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("millrace-admin".into())
            .spawn(move || {
                let clients = Arc::new(AtomicUsize::new(0));
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match stream {
                        Ok(mut stream) => {
                            if clients.fetch_add(1, Ordering::AcqRel) >= limits.max_clients {
                                clients.fetch_sub(1, Ordering::AcqRel);
                                let _ = stream.set_write_timeout(Some(limits.timeout));
                                let busy = b"too many admin clients\n";
                                let _ = answer(&mut stream, 503, "text/plain", busy, true);
                                continue;
                            }
                            let (registry, readiness) =
                                (Arc::clone(&registry), Arc::clone(&readiness));
                            let client_count = Arc::clone(&clients);
                            let spawned = thread::Builder::new()
                                .name("millrace-admin-client".into())
                                .spawn(move || {
                                    let deadline = Instant::now() + limits.timeout;
                                    if let Err(e) = serve(stream, &registry, &readiness, deadline) {
                                        tracing::debug!(error = %e, "admin client");
                                    }
                                    client_count.fetch_sub(1, Ordering::AcqRel);
                                });
                            if let Err(e) = spawned {
                                tracing::warn!(error = %e, "cannot start an admin client's thread");
                                clients.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin listener cannot accept");
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        Ok(Admin {
            addr,
            stop,
            thread,
            timeout: limits.timeout,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept; it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, self.timeout);
        let _ = self.thread.join();
    }
}

/// Answer one request on `stream` by `deadline`, then close it.
fn serve(
    mut stream: TcpStream,
    registry: &MetricsRegistry,
    readiness: &Readiness,
    deadline: Instant,
) -> io::Result<()> {
    // What is left of the client's time, for the next read or write.
    let left = |stream: &TcpStream| -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client's time is up",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        stream.set_write_timeout(Some(left))
    };
    let limits = HeadLimits {
        max_request_line_bytes: MAX_HEAD_BYTES,
        max_header_bytes: MAX_HEAD_BYTES,
        max_headers: 64,
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match parse_head(&buf, &limits) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() < MAX_HEAD_BYTES => {}
            Ok(None) | Err(_) => {
                return answer(&mut stream, 400, "text/plain", b"bad request\n", false);
            }
        }
        left(&stream)?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    left(&stream)?;
    let with_body = head.method != Method::Head;
    if !matches!(head.method, Method::Get | Method::Head) {
        return answer(&mut stream, 405, "text/plain", b"GET or HEAD\n", with_body);
    }
    match &buf[head.path.clone()] {
        b"/metrics" => {
            let mut text = String::with_capacity(8 * 1024);
            registry.render(&mut text);
            readiness.render(&mut text);
            answer(&mut stream, 200, CONTENT_TYPE, text.as_bytes(), with_body)
        }
        b"/livez" => answer(&mut stream, 200, "text/plain", b"live\n", with_body),
        b"/readyz" => match readiness.check() {
            Ok(()) => answer(&mut stream, 200, "text/plain", b"ready\n", with_body),
            Err(why) => {
                let body = format!("{why}\n");
                answer(&mut stream, 503, "text/plain", body.as_bytes(), with_body)
            }
        },
        _ => answer(&mut stream, 404, "text/plain", b"not found\n", with_body),
    }
}

fn answer(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: millrace\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)
}
