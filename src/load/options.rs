//! `millrace load` flags, and the checked plan they resolve to.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::server::config::CoreSpec;
use crate::tls::client::ClientTls;

use super::report::Report;
use super::scenario::Scenario;
use super::stats::Stats;
use super::workload::{EventBatches, EventsFormat, FixedRequest, KeyDistribution, KvMix, Workload};

/// Requests in flight per connection at most.
pub const MAX_PIPELINE: usize = 4096;

/// Events in one batch at most.
pub const MAX_BATCH: usize = 100_000;

/// Largest value or payload, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// What every request sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// The URL itself, with -X, -H and --body
    Url,
    /// GET and PUT {URL}/v1/kv/{key}, mixed by --read-ratio over --keys keys
    Kv,
    /// POST {URL}/v1/events with --batch events per request (FlatBuffers, or JSON with --events-format json)
    Events,
    /// The request templates of --scenario FILE.toml, by their weights, paths after {URL}
    Scenario,
}

/// `millrace load` flags.
#[derive(clap::Args, Debug)]
pub struct LoadOptions {
    /// The server: http://HOST[:PORT][/PATH] or https://... With --workload kv or events, the base the API paths go after
    pub url: String,

    /// https: trust the CA certificates in this PEM file instead of the system's
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// https: accept any certificate for any host name (a test server's own). Signatures are still checked, so handshakes cost what verified ones do, less the chain
    #[arg(long)]
    pub insecure: bool,

    /// https: no session resumption, a full handshake on every connection (by default a reconnect resumes its thread's last session with the server)
    #[arg(long)]
    pub no_resumption: bool,

    /// Connections, spread over the threads
    #[arg(short, long, default_value_t = 64)]
    pub connections: usize,

    /// Requests in flight per connection (HTTP pipelining)
    #[arg(short, long, default_value_t = 1, value_name = "DEPTH")]
    pub pipeline: usize,

    /// Generator threads, one per CPU, pinned: a count N (the first N CPUs), a list such as 1 or 2-3 (a single CPU: 3,), or all. Unset: one thread, not pinned
    #[arg(long)]
    pub cores: Option<CoreSpec>,

    /// How long to measure, such as 30s, 500ms or 2m [default: 10s, or until --requests are answered]
    #[arg(short, long, value_parser = parse_duration, value_name = "TIME")]
    pub duration: Option<Duration>,

    /// Stop after this many measured requests (all threads together)
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,

    /// Load before measuring starts; its requests are left out of the results
    #[arg(long, value_parser = parse_duration, default_value = "0s", value_name = "TIME")]
    pub warmup: Duration,

    /// A request with no answer this long after its start is a timeout; so is a connect that takes this long
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "TIME")]
    pub timeout: Duration,

    /// Find the highest open-loop rate at which this objective on the corrected latency holds:
    /// PERCENTILE<TIME, such as p99<1ms or p99.9<500us, several joined by commas. Needs
    /// --rate-range; each step runs --duration (3s if unset, longer when the percentile needs
    /// more requests) after --warmup. Exit status 1 when no rate met it
    #[arg(long, value_name = "OBJECTIVE")]
    pub slo: Option<String>,

    /// --slo: the rates to search, LOW..HIGH requests per second (steps double from LOW)
    #[arg(long, value_name = "LOW..HIGH")]
    pub rate_range: Option<String>,

    /// Open loop: the figures are invalid (exit status 1) when the generator saw 1% of requests
    /// come due later than this: its own delay is not the server's latency
    #[arg(long, value_parser = parse_duration, default_value = "2ms", value_name = "TIME")]
    pub max_send_lag: Duration,

    /// Start at this wall-clock time (seconds since the epoch, fractions allowed), so that
    /// generators on several machines start together; their clocks must agree (NTP, PTP)
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub start_at: Option<f64>,

    /// Open loop: this many requests per second in all, spread evenly over the connections, latency measured from when each was due (coordinated omission corrected). Unset: closed loop, as fast as answers come
    #[arg(short = 'R', long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,

    /// Request method
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,

    /// Extra request header, "Name: value"; may be repeated
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body: the text itself, or @FILE for a file's bytes
    #[arg(long, value_name = "TEXT|@FILE")]
    pub body: Option<String>,

    /// What to send
    #[arg(long, value_enum, default_value_t = WorkloadKind::Url)]
    pub workload: WorkloadKind,

    /// kv: the share of requests that are reads (GET); the rest are writes (PUT, or DELETE by --delete-ratio)
    #[arg(long, default_value_t = 0.9, value_name = "RATIO")]
    pub read_ratio: f64,

    /// kv: the share of requests that are deletes (DELETE), taken from the writes
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    pub delete_ratio: f64,

    /// kv and events: keys to choose from (k0 to kN-1)
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub keys: u64,

    /// kv: how keys are chosen: uniform, or zipf:S (such as zipf:0.99) for a few hot keys
    #[arg(long, default_value = "uniform", value_name = "DIST")]
    pub key_dist: KeyDistribution,

    /// kv: bytes in each written value; events: bytes in each event's payload
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub value_bytes: usize,

    /// A TOML file of weighted request templates with variables (README.md, "Scenarios");
    /// implies --workload scenario
    #[arg(long, value_name = "FILE.toml")]
    pub scenario: Option<PathBuf>,

    /// events: events per request
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub batch: usize,

    /// events: how batches are encoded
    #[arg(long, value_enum, default_value_t = EventsFormat::Flatbuffers)]
    pub events_format: EventsFormat,

    /// Seed for key choices and event ids, so a run can be repeated [default: from the clock]
    #[arg(long)]
    pub seed: Option<u64>,

    /// Largest response head accepted, in bytes; a larger one counts as malformed
    #[arg(long, default_value_t = 16 * 1024, value_name = "BYTES")]
    pub max_response_head_bytes: usize,

    /// Exit with status 1 when errors exceed this share of requests (0.001 = 0.1%)
    #[arg(long, default_value_t = 0.001, value_name = "RATIO")]
    pub max_error_ratio: f64,

    #[command(flatten)]
    /// Where the report goes besides the terminal.
    pub outputs: Outputs,

    /// Write each second's latency histograms here as an HdrHistogram interval log (one tag per
    /// operation, and NAME.uncorrected), for `millrace report` or any HdrHistogram tool
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// events: write every sent request's event ids and answer status here, warm-up
    /// included, to check against the database (about 32 bytes of memory per request until the end)
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
}

/// Where a report goes besides the terminal: `millrace load`'s and
/// `millrace report`'s flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Outputs {
    /// Write the corrected latency distribution here in HdrHistogram's percentile format (milliseconds)
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write every figure and a per-second timeline here as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw latency by percentile here as SVG
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Draw requests/s and p99 per second (corrected and uncorrected) here as SVG
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
}

impl Outputs {
    /// Refuse charts that would not be SVG.
    pub fn check(&self) -> Result<(), String> {
        for (flag, path) in [("--plot", &self.plot), ("--timeline", &self.timeline)] {
            if let Some(path) = path
                && path.extension().is_none_or(|e| e != "svg")
            {
                return Err(format!(
                    "{flag} {}: only SVG is drawn; name the file .svg",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// Write `report` (of `stats`) to each file asked for; `title` says
    /// what was loaded, `open_loop` whether uncorrected latency is drawn.
    pub fn write(
        &self,
        report: &Report,
        stats: &Stats,
        title: &str,
        open_loop: bool,
    ) -> Result<(), String> {
        if let Some(path) = &self.hgrm {
            std::fs::write(path, super::report::hgrm(&stats.corrected()))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.json {
            let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.plot {
            let (corrected, uncorrected) = (stats.corrected(), stats.uncorrected());
            let mut series = vec![("corrected".to_string(), &corrected)];
            if open_loop {
                series.push(("uncorrected".to_string(), &uncorrected));
            }
            let title = format!("{title} latency by percentile");
            super::plot::latency_by_percentile(path, &title, &series)?;
        }
        if let Some(path) = &self.timeline {
            let title = format!("{title} over time");
            super::plot::timeline(path, &title, &report.interval_latency_ms)?;
        }
        Ok(())
    }
}

/// Where the requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// `https`: TLS, with this host (brackets off an IPv6 address) as the
    /// name the certificate must hold.
    pub tls_host: Option<String>,
    /// `Host` header: the authority as given.
    pub authority: String,
    /// The resolved address.
    pub address: SocketAddr,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Target {
    /// Parse and resolve `http[s]://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false, 80)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true, 443)
        } else {
            return Err(format!(
                "{url}: expected a URL such as http://127.0.0.1:8080/plaintext"
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: expected a host such as 127.0.0.1:8080"));
        }
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("{url}: invalid host or port {authority:?}"))?;
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        Ok(Target {
            url: url.to_string(),
            tls_host: tls.then(|| host.to_string()),
            authority: authority.to_string(),
            address,
            path,
        })
    }

    /// The path without a trailing `/`, for API paths to follow.
    pub fn base(&self) -> &str {
        let path = self.path.split('?').next().unwrap_or_default();
        path.trim_end_matches('/')
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => default_port,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None, // A bare IPv6 address must be in brackets.
        None => Some((authority, default_port)),
    }
}

/// Parse `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid time {text:?}: expected a number with ms, s, m or h"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid time {text:?}: expected a number with ms, s, m or h"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("invalid time {text:?}"))
}

/// The checked, resolved form of [`LoadOptions`].
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Where requests go.
    pub target: Target,
    /// CPUs to pin threads to; `None` entries are not pinned.
    pub cpus: Vec<Option<usize>>,
    /// Connections in all.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Measured time; `None` runs until `requests` are answered.
    pub duration: Option<Duration>,
    /// Measured requests to stop after.
    pub requests: Option<u64>,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Per-request and connect timeout.
    pub timeout: Duration,
    /// See [`LoadOptions::max_send_lag`].
    pub max_send_lag: Duration,
    /// `--slo`: the objectives to search for.
    pub slo: Option<Vec<super::slo::Objective>>,
    /// `--slo`: the rates to search.
    pub rate_range: Option<(f64, f64)>,
    /// When to start, on the wall clock; `None`: at once.
    pub start_at: Option<std::time::SystemTime>,
    /// Open loop rate, requests per second.
    pub rate: Option<f64>,
    /// The requests.
    pub workload: Workload,
    /// Seed.
    pub seed: u64,
    /// Largest response head.
    pub max_response_head_bytes: usize,
    /// Error ratio above which the exit status is 1.
    pub max_error_ratio: f64,
    /// Where the report is written.
    pub outputs: Outputs,
    /// See [`LoadOptions::hlog`].
    pub hlog: Option<PathBuf>,
    /// See [`LoadOptions::ledger`].
    pub ledger: Option<PathBuf>,
    /// https: how to speak TLS to the target.
    pub tls: Option<TlsTarget>,
}

/// TLS to an https target.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// Verification and resumption.
    pub client: ClientTls,
    /// The name the certificate must hold (and the SNI sent).
    pub server_name: String,
}

impl LoadOptions {
    /// Check every flag and resolve the target; errors name the flag.
    pub fn resolve(self, available_cpus: &[usize]) -> Result<LoadPlan, String> {
        let target = Target::parse(&self.url)?;
        let cpus: Vec<Option<usize>> = match &self.cores {
            Some(spec) => spec
                .resolve(available_cpus)?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.connections < cpus.len() {
            return Err(format!(
                "--connections {} is fewer than the {} threads --cores asks for; each thread needs a connection",
                self.connections,
                cpus.len()
            ));
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return Err(format!("--pipeline must be from 1 to {MAX_PIPELINE}"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be above 0".into());
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if self.slo.is_some() {
            if self.rate_range.is_none() {
                return Err("--slo needs --rate-range LOW..HIGH: the rates to search".into());
            }
            for (flag, given) in [
                ("--rate", self.rate.is_some()),
                ("--requests", self.requests.is_some()),
                ("--hlog", self.hlog.is_some()),
                ("--hgrm", self.outputs.hgrm.is_some()),
                ("--timeline", self.outputs.timeline.is_some()),
                ("--ledger", self.ledger.is_some()),
                ("--start-at", self.start_at.is_some()),
            ] {
                if given {
                    return Err(format!(
                        "{flag} is not for --slo: the search picks each step's rate and length (its --json and --plot hold every step)"
                    ));
                }
            }
        } else if self.rate_range.is_some() {
            return Err("--rate-range is for --slo".into());
        }
        if self.timeout < Duration::from_millis(1) {
            return Err("--timeout must be at least 1ms".into());
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 1e9)
        {
            return Err("--rate must be above 0 and at most 1e9 requests per second".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be from 0 to 1".into());
        }
        if !(0.0..=1.0).contains(&self.delete_ratio) || self.read_ratio + self.delete_ratio > 1.0 {
            return Err(
                "--delete-ratio must be from 0 to 1, and at most 1 with --read-ratio: deletes are taken from the writes"
                    .into(),
            );
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.value_bytes > MAX_VALUE_BYTES {
            return Err(format!("--value-bytes must be at most {MAX_VALUE_BYTES}"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(format!("--batch must be from 1 to {MAX_BATCH}"));
        }
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            return Err("--max-error-ratio must be from 0 to 1".into());
        }
        if self.max_response_head_bytes < 64 {
            return Err("--max-response-head-bytes must be at least 64".into());
        }
        self.outputs.check()?;
        if self.ledger.is_some() && self.workload != WorkloadKind::Events {
            return Err("--ledger records event ids: it needs --workload events".into());
        }
        let workload = self.workload(&target)?;
        let tls = match &target.tls_host {
            None => {
                for (flag, given) in [
                    ("--ca-file", self.ca_file.is_some()),
                    ("--insecure", self.insecure),
                    ("--no-resumption", self.no_resumption),
                ] {
                    if given {
                        return Err(format!("{flag} is for https URLs"));
                    }
                }
                None
            }
            Some(host) => {
                if self.insecure && self.ca_file.is_some() {
                    return Err("--insecure checks no certificate: drop --ca-file".into());
                }
                let client = ClientTls {
                    ca_file: self.ca_file.clone(),
                    insecure: self.insecure,
                    identity: None,
                    alpn: vec![crate::tls::server::ALPN_HTTP_1_1.to_vec()],
                    resumption_sessions: if self.no_resumption { 0 } else { 16 },
                };
                // Each thread builds its own (its own session cache); a bad
                // CA file is an error before any starts.
                client.build()?;
                Some(TlsTarget {
                    client,
                    server_name: host.clone(),
                })
            }
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(LoadPlan {
            duration: match (self.duration, self.requests) {
                // --slo: each step's own default.
                (None, None) if self.slo.is_some() => None,
                (None, None) => Some(Duration::from_secs(10)),
                (duration, _) => duration,
            },
            target,
            cpus,
            connections: self.connections,
            pipeline: self.pipeline,
            requests: self.requests,
            warmup: self.warmup,
            timeout: self.timeout,
            max_send_lag: self.max_send_lag,
            slo: self
                .slo
                .as_deref()
                .map(super::slo::parse_objectives)
                .transpose()?,
            rate_range: self
                .rate_range
                .as_deref()
                .map(super::slo::parse_rate_range)
                .transpose()?,
            start_at: match self.start_at {
                None => None,
                Some(at) => Some(start_time(at, std::time::SystemTime::now())?),
            },
            rate: self.rate,
            workload,
            seed,
            max_response_head_bytes: self.max_response_head_bytes,
            max_error_ratio: self.max_error_ratio,
            outputs: self.outputs,
            hlog: self.hlog,
            ledger: self.ledger,
            tls,
        })
    }

    fn workload(&self, target: &Target) -> Result<Workload, String> {
        if (self.workload != WorkloadKind::Url || self.scenario.is_some())
            && (self.body.is_some() || !self.headers.is_empty() || self.method != "GET")
        {
            return Err(
                "-X, -H and --body shape --workload url requests; kv, events and scenarios build their own"
                    .into(),
            );
        }
        let kind = match (&self.scenario, self.workload) {
            (Some(_), WorkloadKind::Url | WorkloadKind::Scenario) => WorkloadKind::Scenario,
            (Some(_), other) => {
                return Err(format!(
                    "--scenario is its own workload, not --workload {}",
                    format!("{other:?}").to_lowercase()
                ));
            }
            (None, WorkloadKind::Scenario) => {
                return Err("--workload scenario needs --scenario FILE.toml".into());
            }
            (None, other) => other,
        };
        Ok(match kind {
            WorkloadKind::Scenario => {
                let path = self.scenario.as_ref().expect("checked above");
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--scenario {}: cannot read it: {e}", path.display()))?;
                Workload::Scenario(
                    Scenario::parse(&text, target.base(), &target.authority)
                        .map_err(|e| format!("--scenario {}: {e}", path.display()))?,
                )
            }
            WorkloadKind::Url => {
                let method = &self.method;
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(format!(
                        "-X {method:?}: expected a method in capitals, such as GET or POST"
                    ));
                }
                for header in &self.headers {
                    let valid = header.split_once(':').is_some_and(|(name, value)| {
                        !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                            && !value.contains(['\r', '\n'])
                    });
                    if !valid {
                        return Err(format!("-H {header:?}: expected \"Name: value\""));
                    }
                }
                let body = match &self.body {
                    None => Vec::new(),
                    Some(text) => match text.strip_prefix('@') {
                        Some(path) => std::fs::read(path)
                            .map_err(|e| format!("--body @{path}: cannot read it: {e}"))?,
                        None => text.clone().into_bytes(),
                    },
                };
                Workload::Fixed(FixedRequest::new(
                    method,
                    &target.path,
                    &target.authority,
                    &self.headers,
                    &body,
                ))
            }
            WorkloadKind::Kv => Workload::Kv(KvMix::new(
                target.base(),
                &target.authority,
                self.read_ratio,
                self.delete_ratio,
                self.keys,
                self.key_dist,
                self.value_bytes,
            )),
            WorkloadKind::Events => Workload::Events(EventBatches::new(
                target.base(),
                &target.authority,
                self.batch,
                self.keys,
                self.value_bytes,
                self.events_format,
            )),
        })
    }
}

/// `--start-at`: a time in the next day, not past.
fn start_time(
    unix_seconds: f64,
    now: std::time::SystemTime,
) -> Result<std::time::SystemTime, String> {
    const MOST_AHEAD: Duration = Duration::from_secs(86_400);
    if !unix_seconds.is_finite() || unix_seconds < 0.0 {
        return Err(format!("--start-at {unix_seconds}: not a time"));
    }
    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(unix_seconds);
    match at.duration_since(now) {
        Err(past) => Err(format!(
            "--start-at {unix_seconds} was {:.3} s ago: the machines' clocks disagree, or the time was given too late",
            past.duration().as_secs_f64()
        )),
        Ok(ahead) if ahead > MOST_AHEAD => Err(format!(
            "--start-at {unix_seconds} is more than a day ahead: seconds since the epoch, not milliseconds"
        )),
        Ok(_) => Ok(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_ahead_and_within_a_day() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = start_time(1_800_000_002.5, now).unwrap();
        assert_eq!(at.duration_since(now).unwrap(), Duration::from_millis(2500));
        assert!(
            start_time(1_799_999_999.0, now)
                .unwrap_err()
                .contains("ago")
        );
        assert!(
            start_time(1_800_000_000_000.0, now)
                .unwrap_err()
                .contains("milliseconds")
        );
        assert!(start_time(f64::NAN, now).is_err());
        assert!(start_time(-1.0, now).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_parse() {
        let target = Target::parse("http://127.0.0.1:8080/plaintext?x=1").unwrap();
        assert_eq!(target.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.authority, "127.0.0.1:8080");
        assert_eq!(target.path, "/plaintext?x=1");
        let target = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!(target.address, "[::1]:9000".parse().unwrap());
        assert_eq!(target.path, "/");
        assert_eq!(target.base(), "");
        assert_eq!(
            Target::parse("http://127.0.0.1/api/").unwrap().base(),
            "/api"
        );
        let target = Target::parse("https://localhost/x").unwrap();
        assert_eq!(target.tls_host.as_deref(), Some("localhost"));
        assert_eq!(target.address.port(), 443);
        let target = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(target.tls_host.as_deref(), Some("::1"));
        assert_eq!(Target::parse("http://127.0.0.1/").unwrap().tls_host, None);
        for bad in [
            "ftp://127.0.0.1/",
            "127.0.0.1:8080",
            "http://",
            "http://127.0.0.1:x/",
            "http://::1/",
            "http://user@127.0.0.1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
