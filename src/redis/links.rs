//! The sockets of one [`Cluster`], over a ring someone else owns: an
//! executor's, or the blocking [`Client`](super::driver::Client)'s. It
//! carries out the cluster's connect and close requests, sends each node's
//! output in one send per turn, keeps one receive armed per connection, and
//! feeds every completion back to the cluster.
//!
//! Each node's connection is a [`RingSocket`] with a receive buffer of its
//! own; its operations carry tokens of [`OWNER`] whose slot is the node's
//! index, so that they share a ring with other work.
//!
//! With TLS configured, a connection shakes hands before the cluster hears
//! it is up (so the connect timeout covers the handshake), and the bytes
//! between the cluster and the socket go through the connection's
//! [`Session`]: the cluster never sees a record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;

use super::cluster::{Action, Cluster, ClusterConfig, CommandToken};
use super::command::Error;
use super::resp::Reply;
use crate::ring::Ring;
use crate::ring::socket::{Received, RingSocket, SendOutcome};
use crate::ring::token::{Owner, SocketOp, Token};
use crate::tls::{RecordLayer, Session, client};

/// The owner of the Redis links' operations on a ring.
pub const OWNER: Owner = Owner(2);

/// Bytes each connection reads at once.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Conn {
    socket: Option<RingSocket>,
    generation: u16,
    /// Where it connects.
    address: Option<SocketAddr>,
    /// The TCP connect completed.
    tcp: bool,
    /// Ready for the cluster's commands (with TLS: the handshake is done).
    connected: bool,
    /// Its TLS session, when the links speak TLS.
    tls: Option<Box<Session>>,
    /// TLS records not yet sent.
    wire: Vec<u8>,
    /// Closing, and why: cancels are out; when nothing is in flight the
    /// socket goes.
    closing: Option<String>,
}

impl Conn {
    fn token(&self, node: usize) -> Token {
        Token {
            owner: OWNER,
            op: 0,
            slot: node as u32,
            generation: self.generation,
        }
    }
}

/// The connections of one cluster.
#[derive(Default)]
pub struct Links {
    conns: Vec<Conn>,
    actions: Vec<Action>,
    /// Open nothing new: the owner is stopping.
    shutting_down: bool,
    /// TLS to every node, and the name to check (`None`: the node's address).
    tls: Option<(Arc<ClientConfig>, Option<String>)>,
    /// Scratch: the plaintext one receive's records carried.
    plain: Vec<u8>,
}

impl Links {
    /// No connections yet; TLS if `config` asks for it (a CA or client
    /// certificate file that does not load is an error).
    pub fn new(config: &ClusterConfig) -> Result<Links, String> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => Some((
                tls.client.build().map_err(|e| format!("Redis TLS: {e}"))?,
                tls.server_name.clone(),
            )),
        };
        Ok(Links {
            tls,
            ..Links::default()
        })
    }

    /// Before the ring waits: the cluster's time-driven work, connects and
    /// closes it asks for, each node's output sent, receives armed.
    pub fn prepare(
        &mut self,
        ring: &mut Ring,
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
        flags: u32,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        let node = token.slot as usize;
        let Some(conn) = self
            .conns
            .get_mut(node)
            .filter(|c| c.generation == token.generation)
        else {
            return;
        };
        let Some(socket) = conn.socket.as_mut() else {
            return;
        };
        match SocketOp::of(token.op) {
            Some(SocketOp::Connect) => {
                let outcome = socket.on_connect(result);
                if conn.closing.is_some() {
                    return;
                }
                match outcome {
                    Ok(()) => {
                        conn.tcp = true;
                        match &self.tls {
                            None => {
                                conn.connected = true;
                                cluster.on_connected(node, now);
                            }
                            Some((config, name)) => {
                                let name = name.clone().unwrap_or_else(|| {
                                    conn.address.map(|a| a.ip().to_string()).unwrap_or_default()
                                });
                                match client::connect(config, &name) {
                                    Ok(session) => conn.tls = Some(Box::new(session)),
                                    Err(e) => conn.closing = Some(format!("TLS: {e}")),
                                }
                            }
                        }
                    }
                    Err(e) => conn.closing = Some(e.to_string()),
                }
            }
            Some(SocketOp::Recv) => {
                let received = socket.on_receive(result, flags);
                if conn.closing.is_some() {
                    return;
                }
                match received {
                    Received::Bytes(bytes) => match &mut conn.tls {
                        None => cluster.on_received(node, bytes, now, sink),
                        Some(session) => {
                            self.plain.clear();
                            if let Err(e) = session.open(bytes, &mut self.plain) {
                                conn.closing = Some(format!("TLS: {e}"));
                                return;
                            }
                            if !conn.connected && !session.is_handshaking() {
                                conn.connected = true;
                                cluster.on_connected(node, now);
                            }
                            if session.peer_closed() {
                                conn.closing = Some("the server closed the connection".into());
                            }
                            if !self.plain.is_empty() {
                                cluster.on_received(node, &self.plain, now, sink);
                            }
                        }
                    },
                    Received::Closed => {
                        conn.closing = Some("the server closed the connection".into())
                    }
                    Received::Failed(e) => conn.closing = Some(e.to_string()),
                    Received::Cancelled | Received::NoBuffers | Received::Provided { .. } => {}
                }
            }
            Some(SocketOp::Send) => {
                let sent = socket.on_send(result);
                if conn.closing.is_some() {
                    return;
                }
                if let SendOutcome::Failed(e) = sent {
                    conn.closing = Some(e.to_string());
                }
            }
            // The links never shut a socket half.
            Some(SocketOp::Shutdown) | None => {}
        }
    }

    /// After the completions: receives re-armed, closes finished.
    pub fn settle_all(
        &mut self,
        ring: &mut Ring,
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
        self.conns.iter().any(|c| c.socket.is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn connect_node(
        &mut self,
        ring: &mut Ring,
        cluster: &mut Cluster,
        node: usize,
        address: SocketAddr,
        generation: u32,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        while self.conns.len() <= node {
            self.conns.push(Conn::default());
        }
        let conn = &mut self.conns[node];
        conn.generation = generation as u16;
        conn.address = Some(address);
        conn.tcp = false;
        conn.connected = false;
        conn.tls = None;
        conn.wire.clear();
        conn.closing = None;
        match RingSocket::connect(ring, address, conn.token(node)) {
            Ok(socket) => conn.socket = Some(socket.with_receive_buffer(RECV_BUFFER_BYTES)),
            Err(e) => cluster.on_connect_failed(node, &e.to_string(), now, sink),
        }
    }

    /// Send what the cluster wrote for `node` (sealed, with TLS, and the
    /// handshake's own messages before it), or the rest of a partial send.
    fn start_send(&mut self, ring: &mut Ring, cluster: &mut Cluster, node: usize) {
        let conn = &mut self.conns[node];
        if !conn.tcp || conn.closing.is_some() {
            return;
        }
        let token = conn.token(node);
        let Some(socket) = conn.socket.as_mut() else {
            return;
        };
        match &mut conn.tls {
            None if conn.connected => {
                socket.send(ring, cluster.output(node), token);
            }
            None => {}
            Some(session) => {
                // Until the handshake is done the cluster's output waits.
                let mut nothing = Vec::new();
                let plain = if conn.connected {
                    cluster.output(node)
                } else {
                    &mut nothing
                };
                session.seal(plain, &mut conn.wire);
                socket.send(ring, &mut conn.wire, token);
            }
        }
    }

    fn begin_close(&mut self, node: usize, why: String) {
        if let Some(conn) = self.conns.get_mut(node) {
            conn.closing.get_or_insert(why);
        }
    }

    /// Keep a receive armed on an open connection; finish closing one.
    fn settle(
        &mut self,
        ring: &mut Ring,
        cluster: &mut Cluster,
        node: usize,
        now: Instant,
        sink: &mut impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) {
        let conn = &mut self.conns[node];
        let token = conn.token(node);
        let Some(socket) = conn.socket.as_mut() else {
            return;
        };
        if let Some(why) = &conn.closing {
            if !socket.is_idle() {
                socket.cancel_all(ring, token);
                return;
            }
            let why = why.clone();
            let connected = conn.connected;
            if let Some(socket) = conn.socket.take() {
                socket.close(ring);
            }
            conn.closing = None;
            conn.tcp = false;
            conn.connected = false;
            conn.tls = None;
            conn.wire.clear();
            if connected {
                cluster.on_closed(node, &why, now, sink);
            } else {
                cluster.on_connect_failed(node, &why, now, sink);
            }
            return;
        }
        if conn.tcp {
            socket.receive(ring, token, 0);
        }
    }
}
