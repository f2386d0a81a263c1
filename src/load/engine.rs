//! One load generator thread: its own io_uring ring, provided buffers and
//! connections to the target, like a server executor turned around.
//!
//! A turn: schedule the requests now due (open loop); reconnect connections
//! whose back-off has passed; every few milliseconds, expire requests older
//! than the timeout; settle each connection touched (top it up to its
//! pipeline depth, send what was written in one send, arm its receive,
//! finish closing it); then submit and wait for a completion or the next
//! deadline, and handle what completed. Latency is measured at the turn's
//! start, once for every answer the turn reads.
//!
//! Over https a connection shakes hands before it is given any request,
//! so a handshake's time is its own figure, never part of a request's
//! latency (in an open loop, requests that come due meanwhile wait in the
//! connection's queue, and that wait is theirs). Each thread keeps its own
//! session cache: a reconnect resumes that thread's last session.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::intervals::Interval;
use super::stats::{Failure, Stats, second_of};
use super::workload::{Encoded, Workload};
use crate::http::client::{ResponseReader, Step};
use crate::ring::buffers::ProvidedBuffers;
use crate::ring::socket::{Received, RingSocket, SendOutcome};
use crate::ring::token::{Owner, SocketOp, Token};
use crate::ring::{Completion, Ring};
use crate::rng::Rng;
use crate::tls::client::connect as tls_connect;
use crate::tls::{RecordLayer, Session};

use super::options::TlsTarget;

/// The load generator's operations on its ring.
const OWNER: Owner = Owner(3);

/// Bytes per provided receive buffer.
const RECV_BUFFER_BYTES: u32 = 16 * 1024;

/// First wait before reconnecting after a failed connect; it doubles with
/// each failure in a row.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest wait before reconnecting.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Longest interval between two sweeps for requests past their timeout.
const SWEEP_INTERVAL_MAX: Duration = Duration::from_millis(10);

/// How often the thread's totals are published for the progress display.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long the thread waits at the end for the kernel to finish with its
/// sockets' operations.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(1);

/// What one thread is asked to do.
#[derive(Clone, Debug)]
pub struct ThreadPlan {
    /// This thread's index, in event ids.
    pub index: u16,
    /// The server.
    pub target: SocketAddr,
    /// Connections this thread opens.
    pub connections: usize,
    /// Requests in flight per connection at most.
    pub pipeline: usize,
    /// Open loop: time between two scheduled requests of this thread.
    pub interval: Option<Duration>,
    /// Measured requests this thread issues at most.
    pub requests: Option<u64>,
    /// No answer within this long of a request's start is a timeout; so is
    /// a connect that takes this long.
    pub timeout: Duration,
    /// The requests.
    pub workload: Workload,
    /// Seeds this thread's key choices.
    pub seed: u64,
    /// Largest response head accepted, in bytes.
    pub max_response_head_bytes: usize,
    /// Keep a ledger of every sent request's event ids and answer.
    pub ledger: bool,
    /// Where each second's latencies go once the second is over.
    pub intervals: Option<mpsc::Sender<Interval>>,
    /// https: TLS to the target.
    pub tls: Option<TlsTarget>,
}

/// When a run starts, is measured from, and ends; the same for every thread.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Connections open and requests start.
    pub start: Instant,
    /// Warm-up ends: requests started from here on are measured.
    pub measure_start: Instant,
    /// The run stops here whatever is in flight.
    pub end: Instant,
}

/// Totals a thread publishes for the progress display.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    /// Measured answers so far.
    pub answered: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not connected; waiting to (re)connect.
    Idle,
    /// A connect is in flight.
    Connecting,
    /// Connected, its TLS handshake under way: no request yet.
    Handshaking,
    /// Sending requests and reading answers.
    Open,
    /// Its operations are being cancelled; then it is closed.
    Closing,
}

/// A request written to a connection, waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    /// When it should have started (open loop) or did (closed loop).
    start: Instant,
    /// When it was sent.
    sent: Instant,
    encoded: Encoded,
}

struct Conn {
    /// Present from the connect until the socket is closed.
    socket: Option<RingSocket>,
    state: State,
    generation: u16,
    connect_started: Instant,
    /// Failed connects in a row, for the back-off.
    connect_failures: u32,
    /// A connect in flight was already counted as failed (it timed out).
    connect_counted: bool,
    /// Requests written this turn, not yet sent.
    out: Vec<u8>,
    /// https: the session, from the connect until the close.
    tls: Option<Box<Session>>,
    /// https: sealed records not yet sent.
    wire: Vec<u8>,
    /// When the connect completed, for the handshake's time.
    connected_at: Instant,
    /// Sent requests in order; answers come back in this order.
    waiting: VecDeque<Waiting>,
    /// Open loop: scheduled times of requests not yet sent.
    queued: VecDeque<Instant>,
    reader: ResponseReader,
    /// The start of a response head split across reads.
    partial: Vec<u8>,
    touched: bool,
}

impl Conn {
    fn new(max_response_head_bytes: usize, now: Instant) -> Self {
        Conn {
            socket: None,
            state: State::Idle,
            generation: 0,
            connect_started: now,
            connect_failures: 0,
            connect_counted: false,
            out: Vec::new(),
            tls: None,
            wire: Vec::new(),
            connected_at: now,
            waiting: VecDeque::new(),
            queued: VecDeque::new(),
            reader: ResponseReader::new(max_response_head_bytes),
            partial: Vec::new(),
            touched: false,
        }
    }

    fn operations_in_flight(&self) -> bool {
        self.socket.as_ref().is_some_and(|s| !s.is_idle())
    }

    fn token(&self, slot: usize) -> Token {
        Token {
            owner: OWNER,
            op: 0,
            slot: slot as u32,
            generation: self.generation,
        }
    }
}

/// What recording an answer needs besides the connection.
struct Recorder<'a> {
    stats: &'a mut Stats,
    now: Instant,
    measure_start: Instant,
}

impl Recorder<'_> {
    fn measured(&self, request_start: Instant) -> bool {
        request_start >= self.measure_start
    }

    fn second(&self) -> usize {
        second_of(self.now, self.measure_start)
    }

    /// A request started at `request_start` failed: one sent as
    /// `operation`, or (`None`) one that was never sent.
    fn fail(&mut self, kind: Failure, operation: Option<u8>, request_start: Instant) {
        if self.measured(request_start) {
            let second = self.second();
            self.stats.fail(kind, operation, second);
        }
    }

    fn fail_all(&mut self, kind: Failure, waiting: &mut VecDeque<Waiting>) {
        for request in waiting.drain(..) {
            self.fail_sent(kind, &request);
        }
    }

    /// A sent request failed: it may or may not have been carried out.
    fn fail_sent(&mut self, kind: Failure, request: &Waiting) {
        self.fail(kind, Some(request.encoded.operation), request.start);
        self.stats.record_ledger(request.encoded.events, None);
    }
}

/// How reading a connection's bytes ended.
enum ReadOutcome {
    /// More answers may follow.
    Open,
    /// The server said it closes after its last answer.
    ServerClosing,
    /// The bytes were not a response to a waiting request.
    Malformed,
}

/// One generator thread.
pub struct Engine {
    // Field order is drop order: the ring first, so the kernel is done with
    // the provided buffers before they go.
    ring: Ring,
    buffers: ProvidedBuffers,
    conns: Vec<Conn>,
    plan: ThreadPlan,
    timing: Timing,
    rng: Rng,
    stats: Stats,
    progress: Arc<Progress>,
    touched: Vec<usize>,
    /// Connections in [`State::Idle`] and when each may connect again.
    reconnects: Vec<(usize, Instant)>,
    /// Open loop: the index of the next request to schedule.
    next_scheduled: u64,
    /// Requests started, warm-up included; measured ones are in `stats.issued`.
    started: u64,
    /// This thread's CPU time when measurement started.
    cpu_at_measure_start: Option<Duration>,
    completions: Vec<Completion>,
    now: Instant,
    next_sweep: Instant,
    sweep_interval: Duration,
    next_progress: Instant,
    recv_buffers_exhausted: u64,
    /// https: the client configuration (this thread's own session cache).
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// Scratch: the plaintext one receive's records carried.
    plain: Vec<u8>,
}

impl Engine {
    /// Set up the ring and buffers; call on the thread that runs it.
    pub fn new(plan: ThreadPlan, progress: Arc<Progress>, operations: usize) -> io::Result<Self> {
        let entries = (plan.connections * 3 + 16).next_power_of_two().min(4096) as u32;
        let ring = Ring::new(entries)?;
        let recv_buffers = (plan.connections * 2).next_power_of_two().clamp(64, 8192) as u16;
        let buffers = ProvidedBuffers::new(recv_buffers, RECV_BUFFER_BYTES, 0)?;
        buffers.register(&ring.submitter())?;
        let now = Instant::now();
        let conns = (0..plan.connections)
            .map(|_| Conn::new(plan.max_response_head_bytes, now))
            .collect();
        let tls = match &plan.tls {
            None => None,
            Some(target) => Some((
                target.client.build().map_err(io::Error::other)?,
                target.server_name.clone(),
            )),
        };
        Ok(Engine {
            tls,
            plain: Vec::new(),
            ring,
            buffers,
            conns,
            rng: Rng::new(plan.seed),
            stats: match &plan.intervals {
                Some(to) => {
                    Stats::new(operations).with_intervals_to(usize::from(plan.index), to.clone())
                }
                None => Stats::new(operations),
            }
            .with_ledger(plan.ledger),
            progress,
            touched: Vec::new(),
            reconnects: Vec::new(),
            next_scheduled: 0,
            started: 0,
            cpu_at_measure_start: None,
            completions: Vec::new(),
            now,
            next_sweep: now,
            sweep_interval: (plan.timeout / 4).clamp(Duration::from_millis(1), SWEEP_INTERVAL_MAX),
            next_progress: now,
            recv_buffers_exhausted: 0,
            timing: Timing {
                start: now,
                measure_start: now,
                end: now,
            },
            plan,
        })
    }

    /// Run to the end of `timing` (or the request budget) and return what
    /// was measured.
    pub fn run(mut self, timing: Timing) -> io::Result<Stats> {
        self.timing = timing;
        reduce_timer_slack();
        self.now = Instant::now();
        while self.now < timing.start {
            std::thread::sleep(timing.start - self.now);
            self.now = Instant::now();
        }
        for slot in 0..self.conns.len() {
            self.reconnects.push((slot, timing.start));
        }
        self.next_sweep = self.now;
        loop {
            self.now = Instant::now();
            if self.now >= timing.end || self.budget_done() {
                break;
            }
            self.schedule_due();
            self.reconnect_due()?;
            if self.now >= self.next_sweep {
                self.sweep();
                self.next_sweep = self.now + self.sweep_interval;
            }
            self.settle_touched();
            if self.cpu_at_measure_start.is_none() && self.now >= timing.measure_start {
                self.cpu_at_measure_start = Some(thread_cpu_time());
            }
            if self.now >= self.next_progress {
                self.publish_progress();
                if self.now >= timing.measure_start {
                    // A second with no answers still ends.
                    self.stats.tick(second_of(self.now, timing.measure_start));
                }
                self.next_progress = self.now + PROGRESS_INTERVAL;
            }
            self.enter()?;
            self.now = Instant::now();
            self.reap();
            self.buffers.publish();
        }
        self.finish();
        Ok(self.teardown())
    }

    /// Every budgeted request issued and none waiting.
    fn budget_done(&self) -> bool {
        let Some(budget) = self.plan.requests else {
            return false;
        };
        self.stats.issued >= budget
            && self
                .conns
                .iter()
                .all(|c| c.waiting.is_empty() && c.queued.is_empty())
    }

    fn budget_left(&self) -> bool {
        self.plan
            .requests
            .is_none_or(|budget| self.stats.issued < budget)
    }

    /// Count a request started at `start`.
    fn issue(&mut self, start: Instant) {
        self.started += 1;
        if start >= self.timing.measure_start {
            self.stats.issued += 1;
        }
    }

    /// Open loop: queue every request whose time has come on its connection.
    fn schedule_due(&mut self) {
        let Some(interval) = self.plan.interval else {
            return;
        };
        loop {
            let due = self.timing.start + interval.mul_f64(self.next_scheduled as f64);
            if due > self.now || !self.budget_left() {
                return;
            }
            let slot = (self.next_scheduled % self.conns.len() as u64) as usize;
            self.next_scheduled += 1;
            if due >= self.timing.measure_start {
                // How late this thread saw a request come due: its own delay.
                self.stats.send_lag(self.now.saturating_duration_since(due));
            }
            self.issue(due);
            self.conns[slot].queued.push_back(due);
            self.touch(slot);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let interval = self.plan.interval?;
        self.budget_left()
            .then(|| self.timing.start + interval.mul_f64(self.next_scheduled as f64))
    }

    fn reconnect_due(&mut self) -> io::Result<()> {
        let mut i = 0;
        while i < self.reconnects.len() {
            let (slot, at) = self.reconnects[i];
            if at <= self.now {
                self.reconnects.swap_remove(i);
                self.connect(slot)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn connect(&mut self, slot: usize) -> io::Result<()> {
        let conn = &mut self.conns[slot];
        let token = conn.token(slot);
        conn.socket = Some(RingSocket::connect(
            &mut self.ring,
            self.plan.target,
            token,
        )?);
        conn.state = State::Connecting;
        conn.connect_started = self.now;
        conn.connect_counted = false;
        Ok(())
    }

    /// Expire requests and connects past the timeout.
    fn sweep(&mut self) {
        let timeout = self.plan.timeout;
        let now = self.now;
        let mut recorder = Recorder {
            stats: &mut self.stats,
            now,
            measure_start: self.timing.measure_start,
        };
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            let mut expired = false;
            while conn
                .queued
                .front()
                .is_some_and(|&start| now >= start + timeout)
            {
                let start = conn.queued.pop_front().expect("checked above");
                recorder.fail(Failure::Timeout, None, start);
            }
            let handshake_late =
                conn.state == State::Handshaking && now >= conn.connected_at + timeout;
            if (conn.state == State::Connecting
                && !conn.connect_counted
                && now >= conn.connect_started + timeout)
                || handshake_late
            {
                if now >= recorder.measure_start {
                    let second = recorder.second();
                    recorder.stats.fail(Failure::Connect, None, second);
                }
                conn.connect_counted = true;
                conn.connect_failures += 1;
                conn.state = State::Closing;
                expired = true;
            }
            if conn
                .waiting
                .front()
                .is_some_and(|w| now >= w.start + timeout)
            {
                // Answers come in order: those behind it on this connection
                // are stuck with it, and go with it.
                recorder.fail_all(Failure::Timeout, &mut conn.waiting);
                conn.state = State::Closing;
                expired = true;
            }
            if expired && !conn.touched {
                conn.touched = true;
                self.touched.push(slot);
            }
        }
    }

    fn touch(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if !conn.touched {
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
    fn settle(&mut self, slot: usize) {
        self.conns[slot].touched = false;
        match self.conns[slot].state {
            State::Idle | State::Connecting => {}
            State::Handshaking | State::Open => {
                if self.conns[slot].state == State::Open {
                    self.top_up(slot);
                }
                let conn = &mut self.conns[slot];
                let token = conn.token(slot);
                let out = match &mut conn.tls {
                    None => &mut conn.out,
                    Some(session) => {
                        session.seal(&mut conn.out, &mut conn.wire);
                        &mut conn.wire
                    }
                };
                let socket = conn.socket.as_mut().expect("open has a socket");
                socket.send(&mut self.ring, out, token);
                socket.receive(&mut self.ring, token, self.buffers.group());
            }
            State::Closing => self.close_step(slot),
        }
    }

    /// Write new requests until the pipeline is full (closed loop) or the
    /// queue is empty (open loop).
    fn top_up(&mut self, slot: usize) {
        let pipeline = self.plan.pipeline;
        let open_loop = self.plan.interval.is_some();
        loop {
            let conn = &self.conns[slot];
            if conn.waiting.len() >= pipeline {
                return;
            }
            let start = if open_loop {
                match self.conns[slot].queued.pop_front() {
                    Some(start) => start,
                    None => return,
                }
            } else {
                if !self.budget_left() {
                    return;
                }
                self.issue(self.now);
                self.now
            };
            let conn = &mut self.conns[slot];
            let encoded = self.plan.workload.encode(&mut self.rng, &mut conn.out);
            conn.waiting.push_back(Waiting {
                start,
                sent: self.now,
                encoded,
            });
            if start >= self.timing.measure_start {
                self.stats.sent += 1;
            }
        }
    }

    /// Cancel what is in flight; once nothing is, close the socket and
    /// queue the reconnect.
    fn close_step(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let token = conn.token(slot);
        if let Some(socket) = conn.socket.as_mut() {
            if socket.is_armed(SocketOp::Connect) {
                // A connect cancelled here has been counted (its timeout
                // fired, or it failed); its completion is not a new failure.
                conn.connect_counted = true;
            }
            socket.cancel_all(&mut self.ring, token);
            if !socket.is_idle() {
                return;
            }
        }
        if let Some(socket) = conn.socket.take() {
            socket.close(&mut self.ring);
        }
        conn.state = State::Idle;
        conn.generation = conn.generation.wrapping_add(1);
        conn.reader = ResponseReader::new(self.plan.max_response_head_bytes);
        conn.partial.clear();
        conn.out.clear();
        conn.tls = None;
        conn.wire.clear();
        if !self.budget_left() && self.conns[slot].queued.is_empty() {
            // Every budgeted request is issued and none waits for this
            // connection: a new one would only add a handshake.
            return;
        }
        let conn = &mut self.conns[slot];
        let at = if conn.connect_failures == 0 {
            self.now
        } else {
            let doublings = (conn.connect_failures - 1).min(16);
            self.now + (RECONNECT_BACKOFF_MIN * (1 << doublings)).min(RECONNECT_BACKOFF_MAX)
        };
        self.reconnects.push((slot, at));
    }

    /// Start closing `slot`; what waits on it fails as `kind`.
    fn close(&mut self, slot: usize, kind: Failure) {
        let mut recorder = Recorder {
            stats: &mut self.stats,
            now: self.now,
            measure_start: self.timing.measure_start,
        };
        let conn = &mut self.conns[slot];
        recorder.fail_all(kind, &mut conn.waiting);
        conn.state = State::Closing;
        self.touch(slot);
    }

    /// Submit what is queued and wait for a completion or the next deadline.
    fn enter(&mut self) -> io::Result<()> {
        let mut wake_at = self.timing.end.min(self.next_sweep).min(self.next_progress);
        if let Some(due) = self.next_due() {
            wake_at = wake_at.min(due);
        }
        if let Some(at) = self.reconnects.iter().map(|&(_, at)| at).min() {
            wake_at = wake_at.min(at);
        }
        self.ring.submit_and_wait(wake_at)
    }

    fn reap(&mut self) {
        self.completions.clear();
        self.ring.completions(&mut self.completions);
        for i in 0..self.completions.len() {
            let Completion {
                token,
                result,
                flags,
            } = self.completions[i];
            if token.owner != OWNER {
                continue;
            }
            let slot = token.slot as usize;
            let current = self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == token.generation && c.socket.is_some());
            match SocketOp::of(token.op) {
                Some(SocketOp::Recv) => self.on_recv(slot, current, result, flags),
                Some(SocketOp::Connect) if current => self.on_connect(slot, result),
                Some(SocketOp::Send) if current => self.on_send(slot, result),
                _ => {}
            }
        }
    }

    fn on_connect(&mut self, slot: usize, result: i32) {
        let conn = &mut self.conns[slot];
        let socket = conn
            .socket
            .as_mut()
            .expect("a current connection has a socket");
        let connected = socket.on_connect(result).is_ok();
        if connected && conn.state == State::Connecting {
            self.stats.connections_opened += 1;
            conn.connected_at = self.now;
            conn.state = State::Open;
            if let Some((config, server_name)) = &self.tls {
                match tls_connect(config, server_name) {
                    Ok(session) => {
                        conn.tls = Some(Box::new(session));
                        conn.state = State::Handshaking;
                    }
                    Err(e) => {
                        self.stats.handshakes.first_error.get_or_insert(e);
                        conn.state = State::Closing;
                    }
                }
            } else {
                conn.connect_failures = 0;
            }
        } else if conn.state == State::Connecting || !conn.connect_counted {
            if !conn.connect_counted && self.now >= self.timing.measure_start {
                self.stats.fail(
                    Failure::Connect,
                    None,
                    second_of(self.now, self.timing.measure_start),
                );
            }
            conn.connect_counted = true;
            conn.connect_failures += 1;
            conn.state = State::Closing;
        }
        self.touch(slot);
    }

    /// A TLS handshake failed or the server closed during it: the
    /// connection could not be made, and the next try backs off.
    fn handshake_failed(&mut self, slot: usize) {
        if self.now >= self.timing.measure_start {
            let second = second_of(self.now, self.timing.measure_start);
            self.stats.fail(Failure::Connect, None, second);
        }
        let conn = &mut self.conns[slot];
        conn.connect_failures += 1;
        conn.state = State::Closing;
        self.touch(slot);
    }

    fn on_send(&mut self, slot: usize, result: i32) {
        let conn = &mut self.conns[slot];
        let socket = conn
            .socket
            .as_mut()
            .expect("a current connection has a socket");
        let sent = socket.on_send(result);
        if matches!(conn.state, State::Open | State::Handshaking)
            && matches!(sent, SendOutcome::Cancelled | SendOutcome::Failed(_))
        {
            self.close(slot, Failure::Write);
            return;
        }
        // The rest of a partial send goes out when the connection settles.
        self.touch(slot);
    }

    fn on_recv(&mut self, slot: usize, current: bool, result: i32, flags: u32) {
        if !current {
            // A stale completion: only its buffer matters.
            if let Some(id) = io_uring::cqueue::buffer_select(flags) {
                self.buffers.recycle(id);
            }
            return;
        }
        let conn = &mut self.conns[slot];
        let socket = conn
            .socket
            .as_mut()
            .expect("a current connection has a socket");
        match socket.on_receive(result, flags) {
            Received::Provided { id, len } => {
                let mut bytes = self.buffers.get(id, len);
                let mut tls_failed = false;
                if let Some(session) = &mut conn.tls
                    && matches!(conn.state, State::Open | State::Handshaking)
                {
                    self.plain.clear();
                    if let Err(e) = session.open(bytes, &mut self.plain) {
                        self.stats
                            .handshakes
                            .first_error
                            .get_or_insert_with(|| e.to_string());
                        tls_failed = true;
                    } else if conn.state == State::Handshaking && !session.is_handshaking() {
                        conn.state = State::Open;
                        conn.connect_failures = 0;
                        let took = self.now.saturating_duration_since(conn.connected_at);
                        let measured = self.now >= self.timing.measure_start;
                        self.stats
                            .handshakes
                            .finished(session.connection(), took, measured);
                    }
                    bytes = &self.plain;
                }
                if tls_failed {
                    if conn.state == State::Handshaking {
                        self.handshake_failed(slot);
                    } else {
                        self.close(slot, Failure::Read);
                    }
                } else if conn.state == State::Open && !bytes.is_empty() {
                    let mut recorder = Recorder {
                        stats: &mut self.stats,
                        now: self.now,
                        measure_start: self.timing.measure_start,
                    };
                    match read_responses(conn, bytes, &mut recorder) {
                        ReadOutcome::Open => {}
                        ReadOutcome::ServerClosing => self.close(slot, Failure::Read),
                        ReadOutcome::Malformed => {
                            let conn = &mut self.conns[slot];
                            if let Some(request) = conn.waiting.pop_front() {
                                let mut recorder = Recorder {
                                    stats: &mut self.stats,
                                    now: self.now,
                                    measure_start: self.timing.measure_start,
                                };
                                recorder.fail_sent(Failure::Malformed, &request);
                            }
                            self.close(slot, Failure::Read);
                        }
                    }
                }
                self.buffers.recycle(id);
            }
            Received::NoBuffers => self.recv_buffers_exhausted += 1,
            Received::Cancelled => {}
            Received::Closed => {
                // The server closed: a body that runs to the close ends here.
                if conn.state == State::Open
                    && let Some(response) = conn.reader.at_close()
                    && let Some(request) = conn.waiting.pop_front()
                {
                    let mut recorder = Recorder {
                        stats: &mut self.stats,
                        now: self.now,
                        measure_start: self.timing.measure_start,
                    };
                    record_answer(&mut recorder, &request, response.status);
                }
                match self.conns[slot].state {
                    State::Open => self.close(slot, Failure::Read),
                    State::Handshaking => self.handshake_failed(slot),
                    _ => {}
                }
            }
            // The engine's sockets receive into provided buffers only.
            Received::Bytes(_) | Received::Failed(_) => match conn.state {
                State::Open => self.close(slot, Failure::Read),
                State::Handshaking => self.handshake_failed(slot),
                _ => {}
            },
        }
        self.touch(slot);
    }

    fn publish_progress(&self) {
        self.progress
            .answered
            .store(self.stats.answered, Ordering::Relaxed);
        self.progress
            .errors
            .store(self.stats.errors.total(), Ordering::Relaxed);
    }

    /// The run is over: what still waits is unfinished; cancel everything.
    fn finish(&mut self) {
        let measure_start = self.timing.measure_start;
        let mut unfinished = 0;
        for conn in &mut self.conns {
            for request in conn.waiting.drain(..) {
                self.stats.record_ledger(request.encoded.events, None);
                unfinished += u64::from(request.start >= measure_start);
            }
            unfinished += conn
                .queued
                .drain(..)
                .filter(|&s| s >= measure_start)
                .count() as u64;
        }
        self.stats.unfinished = unfinished;
        if let Some(cpu) = self.cpu_at_measure_start {
            let wall = self.now.saturating_duration_since(measure_start);
            self.stats
                .cpu_busy(thread_cpu_time().saturating_sub(cpu), wall);
        }
        self.stats.end_intervals();
        self.publish_progress();
    }

    /// Cancel every operation and wait (a bounded time) for the kernel to
    /// finish with the buffers they use.
    fn teardown(mut self) -> Stats {
        self.reconnects.clear();
        self.plan.interval = None; // Nothing more is due.
        for slot in 0..self.conns.len() {
            if self.conns[slot].state != State::Idle {
                self.conns[slot].state = State::Closing;
                self.touch(slot);
            }
        }
        let limit = Instant::now() + TEARDOWN_LIMIT;
        loop {
            self.settle_touched();
            self.reconnects.clear();
            if !self.conns.iter().any(Conn::operations_in_flight) {
                break;
            }
            self.now = Instant::now();
            if self.now >= limit {
                tracing::warn!(
                    "the kernel did not finish cancelling this thread's socket operations; leaving its buffers allocated"
                );
                let stats = std::mem::replace(&mut self.stats, Stats::new(0));
                // Freeing memory the kernel may still write to is worse than leaking it.
                std::mem::forget(self);
                return stats;
            }
            self.next_sweep = limit;
            self.next_progress = limit;
            self.timing.end = limit;
            let _ = self.enter();
            self.reap();
            self.buffers.publish();
        }
        if self.recv_buffers_exhausted > 0 {
            tracing::debug!(
                times = self.recv_buffers_exhausted,
                "receive buffers ran out; receives were re-armed"
            );
        }
        std::mem::replace(&mut self.stats, Stats::new(0))
    }
}

/// Read answers from `input` on `conn`, matching them in order to the
/// requests waiting there.
fn read_responses(conn: &mut Conn, input: &[u8], recorder: &mut Recorder<'_>) -> ReadOutcome {
    if conn.partial.is_empty() {
        let (consumed, outcome) = read_from(conn, input, recorder);
        if matches!(outcome, ReadOutcome::Open) {
            conn.partial.extend_from_slice(&input[consumed..]);
        }
        outcome
    } else {
        let mut data = std::mem::take(&mut conn.partial);
        data.extend_from_slice(input);
        let (consumed, outcome) = read_from(conn, &data, recorder);
        data.drain(..consumed);
        conn.partial = data;
        outcome
    }
}

/// Read whole answers from `data`; returns the bytes used. What is left
/// is the start of a head.
fn read_from(conn: &mut Conn, data: &[u8], recorder: &mut Recorder<'_>) -> (usize, ReadOutcome) {
    let mut pos = 0;
    while pos < data.len() {
        let Some(front) = conn.waiting.front() else {
            return (pos, ReadOutcome::Malformed); // An answer nobody asked for.
        };
        let bodiless = front.encoded.bodiless;
        match conn.reader.read(&data[pos..], bodiless) {
            Err(_) => return (pos, ReadOutcome::Malformed),
            Ok(Step::Partial { consumed }) => return (pos + consumed, ReadOutcome::Open),
            Ok(Step::Complete { consumed, response }) => {
                pos += consumed;
                let request = conn.waiting.pop_front().expect("checked above");
                record_answer(recorder, &request, response.status);
                if response.close {
                    return (pos, ReadOutcome::ServerClosing);
                }
            }
        }
    }
    (pos, ReadOutcome::Open)
}

fn record_answer(recorder: &mut Recorder<'_>, request: &Waiting, status: u16) {
    recorder
        .stats
        .record_ledger(request.encoded.events, Some(status));
    if !recorder.measured(request.start) {
        return;
    }
    let error = status >= 400 && !(status == 404 && request.encoded.absent_ok);
    let second = recorder.second();
    recorder.stats.answer(
        request.encoded.operation,
        status,
        error,
        recorder.now.saturating_duration_since(request.start),
        recorder.now.saturating_duration_since(request.sent),
        second,
    );
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Wake-ups for scheduled sends land within a microsecond of their time
/// rather than the default 50 µs timer slack.
fn reduce_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}
