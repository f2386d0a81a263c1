//! The sockets of one [`Cluster`], over a ring someone else owns: an
//! executor's, or the blocking [`Client`](super::driver::Client)'s. It
//! carries out the cluster's connect and close requests, sends each node's
//! output in one send per turn, keeps one receive armed per connection, and
//! feeds every completion back to the cluster.
//!
//! Operations carry [`OpKind::RedisConnect`], [`OpKind::RedisRecv`] and
//! [`OpKind::RedisSend`] tokens whose slot is the node's index, so that they
//! share a ring with other work.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

use super::cluster::{Action, Cluster, CommandToken};
use super::command::Error;
use super::resp::Reply;
use crate::ring;
use crate::ring::token::{OpKind, Token};

/// Bytes each connection reads at once.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

struct Conn {
    fd: Option<OwnedFd>,
    generation: u32,
    /// Where the connect goes; boxed so its address is stable while the
    /// kernel reads it.
    address: Option<Box<SockAddr>>,
    connected: bool,
    connect_in_flight: bool,
    recv_in_flight: bool,
    send_in_flight: bool,
    sending: Vec<u8>,
    sending_done: usize,
    recv_buffer: Box<[u8]>,
    /// Closing: cancels are out; when nothing is in flight the socket goes.
    closing: Option<String>,
    cancelled: bool,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            fd: None,
            generation: 0,
            address: None,
            connected: false,
            connect_in_flight: false,
            recv_in_flight: false,
            send_in_flight: false,
            sending: Vec::new(),
            sending_done: 0,
            recv_buffer: vec![0; RECV_BUFFER_BYTES].into_boxed_slice(),
            closing: None,
            cancelled: false,
        }
    }

    fn in_flight(&self) -> bool {
        self.connect_in_flight || self.recv_in_flight || self.send_in_flight
    }

    fn token(&self, kind: OpKind, node: usize) -> u64 {
        Token {
            kind,
            slot: node as u32,
            generation: self.generation,
        }
        .encode()
    }
}

/// The connections of one cluster.
#[derive(Default)]
pub struct Links {
    conns: Vec<Conn>,
    actions: Vec<Action>,
    /// Open nothing new: the owner is stopping.
    shutting_down: bool,
}

impl Links {
    /// No connections yet.
    pub fn new() -> Links {
        Links::default()
    }

    /// Before the ring waits: the cluster's time-driven work, connects and
    /// closes it asks for, each node's output sent, receives armed.
    pub fn prepare(
        &mut self,
        ring: &mut IoUring,
        cluster: &mut Cluster,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        cluster.tick(now, sink, &mut self.actions);
        for action in std::mem::take(&mut self.actions) {
            match action {
                Action::Connect {
                    node,
                    address,
                    generation,
                } if !self.shutting_down => {
                    self.connect_node(ring, cluster, node, address, generation, now, sink)
                }
                Action::Connect { .. } => {}
                Action::Close { node } => self.begin_close(node, "closed by the client".into()),
            }
        }
        for node in 0..self.conns.len() {
            self.start_send(ring, cluster, node);
            self.settle(ring, cluster, node, now, sink);
        }
    }

    /// A completion of one of this cluster's operations.
    pub fn complete(
        &mut self,
        cluster: &mut Cluster,
        token: Token,
        result: i32,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        let node = token.slot as usize;
        if self
            .conns
            .get(node)
            .is_none_or(|c| c.generation != token.generation)
        {
            return;
        }
        match token.kind {
            OpKind::RedisConnect => self.on_connect(cluster, node, result, now),
            OpKind::RedisRecv => self.on_recv(cluster, node, result, now, sink),
            OpKind::RedisSend => self.on_send(node, result),
            _ => {}
        }
    }

    /// After the completions: receives re-armed, closes finished.
    pub fn settle_all(
        &mut self,
        ring: &mut IoUring,
        cluster: &mut Cluster,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        for node in 0..self.conns.len() {
            self.settle(ring, cluster, node, now, sink);
        }
    }

    /// Close every connection and open no new one.
    pub fn close_all(&mut self) {
        self.shutting_down = true;
        for node in 0..self.conns.len() {
            self.begin_close(node, "shutting down".into());
        }
    }

    /// Some connection still has a socket (its operations may be in flight).
    pub fn any_open(&self) -> bool {
        self.conns.iter().any(|c| c.fd.is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn connect_node(
        &mut self,
        ring: &mut IoUring,
        cluster: &mut Cluster,
        node: usize,
        address: std::net::SocketAddr,
        generation: u32,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        while self.conns.len() <= node {
            self.conns.push(Conn::new());
        }
        let socket = match Socket::new(Domain::for_address(address), Type::STREAM, None)
            .and_then(|s| s.set_tcp_nodelay(true).map(|()| s))
        {
            Ok(socket) => socket,
            Err(e) => {
                cluster.on_connect_failed(node, &e.to_string(), now, sink);
                return;
            }
        };
        let conn = &mut self.conns[node];
        conn.generation = generation;
        conn.connected = false;
        conn.closing = None;
        conn.cancelled = false;
        conn.sending.clear();
        conn.sending_done = 0;
        let address = conn.address.insert(Box::new(SockAddr::from(address)));
        let entry = opcode::Connect::new(
            types::Fd(socket.as_raw_fd()),
            address.as_ptr().cast(),
            address.len(),
        )
        .build()
        .user_data(conn.token(OpKind::RedisConnect, node));
        conn.fd = Some(socket.into());
        conn.connect_in_flight = true;
        push(ring, &entry);
    }

    fn on_connect(&mut self, cluster: &mut Cluster, node: usize, result: i32, now: Instant) {
        let conn = &mut self.conns[node];
        conn.connect_in_flight = false;
        if conn.closing.is_some() {
            return;
        }
        if result < 0 {
            conn.closing = Some(io::Error::from_raw_os_error(-result).to_string());
            return;
        }
        conn.connected = true;
        cluster.on_connected(node, now);
    }

    fn on_recv(
        &mut self,
        cluster: &mut Cluster,
        node: usize,
        result: i32,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        let conn = &mut self.conns[node];
        conn.recv_in_flight = false;
        if conn.closing.is_some() {
            return;
        }
        match result {
            n if n > 0 => {
                let bytes = &conn.recv_buffer[..n as usize];
                cluster.on_received(node, bytes, now, sink);
            }
            0 => conn.closing = Some("the server closed the connection".into()),
            e => conn.closing = Some(io::Error::from_raw_os_error(-e).to_string()),
        }
    }

    fn on_send(&mut self, node: usize, result: i32) {
        let conn = &mut self.conns[node];
        conn.send_in_flight = false;
        if conn.closing.is_some() {
            return;
        }
        if result < 0 {
            conn.closing = Some(io::Error::from_raw_os_error(-result).to_string());
            return;
        }
        conn.sending_done += result as usize;
        if conn.sending_done == conn.sending.len() {
            conn.sending.clear();
            conn.sending_done = 0;
        }
    }

    /// Send what the cluster wrote for `node`, or the rest of a partial send.
    fn start_send(&mut self, ring: &mut IoUring, cluster: &mut Cluster, node: usize) {
        let conn = &mut self.conns[node];
        if !conn.connected || conn.closing.is_some() || conn.send_in_flight {
            return;
        }
        if conn.sending.is_empty() {
            let out = cluster.output(node);
            if out.is_empty() {
                return;
            }
            std::mem::swap(out, &mut conn.sending);
        }
        let Some(fd) = conn.fd.as_ref() else { return };
        let rest = &conn.sending[conn.sending_done..];
        let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(conn.token(OpKind::RedisSend, node));
        conn.send_in_flight = true;
        push(ring, &entry);
    }

    fn begin_close(&mut self, node: usize, why: String) {
        if let Some(conn) = self.conns.get_mut(node) {
            conn.closing.get_or_insert(why);
        }
    }

    /// Keep a receive armed on an open connection; finish closing one.
    fn settle(
        &mut self,
        ring: &mut IoUring,
        cluster: &mut Cluster,
        node: usize,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        let conn = &mut self.conns[node];
        let Some(fd) = conn.fd.as_ref().map(|f| types::Fd(f.as_raw_fd())) else {
            return;
        };
        if let Some(why) = &conn.closing {
            if conn.in_flight() {
                if !conn.cancelled {
                    conn.cancelled = true;
                    for kind in [OpKind::RedisConnect, OpKind::RedisRecv, OpKind::RedisSend] {
                        let entry = opcode::AsyncCancel::new(conn.token(kind, node))
                            .build()
                            .user_data(Token::global(OpKind::Cancel).encode());
                        push(ring, &entry);
                    }
                }
                return;
            }
            let why = why.clone();
            let connected = conn.connected;
            conn.fd = None;
            conn.closing = None;
            conn.connected = false;
            conn.sending.clear();
            conn.sending_done = 0;
            if connected {
                cluster.on_closed(node, &why, now, sink);
            } else {
                cluster.on_connect_failed(node, &why, now, sink);
            }
            return;
        }
        if conn.connected && !conn.recv_in_flight {
            let entry = opcode::Recv::new(
                fd,
                conn.recv_buffer.as_mut_ptr(),
                conn.recv_buffer.len() as u32,
            )
            .build()
            .user_data(conn.token(OpKind::RedisRecv, node));
            conn.recv_in_flight = true;
            push(ring, &entry);
        }
    }
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: every entry points at memory the links own and keep in place
    // until the operation completes: a connection's receive buffer (boxed),
    // its `sending` buffer (untouched while a send is in flight), its boxed
    // address; connections are never removed, and every owner drops its
    // ring before its links (field order).
    unsafe { ring::push(ring, entry) };
}
