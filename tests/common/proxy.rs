//! A TCP proxy that injects the network faults a real server cannot be
//! asked for: latency with jitter, a stalled connection, a connection cut
//! in the middle of a reply.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How bytes are passed on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// At once.
    Pass,
    /// Each read held `base` plus up to `jitter`, drawn from the seed.
    Delay { base: Duration, jitter: Duration },
    /// Held until the mode changes: the connection stays open, silent.
    Stall,
}

struct Shared {
    mode: Mutex<Mode>,
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    rng: Mutex<u64>,
}

/// A proxy on a free loopback port to `upstream`; dropping it stops it.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Start passing bytes to `upstream`; `seed` drives the jitter.
    pub fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue; // The client sees its connection close.
                };
                for stream in [&client, &server] {
                    stream.set_nodelay(true).unwrap();
                    accepting
                        .open
                        .lock()
                        .unwrap()
                        .push(stream.try_clone().unwrap());
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let shared = Arc::clone(&accepting);
                    thread::spawn(move || pump(from, to, &shared));
                }
            }
        });
        Proxy { addr, shared }
    }

    /// Pass bytes on this way from now on.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Cut every open connection at once, whatever is in flight on it.
    pub fn cut(&self) {
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut();
        let _ = TcpStream::connect(self.addr); // Wake the accept loop.
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let mode = *shared.mode.lock().unwrap();
            match mode {
                Mode::Pass => break,
                Mode::Stall => thread::sleep(Duration::from_millis(10)),
                Mode::Delay { base, jitter } => {
                    let draw = {
                        let mut state = shared.rng.lock().unwrap();
                        *state ^= *state << 13;
                        *state ^= *state >> 7;
                        *state ^= *state << 17;
                        *state
                    };
                    let extra = jitter.mul_f64((draw % 1000) as f64 / 1000.0);
                    thread::sleep(base + extra);
                    break;
                }
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
