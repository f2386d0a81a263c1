//! The executor: one thread, one io_uring ring, one listener, its
//! connections and the tasks their handlers wait on. Nothing here is
//! shared with another core.
//!
//! One turn of the loop: submit what was queued and wait for a completion
//! or the next deadline; handle every completion (received bytes go
//! straight from the provided buffer into the connection's HTTP state and
//! the buffer goes back; a Redis reply or a read-through row completes its
//! operation and wakes the task that waits for it); expire timers and
//! request deadlines; run the tasks that were woken, writing the answers
//! of those that finished; then settle each connection touched this turn:
//! start its send (all responses written this turn go out in one send),
//! arm or cancel its receive, pick its timer, close it when it is done.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::Socket;

use crate::http::{
    DateHeader, HttpConnection, HttpEnv, Limits, Phase, Rejection, Request, Response,
    ResponseWriter, Sent, Service, Status,
};
use crate::metrics::{CoreMetrics, PUBLISH_INTERVAL, RouteId, TimeoutKind};
use crate::redis::cluster::{Cluster, ClusterConfig};
use crate::redis::links::Links;
use crate::ring::buffers::ProvidedBuffers;
use crate::ring::token::{OpKind, Token};
use crate::ring::{self, SetupFlags};
use crate::writeback::lookup::LookupClient;

use super::connection::{Connection, Life, Slab};
use super::io::{Io, IoConfig};
use super::tasks::{BoxFuture, Finished, Job, Tasks};
use super::timers::{TimerKind, Timers};
use super::{Application, Later, Turn};

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
    /// How long a deferred answer may take; then it is dropped and the
    /// request answered 503.
    pub request_timeout: Duration,
    /// HTTP limits.
    pub limits: Limits,
    /// The Redis Cluster handlers' commands go to, if any.
    pub redis: Option<ClusterConfig>,
    /// Redis commands this executor may have in flight; a command beyond
    /// them fails at once, so that overload sheds at the door instead of
    /// queueing in Redis.
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

/// Where a task's answer goes: deferred answer `number` of the connection
/// in `slot` (if it is still the one `generation` names), counted under
/// `route`.
#[derive(Clone, Copy, Debug)]
struct AnswerTo {
    slot: u32,
    generation: u32,
    number: u16,
    route: RouteId,
}

/// One core's server.
pub struct Executor<A: Application> {
    // Field order is drop order: the ring goes first, so the kernel has
    // stopped using the buffers and the wake-up words before they are freed.
    ring: IoUring,
    buffers: ProvidedBuffers,
    wake_word: Box<u64>,
    wake: OwnedFd,
    /// The word the read-through eventfd reads into.
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
    responder: Responder<A>,
    /// What tasks wait for; this core's Redis client state lives in it.
    io: Io,
    /// The Redis client's sockets on this ring.
    links: Links,
    tasks: Tasks<AnswerTo>,
    /// Scratch: detached tasks taken from `io`, tasks that finished.
    spawned: Vec<BoxFuture<()>>,
    finished: Vec<Finished<AnswerTo>>,
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
}

impl<A: Application> Executor<A> {
    /// Set up the ring and buffers. Call on the executor's own (pinned)
    /// thread: the ring accepts submissions from its creator only, and
    /// `app` may hold state that must not leave it. `make_app` gets the
    /// executor's [`Io`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ExecutorConfig,
        listener: Socket,
        wake: OwnedFd,
        lookups: Option<LookupClient>,
        make_app: impl FnOnce(&Io) -> A,
        routes: usize,
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
        let io = Io::new(
            IoConfig {
                max_redis_in_flight: config.max_redis_in_flight,
                executor: index,
            },
            config.redis.map(|redis| Cluster::new(redis, now)),
            lookups,
            now,
        );
        let app = make_app(&io);
        let executor = Executor {
            ring,
            buffers,
            wake_word: Box::new(0),
            wake,
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
            metrics: CoreMetrics::new(cpu, routes),
            responder: Responder {
                limits: config.limits,
                date: DateHeader::new(),
                app,
                index,
                request_timeout: config.request_timeout,
                later: Vec::new(),
            },
            io,
            links: Links::new(),
            tasks: Tasks::default(),
            spawned: Vec::new(),
            finished: Vec::new(),
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
            now,
            date_due: now,
            next_publish: now,
            drain_deadline: None,
        };
        Ok((executor, flags))
    }

    /// Serve until a drain, signalled through the wake-up eventfd, finishes;
    /// every turn's figures are copied into `publish` now and then.
    pub fn run(mut self, publish: &dyn Fn(&CoreMetrics)) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        self.arm_lookups();
        while !self.finished() {
            self.enter()?;
            self.now = Instant::now();
            self.io.start_turn(self.now);
            if self.now >= self.date_due {
                self.refresh_date();
            }
            self.reap();
            self.buffers.publish();
            self.expire_timers();
            self.redis_settle();
            self.run_tasks();
            self.settle_touched();
            self.redis_prepare();
            self.retry_accept();
            if self.now >= self.next_publish {
                self.metrics.redis_shed = self.io.shed();
                publish(&self.metrics);
                self.next_publish = self.now + PUBLISH_INTERVAL;
            }
        }
        self.metrics.redis_shed = self.io.shed();
        publish(&self.metrics);
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

    fn finished(&self) -> bool {
        self.drain_deadline.is_some() && self.conns.len() == 0 && !self.accept_armed
    }

    /// Submit everything queued; wait for one completion or the next deadline.
    fn enter(&mut self) -> io::Result<()> {
        let mut wake_at = self.next_publish;
        for deadline in [
            self.io.next_deadline(self.now),
            self.timers.next_deadline(),
            self.tasks.next_deadline(),
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
                    let (links, now) = (&mut self.links, self.now);
                    self.io.with_cluster(|cluster, mut sink| {
                        links.complete(cluster, token, completion.result, now, &mut sink)
                    });
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
                    let at = (token.slot, token.generation);
                    let written = self.responder.answer(
                        conn,
                        at,
                        &mut self.metrics,
                        &mut self.tasks,
                        self.now,
                        |http, service, out, env| http.receive(bytes, service, out, env),
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
                let at = (token.slot, token.generation);
                self.responder.answer(
                    conn,
                    at,
                    &mut self.metrics,
                    &mut self.tasks,
                    self.now,
                    |http, service, out, env| http.resume(service, out, env),
                );
            }
        }
        self.touch(token.slot);
    }

    /// Redis completions handled: re-arm receives, finish closes.
    fn redis_settle(&mut self) {
        let (ring, links, now) = (&mut self.ring, &mut self.links, self.now);
        self.io
            .with_cluster(|cluster, mut sink| links.settle_all(ring, cluster, now, &mut sink));
    }

    /// Before waiting: Redis timeouts and retries, connects, and every
    /// command issued this turn sent, one send per node. Tasks those wake
    /// (a timed-out command) run, and what they issue goes out too.
    fn redis_prepare(&mut self) {
        loop {
            let (ring, links, now) = (&mut self.ring, &mut self.links, self.now);
            self.io
                .with_cluster(|cluster, mut sink| links.prepare(ring, cluster, now, &mut sink));
            if !self.tasks.has_ready() {
                return;
            }
            self.run_tasks();
            self.settle_touched();
        }
    }

    /// Poll every task that is ready until none is, then end the turn for
    /// the tasks that wait for that, and run what it woke; write the
    /// answers of the tasks that finished.
    fn run_tasks(&mut self) {
        let mut turn_ended = false;
        loop {
            self.io.take_spawned(&mut self.spawned);
            for future in self.spawned.drain(..) {
                self.tasks.spawn(Job::Detached(future), None);
            }
            if !self.tasks.has_ready() {
                if turn_ended || !self.io.end_turn() {
                    return;
                }
                turn_ended = true;
                continue;
            }
            let finished = &mut self.finished;
            self.tasks.run_ready(|done| finished.push(done));
            let mut finished = std::mem::take(&mut self.finished);
            for done in finished.drain(..) {
                if let Some((to, response)) = done.answer {
                    self.deliver(to, &response);
                }
            }
            self.finished = finished;
        }
    }

    /// Write a task's answer into its connection, and go on with the
    /// requests behind it.
    fn deliver(&mut self, to: AnswerTo, response: &Response) {
        let Some(conn) = self.conns.get_mut(to.slot, to.generation) else {
            return;
        };
        if conn.life == Life::Open {
            let mut status = None;
            self.responder.answer(
                conn,
                (to.slot, to.generation),
                &mut self.metrics,
                &mut self.tasks,
                self.now,
                |http, service, out, env| {
                    http.complete(
                        to.number,
                        |writer| {
                            let sent = writer.send_response(response);
                            status = Some(sent.status());
                            sent
                        },
                        service,
                        out,
                        env,
                    )
                },
            );
            if let Some(status) = status {
                self.metrics.record_response(to.route, status);
            }
        }
        self.touch(to.slot);
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

    /// Close a connection whose operations have all completed. Tasks still
    /// answering it run on; their answers find no connection.
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
        while let Some((_, job)) = self.tasks.pop_expired(self.now) {
            // Dropped: the operations it waited for are abandoned (a write
            // Redis had already taken may still land).
            let Job::Answer(future, to) = job else {
                continue;
            };
            drop(future);
            self.metrics.request_timeouts += 1;
            let timed_out = Response::rejection(Rejection::new(
                Status::ServiceUnavailable,
                "the request did not finish within request_timeout_ms",
            ))
            .header("Retry-After", "1");
            self.deliver(to, &timed_out);
        }
        while let Some((slot, kind)) = self.timers.pop_expired(self.now) {
            let generation = self.conns.generation(slot);
            let Some(conn) = self.conns.slot_mut(slot) else {
                continue;
            };
            match kind {
                TimerKind::Header => {
                    self.metrics.record_timeout(TimeoutKind::Header);
                    let written = self.responder.answer(
                        conn,
                        (slot, generation),
                        &mut self.metrics,
                        &mut self.tasks,
                        self.now,
                        |http, service, out, env| http.time_out(service, out, env),
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
        let Some(fd) = self.io.lookup_ready_fd() else {
            return;
        };
        let word: *mut u64 = &mut *self.lookup_word;
        let entry = opcode::Read::new(types::Fd(fd), word.cast(), 8)
            .build()
            .user_data(Token::global(OpKind::Lookup).encode());
        push(&mut self.ring, &mut self.metrics, &entry);
    }

    /// Read-through answers are waiting: they complete their lookups.
    fn on_lookups(&mut self) {
        self.io.deliver_lookups();
        self.arm_lookups();
    }
}

/// What answering requests borrows from the executor besides the
/// connection, the metrics and the tasks, kept apart so that all can be
/// borrowed beside it.
struct Responder<A> {
    limits: Limits,
    date: DateHeader,
    app: A,
    /// This executor's index among all executors (its metrics slot).
    index: usize,
    /// See [`ExecutorConfig::request_timeout`].
    request_timeout: Duration,
    /// Answers deferred in one step, kept for its capacity.
    later: Vec<Later>,
}

impl<A: Application> Responder<A> {
    /// Run one step of `conn`'s HTTP state (`receive`, `resume`,
    /// `complete`, `time_out`) with the application behind it; start a
    /// task for each answer it deferred, and account for the responses it
    /// wrote.
    fn answer(
        &mut self,
        conn: &mut Connection,
        (slot, generation): (u32, u32),
        metrics: &mut CoreMetrics,
        tasks: &mut Tasks<AnswerTo>,
        now: Instant,
        step: impl FnOnce(&mut HttpConnection, &mut Bridge<'_, A>, &mut Vec<u8>, &HttpEnv<'_>) -> usize,
    ) -> usize {
        let env = HttpEnv {
            limits: &self.limits,
            date: &self.date,
        };
        let mut bridge = Bridge {
            app: &mut self.app,
            metrics,
            later: &mut self.later,
            executor: self.index,
        };
        let first = conn.http.next_deferred();
        let written = step(&mut conn.http, &mut bridge, &mut conn.out, &env);
        let numbers = conn.http.deferred_since(first);
        debug_assert_eq!(
            numbers.len(),
            self.later.len(),
            "one task per deferred answer"
        );
        for (number, later) in numbers.zip(self.later.drain(..)) {
            let to = AnswerTo {
                slot,
                generation,
                number,
                route: later.route,
            };
            tasks.spawn(
                Job::Answer(later.future, to),
                Some(now + self.request_timeout),
            );
        }
        conn.wrote(written, now);
        metrics.in_flight += written as u64;
        written
    }
}

/// The HTTP layer's [`Service`]: the application, with what it may touch,
/// counting each answer written now under its route.
struct Bridge<'a, A> {
    app: &'a mut A,
    metrics: &'a mut CoreMetrics,
    later: &'a mut Vec<Later>,
    executor: usize,
}

impl<A: Application> Service for Bridge<'_, A> {
    fn handle(&mut self, request: &Request<'_>, response: ResponseWriter<'_>) -> Sent {
        let mut turn = Turn {
            metrics: &mut *self.metrics,
            later: &mut *self.later,
            executor: self.executor,
        };
        let (route, sent) = self.app.handle(request, response, &mut turn);
        // A deferred answer is counted when it is written.
        if !sent.is_deferred() {
            self.metrics.record_response(route, sent.status());
        }
        sent
    }

    fn reject(&mut self, rejection: Rejection, response: ResponseWriter<'_>) -> Sent {
        let mut turn = Turn {
            metrics: &mut *self.metrics,
            later: &mut *self.later,
            executor: self.executor,
        };
        let (route, sent) = self.app.reject(rejection, response, &mut turn);
        if !sent.is_deferred() {
            self.metrics.record_response(route, sent.status());
        }
        sent
    }
}

/// Queue a submission, submitting what is queued first if the queue is full.
fn push(ring: &mut IoUring, metrics: &mut CoreMetrics, entry: &squeue::Entry) {
    // SAFETY: every entry the executor builds points at memory that outlives
    // the operation: a connection's `sending` buffer is not touched, and the
    // connection not freed, while its send is in flight; the wake-up words
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
        ExecutorConfig {
            ring_entries: 64,
            recv_buffers: 16,
            recv_buffer_bytes: 4096,
            max_connections,
            direct_slots: ExecutorConfig::direct_slots_for(max_connections),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            close_linger: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            limits: Limits {
                head: crate::http::request::HeadLimits {
                    max_request_line_bytes: 1024,
                    max_header_bytes: 1024,
                    max_headers: 16,
                },
                max_body_bytes: 1024,
                max_pipeline_depth: 16,
            },
            redis: None,
            max_redis_in_flight: 16,
        }
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
