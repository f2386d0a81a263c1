//! What this host's kernel offers millrace, found by trying it: a ring is
//! created, a multishot accept and a multishot receive into a provided buffer
//! ring are run on loopback. `millrace doctor` prints the result;
//! `millrace serve` refuses to start without the required parts, with the
//! same explanation.

use std::io::{self, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use crate::ring::buffers::ProvidedBuffers;
use crate::ring::token::{Owner, Token};
use crate::ring::{Completion, Ring, SetupFlags};

/// The probe's operations on its ring.
const OWNER: Owner = Owner(4);

/// The io_uring features millrace uses, as probed.
#[derive(Debug)]
pub struct RingFeatures {
    /// Setup flags the kernel accepted.
    pub setup: SetupFlags,
    /// `io_uring_enter` takes a timeout argument (5.11); required.
    pub ext_arg: bool,
    /// Provided buffer rings (5.19); required.
    pub buffer_rings: Result<(), String>,
    /// Multishot accept (5.19); required.
    pub multishot_accept: Result<(), String>,
    /// Multishot receive (6.0); required.
    pub multishot_recv: Result<(), String>,
    /// Zero-copy send opcode (6.0); optional.
    pub send_zc: bool,
    /// NAPI busy polling registered on a ring (6.9); optional
    /// (`napi_busy_poll_us`).
    pub napi: Result<(), String>,
}

impl RingFeatures {
    /// The first required feature missing, with what to do about it.
    pub fn missing(&self) -> Option<String> {
        if !self.ext_arg {
            return Some("io_uring_enter has no timeout argument (IORING_FEAT_EXT_ARG, Linux 5.11+): upgrade the kernel".into());
        }
        for (name, result) in [
            ("provided buffer rings (Linux 5.19+)", &self.buffer_rings),
            ("multishot accept (Linux 5.19+)", &self.multishot_accept),
            ("multishot receive (Linux 6.0+)", &self.multishot_recv),
        ] {
            if let Err(why) = result {
                return Some(format!(
                    "{name} unavailable: {why}; millrace needs Linux 6.0 or later"
                ));
            }
        }
        None
    }
}

/// Probe io_uring: its features, or why it cannot be used at all.
pub fn probe_ring() -> Result<RingFeatures, String> {
    let mut ring = Ring::new(64).map_err(|e| explain_setup_error(&e))?;
    let setup = ring.flags();
    let ext_arg = ring.io().params().is_feature_ext_arg();
    let mut opcodes = io_uring::Probe::new();
    let send_zc = ring.submitter().register_probe(&mut opcodes).is_ok()
        && opcodes.is_supported(opcode::SendZc::CODE);
    let napi = ring.register_napi(50);
    let buffers = ProvidedBuffers::new(2, 64, 0).map_err(|e| e.to_string())?;
    let buffer_rings = buffers
        .register(&ring.submitter())
        .map_err(|e| format!("registering a buffer ring failed: {e}"));
    let (multishot_accept, multishot_recv) = match &buffer_rings {
        Ok(()) => try_multishot(&mut ring, &buffers),
        Err(_) => {
            let skipped = Err("not tried: no buffer rings".to_string());
            (skipped.clone(), skipped)
        }
    };
    // The ring goes before the buffers it may still reference.
    drop(ring);
    drop(buffers);
    Ok(RingFeatures {
        setup,
        ext_arg,
        buffer_rings,
        multishot_accept,
        multishot_recv,
        send_zc,
        napi,
    })
}

/// Accept one loopback connection with a multishot accept, then receive one
/// byte on it with a multishot receive into `buffers`.
fn try_multishot(
    ring: &mut Ring,
    buffers: &ProvidedBuffers,
) -> (Result<(), String>, Result<(), String>) {
    let setup = || -> io::Result<(TcpListener, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        Ok((listener, client))
    };
    let (listener, mut client) = match setup() {
        Ok(pair) => pair,
        Err(e) => {
            let why = Err(format!("no loopback socket to try it on: {e}"));
            return (why.clone(), why);
        }
    };
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(Token::global(OWNER, 1).encode());
    let accepted = match run_one(ring, accept) {
        Ok((fd, flags)) if fd >= 0 && cqueue::more(flags) => fd,
        Ok((fd, _)) if fd >= 0 => {
            close(fd);
            let why = Err("the kernel ended it after one connection".to_string());
            return (why, Err("not tried: no multishot accept".into()));
        }
        Ok((err, _)) => {
            let why = Err(io::Error::from_raw_os_error(-err).to_string());
            return (why, Err("not tried: no multishot accept".into()));
        }
        Err(e) => {
            return (
                Err(e.to_string()),
                Err("not tried: no multishot accept".into()),
            );
        }
    };
    let recv = opcode::RecvMulti::new(types::Fd(accepted), buffers.group())
        .build()
        .user_data(Token::global(OWNER, 2).encode());
    let recv_result = client
        .write_all(b"x")
        .and_then(|()| run_one(ring, recv))
        .map_err(|e| e.to_string())
        .and_then(|(n, flags)| match (n, cqueue::more(flags)) {
            (1, true) => Ok(()),
            (1, false) => Err("the kernel ended it after one receive".into()),
            (n, _) if n < 0 => Err(io::Error::from_raw_os_error(-n).to_string()),
            (n, _) => Err(format!("received {n} bytes, expected 1")),
        });
    close(accepted);
    (Ok(()), recv_result)
}

/// Submit one entry and wait (at most a second) for its first completion.
fn run_one(ring: &mut Ring, entry: io_uring::squeue::Entry) -> io::Result<(i32, u32)> {
    let token = Token::decode(entry.get_user_data());
    // SAFETY: the entries submitted here reference only file descriptors and
    // the registered buffer ring, all of which outlive the ring's use here.
    unsafe { ring.push(&entry) };
    ring.submit_and_wait(Instant::now() + Duration::from_secs(1))?;
    let mut completions = Vec::new();
    ring.completions(&mut completions);
    completions
        .into_iter()
        .find(|c: &Completion| c.token == token)
        .map(|c| (c.result, c.flags))
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no completion within 1 s"))
}

fn close(fd: i32) {
    // SAFETY: `fd` was returned by an accept completion and is owned here.
    unsafe { libc::close(fd) };
}

/// Why io_uring could not be set up, and what fixes it.
pub fn explain_setup_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not available: this kernel was built without it \
             (CONFIG_IO_URING), or a seccomp filter hides it. Run on Linux 6.0+ with io_uring enabled."
            .to_string(),
        Some(libc::EPERM) => {
            let disabled = read_proc("/proc/sys/kernel/io_uring_disabled");
            match disabled.as_deref() {
                Some("2") => "io_uring is disabled: kernel.io_uring_disabled = 2. \
                     Fix: sysctl -w kernel.io_uring_disabled=0"
                    .to_string(),
                Some("1") => "io_uring is limited to privileged users: kernel.io_uring_disabled = 1. \
                     Fix: sysctl -w kernel.io_uring_disabled=0, or run as a member of the group \
                     in kernel.io_uring_group"
                    .to_string(),
                _ => "io_uring is not permitted (EPERM): a seccomp filter blocks it. Docker's default \
                     profile does; run the container with a seccomp profile that allows io_uring_setup, \
                     io_uring_enter and io_uring_register (or --security-opt seccomp=unconfined)"
                    .to_string(),
            }
        }
        Some(libc::ENOMEM) => "io_uring could not allocate its ring (ENOMEM): the locked-memory limit \
             is too low. Fix: raise it (ulimit -l unlimited, or LimitMEMLOCK=infinity in the systemd unit)"
            .to_string(),
        _ => format!("io_uring setup failed: {error}"),
    }
}

/// A file under /proc, trimmed, if readable.
pub fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}
