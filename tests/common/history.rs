//! A kv history checker. A few clients, each on its own connection and
//! one request at a time, run PUT, DELETE, GET and conditional PUT over a
//! small key set and record what each request was told. After the run the
//! history is checked against itself and against PostgreSQL's final state:
//!
//! - **lost**: a key whose newest acknowledged write is not in the
//!   database, nor replaced there by a later write whose answer was lost;
//! - **refused stored**: a value the database holds whose write was refused;
//! - **stale reads**: a client read a version older than one it had
//!   already read or written, or read a value that no write gave that
//!   version;
//! - **came back**: a client read a key as absent, or with a value, where
//!   no delete (or write) since what it last saw explains it;
//! - **double wins**: two conditional writes naming the same version both
//!   acknowledged.
//!
//! Values are unique (`client-sequence`), so each stored value names the
//! write that put it there.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use millrace::rng::Rng;
use millrace::writeback::queue::Version;

use super::postgres::Postgres;
use super::try_read_response;

/// Keys each run writes.
const KEYS: u64 = 8;

/// Clients, each one connection with one request at a time.
const CLIENTS: usize = 4;

/// Time between one client's requests: about 50 a second each, light
/// beside the event load the scenarios drive.
const PACE: Duration = Duration::from_millis(20);

/// An answer later than this is no answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What a request asked.
#[derive(Clone, Debug)]
enum Kind {
    Get,
    Put {
        value: String,
    },
    /// A PUT with `If-Match` (the version) or `If-None-Match: *` (`None`).
    PutIf {
        value: String,
        if_match: Option<Version>,
    },
    Delete,
}

/// What it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// 202, with the write's version.
    Written(Version),
    /// Refused before anything was written (4xx, or a 503 that says so),
    /// with the answer's status and body.
    Refused(u16, String),
    /// No answer, or a 503 after which the write may still land.
    Unknown,
    /// 200 with a version and a value, or 404 (`None`).
    Read(Option<(Version, String)>),
    /// A read that got no answer or an error: it observed nothing.
    Unread,
}

#[derive(Clone, Debug)]
struct Op {
    key: u64,
    kind: Kind,
    outcome: Outcome,
}

/// A running history; [`History::finish`] stops it.
pub struct History {
    prefix: String,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Op>>>,
}

impl History {
    /// Start the clients against `addr`; keys are `{name}:{n}`.
    pub fn start(addr: SocketAddr, name: &str, seed: u64) -> History {
        let prefix = format!("h{}-{name}", std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|c| {
                let stop = Arc::clone(&stop);
                let prefix = prefix.clone();
                thread::spawn(move || {
                    client(addr, &prefix, c, seed ^ ((c as u64 + 1) * 0x9e37), &stop)
                })
            })
            .collect();
        History {
            prefix,
            stop,
            clients,
        }
    }

    /// Stop the clients and hand their histories over.
    pub fn finish(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        let per_client = self
            .clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect();
        Recorded {
            prefix: self.prefix,
            per_client,
        }
    }
}

/// A finished history, to check once the queue has drained.
pub struct Recorded {
    prefix: String,
    per_client: Vec<Vec<Op>>,
}

/// What a history says against itself and the database.
#[derive(Debug, Default)]
pub struct KvTally {
    pub ops: usize,
    pub written: usize,
    pub unknown: usize,
    pub refused: usize,
    pub reads: usize,
    /// Reads that got no answer or an error (503).
    pub unread: usize,
    pub lost: usize,
    /// The keys of the writes lost, as the clients wrote them.
    pub lost_keys: Vec<String>,
    pub refused_stored: usize,
    pub stale_reads: usize,
    pub came_back: usize,
    pub double_wins: usize,
    /// What each violation was, for the failure message.
    pub notes: Vec<String>,
}

impl KvTally {
    /// The row for the fault suite's kv table.
    pub fn row(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.ops,
            self.written,
            self.unknown,
            self.refused,
            self.reads,
            self.lost,
            self.refused_stored,
            self.stale_reads,
            self.came_back,
            self.double_wins
        )
    }

    /// No violation of any kind.
    pub fn assert_consistent(&self) {
        assert!(
            self.written > 0,
            "some kv writes were acknowledged: {self:?}"
        );
        assert!(
            self.lost + self.refused_stored + self.stale_reads + self.came_back + self.double_wins
                == 0,
            "the kv history is inconsistent: {self:?}"
        );
    }
}

/// The table's head.
pub const KV_TABLE_HEAD: &str = "| scenario | kv requests | written | unknown | refused | reads | lost | refused stored | stale reads | came back | double wins |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

impl Recorded {
    /// The key numbered `n`, as the clients wrote it.
    pub fn key(&self, n: u64) -> String {
        format!("{}:{n}", self.prefix)
    }

    /// Check the history against itself and against `postgres`'s rows.
    pub fn check(&self, postgres: &Postgres) -> KvTally {
        let mut tally = KvTally::default();
        let all: Vec<&Op> = self.per_client.iter().flatten().collect();
        tally.ops = all.len();
        for op in &all {
            match (&op.kind, &op.outcome) {
                (_, Outcome::Written(_)) => tally.written += 1,
                (_, Outcome::Unknown) => tally.unknown += 1,
                (_, Outcome::Refused(..)) => tally.refused += 1,
                (Kind::Get, Outcome::Read(_)) => tally.reads += 1,
                (Kind::Get, Outcome::Unread) => tally.unread += 1,
                _ => {}
            }
        }
        // Each acknowledged version's write, and the values of writes that
        // may have landed or were refused.
        let mut by_version: HashMap<(u64, Version), &Op> = HashMap::new();
        for op in &all {
            if let Outcome::Written(v) = op.outcome {
                by_version.insert((op.key, v), op);
            }
        }
        let value_of = |op: &Op| match &op.kind {
            Kind::Put { value } | Kind::PutIf { value, .. } => Some(value.clone()),
            _ => None,
        };
        let stored = self.stored(postgres);
        for key in 0..KEYS {
            let newest = all
                .iter()
                .filter(|op| op.key == key)
                .filter_map(|op| match op.outcome {
                    Outcome::Written(v) => Some((v, *op)),
                    _ => None,
                })
                .max_by_key(|(v, _)| *v);
            let maybe = |value: &Option<String>| {
                all.iter().any(|op| {
                    op.key == key
                        && op.outcome == Outcome::Unknown
                        && match (&op.kind, value) {
                            (Kind::Delete, None) => true,
                            (Kind::Put { value: v } | Kind::PutIf { value: v, .. }, Some(s)) => {
                                v == s
                            }
                            _ => false,
                        }
                })
            };
            match (newest, stored.get(&key)) {
                (None, None) => {}
                (None, Some((_, value))) => {
                    if !maybe(value) {
                        tally.lost += 1;
                        tally.lost_keys.push(self.key(key));
                        tally
                            .notes
                            .push(format!("key {key}: {value:?} stored, written by no one"));
                    }
                }
                (Some((v, op)), None) => {
                    tally.lost += 1;
                    tally.lost_keys.push(self.key(key));
                    tally.notes.push(format!(
                        "key {key}: {:?} acknowledged as {v}, nothing stored",
                        op.kind
                    ));
                }
                (Some((v, op)), Some((stored_v, value))) => {
                    let ok = if *stored_v == v {
                        value_of(op) == *value
                    } else {
                        *stored_v > v && maybe(value)
                    };
                    if !ok {
                        tally.lost += 1;
                        tally.lost_keys.push(self.key(key));
                        tally.notes.push(format!(
                            "key {key}: newest acknowledged {:?} at {v}, stored {value:?} at {stored_v}",
                            op.kind
                        ));
                    }
                }
            }
            if let Some((_, Some(value))) = stored.get(&key) {
                let refused = all.iter().find(|op| {
                    op.key == key
                        && matches!(op.outcome, Outcome::Refused(..))
                        && value_of(op).as_ref() == Some(value)
                });
                if let Some(op) = refused {
                    tally.refused_stored += 1;
                    tally.notes.push(format!(
                        "key {key}: refused value {value} stored ({:?})",
                        op.outcome
                    ));
                }
            }
        }
        // Per client, in its own order: what it saw never goes back.
        for ops in &self.per_client {
            let mut seen: HashMap<u64, Version> = HashMap::new();
            for op in ops {
                let last = seen.get(&op.key).copied();
                match &op.outcome {
                    Outcome::Written(v) => {
                        seen.insert(op.key, last.map_or(*v, |l| l.max(*v)));
                    }
                    Outcome::Read(Some((v, value))) => {
                        if last.is_some_and(|l| *v < l) {
                            tally.stale_reads += 1;
                            tally.notes.push(format!(
                                "key {}: read {v} after seeing {}",
                                op.key,
                                last.unwrap()
                            ));
                        }
                        if let Some(writer) = by_version.get(&(op.key, *v))
                            && value_of(writer).as_ref() != Some(value)
                        {
                            tally.stale_reads += 1;
                            tally.notes.push(format!(
                                "key {}: read {value:?} as {v}, written as {:?}",
                                op.key, writer.kind
                            ));
                        }
                        seen.insert(op.key, last.map_or(*v, |l| l.max(*v)));
                    }
                    Outcome::Read(None) => {
                        // Absent: what this client last saw must have been
                        // a delete, or some delete may have come after it.
                        let Some(last) = last else { continue };
                        let was_delete = by_version
                            .get(&(op.key, last))
                            .is_some_and(|w| matches!(w.kind, Kind::Delete));
                        let explained = was_delete
                            || all.iter().any(|o| {
                                o.key == op.key
                                    && matches!(o.kind, Kind::Delete)
                                    && match o.outcome {
                                        Outcome::Written(d) => d > last,
                                        Outcome::Unknown => true,
                                        _ => false,
                                    }
                            });
                        if !explained {
                            tally.came_back += 1;
                            tally.notes.push(format!(
                                "key {}: absent after seeing {last}, no delete since",
                                op.key
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        // Compare-and-set: one winner per version named.
        let mut winners: HashMap<(u64, Version), usize> = HashMap::new();
        for op in &all {
            if let (
                Kind::PutIf {
                    if_match: Some(v), ..
                },
                Outcome::Written(_),
            ) = (&op.kind, &op.outcome)
            {
                *winners.entry((op.key, *v)).or_default() += 1;
            }
        }
        for ((key, v), n) in winners {
            if n > 1 {
                tally.double_wins += n - 1;
                tally
                    .notes
                    .push(format!("key {key}: {n} writes won If-Match {v}"));
            }
        }
        tally
    }

    /// Each key's row: its version and its value (`None`: deleted).
    fn stored(&self, postgres: &Postgres) -> HashMap<u64, (Version, Option<String>)> {
        let sql = format!(
            "select encode(key, 'escape'), version_ms, version_seq, coalesce(encode(value, 'escape'), '-') \
             from kv where position('{}:'::bytea in key) = 1",
            self.prefix
        );
        postgres
            .query(&sql)
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('|');
                let key = fields.next()?.rsplit(':').next()?.parse().ok()?;
                let version = Version {
                    ms: fields.next()?.parse().ok()?,
                    seq: fields.next()?.parse().ok()?,
                };
                let value = match fields.next()? {
                    "-" => None,
                    value => Some(value.to_string()),
                };
                Some((key, (version, value)))
            })
            .collect()
    }
}

/// One client's loop: a request at a time until `stop`.
fn client(addr: SocketAddr, prefix: &str, id: usize, seed: u64, stop: &AtomicBool) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut ops = Vec::new();
    let mut stream: Option<TcpStream> = None;
    // The version this client last saw a value at, per key.
    let mut value_seen: HashMap<u64, Version> = HashMap::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let key = rng.below(KEYS);
        sequence += 1;
        let value = format!("c{id}-{sequence}");
        let roll = rng.below(100);
        let kind = match roll {
            0..40 => Kind::Get,
            40..70 => Kind::Put { value },
            70..80 => Kind::Delete,
            _ => Kind::PutIf {
                value,
                if_match: value_seen.get(&key).copied(),
            },
        };
        let path = format!("/v1/kv/{prefix}:{key}");
        let request = match &kind {
            Kind::Get => format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
            Kind::Delete => format!("DELETE {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
            Kind::Put { value } => put(&path, "", value),
            Kind::PutIf {
                value,
                if_match: Some(v),
            } => put(&path, &format!("If-Match: \"{v}\"\r\n"), value),
            Kind::PutIf {
                value,
                if_match: None,
            } => put(&path, "If-None-Match: *\r\n", value),
        };
        let answer = exchange(addr, &mut stream, request.as_bytes());
        let outcome = judge(&kind, answer);
        match &outcome {
            Outcome::Read(Some((v, _))) => {
                value_seen.insert(key, *v);
            }
            Outcome::Read(None) => {
                value_seen.remove(&key);
            }
            Outcome::Written(v) if !matches!(kind, Kind::Delete) => {
                value_seen.insert(key, *v);
            }
            Outcome::Written(_) => {
                value_seen.remove(&key);
            }
            _ => {}
        }
        ops.push(Op { key, kind, outcome });
        if let Some(rest) = PACE.checked_sub(started.elapsed()) {
            thread::sleep(rest);
        }
    }
    ops
}

fn put(path: &str, condition: &str, value: &str) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: t\r\n{condition}Content-Length: {}\r\n\r\n{value}",
        value.len()
    )
}

/// How one exchange went.
enum Exchange {
    /// No connection: the request was never sent.
    NotSent,
    /// Sent, and no answer came.
    Lost,
    /// Answered.
    Answer(super::Response),
}

/// Send one request on the client's connection (connecting first if need
/// be) and read its answer; on any failure the connection is dropped.
fn exchange(addr: SocketAddr, stream: &mut Option<TcpStream>, request: &[u8]) -> Exchange {
    if stream.is_none() {
        let connected = TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(s)
        });
        match connected {
            Ok(s) => *stream = Some(s),
            Err(_) => {
                thread::sleep(PACE);
                return Exchange::NotSent;
            }
        }
    }
    let Some(s) = stream.as_mut() else {
        return Exchange::NotSent;
    };
    let answer = s
        .write_all(request)
        .ok()
        .and_then(|()| try_read_response(s).ok());
    let close = answer.as_ref().is_none_or(|r| {
        r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    });
    if close {
        *stream = None;
    }
    answer.map_or(Exchange::Lost, Exchange::Answer)
}

/// Refusals that leave nothing: the write was never run. (A write whose
/// script ran and whose replicas did not confirm it says "queued on the
/// primary" and may land.)
const REFUSED_BEFORE_WRITING: [&str; 5] = [
    "backlog",
    "max_redis_in_flight",
    "maxmemory",
    "online replicas",
    "read-through",
];

fn judge(kind: &Kind, exchange: Exchange) -> Outcome {
    let version = |r: &super::Response| {
        r.header("etag")
            .and_then(|t| Version::parse(t.trim_matches('"').as_bytes()))
    };
    let answer = match exchange {
        Exchange::NotSent if matches!(kind, Kind::Get) => return Outcome::Unread,
        Exchange::NotSent => return Outcome::Refused(0, "not sent".into()),
        Exchange::Lost => None,
        Exchange::Answer(r) => Some(r),
    };
    match (kind, answer) {
        (Kind::Get, None) => Outcome::Unread,
        (Kind::Get, Some(r)) => match r.status {
            200 => match version(&r) {
                Some(v) => Outcome::Read(Some((v, r.text()))),
                None => Outcome::Unread,
            },
            404 => Outcome::Read(None),
            _ => Outcome::Unread,
        },
        (_, None) => Outcome::Unknown,
        (_, Some(r)) => match r.status {
            202 => version(&r).map_or(Outcome::Unknown, Outcome::Written),
            503 if r.text().contains("queued on the primary")
                || !REFUSED_BEFORE_WRITING
                    .iter()
                    .any(|why| r.text().contains(why)) =>
            {
                Outcome::Unknown
            }
            status => Outcome::Refused(status, r.text()),
        },
    }
}
