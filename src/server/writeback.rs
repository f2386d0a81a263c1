//! `millrace writeback`: the database core as a process of its own,
//! draining the write-back queue into PostgreSQL until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use super::DatabaseCore;
use super::admin::{Admin, AdminLimits};
use super::signals::{ShutdownSignals, signal_name};
use crate::lifecycle::{Lifecycle, Readiness, ReadinessChecks, Stage};
use crate::metrics::MetricsRegistry;
use crate::redis::cluster::ClusterConfig;
use crate::writeback::drain::{Fault, WritebackConfig};
use crate::writeback::queue::Queue;
use crate::writeback::table::Tables;
use crate::writeback::{check_queue_layout, db};

/// `millrace writeback` flags; each also reads its environment variable.
#[derive(clap::Args, Debug)]
pub struct WritebackOptions {
    /// Redis Cluster seed nodes, host:port[,host:port...]
    #[arg(
        long,
        env = "MILLRACE_REDIS_SEEDS",
        value_delimiter = ',',
        required = true
    )]
    pub redis: Vec<SocketAddr>,
    /// Speak TLS to Redis (--redis names the nodes' tls-ports); each node's certificate and host are verified
    #[arg(long, env = "MILLRACE_REDIS_TLS")]
    pub redis_tls: bool,
    /// PEM file of CAs to trust for Redis's certificates instead of the system's
    #[arg(
        long,
        env = "MILLRACE_REDIS_CA_FILE",
        value_name = "FILE",
        default_value = ""
    )]
    pub redis_ca_file: String,
    /// The name every Redis node's certificate must hold [default: each node's IP address]
    #[arg(long, env = "MILLRACE_REDIS_TLS_SERVER_NAME", default_value = "")]
    pub redis_tls_server_name: String,
    /// PEM file of a client certificate chain to present to Redis, with --redis-tls-key-file
    #[arg(
        long,
        env = "MILLRACE_REDIS_TLS_CERT_FILE",
        value_name = "FILE",
        default_value = ""
    )]
    pub redis_tls_cert_file: String,
    /// PEM file of that client certificate's private key
    #[arg(
        long,
        env = "MILLRACE_REDIS_TLS_KEY_FILE",
        value_name = "FILE",
        default_value = ""
    )]
    pub redis_tls_key_file: String,
    /// PostgreSQL connection URL, such as postgres://user:password@127.0.0.1:5440/millrace; add ?sslmode=require for TLS (the certificate and host name verified)
    #[arg(long, env = "MILLRACE_POSTGRES_URL")]
    pub postgres: String,
    /// PEM file of CAs to trust for PostgreSQL's certificate, besides the system's (needs sslmode=require)
    #[arg(long, env = "MILLRACE_POSTGRES_CA_FILE", value_name = "FILE")]
    pub postgres_ca_file: Option<std::path::PathBuf>,
    /// Write-back stream partitions; must match the servers' [default: 16]
    #[arg(long, env = "MILLRACE_WRITEBACK_PARTITIONS", default_value_t = 16)]
    pub partitions: u16,
    /// Rows per transaction at most [default: 5000]
    #[arg(long, env = "MILLRACE_BATCH_ROWS", default_value_t = 5000)]
    pub batch_rows: usize,
    /// Time a batch gathers before it is written, in milliseconds [default: 5]
    #[arg(long, env = "MILLRACE_BATCH_MS", default_value_t = 5)]
    pub batch_ms: u64,
    /// Consumer name in the group; keep it across restarts [default: db-0]
    #[arg(long, env = "MILLRACE_WRITEBACK_CONSUMER", default_value = "db-0")]
    pub consumer: String,
    /// How long the lease on the consumer name lasts unless renewed (every fifth of it), in milliseconds; a second core under the same name refuses to start, and a restart after a crash waits at most this [default: 5000]
    #[arg(long, env = "MILLRACE_WRITEBACK_LEASE_MS", default_value_t = 5000)]
    pub lease_ms: u64,
    /// Entries pending this long on another consumer are taken over, in milliseconds [default: 30000]
    #[arg(long, env = "MILLRACE_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,
    /// Longest a PostgreSQL connect or batch write may take before the connection is dropped and the batch written again, in milliseconds [default: 10000]
    #[arg(long, env = "MILLRACE_DB_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_timeout_ms: u64,
    /// Time a key's cache entry stays in Redis once its write is in PostgreSQL, in milliseconds; from then on the eviction policy may also remove it [default: 3600000]
    #[arg(long, env = "MILLRACE_CACHE_TTL_MS", default_value_t = 3_600_000)]
    pub cache_ttl_ms: u64,
    /// Time a deleted key's tombstone stays in Redis once the delete is in PostgreSQL, in milliseconds [default: 1000]
    #[arg(long, env = "MILLRACE_MISS_TTL_MS", default_value_t = 1000)]
    pub miss_ttl_ms: u64,
    /// Start even when Redis or PostgreSQL is set up so that an acknowledged write would not survive a restart; each finding is still logged as an error [default: false]
    #[arg(long, env = "MILLRACE_ACCEPT_UNSAFE_DURABILITY")]
    pub accept_unsafe_durability: bool,
    /// CPU to pin the database core to [default: not pinned]
    #[arg(long, env = "MILLRACE_DB_CORE")]
    pub core: Option<usize>,
    /// Address of an admin listener serving /metrics, /livez and /readyz for this database core [default: none]
    #[arg(long, env = "MILLRACE_WRITEBACK_ADMIN_LISTEN", value_name = "IP:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Dependencies /readyz also requires: writeback (a commit, or the queue seen empty, within --readyz-drain-stall-ms); empty: only starting and draining [default: empty]
    #[arg(long, env = "MILLRACE_WRITEBACK_READYZ_CHECKS", default_value = "")]
    pub readyz_checks: String,
    /// Time without progress after which the writeback readiness check fails, in milliseconds [default: 30000]
    #[arg(
        long,
        env = "MILLRACE_WRITEBACK_READYZ_DRAIN_STALL_MS",
        default_value_t = 30_000
    )]
    pub readyz_drain_stall_ms: u64,
}

/// The test-only fault switch: `MILLRACE_FAULT=kill-before-insert` or
/// `kill-after-commit`.
const FAULT_ENV: &str = "MILLRACE_FAULT";

impl WritebackOptions {
    /// Check the values and build the configuration for writing `tables`.
    /// The Redis user and password come from `MILLRACE_REDIS_USER` and
    /// `MILLRACE_REDIS_PASSWORD`.
    pub fn resolve(self, tables: Tables) -> Result<WritebackConfig, String> {
        if self.partitions == 0 {
            return Err("--partitions must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.batch_rows) {
            return Err("--batch-rows must be from 1 to 1000000".into());
        }
        let mut redis = ClusterConfig::new(self.redis).credentials_from_env();
        redis.tls = super::config::redis_tls(
            self.redis_tls,
            &self.redis_ca_file,
            &self.redis_tls_server_name,
            &self.redis_tls_cert_file,
            &self.redis_tls_key_file,
        )?;
        if let Some(tls) = &redis.tls {
            tls.client.build().map_err(|e| format!("Redis TLS: {e}"))?;
        }
        let mut config = WritebackConfig::new(redis, self.postgres, tables);
        db::check_url(&config.postgres_url, self.postgres_ca_file.as_deref())?;
        config.postgres_ca_file = self.postgres_ca_file;
        config.partitions = self.partitions;
        config.batch_rows = self.batch_rows;
        config.batch_ms = Duration::from_millis(self.batch_ms);
        if self.consumer.is_empty() {
            return Err("--consumer must not be empty".into());
        }
        config.consumer = self.consumer;
        if self.lease_ms < 100 {
            return Err("--lease-ms must be at least 100".into());
        }
        config.lease_ttl = Duration::from_millis(self.lease_ms);
        config.claim_idle = Duration::from_millis(self.claim_idle_ms);
        if self.db_timeout_ms == 0 {
            return Err("--db-timeout-ms must be at least 1".into());
        }
        config.db_timeout = Duration::from_millis(self.db_timeout_ms);
        if self.cache_ttl_ms == 0 || self.miss_ttl_ms == 0 {
            return Err("--cache-ttl-ms and --miss-ttl-ms must be at least 1".into());
        }
        config.cache_ttl_ms = self.cache_ttl_ms;
        config.miss_ttl_ms = self.miss_ttl_ms;
        config.accept_unsafe_durability = self.accept_unsafe_durability;
        config.fault = match std::env::var(FAULT_ENV).ok().as_deref() {
            None | Some("") => None,
            Some("kill-before-insert") => Some(Fault::KillBeforeInsert),
            Some("kill-after-commit") => Some(Fault::KillAfterCommit),
            Some(other) => {
                return Err(format!(
                    "{FAULT_ENV}={other}: the faults are kill-before-insert and kill-after-commit"
                ));
            }
        };
        Ok(config)
    }
}

/// `millrace writeback`: drain `tables`' records until SIGTERM or SIGINT,
/// then report.
pub fn run_command(options: WritebackOptions, tables: Tables) -> Result<(), String> {
    let pin = options.core;
    let admin_listen = options.admin_listen;
    let checks = ReadinessChecks::parse(
        &options.readyz_checks,
        Duration::from_millis(options.readyz_drain_stall_ms),
    )?;
    if checks.redis {
        return Err("--readyz-checks: redis is a check of serve's executors".into());
    }
    let config = options.resolve(tables)?;
    // The same checks as `serve`'s, before anything is read.
    let mut client = crate::redis::driver::Client::connect(config.redis.clone())
        .map_err(|e| format!("cannot use the Redis Cluster: {e}"))?;
    check_queue_layout(&mut client, &Queue::new(config.partitions))?;
    crate::host::durability::check_at_start(
        &mut client,
        None,
        Some((
            &config.postgres_url,
            config.postgres_ca_file.as_deref(),
            config.db_timeout,
        )),
        config.accept_unsafe_durability,
    )?;
    drop(client);
    let signals =
        ShutdownSignals::block(false).map_err(|e| format!("cannot block signals: {e}"))?;
    let lifecycle = Arc::new(Lifecycle::new());
    let registry =
        Arc::new(MetricsRegistry::new(&[], Vec::new()).with_writeback(Arc::clone(&config.metrics)));
    let admin = match admin_listen {
        None => None,
        Some(addr) => {
            let readiness = Readiness::new(Arc::clone(&lifecycle), Arc::clone(&registry), checks);
            let admin = Admin::start(addr, registry, Arc::new(readiness), AdminLimits::default())?;
            tracing::info!(admin = %admin.addr(), "admin listening (/metrics, /livez, /readyz)");
            Some(admin)
        }
    };
    let core = DatabaseCore::start(config, None, pin)?;
    lifecycle.set(Stage::Ready);
    while !core.is_finished() {
        if let Some(signal) = signals.wait(Duration::from_millis(100)) {
            tracing::info!(
                signal = signal_name(signal),
                "stopping after the batch in hand"
            );
            break;
        }
    }
    lifecycle.set(Stage::Draining);
    let stopped = core.stop();
    if let Some(admin) = admin {
        admin.stop();
    }
    stopped
}
