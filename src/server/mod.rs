//! Starting a server: [`App`] takes a service's routes, write-back tables
//! and per-core state, and serves them the way `millrace serve` serves its
//! own: probe the kernel, check Redis and PostgreSQL, bind one listener
//! per executor, start the pinned executors (and the database core, with
//! a PostgreSQL URL), then wait for signals. The first SIGTERM or SIGINT
//! drains (readiness fails, accepting stops, in-flight requests finish); a
//! second exits at once.

pub mod admin;
pub mod config;
pub mod program;
pub mod signals;
pub mod writeback;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use self::admin::Admin;
use self::config::ServeConfig;
use self::signals::{ShutdownSignals, signal_name};
use crate::app::auth::Tokens;
use crate::app::{CoreApp, Routes, Shared, Store, Table, WritePath};
use crate::host::probe;
use crate::lifecycle::{Lifecycle, Readiness, Stage};
use crate::metrics::MetricsRegistry;
use crate::ring;
use crate::runtime::{Executor, ExecutorTls, Io};
use crate::tls::server::Certificates;
use crate::writeback::drain::{Totals, WritebackConfig};
use crate::writeback::lookup::{self, LookupService};
use crate::writeback::queue::{Caps, Queue};
use crate::writeback::table::Tables;

/// How often the main thread looks at its executors between signals.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);

/// How often the TLS files are looked at for changes.
const CERTIFICATE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a core's state is made from, on the core's own thread.
pub struct Core<'a> {
    /// The executor's index, from 0.
    pub index: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// Its operations.
    pub io: &'a Io,
}

type MakeState<S> = Arc<dyn Fn(&Core<'_>) -> S + Send + Sync>;

/// A service: routes, write-back tables and per-core state, served the way
/// `millrace serve` serves millrace's own routes.
pub struct App<S> {
    make_state: MakeState<S>,
    routes: Routes<S>,
    tables: Vec<Table>,
}

impl<S: 'static> App<S> {
    /// A service whose cores each make their state with `make_state`, on
    /// their own thread (the state need not be `Send`).
    pub fn new(make_state: impl Fn(&Core<'_>) -> S + Send + Sync + 'static) -> App<S> {
        App {
            make_state: Arc::new(make_state),
            routes: Routes::new(),
            tables: Vec::new(),
        }
    }

    /// Add `routes`, after those already given.
    pub fn routes(mut self, routes: Routes<S>) -> App<S> {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Write records of `table` back to PostgreSQL.
    pub fn table(mut self, table: Table) -> App<S> {
        self.tables.push(table);
        self
    }

    /// Run as a program without options of its own (see [`program`]):
    /// `NAME serve ...` or `NAME writeback ...`.
    pub fn main(self, name: &'static str, about: &'static str) -> std::process::ExitCode {
        program::run::<program::NoOptions, S>(name, about, |_| self)
    }

    /// The write-back tables.
    pub fn write_back_tables(&self) -> Result<Tables, String> {
        Tables::new(self.tables.clone())
    }

    /// Serve until a signal drains the server. Errors are complete
    /// sentences for an operator.
    pub fn serve(self, config: &ServeConfig) -> Result<(), String> {
        let tables = self.write_back_tables()?;
        let routes = Arc::new(self.routes.compile()?);
        serve(config, routes, self.make_state, tables)
    }
}

fn serve<S: 'static>(
    config: &ServeConfig,
    routes: Arc<crate::app::RouteTable<S>>,
    make_state: MakeState<S>,
    tables: Tables,
) -> Result<(), String> {
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
        crate::writeback::check_queue_layout(
            &mut client,
            &Queue::new(config.writeback_partitions),
        )?;
        let ca_file = config
            .database_core(&tables)
            .and_then(|core| core.postgres_ca_file);
        let postgres = (!config.postgres_url.is_empty()).then(|| {
            (
                config.postgres_url.as_str(),
                ca_file.as_deref(),
                Duration::from_millis(config.db_timeout_ms),
            )
        });
        crate::host::durability::check_at_start(
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
    let listeners = bind_listeners(config.listen, &cpus, config.listen_backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listeners[0]
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(config.listen);
    let (mut tls_listeners, tls_local, certificates) = match config.tls()? {
        None => (Vec::new(), None, None),
        Some((addr, files)) => {
            let certificates = Certificates::load(files)?;
            executor_config.tls = Some(ExecutorTls {
                certificates: Arc::clone(&certificates),
                handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
                max_unsent_records: config.tls_max_unsent_records,
            });
            let listeners = bind_listeners(addr, &cpus, config.listen_backlog)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listeners[0].local_addr().ok().and_then(|a| a.as_socket());
            (listeners, local, Some(certificates))
        }
    };
    tls_listeners.reverse();

    let signals = ShutdownSignals::block(true).map_err(|e| format!("cannot block signals: {e}"))?;
    let lifecycle = Arc::new(Lifecycle::new());
    let path = config.redis().map(|_| {
        Arc::new(WritePath {
            queue: Queue::new(config.writeback_partitions),
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
            ack_replicas: config.ack_replicas,
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
        })
    });
    let auth = Tokens::load(config.auth_tokens_path())?;
    if auth.is_some() {
        tracing::info!("protected routes require a bearer token");
    }
    let database_core_config = config.database_core(&tables);
    let mut registry = MetricsRegistry::new(&cpus, routes.names().to_vec());
    if let Some(core) = &database_core_config {
        registry = registry.with_writeback(Arc::clone(&core.metrics));
    }
    let registry = Arc::new(registry);
    let readiness = Arc::new(Readiness::new(
        Arc::clone(&lifecycle),
        Arc::clone(&registry),
        config.readiness_checks()?,
    ));
    let shared = Arc::new(Shared {
        auth,
        lifecycle: Arc::clone(&lifecycle),
        readiness: Arc::clone(&readiness),
        registry: Arc::clone(&registry),
        public_metrics: config.public_metrics,
    });
    // Up before the executors and down after them, so that /readyz there
    // says "starting" and "draining" while they do.
    let admin = match config.admin_address()? {
        None => None,
        Some(addr) => {
            let admin = Admin::start(
                addr,
                Arc::clone(&registry),
                readiness,
                config.admin_limits(),
            )?;
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
            (
                Some(DatabaseCore::start(writeback, Some(service), pin)?),
                clients,
            )
        }
    };
    lookup_clients.reverse();

    let (started_tx, started_rx) = mpsc::channel();
    let mut executors = Vec::with_capacity(cpus.len());
    for (index, (cpu, listener)) in cpus.iter().copied().zip(listeners).enumerate() {
        let lookups = lookup_clients.pop();
        let tls_listener = tls_listeners.pop();
        let wake = ring::event_fd().map_err(|e| format!("cannot create an eventfd: {e}"))?;
        let executor_wake = wake
            .try_clone()
            .map_err(|e| format!("cannot duplicate an eventfd: {e}"))?;
        let executor_config = executor_config.clone();
        let started = started_tx.clone();
        let (routes, make_state, shared) = (
            Arc::clone(&routes),
            Arc::clone(&make_state),
            Arc::clone(&shared),
        );
        let (path, tables, registry) = (path.clone(), tables.clone(), Arc::clone(&registry));
        let route_names = routes.names().to_vec();
        let thread = thread::Builder::new()
            .name(format!("millrace-core-{cpu}"))
            .spawn(move || -> Result<(), String> {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    let error = format!("cannot pin an executor to CPU {cpu}");
                    let _ = started.send(Err(error.clone()));
                    return Err(error);
                }
                let make_app = |io: &Io| {
                    let state = make_state(&Core { index, cpu, io });
                    let store = Store::new(io.clone(), path, tables);
                    CoreApp::new(routes, state, store, shared)
                };
                match Executor::new(
                    executor_config,
                    listener,
                    tls_listener,
                    executor_wake,
                    lookups,
                    make_app,
                    route_names,
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
                            .run(&|metrics| registry.publish(index, metrics))
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
    match tls_local {
        Some(tls_local) => {
            tracing::info!(listen = %local, tls_listen = %tls_local, cpus = ?cpus, "listening");
        }
        None => tracing::info!(listen = %local, cpus = ?cpus, "listening"),
    }

    let served = supervise(
        &signals,
        executors,
        database_core.as_ref(),
        certificates.as_deref(),
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

/// The database core's thread: beside the executors in `serve` (with
/// read-through), or alone in `writeback`.
pub(crate) struct DatabaseCore {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Totals, String>>,
}

impl DatabaseCore {
    /// Start it, pinned to CPU `pin` if given.
    pub(crate) fn start(
        config: WritebackConfig,
        lookups: Option<LookupService>,
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
                crate::writeback::drain::run(&config, &core_stop, lookups)
            })
            .map_err(|e| format!("cannot start the database core: {e}"))?;
        tracing::info!(cpu = ?pin, "database core started");
        Ok(DatabaseCore { stop, thread })
    }

    /// It stopped (on its own: an error, or asked to).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stop after the batch in hand; report what it did.
    pub(crate) fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let totals = self
            .thread
            .join()
            .map_err(|_| "the database core panicked".to_string())??;
        tracing::info!(
            rows = totals.rows,
            batches = totals.batches,
            retries = totals.retries,
            malformed = totals.malformed,
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
    certificates: Option<&Certificates>,
    lifecycle: &Lifecycle,
    drain_delay: Duration,
) -> Result<(), String> {
    let mut failure = None;
    let mut next_look = Instant::now() + CERTIFICATE_POLL_INTERVAL;
    loop {
        if let Some(signal) = stop_signal(signals, SUPERVISE_INTERVAL, certificates) {
            tracing::info!(signal = signal_name(signal), "draining");
            break;
        }
        if let Some(certificates) = certificates
            && Instant::now() >= next_look
        {
            next_look = Instant::now() + CERTIFICATE_POLL_INTERVAL;
            if let Some(result) = certificates.reload_if_changed() {
                log_reload(certificates, result);
            }
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
        let left = delay_end.saturating_duration_since(Instant::now());
        if let Some(signal) = stop_signal(signals, left, certificates) {
            exit_now(signal);
        }
    }
    drain(&executors, lifecycle);
    while !executors.iter().all(|e| e.thread.is_finished()) {
        if let Some(signal) = stop_signal(signals, SUPERVISE_INTERVAL, certificates) {
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

/// A signal that stops the server, if one arrives within `timeout`.
/// SIGHUP is not one: it reloads the HTTPS listener's files, whenever it
/// comes.
fn stop_signal(
    signals: &ShutdownSignals,
    timeout: Duration,
    certificates: Option<&Certificates>,
) -> Option<i32> {
    match (signals.wait(timeout), certificates) {
        (Some(libc::SIGHUP), Some(certificates)) => {
            log_reload(certificates, certificates.reload());
            None
        }
        (Some(libc::SIGHUP), None) => {
            tracing::info!("SIGHUP: nothing to reload (no tls_listen)");
            None
        }
        (signal, _) => signal,
    }
}

/// Say how a reload of the HTTPS listener's files went; a failure leaves
/// the certificate in use.
fn log_reload(certificates: &Certificates, result: Result<(), String>) {
    let files = certificates.files();
    match result {
        Ok(()) => tracing::info!(
            cert = %files.cert.display(),
            "TLS certificate reloaded; new connections use it"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "TLS certificate not reloaded; the one in use stays"
        ),
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
/// connections over them, each marked with its executor's CPU
/// (`SO_INCOMING_CPU`): the kernel hands a connection to the listener of
/// the CPU that processed its packets, so with a NIC queue's interrupts on
/// that CPU the connection stays on one core from the wire to the answer.
/// Port 0 is resolved by the first bind.
fn bind_listeners(addr: SocketAddr, cpus: &[usize], backlog: u32) -> io::Result<Vec<Socket>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_cpu_affinity(cpu)?;
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
