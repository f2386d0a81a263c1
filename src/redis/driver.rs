//! A [`Cluster`] driven over its own io_uring ring, on the calling thread:
//! what the database core, the tests and the benchmark use. (Executor
//! cores drive the same [`Cluster`] from their own ring.)
//!
//! One turn: the links carry out the cluster's requests and send its
//! output ([`Links::prepare`]), the ring waits for a completion or the next
//! deadline, and what completed goes back through the links to the cluster.

use std::io;
use std::time::{Duration, Instant};

use super::cluster::{Cluster, ClusterConfig, CommandToken};
use super::command::{Command, Error};
use super::links::{self, Links};
use super::resp::{OwnedReply, Reply};
use crate::ring::{Completion, Ring};

/// How long [`Client::connect`] tries before giving up.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

/// A blocking Redis Cluster client on the calling thread.
pub struct Client {
    // Field order is drop order: the ring first, so the kernel is done with
    // the connections' buffers before they are freed.
    ring: Ring,
    links: Links,
    cluster: Cluster,
    completions: Vec<Completion>,
    /// Outcomes of the current call, by token.
    outcomes: Vec<Option<Result<OwnedReply, Error>>>,
}

impl Client {
    /// Connect to the cluster behind `config.seeds`: read its layout,
    /// connect to every master and check that the cluster is
    /// `cluster_state:ok`.
    pub fn connect(config: ClusterConfig) -> Result<Client, Error> {
        let ring = Ring::new(256).map_err(|e| Error::Unavailable(format!("io_uring: {e}")))?;
        let now = Instant::now();
        let links = Links::new(&config).map_err(Error::Unavailable)?;
        let mut client = Client {
            ring,
            links,
            cluster: Cluster::new(config, now),
            completions: Vec::new(),
            outcomes: Vec::new(),
        };
        let limit = now + STARTUP_LIMIT;
        let io = |e: io::Error| Error::Unavailable(format!("io_uring: {e}"));
        while !client.cluster.layout_known() {
            if let Some(error) = client.cluster.startup_error() {
                return Err(error);
            }
            if Instant::now() >= limit {
                return Err(Error::Unavailable(
                    "no Redis seed returned the cluster layout within 10 s".into(),
                ));
            }
            client.turn(|_, _| {}).map_err(io)?;
        }
        // Every master must see the cluster as ok, not just the one asked.
        let masters = client.cluster.slot_per_master();
        let infos = client.execute(
            masters
                .iter()
                .map(|&(_, slot)| Command::new(&["CLUSTER", "INFO"], None).routed_to(slot))
                .collect(),
        );
        for ((address, _), info) in masters.iter().zip(infos) {
            let info = info?;
            let text = String::from_utf8_lossy(info.bytes().unwrap_or_default()).into_owned();
            if !text.lines().any(|l| l.trim() == "cluster_state:ok") {
                let state = text
                    .lines()
                    .find(|l| l.starts_with("cluster_state:"))
                    .unwrap_or("no cluster_state")
                    .trim()
                    .to_string();
                return Err(Error::ClusterDown(format!(
                    "{address} reports {state}; millrace needs cluster_state:ok"
                )));
            }
        }
        while !client.cluster.is_ready() {
            if Instant::now() >= limit {
                return Err(Error::Unavailable(
                    "the cluster layout did not cover every slot within 10 s".into(),
                ));
            }
            client.turn(|_, _| {}).map_err(io)?;
        }
        Ok(client)
    }

    /// One slot of each master's, to reach every master with a keyless
    /// command ([`Command::routed_to`]).
    pub fn slot_per_master(&self) -> Vec<(std::net::SocketAddr, super::slot::Slot)> {
        self.cluster.slot_per_master()
    }

    /// The masters this client is connected to.
    pub fn masters(&self) -> Vec<std::net::SocketAddr> {
        self.cluster.masters()
    }

    /// Run one command and wait for its outcome.
    pub fn call(&mut self, command: Command) -> Result<OwnedReply, Error> {
        self.execute(vec![command])
            .pop()
            .expect("one command, one outcome")
    }

    /// Run `commands` pipelined (each node's share in one send per turn)
    /// and wait for every outcome, in the order given.
    pub fn execute(&mut self, commands: Vec<Command>) -> Vec<Result<OwnedReply, Error>> {
        let now = Instant::now();
        let count = commands.len();
        self.outcomes.clear();
        self.outcomes.resize(count, None);
        for (token, command) in commands.into_iter().enumerate() {
            self.cluster.submit(token as CommandToken, command, now);
        }
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let mut left = count;
        while left > 0 {
            let result = self.turn(|token, result| {
                if let Some(slot) = outcomes.get_mut(token as usize)
                    && slot.is_none()
                {
                    *slot = Some(result.map(|r| r.to_owned()));
                    left -= 1;
                }
            });
            if let Err(e) = result {
                for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(Error::Unavailable(format!("io_uring: {e}"))));
                }
                break;
            }
        }
        let results = outcomes
            .drain(..)
            .map(|o| o.expect("every outcome arrived"))
            .collect();
        self.outcomes = outcomes;
        results
    }

    /// Run `commands` pipelined like [`Client::execute`], but hand each
    /// outcome to `each(index, reply)` as it arrives, the reply still in the
    /// receive buffer: nothing is copied unless `each` copies it.
    pub fn execute_each(
        &mut self,
        commands: Vec<Command>,
        mut each: impl FnMut(usize, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut left = commands.len();
        for (token, command) in commands.into_iter().enumerate() {
            self.cluster.submit(token as CommandToken, command, now);
        }
        while left > 0 {
            self.turn(|token, result| {
                left -= 1;
                each(token as usize, result);
            })?;
        }
        Ok(())
    }

    /// Keep `depth` commands in flight until `total` have been answered:
    /// `make(i)` builds the i-th, `done(i, outcome)` sees its reply in place.
    pub fn pipeline(
        &mut self,
        total: u64,
        depth: usize,
        mut make: impl FnMut(u64) -> Command,
        mut done: impl FnMut(u64, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let mut issued = 0u64;
        let mut answered = 0u64;
        while answered < total {
            let now = Instant::now();
            while issued < total && (issued - answered) < depth as u64 {
                self.cluster.submit(issued, make(issued), now);
                issued += 1;
            }
            self.turn(|token, result| {
                answered += 1;
                done(token, result);
            })?;
        }
        Ok(())
    }

    /// One turn of the loop; outcomes go to `sink`.
    fn turn(
        &mut self,
        mut sink: impl FnMut(CommandToken, Result<Reply<'_>, Error>),
    ) -> io::Result<()> {
        let now = Instant::now();
        self.links
            .prepare(&mut self.ring, &mut self.cluster, now, &mut sink);
        self.ring.submit_and_wait(self.cluster.next_deadline(now))?;
        self.completions.clear();
        self.ring.completions(&mut self.completions);
        let now = Instant::now();
        for completion in &self.completions {
            if completion.token.owner == links::OWNER {
                self.links.complete(
                    &mut self.cluster,
                    completion.token,
                    completion.result,
                    completion.flags,
                    now,
                    &mut sink,
                );
            }
        }
        self.links
            .settle_all(&mut self.ring, &mut self.cluster, now, &mut sink);
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Cancel everything and give the kernel a moment to finish with the
        // buffers; the ring is dropped first (field order) either way.
        self.links.close_all();
        let limit = Instant::now() + Duration::from_secs(1);
        while self.links.any_open() && Instant::now() < limit {
            if self.turn(|_, _| {}).is_err() {
                break;
            }
        }
    }
}
