//! A private PostgreSQL for a test, started and stopped by
//! scripts/postgres.sh on a free port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");

/// A running PostgreSQL; dropping it stops it and removes its files.
pub struct Postgres {
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The connection URL.
    pub url: String,
    /// Whether it takes TLS.
    tls: bool,
}

impl Postgres {
    /// Start one on a free port.
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// Start one that takes TLS, with a certificate from a private CA
    /// ([`Postgres::ca_file`]).
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("millrace-pg-{}-{port}", std::process::id()));
        let mut postgres = Postgres {
            dir,
            port,
            url: String::new(),
            tls,
        };
        postgres.url = postgres.run("start", &[]);
        postgres
    }

    /// Stop it, keeping its data, to start it again with [`Postgres::resume`].
    pub fn pause(&self) {
        self.run("stop", &["--keep"]);
    }

    /// Crash it (`pg_ctl stop -m immediate`: no checkpoint, connections cut),
    /// keeping its data; [`Postgres::resume`] recovers it.
    pub fn crash(&self) {
        self.run("stop", &["--keep", "--mode", "immediate"]);
    }

    /// Start it again after [`Postgres::pause`] or [`Postgres::crash`].
    pub fn resume(&self) {
        self.run("start", &[]);
    }

    /// The private CA's certificate (PEM), with [`Postgres::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `psql -Atc sql`, its trimmed output, or `None` if it failed (a table
    /// not created yet).
    pub fn try_query(&self, sql: &str) -> Option<String> {
        let output = Command::new("psql")
            .args([&self.url, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `psql -Atc sql`, its trimmed output.
    pub fn query(&self, sql: &str) -> String {
        let output = Command::new("psql")
            .args([&self.url, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn run(&self, command: &str, extra: &[&str]) -> String {
        let output = Command::new(SCRIPT)
            .arg(command)
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .args(if self.tls && command == "start" {
                &["--tls"][..]
            } else {
                &[]
            })
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            output.status.success(),
            "postgres.sh {command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .arg("stop")
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }
}
