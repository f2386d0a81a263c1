//! [`RingSocket`]: a TCP socket whose operations go through a [`Ring`]:
//! the one type behind the server's client connections, the Redis links
//! and the load generator's connections.
//!
//! It owns what the kernel reads and writes while its operations are in
//! flight (a connect's address, the bytes of a send, its own receive
//! buffer) and keeps them in place until each operation's last completion:
//! the bytes of a send are not touched while it is out, and a socket
//! dropped with operations in flight leaks them rather than free memory
//! the kernel may still use. Closing is cancel, then release:
//! [`RingSocket::cancel_all`] asks the kernel to end what is in flight,
//! each completion is handed back, and once [`RingSocket::is_idle`] the
//! socket can be let go ([`RingSocket::close`]).
//!
//! Receives are multishot into the ring's provided buffers (the server,
//! the load generator: idle connections hold no receive memory), or one at
//! a time into the socket's own buffer (the Redis links).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{cqueue, opcode, types};
use socket2::{Domain, SockAddr, Socket, Type};

use super::Ring;
use super::token::{SocketOp, Token};

/// Where the socket is.
#[derive(Debug)]
enum Descriptor {
    /// A slot in the ring's table of direct descriptors (an accepted
    /// connection): no file descriptor at all.
    Fixed(u32),
    /// A file descriptor (a connection this side opened).
    Owned(OwnedFd),
}

/// Operations a socket may have in flight, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ops(u8);

impl Ops {
    fn bit(op: SocketOp) -> u8 {
        1 << (op as u8)
    }

    fn has(self, op: SocketOp) -> bool {
        self.0 & Ops::bit(op) != 0
    }

    fn set(&mut self, op: SocketOp, on: bool) {
        if on {
            self.0 |= Ops::bit(op);
        } else {
            self.0 &= !Ops::bit(op);
        }
    }
}

/// What a receive's completion brought.
#[derive(Debug)]
pub enum Received<'a> {
    /// Bytes, in the socket's own buffer.
    Bytes(&'a [u8]),
    /// `len` bytes in the ring's provided buffer `id`: read them, then
    /// give the buffer back.
    Provided {
        /// The buffer's id.
        id: u16,
        /// Bytes in it.
        len: usize,
    },
    /// The peer closed its side.
    Closed,
    /// The provided buffers ran out and the receive ended: arm it again
    /// once buffers are back.
    NoBuffers,
    /// It was cancelled.
    Cancelled,
    /// It failed.
    Failed(io::Error),
}

/// What a send's completion brought.
#[derive(Debug)]
pub enum SendOutcome {
    /// Everything handed to [`RingSocket::send`] went: `bytes` in this
    /// completion.
    Done(usize),
    /// `bytes` went, the rest has not: [`RingSocket::send`] sends it next.
    Partial(usize),
    /// It was cancelled.
    Cancelled,
    /// It failed (the peer is gone, say).
    Failed(io::Error),
}

/// How [`RingSocket::send`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// Nothing to send, or a send is already out.
    Nothing,
    /// The rest of a partial send went out again.
    Rest,
    /// What the caller had written went out: a new batch.
    Batch,
}

/// A TCP socket on a ring; see the module's documentation.
#[derive(Debug)]
pub struct RingSocket {
    fd: Descriptor,
    /// A connect's address, boxed so that it stays where the kernel reads it.
    address: Option<Box<SockAddr>>,
    /// What the current send works through; untouched while it is out.
    sending: Vec<u8>,
    /// Bytes of `sending` the kernel has taken.
    sent: usize,
    /// Receives go here one at a time when set (else into provided buffers).
    buffer: Option<Box<[u8]>>,
    /// In flight.
    armed: Ops,
    /// Cancelled and not yet completed.
    cancelled: Ops,
}

impl RingSocket {
    /// A connection accepted into the ring's table of direct descriptors,
    /// at `slot`.
    pub fn accepted(slot: u32) -> RingSocket {
        RingSocket::with(Descriptor::Fixed(slot))
    }

    fn with(fd: Descriptor) -> RingSocket {
        RingSocket {
            fd,
            address: None,
            sending: Vec::new(),
            sent: 0,
            buffer: None,
            armed: Ops::default(),
            cancelled: Ops::default(),
        }
    }

    /// Open a socket and connect it to `address` (Nagle off); the
    /// connect's completion carries `token`'s [`SocketOp::Connect`].
    pub fn connect(ring: &mut Ring, address: SocketAddr, token: Token) -> io::Result<RingSocket> {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        socket.set_tcp_nodelay(true)?;
        let fd = types::Fd(socket.as_raw_fd());
        let mut this = RingSocket::with(Descriptor::Owned(socket.into()));
        let address = this.address.insert(Box::new(SockAddr::from(address)));
        let entry = opcode::Connect::new(fd, address.as_ptr().cast(), address.len())
            .build()
            .user_data(token.with_op(SocketOp::Connect as u8).encode());
        this.armed.set(SocketOp::Connect, true);
        // SAFETY: the address is boxed in the socket, which keeps it (and
        // the descriptor) until the connect's completion (see `Drop`).
        unsafe { ring.push(&entry) };
        Ok(this)
    }

    /// Receive into a buffer of the socket's own, `bytes` long, one
    /// receive at a time, instead of the ring's provided buffers.
    pub fn with_receive_buffer(mut self, bytes: usize) -> RingSocket {
        self.buffer = Some(vec![0; bytes].into_boxed_slice());
        self
    }

    fn raw_fd(&self) -> FdRef {
        match &self.fd {
            Descriptor::Fixed(slot) => FdRef::Fixed(types::Fixed(*slot)),
            Descriptor::Owned(fd) => FdRef::Owned(types::Fd(fd.as_raw_fd())),
        }
    }

    /// Whether `op` is in flight.
    pub fn is_armed(&self, op: SocketOp) -> bool {
        self.armed.has(op)
    }

    /// Whether nothing is in flight: the socket may be let go.
    pub fn is_idle(&self) -> bool {
        self.armed == Ops::default()
    }

    /// Whether bytes are still on their way out (a send in flight, or the
    /// rest of a partial one).
    pub fn is_sending(&self) -> bool {
        self.armed.has(SocketOp::Send) || self.sent < self.sending.len()
    }

    /// Arm a receive, unless one is armed: multishot into the ring's
    /// provided buffers of `group`, or once into the socket's own buffer.
    /// Its completions carry `token`'s [`SocketOp::Recv`].
    pub fn receive(&mut self, ring: &mut Ring, token: Token, group: u16) {
        if self.armed.has(SocketOp::Recv) {
            return;
        }
        let token = token.with_op(SocketOp::Recv as u8).encode();
        let fd = self.raw_fd();
        let entry = match (&mut self.buffer, fd) {
            (Some(buffer), fd) => fd
                .recv(buffer.as_mut_ptr(), buffer.len() as u32)
                .user_data(token),
            (None, fd) => fd.recv_multi(group).user_data(token),
        };
        self.armed.set(SocketOp::Recv, true);
        // SAFETY: the socket's own buffer is boxed and kept until the
        // receive's last completion (see `Drop`); provided buffers belong
        // to the ring's owner, which drops the ring before them.
        unsafe { ring.push(&entry) };
    }

    /// Send: the rest of a partial send if there is one, else everything in
    /// `out` (taken: `out` gets the previous batch's emptied buffer back,
    /// its capacity kept). Nothing while a send is out. Its completion
    /// carries `token`'s [`SocketOp::Send`].
    pub fn send(&mut self, ring: &mut Ring, out: &mut Vec<u8>, token: Token) -> Sending {
        if self.armed.has(SocketOp::Send) {
            return Sending::Nothing;
        }
        let sending = if self.sent < self.sending.len() {
            Sending::Rest
        } else if out.is_empty() {
            return Sending::Nothing;
        } else {
            self.sending.clear();
            std::mem::swap(out, &mut self.sending);
            self.sent = 0;
            Sending::Batch
        };
        let rest = &self.sending[self.sent..];
        let entry = self
            .raw_fd()
            .send(rest.as_ptr(), rest.len() as u32)
            .user_data(token.with_op(SocketOp::Send as u8).encode());
        self.armed.set(SocketOp::Send, true);
        // SAFETY: `sending` is not touched while the send is out (this is
        // the only place it changes, and not while armed) and is kept until
        // its completion (see `Drop`).
        unsafe { ring.push(&entry) };
        sending
    }

    /// Let the send buffer go if it grew past `bytes` (after one large
    /// batch), so that it does not stay pinned for the connection's life.
    pub fn trim_send_buffer(&mut self, bytes: usize) {
        if !self.is_sending() && self.sending.capacity() > bytes {
            self.sending = Vec::new();
            self.sent = 0;
        }
    }

    /// A connect's completion.
    pub fn on_connect(&mut self, result: i32) -> io::Result<()> {
        self.armed.set(SocketOp::Connect, false);
        self.cancelled.set(SocketOp::Connect, false);
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        Ok(())
    }

    /// A send's completion.
    pub fn on_send(&mut self, result: i32) -> SendOutcome {
        self.armed.set(SocketOp::Send, false);
        self.cancelled.set(SocketOp::Send, false);
        match result {
            n if n > 0 => {
                self.sent += n as usize;
                if self.sent == self.sending.len() {
                    SendOutcome::Done(n as usize)
                } else {
                    SendOutcome::Partial(n as usize)
                }
            }
            n if n == -libc::ECANCELED => SendOutcome::Cancelled,
            0 => SendOutcome::Failed(io::Error::from(io::ErrorKind::WriteZero)),
            n => SendOutcome::Failed(io::Error::from_raw_os_error(-n)),
        }
    }

    /// A receive's completion. A multishot receive stays armed while the
    /// kernel says more will come.
    pub fn on_receive(&mut self, result: i32, flags: u32) -> Received<'_> {
        let multishot = self.buffer.is_none();
        if !multishot || !cqueue::more(flags) {
            self.armed.set(SocketOp::Recv, false);
            self.cancelled.set(SocketOp::Recv, false);
        }
        match result {
            n if n > 0 => match (&self.buffer, cqueue::buffer_select(flags)) {
                (Some(buffer), _) => Received::Bytes(&buffer[..n as usize]),
                (None, Some(id)) => Received::Provided {
                    id,
                    len: n as usize,
                },
                (None, None) => Received::Failed(io::Error::other(
                    "a multishot receive returned data without a buffer",
                )),
            },
            0 => Received::Closed,
            n if n == -libc::ENOBUFS => Received::NoBuffers,
            n if n == -libc::ECANCELED => Received::Cancelled,
            n => Received::Failed(io::Error::from_raw_os_error(-n)),
        }
    }

    /// Ask the kernel to end operation `op`, if it is in flight and not
    /// already asked; its completion comes as usual (cancelled, or done
    /// before the request reached it).
    pub fn cancel(&mut self, ring: &mut Ring, op: SocketOp, token: Token) {
        if self.armed.has(op) && !self.cancelled.has(op) {
            self.cancelled.set(op, true);
            ring.cancel(token.with_op(op as u8));
        }
    }

    /// [`RingSocket::cancel`] every operation in flight.
    pub fn cancel_all(&mut self, ring: &mut Ring, token: Token) {
        for op in [SocketOp::Connect, SocketOp::Recv, SocketOp::Send] {
            self.cancel(ring, op, token);
        }
    }

    /// Shut the write side (an accepted connection whose last response
    /// is out). Its completion carries `token`'s [`SocketOp::Shutdown`],
    /// and the socket is not idle until it comes: the kernel runs a
    /// shutdown on a worker thread, where it looks its descriptor up, so a
    /// direct descriptor closed and reused before then would have the next
    /// connection shut instead.
    pub fn shutdown_write(&mut self, ring: &mut Ring, token: Token) {
        if self.armed.has(SocketOp::Shutdown) {
            return;
        }
        let entry = match self.raw_fd() {
            FdRef::Fixed(fd) => opcode::Shutdown::new(fd, libc::SHUT_WR).build(),
            FdRef::Owned(fd) => opcode::Shutdown::new(fd, libc::SHUT_WR).build(),
        }
        .user_data(token.with_op(SocketOp::Shutdown as u8).encode());
        self.armed.set(SocketOp::Shutdown, true);
        // SAFETY: a shutdown points at no memory; the descriptor is closed
        // only once the socket is idle, after this completes.
        unsafe { ring.push(&entry) };
    }

    /// A shutdown's completion.
    pub fn on_shutdown(&mut self) {
        self.armed.set(SocketOp::Shutdown, false);
    }

    /// Let the socket go, nothing being in flight: a direct descriptor is
    /// closed through the ring, a file descriptor closed now.
    pub fn close(mut self, ring: &mut Ring) {
        debug_assert!(self.is_idle(), "closed with operations in flight");
        if let Descriptor::Fixed(slot) = self.fd {
            ring.close_fixed(slot);
        }
        // Dropped idle: its buffers and descriptor go.
        self.armed = Ops::default();
    }
}

impl Drop for RingSocket {
    fn drop(&mut self) {
        if self.is_idle() {
            return;
        }
        // The kernel may still read or write what its operations point
        // at: keep it, and the descriptor, for good rather than free it.
        tracing::warn!(
            "a socket on a ring was dropped with operations in flight; its buffers are kept"
        );
        std::mem::forget(std::mem::take(&mut self.sending));
        std::mem::forget(self.buffer.take());
        std::mem::forget(self.address.take());
        if let Descriptor::Owned(fd) = std::mem::replace(&mut self.fd, Descriptor::Fixed(u32::MAX))
        {
            std::mem::forget(fd);
        }
    }
}

/// A descriptor as an operation names it.
#[derive(Clone, Copy)]
enum FdRef {
    Fixed(types::Fixed),
    Owned(types::Fd),
}

impl FdRef {
    fn send(self, buf: *const u8, len: u32) -> io_uring::squeue::Entry {
        match self {
            FdRef::Fixed(fd) => opcode::Send::new(fd, buf, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            FdRef::Owned(fd) => opcode::Send::new(fd, buf, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
        }
    }

    fn recv(self, buf: *mut u8, len: u32) -> io_uring::squeue::Entry {
        match self {
            FdRef::Fixed(fd) => opcode::Recv::new(fd, buf, len).build(),
            FdRef::Owned(fd) => opcode::Recv::new(fd, buf, len).build(),
        }
    }

    fn recv_multi(self, group: u16) -> io_uring::squeue::Entry {
        match self {
            FdRef::Fixed(fd) => opcode::RecvMulti::new(fd, group).build(),
            FdRef::Owned(fd) => opcode::RecvMulti::new(fd, group).build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::buffers::ProvidedBuffers;
    use crate::ring::token::Owner;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    const TOKEN: Token = Token {
        owner: Owner(9),
        op: 0,
        slot: 3,
        generation: 1,
    };

    /// A ring, its provided buffers (group 0) and a listener to connect to.
    struct Bench {
        buffers: ProvidedBuffers,
        ring: Ring,
        listener: TcpListener,
        completions: Vec<crate::ring::Completion>,
    }

    impl Bench {
        fn new(buffers: u16, buffer_bytes: u32) -> Bench {
            let ring = Ring::new(64).unwrap();
            let provided = ProvidedBuffers::new(buffers, buffer_bytes, 0).unwrap();
            provided.register(&ring.submitter()).unwrap();
            Bench {
                buffers: provided,
                ring,
                listener: TcpListener::bind("127.0.0.1:0").unwrap(),
                completions: Vec::new(),
            }
        }

        /// A socket connected to a peer the test holds.
        fn connected(&mut self) -> (RingSocket, TcpStream) {
            let address = self.listener.local_addr().unwrap();
            let mut socket = RingSocket::connect(&mut self.ring, address, TOKEN).unwrap();
            self.ring.submit().unwrap();
            let (peer, _) = self.listener.accept().unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let done = self.wait_for(SocketOp::Connect);
            socket.on_connect(done.result).unwrap();
            (socket, peer)
        }

        /// The next completion of `op` (others are kept), within 5 s.
        fn wait_for(&mut self, op: SocketOp) -> crate::ring::Completion {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(at) = self.completions.iter().position(|c| c.token.op == op as u8) {
                    return self.completions.remove(at);
                }
                assert!(Instant::now() < deadline, "no completion of {op:?}");
                self.ring
                    .submit_and_wait(Instant::now() + Duration::from_millis(50))
                    .unwrap();
                let mut fresh = Vec::new();
                self.ring.completions(&mut fresh);
                self.completions
                    .extend(fresh.into_iter().filter(|c| c.token != Token::IGNORED));
            }
        }
    }

    #[test]
    fn bytes_go_out_whole_and_come_back_into_provided_buffers() {
        let mut bench = Bench::new(4, 4096);
        let (mut socket, mut peer) = bench.connected();
        let mut out = b"ping".to_vec();
        assert_eq!(
            socket.send(&mut bench.ring, &mut out, TOKEN),
            Sending::Batch
        );
        assert!(out.is_empty(), "taken");
        assert_eq!(
            socket.send(&mut bench.ring, &mut b"x".to_vec(), TOKEN),
            Sending::Nothing
        );
        let sent = bench.wait_for(SocketOp::Send);
        assert!(matches!(socket.on_send(sent.result), SendOutcome::Done(4)));
        assert!(!socket.is_sending());
        let mut got = [0; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        socket.receive(&mut bench.ring, TOKEN, bench.buffers.group());
        peer.write_all(b"pong").unwrap();
        let received = bench.wait_for(SocketOp::Recv);
        match socket.on_receive(received.result, received.flags) {
            Received::Provided { id, len } => {
                assert_eq!(bench.buffers.get(id, len), b"pong");
                bench.buffers.recycle(id);
            }
            other => panic!("{other:?}"),
        }
        assert!(socket.is_armed(SocketOp::Recv), "multishot stays armed");
        drop(peer);
        let closed = bench.wait_for(SocketOp::Recv);
        assert!(matches!(
            socket.on_receive(closed.result, closed.flags),
            Received::Closed
        ));
    }

    #[test]
    fn a_cancelled_receive_completes_and_leaves_the_socket_idle() {
        let mut bench = Bench::new(4, 4096);
        let (mut socket, _peer) = bench.connected();
        socket.receive(&mut bench.ring, TOKEN, bench.buffers.group());
        assert!(!socket.is_idle());
        socket.cancel_all(&mut bench.ring, TOKEN);
        socket.cancel_all(&mut bench.ring, TOKEN);
        let cancelled = bench.wait_for(SocketOp::Recv);
        assert!(matches!(
            socket.on_receive(cancelled.result, cancelled.flags),
            Received::Cancelled
        ));
        assert!(socket.is_idle());
        socket.close(&mut bench.ring);
    }

    #[test]
    fn a_receive_out_of_provided_buffers_ends_and_is_armed_again() {
        // One buffer: the second message finds none.
        let mut bench = Bench::new(1, 16);
        let (mut socket, mut peer) = bench.connected();
        socket.receive(&mut bench.ring, TOKEN, bench.buffers.group());
        peer.write_all(b"first").unwrap();
        let first = bench.wait_for(SocketOp::Recv);
        let Received::Provided { id, .. } = socket.on_receive(first.result, first.flags) else {
            panic!("data first");
        };
        peer.write_all(b"second").unwrap();
        let dry = bench.wait_for(SocketOp::Recv);
        assert!(matches!(
            socket.on_receive(dry.result, dry.flags),
            Received::NoBuffers
        ));
        assert!(
            !socket.is_armed(SocketOp::Recv),
            "ENOBUFS ends the multishot receive"
        );
        bench.buffers.recycle(id);
        bench.buffers.publish();
        socket.receive(&mut bench.ring, TOKEN, bench.buffers.group());
        let again = bench.wait_for(SocketOp::Recv);
        match socket.on_receive(again.result, again.flags) {
            Received::Provided { id, len } => assert_eq!(bench.buffers.get(id, len), b"second"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_short_send_goes_on_with_the_rest_and_a_failed_one_says_so() {
        let mut bench = Bench::new(4, 4096);
        let (mut socket, mut peer) = bench.connected();
        // More than the socket buffers hold: the first send is short.
        let total = 8 << 20;
        let mut out: Vec<u8> = (0..total).map(|i| i as u8).collect();
        assert_eq!(
            socket.send(&mut bench.ring, &mut out, TOKEN),
            Sending::Batch
        );
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0; 1 << 16];
            while got.len() < total {
                let n = peer.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            (got, peer)
        });
        let mut partials = 0;
        loop {
            let sent = bench.wait_for(SocketOp::Send);
            match socket.on_send(sent.result) {
                SendOutcome::Done(_) => break,
                SendOutcome::Partial(_) => {
                    partials += 1;
                    assert!(socket.is_sending());
                    assert_eq!(
                        socket.send(&mut bench.ring, &mut Vec::new(), TOKEN),
                        Sending::Rest
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let (got, peer) = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == i as u8),
            "in order, whole"
        );
        assert!(partials > 0, "8 MiB does not go in one send");
        // The peer gone, a send fails.
        drop(peer);
        let mut failed = false;
        for _ in 0..20 {
            let mut out = vec![1; 1 << 16];
            if socket.send(&mut bench.ring, &mut out, TOKEN) == Sending::Nothing {
                continue;
            }
            let sent = bench.wait_for(SocketOp::Send);
            if let SendOutcome::Failed(_) = socket.on_send(sent.result) {
                failed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(failed, "a send to a closed peer fails");
    }

    #[test]
    fn a_socket_dropped_with_a_receive_in_flight_keeps_its_buffer() {
        let mut bench = Bench::new(4, 4096);
        let address = bench.listener.local_addr().unwrap();
        let mut socket = RingSocket::connect(&mut bench.ring, address, TOKEN)
            .unwrap()
            .with_receive_buffer(64);
        bench.ring.submit().unwrap();
        let (mut peer, _) = bench.listener.accept().unwrap();
        let done = bench.wait_for(SocketOp::Connect);
        socket.on_connect(done.result).unwrap();
        socket.receive(&mut bench.ring, TOKEN, 0);
        // Dropped with the receive out: the buffer must stay where the
        // kernel writes, so the write below lands in leaked memory, not
        // freed memory.
        drop(socket);
        peer.write_all(b"late").unwrap();
        let late = bench.wait_for(SocketOp::Recv);
        assert_eq!(late.result, 4);
    }
}
