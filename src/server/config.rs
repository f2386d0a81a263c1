//! `millrace serve` configuration. Each value comes from, in order of
//! precedence: a command-line flag, its `MILLRACE_*` environment variable,
//! the TOML file named by `--config`, the default. Every option is listed once
//! below; the file's keys are the flag names with `_` for `-`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::Limits;
use crate::http::conn::MAX_PIPELINE_DEPTH;
use crate::http::request::{HeadLimits, MAX_HEADERS_LIMIT};
use crate::lifecycle::ReadinessChecks;
use crate::redis::cluster::{ClusterConfig, RedisTls};
use crate::runtime::ExecutorConfig;
use crate::server::admin::AdminLimits;
use crate::tls::client::ClientTls;
use crate::tls::server::TlsFiles;
use crate::writeback::drain::WritebackConfig;
use crate::writeback::table::Tables;

/// Declares every option once: the optional layer that flags, environment
/// and file fill ([`ServeOptions`]), and the resolved values ([`ServeConfig`]).
macro_rules! serve_options {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr, env $env:literal; )*) => {
        /// `millrace serve` flags; each also reads its environment variable.
        #[derive(clap::Args, Deserialize, Default, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct ServeOptions {
            /// TOML file with any of these options (keys use `_` for `-`)
            #[arg(long, env = "MILLRACE_CONFIG", value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            /// Print the resolved configuration as TOML and exit
            #[arg(long)]
            #[serde(skip)]
            pub print_config: bool,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                pub $name: Option<$ty>,
            )*
        }

        /// The resolved configuration.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        pub struct ServeConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for ServeConfig {
            fn default() -> Self {
                ServeConfig { $( $name: $default, )* }
            }
        }

        impl ServeOptions {
            /// These options over `lower`'s, over the defaults.
            fn over(self, lower: ServeOptions) -> ServeConfig {
                let defaults = ServeConfig::default();
                ServeConfig { $( $name: self.$name.or(lower.$name).unwrap_or(defaults.$name), )* }
            }
        }
    };
}

serve_options! {
    /// Address to listen on, every executor on the same port (SO_REUSEPORT) [default: 0.0.0.0:8080]
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)), env "MILLRACE_LISTEN";
    /// Executor CPUs: a count N (the first N CPUs this process may use), a list such as 0,1 or 2-5 (a single CPU: 3,), or all [default: all]
    cores: CoreSpec = CoreSpec::All, env "MILLRACE_CORES";
    /// Listen queue length per executor; the kernel caps it at net.core.somaxconn [default: 4096]
    listen_backlog: u32 = 4096, env "MILLRACE_LISTEN_BACKLOG";
    /// Connections per executor; beyond it new connections are closed at once. Cut to fit the open-files limit, which must hold it plus 1024 [default: 16384]
    max_connections: usize = 16384, env "MILLRACE_MAX_CONNECTIONS";
    /// Longest request line, in bytes; longer gets 414 [default: 8192]
    max_request_line_bytes: usize = 8192, env "MILLRACE_MAX_REQUEST_LINE_BYTES";
    /// Largest header section after the request line, in bytes; larger gets 431 [default: 8192]
    max_header_bytes: usize = 8192, env "MILLRACE_MAX_HEADER_BYTES";
    /// Most header fields in a request (at most 256); more gets 431 [default: 64]
    max_headers: usize = 64, env "MILLRACE_MAX_HEADERS";
    /// Largest request body, in bytes, after chunked decoding; larger gets 413 [default: 1048576]
    max_body_bytes: usize = 1024 * 1024, env "MILLRACE_MAX_BODY_BYTES";
    /// Responses a connection may have unsent before it stops being read, at most 32768 (deferred answers are numbered in 16 bits) [default: 256]
    max_pipeline_depth: usize = 256, env "MILLRACE_MAX_PIPELINE_DEPTH";
    /// Requests one connection may make; the last is answered with Connection: close, so that keep-alive connections spread onto instances added later. 0: no limit [default: 0]
    max_connection_requests: u64 = 0, env "MILLRACE_MAX_CONNECTION_REQUESTS";
    /// Age past which a connection's next response carries Connection: close, in milliseconds. 0: no limit [default: 0]
    max_connection_age_ms: u64 = 0, env "MILLRACE_MAX_CONNECTION_AGE_MS";
    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy and send-proxy-v2 write it) at the start of every public connection, and take the client's address from it; a connection without a valid one is closed. Only for a listener that load balancers alone can reach [default: false]
    proxy_protocol: bool = false, env "MILLRACE_PROXY_PROTOCOL";
    /// Address of the HTTPS listener, beside listen (every executor on the same port, SO_REUSEPORT); needs tls_cert_file and tls_key_file. Empty: none [default: empty]
    tls_listen: String = String::new(), env "MILLRACE_TLS_LISTEN";
    /// PEM file of the HTTPS listener's certificate chain, leaf first. Read again on SIGHUP and when it changes; a file that does not load is logged and the certificate in use stays [default: empty]
    tls_cert_file: String = String::new(), env "MILLRACE_TLS_CERT_FILE";
    /// PEM file of that certificate's private key (PKCS#8, PKCS#1 or SEC1), reloaded with it [default: empty]
    tls_key_file: String = String::new(), env "MILLRACE_TLS_KEY_FILE";
    /// PEM file of the CAs whose client certificates the HTTPS listener requires (mutual TLS); a client without one is refused in the handshake. Empty: no client certificate asked for [default: empty]
    tls_client_ca_file: String = String::new(), env "MILLRACE_TLS_CLIENT_CA_FILE";
    /// Time a TLS handshake may take from the connect, in milliseconds; then the connection is closed [default: 10000]
    tls_handshake_timeout_ms: u64 = 10_000, env "MILLRACE_TLS_HANDSHAKE_TIMEOUT_MS";
    /// TLS records a connection may have sealed and not yet sent (16 KiB of plaintext each at most); past them it is not read until they drain [default: 256]
    tls_max_unsent_records: usize = 256, env "MILLRACE_TLS_MAX_UNSENT_RECORDS";
    /// Log one request in this many as one structured line (method, route, status, latency, body bytes, the client's address from a PROXY header; never header values or bodies) under the log target millrace::access. 0: off [default: 0]
    access_log_sample: u32 = 0, env "MILLRACE_ACCESS_LOG_SAMPLE";
    /// Time allowed for a request head to arrive, in milliseconds; then 408 and close [default: 10000]
    header_timeout_ms: u64 = 10_000, env "MILLRACE_HEADER_TIMEOUT_MS";
    /// Time a connection may make no progress (idle keep-alive, a stalled body or send), in milliseconds [default: 60000]
    idle_timeout_ms: u64 = 60_000, env "MILLRACE_IDLE_TIMEOUT_MS";
    /// Time a closing connection keeps reading so its last response is not lost to a reset, in milliseconds [default: 2000]
    close_linger_ms: u64 = 2_000, env "MILLRACE_CLOSE_LINGER_MS";
    /// Time a request answered later (one that waits for Redis or the database) may take before it is answered 503, in milliseconds; what it waited for is abandoned (a write Redis already took may still land) [default: 15000]
    request_timeout_ms: u64 = 15_000, env "MILLRACE_REQUEST_TIMEOUT_MS";
    /// On SIGTERM, time /readyz answers 503 before accepting stops, in milliseconds [default: 0]
    drain_delay_ms: u64 = 0, env "MILLRACE_DRAIN_DELAY_MS";
    /// On SIGTERM, time in-flight requests get to finish before connections are cut, in milliseconds [default: 30000]
    shutdown_timeout_ms: u64 = 30_000, env "MILLRACE_SHUTDOWN_TIMEOUT_MS";
    /// io_uring submission queue entries per executor, a power of two [default: 4096]
    ring_entries: u32 = 4096, env "MILLRACE_RING_ENTRIES";
    /// Provided receive buffers per executor, a power of two up to 32768; few enough to stay in cache, enough for the connections that receive in one turn (millrace_recv_buffers_exhausted_total counts when they ran out) [default: 256]
    recv_buffers: u32 = 256, env "MILLRACE_RECV_BUFFERS";
    /// NAPI busy polling on each executor's ring (Linux 6.9+): a wait spins on the NIC queues of its connections this long before sleeping on an interrupt, in microseconds; costs CPU for latency, and does nothing on loopback. 0: off [default: 0]
    napi_busy_poll_us: u32 = 0, env "MILLRACE_NAPI_BUSY_POLL_US";
    /// Size of each receive buffer, in bytes [default: 4096]
    recv_buffer_bytes: u32 = 4096, env "MILLRACE_RECV_BUFFER_BYTES";
    /// Address of the admin listener, which serves /metrics, /livez and /readyz apart from the public port; keep it on loopback or a private network. Empty: none [default: 127.0.0.1:9180]
    admin_listen: String = "127.0.0.1:9180".to_string(), env "MILLRACE_ADMIN_LISTEN";
    /// Admin clients served at once; one more is answered 503 and closed [default: 16]
    admin_max_clients: usize = 16, env "MILLRACE_ADMIN_MAX_CLIENTS";
    /// Time an admin client has for its whole exchange, from accept to the last byte of the answer, in milliseconds [default: 2000]
    admin_timeout_ms: u64 = 2000, env "MILLRACE_ADMIN_TIMEOUT_MS";
    /// Dependencies /readyz also requires, comma-separated: redis (every executor's Redis client has a connected master for every slot), writeback (this process's database core committed or found the queue empty within readyz_drain_stall_ms). Empty: only starting and draining, so that a blip every instance shares does not pull them all [default: empty]
    readyz_checks: String = String::new(), env "MILLRACE_READYZ_CHECKS";
    /// Time without write-back progress after which the writeback readiness check fails, in milliseconds [default: 30000]
    readyz_drain_stall_ms: u64 = 30_000, env "MILLRACE_READYZ_DRAIN_STALL_MS";
    /// Serve /metrics on the public port too (/livez and /readyz always are, for load balancers) [default: false]
    public_metrics: bool = false, env "MILLRACE_PUBLIC_METRICS";
    /// Redis Cluster seed nodes, host:port[,host:port...]; empty: no Redis, and the /v1 routes answer 503. User and password come from MILLRACE_REDIS_USER and MILLRACE_REDIS_PASSWORD [default: empty]
    redis_seeds: String = String::new(), env "MILLRACE_REDIS_SEEDS";
    /// Time a Redis command may take before its request gets 503, in milliseconds [default: 1000]
    redis_command_timeout_ms: u64 = 1000, env "MILLRACE_REDIS_COMMAND_TIMEOUT_MS";
    /// Speak TLS to Redis: redis_seeds name the nodes' tls-ports, and the cluster announces its TLS ports to TLS clients. Each node's certificate is verified, and its host: the IP address the cluster gives, or redis_tls_server_name [default: false]
    redis_tls: bool = false, env "MILLRACE_REDIS_TLS";
    /// PEM file of CAs to trust for Redis's certificates instead of the system's [default: empty]
    redis_ca_file: String = String::new(), env "MILLRACE_REDIS_CA_FILE";
    /// The name every Redis node's certificate must hold; empty: each node's IP address [default: empty]
    redis_tls_server_name: String = String::new(), env "MILLRACE_REDIS_TLS_SERVER_NAME";
    /// PEM file of a client certificate chain to present to Redis (tls-auth-clients yes), with redis_tls_key_file [default: empty]
    redis_tls_cert_file: String = String::new(), env "MILLRACE_REDIS_TLS_CERT_FILE";
    /// PEM file of that client certificate's private key [default: empty]
    redis_tls_key_file: String = String::new(), env "MILLRACE_REDIS_TLS_KEY_FILE";
    /// Redis commands one executor may have in flight; beyond it a /v1 request is answered 503 at once (shedding overload at the door, not queueing it in Redis) [default: 4096]
    max_redis_in_flight: usize = 4096, env "MILLRACE_MAX_REDIS_IN_FLIGHT";
    /// Write-back stream partitions; must match the database core's [default: 16]
    writeback_partitions: u16 = 16, env "MILLRACE_WRITEBACK_PARTITIONS";
    /// Events one POST /v1/events may carry; more gets 400 [default: 10000]
    max_batch_events: usize = 10_000, env "MILLRACE_MAX_BATCH_EVENTS";
    /// Writes waiting in the write-back queue (entries over all partitions) beyond which new writes get 503 [default: 1000000]
    max_backlog: u64 = 1_000_000, env "MILLRACE_MAX_BACKLOG";
    /// Bytes of writes waiting in the write-back queue (their stream entries' fields, over all partitions) beyond which new writes get 503; Redis also holds each queued PUT's value in the cache, so keep maxmemory above twice this [default: 268435456]
    max_backlog_bytes: u64 = 256 << 20, env "MILLRACE_MAX_BACKLOG_BYTES";
    /// Longest key of /v1/kv/{key}, in bytes once percent-decoded; longer gets 414 [default: 512]
    max_key_bytes: usize = 512, env "MILLRACE_MAX_KEY_BYTES";
    /// Largest value a PUT /v1/kv/{key} may store, in bytes; larger gets 413 [default: 65536]
    max_value_bytes: usize = 65_536, env "MILLRACE_MAX_VALUE_BYTES";
    /// Replicas that must confirm each write (Redis WAIT) before it is answered 202; 0: the primary's word is enough [default: 0]
    ack_replicas: u32 = 0, env "MILLRACE_ACK_REPLICAS";
    /// How long WAIT waits for those replicas, in milliseconds; then the write is answered 503 (queued, not confirmed) [default: 100]
    ack_timeout_ms: u64 = 100, env "MILLRACE_ACK_TIMEOUT_MS";
    /// File of bearer tokens for the /v1 routes, one per line (at least 16 characters each); tokens may also come from MILLRACE_AUTH_TOKENS (comma-separated). None: the routes are open [default: empty]
    auth_tokens_file: String = String::new(), env "MILLRACE_AUTH_TOKENS_FILE";
    /// PostgreSQL URL (postgres://user:password@host:port/db). Set, this process runs the database core: write-back and read-through of GET misses. Empty: run `millrace writeback` elsewhere, and a GET miss is a 404 [default: empty]
    postgres_url: String = String::new(), env "MILLRACE_POSTGRES_URL";
    /// PEM file of CAs to trust for PostgreSQL's certificate besides the system's; TLS itself is asked for with sslmode=require in postgres_url, and the certificate and host name are always verified [default: empty]
    postgres_ca_file: String = String::new(), env "MILLRACE_POSTGRES_CA_FILE";
    /// CPU to pin the database core to; -1 leaves it unpinned [default: -1]
    db_core: i64 = -1, env "MILLRACE_DB_CORE";
    /// Rows per write-back transaction at most [default: 5000]
    batch_rows: usize = 5000, env "MILLRACE_BATCH_ROWS";
    /// Time a write-back batch gathers before it is written, in milliseconds [default: 5]
    batch_ms: u64 = 5, env "MILLRACE_BATCH_MS";
    /// The database core's consumer name in the queue's group; keep it across restarts [default: db-0]
    writeback_consumer: String = "db-0".to_string(), env "MILLRACE_WRITEBACK_CONSUMER";
    /// How long the database core's lease on its consumer name lasts unless renewed (every fifth of it), in milliseconds; a second core under the same name refuses to start, and a restart after a crash waits at most this [default: 5000]
    writeback_lease_ms: u64 = 5_000, env "MILLRACE_WRITEBACK_LEASE_MS";
    /// Longest a PostgreSQL connect, write-back batch or read-through lookup may take before the connection is dropped and the work tried again, in milliseconds [default: 10000]
    db_timeout_ms: u64 = 10_000, env "MILLRACE_DB_TIMEOUT_MS";
    /// GET misses waiting for the database core, over all executors; beyond it a miss gets 503 [default: 65536]
    max_pending_lookups: usize = 65_536, env "MILLRACE_MAX_PENDING_LOOKUPS";
    /// Time a cache entry stays in Redis once PostgreSQL holds its version (a written-back write, or a value read through), in milliseconds; from then on the eviction policy may also remove it. Entries not yet written back never expire [default: 3600000]
    cache_ttl_ms: u64 = 3_600_000, env "MILLRACE_CACHE_TTL_MS";
    /// Time a miss (no row, or a deleted one) stays cached, so that a hot missing key does not reach PostgreSQL on every request, in milliseconds; a write to the key replaces it at once [default: 1000]
    miss_ttl_ms: u64 = 1000, env "MILLRACE_MISS_TTL_MS";
    /// Start even when Redis or PostgreSQL is set up so that an acknowledged write would not survive a restart (Redis without its append-only file, an eviction policy that can evict the queue, PostgreSQL with fsync or synchronous_commit off); each finding is still logged as an error [default: false]
    accept_unsafe_durability: bool = false, env "MILLRACE_ACCEPT_UNSAFE_DURABILITY";
}

impl ServeOptions {
    /// Resolve flags and environment over the file named by `--config` (if
    /// any) over the defaults, and check every value.
    pub fn resolve(mut self) -> Result<ServeConfig, String> {
        let file = match self.config.take() {
            Some(path) => {
                let (options, app) = read_file(&path)?;
                if app.is_some() {
                    return Err(format!(
                        "config file {}: an [app] table holds a service's own options, and \
                         `millrace serve` has none",
                        path.display()
                    ));
                }
                options
            }
            None => ServeOptions::default(),
        };
        let config = self.over(file);
        config.validate()?;
        Ok(config)
    }

    /// [`ServeOptions::resolve`] for a service with options of its own,
    /// which its `[app]` table holds and which are read apart.
    pub fn resolve_for_app(mut self) -> Result<ServeConfig, String> {
        let file = match self.config.take() {
            Some(path) => read_file(&path)?.0,
            None => ServeOptions::default(),
        };
        let config = self.over(file);
        config.validate()?;
        Ok(config)
    }
}

/// The options a config file gives, and its `[app]` table (a service's
/// own options), if it has one.
pub fn read_file(path: &std::path::Path) -> Result<(ServeOptions, Option<toml::Table>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let app = match table.remove("app") {
        None => None,
        Some(toml::Value::Table(app)) => Some(app),
        Some(_) => {
            return Err(format!(
                "config file {}: app must be a table ([app])",
                path.display()
            ));
        }
    };
    let options = table
        .try_into::<ServeOptions>()
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    Ok((options, app))
}

impl ServeConfig {
    /// Check every value against its range; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_request_line_bytes", self.max_request_line_bytes as u64),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("max_headers", self.max_headers as u64),
            ("max_pipeline_depth", self.max_pipeline_depth as u64),
            ("header_timeout_ms", self.header_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("listen_backlog", u64::from(self.listen_backlog)),
            ("redis_command_timeout_ms", self.redis_command_timeout_ms),
            ("writeback_partitions", u64::from(self.writeback_partitions)),
            ("max_batch_events", self.max_batch_events as u64),
            ("max_backlog", self.max_backlog),
            ("max_backlog_bytes", self.max_backlog_bytes),
            ("cache_ttl_ms", self.cache_ttl_ms),
            ("miss_ttl_ms", self.miss_ttl_ms),
            ("max_key_bytes", self.max_key_bytes as u64),
            ("max_value_bytes", self.max_value_bytes as u64),
            ("batch_rows", self.batch_rows as u64),
            ("db_timeout_ms", self.db_timeout_ms),
            ("max_pending_lookups", self.max_pending_lookups as u64),
            ("max_redis_in_flight", self.max_redis_in_flight as u64),
            ("admin_max_clients", self.admin_max_clients as u64),
            ("admin_timeout_ms", self.admin_timeout_ms),
            ("readyz_drain_stall_ms", self.readyz_drain_stall_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("tls_max_unsent_records", self.tls_max_unsent_records as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_pipeline_depth > MAX_PIPELINE_DEPTH {
            return Err(format!(
                "max_pipeline_depth must be at most {MAX_PIPELINE_DEPTH}: a connection's deferred \
                 answers are numbered in 16 bits"
            ));
        }
        if self.max_headers > MAX_HEADERS_LIMIT {
            return Err(format!("max_headers must be at most {MAX_HEADERS_LIMIT}"));
        }
        if !self.ring_entries.is_power_of_two() || !(2..=32_768).contains(&self.ring_entries) {
            return Err("ring_entries must be a power of two from 2 to 32768".into());
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32_768 {
            return Err("recv_buffers must be a power of two from 1 to 32768".into());
        }
        if !(512..=1 << 20).contains(&self.recv_buffer_bytes) {
            return Err("recv_buffer_bytes must be from 512 to 1048576".into());
        }
        self.redis_seed_list()?;
        self.admin_address()?;
        self.tls()?;
        if let Some(tls) = self.redis_tls_settings()? {
            tls.client.build().map_err(|e| format!("Redis TLS: {e}"))?;
        }
        self.readiness_checks()?;
        if self.ack_replicas > 0 && self.ack_timeout_ms >= self.redis_command_timeout_ms {
            return Err("ack_timeout_ms must be below redis_command_timeout_ms".into());
        }
        if self.request_timeout_ms <= self.redis_command_timeout_ms {
            return Err(
                "request_timeout_ms must be above redis_command_timeout_ms: a request waits for \
                 at least one Redis command"
                    .into(),
            );
        }
        if self.db_core < -1 {
            return Err("db_core must be a CPU id, or -1 to leave it unpinned".into());
        }
        if self.batch_rows > 1_000_000 {
            return Err("batch_rows must be from 1 to 1000000".into());
        }
        if !self.postgres_url.is_empty() && self.redis().is_none() {
            return Err(
                "postgres_url needs redis_seeds: the database core drains the queue in Redis"
                    .into(),
            );
        }
        if !self.postgres_url.is_empty() {
            crate::writeback::db::check_url(
                &self.postgres_url,
                self.postgres_ca_path().as_deref(),
            )?;
        }
        if self.writeback_lease_ms < 100 {
            return Err("writeback_lease_ms must be at least 100".into());
        }
        if self.writeback_consumer.is_empty() {
            return Err("writeback_consumer must not be empty".into());
        }
        Ok(())
    }

    /// The database core's configuration for writing `tables`, when this
    /// process runs one.
    pub fn database_core(&self, tables: &Tables) -> Option<WritebackConfig> {
        if self.postgres_url.is_empty() {
            return None;
        }
        let mut config =
            WritebackConfig::new(self.redis()?, self.postgres_url.clone(), tables.clone());
        config.partitions = self.writeback_partitions;
        config.batch_rows = self.batch_rows;
        config.batch_ms = Duration::from_millis(self.batch_ms);
        config.consumer = self.writeback_consumer.clone();
        config.lease_ttl = Duration::from_millis(self.writeback_lease_ms);
        config.db_timeout = Duration::from_millis(self.db_timeout_ms);
        config.postgres_ca_file = self.postgres_ca_path();
        config.cache_ttl_ms = self.cache_ttl_ms;
        config.miss_ttl_ms = self.miss_ttl_ms;
        config.accept_unsafe_durability = self.accept_unsafe_durability;
        Some(config)
    }

    /// `postgres_ca_file`, if set.
    fn postgres_ca_path(&self) -> Option<PathBuf> {
        (!self.postgres_ca_file.is_empty()).then(|| PathBuf::from(&self.postgres_ca_file))
    }

    /// What `/readyz` requires besides the stage.
    pub fn readiness_checks(&self) -> Result<ReadinessChecks, String> {
        let checks = ReadinessChecks::parse(
            &self.readyz_checks,
            Duration::from_millis(self.readyz_drain_stall_ms),
        )?;
        if checks.redis && self.redis_seeds.trim().is_empty() {
            return Err("readyz_checks: redis needs redis_seeds".into());
        }
        if checks.writeback_stall.is_some() && self.postgres_url.is_empty() {
            return Err(
                "readyz_checks: writeback needs postgres_url (a database core in this process)"
                    .into(),
            );
        }
        Ok(checks)
    }

    /// The admin listener's limits.
    pub fn admin_limits(&self) -> AdminLimits {
        AdminLimits {
            max_clients: self.admin_max_clients,
            timeout: Duration::from_millis(self.admin_timeout_ms),
        }
    }

    /// The admin listener's address, `None` when there is none.
    pub fn admin_address(&self) -> Result<Option<SocketAddr>, String> {
        let text = self.admin_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            format!("admin_listen: {text:?} is not ip:port (empty for no admin listener)")
        })
    }

    /// The HTTPS listener's address and files, if it is configured.
    pub fn tls(&self) -> Result<Option<(SocketAddr, TlsFiles)>, String> {
        let listen = self.tls_listen.trim();
        let path = |p: &str| (!p.trim().is_empty()).then(|| PathBuf::from(p.trim()));
        let (cert, key) = (path(&self.tls_cert_file), path(&self.tls_key_file));
        let client_ca = path(&self.tls_client_ca_file);
        if listen.is_empty() {
            if cert.is_some() || key.is_some() || client_ca.is_some() {
                return Err(
                    "tls_cert_file, tls_key_file and tls_client_ca_file need tls_listen".into(),
                );
            }
            return Ok(None);
        }
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| format!("tls_listen: {listen:?} is not ip:port"))?;
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err("tls_listen needs tls_cert_file and tls_key_file".into());
        };
        if addr == self.listen && addr.port() != 0 {
            return Err(format!(
                "tls_listen and listen are both {addr}: HTTP and HTTPS need a port each"
            ));
        }
        Ok(Some((
            addr,
            TlsFiles {
                cert,
                key,
                client_ca,
            },
        )))
    }

    /// The Redis seeds, parsed; empty when Redis is not configured.
    pub fn redis_seed_list(&self) -> Result<Vec<SocketAddr>, String> {
        self.redis_seeds
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|_| {
                    format!("redis_seeds: {s:?} is not host:port (an IP address and a port)")
                })
            })
            .collect()
    }

    /// The Redis client's configuration, when Redis is configured.
    pub fn redis(&self) -> Option<ClusterConfig> {
        let seeds = self.redis_seed_list().ok().filter(|s| !s.is_empty())?;
        let mut config = ClusterConfig::new(seeds).credentials_from_env();
        config.command_timeout = Duration::from_millis(self.redis_command_timeout_ms);
        // Checked by `validate`.
        config.tls = self.redis_tls_settings().ok().flatten();
        Some(config)
    }

    /// TLS to Redis, if asked for.
    pub fn redis_tls_settings(&self) -> Result<Option<RedisTls>, String> {
        redis_tls(
            self.redis_tls,
            &self.redis_ca_file,
            &self.redis_tls_server_name,
            &self.redis_tls_cert_file,
            &self.redis_tls_key_file,
        )
    }

    /// Render as TOML, loadable with `--config`; a password in
    /// `postgres_url` is shown as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.postgres_url = redact_password(&self.postgres_url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The file of bearer tokens the `/v1` routes require, if one is named.
    pub fn auth_tokens_path(&self) -> Option<&std::path::Path> {
        (!self.auth_tokens_file.is_empty()).then(|| std::path::Path::new(&self.auth_tokens_file))
    }

    /// What the built-in routes are held to.
    pub fn route_limits(&self) -> crate::routes::Limits {
        crate::routes::Limits {
            batch: crate::payload::BatchLimits {
                max_events: self.max_batch_events,
                max_bytes: self.max_body_bytes,
            },
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
    }

    /// What each executor gets.
    pub fn executor(&self) -> ExecutorConfig {
        ExecutorConfig {
            ring_entries: self.ring_entries,
            recv_buffers: self.recv_buffers as u16,
            recv_buffer_bytes: self.recv_buffer_bytes,
            max_connections: self.max_connections,
            direct_slots: ExecutorConfig::direct_slots_for(self.max_connections),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            close_linger: Duration::from_millis(self.close_linger_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_connection_age: (self.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(self.max_connection_age_ms)),
            proxy_protocol: self.proxy_protocol,
            access_log_every: self.access_log_sample,
            napi_busy_poll_us: self.napi_busy_poll_us,
            limits: Limits {
                head: HeadLimits {
                    max_request_line_bytes: self.max_request_line_bytes,
                    max_header_bytes: self.max_header_bytes,
                    max_headers: self.max_headers,
                },
                max_body_bytes: self.max_body_bytes,
                max_pipeline_depth: self.max_pipeline_depth,
                max_connection_requests: (self.max_connection_requests > 0)
                    .then_some(self.max_connection_requests),
            },
            redis: self.redis(),
            max_redis_in_flight: self.max_redis_in_flight,
            // Set by the server once the certificates are loaded.
            tls: None,
        }
    }
}

/// TLS to Redis from its options (`millrace serve`'s and `millrace
/// writeback`'s are the same); a file option without `tls` is an error.
pub fn redis_tls(
    tls: bool,
    ca_file: &str,
    server_name: &str,
    cert_file: &str,
    key_file: &str,
) -> Result<Option<RedisTls>, String> {
    let path = |p: &str| (!p.trim().is_empty()).then(|| PathBuf::from(p.trim()));
    let (ca, cert, key) = (path(ca_file), path(cert_file), path(key_file));
    let name = (!server_name.trim().is_empty()).then(|| server_name.trim().to_owned());
    if !tls {
        if ca.is_some() || cert.is_some() || key.is_some() || name.is_some() {
            return Err(
                "redis_ca_file, redis_tls_server_name, redis_tls_cert_file and \
                        redis_tls_key_file need redis_tls"
                    .into(),
            );
        }
        return Ok(None);
    }
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => {
            return Err("redis_tls_cert_file and redis_tls_key_file go together".into());
        }
    };
    Ok(Some(RedisTls {
        client: ClientTls {
            ca_file: ca,
            insecure: false,
            identity,
            alpn: Vec::new(),
            resumption_sessions: 64,
        },
        server_name: name,
    }))
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    redact_password_parameters(&redact_user_info(url))
}

/// `scheme://user:password@host...` with the password hidden.
fn redact_user_info(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_string(),
    }
}

/// Every `password=` parameter's value hidden: in a URL's query
/// (`?password=x&...`) and in the key=value form (`host=a password=x`,
/// a value in single quotes with `\'` escapes).
fn redact_password_parameters(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(KEY) {
        let starts_key =
            at == 0 || matches!(rest.as_bytes()[at - 1], b'?' | b'&' | b' ' | b'\t' | b'\n');
        let value_start = at + KEY.len();
        out.push_str(&rest[..value_start]);
        if !starts_key {
            rest = &rest[value_start..];
            continue;
        }
        let value = &rest[value_start..];
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; a backslash escapes the next byte.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find(['&', ' ', '\t', '\n']).unwrap_or(value.len())
        };
        out.push_str("***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Which CPUs get an executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreSpec {
    /// Every CPU this process may run on.
    All,
    /// The first N of them.
    Count(usize),
    /// These CPU ids, in this order.
    List(Vec<usize>),
}

impl CoreSpec {
    /// The CPU ids, checked against those this process may run on.
    pub fn resolve(&self, available: &[usize]) -> Result<Vec<usize>, String> {
        let shown = || {
            available
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            CoreSpec::All => Ok(available.to_vec()),
            CoreSpec::Count(n) if *n > available.len() => Err(format!(
                "--cores asks for {n} CPUs; this process may use {} ({})",
                available.len(),
                shown()
            )),
            CoreSpec::Count(n) => Ok(available[..*n].to_vec()),
            CoreSpec::List(ids) => match ids.iter().find(|id| !available.contains(id)) {
                Some(id) => Err(format!(
                    "--cores names CPU {id}, which this process may not use (available: {})",
                    shown()
                )),
                None => Ok(ids.clone()),
            },
        }
    }
}

impl FromStr for CoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(CoreSpec::All);
        }
        let bad = || {
            format!(
                "invalid core list {s:?}: expected a count such as 4, a list such as 0,1 or 2-5, or all"
            )
        };
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<usize>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(n) => Ok(CoreSpec::Count(n)),
            };
        }
        let mut ids = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (low, high) = match item.split_once('-') {
                Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
                None => (item.parse(), item.parse()),
            };
            let (Ok(low), Ok(high)) = (low, high) else {
                return Err(bad());
            };
            if low > high || high - low > 4096 {
                return Err(bad());
            }
            for id in low..=high {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.is_empty() {
            return Err(bad());
        }
        Ok(CoreSpec::List(ids))
    }
}

impl fmt::Display for CoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreSpec::All => f.write_str("all"),
            CoreSpec::Count(n) => write!(f, "{n}"),
            CoreSpec::List(ids) => {
                let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                // A single id keeps its comma so it reads back as a list, not a count.
                write!(
                    f,
                    "{}{}",
                    ids.join(","),
                    if ids.len() == 1 { "," } else { "" }
                )
            }
        }
    }
}

impl Serialize for CoreSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CoreSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// `cores = 2` and `cores = "0,1"` both read naturally in TOML.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => n.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_password("postgres://millrace:s3cret@127.0.0.1:5440/millrace"),
            "postgres://millrace:***@127.0.0.1:5440/millrace"
        );
        assert_eq!(
            redact_password("postgres://millrace@127.0.0.1/db"),
            "postgres://millrace@127.0.0.1/db"
        );
        assert_eq!(redact_password(""), "");
        assert_eq!(
            redact_password("postgres://u@h/db?sslmode=require&password=s3cret&x=1"),
            "postgres://u@h/db?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact_password("postgres://u:a@h/db?password=b"),
            "postgres://u:***@h/db?password=***"
        );
        assert_eq!(
            redact_password("host=a password=s3cret dbname=d"),
            "host=a password=*** dbname=d"
        );
        assert_eq!(
            redact_password("password='it\\'s secret' host=a"),
            "password=*** host=a"
        );
        // Another key ending in "password=" is not one.
        assert_eq!(redact_password("host=a xpassword=b"), "host=a xpassword=b");
    }

    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: ServeOptions,
    }

    #[test]
    fn core_specs_parse_and_resolve() {
        let available = [0, 1, 2, 3];
        let cases = [
            ("all", Ok(vec![0, 1, 2, 3])),
            ("2", Ok(vec![0, 1])),
            ("0,1", Ok(vec![0, 1])),
            ("3,", Ok(vec![3])),
            ("1-3", Ok(vec![1, 2, 3])),
            ("3,1,1", Ok(vec![3, 1])),
            ("5", Err("asks for 5 CPUs")),
            ("0,7", Err("CPU 7")),
        ];
        for (text, expected) in cases {
            let resolved = text.parse::<CoreSpec>().unwrap().resolve(&available);
            match expected {
                Ok(ids) => assert_eq!(resolved.unwrap(), ids, "{text}"),
                Err(needle) => assert!(resolved.unwrap_err().contains(needle), "{text}"),
            }
        }
        for bad in ["", "0", "-1", "a", "1-", "3-1", "1,,x"] {
            assert!(bad.parse::<CoreSpec>().is_err(), "{bad:?}");
        }
        for spec in ["all", "2", "0,1", "3,"] {
            let parsed: CoreSpec = spec.parse().unwrap();
            assert_eq!(parsed.to_string().parse::<CoreSpec>().unwrap(), parsed);
        }
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: ServeOptions =
            toml::from_str("max_headers = 10\nidle_timeout_ms = 5\ncores = 1\n").unwrap();
        let cli = Cli::try_parse_from(["serve", "--max-headers", "20"]).unwrap();
        let config = cli.options.over(file);
        assert_eq!(config.max_headers, 20);
        assert_eq!(config.idle_timeout_ms, 5);
        assert_eq!(config.cores, CoreSpec::Count(1));
        assert_eq!(config.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let error = toml::from_str::<ServeOptions>("max_header = 10\n").unwrap_err();
        assert!(error.to_string().contains("max_header"), "{error}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let config = ServeConfig {
            cores: CoreSpec::List(vec![1]),
            ..ServeConfig::default()
        };
        let options: ServeOptions = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(ServeOptions::default().over(options), config);
    }

    #[test]
    fn help_states_each_default() {
        let command = Cli::command();
        let defaults = toml::to_string(&ServeConfig::default()).unwrap();
        for line in defaults.lines() {
            let (key, value) = line.split_once(" = ").unwrap();
            let value = match value.trim_matches('"') {
                "" => "empty",
                value => value,
            };
            let flag = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("no --{flag}"));
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--{flag}: {help}"
            );
        }
    }

    #[test]
    fn validation_names_the_option() {
        let cases = [
            (
                ServeConfig {
                    max_headers: 0,
                    ..Default::default()
                },
                "max_headers",
            ),
            (
                ServeConfig {
                    max_headers: 1000,
                    ..Default::default()
                },
                "max_headers",
            ),
            (
                ServeConfig {
                    recv_buffers: 1000,
                    ..Default::default()
                },
                "recv_buffers",
            ),
            (
                ServeConfig {
                    ring_entries: 3,
                    ..Default::default()
                },
                "ring_entries",
            ),
            (
                ServeConfig {
                    recv_buffer_bytes: 10,
                    ..Default::default()
                },
                "recv_buffer_bytes",
            ),
            (
                ServeConfig {
                    header_timeout_ms: 0,
                    ..Default::default()
                },
                "header_timeout_ms",
            ),
            (
                ServeConfig {
                    max_pipeline_depth: MAX_PIPELINE_DEPTH + 1,
                    ..Default::default()
                },
                "max_pipeline_depth",
            ),
            (
                ServeConfig {
                    readyz_checks: "redis".into(),
                    ..Default::default()
                },
                "readyz_checks",
            ),
            (
                ServeConfig {
                    readyz_checks: "disk".into(),
                    ..Default::default()
                },
                "readyz_checks",
            ),
            (
                ServeConfig {
                    admin_max_clients: 0,
                    ..Default::default()
                },
                "admin_max_clients",
            ),
        ];
        for (config, name) in cases {
            assert!(config.validate().unwrap_err().contains(name), "{name}");
        }
        ServeConfig::default().validate().unwrap();
    }
}
