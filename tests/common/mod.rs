//! Running the real `millrace` binary and talking raw HTTP to it.

#![allow(dead_code)] // Each test binary uses its own part of this module.

pub mod cluster;
pub mod history;
pub mod postgres;
pub mod proxy;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `millrace serve` process on a free loopback port.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it listens for HTTPS, if it does.
    pub tls_addr: Option<SocketAddr>,
    /// Its admin listener (`/metrics`), if it has one.
    pub admin: Option<SocketAddr>,
    /// Everything it logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start on 127.0.0.1 with one executor and `args`.
    pub fn start(args: &[&str]) -> Server {
        let mut full = vec!["--listen", "127.0.0.1:0", "--cores", "1"];
        full.extend_from_slice(args);
        Server::start_with(&full)
    }

    /// Start with exactly `args` after `serve`.
    pub fn start_with(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Start with exactly `args` after `serve`, and `env` set. The admin
    /// listener goes on a free port unless `args` or `env` say otherwise.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(Command::new(env!("CARGO_BIN_EXE_millrace")), args, env)
    }

    /// `program serve` (a service built on millrace, such as an example)
    /// on 127.0.0.1 with one executor, `args` and `env`.
    pub fn start_program(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut full = vec!["--listen", "127.0.0.1:0", "--cores", "1"];
        full.extend_from_slice(args);
        Server::launch(Command::new(program), &full, env)
    }

    /// [`Server::start`] with the open-files limit (soft and hard) set to
    /// `limit`, through util-linux's prlimit.
    pub fn start_with_open_files_limit(limit: u64, args: &[&str]) -> Server {
        let mut prlimit = Command::new("prlimit");
        prlimit
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(env!("CARGO_BIN_EXE_millrace"));
        let mut full = vec!["--listen", "127.0.0.1:0", "--cores", "1"];
        full.extend_from_slice(args);
        Server::launch(prlimit, &full, &[])
    }

    /// Run `command` (the binary, or a wrapper naming it) with `serve`,
    /// `args` and `env`, and wait until it listens.
    fn launch(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = command
            .arg("serve")
            .args(args)
            .env("MILLRACE_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start millrace");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    // The HTTPS address, if any, is on the same line.
                    let tls = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("tls_listen="))
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = addr_tx.send((addr, tls));
                }
                if let Some(admin) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("admin="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = admin_tx.send(admin);
                }

                lines.lock().unwrap().push(line);
            }
        });
        let (addr, tls_addr) = match addr_rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "millrace did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        // The admin listener is up before the public one, if at all.
        let admin = admin_rx.try_recv().ok();
        Server {
            child,
            addr,
            tls_addr,
            admin,
            log,
        }
    }

    /// A connection with timeouts, Nagle off.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        get_on(&mut self.connect(), path)
    }

    /// The `/metrics` text from the admin listener, once every core has
    /// published (they do every 100 ms).
    pub fn metrics(&self) -> String {
        thread::sleep(Duration::from_millis(250));
        let admin = self.admin.expect("an admin listener");
        let mut stream = TcpStream::connect(admin).expect("connect to the admin listener");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    }

    /// Send a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "millrace did not exit:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib * 1024
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One `GET path` on an open connection, and its response.
pub fn get_on(stream: &mut TcpStream, path: &str) -> Response {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_response(stream)
}

/// Read one response (interim 1xx responses included) from `stream`.
pub fn read_response(stream: &mut impl Read) -> Response {
    read_response_to(stream, false)
}

/// Read the response to a HEAD request: its Content-Length describes a body
/// that is not sent.
#[allow(dead_code)]
pub fn read_head_response(stream: &mut impl Read) -> Response {
    read_response_to(stream, true)
}

fn read_response_to(stream: &mut impl Read, head: bool) -> Response {
    try_read_response_to(stream, head).unwrap_or_else(|e| panic!("{e}"))
}

/// Read one response, or say why none could be read (closed, timed out,
/// malformed), for clients that carry on after a failure.
pub fn try_read_response(stream: &mut impl Read) -> Result<Response, String> {
    try_read_response_to(stream, false)
}

fn try_read_response_to(stream: &mut impl Read, head: bool) -> Result<Response, String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "connection closed after {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            Ok(_) => buf.push(byte[0]),
            Err(e) => {
                return Err(format!(
                    "read failed after {:?}: {e}",
                    String::from_utf8_lossy(&buf)
                ));
            }
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&buf)
        .map_err(|e| format!("a malformed response head: {e}"))?;
    let status = parsed.code.ok_or("a response head without a status")?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |(_, v)| v.parse())
        .map_err(|_| "a bad Content-Length".to_string())?;
    let mut body = vec![0; if head { 0 } else { length }];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("the body did not come whole: {e}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Example `name`'s binary, built now if it is not (or is stale), in the
/// profile this test was built in.
pub fn example(name: &str) -> std::path::PathBuf {
    let test = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>: the examples are in target/<profile>/examples.
    let profile_dir = test.parent().unwrap().parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example {name}: {status}");
    profile_dir.join("examples").join(name)
}

/// SIGTERM a `millrace writeback` child and check that it exits cleanly
/// (after the batch in hand).
#[allow(dead_code)]
pub fn stop_writeback(mut child: std::process::Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "writeback exited with {status}");
}

/// Whether the server closed the connection (EOF or reset) within `PATIENCE`.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => panic!("expected a close, got {e}"),
    }
}

/// `method /v1/kv/key` with `value` as its body.
pub fn kv_request(method: &str, key: &str, value: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} /v1/kv/{key} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        value.len()
    )
    .into_bytes();
    request.extend_from_slice(value);
    request
}

/// [`kv_request`] on `stream`, and its answer.
pub fn kv(stream: &mut TcpStream, method: &str, key: &str, value: &[u8]) -> Response {
    stream.write_all(&kv_request(method, key, value)).unwrap();
    read_response(stream)
}

/// The value of the sample `name{labels}` in a metrics text, 0 if absent.
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0, |v| v.parse().unwrap())
}
