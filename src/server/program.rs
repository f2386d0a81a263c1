//! A service as a program: `NAME serve` and `NAME writeback`, with the
//! same flags, environment variables and config file as `millrace serve`
//! and `millrace writeback`, plus the service's own options.
//!
//! A service's options are a `clap::Args` struct: flags, each with its
//! environment variable if it says so, and keys of the `[app]` table of
//! the `--config` file (named as the flags, with `_` for `-`).
//! Precedence, as for millrace's own: flag > environment > file > default.
//! Their names must not be millrace's.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;

use clap::{Args, Command, FromArgMatches};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use super::App;
use super::config::{ServeOptions, read_file};
use super::writeback::{WritebackOptions, run_command};

/// A service without options of its own.
#[derive(Args, Debug, Default)]
pub struct NoOptions {}

/// Run `NAME` (`about` says what it is): parse the command line, make the
/// service with `make` from its options, and serve it or drain its
/// write-back queue. Returns the exit status.
pub fn run<O, S>(
    name: &'static str,
    about: &'static str,
    make: impl FnOnce(&O) -> App<S>,
) -> ExitCode
where
    O: Args + FromArgMatches,
    S: 'static,
{
    init_logging();
    match parse_and_run(name, about, make) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_and_run<O, S>(
    name: &'static str,
    about: &'static str,
    make: impl FnOnce(&O) -> App<S>,
) -> Result<(), String>
where
    O: Args + FromArgMatches,
    S: 'static,
{
    // The [app] table sets the service's options' defaults, under the
    // flags and environment; so the file is read before they are parsed.
    let app_table = match config_path() {
        Some(path) => read_file(&path)?.1,
        None => None,
    };
    // Each `augment_args` sets the command's about from its struct's
    // doc comment: say what the command does last.
    let serve = O::augment_args(ServeOptions::augment_args(Command::new("serve")));
    let serve = with_file_defaults(serve, app_table.as_ref())?
        .about("Serve: one pinned executor per CPU, each with its own io_uring ring and listener");
    let writeback = O::augment_args(WritebackOptions::augment_args(Command::new("writeback")))
        .about(
            "Drain the write-back queue from Redis into PostgreSQL (the database core, on its own)",
        );
    let cli = Command::new(name)
        .about(about)
        .subcommand_required(true)
        .subcommand(serve)
        .subcommand(writeback);
    let matches = cli.get_matches();
    match matches.subcommand() {
        Some(("serve", matches)) => {
            let serve = ServeOptions::from_arg_matches(matches).map_err(|e| e.to_string())?;
            let own = O::from_arg_matches(matches).map_err(|e| e.to_string())?;
            let print_config = serve.print_config;
            let config = serve.resolve_for_app()?;
            if print_config {
                print!("{}", config.to_toml());
                return Ok(());
            }
            make(&own).serve(&config)
        }
        Some(("writeback", matches)) => {
            let options = WritebackOptions::from_arg_matches(matches).map_err(|e| e.to_string())?;
            let own = O::from_arg_matches(matches).map_err(|e| e.to_string())?;
            let tables = make(&own).write_back_tables()?;
            run_command(options, tables)
        }
        _ => unreachable!("a subcommand is required"),
    }
}

/// The `--config` file named on the command line or by `MILLRACE_CONFIG`.
fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("MILLRACE_CONFIG").map(PathBuf::from)
}

/// `command` with each key of `table` as the default of the argument it
/// names; a key that names none is an error.
fn with_file_defaults(
    mut command: Command,
    table: Option<&toml::Table>,
) -> Result<Command, String> {
    let Some(table) = table else {
        return Ok(command);
    };
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "config file [app] {key}: {other} is not a plain value"
                ));
            }
        };
        if !command.get_arguments().any(|a| a.get_id() == key.as_str()) {
            return Err(format!("config file [app]: no option is called {key}"));
        }
        // The default outlives the parse: leaked once, at start.
        let value: &'static str = Box::leak(value.into_boxed_str());
        command = command.mut_arg(key.as_str(), |arg| arg.default_value(value));
    }
    Ok(command)
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` unless set).
pub fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| Targets::from_str(&spec).ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        )
        .try_init();
}
