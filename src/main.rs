//! The `millrace` command: `serve`, `load`, `report`, `writeback`,
//! `doctor`, `plan` and `plot`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use millrace::host::doctor;
use millrace::load::LoadOptions;
use millrace::server::config::ServeOptions;
use millrace::server::writeback::{self, WritebackOptions};
use millrace::writeback::table::Tables;
use millrace::{load, routes};

/// A thread-per-core io_uring API server.
#[derive(Parser)]
#[command(name = "millrace", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API: one pinned executor per CPU, each with its own io_uring ring and listener
    Serve(Box<ServeOptions>),
    /// Load an HTTP/1.1 server and report throughput and latency percentiles (coordinated-omission corrected in open loop)
    Load(Box<LoadOptions>),
    /// Add the interval logs of several load runs (other machines' included) into one report
    Report(load::merge::ReportOptions),
    /// Drain the write-back queue from Redis into PostgreSQL (the database core, on its own)
    Writeback(Box<WritebackOptions>),
    /// Check this host: kernel, io_uring features, limits; exits 1 if millrace cannot run
    Doctor(DoctorOptions),
    /// The hardware a target load needs, from measured per-core costs
    Plan(PlanOptions),
    /// Draw benchmark results as SVG (scripts/bench.sh uses it)
    #[command(subcommand)]
    Plot(PlotCommand),
}

fn main() -> ExitCode {
    millrace::server::program::init_logging();
    match Cli::parse().command {
        Command::Serve(options) => {
            let print_config = options.print_config;
            let config = match options.resolve() {
                Ok(config) => config,
                Err(error) => return fail(&error),
            };
            if print_config {
                print!("{}", config.to_toml());
                return ExitCode::SUCCESS;
            }
            match routes::app(config.route_limits()).serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        Command::Load(options) => match load::run(*options) {
            Ok(outcome) if outcome.too_many_errors => {
                eprintln!(
                    "millrace load: error ratio {:.4}% is above --max-error-ratio",
                    outcome.report.error_ratio * 100.0
                );
                ExitCode::FAILURE
            }
            Ok(outcome) if outcome.slo_missed => {
                eprintln!("millrace load: no rate in --rate-range met --slo");
                ExitCode::FAILURE
            }
            Ok(outcome) if outcome.generator_behind => {
                eprintln!(
                    "millrace load: the generator fell behind its schedule: these latencies are not the server's"
                );
                ExitCode::FAILURE
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("millrace load: {error}");
                ExitCode::from(2)
            }
        },
        Command::Report(options) => match load::merge::run(&options) {
            Ok(merged) if merged.report.generator.behind => {
                eprintln!(
                    "millrace report: a generator fell behind its schedule: these latencies are not the server's"
                );
                ExitCode::FAILURE
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("millrace report: {error}");
                ExitCode::from(2)
            }
        },
        Command::Writeback(options) => match Tables::new(routes::tables())
            .and_then(|tables| writeback::run_command(*options, tables))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
        Command::Plan(options) => match plan_command(&options) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("millrace plan: {error}");
                ExitCode::from(2)
            }
        },
        Command::Plot(command) => match plot_command(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("millrace plot: {error}");
                ExitCode::from(2)
            }
        },
        Command::Doctor(options) => {
            let (mut report, runnable) = doctor::report(&doctor::checks());
            let mut tuned = true;
            if let Some(profile) = &options.profile {
                match doctor::tuning_report(profile) {
                    Ok((text, ok)) => {
                        report.push_str(&text);
                        tuned = ok;
                    }
                    Err(error) => {
                        eprintln!("millrace doctor: {error}");
                        return ExitCode::from(2);
                    }
                }
            }
            let mut durable = true;
            let seeds = match options.redis_seed_list() {
                Ok(seeds) => seeds,
                Err(error) => {
                    eprintln!("millrace doctor: {error}");
                    return ExitCode::from(2);
                }
            };
            if !seeds.is_empty() || options.postgres_url.is_some() {
                let postgres = options
                    .postgres_url
                    .as_deref()
                    .map(|url| (url, options.postgres_ca_file.as_deref()));
                let (text, safe) =
                    doctor::durability_report(&seeds, postgres, options.ack_replicas);
                report.push_str(&text);
                durable = safe;
            }
            print!("{report}");
            if runnable && tuned && durable {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `millrace plot` charts.
#[derive(Subcommand)]
enum PlotCommand {
    /// Latency by percentile, a curve per NAME=FILE.hgrm (millrace load --hgrm, wrk2)
    Percentiles {
        /// Chart title
        #[arg(long)]
        title: String,
        /// Where the SVG goes
        #[arg(long, value_name = "FILE.svg")]
        out: std::path::PathBuf,
        /// Curves: NAME=FILE.hgrm
        #[arg(required = true, value_name = "NAME=FILE")]
        curves: Vec<String>,
    },
    /// A bar per NAME=VALUE
    Bars {
        /// Chart title
        #[arg(long)]
        title: String,
        /// What the values are, such as "requests per server CPU-second"
        #[arg(long)]
        y_label: String,
        /// Where the SVG goes
        #[arg(long, value_name = "FILE.svg")]
        out: std::path::PathBuf,
        /// Bars: NAME=VALUE
        #[arg(required = true, value_name = "NAME=VALUE")]
        bars: Vec<String>,
    },
}

fn plot_command(command: &PlotCommand) -> Result<(), String> {
    let split = |pair: &str| {
        pair.split_once('=')
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .ok_or(format!("{pair:?} is not NAME=VALUE"))
    };
    match command {
        PlotCommand::Percentiles { title, out, curves } => {
            let curves = curves
                .iter()
                .map(|pair| {
                    let (name, file) = split(pair)?;
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| format!("cannot read {file}: {e}"))?;
                    let points =
                        load::plot::hgrm_curve(&text).map_err(|e| format!("{file}: {e}"))?;
                    Ok((name, points))
                })
                .collect::<Result<Vec<_>, String>>()?;
            load::plot::percentile_chart(out, title, &curves)
        }
        PlotCommand::Bars {
            title,
            y_label,
            out,
            bars,
        } => {
            let bars = bars
                .iter()
                .map(|pair| {
                    let (name, value) = split(pair)?;
                    let value: f64 = value
                        .parse()
                        .map_err(|_| format!("{pair:?}: {value:?} is not a number"))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()?;
            load::plot::bar_chart(out, title, y_label, &bars)
        }
    }
}

/// `millrace plan` flags.
#[derive(clap::Args)]
struct PlanOptions {
    /// Requests per second to plan for
    #[arg(long)]
    rps: f64,
    /// Share of requests that are reads (GET /v1/kv), from 0 to 1; the rest are writes
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Bytes in each value
    #[arg(long, default_value_t = 512)]
    value_bytes: u64,
    /// Bytes in each key
    #[arg(long, default_value_t = 16)]
    key_bytes: u64,
    /// CPUs in one server box
    #[arg(long, default_value_t = 32)]
    cores_per_box: u32,
    /// NIC speed of one box, in Gbit/s
    #[arg(long, default_value_t = 25.0)]
    nic_gbit: f64,
    /// Share of each measured capacity kept free, from 0 to below 1
    #[arg(long, default_value_t = 0.3)]
    headroom: f64,
    /// Requests each load-generator connection keeps in flight
    #[arg(long, default_value_t = 16)]
    pipeline: u32,
    /// Keys kept in the Redis cache (the hot set)
    #[arg(long, default_value_t = 1_000_000)]
    hot_keys: u64,
    /// Seconds of PostgreSQL outage the queue in Redis must absorb
    #[arg(long, default_value_t = 300.0)]
    outage_s: f64,
    /// Replicas per Redis master
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Memory one Redis master may use, in GiB
    #[arg(long, default_value_t = 32.0)]
    redis_memory_gib: f64,
    /// A results file with plan_inputs (scripts/bench.sh writes one); default: this
    /// repository's measurements on its development VM
    #[arg(long, value_name = "FILE")]
    from: Option<std::path::PathBuf>,
    /// A `millrace load --slo` result for GET /v1/kv (scripts/bench-slo.sh writes one): plan the
    /// read cores for the highest rate that kept its latency objective, not for a core run flat out
    #[arg(long, value_name = "FILE.json")]
    slo_from: Option<std::path::PathBuf>,
}

fn plan_command(options: &PlanOptions) -> Result<String, String> {
    let costs = match &options.from {
        None => millrace::host::plan::Costs::defaults(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            millrace::host::plan::Costs::from_json(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let costs = match &options.slo_from {
        None => costs,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            costs
                .with_slo(&text, &path.display().to_string())
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let demand = millrace::host::plan::Demand {
        rps: options.rps,
        read_ratio: options.read_ratio,
        value_bytes: options.value_bytes,
        key_bytes: options.key_bytes,
        cores_per_box: options.cores_per_box,
        nic_gbit: options.nic_gbit,
        headroom: options.headroom,
        pipeline: options.pipeline,
        hot_keys: options.hot_keys,
        outage_s: options.outage_s,
        replicas: options.replicas,
        redis_memory_gib: options.redis_memory_gib,
    };
    let plan = millrace::host::plan::plan(&demand, &costs)?;
    Ok(millrace::host::plan::render(&demand, &costs, &plan))
}

/// `millrace doctor` flags.
#[derive(clap::Args)]
struct DoctorOptions {
    /// Also compare this host with a tuning profile (latency, throughput, or a
    /// .conf path; see tuning/): sysctls, sysfs, the CPU governor and this
    /// process's limits. Drift makes the exit status 1. NIC settings:
    /// tuning/millrace-tune check PROFILE --iface NAME
    #[arg(long, value_name = "PROFILE")]
    profile: Option<String>,
    /// Also read each Redis master's persistence, maxmemory and eviction
    /// policy (host:port[,host:port...]) and say what an acknowledged write
    /// survives; a setting that loses them on a restart makes the exit status 1
    #[arg(long, env = "MILLRACE_REDIS_SEEDS", value_name = "SEEDS")]
    redis_seeds: Option<String>,
    /// Also read PostgreSQL's fsync, synchronous_commit and standbys
    #[arg(long, env = "MILLRACE_POSTGRES_URL", value_name = "URL")]
    postgres_url: Option<String>,
    /// PEM file of CAs to trust for PostgreSQL's certificate, besides the system's
    #[arg(long, env = "MILLRACE_POSTGRES_CA_FILE", value_name = "FILE")]
    postgres_ca_file: Option<std::path::PathBuf>,
    /// The servers' ack_replicas, to judge the replicas against
    #[arg(long, env = "MILLRACE_ACK_REPLICAS", default_value_t = 0)]
    ack_replicas: u32,
}

impl DoctorOptions {
    fn redis_seed_list(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        self.redis_seeds
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("--redis-seeds: {s:?} is not host:port"))
            })
            .collect()
    }
}

fn fail(error: &str) -> ExitCode {
    tracing::error!("{error}");
    eprintln!("millrace: {error}");
    ExitCode::FAILURE
}
