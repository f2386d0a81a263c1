//! `millrace serve`: probe the kernel, bind one listener per executor, start
//! the pinned executors, then wait for signals. The first SIGTERM or SIGINT
//! drains (readiness fails, accepting stops, in-flight requests finish); a
//! second exits at once.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::Admin;
use crate::api::{ApiShared, WritePath};
use crate::config::ServeConfig;
use crate::lifecycle::{Lifecycle, Stage};
use crate::metrics::MetricsRegistry;
use crate::payload::BatchLimits;
use crate::probe;
use crate::reactor::{Executor, ring};
use crate::signals::{ShutdownSignals, signal_name};
use crate::writeback::core::{Totals, WritebackConfig};
use crate::writeback::lookup::{self, LookupService};
use crate::writeback::queue::{Caps, Queue};

/// How often the main thread looks at its executors between signals.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);

/// Serve until a signal drains the server. Errors are complete sentences
/// for an operator.
pub fn serve(config: &ServeConfig) -> Result<(), String> {
    let features = probe::probe_ring()?;
    if let Some(missing) = features.missing() {
        return Err(missing);
    }
    let cpus = config.cores.resolve(&available_cpus())?;
    if let Some(redis) = config.redis() {
        // Fail at start, with the reason, rather than answer every write 503.
        let mut client = crate::redis::driver::Client::connect(redis).map_err(|e| {
            format!(
                "cannot use the Redis Cluster at {}: {e}",
                config.redis_seeds
            )
        })?;
        check_queue_layout(&mut client, &Queue::new(config.writeback_partitions))?;
        let ca_file = config
            .database_core()
            .and_then(|core| core.postgres_ca_file);
        let postgres = (!config.postgres_url.is_empty()).then(|| {
            (
                config.postgres_url.as_str(),
                ca_file.as_deref(),
                Duration::from_millis(config.db_timeout_ms),
            )
        });
        crate::durability::check_at_start(
            &mut client,
            Some(config.ack_replicas),
            postgres,
            config.accept_unsafe_durability,
        )?;
    }
    // Client sockets are direct descriptors, outside the file table, but
    // each ring's table of them may not exceed the open-files limit.
    let mut executor_config = config.executor();
    let nofile = raise_open_files_limit();
    if nofile > 0 && executor_config.fit_open_files_limit(nofile) {
        tracing::warn!(
            open_files_limit = nofile,
            max_connections = executor_config.max_connections,
            "the open files limit caps each core's connections below max_connections; raise LimitNOFILE / ulimit -n"
        );
    }
    let listeners = bind_listeners(config.listen, cpus.len(), config.listen_backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listeners[0]
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(config.listen);

    let signals = ShutdownSignals::block().map_err(|e| format!("cannot block signals: {e}"))?;
    let lifecycle = Arc::new(Lifecycle::new());
    let writes = config.redis().map(|_| WritePath {
        queue: Queue::new(config.writeback_partitions),
        limits: BatchLimits {
            max_events: config.max_batch_events,
            max_bytes: config.max_body_bytes,
        },
        caps: Caps {
            entries: config
                .max_backlog
                .div_ceil(u64::from(config.writeback_partitions)),
            bytes: config
                .max_backlog_bytes
                .div_ceil(u64::from(config.writeback_partitions)),
        },
        cache_ttl_ms: config.cache_ttl_ms,
        miss_ttl_ms: config.miss_ttl_ms,
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        ack_replicas: config.ack_replicas,
        ack_timeout: Duration::from_millis(config.ack_timeout_ms),
    });
    let auth = config.auth_tokens()?;
    if auth.is_some() {
        tracing::info!("the /v1 routes require a bearer token");
    }
    let database_core_config = config.database_core();
    let mut registry = MetricsRegistry::new(&cpus);
    if let Some(core) = &database_core_config {
        registry = registry.with_writeback(Arc::clone(&core.metrics));
    }
    let registry = Arc::new(registry);
    let shared = Arc::new(ApiShared {
        auth,
        writes,
        lifecycle: Arc::clone(&lifecycle),
        registry: Arc::clone(&registry),
        public_metrics: config.public_metrics,
    });
    // Up before the executors and down after them, so that /readyz there
    // says "starting" and "draining" while they do.
    let admin = match config.admin_address()? {
        None => None,
        Some(addr) => {
            let admin = Admin::start(addr, registry, Arc::clone(&lifecycle))?;
            tracing::info!(admin = %admin.addr(), "admin listening (/metrics, /livez, /readyz)");
            Some(admin)
        }
    };

    // The database core, if this process runs one, with the read-through
    // channels each executor gets an end of.
    let (database_core, mut lookup_clients) = match database_core_config {
        None => (None, Vec::new()),
        Some(writeback) => {
            let (service, clients) = lookup::channels(cpus.len(), config.max_pending_lookups)
                .map_err(|e| format!("cannot create the read-through channels: {e}"))?;
            let pin = usize::try_from(config.db_core).ok();
            (Some(DatabaseCore::start(writeback, service, pin)?), clients)
        }
    };
    lookup_clients.reverse();

    let (started_tx, started_rx) = mpsc::channel();
    let mut executors = Vec::with_capacity(cpus.len());
    for (index, (cpu, listener)) in cpus.iter().copied().zip(listeners).enumerate() {
        let lookups = lookup_clients.pop();
        let wake = ring::event_fd().map_err(|e| format!("cannot create an eventfd: {e}"))?;
        let executor_wake = wake
            .try_clone()
            .map_err(|e| format!("cannot duplicate an eventfd: {e}"))?;
        let executor_config = executor_config.clone();
        let shared = Arc::clone(&shared);
        let started = started_tx.clone();
        let thread = thread::Builder::new()
            .name(format!("millrace-core-{cpu}"))
            .spawn(move || -> Result<(), String> {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    let error = format!("cannot pin an executor to CPU {cpu}");
                    let _ = started.send(Err(error.clone()));
                    return Err(error);
                }
                match Executor::new(
                    executor_config,
                    listener,
                    executor_wake,
                    lookups,
                    shared,
                    index,
                    cpu,
                ) {
                    Err(e) => {
                        let error =
                            format!("executor on CPU {cpu}: {}", probe::explain_setup_error(&e));
                        let _ = started.send(Err(error.clone()));
                        Err(error)
                    }
                    Ok((executor, flags)) => {
                        tracing::info!(cpu, flags = ?flags.names(), "executor started");
                        let _ = started.send(Ok(()));
                        drop(started);
                        let result = executor
                            .run()
                            .map_err(|e| format!("executor on CPU {cpu} failed: {e}"));
                        tracing::info!(cpu, "executor stopped");
                        result
                    }
                }
            })
            .map_err(|e| format!("cannot start an executor thread: {e}"))?;
        executors.push(Running { cpu, wake, thread });
    }
    drop(started_tx);

    let mut startup_error = None;
    for _ in 0..executors.len() {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                startup_error.get_or_insert(e);
            }
            Err(_) => {
                startup_error.get_or_insert("an executor exited during start-up".into());
            }
        }
    }
    if let Some(error) = startup_error {
        drain(&executors, &lifecycle);
        join_all(executors);
        if let Some(admin) = admin {
            admin.stop();
        }
        if let Some(core) = database_core {
            let _ = core.stop();
        }
        return Err(error);
    }
    lifecycle.set(Stage::Ready);
    tracing::info!(listen = %local, cpus = ?cpus, "listening");

    let served = supervise(
        &signals,
        executors,
        database_core.as_ref(),
        &lifecycle,
        Duration::from_millis(config.drain_delay_ms),
    );
    // The executors are gone: nothing more is accepted. The database core
    // finishes the batch in hand; the rest waits in Redis for its restart.
    let stopped = database_core.map_or(Ok(()), DatabaseCore::stop);
    if let Some(admin) = admin {
        admin.stop();
    }
    match (served, stopped) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(served), Err(core)) => Err(format!("{served}; {core}")),
    }
}

/// Record the queue's partition count in the cluster, or check it against
/// the one recorded: a server or database core with another count refuses
/// to start.
pub fn check_queue_layout(
    client: &mut crate::redis::driver::Client,
    queue: &Queue,
) -> Result<(), String> {
    match client.call(queue.record_layout()) {
        Ok(crate::redis::resp::OwnedReply::Bulk(recorded)) => queue.check_layout(&recorded),
        other => Err(format!(
            "cannot read the write-back queue's layout from Redis: {other:?}"
        )),
    }
}

/// The database core's thread, when this process runs one.
struct DatabaseCore {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Totals, String>>,
}

impl DatabaseCore {
    fn start(
        config: WritebackConfig,
        lookups: LookupService,
        pin: Option<usize>,
    ) -> Result<DatabaseCore, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let core_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("millrace-db".into())
            .spawn(move || {
                if let Some(cpu) = pin
                    && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
                {
                    return Err(format!("cannot pin the database core to CPU {cpu}"));
                }
                crate::writeback::core::run(&config, &core_stop, Some(lookups))
            })
            .map_err(|e| format!("cannot start the database core: {e}"))?;
        tracing::info!(cpu = ?pin, "database core started");
        Ok(DatabaseCore { stop, thread })
    }

    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let totals = self
            .thread
            .join()
            .map_err(|_| "the database core panicked".to_string())??;
        tracing::info!(
            rows = totals.rows,
            batches = totals.batches,
            retries = totals.retries,
            "database core stopped"
        );
        Ok(())
    }
}

/// An executor thread and the eventfd that wakes it.
struct Running {
    cpu: usize,
    wake: OwnedFd,
    thread: JoinHandle<Result<(), String>>,
}

/// Wait for a signal or an executor failure, then drain and join.
fn supervise(
    signals: &ShutdownSignals,
    executors: Vec<Running>,
    database_core: Option<&DatabaseCore>,
    lifecycle: &Lifecycle,
    drain_delay: Duration,
) -> Result<(), String> {
    let mut failure = None;
    loop {
        if let Some(signal) = signals.wait(SUPERVISE_INTERVAL) {
            tracing::info!(signal = signal_name(signal), "draining");
            break;
        }
        if let Some(stopped) = executors.iter().find(|e| e.thread.is_finished()) {
            failure = Some(format!(
                "the executor on CPU {} stopped unexpectedly",
                stopped.cpu
            ));
            break;
        }
        if database_core.is_some_and(DatabaseCore::is_finished) {
            // Its own error is reported when it is joined.
            failure = Some("the database core stopped unexpectedly".into());
            break;
        }
    }
    lifecycle.set(Stage::Draining);
    // Readiness fails first, so a load balancer can move traffic away before
    // accepting stops.
    let delay_end = Instant::now() + drain_delay;
    while Instant::now() < delay_end {
        if let Some(signal) = signals.wait(delay_end.saturating_duration_since(Instant::now())) {
            exit_now(signal);
        }
    }
    drain(&executors, lifecycle);
    while !executors.iter().all(|e| e.thread.is_finished()) {
        if let Some(signal) = signals.wait(SUPERVISE_INTERVAL) {
            exit_now(signal);
        }
    }
    let errors = join_all(executors);
    match (failure, errors.into_iter().next()) {
        (_, Some(error)) | (Some(error), None) => Err(error),
        (None, None) => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

fn exit_now(signal: i32) -> ! {
    tracing::warn!(
        signal = signal_name(signal),
        "second signal: exiting at once"
    );
    std::process::exit(128 + signal);
}

fn drain(executors: &[Running], lifecycle: &Lifecycle) {
    lifecycle.set(Stage::Draining);
    for executor in executors {
        ring::signal(&executor.wake);
    }
}

/// Join every executor thread; returns the errors they reported.
fn join_all(executors: Vec<Running>) -> Vec<String> {
    executors
        .into_iter()
        .filter_map(|e| match e.thread.join() {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!("the executor on CPU {} panicked", e.cpu)),
        })
        .collect()
}

/// The CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// One listener per executor on the same address, so the kernel spreads
/// connections over them. Port 0 is resolved by the first bind.
fn bind_listeners(addr: SocketAddr, count: usize, backlog: u32) -> io::Result<Vec<Socket>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        // Accepted sockets inherit it: responses leave without Nagle's delay.
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no socket address"))?;
        }
        listeners.push(socket);
    }
    Ok(listeners)
}

/// Raise the soft open-files limit to the hard one; returns the result.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}
