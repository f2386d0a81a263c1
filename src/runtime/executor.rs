//! The executor: one thread, one io_uring ring, its listeners (HTTP, and
//! HTTPS when configured), its connections and the tasks their handlers
//! wait on. Nothing here is shared with another core.
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
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use io_uring::{cqueue, opcode, types};
use socket2::Socket;

use crate::http::{
    DateHeader, HttpConnection, HttpEnv, Limits, Method, Phase, Rejection, Request, Response,
    ResponseWriter, Sent, Service, Status, proxy,
};
use crate::metrics::{CoreMetrics, Elapsed, PUBLISH_INTERVAL, RouteId, ShedCause, TimeoutKind};
use crate::redis::cluster::{Cluster, ClusterConfig};
use crate::redis::links::{self, Links};
use crate::ring::buffers::ProvidedBuffers;
use crate::ring::socket::{Received, RingSocket, SendOutcome};
use crate::ring::token::{Owner, SocketOp, Token};
use crate::ring::{Completion, Ring, SetupFlags};
use crate::tls::RecordLayer;
use crate::tls::server::{Acceptor, Certificates};
use crate::writeback::lookup::LookupClient;

use super::access_log::{AccessLog, Sample};
use super::connection::{Connection, Life, Slab, TlsConn};
use super::door::{Door, Scheme};
use super::io::{Io, IoConfig};
use super::tasks::{Finished, Job, TaskFuture, Tasks};
use super::timers::{TimerKind, Timers};
use super::{Application, Later, Turn};

/// The buffer group id of every executor's provided buffers (one per ring).
const BUFFER_GROUP: u16 = 0;

/// The owner of the executor's operations on its ring; its connections'
/// are [`SocketOp`]s, and these its own.
pub const OWNER: Owner = Owner(1);
const ACCEPT: u8 = SocketOp::FIRST_FREE;
const WAKE: u8 = SocketOp::FIRST_FREE + 1;
const LOOKUP: u8 = SocketOp::FIRST_FREE + 2;
const ACCEPT_TLS: u8 = SocketOp::FIRST_FREE + 3;

/// How long to wait before re-arming an accept that failed for lack of
/// file descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// At most one accept-failure warning per this interval.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// How long the Redis links may take to close when the executor ends.
const LINK_CLOSE_LIMIT: Duration = Duration::from_secs(1);

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
    /// Age past which a connection's next response closes it; `None`: no
    /// limit.
    pub max_connection_age: Option<Duration>,
    /// Every connection starts with a PROXY protocol header (v1 or v2);
    /// one that does not is closed.
    pub proxy_protocol: bool,
    /// Log one request in this many ([`AccessLog`]); 0: none.
    pub access_log_every: u32,
    /// NAPI busy polling on the ring: each wait spins on its sockets' NIC
    /// queues this long before sleeping; 0: off.
    pub napi_busy_poll_us: u32,
    /// HTTP limits.
    pub limits: Limits,
    /// The Redis Cluster handlers' commands go to, if any.
    pub redis: Option<ClusterConfig>,
    /// Redis commands this executor may have in flight; a command beyond
    /// them fails at once, so that overload sheds at the door instead of
    /// queueing in Redis.
    pub max_redis_in_flight: usize,
    /// The HTTPS listener's TLS, when there is one.
    pub tls: Option<ExecutorTls>,
}

/// TLS on the HTTPS listener.
#[derive(Clone)]
pub struct ExecutorTls {
    /// The certificate, shared by every executor and reloaded whole.
    pub certificates: Arc<Certificates>,
    /// See [`TimerKind::Handshake`].
    pub handshake_timeout: Duration,
    /// Records a connection may have sealed and not yet sent; past them it
    /// is not read until they drain.
    pub max_unsent_records: usize,
}

impl std::fmt::Debug for ExecutorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorTls")
            .field("files", self.certificates.files())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_unsent_records", &self.max_unsent_records)
            .finish()
    }
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

/// Where a task's answer goes: deferred answer `number` of the connection
/// in `slot` (if it is still the one `generation` names), counted under
/// `route`.
#[derive(Clone, Copy, Debug)]
struct AnswerTo {
    slot: u32,
    generation: u16,
    number: u16,
    route: RouteId,
    /// When its route deferred it, for the route's latency.
    since: Instant,
}

/// One core's server.
pub struct Executor<A: Application> {
    // Field order is drop order: the ring goes first, so the kernel has
    // stopped using the buffers and the wake-up words before they are freed.
    ring: Ring,
    buffers: ProvidedBuffers,
    wake_word: Box<u64>,
    wake: OwnedFd,
    /// The word the read-through eventfd reads into.
    lookup_word: Box<u64>,
    /// Its listeners: HTTP first, then HTTPS if configured.
    doors: Vec<Door>,
    last_accept_warning: Option<Instant>,
    /// Sessions for the HTTPS listener's connections.
    acceptor: Option<Acceptor>,
    /// Scratch: the plaintext one receive's records carried.
    tls_plain: Vec<u8>,
    /// See [`ExecutorConfig::max_connection_age`].
    max_connection_age: Option<Duration>,
    /// See [`ExecutorConfig::proxy_protocol`].
    proxy_protocol: bool,
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
    spawned: Vec<TaskFuture<()>>,
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
    /// Deferred answers' latencies (those delivered in one turn mostly
    /// started in one).
    elapsed: Elapsed,
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
        tls_listener: Option<Socket>,
        wake: OwnedFd,
        lookups: Option<LookupClient>,
        make_app: impl FnOnce(&Io) -> A,
        routes: Vec<String>,
        index: usize,
        cpu: usize,
    ) -> io::Result<(Self, SetupFlags)> {
        let ring = Ring::new(config.ring_entries)?;
        let flags = ring.flags();
        if config.napi_busy_poll_us > 0 {
            ring.register_napi(config.napi_busy_poll_us)
                .map_err(|why| io::Error::other(format!("napi_busy_poll_us: {why}")))?;
        }
        let buffers =
            ProvidedBuffers::new(config.recv_buffers, config.recv_buffer_bytes, BUFFER_GROUP)?;
        buffers.register(&ring.submitter())?;
        ring.submitter()
            .register_files_sparse(config.direct_slots as u32)?;
        let now = Instant::now();
        let links = match &config.redis {
            None => Links::default(),
            Some(redis) => Links::new(redis).map_err(io::Error::other)?,
        };
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
        let mut doors = vec![Door::new(listener, Scheme::Http, OWNER, ACCEPT)];
        if let Some(socket) = tls_listener {
            doors.push(Door::new(socket, Scheme::Https, OWNER, ACCEPT_TLS));
        }
        let tls = config.tls.as_ref();
        let executor = Executor {
            ring,
            buffers,
            wake_word: Box::new(0),
            wake,
            lookup_word: Box::new(0),
            doors,
            last_accept_warning: None,
            acceptor: tls.map(|tls| Acceptor::new(Arc::clone(&tls.certificates))),
            tls_plain: Vec::new(),
            max_connection_age: config.max_connection_age,
            proxy_protocol: config.proxy_protocol,
            conns: Slab::default(),
            timers: Timers::new(
                config.header_timeout,
                config.idle_timeout,
                config.close_linger,
                // Without TLS no connection waits on a handshake.
                tls.map_or(Duration::ZERO, |tls| tls.handshake_timeout),
            ),
            touched: Vec::new(),
            completions: Vec::new(),
            metrics: CoreMetrics::new(cpu, routes.len()),
            responder: Responder {
                limits: config.limits,
                tls_max_unsent_records: tls.map_or(usize::MAX, |tls| tls.max_unsent_records),
                date: DateHeader::new(),
                app,
                index,
                request_timeout: config.request_timeout,
                later: Vec::new(),
                access_log: AccessLog::new(config.access_log_every, routes, cpu),
                picked: Vec::new(),
                sampled: Vec::new(),
            },
            io,
            links,
            tasks: Tasks::default(),
            spawned: Vec::new(),
            finished: Vec::new(),
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
            now,
            date_due: now,
            next_publish: now,
            drain_deadline: None,
            elapsed: Elapsed::new(now),
        };
        Ok((executor, flags))
    }

    /// Serve until a drain, signalled through the wake-up eventfd, finishes;
    /// every turn's figures are copied into `publish` now and then.
    pub fn run(mut self, publish: &dyn Fn(&CoreMetrics)) -> io::Result<()> {
        for door in &mut self.doors {
            door.arm(&mut self.ring);
        }
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
            let draining = self.drain_deadline.is_some();
            for door in &mut self.doors {
                door.retry(&mut self.ring, self.now, draining);
            }
            if self.now >= self.next_publish {
                self.count_ring_and_io();
                publish(&self.metrics);
                self.next_publish = self.now + PUBLISH_INTERVAL;
            }
        }
        self.close_redis_links()?;
        self.count_ring_and_io();
        publish(&self.metrics);
        Ok(())
    }

    /// Close the Redis links and wait, a bounded time, for the kernel to
    /// end their operations, so that no socket goes with one in flight.
    fn close_redis_links(&mut self) -> io::Result<()> {
        self.links.close_all();
        let limit = Instant::now() + LINK_CLOSE_LIMIT;
        loop {
            self.redis_settle();
            if !self.links.any_open() {
                return Ok(());
            }
            if self.now >= limit {
                tracing::warn!("Redis connections did not close in time");
                return Ok(());
            }
            self.ring.submit_and_wait(limit)?;
            self.now = Instant::now();
            self.reap();
        }
    }

    /// Copy what the ring and `Io` count into the metrics.
    fn count_ring_and_io(&mut self) {
        self.io.copy_figures(&mut self.metrics);
        self.metrics.ring_submissions = self.ring.submissions;
        self.metrics.ring_enters = self.ring.enters;
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
        self.drain_deadline.is_some()
            && self.conns.len() == 0
            && self.doors.iter().all(|door| !door.armed)
    }

    /// Submit everything queued; wait for one completion or the next deadline.
    fn enter(&mut self) -> io::Result<()> {
        let mut wake_at = self.next_publish;
        for deadline in [
            self.io.next_deadline(self.now),
            self.timers.next_deadline(),
            self.tasks.next_deadline(),
            self.drain_deadline,
        ]
        .into_iter()
        .chain(self.doors.iter().map(|door| door.retry_at))
        .flatten()
        {
            wake_at = wake_at.min(deadline);
        }
        self.ring.submit_and_wait(wake_at)
    }

    fn reap(&mut self) {
        self.completions.clear();
        self.ring.completions(&mut self.completions);
        self.metrics.ring_completions += self.completions.len() as u64;
        for i in 0..self.completions.len() {
            let completion = self.completions[i];
            match completion.token.owner {
                OWNER => match completion.token.op {
                    ACCEPT => self.on_accept(0, completion),
                    ACCEPT_TLS => self.on_accept(1, completion),
                    WAKE => self.begin_drain(),
                    LOOKUP => self.on_lookups(),
                    op => match SocketOp::of(op) {
                        Some(SocketOp::Recv) => self.on_recv(completion),
                        Some(SocketOp::Send) => self.on_send(completion),
                        Some(SocketOp::Shutdown) => self.on_shutdown(completion),
                        _ => {}
                    },
                },
                links::OWNER => {
                    let (links, now) = (&mut self.links, self.now);
                    self.io.with_cluster(|cluster, mut sink| {
                        links.complete(
                            cluster,
                            completion.token,
                            completion.result,
                            completion.flags,
                            now,
                            &mut sink,
                        )
                    });
                }
                _ => {}
            }
        }
    }

    fn on_accept(&mut self, door: usize, completion: Completion) {
        if !cqueue::more(completion.flags) {
            self.doors[door].ended(self.drain_deadline.is_some());
        }
        if completion.result < 0 {
            self.accept_failed(door, -completion.result);
            return;
        }
        // A successful accept's result is the new socket's direct descriptor.
        let socket = completion.result as u32;
        if self.conns.len() >= self.max_connections {
            self.io.count_shed(ShedCause::Connections);
            self.close_socket(socket);
            return;
        }
        let mut http = HttpConnection::new();
        if self.drain_deadline.is_some() {
            http.start_drain();
        }
        let mut conn = Connection::new(RingSocket::accepted(socket), http, self.now);
        if self.proxy_protocol {
            conn.proxy_header = Some(Vec::new());
        }
        let mut first_timer = TimerKind::Header;
        if self.doors[door].scheme == Scheme::Https
            && let Some(acceptor) = &mut self.acceptor
        {
            match acceptor.accept() {
                Ok(session) => conn.tls = Some(Box::new(TlsConn::new(session))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS session");
                    self.metrics.tls.errors += 1;
                    self.close_socket(socket);
                    return;
                }
            }
            first_timer = TimerKind::Handshake;
        }
        let (slot, _) = self.conns.insert(conn);
        self.metrics.connections_accepted += 1;
        self.metrics.connections_open += 1;
        self.timers.arm(slot, first_timer, self.now);
        self.touch(slot);
    }

    fn accept_failed(&mut self, door: usize, errno: i32) {
        match errno {
            libc::ECANCELED => {}
            // The direct-descriptor table filled with connections over
            // max_connections; their closes go in with the next accept.
            libc::ENFILE if self.conns.len() >= self.max_connections => {
                self.io.count_shed(ShedCause::Connections);
                self.doors[door].retry_at = Some(self.now);
            }
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                self.doors[door].retry_at = Some(self.now + ACCEPT_RETRY);
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

    fn on_recv(&mut self, completion: Completion) {
        let token = completion.token;
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            if let Some(bid) = cqueue::buffer_select(completion.flags) {
                self.buffers.recycle(bid);
            }
            return;
        };
        let data = match conn.socket.on_receive(completion.result, completion.flags) {
            Received::Provided { id, len } => Some((id, len)),
            Received::Closed => {
                conn.read_closed = true;
                None
            }
            Received::NoBuffers => {
                self.metrics.recv_buffers_exhausted += 1;
                None
            }
            Received::Cancelled => None,
            Received::Bytes(_) | Received::Failed(_) => {
                conn.life = Life::Closing;
                None
            }
        };
        if let Some((bid, n)) = data {
            let mut bytes = self.buffers.get(bid, n);
            self.metrics.bytes_received += n as u64;
            // Bytes after a PROXY header that came in pieces.
            let after_header;
            if conn.proxy_header.is_some()
                && let Some(mut header) = conn.proxy_header.take()
            {
                header.extend_from_slice(bytes);
                bytes = &[];
                match proxy::parse(&header) {
                    Ok(proxy::Header::Incomplete) if header.len() < proxy::MAX_HEADER_BYTES => {
                        conn.proxy_header = Some(header);
                    }
                    Ok(proxy::Header::Complete { len, client }) => {
                        conn.client = client;
                        after_header = header.split_off(len);
                        bytes = &after_header;
                    }
                    Ok(proxy::Header::Incomplete) | Err(_) => {
                        // Without a valid header the client is unknown: refuse it.
                        conn.life = Life::Closing;
                    }
                }
            }
            // On the HTTPS listener the bytes are records: what HTTP reads
            // is the plaintext they carry.
            let mut peer_closed = false;
            if let Some(tls) = &mut conn.tls
                && conn.life == Life::Open
                && !tls.failed
                && !bytes.is_empty()
            {
                let opened = tls.open(bytes, &mut self.tls_plain, &mut self.metrics.tls);
                if opened.established {
                    // The request head's deadline starts now.
                    self.timers.arm(token.slot, TimerKind::Header, self.now);
                }
                peer_closed = opened.peer_closed;
                bytes = if tls.failed { &[] } else { &self.tls_plain };
            }
            if conn.life == Life::Open && !conn.read_closed && !bytes.is_empty() {
                let at = (token.slot, token.generation);
                let (max_age, now, accepted_at) =
                    (self.max_connection_age, self.now, conn.accepted_at);
                let written = self.responder.answer(
                    conn,
                    at,
                    &mut self.metrics,
                    &mut self.tasks,
                    self.now,
                    |http, service, out, env| {
                        if max_age.is_some_and(|age| now >= accepted_at + age) {
                            // Keep-alive connections move to new instances in time.
                            http.start_drain();
                        }
                        http.receive(bytes, service, out, env)
                    },
                );
                if written > 0 {
                    // A request was answered: the next one gets a fresh header deadline.
                    self.timers.disarm(token.slot);
                }
            }
            if peer_closed {
                // close_notify: the peer's end of the stream, after what it carried.
                conn.read_closed = true;
            }
            self.buffers.recycle(bid);
        }
        self.touch(token.slot);
    }

    fn on_send(&mut self, completion: Completion) {
        let token = completion.token;
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            return;
        };
        match conn.socket.on_send(completion.result) {
            SendOutcome::Partial(n) => self.metrics.bytes_sent += n as u64,
            SendOutcome::Done(n) => {
                self.metrics.bytes_sent += n as u64;
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
            SendOutcome::Cancelled | SendOutcome::Failed(_) => conn.life = Life::Closing,
        }
        self.touch(token.slot);
    }

    fn on_shutdown(&mut self, completion: Completion) {
        let token = completion.token;
        if let Some(conn) = self.conns.get_mut(token.slot, token.generation) {
            conn.socket.on_shutdown();
            self.touch(token.slot);
        }
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
                    if let Some(body) = response.into_owned_body() {
                        super::io::recycle(body);
                    }
                }
            }
            self.finished = finished;
        }
    }

    /// Write a task's answer into its connection, and go on with the
    /// requests behind it.
    fn deliver(&mut self, to: AnswerTo, response: &Response) {
        let sample = self.responder.take_sample(&to);
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
                            status = Some((sent.status(), sent.body_bytes()));
                            sent
                        },
                        service,
                        out,
                        env,
                    )
                },
            );
            if let Some((status, bytes_out)) = status {
                let took = self.elapsed.since(to.since, self.now);
                self.metrics
                    .record_deferred_response(to.route, status, took);
                if let Some(sample) = sample {
                    let log = &self.responder.access_log;
                    log.write(&sample, to.route, status, bytes_out, took);
                }
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

        let token = Token {
            owner: OWNER,
            op: 0,
            slot,
            generation,
        };
        if conn.life == Life::Open && conn.output_drained() {
            if let Some(tls) = &mut conn.tls
                && conn.http.is_closing()
                && !tls.close_sent
                && !tls.failed
            {
                // TLS says the stream ends before TCP does.
                tls.session.close();
                tls.close_sent = true;
            } else if conn.is_closing() {
                // The final response is out: no more writes; read until the
                // peer closes so that it sees the response, not a reset.
                conn.socket.shutdown_write(&mut self.ring, token);
                conn.life = Life::Lingering;
                self.timers.arm(slot, TimerKind::Linger, self.now);
            } else if conn.read_closed || (draining && conn.http.is_idle()) {
                conn.life = Life::Closing;
            }
        }
        if conn.life == Life::Lingering && conn.read_closed {
            conn.life = Life::Closing;
        }

        if conn.life != Life::Closing {
            conn.flush(&mut self.ring, token);
        }

        let records_drained =
            conn.out.len() < conn.max_out_bytes(self.responder.tls_max_unsent_records);
        let want_recv = match conn.life {
            Life::Open => {
                !conn.read_closed && !conn.http.is_paused(&self.responder.limits) && records_drained
            }
            Life::Lingering => !conn.read_closed,
            Life::Closing => false,
        };
        if want_recv {
            conn.socket
                .receive(&mut self.ring, token, self.buffers.group());
        } else {
            conn.socket.cancel(&mut self.ring, SocketOp::Recv, token);
        }
        if conn.life == Life::Closing {
            conn.socket.cancel(&mut self.ring, SocketOp::Send, token);
        }

        let handshaking = conn.tls.as_ref().is_some_and(|tls| !tls.established);
        match conn.life {
            Life::Open if handshaking => self.timers.arm(slot, TimerKind::Handshake, self.now),
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

        if conn.life == Life::Closing && conn.socket.is_idle() {
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
            conn.socket.close(&mut self.ring);
        }
    }

    /// Close an accepted socket no connection took, freeing its direct
    /// descriptor.
    fn close_socket(&mut self, socket: u32) {
        self.ring.close_fixed(socket);
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
            self.io.count_shed(ShedCause::RequestTimeout);
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
                TimerKind::Handshake => {
                    // Nothing can be said in HTTP before the handshake ends.
                    self.metrics.record_timeout(TimeoutKind::Handshake);
                    conn.life = Life::Closing;
                }
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
        for door in &mut self.doors {
            door.close(&mut self.ring);
        }
        let slots: Vec<u32> = self.conns.occupied().collect();
        for slot in slots {
            if let Some(conn) = self.conns.slot_mut(slot) {
                conn.http.start_drain();
            }
            self.touch(slot);
        }
    }

    fn arm_wake(&mut self) {
        let word: *mut u64 = &mut *self.wake_word;
        let entry = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), word.cast(), 8)
            .build()
            .user_data(Token::global(OWNER, WAKE).encode());
        // SAFETY: the word is boxed and the eventfd owned by the executor,
        // which drops its ring before them (field order).
        unsafe { self.ring.push(&entry) };
    }

    fn arm_lookups(&mut self) {
        let Some(fd) = self.io.lookup_ready_fd() else {
            return;
        };
        let word: *mut u64 = &mut *self.lookup_word;
        let entry = opcode::Read::new(types::Fd(fd), word.cast(), 8)
            .build()
            .user_data(Token::global(OWNER, LOOKUP).encode());
        // SAFETY: the word is boxed, and the eventfd belongs to the `Io`'s
        // lookup client; both outlive the ring (field order).
        unsafe { self.ring.push(&entry) };
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
    /// See [`ExecutorTls::max_unsent_records`].
    tls_max_unsent_records: usize,
    date: DateHeader,
    app: A,
    /// This executor's index among all executors (its metrics slot).
    index: usize,
    /// See [`ExecutorConfig::request_timeout`].
    request_timeout: Duration,
    /// Answers deferred in one step, kept for its capacity.
    later: Vec<Later>,
    /// The sampled access log.
    access_log: AccessLog,
    /// Deferred answers the log picked in one step, by their index in `later`.
    picked: Vec<(usize, Sample)>,
    /// Deferred answers the log picked, until they are written.
    sampled: Vec<((u32, u16, u16), Sample)>,
}

/// Deferred answers the access log waits for at most; past it the oldest
/// is forgotten (its line is not written).
const MAX_SAMPLED_IN_FLIGHT: usize = 1024;

impl<A> Responder<A> {
    /// The access log's sample for `to`, if it picked that request.
    fn take_sample(&mut self, to: &AnswerTo) -> Option<Sample> {
        if self.sampled.is_empty() {
            return None;
        }
        let key = (to.slot, to.generation, to.number);
        let at = self.sampled.iter().position(|&(k, _)| k == key)?;
        Some(self.sampled.swap_remove(at).1)
    }
}

impl<A: Application> Responder<A> {
    /// Run one step of `conn`'s HTTP state (`receive`, `resume`,
    /// `complete`, `time_out`) with the application behind it; start a
    /// task for each answer it deferred, and account for the responses it
    /// wrote.
    fn answer(
        &mut self,
        conn: &mut Connection,
        (slot, generation): (u32, u16),
        metrics: &mut CoreMetrics,
        tasks: &mut Tasks<AnswerTo>,
        now: Instant,
        step: impl FnOnce(&mut HttpConnection, &mut Bridge<'_, A>, &mut Vec<u8>, &HttpEnv<'_>) -> usize,
    ) -> usize {
        // A TLS connection answers only while its records waiting to go
        // out stay under the cap; what arrives meanwhile is kept, not parsed.
        let env = HttpEnv {
            limits: &self.limits,
            date: &self.date,
            max_out_bytes: conn.max_out_bytes(self.tls_max_unsent_records),
        };
        let mut bridge = Bridge {
            app: &mut self.app,
            metrics,
            later: &mut self.later,
            executor: self.index,
            access_log: &mut self.access_log,
            picked: &mut self.picked,
            client: &conn.client,
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
                since: now,
            };
            tasks.spawn(
                Job::Answer(later.future, to),
                Some(now + self.request_timeout),
            );
        }
        // The answers the access log picked: the deferred answers of one
        // step are numbered in a row from `first`.
        for (index, sample) in self.picked.drain(..) {
            if self.sampled.len() >= MAX_SAMPLED_IN_FLIGHT {
                // An answer never delivered (its task dropped) must not pin memory.
                self.sampled.remove(0);
            }
            let number = first.wrapping_add(index as u16);
            self.sampled.push(((slot, generation, number), sample));
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
    access_log: &'a mut AccessLog,
    picked: &'a mut Vec<(usize, Sample)>,
    /// The connection's client, if a PROXY header named it.
    client: &'a Option<SocketAddr>,
}

impl<A> Bridge<'_, A> {
    /// Log the request just answered on `route`, if the sampler picks it:
    /// now if it was answered at once, when it is written if deferred.
    #[inline]
    fn log(&mut self, method: Option<Method>, bytes_in: usize, route: RouteId, sent: &Sent) {
        if self.access_log.pick() {
            self.log_picked(method, bytes_in, route, sent);
        }
    }

    #[cold]
    fn log_picked(&mut self, method: Option<Method>, bytes_in: usize, route: RouteId, sent: &Sent) {
        let sample = Sample {
            method,
            bytes_in,
            client: *self.client,
        };
        if sent.is_deferred() {
            self.picked.push((self.later.len() - 1, sample));
        } else {
            let (status, bytes_out) = (sent.status(), sent.body_bytes());
            self.access_log
                .write(&sample, route, status, bytes_out, Duration::ZERO);
        }
    }
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
        self.log(Some(request.method), request.body.len(), route, &sent);
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
        self.log(None, 0, route, &sent);
        sent
    }
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
            max_connection_age: None,
            proxy_protocol: false,
            access_log_every: 0,
            napi_busy_poll_us: 0,
            limits: Limits {
                head: crate::http::request::HeadLimits {
                    max_request_line_bytes: 1024,
                    max_header_bytes: 1024,
                    max_headers: 16,
                },
                max_body_bytes: 1024,
                max_pipeline_depth: 16,
                max_connection_requests: None,
            },
            redis: None,
            max_redis_in_flight: 16,
            tls: None,
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
