//! Commands, encoded once when built, and what can go wrong with them.

use std::time::Duration;

use super::resp::encode_command;
use super::slot::Slot;

/// A command, encoded, with the slot that routes it (`None`: any node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    bytes: Vec<u8>,
    slot: Option<Slot>,
    /// Only reads: a replica may answer it when the client reads from replicas.
    read_only: bool,
}

impl Command {
    /// `args` (the name first) routed by the slot of `args[key]`; `key`
    /// `None` for a command that names no key.
    pub fn new<A: AsRef<[u8]>>(args: &[A], key: Option<usize>) -> Command {
        let mut bytes =
            Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        encode_command(&mut bytes, args);
        Command {
            bytes,
            slot: key.and_then(|i| args.get(i)).map(|k| Slot::of(k.as_ref())),
            read_only: false,
        }
    }

    /// Mark it as a read that a replica may serve.
    pub fn read_only(mut self) -> Command {
        self.read_only = true;
        self
    }

    /// Whether a replica may serve it.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `GET key`.
    pub fn get(key: &[u8]) -> Command {
        Command::new(&[b"GET", key], Some(1)).read_only()
    }

    /// `SET key value`.
    pub fn set(key: &[u8], value: &[u8]) -> Command {
        Command::new(&[b"SET", key, value], Some(1))
    }

    /// `DEL key`.
    pub fn del(key: &[u8]) -> Command {
        Command::new(&[b"DEL", key], Some(1))
    }

    /// `XADD stream * field value ...`.
    pub fn xadd(stream: &[u8], fields: &[(&[u8], &[u8])]) -> Command {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream, b"*"];
        for (field, value) in fields {
            args.push(field);
            args.push(value);
        }
        Command::new(&args, Some(1))
    }

    /// `XGROUP CREATE stream group id MKSTREAM`.
    pub fn xgroup_create(stream: &[u8], group: &[u8], id: &[u8]) -> Command {
        Command::new(
            &[&b"XGROUP"[..], b"CREATE", stream, group, id, b"MKSTREAM"],
            Some(2),
        )
    }

    /// `XREADGROUP GROUP group consumer COUNT count STREAMS stream id`.
    pub fn xreadgroup(
        stream: &[u8],
        group: &[u8],
        consumer: &[u8],
        count: usize,
        id: &[u8],
    ) -> Command {
        let count = count.to_string();
        Command::new(
            &[
                &b"XREADGROUP"[..],
                b"GROUP",
                group,
                consumer,
                b"COUNT",
                count.as_bytes(),
                b"STREAMS",
                stream,
                id,
            ],
            Some(7),
        )
    }

    /// `XACK stream group id ...`.
    pub fn xack(stream: &[u8], group: &[u8], ids: &[&[u8]]) -> Command {
        let mut args: Vec<&[u8]> = vec![b"XACK", stream, group];
        args.extend_from_slice(ids);
        Command::new(&args, Some(1))
    }

    /// `XAUTOCLAIM stream group consumer min-idle-ms start COUNT count`.
    pub fn xautoclaim(
        stream: &[u8],
        group: &[u8],
        consumer: &[u8],
        min_idle: Duration,
        start: &[u8],
        count: usize,
    ) -> Command {
        let idle = min_idle.as_millis().to_string();
        let count = count.to_string();
        Command::new(
            &[
                &b"XAUTOCLAIM"[..],
                stream,
                group,
                consumer,
                idle.as_bytes(),
                start,
                b"COUNT",
                count.as_bytes(),
            ],
            Some(1),
        )
    }

    /// `WAIT replicas timeout-ms`, routed with `key` so that it runs on the
    /// master that just took that key's write.
    pub fn wait(key: &[u8], replicas: u32, timeout: Duration) -> Command {
        let replicas = replicas.to_string();
        let timeout = timeout.as_millis().to_string();
        let mut command = Command::new(&[b"WAIT", replicas.as_bytes(), timeout.as_bytes()], None);
        command.slot = Some(Slot::of(key));
        command
    }

    /// `EVALSHA sha numkeys key ... arg ...`, routed by the first key.
    pub fn evalsha(sha: &[u8], keys: &[&[u8]], args: &[&[u8]]) -> Command {
        let numkeys = keys.len().to_string();
        let mut all: Vec<&[u8]> = vec![b"EVALSHA", sha, numkeys.as_bytes()];
        all.extend_from_slice(keys);
        all.extend_from_slice(args);
        Command::new(&all, (!keys.is_empty()).then_some(3))
    }

    /// The same command sent to whichever master owns `slot`: how a
    /// keyless command (`CLUSTER INFO`) reaches a chosen master.
    pub fn routed_to(mut self, slot: Slot) -> Command {
        self.slot = Some(slot);
        self
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The slot that routes it.
    pub fn slot(&self) -> Option<Slot> {
        self.slot
    }
}

/// Why a command got no reply from Redis. Error replies (`WRONGTYPE`, ...)
/// are replies, not these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The connection failed after the command was sent: it may or may not
    /// have run. Safe to retry only if the command is idempotent.
    ConnectionLost(String),
    /// No reply within the command timeout.
    Timeout,
    /// More MOVED/ASK redirects than the limit allows.
    TooManyRedirects,
    /// The cluster kept answering TRYAGAIN, CLUSTERDOWN or LOADING until the
    /// command's time ran out.
    ClusterDown(String),
    /// No node owns the slot, or none can be reached.
    Unavailable(String),
    /// Redis refused the credentials.
    Auth(String),
    /// The server sent bytes that are not RESP.
    Protocol(String),
}

impl Error {
    /// The kind's index in [`REDIS_FAILURE_KINDS`](crate::metrics::REDIS_FAILURE_KINDS),
    /// its `/metrics` label.
    pub fn kind_index(&self) -> usize {
        match self {
            Error::ConnectionLost(_) => 0,
            Error::Timeout => 1,
            Error::TooManyRedirects => 2,
            Error::ClusterDown(_) => 3,
            Error::Unavailable(_) => 4,
            Error::Auth(_) => 5,
            Error::Protocol(_) => 6,
        }
    }

    /// Trying the same command again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost(_)
                | Error::Timeout
                | Error::ClusterDown(_)
                | Error::Unavailable(_)
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::ConnectionLost(why) => write!(f, "connection to Redis lost: {why}"),
            Error::Timeout => f.write_str("Redis did not answer in time"),
            Error::TooManyRedirects => f.write_str("too many cluster redirects"),
            Error::ClusterDown(why) => write!(f, "Redis Cluster unavailable: {why}"),
            Error::Unavailable(why) => write!(f, "no Redis node available: {why}"),
            Error::Auth(why) => write!(f, "Redis refused the credentials: {why}"),
            Error::Protocol(why) => write!(f, "Redis protocol error: {why}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_kind_has_its_own_label() {
        use crate::metrics::REDIS_FAILURE_KINDS;
        let labels = [
            (Error::ConnectionLost(String::new()), "connection_lost"),
            (Error::Timeout, "timeout"),
            (Error::TooManyRedirects, "too_many_redirects"),
            (Error::ClusterDown(String::new()), "cluster_down"),
            (Error::Unavailable(String::new()), "unavailable"),
            (Error::Auth(String::new()), "auth"),
            (Error::Protocol(String::new()), "protocol"),
        ];
        assert_eq!(labels.len(), REDIS_FAILURE_KINDS.len());
        for (error, label) in labels {
            assert_eq!(REDIS_FAILURE_KINDS[error.kind_index()], label);
        }
    }

    #[test]
    fn commands_route_by_their_key() {
        let set = Command::set(b"{user}1", b"v");
        assert_eq!(set.slot(), Some(Slot::of(b"user")));
        assert_eq!(
            set.bytes(),
            b"*3\r\n$3\r\nSET\r\n$7\r\n{user}1\r\n$1\r\nv\r\n"
        );
        assert_eq!(Command::new(&["PING"], None).slot(), None);
        let read = Command::xreadgroup(b"s", b"g", b"c", 10, b">");
        assert_eq!(read.slot(), Some(Slot::of(b"s")));
        assert_eq!(
            Command::wait(b"k", 1, Duration::from_millis(5)).slot(),
            Some(Slot::of(b"k"))
        );
        assert_eq!(
            Command::evalsha(b"abc", &[b"k"], &[b"1"]).slot(),
            Some(Slot::of(b"k"))
        );
    }
}
