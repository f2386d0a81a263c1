//! A [`Cluster`] driven over its own io_uring ring, on the calling thread:
//! what the database core, the tests and the benchmark use. (Executor
//! cores drive the same [`Cluster`] from their own ring.)
//!
//! One turn: carry out the cluster's connect and close requests, send each
//! node's output in one send, submit and wait for a completion or the next
//! deadline, feed what completed back to the cluster.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

use super::cluster::{Action, Cluster, CommandToken, Config};
use super::command::{Command, Error};
use super::resp::{OwnedReply, Reply};
use crate::reactor::ring;
use crate::reactor::token::{OpKind, Token};

/// Bytes each connection reads at once.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// How long [`Client::connect`] tries before giving up.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

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

/// A blocking Redis Cluster client on the calling thread.
pub struct Client {
    // Field order is drop order: the ring first, so the kernel is done with
    // the connections' buffers before they are freed.
    ring: IoUring,
    conns: Vec<Conn>,
    cluster: Cluster,
    actions: Vec<Action>,
    completions: Vec<(u64, i32)>,
    /// Outcomes of the current call, by token.
    outcomes: Vec<Option<Result<OwnedReply, Error>>>,
    /// Being dropped: open nothing new.
    shutting_down: bool,
}

impl Client {
    /// Connect to the cluster behind `config.seeds`: read its layout,
    /// connect to every master and check that the cluster is
    /// `cluster_state:ok`.
    pub fn connect(config: Config) -> Result<Client, Error> {
        let (ring, _) =
            ring::build(256).map_err(|e| Error::Unavailable(format!("io_uring: {e}")))?;
        let now = Instant::now();
        let mut client = Client {
            ring,
            conns: Vec::new(),
            cluster: Cluster::new(config, now),
            actions: Vec::new(),
            completions: Vec::new(),
            outcomes: Vec::new(),
            shutting_down: false,
        };
        let limit = now + STARTUP_LIMIT;
        let io = |e: io::Error| Error::Unavailable(format!("io_uring: {e}"));
        while !client.cluster.layout_known() {
            if let Some(error) = client.cluster.startup_error() {
                return Err(error);
            }
            if Instant::now() >= limit {
                return Err(Error::Unavailable(
                    "no Redis seed returned the cluster layout within 10 s".into(),
                ));
            }
            client.turn(|_, _| {}).map_err(io)?;
        }
        // Every master must see the cluster as ok, not just the one asked.
        let masters = client.cluster.slot_per_master();
        let infos = client.execute(
            masters
                .iter()
                .map(|&(_, slot)| Command::new(&["CLUSTER", "INFO"], None).routed_to(slot))
                .collect(),
        );
        for ((address, _), info) in masters.iter().zip(infos) {
            let info = info?;
            let text = String::from_utf8_lossy(info.bytes().unwrap_or_default()).into_owned();
            if !text.lines().any(|l| l.trim() == "cluster_state:ok") {
                let state = text
                    .lines()
                    .find(|l| l.starts_with("cluster_state:"))
                    .unwrap_or("no cluster_state")
                    .trim()
                    .to_string();
                return Err(Error::ClusterDown(format!(
                    "{address} reports {state}; millrace needs cluster_state:ok"
                )));
            }
        }
        while !client.cluster.is_ready() {
            if Instant::now() >= limit {
                return Err(Error::Unavailable(
                    "the cluster layout did not cover every slot within 10 s".into(),
                ));
            }
            client.turn(|_, _| {}).map_err(io)?;
        }
        Ok(client)
    }

    /// The masters this client is connected to.
    pub fn masters(&self) -> Vec<std::net::SocketAddr> {
        self.cluster.masters()
    }

    /// Run one command and wait for its outcome.
    pub fn call(&mut self, command: Command) -> Result<OwnedReply, Error> {
        self.execute(vec![command])
            .pop()
            .expect("one command, one outcome")
    }

    /// Run `commands` pipelined (each node's share in one send per turn)
    /// and wait for every outcome, in the order given.
    pub fn execute(&mut self, commands: Vec<Command>) -> Vec<Result<OwnedReply, Error>> {
        let now = Instant::now();
        let count = commands.len();
        self.outcomes.clear();
        self.outcomes.resize(count, None);
        for (token, command) in commands.into_iter().enumerate() {
            self.cluster.submit(token as CommandToken, command, now);
        }
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let mut left = count;
        while left > 0 {
            let result = self.turn(|token, result| {
                if let Some(slot) = outcomes.get_mut(token as usize)
                    && slot.is_none()
                {
                    *slot = Some(result.map(|r| r.to_owned()));
                    left -= 1;
                }
            });
            if let Err(e) = result {
                for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(Error::Unavailable(format!("io_uring: {e}"))));
                }
                break;
            }
        }
        let results = outcomes
            .drain(..)
            .map(|o| o.expect("every outcome arrived"))
            .collect();
        self.outcomes = outcomes;
        results
    }

    /// Run `commands` pipelined like [`Client::execute`], but hand each
    /// outcome to `each(index, reply)` as it arrives, the reply still in the
    /// receive buffer: nothing is copied unless `each` copies it.
    pub fn execute_each(
        &mut self,
        commands: Vec<Command>,
        mut each: impl FnMut(usize, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut left = commands.len();
        for (token, command) in commands.into_iter().enumerate() {
            self.cluster.submit(token as CommandToken, command, now);
        }
        while left > 0 {
            self.turn(|token, result| {
                left -= 1;
                each(token as usize, result);
            })?;
        }
        Ok(())
    }

    /// Keep `depth` commands in flight until `total` have been answered:
    /// `make(i)` builds the i-th, `done(i, outcome)` sees its reply in place.
    pub fn pipeline(
        &mut self,
        total: u64,
        depth: usize,
        mut make: impl FnMut(u64) -> Command,
        mut done: impl FnMut(u64, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let mut issued = 0u64;
        let mut answered = 0u64;
        while answered < total {
            let now = Instant::now();
            while issued < total && (issued - answered) < depth as u64 {
                self.cluster.submit(issued, make(issued), now);
                issued += 1;
            }
            self.turn(|token, result| {
                answered += 1;
                done(token, result);
            })?;
        }
        Ok(())
    }

    /// One turn of the loop; outcomes go to `sink`.
    fn turn(
        &mut self,
        mut sink: impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let now = Instant::now();
        self.cluster.tick(now, &mut sink, &mut self.actions);
        for action in std::mem::take(&mut self.actions) {
            match action {
                Action::Connect {
                    node,
                    address,
                    generation,
                } if !self.shutting_down => {
                    self.connect_node(node, address, generation, now, &mut sink)
                }
                Action::Connect { .. } => {}
                Action::Close { node } => self.begin_close(node, "closed by the client".into()),
            }
        }
        for node in 0..self.conns.len() {
            self.start_send(node);
            self.settle(node, now, &mut sink);
        }
        let wake_at = self.cluster.next_deadline(now);
        ring::submit_and_wait(&self.ring, wake_at)?;
        self.completions.clear();
        self.completions
            .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let now = Instant::now();
        for i in 0..self.completions.len() {
            let (user_data, result) = self.completions[i];
            let Some(token) = Token::decode(user_data) else {
                continue;
            };
            let node = token.slot as usize;
            if self
                .conns
                .get(node)
                .is_none_or(|c| c.generation != token.generation)
            {
                continue;
            }
            match token.kind {
                OpKind::Connect => self.on_connect(node, result, now),
                OpKind::Recv => self.on_recv(node, result, now, &mut sink),
                OpKind::Send => self.on_send(node, result),
                _ => {}
            }
        }
        for node in 0..self.conns.len() {
            self.settle(node, now, &mut sink);
        }
        Ok(())
    }

    fn connect_node(
        &mut self,
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
                self.cluster
                    .on_connect_failed(node, &e.to_string(), now, sink);
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
        .user_data(conn.token(OpKind::Connect, node));
        conn.fd = Some(socket.into());
        conn.connect_in_flight = true;
        push(&mut self.ring, &entry);
    }

    fn on_connect(&mut self, node: usize, result: i32, now: Instant) {
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
        self.cluster.on_connected(node, now);
    }

    fn on_recv(
        &mut self,
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
                self.cluster.on_received(node, bytes, now, sink);
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
    fn start_send(&mut self, node: usize) {
        let conn = &mut self.conns[node];
        if !conn.connected || conn.closing.is_some() || conn.send_in_flight {
            return;
        }
        if conn.sending.is_empty() {
            let out = self.cluster.output(node);
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
            .user_data(conn.token(OpKind::Send, node));
        conn.send_in_flight = true;
        push(&mut self.ring, &entry);
    }

    fn begin_close(&mut self, node: usize, why: String) {
        if let Some(conn) = self.conns.get_mut(node) {
            conn.closing.get_or_insert(why);
        }
    }

    /// Keep a receive armed on an open connection; finish closing one.
    fn settle(
        &mut self,
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
                    for kind in [OpKind::Connect, OpKind::Recv, OpKind::Send] {
                        let entry = opcode::AsyncCancel::new(conn.token(kind, node))
                            .build()
                            .user_data(Token::global(OpKind::Cancel).encode());
                        push(&mut self.ring, &entry);
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
                self.cluster.on_closed(node, &why, now, sink);
            } else {
                self.cluster.on_connect_failed(node, &why, now, sink);
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
            .user_data(conn.token(OpKind::Recv, node));
            conn.recv_in_flight = true;
            push(&mut self.ring, &entry);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Cancel everything and give the kernel a moment to finish with the
        // buffers; the ring is dropped first (field order) either way.
        self.shutting_down = true;
        for node in 0..self.conns.len() {
            self.begin_close(node, "client dropped".into());
        }
        let limit = Instant::now() + Duration::from_secs(1);
        while self.conns.iter().any(|c| c.fd.is_some()) && Instant::now() < limit {
            if self.turn(|_, _| {}).is_err() {
                break;
            }
        }
    }
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: every entry points at memory the client owns and keeps in
    // place until the operation completes: a connection's receive buffer
    // (boxed), its `sending` buffer (untouched while a send is in flight),
    // its boxed address; connections are never removed, and the ring is
    // dropped before them.
    unsafe { ring::push(ring, entry) };
}
