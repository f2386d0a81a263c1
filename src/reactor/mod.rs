//! The per-core reactor: one thread, one io_uring ring, one listener, its
//! connections. Nothing here is shared with another core.
//!
//! One turn of the loop: submit what was queued and wait for a completion or
//! the next deadline; handle every completion (received bytes go straight from
//! the provided buffer into the connection's HTTP state and the buffer goes
//! back); expire timers; then settle each connection touched this turn: start
//! its send (all responses written this turn go out in one send), arm or
//! cancel its receive, pick its timer, close it when it is done.

pub mod buffers;
mod connection;
pub mod ring;
pub mod timers;
pub mod token;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::Socket;

use crate::api::{Answer, Api, ApiShared, Next, Outcome, WritePath};
use crate::http::{DateHeader, HttpConnection, HttpEnv, Limits, Phase};
use crate::metrics::{CoreMetrics, PUBLISH_INTERVAL, TimeoutKind};
use crate::redis::cluster::{Cluster, CommandToken, Config as RedisConfig};
use crate::redis::command::Command;
use crate::redis::links::Links;
use crate::redis::slot::Slot as HashSlot;
use crate::writeback::lookup::{LookupClient, Miss};

use buffers::ProvidedBuffers;
use connection::{Connection, Life, Slab};
use ring::SetupFlags;
use timers::{TimerKind, Timers};
use token::{OpKind, Token};

/// The buffer group id of every executor's provided buffers (one per ring).
const BUFFER_GROUP: u16 = 0;

/// How long to wait before re-arming an accept that failed for lack of
/// file descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// At most one accept-failure warning per this interval.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// What an executor is configured with.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Submission queue entries.
    pub ring_entries: u32,
    /// Provided receive buffers (a power of two).
    pub recv_buffers: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_bytes: u32,
    /// Connections this executor holds at most; more are closed on accept.
    pub max_connections: usize,
    /// Slots in the ring's table of direct descriptors, where accepted
    /// sockets live: `max_connections` and room for rejected ones.
    pub direct_slots: usize,
    /// See [`TimerKind::Header`].
    pub header_timeout: Duration,
    /// See [`TimerKind::Idle`].
    pub idle_timeout: Duration,
    /// See [`TimerKind::Linger`].
    pub close_linger: Duration,
    /// How long a drain may take before the remaining connections are closed.
    pub shutdown_timeout: Duration,
    /// HTTP limits.
    pub limits: Limits,
    /// The Redis Cluster writes go to, if any.
    pub redis: Option<RedisConfig>,
    /// Redis commands this executor may have in flight; a request that
    /// would need another is answered 503 at once, so that overload sheds
    /// at the door instead of queueing in Redis.
    pub max_redis_in_flight: usize,
}

/// Direct-descriptor slots beyond `max_connections`: room for connections
/// accepted in one burst and closed at once for being over the limit.
pub const REJECT_SLOTS: usize = 1024;

/// The kernel's largest table of direct descriptors.
const MAX_DIRECT_SLOTS: usize = 1 << 20;

impl ExecutorConfig {
    /// The direct-descriptor table `max_connections` asks for.
    pub fn direct_slots_for(max_connections: usize) -> usize {
        max_connections
            .saturating_add(REJECT_SLOTS)
            .min(MAX_DIRECT_SLOTS)
    }

    /// The kernel refuses a direct-descriptor table larger than the
    /// open-files limit: fit the table under `open_files`, and
    /// `max_connections` into the table. Returns whether
    /// `max_connections` was cut.
    pub fn fit_open_files_limit(&mut self, open_files: u64) -> bool {
        let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
        self.direct_slots = Self::direct_slots_for(self.max_connections).min(open_files);
        let room = self.direct_slots - (self.direct_slots / 4).min(REJECT_SLOTS);
        let cut = self.max_connections > room;
        self.max_connections = self.max_connections.min(room);
        cut
    }
}

/// The completion fields the loop uses.
#[derive(Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// One core's server.
pub struct Executor {
    // Field order is drop order: the ring goes first, so the kernel has
    // stopped using the buffers and the wake-up word before they are freed.
    ring: IoUring,
    buffers: ProvidedBuffers,
    wake_word: Box<u64>,
    wake: OwnedFd,
    /// Where read-through answers come from, and the word its eventfd
    /// reads into.
    lookups: Option<LookupClient>,
    lookup_word: Box<u64>,
    listener: Option<Socket>,
    accept_armed: bool,
    accept_retry_at: Option<Instant>,
    last_accept_warning: Option<Instant>,
    conns: Slab,
    timers: Timers,
    /// Connections to settle at the end of this turn.
    touched: Vec<u32>,
    completions: Vec<Completion>,
    metrics: CoreMetrics,
    responder: Responder,
    /// See [`ExecutorConfig::max_connections`].
    max_connections: usize,
    /// See [`ExecutorConfig::shutdown_timeout`].
    shutdown_timeout: Duration,
    /// The time this turn started; every timestamp in a turn uses it.
    now: Instant,
    /// When the wall clock next enters a new second and `Date` must change.
    date_due: Instant,
    next_publish: Instant,
    /// Set once a drain has begun: when the remaining connections are cut.
    drain_deadline: Option<Instant>,
    /// This core's Redis Cluster client, its sockets on this ring.
    redis: Option<RedisSide>,
    /// Replies (or failures) for deferred answers, to deliver this turn.
    arrived: Vec<(CommandToken, Outcome)>,
    /// The bytes of the bulk replies in `arrived`.
    arrived_bytes: Vec<u8>,
}

/// A Redis Cluster client driven from an executor's ring.
struct RedisSide {
    cluster: Cluster,
    links: Links,
    /// See [`ExecutorConfig::max_redis_in_flight`].
    max_in_flight: usize,
    /// With `ack_replicas`: writes Redis took this turn, waiting for their
    /// partition's `WAIT` to be sent, as (token, partition).
    confirming: Vec<(CommandToken, u16)>,
    /// `WAIT`s out, by group: the writes each one confirms. One `WAIT` after
    /// a partition's writes of a turn covers them all (it counts replicas
    /// that have everything sent before it on the connection).
    wait_groups: HashMap<u32, Vec<CommandToken>>,
    next_group: u32,
}

/// The slot of a [`RedisSide::wait_groups`] group's token; the group is in
/// the upper half.
const WAIT_GROUP_SLOT: u32 = u32::MAX - 1;

/// The token of commands no request waits for (read-through fills): no
/// connection has this slot, so their replies are dropped.
const UNWAITED: CommandToken = u32::MAX as CommandToken;

/// The command token of a connection's deferred answer: the answer's
/// number, the low 16 bits of the slot's generation, and the slot. (A slot
/// reused 65,536 times while one command is out would be mistaken; commands
/// time out long before.)
fn command_token(slot: u32, generation: u32, number: u16) -> CommandToken {
    u64::from(number) << 48 | u64::from(generation & 0xffff) << 32 | u64::from(slot)
}

/// [`command_token`]'s parts: slot, generation's low 16 bits, number.
fn token_parts(token: CommandToken) -> (u32, u32, u16) {
    (
        token as u32,
        (token >> 32) as u32 & 0xffff,
        (token >> 48) as u16,
    )
}

impl Executor {
    /// Set up the ring and buffers. Call on the executor's own (pinned)
    /// thread: the ring accepts submissions from its creator only.
    pub fn new(
        config: ExecutorConfig,
        listener: Socket,
        wake: OwnedFd,
        lookups: Option<LookupClient>,
        shared: Arc<ApiShared>,
        index: usize,
        cpu: usize,
    ) -> io::Result<(Self, SetupFlags)> {
        let (ring, flags) = ring::build(config.ring_entries)?;
        let buffers =
            ProvidedBuffers::new(config.recv_buffers, config.recv_buffer_bytes, BUFFER_GROUP)?;
        buffers.register(&ring.submitter())?;
        ring.submitter()
            .register_files_sparse(config.direct_slots as u32)?;
        let now = Instant::now();
        let executor = Executor {
            ring,
            buffers,
            wake_word: Box::new(0),
            wake,
            lookups,
            lookup_word: Box::new(0),
            listener: Some(listener),
            accept_armed: false,
            accept_retry_at: None,
            last_accept_warning: None,
            conns: Slab::default(),
            timers: Timers::new(
                config.header_timeout,
                config.idle_timeout,
                config.close_linger,
            ),
            touched: Vec::new(),
            completions: Vec::new(),
            metrics: CoreMetrics::new(cpu),
            responder: Responder {
                limits: config.limits,
                date: DateHeader::new(),
                shared,
                index,
                outgoing: Vec::new(),
            },
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
            now,
            date_due: now,
            next_publish: now,
            drain_deadline: None,
            redis: config.redis.map(|redis| RedisSide {
                cluster: Cluster::new(redis, now),
                links: Links::new(),
                max_in_flight: config.max_redis_in_flight,
                confirming: Vec::new(),
                wait_groups: HashMap::new(),
                next_group: 0,
            }),
            arrived: Vec::new(),
            arrived_bytes: Vec::new(),
        };
        Ok((executor, flags))
    }

    /// Serve until a drain, signalled through the wake-up eventfd, finishes.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        self.arm_lookups();
        while !self.finished() {
            self.enter()?;
            self.now = Instant::now();
            if self.now >= self.date_due {
                self.refresh_date();
            }
            self.reap();
            self.buffers.publish();
            self.expire_timers();
            self.redis_settle();
            self.settle_touched();
            self.redis_prepare();
            self.retry_accept();
            if self.now >= self.next_publish {
                self.publish_metrics();
                self.next_publish = self.now + PUBLISH_INTERVAL;
            }
        }
        self.publish_metrics();
        Ok(())
    }

    /// Reformat `Date`; read the wall clock again when its second ends,
    /// not on every turn.
    fn refresh_date(&mut self) {
        let wall = SystemTime::now();
        self.responder.date.refresh(wall);
        let into_second = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.date_due = self.now + Duration::from_nanos(u64::from(1_000_000_000 - into_second));
    }

    fn publish_metrics(&self) {
        let shared = &self.responder.shared;
        shared.registry.publish(self.responder.index, &self.metrics);
    }

    fn finished(&self) -> bool {
        self.drain_deadline.is_some() && self.conns.len() == 0 && !self.accept_armed
    }

    /// Submit everything queued; wait for one completion or the next deadline.
    fn enter(&mut self) -> io::Result<()> {
        let mut wake_at = self.next_publish;
        if let Some(side) = &self.redis {
            wake_at = wake_at.min(side.cluster.next_deadline(self.now));
        }
        for deadline in [
            self.timers.next_deadline(),
            self.accept_retry_at,
            self.drain_deadline,
        ]
        .into_iter()
        .flatten()
        {
            wake_at = wake_at.min(deadline);
        }
        self.metrics.ring_enters += 1;
        ring::submit_and_wait(&self.ring, wake_at)
    }

    fn reap(&mut self) {
        self.completions.clear();
        self.completions
            .extend(self.ring.completion().map(|cqe| Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            }));
        self.metrics.ring_completions += self.completions.len() as u64;
        for i in 0..self.completions.len() {
            let completion = self.completions[i];
            let Some(token) = Token::decode(completion.user_data) else {
                continue;
            };
            match token.kind {
                OpKind::Accept => self.on_accept(completion),
                OpKind::Recv => self.on_recv(token, completion),
                OpKind::Send => self.on_send(token, completion),
                OpKind::Wake => self.begin_drain(),
                OpKind::Lookup => self.on_lookups(),
                OpKind::Connect => {}
                OpKind::RedisConnect | OpKind::RedisRecv | OpKind::RedisSend => {
                    if let Some(side) = &mut self.redis {
                        let (arrived, bytes) = (&mut self.arrived, &mut self.arrived_bytes);
                        side.links.complete(
                            &mut side.cluster,
                            token,
                            completion.result,
                            self.now,
                            &mut |t, reply| arrived.push((t, Outcome::keep(reply, bytes))),
                        );
                    }
                }
                OpKind::Cancel | OpKind::Teardown => {}
            }
        }
    }

    fn on_accept(&mut self, completion: Completion) {
        if !cqueue::more(completion.flags) {
            self.accept_armed = false;
            if self.drain_deadline.is_some() {
                self.listener = None;
            }
        }
        if completion.result < 0 {
            self.accept_failed(-completion.result);
            return;
        }
        // A successful accept's result is the new socket's direct descriptor.
        let socket = completion.result as u32;
        if self.conns.len() >= self.max_connections {
            self.metrics.connections_rejected += 1;
            self.close_socket(socket);
            return;
        }
        let mut http = HttpConnection::new();
        if self.drain_deadline.is_some() {
            http.start_drain();
        }
        let (slot, _) = self.conns.insert(Connection::new(socket, http));
        self.metrics.connections_accepted += 1;
        self.metrics.connections_open += 1;
        self.timers.arm(slot, TimerKind::Header, self.now);
        self.touch(slot);
    }

    fn accept_failed(&mut self, errno: i32) {
        match errno {
            libc::ECANCELED => {}
            // The direct-descriptor table filled with connections over
            // max_connections; their closes go in with the next accept.
            libc::ENFILE if self.conns.len() >= self.max_connections => {
                self.metrics.connections_rejected += 1;
                self.accept_retry_at = Some(self.now);
            }
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                self.accept_retry_at = Some(self.now + ACCEPT_RETRY);
                let quiet = self
                    .last_accept_warning
                    .is_some_and(|at| self.now < at + ACCEPT_WARNING_INTERVAL);
                if !quiet {
                    self.last_accept_warning = Some(self.now);
                    tracing::warn!(
                        core = self.metrics.core,
                        error = %io::Error::from_raw_os_error(errno),
                        "accept failed; retrying (the system is out of open files or memory)"
                    );
                }
            }
            _ => tracing::debug!(error = %io::Error::from_raw_os_error(errno), "accept failed"),
        }
    }

    fn on_recv(&mut self, token: Token, completion: Completion) {
        let buffer = cqueue::buffer_select(completion.flags);
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            if let Some(bid) = buffer {
                self.buffers.recycle(bid);
            }
            return;
        };
        if !cqueue::more(completion.flags) {
            conn.recv_armed = false;
            conn.recv_cancelled = false;
        }
        match completion.result {
            n if n > 0 => {
                let bid = buffer.expect("a receive that returned data names its buffer");
                let bytes = self.buffers.get(bid, n as usize);
                self.metrics.bytes_received += n as u64;
                if conn.life == Life::Open && !conn.read_closed {
                    let written = self.responder.answer(
                        conn,
                        &mut self.metrics,
                        self.now,
                        |http, api, out, env| http.receive(bytes, api, out, env),
                    );
                    if written > 0 {
                        // A request was answered: the next one gets a fresh header deadline.
                        self.timers.disarm(token.slot);
                    }
                }
                self.buffers.recycle(bid);
            }
            0 => conn.read_closed = true,
            n if n == -libc::ENOBUFS => self.metrics.recv_buffers_exhausted += 1,
            n if n == -libc::ECANCELED => {}
            _ => conn.life = Life::Closing,
        }
        self.touch(token.slot);
    }

    fn on_send(&mut self, token: Token, completion: Completion) {
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            return;
        };
        conn.send_in_flight = false;
        conn.send_cancelled = false;
        if completion.result <= 0 {
            conn.life = Life::Closing;
            self.touch(token.slot);
            return;
        }
        self.metrics.bytes_sent += completion.result as u64;
        conn.sent += completion.result as usize;
        if conn.sent == conn.sending.len() {
            let (responses, since) = conn.finish_batch();
            conn.http.responses_sent(responses);
            self.metrics.in_flight -= responses as u64;
            if let (Some(since), true) = (since, responses > 0) {
                self.metrics
                    .duration
                    .observe(self.now.saturating_duration_since(since), responses as u64);
            }
            if conn.life == Life::Open {
                // The pipeline has room again: answer requests that waited for it.
                self.responder
                    .answer(conn, &mut self.metrics, self.now, |http, api, out, env| {
                        http.resume(api, out, env)
                    });
            }
        }
        self.touch(token.slot);
    }

    /// Redis completions handled: re-arm receives, finish closes, and
    /// deliver the answers that arrived.
    fn redis_settle(&mut self) {
        if let Some(side) = &mut self.redis {
            let (arrived, bytes) = (&mut self.arrived, &mut self.arrived_bytes);
            side.links.settle_all(
                &mut self.ring,
                &mut side.cluster,
                self.now,
                &mut |t, reply| arrived.push((t, Outcome::keep(reply, bytes))),
            );
        }
        self.deliver_arrived();
    }

    /// Before waiting: Redis timeouts and retries, connects, and every
    /// command issued this turn sent, one send per node.
    fn redis_prepare(&mut self) {
        // Answers delivered here can issue commands (the next pipelined
        // request, a WAIT): send those too before the ring waits.
        loop {
            if let Some(side) = &mut self.redis {
                let (arrived, bytes) = (&mut self.arrived, &mut self.arrived_bytes);
                side.links.prepare(
                    &mut self.ring,
                    &mut side.cluster,
                    self.now,
                    &mut |t, reply| arrived.push((t, Outcome::keep(reply, bytes))),
                );
            }
            if self.arrived.is_empty() {
                return;
            }
            self.deliver_arrived();
            self.settle_touched();
        }
    }

    /// Take each deferred answer whose reply (or failure) arrived one step
    /// on ([`Answer::next`]): answer it, or send what it waits for next;
    /// and go on with the requests behind the answers written.
    fn deliver_arrived(&mut self) {
        if self.arrived.is_empty() {
            return;
        }
        let mut arrived = std::mem::take(&mut self.arrived);
        let bytes = std::mem::take(&mut self.arrived_bytes);
        if let Some(side) = &mut self.redis
            && !side.wait_groups.is_empty()
        {
            expand_wait_groups(&mut arrived, &mut side.wait_groups);
        }
        let shared = Arc::clone(&self.responder.shared);
        for (token, outcome) in arrived.drain(..) {
            let (slot, generation, number) = token_parts(token);
            if self.conns.generation(slot) & 0xffff != generation {
                continue;
            }
            let Some(conn) = self.conns.slot_mut(slot) else {
                continue;
            };
            let Some(at) = conn.awaiting.iter().position(|(n, _)| *n == number) else {
                continue;
            };
            let (_, answer) = conn.awaiting.swap_remove(at);
            // Every deferred answer came through the write path, over Redis.
            let (Some(side), Some(writes)) = (&mut self.redis, &shared.writes) else {
                continue;
            };
            let (answer, outcome) =
                match answer.next(outcome, &bytes, writes, self.lookups.is_some()) {
                    Next::Redis(command, answer) => {
                        side.cluster.submit(token, command, self.now);
                        conn.awaiting.push((number, answer));
                        continue;
                    }
                    Next::Lookup(key, answer) => {
                        let miss = Miss {
                            executor: self.responder.index,
                            token,
                            key,
                        };
                        if self.lookups.as_ref().is_some_and(|l| l.ask(miss)) {
                            conn.awaiting.push((number, answer));
                            continue;
                        }
                        let why = "too many read-through lookups waiting (max_pending_lookups)";
                        (answer, Outcome::Failed(why.into()))
                    }
                    Next::RespondAndSend(answer, outcome, command) => {
                        side.cluster.submit(UNWAITED, command, self.now);
                        (answer, outcome)
                    }
                    Next::Respond(answer, outcome) => (answer, outcome),
                };
            // A write Redis took, which replicas must confirm: WAIT on the
            // node that owns its partition, then answer.
            let (answer, outcome) = match (answer.write_partition(), outcome) {
                (Some(partition), Outcome::Bulk(range)) if writes.ack_replicas > 0 => {
                    // A master that lost its replicas while the script ran
                    // (one just promoted) cannot confirm: say so now rather
                    // than hold its connection for ack_timeout_ms.
                    let refused = unconfirmable(&mut side.cluster, writes, &answer, self.now);
                    let replicated = Answer::Replicated {
                        then: Box::new(answer),
                        version: bytes[range].to_vec(),
                        replicas: writes.ack_replicas,
                    };
                    match refused {
                        Some(why) => (replicated, Outcome::Failed(why)),
                        None => {
                            side.confirming.push((token, partition));
                            conn.awaiting.push((number, replicated));
                            continue;
                        }
                    }
                }
                (_, outcome) => (answer, outcome),
            };
            if conn.life == Life::Open {
                let route = answer.route();
                let mut status = None;
                self.responder
                    .answer(conn, &mut self.metrics, self.now, |http, api, out, env| {
                        http.complete(
                            number,
                            |response| {
                                let sent = answer.respond(outcome, &bytes, response);
                                status = Some(sent.status());
                                sent
                            },
                            api,
                            out,
                            env,
                        )
                    });
                if let Some(status) = status {
                    self.metrics.record_response(route, status);
                }
            }
            self.touch(slot);
        }
        self.send_waits();
        // Keep the buffers' capacity for the next turn (and anything queued meanwhile).
        arrived.append(&mut self.arrived);
        self.arrived = arrived;
        if self.arrived.is_empty() {
            self.arrived_bytes = bytes;
            self.arrived_bytes.clear();
        }
    }

    /// One `WAIT` per partition for the writes Redis took this turn.
    fn send_waits(&mut self) {
        let (Some(side), Some(writes)) = (&mut self.redis, &self.responder.shared.writes) else {
            return;
        };
        if side.confirming.is_empty() {
            return;
        }
        side.confirming
            .sort_unstable_by_key(|&(_, partition)| partition);
        let mut confirming = std::mem::take(&mut side.confirming);
        for group in confirming.chunk_by(|a, b| a.1 == b.1) {
            let id = side.next_group;
            side.next_group = side.next_group.wrapping_add(1);
            side.wait_groups
                .insert(id, group.iter().map(|&(token, _)| token).collect());
            let wait = Command::wait(
                writes.queue.stream(group[0].1),
                writes.ack_replicas,
                writes.ack_timeout,
            );
            let token = u64::from(id) << 32 | u64::from(WAIT_GROUP_SLOT);
            side.cluster.submit(token, wait, self.now);
        }
        confirming.clear();
        side.confirming = confirming;
    }

    fn touch(&mut self, slot: u32) {
        if let Some(conn) = self.conns.slot_mut(slot)
            && !conn.touched
        {
            conn.touched = true;
            self.touched.push(slot);
        }
    }

    fn settle_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for &slot in &touched {
            self.settle(slot);
        }
        touched.clear();
        self.touched = touched;
    }

    /// Bring one connection's operations in line with its state.
    fn settle(&mut self, slot: u32) {
        let generation = self.conns.generation(slot);
        let Some(conn) = self.conns.slot_mut(slot) else {
            return;
        };
        conn.touched = false;
        for (number, outgoing) in conn.issued.drain(..) {
            let token = command_token(slot, generation, number);
            let refused = match &mut self.redis {
                // The write routes answer 503 themselves without Redis.
                None => Some("no Redis Cluster".to_string()),
                Some(side) if side.cluster.in_flight() >= side.max_in_flight => {
                    self.metrics.redis_shed += 1;
                    Some("overloaded: max_redis_in_flight reached".to_string())
                }
                Some(side) => {
                    let refused = self.responder.shared.writes.as_ref().and_then(|writes| {
                        unconfirmable(&mut side.cluster, writes, &outgoing.answer, self.now)
                    });
                    if refused.is_none() {
                        side.cluster.submit(token, outgoing.command, self.now);
                    }
                    refused
                }
            };
            conn.awaiting.push((number, outgoing.answer));
            if let Some(why) = refused {
                self.arrived.push((token, Outcome::Failed(why)));
            }
        }
        let draining = self.drain_deadline.is_some();

        if conn.life == Life::Open && conn.output_drained() {
            if conn.http.is_closing() {
                // The final response is out: no more writes; read until the
                // peer closes so that it sees the response, not a reset.
                let entry = opcode::Shutdown::new(types::Fixed(conn.socket), libc::SHUT_WR)
                    .build()
                    .user_data(Token::global(OpKind::Teardown).encode());
                push(&mut self.ring, &mut self.metrics, &entry);
                conn.life = Life::Lingering;
                self.timers.arm(slot, TimerKind::Linger, self.now);
            } else if conn.read_closed || (draining && conn.http.is_idle()) {
                conn.life = Life::Closing;
            }
        }
        if conn.life == Life::Lingering && conn.read_closed {
            conn.life = Life::Closing;
        }

        let fd = types::Fixed(conn.socket);
        if conn.life != Life::Closing
            && let Some(bytes) = conn.next_send()
        {
            let entry = opcode::Send::new(fd, bytes.as_ptr(), bytes.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(
                    Token {
                        kind: OpKind::Send,
                        slot,
                        generation,
                    }
                    .encode(),
                );
            push(&mut self.ring, &mut self.metrics, &entry);
            conn.send_in_flight = true;
        }

        let want_recv = match conn.life {
            Life::Open => !conn.read_closed && !conn.http.is_paused(&self.responder.limits),
            Life::Lingering => !conn.read_closed,
            Life::Closing => false,
        };
        let recv_token = Token {
            kind: OpKind::Recv,
            slot,
            generation,
        }
        .encode();
        if want_recv && !conn.recv_armed {
            let entry = opcode::RecvMulti::new(fd, self.buffers.group())
                .build()
                .user_data(recv_token);
            push(&mut self.ring, &mut self.metrics, &entry);
            conn.recv_armed = true;
        } else if !want_recv && conn.recv_armed && !conn.recv_cancelled {
            cancel(&mut self.ring, &mut self.metrics, recv_token);
            conn.recv_cancelled = true;
        }
        if conn.life == Life::Closing && conn.send_in_flight && !conn.send_cancelled {
            let send_token = Token {
                kind: OpKind::Send,
                slot,
                generation,
            }
            .encode();
            cancel(&mut self.ring, &mut self.metrics, send_token);
            conn.send_cancelled = true;
        }

        match conn.life {
            Life::Open => {
                let kind = if !conn.output_drained() {
                    TimerKind::Idle
                } else {
                    match conn.http.phase() {
                        Phase::Head => TimerKind::Header,
                        Phase::Idle if conn.fresh => TimerKind::Header,
                        _ => TimerKind::Idle,
                    }
                };
                self.timers.arm(slot, kind, self.now);
            }
            Life::Lingering => {}
            Life::Closing => self.timers.disarm(slot),
        }

        if conn.life == Life::Closing && !conn.recv_armed && !conn.send_in_flight {
            self.release(slot);
        }
    }

    /// Close a connection whose operations have all completed.
    fn release(&mut self, slot: u32) {
        self.timers.disarm(slot);
        if let Some(conn) = self.conns.remove(slot) {
            self.metrics.connections_open -= 1;
            self.metrics.in_flight -= conn.unsent_responses() as u64;
            self.close_socket(conn.socket);
        }
    }

    /// Close a connection's socket and free its direct descriptor. Nothing
    /// refers to the descriptor afterwards, so its completion is not awaited.
    fn close_socket(&mut self, socket: u32) {
        let entry = opcode::Close::new(types::Fixed(socket))
            .build()
            .user_data(Token::global(OpKind::Teardown).encode());
        push(&mut self.ring, &mut self.metrics, &entry);
    }

    fn expire_timers(&mut self) {
        if let Some(deadline) = self.drain_deadline
            && self.now >= deadline
            && self.conns.len() > 0
        {
            tracing::warn!(
                core = self.metrics.core,
                connections = self.conns.len(),
                "shutdown timeout reached; closing the remaining connections"
            );
            let slots: Vec<u32> = self.conns.occupied().collect();
            for slot in slots {
                if let Some(conn) = self.conns.slot_mut(slot) {
                    conn.life = Life::Closing;
                }
                self.touch(slot);
            }
        }
        while let Some((slot, kind)) = self.timers.pop_expired(self.now) {
            let Some(conn) = self.conns.slot_mut(slot) else {
                continue;
            };
            match kind {
                TimerKind::Header => {
                    self.metrics.record_timeout(TimeoutKind::Header);
                    let written = self.responder.answer(
                        conn,
                        &mut self.metrics,
                        self.now,
                        |http, api, out, env| http.time_out(api, out, env),
                    );
                    if written == 0 {
                        conn.life = Life::Closing;
                    }
                }
                TimerKind::Idle => {
                    self.metrics.record_timeout(TimeoutKind::Idle);
                    conn.life = Life::Closing;
                }
                TimerKind::Linger => conn.life = Life::Closing,
            }
            self.touch(slot);
        }
    }

    /// Stop accepting, let every connection finish the request it is on.
    fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.now + self.shutdown_timeout);
        if self.accept_armed {
            cancel(
                &mut self.ring,
                &mut self.metrics,
                Token::global(OpKind::Accept).encode(),
            );
        } else {
            self.listener = None;
        }
        let slots: Vec<u32> = self.conns.occupied().collect();
        for slot in slots {
            if let Some(conn) = self.conns.slot_mut(slot) {
                conn.http.start_drain();
            }
            self.touch(slot);
        }
    }

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        // Accepted sockets go straight into the ring's table of direct
        // descriptors: no file descriptor, and no file reference taken and
        // dropped by every receive and send.
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(Token::global(OpKind::Accept).encode());
        push(&mut self.ring, &mut self.metrics, &entry);
        self.accept_armed = true;
        self.accept_retry_at = None;
    }

    fn retry_accept(&mut self) {
        if !self.accept_armed
            && self.drain_deadline.is_none()
            && self.accept_retry_at.is_none_or(|at| self.now >= at)
        {
            self.arm_accept();
        }
    }

    fn arm_wake(&mut self) {
        let word: *mut u64 = &mut *self.wake_word;
        let entry = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), word.cast(), 8)
            .build()
            .user_data(Token::global(OpKind::Wake).encode());
        push(&mut self.ring, &mut self.metrics, &entry);
    }

    fn arm_lookups(&mut self) {
        let Some(lookups) = &self.lookups else {
            return;
        };
        let word: *mut u64 = &mut *self.lookup_word;
        let entry = opcode::Read::new(types::Fd(lookups.ready_fd().as_raw_fd()), word.cast(), 8)
            .build()
            .user_data(Token::global(OpKind::Lookup).encode());
        push(&mut self.ring, &mut self.metrics, &entry);
    }

    /// Read-through answers are waiting: deliver them like Redis replies.
    fn on_lookups(&mut self) {
        let Some(lookups) = &self.lookups else {
            return;
        };
        for found in lookups.take() {
            let outcome = match found.entry {
                Ok(entry) => {
                    let start = self.arrived_bytes.len();
                    self.arrived_bytes.extend_from_slice(&entry);
                    Outcome::Row {
                        entry: start..self.arrived_bytes.len(),
                        fill: found.fill,
                    }
                }
                Err(why) => Outcome::Failed(why),
            };
            self.arrived.push((found.token, outcome));
        }
        self.arm_lookups();
    }
}

/// What answering requests borrows from the executor besides the connection
/// and the metrics, kept apart so both can be borrowed beside it.
struct Responder {
    limits: Limits,
    date: DateHeader,
    shared: Arc<ApiShared>,
    /// This executor's index among all executors (its metrics slot).
    index: usize,
    /// Commands handlers issued in one step, kept for its capacity.
    outgoing: Vec<crate::api::Outgoing>,
}

impl Responder {
    /// Run one step of `conn`'s HTTP state (`receive`, `resume`, `time_out`)
    /// with the API behind it, and account for the responses it wrote.
    fn answer(
        &mut self,
        conn: &mut Connection,
        metrics: &mut CoreMetrics,
        now: Instant,
        step: impl FnOnce(&mut HttpConnection, &mut Api<'_>, &mut Vec<u8>, &HttpEnv<'_>) -> usize,
    ) -> usize {
        let env = HttpEnv {
            limits: &self.limits,
            date: &self.date,
        };
        let mut api = Api {
            shared: &self.shared,
            executor: self.index,
            metrics,
            outgoing: &mut self.outgoing,
        };
        let first = conn.http.next_deferred();
        let written = step(&mut conn.http, &mut api, &mut conn.out, &env);
        // Each deferred answer issued one command, in request order.
        conn.issued
            .extend(conn.http.deferred_since(first).zip(self.outgoing.drain(..)));
        conn.wrote(written, now);
        metrics.in_flight += written as u64;
        written
    }
}

/// Why a write cannot be confirmed by `ack_replicas` replicas, if the
/// layout says its partition's master has fewer online: it is refused
/// before anything is written.
/// A refusal asks for the layout again when it is older than this, so
/// that a replica joining the master is seen within about a second.
const REPLICA_RECHECK: Duration = Duration::from_secs(1);

fn unconfirmable(
    cluster: &mut Cluster,
    writes: &WritePath,
    answer: &Answer,
    now: Instant,
) -> Option<String> {
    if writes.ack_replicas == 0 {
        return None;
    }
    let partition = answer.write_partition()?;
    let online = cluster.online_replicas(HashSlot::of(writes.queue.stream(partition)))?;
    if online >= writes.ack_replicas as usize {
        return None;
    }
    cluster.refresh_layout_if_older(REPLICA_RECHECK, now);
    Some(format!(
        "the partition's master has {online} online replicas, fewer than ack_replicas ({})",
        writes.ack_replicas
    ))
}

/// Replace each group `WAIT`'s reply in `arrived` with one for each write it
/// confirms.
fn expand_wait_groups(
    arrived: &mut Vec<(CommandToken, Outcome)>,
    groups: &mut HashMap<u32, Vec<CommandToken>>,
) {
    let mut at = 0;
    while at < arrived.len() {
        let token = arrived[at].0;
        if token as u32 != WAIT_GROUP_SLOT {
            at += 1;
            continue;
        }
        let (_, outcome) = arrived.swap_remove(at);
        let members = groups.remove(&((token >> 32) as u32)).unwrap_or_default();
        arrived.extend(members.into_iter().map(|member| (member, outcome.clone())));
    }
}

/// Queue a submission, submitting what is queued first if the queue is full.
fn push(ring: &mut IoUring, metrics: &mut CoreMetrics, entry: &squeue::Entry) {
    // SAFETY: every entry the executor builds points at memory that outlives
    // the operation: a connection's `sending` buffer is not touched, and the
    // connection not freed, while its send is in flight; the wake-up word
    // and the provided buffers live until the ring is dropped (field order
    // of `Executor`).
    metrics.ring_enters += unsafe { ring::push(ring, entry) };
    metrics.ring_submissions += 1;
}

/// Ask the kernel to cancel the operation carrying `user_data`.
fn cancel(ring: &mut IoUring, metrics: &mut CoreMetrics, user_data: u64) {
    let entry = opcode::AsyncCancel::new(user_data)
        .build()
        .user_data(Token::global(OpKind::Cancel).encode());
    push(ring, metrics, &entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_connections: usize) -> ExecutorConfig {
        let mut config = crate::config::ServeConfig::default().executor();
        config.max_connections = max_connections;
        config.direct_slots = ExecutorConfig::direct_slots_for(max_connections);
        config
    }

    #[test]
    fn a_high_open_files_limit_leaves_max_connections_alone() {
        let mut config = config(16_384);
        assert!(!config.fit_open_files_limit(1 << 20));
        assert_eq!(config.max_connections, 16_384);
        assert_eq!(config.direct_slots, 16_384 + REJECT_SLOTS);
    }

    #[test]
    fn a_low_open_files_limit_cuts_max_connections_to_fit_the_table() {
        let mut config = config(16_384);
        assert!(config.fit_open_files_limit(16_000));
        assert_eq!(config.direct_slots, 16_000);
        assert_eq!(config.max_connections, 16_000 - REJECT_SLOTS);

        // A quarter of a small table is kept for rejected connections.
        let mut config = self::config(1_000);
        assert!(config.fit_open_files_limit(64));
        assert_eq!((config.direct_slots, config.max_connections), (64, 48));
    }

    #[test]
    fn the_table_never_exceeds_the_kernels_largest() {
        let mut config = config(usize::MAX / 2);
        config.fit_open_files_limit(u64::MAX);
        assert_eq!(config.direct_slots, MAX_DIRECT_SLOTS);
        assert_eq!(config.max_connections, MAX_DIRECT_SLOTS - REJECT_SLOTS);
    }
}
