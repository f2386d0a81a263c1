//! The io_uring layer: a [`Ring`] with the best setup flags the kernel
//! takes and the one path submissions take ([`Ring::push`], the only
//! unsafe door, and its safe doors: cancel, close); the tokens completions
//! carry ([`token`]); a socket on a ring ([`socket::RingSocket`]), which
//! owns what its operations point at; provided receive buffers
//! ([`buffers`]); and eventfds to wake a ring from another thread.
//! Everything that runs on a ring (the executors, the Redis links, the
//! load generator, the kernel probe) builds on this.

pub mod buffers;
pub mod socket;
pub mod token;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{IoUring, Submitter, cqueue, opcode, squeue, types};

use self::token::Token;

/// Which optional setup flags the ring was created with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetupFlags {
    /// Only the creating thread submits: the kernel skips locking (6.0).
    pub single_issuer: bool,
    /// Completions are produced only when this thread asks for them, in
    /// batches, rather than by interrupting it (6.1).
    pub defer_taskrun: bool,
    /// The kernel does not interrupt the thread to run completion work (5.19).
    pub coop_taskrun: bool,
}

impl SetupFlags {
    /// Flag names, for logs and `millrace doctor`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.single_issuer, "SINGLE_ISSUER"),
            (self.defer_taskrun, "DEFER_TASKRUN"),
            (self.coop_taskrun, "COOP_TASKRUN"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The combinations tried, best first. DEFER_TASKRUN needs SINGLE_ISSUER.
const ATTEMPTS: [SetupFlags; 4] = [
    SetupFlags {
        single_issuer: true,
        defer_taskrun: true,
        coop_taskrun: false,
    },
    SetupFlags {
        single_issuer: true,
        defer_taskrun: false,
        coop_taskrun: true,
    },
    SetupFlags {
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: true,
    },
    SetupFlags {
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: false,
    },
];

/// A ring of `entries` submission slots (completion queue four times that),
/// with the best flags this kernel accepts. Must be called on the thread that
/// will submit to it.
fn build(entries: u32) -> io::Result<(IoUring, SetupFlags)> {
    let mut last_error = None;
    for flags in ATTEMPTS {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries.saturating_mul(4));
        if flags.single_issuer {
            builder.setup_single_issuer();
        }
        if flags.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        if flags.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        match builder.build(entries) {
            Ok(ring) => return Ok((ring, flags)),
            // EINVAL: a flag this kernel does not know; try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// A completion, its token unpacked.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// Whose operation, which, for which slot.
    pub token: Token,
    /// The operation's result: a count or descriptor, or `-errno`.
    pub result: i32,
    /// The completion's flags (`cqueue::more`, `cqueue::buffer_select`).
    pub flags: u32,
}

/// A ring, and the one path submissions to it take.
pub struct Ring {
    io: IoUring,
    flags: SetupFlags,
    /// Entries pushed.
    pub submissions: u64,
    /// `io_uring_enter` calls: each wait, and each submit of a full queue.
    pub enters: u64,
}

impl Ring {
    /// A ring of `entries` submission slots, with the best flags this kernel
    /// accepts; on the thread
    /// that will submit to it.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let (io, flags) = build(entries)?;
        Ok(Ring {
            io,
            flags,
            submissions: 0,
            enters: 0,
        })
    }

    /// The setup flags it got.
    pub fn flags(&self) -> SetupFlags {
        self.flags
    }

    /// For registering buffers and files.
    pub fn submitter(&self) -> Submitter<'_> {
        self.io.submitter()
    }

    /// Register NAPI busy polling: each wait spins on the NIC queues of the
    /// ring's sockets for up to `busy_poll_us` before sleeping (Linux 6.9+).
    pub fn register_napi(&self, busy_poll_us: u32) -> Result<(), String> {
        let mut napi = io_uring::types::Napi::new()
            .set_busy_poll_timeout(busy_poll_us)
            .set_prefer_busy_poll(true);
        self.submitter()
            .register_napi(&mut napi)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => {
                    "the kernel does not take IORING_REGISTER_NAPI (Linux 6.9+)".to_string()
                }
                _ => format!("IORING_REGISTER_NAPI failed: {e}"),
            })
    }

    /// Queue `entry`, submitting what is queued first if the queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer, address and descriptor `entry` points at must stay
    /// valid, and not move, until the operation's last completion has been
    /// reaped (a descriptor: until then, or until the ring is dropped).
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        self.submissions += 1;
        loop {
            // SAFETY: the caller keeps what `entry` points at alive (see above).
            if unsafe { self.io.submission().push(entry) }.is_ok() {
                return;
            }
            self.enters += 1;
            if let Err(e) = self.io.submit() {
                tracing::warn!(error = %e, "submitting a full queue failed");
            }
        }
    }

    /// Ask the kernel to end the operation that carries `token`; the
    /// request's own completion carries [`Token::IGNORED`].
    pub fn cancel(&mut self, token: Token) {
        let entry = opcode::AsyncCancel::new(token.encode())
            .build()
            .user_data(Token::IGNORED.encode());
        // SAFETY: a cancellation points at no memory.
        unsafe { self.push(&entry) };
    }

    /// Close direct descriptor `slot`; its completion carries
    /// [`Token::IGNORED`]. Nothing may use the slot afterwards.
    pub fn close_fixed(&mut self, slot: u32) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(Token::IGNORED.encode());
        // SAFETY: a close points at no memory.
        unsafe { self.push(&entry) };
    }

    /// Submit what is queued and wait until a completion arrives or
    /// `wake_at` passes, whichever comes first.
    pub fn submit_and_wait(&mut self, wake_at: Instant) -> io::Result<()> {
        self.enters += 1;
        submit_and_wait(&self.io, wake_at)
    }

    /// Submit what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.enters += 1;
        self.io.submit().map(|_| ())
    }

    /// Take every completion waiting, in order, into `into`.
    pub fn completions(&mut self, into: &mut Vec<Completion>) {
        into.extend(self.io.completion().map(|cqe: cqueue::Entry| Completion {
            token: Token::decode(cqe.user_data()),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
    }

    /// The io_uring instance itself, for a probe of its features.
    pub fn io(&mut self) -> &mut IoUring {
        &mut self.io
    }
}

/// Submit what `ring` has queued and wait until a completion arrives or
/// `wake_at` passes, whichever comes first.
fn submit_and_wait(ring: &IoUring, wake_at: Instant) -> io::Result<()> {
    let timeout = types::Timespec::from(wake_at.saturating_duration_since(Instant::now()));
    let args = types::SubmitArgs::new().timespec(&timeout);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        // ETIME: the deadline came first. EINTR: a signal. EBUSY: the
        // completion queue overflowed; reaping makes room.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// An eventfd: another thread writes it ([`signal`]) to wake a ring that
/// has a read armed on it.
pub fn event_fd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to `event_fd`, waking whoever reads it.
pub fn signal(event_fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd the caller owns.
    unsafe { libc::write(event_fd.as_raw_fd(), (&raw const one).cast(), 8) };
}
