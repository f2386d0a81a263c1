//! A door: one of an executor's listeners (plain HTTP, HTTPS) and its
//! multishot accept on the ring.

use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, types};
use socket2::Socket;

use crate::ring::Ring;
use crate::ring::token::{Owner, Token};

/// What a connection accepted through a door speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP/1.1 in the clear.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

/// A listener and its accept.
pub struct Door {
    /// `None` once a drain has ended its accept.
    socket: Option<Socket>,
    /// What its connections speak.
    pub scheme: Scheme,
    /// Its accept's token.
    token: Token,
    /// A multishot accept is in flight.
    pub armed: bool,
    /// When to arm the accept again after a failure.
    pub retry_at: Option<Instant>,
}

impl Door {
    /// A door on `socket`; its accept's completions carry `owner` and `op`.
    pub fn new(socket: Socket, scheme: Scheme, owner: Owner, op: u8) -> Self {
        Door {
            socket: Some(socket),
            scheme,
            token: Token::global(owner, op),
            armed: false,
            retry_at: None,
        }
    }

    /// Arm the multishot accept, unless the door is closed.
    pub fn arm(&mut self, ring: &mut Ring) {
        let Some(socket) = &self.socket else {
            return;
        };
        // Accepted sockets go straight into the ring's table of direct
        // descriptors: no file descriptor, and no file reference taken and
        // dropped by every receive and send.
        let entry = opcode::AcceptMulti::new(types::Fd(socket.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(self.token.encode());
        // SAFETY: the socket is dropped only once its accept has ended
        // (`ended` during a drain, or `close` when none is armed), and the
        // ring goes first when the executor is dropped.
        unsafe { ring.push(&entry) };
        self.armed = true;
        self.retry_at = None;
    }

    /// Its accept ended (no more completions to come). During a drain the
    /// listener goes with it.
    pub fn ended(&mut self, draining: bool) {
        self.armed = false;
        if draining {
            self.socket = None;
        }
    }

    /// Stop accepting: cancel the accept, or close the listener at once if
    /// none is armed.
    pub fn close(&mut self, ring: &mut Ring) {
        if self.armed {
            ring.cancel(self.token);
        } else {
            self.socket = None;
        }
    }

    /// Arm the accept again if it ended, its retry time has come and no
    /// drain has begun.
    pub fn retry(&mut self, ring: &mut Ring, now: Instant, draining: bool) {
        if !self.armed && !draining && self.retry_at.is_none_or(|at| now >= at) {
            self.arm(ring);
        }
    }
}
