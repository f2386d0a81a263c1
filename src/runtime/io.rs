//! [`Io`]: what a task on an executor can wait for. Each call issues its
//! operation at once (a Redis command is written into its node's output
//! before the call returns, so several calls made before the first
//! `.await` go out pipelined) and returns a future for its outcome.
//!
//! The executor owns the sockets; this side holds the Redis Cluster client
//! state, the read-through channel and a slab of operations in flight. A
//! completion is stored in its operation's slot and wakes the task that
//! awaits it. An operation whose future is dropped before its outcome
//! came is abandoned: its outcome, when it comes, is thrown away.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::metrics::{CoreMetrics, IoFigures, ShedCause};
use crate::redis::cluster::{Cluster, CommandToken};
use crate::redis::command::{Command, Error as RedisError};
use crate::redis::resp::{OwnedReply, Reply};
use crate::redis::slot::Slot;
use crate::writeback::lookup::{Found, LookupClient, Miss};

use super::future::TaskFuture;

/// Recycled buffers kept per thread, at most.
const MAX_RECYCLED: usize = 1024;

/// A recycled buffer larger than this is let go.
const MAX_RECYCLED_BYTES: usize = 16 * 1024;

thread_local! {
    /// Empty buffers with their capacity kept: a reply's bytes go into
    /// one, and a response's body comes back as one, so that a core with
    /// a thousand requests in flight does not allocate and free a buffer
    /// for each (past the C allocator's small per-thread cache, each free
    /// takes its slow path).
    static RECYCLED: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, recycled if one is kept.
pub fn buffer() -> Vec<u8> {
    RECYCLED
        .try_with(|r| r.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keep `buffer`'s capacity for a later [`buffer`], unless it is large or
/// enough are kept.
pub fn recycle(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_RECYCLED_BYTES {
        return;
    }
    buffer.clear();
    let _ = RECYCLED.try_with(|r| {
        let mut kept = r.borrow_mut();
        if kept.len() < MAX_RECYCLED {
            kept.push(buffer);
        }
    });
}

/// A reply as the task that waits for it keeps it; a bulk string's bytes
/// in a recycled buffer.
fn owned(reply: Reply<'_>) -> OwnedReply {
    match reply {
        Reply::Bulk(bytes) => {
            let mut kept = buffer();
            kept.extend_from_slice(bytes);
            OwnedReply::Bulk(kept)
        }
        other => other.to_owned(),
    }
}

/// Why an operation has no outcome from its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This server runs without a Redis Cluster.
    NoRedis,
    /// The executor already has `max_redis_in_flight` commands out: the
    /// command was not sent (load is shed at the door, not queued in Redis).
    Overloaded,
    /// Redis gave no reply (see the error for whether it may have run).
    Redis(RedisError),
    /// This process runs no database core, so nothing can be read through.
    NoReadThrough,
    /// The database core could not answer: too many lookups waiting, or
    /// PostgreSQL failed.
    Database(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoRedis => f.write_str("no Redis Cluster is configured"),
            Failure::Overloaded => f.write_str("overloaded: max_redis_in_flight reached"),
            Failure::Redis(e) => write!(f, "{e}"),
            Failure::NoReadThrough => f.write_str(
                "this server runs no database core (postgres_url), so nothing can be read through",
            ),
            Failure::Database(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Failure {}

/// What a read-through lookup found: the entry for the cache (see
/// [`Cached::entry`](crate::writeback::queue::Cached::entry)), and whether
/// this caller should put it in the cache (one caller per key and lookup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The row as a cache entry.
    pub entry: Vec<u8>,
    /// Put it into the cache.
    pub fill: bool,
}

/// An operation's outcome.
enum Outcome {
    Redis(Result<OwnedReply, Failure>),
    Row(Result<Row, Failure>),
}

enum OpState {
    Free,
    /// Issued; the waker of the task that awaits it, once polled.
    Waiting(Option<Waker>),
    Done(Outcome),
    /// Its future was dropped: the outcome is thrown away when it comes.
    Abandoned,
}

struct OpSlot {
    generation: u32,
    state: OpState,
}

/// Operations in flight, by token: the slot in the low 32 bits, its
/// generation in the high ones.
#[derive(Default)]
struct Ops {
    slots: Vec<OpSlot>,
    free: Vec<u32>,
}

impl Ops {
    fn issue(&mut self) -> u64 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(OpSlot {
                    generation: 0,
                    state: OpState::Free,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.state = OpState::Waiting(None);
        u64::from(entry.generation) << 32 | u64::from(slot)
    }

    fn slot(&mut self, token: u64) -> Option<&mut OpSlot> {
        let entry = self.slots.get_mut(token as u32 as usize)?;
        (entry.generation == (token >> 32) as u32).then_some(entry)
    }

    fn release(&mut self, token: u64) {
        let slot = token as u32;
        let entry = &mut self.slots[slot as usize];
        entry.state = OpState::Free;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
    }

    /// Store `outcome` and wake its task, or drop it if abandoned.
    fn complete(&mut self, token: u64, outcome: Outcome) {
        let Some(entry) = self.slot(token) else {
            return;
        };
        match std::mem::replace(&mut entry.state, OpState::Free) {
            OpState::Waiting(waker) => {
                entry.state = OpState::Done(outcome);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            OpState::Abandoned => self.release(token),
            // A second outcome for one operation is a bug elsewhere; keep the first.
            other => entry.state = other,
        }
    }

    /// The outcome if it came; else remember who waits.
    fn poll(&mut self, token: u64, cx: &Context<'_>) -> Option<Outcome> {
        let entry = self.slot(token).expect("a live operation's slot");
        match std::mem::replace(&mut entry.state, OpState::Free) {
            OpState::Done(outcome) => {
                self.release(token);
                Some(outcome)
            }
            OpState::Waiting(mut waker) => {
                match &mut waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => waker = Some(cx.waker().clone()),
                }
                entry.state = OpState::Waiting(waker);
                None
            }
            other => {
                entry.state = other;
                None
            }
        }
    }

    fn abandon(&mut self, token: u64) {
        let Some(entry) = self.slot(token) else {
            return;
        };
        match entry.state {
            OpState::Done(_) => self.release(token),
            OpState::Waiting(_) => entry.state = OpState::Abandoned,
            _ => {}
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// This executor's Redis Cluster client state.
pub(crate) struct RedisSide {
    pub(crate) cluster: Cluster,
    /// See [`IoConfig::max_redis_in_flight`].
    max_in_flight: usize,
}

/// Where commands go: a real cluster, or (tests) a list the test answers.
enum Backend {
    None,
    Cluster(Box<RedisSide>),
    Script {
        /// Commands issued and not yet taken by the test.
        issued: Vec<(CommandToken, Command)>,
        /// Online replicas the test says every master has.
        replicas: Option<usize>,
    },
}

/// What one executor's [`Io`] is set up with.
pub struct IoConfig {
    /// Redis commands one executor may have in flight; more are refused
    /// at once with [`Failure::Overloaded`].
    pub max_redis_in_flight: usize,
    /// This executor's index, for read-through answers to find it.
    pub executor: usize,
}

pub(crate) struct IoState {
    backend: Backend,
    ops: Ops,
    lookups: Option<LookupClient>,
    executor: usize,
    /// Detached tasks spawned since the executor last took them.
    spawned: Vec<TaskFuture<()>>,
    /// Turns ended so far, and who waits for the current one to end.
    turn: u64,
    turn_waiters: Vec<Waker>,
    now: Instant,
    /// Shedding and read-through, counted for `/metrics`.
    figures: IoFigures,
}

/// A handle on one executor's operations; cheap to clone, and tied to its
/// core (not `Send`).
#[derive(Clone)]
pub struct Io {
    state: Rc<RefCell<IoState>>,
}

impl Io {
    /// The executor's side: commands go to `cluster` (none: they fail with
    /// [`Failure::NoRedis`]), lookups to `lookups`.
    pub(crate) fn new(
        config: IoConfig,
        cluster: Option<Cluster>,
        lookups: Option<LookupClient>,
        now: Instant,
    ) -> Io {
        let backend = match cluster {
            None => Backend::None,
            Some(cluster) => Backend::Cluster(Box::new(RedisSide {
                cluster,
                max_in_flight: config.max_redis_in_flight,
            })),
        };
        Io::with_backend(backend, lookups, config.executor, now)
    }

    fn with_backend(
        backend: Backend,
        lookups: Option<LookupClient>,
        executor: usize,
        now: Instant,
    ) -> Io {
        Io {
            state: Rc::new(RefCell::new(IoState {
                backend,
                ops: Ops::default(),
                lookups,
                executor,
                spawned: Vec::new(),
                turn: 0,
                turn_waiters: Vec::new(),
                now,
                figures: IoFigures::default(),
            })),
        }
    }

    /// Send `command` to the node that owns its key (MOVED, ASK, retries
    /// and failover are handled below); await its reply. An error reply
    /// (`-ERR ...`) is a reply: `Ok(OwnedReply::Error(..))`.
    pub fn redis(&self, command: Command) -> RedisCall {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let token = state.ops.issue();
        let refused = match &mut state.backend {
            Backend::None => Some(Failure::NoRedis),
            Backend::Cluster(side) if side.cluster.in_flight() >= side.max_in_flight => {
                state.figures.shed(ShedCause::RedisInFlight);
                Some(Failure::Overloaded)
            }
            Backend::Cluster(side) => {
                side.cluster.submit(token, command, state.now);
                None
            }
            Backend::Script { issued, .. } => {
                issued.push((token, command));
                None
            }
        };
        if let Some(failure) = refused {
            state.ops.complete(token, Outcome::Redis(Err(failure)));
        }
        RedisCall {
            state: Rc::clone(&self.state),
            token: Some(token),
        }
    }

    /// Ask the database core for `key`'s row in cached table `table` (by
    /// its index among the server's tables): a read-through; await it.
    pub fn lookup(&self, table: usize, key: Vec<u8>) -> LookupCall {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let token = state.ops.issue();
        let refused = match &state.lookups {
            None => Some(Failure::NoReadThrough),
            Some(lookups) => {
                let miss = Miss {
                    executor: state.executor,
                    token,
                    table,
                    key,
                };
                if lookups.ask(miss) {
                    state.figures.lookups += 1;
                    state.figures.lookups_waiting += 1;
                    None
                } else {
                    state.figures.shed(ShedCause::Lookups);
                    Some(Failure::Database(
                        "too many read-through lookups waiting (max_pending_lookups)".into(),
                    ))
                }
            }
        };
        if let Some(failure) = refused {
            state.ops.complete(token, Outcome::Row(Err(failure)));
        }
        LookupCall {
            state: Rc::clone(&self.state),
            token: Some(token),
        }
    }

    /// Run `future` on this core, with no request waiting for it.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.state
            .borrow_mut()
            .spawned
            .push(TaskFuture::new(future));
    }

    /// Ready once every task woken in this turn of the executor's loop has
    /// run: work that gathers what a turn produced (one `WAIT` for all
    /// the writes a turn confirmed) waits for it.
    pub fn end_of_turn(&self) -> EndOfTurn {
        EndOfTurn {
            state: Rc::clone(&self.state),
            turn: None,
        }
    }

    /// The time the current turn started.
    pub fn now(&self) -> Instant {
        self.state.borrow().now
    }

    /// Whether commands can reach a Redis Cluster.
    pub fn has_redis(&self) -> bool {
        !matches!(self.state.borrow().backend, Backend::None)
    }

    /// Whether keys can be read through from the database.
    pub fn has_read_through(&self) -> bool {
        self.state.borrow().lookups.is_some()
    }

    /// How many online replicas the master that owns `key` had in the
    /// last layout; `None` while unknown.
    pub fn online_replicas(&self, key: &[u8]) -> Option<usize> {
        match &self.state.borrow().backend {
            Backend::Cluster(side) => side.cluster.online_replicas(Slot::of(key)),
            Backend::Script { replicas, .. } => *replicas,
            Backend::None => None,
        }
    }

    /// Ask for the cluster's layout again if the last one is older than
    /// `age`.
    pub fn refresh_layout_if_older(&self, age: Duration) {
        let mut state = self.state.borrow_mut();
        let now = state.now;
        if let Backend::Cluster(side) = &mut state.backend {
            side.cluster.refresh_layout_if_older(age, now);
        }
    }

    // The executor's side.

    /// Run `f` on the cluster client and a sink that completes the
    /// commands whose outcomes it reports.
    pub(crate) fn with_cluster<R>(
        &self,
        f: impl FnOnce(&mut Cluster, &mut dyn FnMut(CommandToken, Result<Reply<'_>, RedisError>)) -> R,
    ) -> Option<R> {
        let mut state = self.state.borrow_mut();
        let IoState { backend, ops, .. } = &mut *state;
        let Backend::Cluster(side) = backend else {
            return None;
        };
        let mut sink = |token: CommandToken, reply: Result<Reply<'_>, RedisError>| {
            let outcome = reply.map(owned).map_err(Failure::Redis);
            ops.complete(token, Outcome::Redis(outcome));
        };
        Some(f(&mut side.cluster, &mut sink))
    }

    /// Read-through answers came.
    pub(crate) fn deliver_lookups(&self) {
        let mut state = self.state.borrow_mut();
        let IoState {
            lookups,
            ops,
            figures,
            ..
        } = &mut *state;
        let Some(lookups) = lookups else {
            return;
        };
        for found in lookups.take() {
            figures.lookups_waiting = figures.lookups_waiting.saturating_sub(1);
            let Found { token, entry, fill } = found;
            let outcome = entry
                .map(|entry| Row { entry, fill })
                .map_err(Failure::Database);
            ops.complete(token, Outcome::Row(outcome));
        }
    }

    /// The eventfd that says read-through answers are waiting.
    pub(crate) fn lookup_ready_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.state
            .borrow()
            .lookups
            .as_ref()
            .map(|l| l.ready_fd().as_raw_fd())
    }

    /// A new turn starts at `now`.
    pub(crate) fn start_turn(&self, now: Instant) {
        self.state.borrow_mut().now = now;
    }

    /// Every task woken this turn has run: wake those waiting for that.
    /// Returns whether any did.
    pub(crate) fn end_turn(&self) -> bool {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.turn += 1;
            std::mem::take(&mut state.turn_waiters)
        };
        let any = !waiters.is_empty();
        for waker in waiters {
            waker.wake();
        }
        any
    }

    /// Detached tasks spawned since the last call.
    pub(crate) fn take_spawned(&self, into: &mut Vec<TaskFuture<()>>) {
        into.append(&mut self.state.borrow_mut().spawned);
    }

    /// Count one thing turned away for `cause`.
    pub(crate) fn count_shed(&self, cause: ShedCause) {
        self.state.borrow_mut().figures.shed(cause);
    }

    /// Count a read of a cached table the cache answered: with a value
    /// (`true`), or with "no such key".
    pub(crate) fn count_cache_hit(&self, value: bool) {
        let figures = &mut self.state.borrow_mut().figures;
        if value {
            figures.cache_hits += 1;
        } else {
            figures.cache_negative_hits += 1;
        }
    }

    /// Copy the figures counted so far, and the cluster client's, into
    /// `metrics`.
    pub(crate) fn copy_figures(&self, metrics: &mut CoreMetrics) {
        let state = self.state.borrow();
        metrics.io.clone_from(&state.figures);
        if let Backend::Cluster(side) = &state.backend {
            side.cluster.copy_figures(&mut metrics.redis);
            metrics.redis_ready = Some(side.cluster.is_serving());
        }
    }

    /// Operations issued and not yet collected.
    pub fn operations_in_flight(&self) -> usize {
        self.state.borrow().ops.in_flight()
    }

    /// The earliest time the cluster client has work to do.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        match &self.state.borrow().backend {
            Backend::Cluster(side) => Some(side.cluster.next_deadline(now)),
            _ => None,
        }
    }
}

/// The reply to a command sent with [`Io::redis`].
#[must_use = "the command is sent either way; await it for its reply"]
pub struct RedisCall {
    state: Rc<RefCell<IoState>>,
    token: Option<u64>,
}

impl Future for RedisCall {
    type Output = Result<OwnedReply, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let token = self.token.expect("polled after it finished");
        let outcome = self.state.borrow_mut().ops.poll(token, cx);
        match outcome {
            None => Poll::Pending,
            Some(Outcome::Redis(result)) => {
                self.token = None;
                Poll::Ready(result)
            }
            Some(Outcome::Row(_)) => unreachable!("a command's slot holds a reply"),
        }
    }
}

impl Drop for RedisCall {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.state.borrow_mut().ops.abandon(token);
        }
    }
}

/// The row asked for with [`Io::lookup`].
#[must_use = "the lookup is asked either way; await it for the row"]
pub struct LookupCall {
    state: Rc<RefCell<IoState>>,
    token: Option<u64>,
}

impl Future for LookupCall {
    type Output = Result<Row, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let token = self.token.expect("polled after it finished");
        let outcome = self.state.borrow_mut().ops.poll(token, cx);
        match outcome {
            None => Poll::Pending,
            Some(Outcome::Row(result)) => {
                self.token = None;
                Poll::Ready(result)
            }
            Some(Outcome::Redis(_)) => unreachable!("a lookup's slot holds a row"),
        }
    }
}

impl Drop for LookupCall {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.state.borrow_mut().ops.abandon(token);
        }
    }
}

/// Ready once the turn it was first polled in has ended; see
/// [`Io::end_of_turn`].
pub struct EndOfTurn {
    state: Rc<RefCell<IoState>>,
    turn: Option<u64>,
}

impl Future for EndOfTurn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        let current = state.turn;
        match self.turn {
            Some(turn) if current > turn => Poll::Ready(()),
            _ => {
                state.turn_waiters.push(cx.waker().clone());
                drop(state);
                self.turn.get_or_insert(current);
                Poll::Pending
            }
        }
    }
}

/// An [`Io`] without sockets, for tests of code above it: commands are
/// recorded for the test to answer, and the layout's replica counts are
/// what the test says.
pub mod script {
    use super::*;

    /// The test's end of a scripted [`Io`].
    pub struct Script {
        io: Io,
    }

    impl Script {
        /// A scripted [`Io`], every master with `replicas` online replicas
        /// (`None`: unknown), no read-through.
        pub fn new(replicas: Option<usize>) -> Script {
            let backend = Backend::Script {
                issued: Vec::new(),
                replicas,
            };
            Script {
                io: Io::with_backend(backend, None, 0, Instant::now()),
            }
        }

        /// The [`Io`] the code under test uses.
        pub fn io(&self) -> &Io {
            &self.io
        }

        /// Commands issued and not yet answered by the test, oldest first.
        pub fn take_issued(&self) -> Vec<(CommandToken, Command)> {
            match &mut self.io.state.borrow_mut().backend {
                Backend::Script { issued, .. } => std::mem::take(issued),
                _ => Vec::new(),
            }
        }

        /// Answer command `token`.
        pub fn answer(&self, token: CommandToken, reply: Result<OwnedReply, Failure>) {
            self.io
                .state
                .borrow_mut()
                .ops
                .complete(token, Outcome::Redis(reply));
        }

        /// Change the replica counts the layout reports.
        pub fn set_replicas(&self, count: Option<usize>) {
            if let Backend::Script { replicas, .. } = &mut self.io.state.borrow_mut().backend {
                *replicas = count;
            }
        }

        /// End the current turn (see [`Io::end_of_turn`]).
        pub fn end_turn(&self) {
            self.io.end_turn();
        }

        /// Detached tasks spawned and not yet taken.
        pub fn take_spawned(&self) -> Vec<TaskFuture<()>> {
            let mut spawned = Vec::new();
            self.io.take_spawned(&mut spawned);
            spawned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::script::Script;
    use super::*;
    use std::task::Waker;

    fn poll<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn commands_go_out_when_issued_and_replies_come_back_by_token() {
        let script = Script::new(None);
        let io = script.io();
        let mut first = io.redis(Command::get(b"a"));
        let mut second = io.redis(Command::get(b"b"));
        let issued = script.take_issued();
        assert_eq!(issued.len(), 2, "both issued before anything awaited");
        assert!(poll(&mut first).is_pending());
        // Out of order.
        script.answer(issued[1].0, Ok(OwnedReply::Bulk(b"B".to_vec())));
        script.answer(issued[0].0, Ok(OwnedReply::Nil));
        assert_eq!(
            poll(&mut second),
            Poll::Ready(Ok(OwnedReply::Bulk(b"B".to_vec())))
        );
        assert_eq!(poll(&mut first), Poll::Ready(Ok(OwnedReply::Nil)));
        assert_eq!(io.operations_in_flight(), 0);
    }

    #[test]
    fn an_abandoned_operation_frees_its_slot_when_its_outcome_comes() {
        let script = Script::new(None);
        let io = script.io();
        let call = io.redis(Command::get(b"a"));
        let (token, _) = script.take_issued().remove(0);
        drop(call);
        assert_eq!(io.operations_in_flight(), 1, "still out on the wire");
        script.answer(token, Ok(OwnedReply::Nil));
        assert_eq!(io.operations_in_flight(), 0);
        // A late second answer for the reused slot's old token is ignored.
        let mut next = io.redis(Command::get(b"b"));
        let (next_token, _) = script.take_issued().remove(0);
        assert_ne!(next_token, token, "the slot's generation moved on");
        script.answer(token, Ok(OwnedReply::Integer(1)));
        assert!(poll(&mut next).is_pending());
    }

    #[test]
    fn without_redis_or_a_database_core_calls_fail_at_once() {
        let io = Io::new(
            IoConfig {
                max_redis_in_flight: 1,
                executor: 0,
            },
            None,
            None,
            Instant::now(),
        );
        assert_eq!(
            poll(&mut io.redis(Command::get(b"a"))),
            Poll::Ready(Err(Failure::NoRedis))
        );
        assert_eq!(
            poll(&mut io.lookup(0, b"a".to_vec())),
            Poll::Ready(Err(Failure::NoReadThrough))
        );
    }

    #[test]
    fn end_of_turn_is_ready_only_after_the_turn_it_was_polled_in() {
        let script = Script::new(None);
        let mut end = script.io().end_of_turn();
        assert!(poll(&mut end).is_pending());
        assert!(poll(&mut end).is_pending(), "still the same turn");
        script.end_turn();
        assert_eq!(poll(&mut end), Poll::Ready(()));
    }
}
