//! A Redis Cluster of our own for a test, started and stopped by
//! scripts/redis-cluster.sh on free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// A running cluster; dropping it stops it and removes its files.
pub struct RedisCluster {
    /// Where its nodes keep their files.
    pub dir: PathBuf,
    /// The first node's port; the others follow.
    pub port: u16,
    /// Every node, masters first as created.
    pub nodes: Vec<SocketAddr>,
    /// Password, if any.
    pub password: Option<String>,
    /// Its nodes also listen for TLS, each on its port + [`TLS_OFFSET`].
    pub tls: bool,
    /// This process's claims on the port ranges, removed on drop.
    claims: Vec<PathBuf>,
}

/// How far above its plain port a node's TLS port is
/// (scripts/redis-cluster.sh --tls).
pub const TLS_OFFSET: u16 = 1000;

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, None, 2000)
    }

    /// The same, with a password and a node timeout (failover speed).
    pub fn start_with(
        masters: usize,
        replicas: usize,
        password: Option<&str>,
        node_timeout_ms: u32,
    ) -> RedisCluster {
        RedisCluster::start_configured(masters, replicas, password, node_timeout_ms, &[])
    }

    /// The same, with more options of scripts/redis-cluster.sh (such as
    /// `--appendonly no`, `--maxmemory-policy allkeys-lru`).
    pub fn start_configured(
        masters: usize,
        replicas: usize,
        password: Option<&str>,
        node_timeout_ms: u32,
        script_options: &[&str],
    ) -> RedisCluster {
        let count = masters * (replicas + 1);
        let tls = script_options.contains(&"--tls");
        let (port, claims) = free_port_range(count, tls);
        let dir =
            std::env::temp_dir().join(format!("millrace-redis-{}-{port}", std::process::id()));
        let mut command = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-cluster.sh"
        ));
        command.args([
            "start",
            "--masters",
            &masters.to_string(),
            "--replicas",
            &replicas.to_string(),
            "--port",
            &port.to_string(),
            "--node-timeout-ms",
            &node_timeout_ms.to_string(),
        ]);
        command.arg("--dir").arg(&dir);
        command.args(script_options);
        if let Some(password) = password {
            command.args(["--password", password]);
        }
        let output = command.output().expect("run scripts/redis-cluster.sh");
        let cluster = RedisCluster {
            dir,
            port,
            nodes: (0..count as u16)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], port + i)))
                .collect(),
            password: password.map(str::to_string),
            tls,
            claims,
        };
        assert!(
            output.status.success(),
            "the cluster did not start:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
    }

    /// The masters' addresses as created (the first `masters` nodes).
    pub fn seeds(&self) -> Vec<SocketAddr> {
        self.nodes.clone()
    }

    /// The seeds as `--redis-seeds` and `MILLRACE_REDIS_SEEDS` take them.
    pub fn seed_list(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|s| s.to_string()).collect();
        seeds.join(",")
    }

    /// The nodes' TLS ports as a seed list.
    pub fn tls_seed_list(&self) -> String {
        assert!(self.tls, "a cluster started without --tls");
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("{}:{}", s.ip(), s.port() + TLS_OFFSET))
            .collect();
        seeds.join(",")
    }

    /// `redis-cli -p PORT args...`, its standard output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        let output = command.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kill the node on `port` (SIGKILL) and start it again from its own
    /// files, as scripts/redis-cluster.sh restart does; returns once the
    /// cluster is ok again.
    pub fn restart(&self, port: u16) {
        self.run_restart(&["--port", &port.to_string()]);
    }

    /// Kill every node at once and start them all again.
    pub fn restart_all(&self) {
        self.run_restart(&["--all"]);
    }

    fn run_restart(&self, which: &[&str]) {
        let output = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-cluster.sh"
        ))
        .arg("restart")
        .args(which)
        .arg("--dir")
        .arg(&self.dir)
        .args(
            self.password
                .as_deref()
                .map(|p| vec!["--password", p])
                .unwrap_or_default(),
        )
        .output()
        .expect("run scripts/redis-cluster.sh restart");
        assert!(
            output.status.success(),
            "the cluster did not come back ({which:?}):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The process id of the node on `port`.
    pub fn pid(&self, port: u16) -> i32 {
        std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// `CLUSTER NODES` lines as (id, port, flags, master id, slots).
    pub fn nodes_table(&self) -> Vec<(String, u16, String, String, String)> {
        self.cli(self.port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                Some((
                    f[0].to_string(),
                    port,
                    f[2].to_string(),
                    f[3].to_string(),
                    f.get(8..).map(|s| s.join(" ")).unwrap_or_default(),
                ))
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-cluster.sh"
        ))
        .arg("stop")
        .arg("--dir")
        .arg(&self.dir)
        .output();
        for claim in &self.claims {
            let _ = std::fs::remove_file(claim);
        }
    }
}

/// A base port with `count` free ports after it, and free bus ports
/// (+10000), claimed with a file that other test processes respect: tests
/// run in parallel processes, and two clusters on one range would join.
fn free_port_range(count: usize, tls: bool) -> (u16, Vec<PathBuf>) {
    let claims = std::env::temp_dir().join("millrace-redis-ports");
    std::fs::create_dir_all(&claims).unwrap();
    let seed = claim_seed();
    for attempt in 0..200 {
        // Bases from 20000 and buses (base + 10000) from 30000, never each
        // other, and all below the ephemeral range (32768 and up), where an
        // outgoing connection could take a bus port before Redis binds it.
        let base = 20_000 + ((seed + attempt * 104_729) % 138) * 20;
        let Some(claim) = claim_range(&claims, base) else {
            continue;
        };
        let mut held = vec![claim];
        // TLS ports: the range TLS_OFFSET above, itself a base others claim.
        let tls_base = base + usize::from(TLS_OFFSET);
        if tls {
            match claim_range(&claims, tls_base) {
                Some(claim) => held.push(claim),
                None => {
                    let _ = std::fs::remove_file(&held[0]);
                    continue;
                }
            }
        }
        let free = (0..count).all(|i| {
            let port = (base + i) as u16;
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
                && (!tls || TcpListener::bind(("127.0.0.1", port + TLS_OFFSET)).is_ok())
        });
        if free {
            return (base as u16, held);
        }
        for claim in held {
            let _ = std::fs::remove_file(claim);
        }
    }
    panic!("no free port range for a Redis Cluster");
}

/// A loopback address for a server that must keep it across restarts,
/// claimed like the clusters' ranges. It lies below the ephemeral range, so
/// no socket bound to port 0 (a proxy's, a client's) can take it while the
/// server is down; the claim keeps other test processes off it.
pub struct ListenPort {
    /// The address.
    pub addr: SocketAddr,
    claim: PathBuf,
}

impl ListenPort {
    /// A free one.
    pub fn claim() -> ListenPort {
        let claims = std::env::temp_dir().join("millrace-listen-ports");
        std::fs::create_dir_all(&claims).unwrap();
        let seed = claim_seed();
        for attempt in 0..200 {
            // 10000 to 19999: below the clusters' ranges and the ephemeral one.
            let port = 10_000 + (seed + attempt * 104_729) % 10_000;
            let Some(claim) = claim_range(&claims, port) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
                return ListenPort { addr, claim };
            }
            let _ = std::fs::remove_file(&claim);
        }
        panic!("no free listen port");
    }
}

impl Drop for ListenPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// Where a search for a free port starts: different per process and run,
/// so that parallel tests seldom try the same ports.
fn claim_seed() -> usize {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize)
        ^ (std::process::id() as usize).wrapping_mul(7919)
}

/// Claim the range at `base` for this process, unless a live process holds
/// it; a claim left by a process that is gone is taken over.
fn claim_range(claims: &std::path::Path, base: usize) -> Option<PathBuf> {
    let path = claims.join(base.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                write!(file, "{}", std::process::id()).ok()?;
                return Some(path);
            }
            Err(_) => {
                let holder: i32 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                // SAFETY: kill(2) with signal 0 only checks that the process exists.
                let alive = unsafe { libc::kill(holder, 0) } == 0;
                if alive {
                    return None;
                }
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    None
}
