//! The cluster client's state, sans-IO: which node owns each slot, one
//! connection per node, the commands waiting on each, and what to do with
//! every reply. A driver (see [`super::driver`]) moves the bytes: it opens
//! and closes connections when asked, sends each node's output once per
//! turn (so every command issued in a turn goes out in one send), and feeds
//! back what arrives.
//!
//! Replies to a node's commands come back in the order they were sent, so
//! each connection keeps a queue of what it waits for. Error replies that
//! are about the cluster, not the command, are handled here, in one place
//! ([`Cluster::on_error_reply`]):
//!
//! | reply | action |
//! |---|---|
//! | `MOVED slot addr` | point the slot at `addr`, send the command there, refresh the layout (rate-limited) |
//! | `ASK slot addr` | send `ASKING` and the command to `addr`, once; the slot map is unchanged |
//! | `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN` | retry after a back-off that doubles, until the command's deadline |
//! | more than `max_redirects` MOVED/ASK | fail with [`Error::TooManyRedirects`] |
//!
//! A lost connection fails the commands already sent on it with
//! [`Error::ConnectionLost`] (they may have run), keeps the ones not yet
//! sent for the reconnect or for the slot's next owner, reconnects with
//! back-off, and asks for a fresh layout, because a master that died sends
//! no MOVED.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::command::{Command, Error};
use super::resp::{self, Protocol, Reply, encode_command};
use super::slot::{SLOT_COUNT, Slot};
use super::topology::Topology;
use crate::metrics::{Elapsed, REDIS_FAILURE_KINDS, RedisFigures, RedisNodeFigures};
use crate::tls::client::ClientTls;

/// The caller's name for a command, handed back with its reply.
pub type CommandToken = u64;

/// A node with no index.
const NO_NODE: u32 = u32::MAX;

/// How the client connects and how patient it is.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Nodes to learn the cluster's layout from.
    pub seeds: Vec<SocketAddr>,
    /// ACL user; `None` with a password authenticates as `default`.
    pub user: Option<String>,
    /// Password, if the cluster needs one. Never logged.
    pub password: Option<String>,
    /// RESP2, or RESP3 through `HELLO 3`.
    pub protocol: Protocol,
    /// A command with no reply this long after it was issued fails.
    pub command_timeout: Duration,
    /// A connect that takes longer fails.
    pub connect_timeout: Duration,
    /// MOVED and ASK redirects one command may follow.
    pub max_redirects: u32,
    /// The layout is read again this often even without a MOVED.
    pub refresh_interval: Duration,
    /// At most one layout refresh per this interval, however many MOVED arrive.
    pub refresh_min_interval: Duration,
    /// First wait before reconnecting; it doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    /// Longest wait before reconnecting.
    pub reconnect_backoff_max: Duration,
    /// First wait before retrying after TRYAGAIN or CLUSTERDOWN; it doubles up to `retry_backoff_max`.
    pub retry_backoff_min: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// Send read-only commands ([`Command::read_only`]) to a replica of the
    /// slot's master, over a connection in `READONLY` mode. Replicas lag
    /// their master, so a read may miss a write just acknowledged.
    pub read_from_replicas: bool,
    /// Speak TLS to every node (the cluster's `tls-port`s, which it
    /// announces to TLS clients in its layout and redirects).
    pub tls: Option<RedisTls>,
}

/// TLS on the links to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTls {
    /// How the nodes' certificates are checked, and the client's own.
    pub client: ClientTls,
    /// The name every node's certificate must hold; `None`: each node's
    /// IP address, as the cluster announces it.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("seeds", &self.seeds)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("protocol", &self.protocol)
            .field("command_timeout", &self.command_timeout)
            .field("read_from_replicas", &self.read_from_replicas)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The environment variable [`ClusterConfig::credentials_from_env`] reads the user from.
pub const USER_ENV: &str = "MILLRACE_REDIS_USER";

/// The environment variable [`ClusterConfig::credentials_from_env`] reads the password from.
pub const PASSWORD_ENV: &str = "MILLRACE_REDIS_PASSWORD";

impl ClusterConfig {
    /// Take the user and password from `MILLRACE_REDIS_USER` and
    /// `MILLRACE_REDIS_PASSWORD` where they are set, so that they need not
    /// appear in files or on command lines.
    pub fn credentials_from_env(mut self) -> ClusterConfig {
        if let Ok(user) = std::env::var(USER_ENV) {
            self.user = Some(user);
        }
        if let Ok(password) = std::env::var(PASSWORD_ENV) {
            self.password = Some(password);
        }
        self
    }

    /// Defaults for `seeds`: RESP2, no credentials, 1 s command timeout,
    /// 5 redirects, a layout refresh every 30 s, reads from masters.
    pub fn new(seeds: Vec<SocketAddr>) -> ClusterConfig {
        ClusterConfig {
            seeds,
            user: None,
            password: None,
            protocol: Protocol::Resp2,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_redirects: 5,
            refresh_interval: Duration::from_secs(30),
            refresh_min_interval: Duration::from_millis(100),
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
            retry_backoff_min: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(500),
            read_from_replicas: false,
            tls: None,
        }
    }
}

/// What the driver is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to `node` at `address`; report it with `generation`.
    Connect {
        /// The node's index.
        node: usize,
        /// Where it listens.
        address: SocketAddr,
        /// This connection's generation.
        generation: u32,
    },
    /// Close `node`'s connection and report [`Cluster::on_closed`].
    Close {
        /// The node's index.
        node: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// No connection, none wanted until `retry_at`.
    Down { retry_at: Instant },
    /// Connecting since `since`.
    Connecting { since: Instant },
    /// Connected; AUTH/HELLO sent, their replies awaited.
    Handshake,
    /// Ready for commands.
    Ready,
    /// The driver was asked to close it.
    Closing,
}

/// What a connection waits for, in order.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A caller's command (its key in `commands`).
    Command(CommandKey),
    /// The reply to `ASKING` before a redirected command.
    Asking,
    /// The reply to a `READONLY` sent on a connection already open when its
    /// node became a replica to read from.
    ReadOnly,
    /// A handshake reply.
    Handshake,
    /// A layout reply.
    Layout(LayoutQuery),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayoutQuery {
    Shards,
    Slots,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    expect: Expect,
    at: Instant,
}

struct Node {
    address: SocketAddr,
    link: LinkState,
    generation: u32,
    /// Failed connects in a row, for the back-off.
    failures: u32,
    /// The node owns slots (or is a seed before the layout is known).
    wanted: bool,
    protocol: Protocol,
    /// Bytes for the driver to send.
    out: Vec<u8>,
    /// Replies awaited, in order.
    sent: VecDeque<InFlight>,
    /// Commands for this node not yet written (it was not ready).
    queued: VecDeque<CommandKey>,
    /// The start of a reply split across reads.
    partial: Vec<u8>,
    /// Why the last connection attempt failed, for start-up errors.
    last_error: Option<String>,
    /// Why this client asked for the connection to be closed.
    close_reason: Option<String>,
    /// A replica read from: its connections start with `READONLY`.
    replica: bool,
    /// Handshake replies still awaited.
    handshake_left: u32,
    /// What `/metrics` shows of it.
    figures: RedisNodeFigures,
}

impl Node {
    fn new(address: SocketAddr, protocol: Protocol, now: Instant) -> Node {
        Node {
            address,
            link: LinkState::Down { retry_at: now },
            generation: 0,
            failures: 0,
            wanted: true,
            protocol,
            out: Vec::new(),
            sent: VecDeque::new(),
            queued: VecDeque::new(),
            partial: Vec::new(),
            last_error: None,
            close_reason: None,
            replica: false,
            handshake_left: 0,
            figures: RedisNodeFigures::default(),
        }
    }
}

/// A command's index and generation in the slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommandKey {
    index: u32,
    generation: u32,
}

struct Pending {
    token: CommandToken,
    command: Command,
    deadline: Instant,
    redirects: u32,
    retries: u32,
    /// ASK: the node to send it to next, with ASKING.
    ask: Option<u32>,
}

/// Commands in flight, reusable slots with generations so that a stale key
/// (a reply to a command that already timed out) finds nothing.
#[derive(Default)]
struct Commands {
    slots: Vec<(u32, Option<Pending>)>,
    free: Vec<u32>,
    len: usize,
}

impl Commands {
    fn insert(&mut self, pending: Pending) -> CommandKey {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                let entry = &mut self.slots[index as usize];
                entry.1 = Some(pending);
                CommandKey {
                    index,
                    generation: entry.0,
                }
            }
            None => {
                self.slots.push((0, Some(pending)));
                CommandKey {
                    index: (self.slots.len() - 1) as u32,
                    generation: 0,
                }
            }
        }
    }

    fn get_mut(&mut self, key: CommandKey) -> Option<&mut Pending> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, pending)) if *generation == key.generation => pending.as_mut(),
            _ => None,
        }
    }

    fn remove(&mut self, key: CommandKey) -> Option<Pending> {
        let (generation, pending) = self.slots.get_mut(key.index as usize)?;
        if *generation != key.generation {
            return None;
        }
        let pending = pending.take()?;
        *generation = generation.wrapping_add(1);
        self.free.push(key.index);
        self.len -= 1;
        Some(pending)
    }

    fn contains(&self, key: CommandKey) -> bool {
        matches!(self.slots.get(key.index as usize), Some((g, Some(_))) if *g == key.generation)
    }

    fn keys(&self) -> impl Iterator<Item = CommandKey> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| p.is_some())
            .map(|(index, &(generation, _))| CommandKey {
                index: index as u32,
                generation,
            })
    }
}

/// The layout refresh's state.
struct Refresh {
    /// A refresh was asked for (MOVED, a lost connection, start-up).
    wanted: bool,
    /// A layout query is on a connection.
    in_flight: bool,
    last: Option<Instant>,
    /// `CLUSTER SHARDS` is unknown to this cluster: use `CLUSTER SLOTS`.
    use_slots: bool,
    /// Round robin over nodes to ask.
    next_node: usize,
}

/// Where to deliver replies: `(token, reply or error)`.
pub trait Sink {
    /// One command's outcome.
    fn deliver(&mut self, token: CommandToken, result: Result<Reply<'_>, Error>);
}

impl<F: FnMut(CommandToken, Result<Reply<'_>, Error>)> Sink for F {
    fn deliver(&mut self, token: CommandToken, result: Result<Reply<'_>, Error>) {
        self(token, result)
    }
}

/// One core's view of a Redis Cluster and its connections.
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
    /// The node owning each slot, [`NO_NODE`] if none is known.
    owners: Vec<u32>,
    /// The replica read-only commands for each slot go to, [`NO_NODE`] if
    /// none (or reads go to masters).
    readers: Vec<u32>,
    /// Online replicas of each slot's master, as the last layout said.
    replica_counts: Vec<u8>,
    layout_known: bool,
    commands: Commands,
    /// Commands waiting for a retry time.
    retries: Vec<(Instant, CommandKey)>,
    /// Commands whose slot has no known owner, waiting for a layout.
    unrouted: Vec<CommandKey>,
    refresh: Refresh,
    /// Set when the credentials were refused: start-up reports it.
    auth_error: Option<String>,
    /// Connections to close, found while reading.
    to_close: Vec<usize>,
    /// When [`Cluster::tick`] next looks for timeouts.
    next_sweep: Instant,
    /// Commands that got no reply, by [`Error::kind_index`].
    failures: [u64; REDIS_FAILURE_KINDS.len()],
    /// The nodes that own slots in the layout, each once.
    owner_nodes: Vec<u32>,
    /// Every slot has an owner (kept with `owners`, so that readiness is
    /// not a scan of 16,384 slots).
    every_slot_owned: bool,
    /// Reply latencies: replies to commands written in one turn share it.
    elapsed: Elapsed,
}

impl Cluster {
    /// A client that will connect to `config.seeds` and read the layout.
    pub fn new(config: ClusterConfig, now: Instant) -> Cluster {
        let nodes = config
            .seeds
            .iter()
            .map(|&address| Node::new(address, config.protocol, now))
            .collect();
        Cluster {
            nodes,
            owners: vec![NO_NODE; usize::from(SLOT_COUNT)],
            readers: vec![NO_NODE; usize::from(SLOT_COUNT)],
            replica_counts: vec![0; usize::from(SLOT_COUNT)],
            layout_known: false,
            commands: Commands::default(),
            retries: Vec::new(),
            unrouted: Vec::new(),
            refresh: Refresh {
                wanted: true,
                in_flight: false,
                last: None,
                use_slots: false,
                next_node: 0,
            },
            auth_error: None,
            to_close: Vec::new(),
            next_sweep: now,
            failures: [0; REDIS_FAILURE_KINDS.len()],
            owner_nodes: Vec::new(),
            every_slot_owned: false,
            elapsed: Elapsed::new(now),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The layout has been read and every slot has an owner.
    pub fn is_ready(&self) -> bool {
        self.layout_known && self.every_slot_owned
    }

    /// Every slot has an owner, and the client is connected to each owner.
    /// O(masters): the owners are listed when a layout is applied.
    pub fn is_serving(&self) -> bool {
        self.is_ready()
            && self
                .owner_nodes
                .iter()
                .all(|&n| self.nodes[n as usize].link == LinkState::Ready)
    }

    /// A layout has been read (it may not cover every slot).
    pub fn layout_known(&self) -> bool {
        self.layout_known
    }

    /// Ask for the layout again if the last one is older than `age`: a
    /// caller that refuses work on the layout's word (a master without
    /// enough replicas) learns soon when that changes, without a refresh
    /// per refusal.
    pub fn refresh_layout_if_older(&mut self, age: Duration, now: Instant) {
        if self.refresh.last.is_none_or(|last| now >= last + age) {
            self.refresh.wanted = true;
        }
    }

    /// How many online replicas the master of `slot` had in the last
    /// layout; `None` while no owner is known.
    pub fn online_replicas(&self, slot: Slot) -> Option<usize> {
        let slot = usize::from(slot.get());
        (self.owners[slot] != NO_NODE).then(|| usize::from(self.replica_counts[slot]))
    }

    /// Commands issued and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.commands.len
    }

    /// Copy each node's figures, and the failures, into `out` (its
    /// allocation kept).
    pub fn copy_figures(&self, out: &mut RedisFigures) {
        out.nodes.truncate(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            // Replies awaited, a handshake's or a layout query's among them
            // (rare; counting only commands would walk the queue).
            let in_flight = node.sent.len() as u64;
            match out.nodes.get_mut(i) {
                Some(slot) => {
                    slot.0 = node.address;
                    slot.1 = in_flight;
                    slot.2.clone_from(&node.figures);
                }
                None => out
                    .nodes
                    .push((node.address, in_flight, node.figures.clone())),
            }
        }
        out.failures = self.failures;
    }

    /// One slot of each master's, to reach every master with a keyless command.
    pub fn slot_per_master(&self) -> Vec<(SocketAddr, Slot)> {
        let mut seen = Vec::new();
        for (slot, &owner) in self.owners.iter().enumerate() {
            if owner != NO_NODE && !seen.iter().any(|&(o, _)| o == owner) {
                seen.push((owner, slot as u16));
            }
        }
        seen.into_iter()
            .filter_map(|(owner, slot)| {
                Some((self.nodes[owner as usize].address, Slot::new(slot)?))
            })
            .collect()
    }

    /// Masters the client connects to.
    pub fn masters(&self) -> Vec<SocketAddr> {
        let mut masters: Vec<SocketAddr> = self
            .owners
            .iter()
            .filter(|&&o| o != NO_NODE)
            .map(|&o| self.nodes[o as usize].address)
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Why start-up cannot succeed, if it cannot: refused credentials, or
    /// every seed failed to connect at least once.
    pub fn startup_error(&self) -> Option<Error> {
        if let Some(why) = &self.auth_error {
            return Some(Error::Auth(why.clone()));
        }
        if self.layout_known {
            return None;
        }
        let failures: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.last_error
                    .as_ref()
                    .map(|e| format!("{} ({e})", n.address))
            })
            .collect();
        (failures.len() == self.nodes.len() && !self.nodes.is_empty()).then(|| {
            Error::Unavailable(format!(
                "none of the Redis seeds answered: {}",
                failures.join(", ")
            ))
        })
    }

    /// Issue `command`; its outcome reaches the sink with `token`.
    pub fn submit(&mut self, token: CommandToken, command: Command, now: Instant) {
        let key = self.commands.insert(Pending {
            token,
            command,
            deadline: now + self.config.command_timeout,
            redirects: 0,
            retries: 0,
            ask: None,
        });
        self.route(key, now);
    }

    /// Send (or queue) a command to the node its slot, or its ASK, names.
    fn route(&mut self, key: CommandKey, now: Instant) {
        let Some(pending) = self.commands.get_mut(key) else {
            return;
        };
        let node = match (pending.ask, pending.command.slot()) {
            (Some(node), _) => node,
            (None, Some(slot)) => {
                let slot = usize::from(slot.get());
                // A read goes to a replica unless it was redirected: then the master decides.
                let reader = self.readers[slot];
                if pending.command.is_read_only() && pending.redirects == 0 && reader != NO_NODE {
                    reader
                } else {
                    self.owners[slot]
                }
            }
            (None, None) => self.any_ready_node().unwrap_or(NO_NODE),
        };
        if node == NO_NODE {
            self.unrouted.push(key);
            self.refresh.wanted = true;
            return;
        }
        let node = node as usize;
        if self.nodes[node].link == LinkState::Ready {
            self.write(node, key, now);
        } else {
            self.nodes[node].queued.push_back(key);
            self.nodes[node].wanted = true;
        }
    }

    /// Write a command into a ready node's output.
    fn write(&mut self, node: usize, key: CommandKey, now: Instant) {
        let Some(pending) = self.commands.get_mut(key) else {
            return;
        };
        let asking = pending.ask.take().is_some();
        let target = &mut self.nodes[node];
        if asking {
            encode_command(&mut target.out, &[b"ASKING"]);
            target.sent.push_back(InFlight {
                expect: Expect::Asking,
                at: now,
            });
        }
        target.out.extend_from_slice(pending.command.bytes());
        target.sent.push_back(InFlight {
            expect: Expect::Command(key),
            at: now,
        });
    }

    fn any_ready_node(&self) -> Option<u32> {
        let ready = |n: &Node| n.link == LinkState::Ready;
        let len = self.nodes.len();
        (0..len)
            .map(|i| (self.refresh.next_node + i) % len)
            .find(|&i| ready(&self.nodes[i]))
            .map(|i| i as u32)
    }

    /// Connections to open or close now.
    pub fn actions(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.extend(self.to_close.drain(..).map(|node| Action::Close { node }));
        for (index, node) in self.nodes.iter_mut().enumerate() {
            match node.link {
                LinkState::Down { retry_at } if node.wanted && now >= retry_at => {
                    node.generation = node.generation.wrapping_add(1) & 0x00ff_ffff;
                    node.link = LinkState::Connecting { since: now };
                    out.push(Action::Connect {
                        node: index,
                        address: node.address,
                        generation: node.generation,
                    });
                }
                LinkState::Connecting { since } if now >= since + self.config.connect_timeout => {
                    node.last_error = Some("connect timed out".into());
                    node.link = LinkState::Closing;
                    out.push(Action::Close { node: index });
                }
                _ => {}
            }
        }
    }

    /// Bytes waiting to be sent to `node`; the driver takes them.
    pub fn output(&mut self, node: usize) -> &mut Vec<u8> {
        &mut self.nodes[node].out
    }

    /// Nodes the driver knows of.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The connection to `node` is established: send the handshake, or
    /// become ready.
    pub fn on_connected(&mut self, node: usize, now: Instant) {
        let protocol = self.config.protocol;
        let user = self.config.user.clone();
        let password = self.config.password.clone();
        let target = &mut self.nodes[node];
        target.failures = 0;
        target.last_error = None;
        target.figures.connects += 1;
        target.protocol = protocol;
        let mut handshake: Vec<Vec<&[u8]>> = Vec::new();
        match (protocol, &password) {
            (Protocol::Resp3, Some(password)) => handshake.push(vec![
                b"HELLO",
                b"3",
                b"AUTH",
                user.as_deref().unwrap_or("default").as_bytes(),
                password.as_bytes(),
            ]),
            (Protocol::Resp3, None) => handshake.push(vec![b"HELLO", b"3"]),
            (Protocol::Resp2, Some(password)) => handshake.push(match &user {
                Some(user) => vec![b"AUTH", user.as_bytes(), password.as_bytes()],
                None => vec![b"AUTH", password.as_bytes()],
            }),
            (Protocol::Resp2, None) => {}
        }
        if target.replica {
            handshake.push(vec![b"READONLY"]);
        }
        if handshake.is_empty() {
            return self.become_ready(node, now);
        }
        target.handshake_left = handshake.len() as u32;
        for args in handshake {
            encode_command(&mut target.out, &args);
            target.sent.push_back(InFlight {
                expect: Expect::Handshake,
                at: now,
            });
        }
        target.link = LinkState::Handshake;
    }

    fn become_ready(&mut self, node: usize, now: Instant) {
        self.nodes[node].link = LinkState::Ready;
        let queued = std::mem::take(&mut self.nodes[node].queued);
        for key in queued {
            // A command queued here may belong elsewhere by now.
            self.route(key, now);
        }
        self.maybe_refresh(now);
    }

    /// Connecting to `node` failed.
    pub fn on_connect_failed(
        &mut self,
        node: usize,
        error: &str,
        now: Instant,
        sink: &mut impl Sink,
    ) {
        self.nodes[node].last_error = Some(error.to_string());
        self.lose(node, error, now, sink);
    }

    /// `node`'s connection closed or failed (after [`Action::Close`] too).
    pub fn on_closed(&mut self, node: usize, why: &str, now: Instant, sink: &mut impl Sink) {
        let why = self.nodes[node]
            .close_reason
            .take()
            .unwrap_or_else(|| why.to_string());
        self.lose(node, &why, now, sink);
    }

    fn lose(&mut self, node: usize, why: &str, now: Instant, sink: &mut impl Sink) {
        let target = &mut self.nodes[node];
        target.failures += 1;
        // Each connection established ends once (a failed connect never began).
        if target.figures.disconnects < target.figures.connects {
            target.figures.disconnects += 1;
        }
        let doublings = (target.failures - 1).min(16);
        let backoff = (self.config.reconnect_backoff_min * (1 << doublings))
            .min(self.config.reconnect_backoff_max);
        target.link = LinkState::Down {
            retry_at: now + backoff,
        };
        target.out.clear();
        target.partial.clear();
        let sent = std::mem::take(&mut target.sent);
        for entry in sent {
            match entry.expect {
                Expect::Command(key) => {
                    if let Some(pending) = self.commands.remove(key) {
                        fail(
                            &mut self.failures,
                            sink,
                            pending.token,
                            Error::ConnectionLost(why.to_string()),
                        );
                    }
                }
                Expect::Layout(_) => self.refresh.in_flight = false,
                Expect::Asking | Expect::ReadOnly | Expect::Handshake => {}
            }
        }
        // The layout may have changed under us (a master died).
        self.refresh.wanted = true;
    }

    /// Bytes arrived from `node`: deliver each reply in turn.
    pub fn on_received(&mut self, node: usize, bytes: &[u8], now: Instant, sink: &mut impl Sink) {
        let mut partial = std::mem::take(&mut self.nodes[node].partial);
        let result = if partial.is_empty() {
            match self.read_replies(node, bytes, now, sink) {
                Ok(used) => {
                    partial.extend_from_slice(&bytes[used..]);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            partial.extend_from_slice(bytes);
            match self.read_replies(node, &partial, now, sink) {
                Ok(used) => {
                    partial.drain(..used);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {
                // The link may have been lost while reading (a handshake failed).
                if matches!(
                    self.nodes[node].link,
                    LinkState::Ready | LinkState::Handshake
                ) {
                    self.nodes[node].partial = partial;
                }
            }
            Err(why) => self.close(node, why),
        }
    }

    /// Ask the driver to close `node`'s connection; what waits on it fails
    /// with `why` once it has.
    fn close(&mut self, node: usize, why: String) {
        let target = &mut self.nodes[node];
        if target.link != LinkState::Closing {
            target.link = LinkState::Closing;
            target.close_reason = Some(why);
            self.to_close.push(node);
        }
    }

    /// Decode and handle whole replies from `data`; returns the bytes used.
    fn read_replies(
        &mut self,
        node: usize,
        data: &[u8],
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<usize, String> {
        let mut used = 0;
        while used < data.len() {
            let protocol = self.nodes[node].protocol;
            let Some((reply, len)) =
                resp::decode(protocol, &data[used..]).map_err(|e| e.to_string())?
            else {
                break;
            };
            used += len;
            let Some(sent) = self.nodes[node].sent.pop_front() else {
                return Err("a reply to nothing".into());
            };
            match sent.expect {
                Expect::Command(key) => {
                    let took = self.elapsed.since(sent.at, now);
                    let figures = &mut self.nodes[node].figures;
                    figures.replies += 1;
                    figures.latency.observe(took, 1);
                    self.on_reply(node, key, reply, now, sink);
                }
                Expect::Asking | Expect::ReadOnly => {}
                Expect::Handshake => {
                    if let Reply::Error(message) = reply {
                        let message = String::from_utf8_lossy(message).into_owned();
                        self.auth_error = Some(message.clone());
                        // Nothing will work on this connection: fail what waits on it.
                        let queued = std::mem::take(&mut self.nodes[node].queued);
                        for key in queued {
                            if let Some(pending) = self.commands.remove(key) {
                                fail(
                                    &mut self.failures,
                                    sink,
                                    pending.token,
                                    Error::Auth(message.clone()),
                                );
                            }
                        }
                        return Err(format!("handshake refused: {message}"));
                    }
                    let target = &mut self.nodes[node];
                    target.handshake_left = target.handshake_left.saturating_sub(1);
                    if target.handshake_left == 0 {
                        self.become_ready(node, now);
                    }
                }
                Expect::Layout(query) => self.on_layout(node, query, &reply, now),
            }
        }
        Ok(used)
    }

    fn on_reply(
        &mut self,
        node: usize,
        key: CommandKey,
        reply: Reply<'_>,
        now: Instant,
        sink: &mut impl Sink,
    ) {
        if let Reply::Error(message) = reply {
            if self.on_error_reply(node, key, message, now, sink) {
                return;
            }
            self.nodes[node].figures.error_replies += 1;
        }
        if let Some(pending) = self.commands.remove(key) {
            sink.deliver(pending.token, Ok(reply));
        }
    }

    /// The redirect and retry table. Returns whether the reply was handled
    /// (the command goes on); otherwise it is the caller's.
    fn on_error_reply(
        &mut self,
        node: usize,
        key: CommandKey,
        message: &[u8],
        now: Instant,
        sink: &mut impl Sink,
    ) -> bool {
        let word = message.split(|&b| b == b' ').next().unwrap_or_default();
        match word {
            b"MOVED" | b"ASK" => {
                let Some((slot, address)) = parse_redirect(message) else {
                    return false;
                };
                let figures = &mut self.nodes[node].figures;
                if word == b"MOVED" {
                    figures.moved += 1;
                } else {
                    figures.ask += 1;
                }
                let Some(pending) = self.commands.get_mut(key) else {
                    return true; // Timed out already.
                };
                pending.redirects += 1;
                if pending.redirects > self.config.max_redirects {
                    let pending = self.commands.remove(key).expect("present above");
                    fail(
                        &mut self.failures,
                        sink,
                        pending.token,
                        Error::TooManyRedirects,
                    );
                    return true;
                }
                let target = self.node_for(address, now);
                if word == b"MOVED" {
                    self.owners[usize::from(slot.get())] = target;
                    if !self.owner_nodes.contains(&target) {
                        self.owner_nodes.push(target);
                    }
                    if !self.every_slot_owned {
                        self.every_slot_owned = !self.owners.contains(&NO_NODE);
                    }
                    self.refresh.wanted = true;
                } else if let Some(pending) = self.commands.get_mut(key) {
                    pending.ask = Some(target);
                }
                self.route(key, now);
                true
            }
            b"TRYAGAIN" | b"CLUSTERDOWN" | b"LOADING" | b"MASTERDOWN" => {
                self.nodes[node].figures.retried += 1;
                let backoff_min = self.config.retry_backoff_min;
                let backoff_max = self.config.retry_backoff_max;
                let Some(pending) = self.commands.get_mut(key) else {
                    return true;
                };
                let doublings = pending.retries.min(16);
                pending.retries += 1;
                let at = now + (backoff_min * (1 << doublings)).min(backoff_max);
                if at >= pending.deadline {
                    let pending = self.commands.remove(key).expect("present above");
                    let why = String::from_utf8_lossy(message).into_owned();
                    fail(
                        &mut self.failures,
                        sink,
                        pending.token,
                        Error::ClusterDown(why),
                    );
                } else {
                    self.retries.push((at, key));
                    if word == b"CLUSTERDOWN" {
                        self.refresh.wanted = true;
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The node at `address`, added if new.
    fn node_for(&mut self, address: SocketAddr, now: Instant) -> u32 {
        if let Some(index) = self.nodes.iter().position(|n| n.address == address) {
            self.nodes[index].wanted = true;
            return index as u32;
        }
        self.nodes
            .push(Node::new(address, self.config.protocol, now));
        (self.nodes.len() - 1) as u32
    }

    fn on_layout(&mut self, node: usize, query: LayoutQuery, reply: &Reply<'_>, now: Instant) {
        self.refresh.in_flight = false;
        let asked = self.nodes[node].address;
        if let Reply::Error(message) = reply {
            if query == LayoutQuery::Shards && !self.refresh.use_slots {
                // Redis before 7: ask the old way.
                tracing::debug!(error = %String::from_utf8_lossy(message), "CLUSTER SHARDS refused; using CLUSTER SLOTS");
                self.refresh.use_slots = true;
                self.refresh.wanted = true;
                self.refresh.last = None;
            }
            return;
        }
        let parsed = match query {
            LayoutQuery::Shards => Topology::from_shards(reply, asked, self.config.tls.is_some()),
            LayoutQuery::Slots => Topology::from_slots(reply, asked),
        };
        match parsed {
            Ok(topology) => self.apply(&topology, now),
            Err(why) => tracing::warn!(node = %asked, "ignoring a cluster layout: {why}"),
        }
    }

    /// Take a new layout: point every slot at its master, move commands
    /// that waited on nodes that no longer own their slot.
    fn apply(&mut self, topology: &Topology, now: Instant) {
        let mut owners = vec![NO_NODE; usize::from(SLOT_COUNT)];
        let mut readers = vec![NO_NODE; usize::from(SLOT_COUNT)];
        let mut replica_counts = vec![0u8; usize::from(SLOT_COUNT)];
        for shard in &topology.shards {
            let replicas = u8::try_from(shard.replicas.len()).unwrap_or(u8::MAX);
            let node = self.node_for(shard.master, now);
            let reader = match shard.replicas.first() {
                Some(&replica) if self.config.read_from_replicas => {
                    let reader = self.node_for(replica, now);
                    let target = &mut self.nodes[reader as usize];
                    if !target.replica && target.link == LinkState::Ready {
                        encode_command(&mut target.out, &[b"READONLY"]);
                        target.sent.push_back(InFlight {
                            expect: Expect::ReadOnly,
                            at: now,
                        });
                    }
                    target.replica = true;
                    reader
                }
                _ => NO_NODE,
            };
            for &(start, end) in &shard.ranges {
                for slot in start..=end {
                    owners[usize::from(slot)] = node;
                    readers[usize::from(slot)] = reader;
                    replica_counts[usize::from(slot)] = replicas;
                }
            }
        }
        self.every_slot_owned = !owners.contains(&NO_NODE);
        self.owner_nodes.clear();
        for &owner in &owners {
            if owner != NO_NODE && !self.owner_nodes.contains(&owner) {
                self.owner_nodes.push(owner);
            }
        }
        self.owners = owners;
        self.readers = readers;
        self.replica_counts = replica_counts;
        self.layout_known = true;
        let serving: Vec<bool> = (0..self.nodes.len())
            .map(|i| self.owners.contains(&(i as u32)) || self.readers.contains(&(i as u32)))
            .collect();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            node.wanted = serving[index];
        }
        // Re-route what waits unsent on nodes, and what had no owner.
        let mut moved = std::mem::take(&mut self.unrouted);
        for node in &mut self.nodes {
            if node.link != LinkState::Ready {
                moved.extend(node.queued.drain(..));
            }
        }
        for key in moved {
            self.route(key, now);
        }
    }

    fn maybe_refresh(&mut self, now: Instant) {
        let due_by_timer = self
            .refresh
            .last
            .is_some_and(|last| now >= last + self.config.refresh_interval);
        let allowed = self
            .refresh
            .last
            .is_none_or(|last| now >= last + self.config.refresh_min_interval);
        if self.refresh.in_flight || !(due_by_timer || (self.refresh.wanted && allowed)) {
            return;
        }
        let Some(node) = self.any_ready_node() else {
            return;
        };
        let node = node as usize;
        self.refresh.next_node = node + 1;
        let query = if self.refresh.use_slots {
            LayoutQuery::Slots
        } else {
            LayoutQuery::Shards
        };
        let args: [&[u8]; 2] = match query {
            LayoutQuery::Shards => [b"CLUSTER", b"SHARDS"],
            LayoutQuery::Slots => [b"CLUSTER", b"SLOTS"],
        };
        let target = &mut self.nodes[node];
        encode_command(&mut target.out, &args);
        target.sent.push_back(InFlight {
            expect: Expect::Layout(query),
            at: now,
        });
        self.refresh.in_flight = true;
        self.refresh.wanted = false;
        self.refresh.last = Some(now);
    }

    /// Time-driven work: timeouts, retries, the layout refresh, connections
    /// that stopped answering.
    pub fn tick(&mut self, now: Instant, sink: &mut impl Sink, actions: &mut Vec<Action>) {
        if now >= self.next_sweep {
            self.sweep(now, sink);
            self.next_sweep = now + self.sweep_interval();
        }
        // Retries whose back-off is over.
        if self.retries.iter().any(|&(at, _)| now >= at) {
            let mut due = Vec::new();
            self.retries.retain(|&(at, key)| {
                if now >= at {
                    due.push(key);
                    false
                } else {
                    true
                }
            });
            for key in due {
                self.route(key, now);
            }
        }
        self.actions(now, actions);
        self.maybe_refresh(now);
    }

    /// The timeouts, every [`Cluster::sweep_interval`] rather than every
    /// turn: a scan of every command in flight and every connection.
    fn sweep(&mut self, now: Instant, sink: &mut impl Sink) {
        // Commands past their deadline.
        let expired: Vec<CommandKey> = self
            .commands
            .keys()
            .filter(|&k| {
                self.commands
                    .slots
                    .get(k.index as usize)
                    .and_then(|(_, p)| p.as_ref())
                    .is_some_and(|p| now >= p.deadline)
            })
            .collect();
        for key in expired {
            if let Some(pending) = self.commands.remove(key) {
                fail(&mut self.failures, sink, pending.token, Error::Timeout);
            }
        }
        // Unrouted commands whose deadline passed were failed above; the rest wait.
        if !self.unrouted.is_empty() {
            self.refresh.wanted = true;
        }
        // A connection whose oldest reply is overdue is stuck: close it.
        let timeout = self.config.command_timeout;
        let stuck: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.nodes[i];
                matches!(node.link, LinkState::Ready | LinkState::Handshake)
                    && node.sent.front().is_some_and(|s| now >= s.at + timeout)
            })
            .collect();
        for node in stuck {
            self.close(node, "no reply within the command timeout".into());
        }
        // Forget commands that timed out while they waited unsent.
        let commands = &self.commands;
        let live = |key: &CommandKey| commands.contains(*key);
        self.unrouted.retain(live);
        for node in &mut self.nodes {
            node.queued.retain(live);
        }
    }

    /// How often timeouts are looked for.
    fn sweep_interval(&self) -> Duration {
        Duration::from_millis(10).min(self.config.command_timeout / 4)
    }

    /// When [`Cluster::tick`] next has work, at the latest.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_sweep.max(now).min(now + self.sweep_interval());
        for &(at, _) in &self.retries {
            next = next.min(at);
        }
        next
    }
}

/// Deliver a command's failure, counted by kind.
fn fail(
    failures: &mut [u64; REDIS_FAILURE_KINDS.len()],
    sink: &mut impl Sink,
    token: CommandToken,
    error: Error,
) {
    failures[error.kind_index()] += 1;
    sink.deliver(token, Err(error));
}

/// `MOVED 3999 127.0.0.1:6381` or `ASK ...`: the slot and the address.
fn parse_redirect(message: &[u8]) -> Option<(Slot, SocketAddr)> {
    let text = std::str::from_utf8(message).ok()?;
    let mut words = text.split_ascii_whitespace();
    let _kind = words.next()?;
    let slot = Slot::new(words.next()?.parse().ok()?)?;
    let endpoint = words.next()?;
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = format!(
        "{}:{port}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    )
    .parse()
    .ok()?;
    Some((slot, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    /// What a driver would see: replies and errors by token.
    type Outcomes = Vec<(CommandToken, Result<resp::OwnedReply, Error>)>;

    fn collect(outcomes: &mut Outcomes) -> impl FnMut(CommandToken, Result<Reply<'_>, Error>) + '_ {
        |token, result| outcomes.push((token, result.map(|r| r.to_owned())))
    }

    /// `bytes` arrive from `node`; what they answer goes to `outcomes`.
    fn feed(
        cluster: &mut Cluster,
        node: usize,
        bytes: &[u8],
        now: Instant,
        outcomes: &mut Outcomes,
    ) {
        cluster.on_received(node, bytes, now, &mut collect(outcomes));
    }

    /// A cluster connected to its seed, with the layout `0-16383 on seed`.
    fn ready_cluster(now: Instant) -> Cluster {
        let mut cluster = Cluster::new(ClusterConfig::new(vec![seed()]), now);
        let mut actions = Vec::new();
        cluster.actions(now, &mut actions);
        assert_eq!(
            actions,
            [Action::Connect {
                node: 0,
                address: seed(),
                generation: 1
            }]
        );
        let mut outcomes = Outcomes::new();
        cluster.on_connected(0, now);
        assert_eq!(
            cluster.output(0).as_slice(),
            b"*2\r\n$7\r\nCLUSTER\r\n$6\r\nSHARDS\r\n"
        );
        cluster.output(0).clear();
        cluster.on_received(
            0,
            b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
*8\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
            now,
            &mut collect(&mut outcomes),
        );
        assert!(cluster.is_ready());
        assert!(outcomes.is_empty());
        cluster
    }

    #[test]
    fn pipelines_and_matches_replies_in_order() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::set(b"a", b"1"), now);
        cluster.submit(2, Command::get(b"a"), now);
        assert_eq!(
            cluster.output(0).as_slice(),
            b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
        );
        let mut outcomes = Outcomes::new();
        // Replies split across reads.
        feed(&mut cluster, 0, b"+OK\r\n$1\r", now, &mut outcomes);
        feed(&mut cluster, 0, b"\n1\r\n", now, &mut outcomes);
        assert_eq!(
            outcomes,
            [
                (1, Ok(resp::OwnedReply::Status(b"OK".to_vec()))),
                (2, Ok(resp::OwnedReply::Bulk(b"1".to_vec())))
            ]
        );
        assert_eq!(cluster.in_flight(), 0);
    }

    #[test]
    fn moved_updates_the_slot_and_follows() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::get(b"foo"), now);
        cluster.output(0).clear();
        let mut outcomes = Outcomes::new();
        feed(
            &mut cluster,
            0,
            b"-MOVED 12182 127.0.0.1:7001\r\n",
            now,
            &mut outcomes,
        );
        assert!(outcomes.is_empty());
        // A new node, connected on demand; the command waits for it.
        let mut actions = Vec::new();
        cluster.actions(now, &mut actions);
        assert_eq!(
            actions,
            [Action::Connect {
                node: 1,
                address: "127.0.0.1:7001".parse().unwrap(),
                generation: 1
            }]
        );
        cluster.on_connected(1, now);
        assert!(
            cluster
                .output(1)
                .ends_with(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n")
        );
        assert_eq!(cluster.owners[12182], 1);
    }

    #[test]
    fn ask_sends_asking_once_and_keeps_the_slot() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::get(b"foo"), now);
        cluster.output(0).clear();
        let mut outcomes = Outcomes::new();
        feed(
            &mut cluster,
            0,
            b"-ASK 12182 127.0.0.1:7001\r\n",
            now,
            &mut outcomes,
        );
        cluster.actions(now, &mut Vec::new());
        cluster.on_connected(1, now);
        let out = cluster.output(1).clone();
        assert!(
            out.ends_with(b"*1\r\n$6\r\nASKING\r\n*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(cluster.owners[12182], 0);
    }

    #[test]
    fn redirects_are_capped() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(7, Command::get(b"foo"), now);
        let mut outcomes = Outcomes::new();
        for _ in 0..=cluster.config.max_redirects {
            feed(
                &mut cluster,
                0,
                b"-MOVED 12182 127.0.0.1:7000\r\n",
                now,
                &mut outcomes,
            );
        }
        assert_eq!(outcomes, [(7, Err(Error::TooManyRedirects))]);
    }

    #[test]
    fn tryagain_retries_after_a_backoff_until_the_deadline() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(3, Command::get(b"foo"), now);
        cluster.output(0).clear();
        let mut outcomes = Outcomes::new();
        feed(
            &mut cluster,
            0,
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            now,
            &mut outcomes,
        );
        assert!(cluster.output(0).is_empty());
        let later = now + Duration::from_millis(20);
        cluster.tick(later, &mut collect(&mut outcomes), &mut Vec::new());
        assert!(
            cluster
                .output(0)
                .ends_with(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n")
        );
        feed(&mut cluster, 0, b"$1\r\nx\r\n", later, &mut outcomes);
        assert_eq!(outcomes, [(3, Ok(resp::OwnedReply::Bulk(b"x".to_vec())))]);
    }

    #[test]
    fn a_lost_connection_fails_what_was_sent_and_reconnects() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::get(b"a"), now);
        let mut outcomes = Outcomes::new();
        cluster.on_closed(0, "connection reset", now, &mut collect(&mut outcomes));
        assert_eq!(
            outcomes,
            [(1, Err(Error::ConnectionLost("connection reset".into())))]
        );
        assert!(outcomes[0].1.as_ref().unwrap_err().is_retryable());
        // A command issued while down waits for the reconnect.
        cluster.submit(2, Command::get(b"a"), now);
        let mut actions = Vec::new();
        cluster.actions(now, &mut actions);
        assert!(actions.is_empty(), "back-off first");
        cluster.actions(now + Duration::from_millis(20), &mut actions);
        assert_eq!(actions.len(), 1);
        cluster.on_connected(0, now);
        assert!(
            cluster
                .output(0)
                .ends_with(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
        );
    }

    #[test]
    fn commands_time_out_and_late_replies_are_dropped() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::get(b"a"), now);
        let mut outcomes = Outcomes::new();
        let mut actions = Vec::new();
        let late = now + Duration::from_secs(2);
        cluster.tick(late, &mut collect(&mut outcomes), &mut actions);
        assert_eq!(outcomes, [(1, Err(Error::Timeout))]);
        // The connection never answered: it is closed.
        assert_eq!(actions, [Action::Close { node: 0 }]);
    }

    #[test]
    fn garbage_closes_the_connection_cleanly() {
        let now = Instant::now();
        let mut cluster = ready_cluster(now);
        cluster.submit(1, Command::get(b"a"), now);
        let mut outcomes = Outcomes::new();
        feed(&mut cluster, 0, b"!!!garbage\r\n", now, &mut outcomes);
        let mut actions = Vec::new();
        cluster.actions(now, &mut actions);
        assert_eq!(actions, [Action::Close { node: 0 }]);
        cluster.on_closed(0, "closed", now, &mut collect(&mut outcomes));
        let [(1, Err(Error::ConnectionLost(why)))] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert!(why.contains("malformed"), "{why}");
    }

    #[test]
    fn a_refused_password_is_a_startup_error() {
        let now = Instant::now();
        let mut config = ClusterConfig::new(vec![seed()]);
        config.password = Some("wrong".into());
        let mut cluster = Cluster::new(config, now);
        cluster.actions(now, &mut Vec::new());
        cluster.on_connected(0, now);
        assert_eq!(
            cluster.output(0).as_slice(),
            b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n"
        );
        let mut outcomes = Outcomes::new();
        feed(
            &mut cluster,
            0,
            b"-WRONGPASS invalid username-password pair\r\n",
            now,
            &mut outcomes,
        );
        assert!(matches!(cluster.startup_error(), Some(Error::Auth(_))));
        assert!(!format!("{:?}", cluster.config()).contains("wrong"));
    }

    #[test]
    fn a_cluster_without_shards_is_asked_for_slots() {
        let now = Instant::now();
        let mut cluster = Cluster::new(ClusterConfig::new(vec![seed()]), now);
        cluster.actions(now, &mut Vec::new());
        cluster.on_connected(0, now);
        cluster.output(0).clear();
        let mut outcomes = Outcomes::new();
        feed(
            &mut cluster,
            0,
            b"-ERR unknown subcommand 'SHARDS'\r\n",
            now,
            &mut outcomes,
        );
        cluster.tick(now, &mut collect(&mut outcomes), &mut Vec::new());
        assert_eq!(
            cluster.output(0).as_slice(),
            b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n"
        );
        feed(
            &mut cluster,
            0,
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
            now,
            &mut outcomes,
        );
        assert!(cluster.is_ready());
    }

    #[test]
    fn reads_go_to_a_readonly_replica_when_asked() {
        let now = Instant::now();
        let mut config = ClusterConfig::new(vec![seed()]);
        config.read_from_replicas = true;
        let mut cluster = Cluster::new(config, now);
        cluster.actions(now, &mut Vec::new());
        cluster.on_connected(0, now);
        cluster.output(0).clear();
        let mut outcomes = Outcomes::new();
        cluster.on_received(
            0,
            b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*2\r\n\
*8\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n\
*8\r\n$4\r\nport\r\n:7003\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
            now,
            &mut collect(&mut outcomes),
        );
        cluster.submit(1, Command::get(b"k"), now);
        cluster.submit(2, Command::set(b"k", b"v"), now);
        // The write went to the master; the read waits for the replica.
        assert!(
            cluster
                .output(0)
                .ends_with(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        );
        let mut actions = Vec::new();
        cluster.actions(now, &mut actions);
        assert!(actions.contains(&Action::Connect {
            node: 1,
            address: "127.0.0.1:7003".parse().unwrap(),
            generation: 1
        }));
        cluster.on_connected(1, now);
        assert_eq!(cluster.output(1).as_slice(), b"*1\r\n$8\r\nREADONLY\r\n");
        cluster.output(1).clear();
        feed(&mut cluster, 1, b"+OK\r\n", now, &mut outcomes);
        assert_eq!(
            cluster.output(1).as_slice(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn redirects_parse() {
        assert_eq!(
            parse_redirect(b"MOVED 3999 127.0.0.1:6381"),
            Some((Slot::new(3999).unwrap(), "127.0.0.1:6381".parse().unwrap()))
        );
        assert_eq!(
            parse_redirect(b"ASK 1 ::1:6381").map(|r| r.1),
            Some("[::1]:6381".parse().unwrap())
        );
        assert_eq!(parse_redirect(b"MOVED 99999 127.0.0.1:1"), None);
        assert_eq!(parse_redirect(b"MOVED x"), None);
    }
}
