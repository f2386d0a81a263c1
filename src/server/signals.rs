//! SIGINT and SIGTERM taken synchronously: blocked in every thread, waited
//! for by one. Both `millrace serve` and `millrace writeback` stop on them.

use std::io;
use std::time::Duration;

/// SIGINT and SIGTERM (and SIGHUP, where something can be reloaded),
/// blocked in every thread and taken synchronously by one thread.
pub struct ShutdownSignals {
    set: libc::sigset_t,
}

impl ShutdownSignals {
    /// Block the signals in this thread and every thread it starts
    /// afterwards; SIGHUP too if `reload`.
    pub fn block(reload: bool) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; the sig* calls only write to `set`
        // and this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if reload {
                libc::sigaddset(&mut set, libc::SIGHUP);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(ShutdownSignals { set })
        }
    }

    /// The next signal, if one arrives within `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        (signal > 0).then_some(signal)
    }
}

/// The name of a signal these take.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
