//! The write-back queue and the cache beside it, as Redis keys and the
//! scripts that change them.
//!
//! Each partition is a Redis Stream read by the database core's consumer
//! group, named `{millrace:wb:N}`; everything else of the partition shares
//! its hash tag, so one script can change it all atomically on one master:
//!
//! | key | holds |
//! |---|---|
//! | `{millrace:wb:N}` | the stream of queued writes |
//! | `{millrace:wb:N}accepted` | rows accepted onto it (an event batch counts its events) |
//! | `{millrace:wb:N}bytes` | bytes of the entries not yet acknowledged ([`Record::queued_bytes`]) |
//! | `{millrace:wb:N}released` | a hash of release counters, one per [`RELEASE_BUCKETS`] bucket of keys |
//! | `{millrace:wb:N}TABLE:KEY` | KEY's cache entry in a cached table ([`Cached`]) |
//!
//! A key always maps to the same partition, so the writes to one key are
//! read in the order they were accepted, and each stream's entry id is the
//! version that orders them. An entry is a [`Record`] of one write-back
//! table (see [`super::table`]): `t TABLE k KEY [n ROWS] [v PAYLOAD]`, no
//! payload for a delete.
//!
//! What may leave Redis: a cache entry gets a TTL (and so may expire, or be
//! evicted under `volatile-*` policies) only once PostgreSQL holds its
//! version ([`Queue::release`]) or when it was read from PostgreSQL
//! ([`Queue::fill`]); streams, counters and entries not yet written back
//! never have one. Every release counts in its key's bucket, so a fill can
//! tell whether an entry may have vanished since the database was read.

use std::borrow::Cow;
use std::fmt;

use crate::redis::command::Command;
use crate::redis::resp::Reply;
use crate::redis::slot::crc16;

/// The consumer group every database core reads with.
pub const GROUP: &[u8] = b"millrace-db";

/// Where the cluster records how many partitions the queue has, so that a
/// server and a database core started with different counts refuse to run.
pub const LAYOUT_KEY: &[u8] = b"{millrace:config}";

/// Buckets of release counters per partition. A fill is refused when any
/// key of its bucket was released while it read the database, so more
/// buckets refuse fewer fills for nothing; each is one small hash field.
pub const RELEASE_BUCKETS: u32 = 1024;

/// The longest entry head a script reads: `v`, a version (two 20-digit
/// numbers and `-`) and the space after it.
const ENTRY_HEAD_BYTES: usize = 43;

/// Whether the partition is full; `return` a `BACKLOG` error if so.
/// KEYS[1] stream, KEYS[4] bytes counter; ARGV[1] entry cap, ARGV[2] byte cap.
macro_rules! backlog_check {
    () => {
        "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then \
         return redis.error_reply('BACKLOG the write-back backlog is at max_backlog') end \
         if (tonumber(redis.call('GET', KEYS[4])) or 0) >= tonumber(ARGV[2]) then \
         return redis.error_reply('BACKLOG the write-back backlog is at max_backlog_bytes') end "
    };
}

/// A record of an uncached table: XADD unless the partition is full; count
/// the rows and bytes. KEYS: stream, (unused), accepted, bytes; ARGV: entry
/// cap, byte cap, entry bytes, rows, then the entry's fields and values.
/// The checks only read, so under `maxmemory` the XADD is the first write
/// and is refused whole.
const APPEND: &str = concat!(
    backlog_check!(),
    "local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5)) \
     redis.call('INCRBY', KEYS[3], ARGV[4]) redis.call('INCRBY', KEYS[4], ARGV[3]) return id"
);

/// PUT into a cached table: the write onto the queue and `v<id> <value>`
/// into the cache (a SET without a TTL: not evictable until written back).
/// KEYS: stream, cache, accepted, bytes; ARGV: entry cap, byte cap, entry
/// bytes, key, value, table.
const PUT: &str = concat!(
    backlog_check!(),
    "local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[6], 'k', ARGV[4], 'v', ARGV[5]) \
     redis.call('SET', KEYS[2], 'v' .. id .. ' ' .. ARGV[5]) \
     redis.call('INCR', KEYS[3]) redis.call('INCRBY', KEYS[4], ARGV[3]) return id"
);

/// DELETE from a cached table: the write onto the queue and the tombstone
/// `t<id>` into the cache, so that a read cannot bring the old row back
/// before the delete is written. KEYS as [`PUT`]; ARGV: entry cap, byte
/// cap, entry bytes, key, table.
const DELETE: &str = concat!(
    backlog_check!(),
    "local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[5], 'k', ARGV[4]) \
     redis.call('SET', KEYS[2], 't' .. id) \
     redis.call('INCR', KEYS[3]) redis.call('INCRBY', KEYS[4], ARGV[3]) return id"
);

/// A conditional PUT or DELETE: the preconditions checked against the
/// key's current state, then the write as [`PUT`] or [`DELETE`], all at
/// once. KEYS: stream, cache, accepted, bytes, released; ARGV: entry cap,
/// byte cap, entry bytes, key, value (empty for a delete), `put` or `del`,
/// If-Match and If-None-Match (each empty: none; `*`; or versions
/// separated by spaces, `-` for none), the state read from the database (empty:
/// none yet), its release bucket, the bucket's counter read before the
/// database was, and the table.
///
/// Not cached and no state from the database (or the bucket's counter has
/// moved since it was read: the entry may have been released and evicted
/// meanwhile): a `MISS` error. A precondition that fails: `PRECONDITION`
/// and the current version (empty when the key has no value).
const WRITE_IF: &str = concat!(
    "local e = redis.call('GETRANGE', KEYS[2], 0, 42) \
     if e == '' then \
     if ARGV[9] == '' or (redis.call('HGET', KEYS[5], ARGV[10]) or '') ~= ARGV[11] then \
     return redis.error_reply('MISS the key is not cached') end \
     e = string.sub(ARGV[9], 1, 43) end \
     local cur = '' if string.sub(e, 1, 1) == 'v' then cur = string.match(e, '^v([^ ]+)') end \
     if ARGV[7] ~= '' and (cur == '' or (ARGV[7] ~= '*' and \
     not string.find(' ' .. ARGV[7] .. ' ', ' ' .. cur .. ' ', 1, true))) then \
     return redis.error_reply('PRECONDITION ' .. cur) end \
     if ARGV[8] ~= '' and cur ~= '' and (ARGV[8] == '*' or \
     string.find(' ' .. ARGV[8] .. ' ', ' ' .. cur .. ' ', 1, true)) then \
     return redis.error_reply('PRECONDITION ' .. cur) end ",
    backlog_check!(),
    "local id if ARGV[6] == 'put' then \
     id = redis.call('XADD', KEYS[1], '*', 't', ARGV[12], 'k', ARGV[4], 'v', ARGV[5]) \
     redis.call('SET', KEYS[2], 'v' .. id .. ' ' .. ARGV[5]) else \
     id = redis.call('XADD', KEYS[1], '*', 't', ARGV[12], 'k', ARGV[4]) \
     redis.call('SET', KEYS[2], 't' .. id) end \
     redis.call('INCR', KEYS[3]) redis.call('INCRBY', KEYS[4], ARGV[3]) return id"
);

/// After the database holds a key's version: give its cache entry a TTL,
/// if the entry still holds that version (a newer write keeps it pinned
/// until its own release), and count the release in the key's bucket.
/// PEXPIRE goes first: it is not refused at `maxmemory`, and a script
/// that has written is not stopped. KEYS: cache, released; ARGV: the
/// entry's head (`v<id> ` or the whole tombstone `t<id>`), TTL in
/// milliseconds, bucket.
const RELEASE: &str = "local head = ARGV[1] \
     if redis.call('GETRANGE', KEYS[1], 0, #head - 1) ~= head then return 0 end \
     if string.sub(head, 1, 1) == 't' and redis.call('STRLEN', KEYS[1]) ~= #head then return 0 end \
     redis.call('PEXPIRE', KEYS[1], ARGV[2]) redis.call('HINCRBY', KEYS[2], ARGV[3], 1) return 1";

/// A value (or absence) read from the database into the cache, with a
/// TTL: only if nothing is cached (whatever is there is at least as new)
/// and no key of its bucket was released since the bucket's counter was
/// read, before the database was (else the row read may be older than an
/// entry released and evicted meanwhile). KEYS: cache, released; ARGV:
/// entry, TTL in milliseconds, bucket, counter.
const FILL: &str = "if redis.call('EXISTS', KEYS[1]) == 1 or \
     (redis.call('HGET', KEYS[2], ARGV[3]) or '') ~= ARGV[4] then return 0 end \
     redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";

/// Acknowledge entries and take their bytes off the partition's count,
/// only for those this call acknowledged (an entry acknowledged twice is
/// counted once). KEYS: stream, bytes; ARGV: group, then id and bytes of
/// each entry.
const ACKNOWLEDGE: &str = "local freed = 0 \
     for i = 2, #ARGV, 2 do \
     if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then freed = freed + tonumber(ARGV[i + 1]) end end \
     if freed > 0 then redis.call('DECRBY', KEYS[2], freed) end return freed";

/// Trim what every consumer has acknowledged; an empty stream holds no
/// bytes, which also corrects a count that drifted (a failover that lost
/// the last changes to it). KEYS: stream, bytes; ARGV: the lowest id kept.
const TRIM: &str = "local n = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1]) \
     if redis.call('XLEN', KEYS[1]) == 0 then redis.call('SET', KEYS[2], 0) end return n";

/// Record the partition count in [`LAYOUT_KEY`] unless one is recorded;
/// answer the recorded count. KEYS: the layout key; ARGV: the count.
const RECORD_LAYOUT: &str = "local n = redis.call('HGET', KEYS[1], 'partitions') \
     if n then return n end redis.call('HSET', KEYS[1], 'partitions', ARGV[1]) return ARGV[1]";

/// A stream entry id, which is also the version of a kv write:
/// milliseconds and a sequence number, ordered as a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The id's milliseconds part.
    pub ms: i64,
    /// The id's sequence part.
    pub seq: i64,
}

impl Version {
    /// `ms-seq` as Redis prints an id; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Version> {
        let dash = text.iter().position(|&b| b == b'-')?;
        // Digits only (no sign), in one pass: 19 digits cannot overflow a
        // u64, and past i64::MAX is no version.
        let number = |digits: &[u8]| -> Option<i64> {
            if digits.is_empty() || digits.len() > 19 {
                return None;
            }
            let mut n = 0u64;
            for &b in digits {
                let digit = b.wrapping_sub(b'0');
                if digit > 9 {
                    return None;
                }
                n = n * 10 + u64::from(digit);
            }
            i64::try_from(n).ok()
        };
        Some(Version {
            ms: number(&text[..dash])?,
            seq: number(&text[dash + 1..])?,
        })
    }
}

impl Version {
    /// The longest `ms-seq` text: two `i64`s, signs and all, and the dash.
    pub const MAX_TEXT_BYTES: usize = 41;

    /// `ms-seq` written into `buf`, without allocating.
    pub fn text<'b>(&self, buf: &'b mut [u8; Version::MAX_TEXT_BYTES]) -> &'b str {
        let mut ms = itoa::Buffer::new();
        let mut seq = itoa::Buffer::new();
        let (ms, seq) = (
            ms.format(self.ms).as_bytes(),
            seq.format(self.seq).as_bytes(),
        );
        let len = ms.len() + 1 + seq.len();
        buf[..ms.len()].copy_from_slice(ms);
        buf[ms.len()] = b'-';
        buf[ms.len() + 1..len].copy_from_slice(seq);
        std::str::from_utf8(&buf[..len]).expect("digits and a dash")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What the cache (or the database, in the same form) says of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Its value, and the version that wrote it (as text, `ms-seq`).
    Value {
        /// The version.
        version: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// Known to have no value: deleted (with the delete's version), or
    /// not in the database at all (`None`).
    Absent {
        /// The delete's version, if the key was deleted.
        version: Option<&'a [u8]>,
    },
    /// Nothing cached: the database decides.
    Missing,
}

impl<'a> Cached<'a> {
    /// Read an entry as the scripts and [`Cached::entry`] write it:
    /// `v<version> <value>`, `t<version>` or `n`.
    pub fn from_entry(entry: Option<&'a [u8]>) -> Result<Cached<'a>, &'static str> {
        let bad = "a cache entry millrace did not write";
        match entry {
            None => Ok(Cached::Missing),
            Some([b'v', rest @ ..]) => {
                let space = rest.iter().position(|&b| b == b' ').ok_or(bad)?;
                Ok(Cached::Value {
                    version: &rest[..space],
                    value: &rest[space + 1..],
                })
            }
            Some([b't', version @ ..]) if !version.is_empty() => Ok(Cached::Absent {
                version: Some(version),
            }),
            Some(b"n") => Ok(Cached::Absent { version: None }),
            Some(_) => Err(bad),
        }
    }

    /// The entry for a row read from the database: its value and version,
    /// a deleted row's version, or no row (`None`).
    pub fn entry(row: Option<(Version, Option<&[u8]>)>) -> Vec<u8> {
        match row {
            None => b"n".to_vec(),
            Some((version, None)) => format!("t{version}").into_bytes(),
            Some((version, Some(value))) => {
                let version = version.to_string();
                let mut entry = Vec::with_capacity(2 + version.len() + value.len());
                entry.push(b'v');
                entry.extend_from_slice(version.as_bytes());
                entry.push(b' ');
                entry.extend_from_slice(value);
                entry
            }
        }
    }

    /// The version of the key's value, if it has one (its ETag).
    pub fn version(&self) -> Option<&'a [u8]> {
        match self {
            Cached::Value { version, .. } => Some(version),
            _ => None,
        }
    }
}

/// A queued write: a record of one write-back table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The table it goes to.
    pub table: String,
    /// The key that picks its partition (in a cached table, the key).
    pub key: Vec<u8>,
    /// What the table makes rows of; `None` for a delete.
    pub payload: Option<Vec<u8>>,
    /// Rows it becomes in the database.
    pub rows: u32,
}

impl Record {
    /// A record of `table` that becomes `rows` rows.
    pub fn new(table: &str, key: &[u8], payload: Option<&[u8]>, rows: u32) -> Record {
        Record {
            table: table.to_string(),
            key: key.to_vec(),
            payload: payload.map(<[u8]>::to_vec),
            rows,
        }
    }

    /// The key that picks its partition.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Rows it becomes in the database.
    pub fn rows(&self) -> usize {
        self.rows as usize
    }

    /// The bytes its stream entry holds (its fields' names and values),
    /// as counted against `max_backlog_bytes`.
    pub fn queued_bytes(&self) -> u64 {
        queued_bytes(
            self.table.len(),
            self.key.len(),
            self.payload.as_ref().map(Vec::len),
            self.rows,
        )
    }
}

/// The bytes of an entry `t TABLE k KEY [n ROWS] [v PAYLOAD]`.
pub fn queued_bytes(table: usize, key: usize, payload: Option<usize>, rows: u32) -> u64 {
    let rows_field = if rows == 1 {
        0
    } else {
        1 + rows.checked_ilog10().map_or(1, |d| d as usize + 1)
    };
    (1 + table + 1 + key + rows_field + payload.map_or(0, |p| 1 + p)) as u64
}

/// An entry read back from a stream: its id (the version) and the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id as Redis printed it, for XACK.
    pub id: Vec<u8>,
    /// The id, parsed.
    pub version: Version,
    /// The write.
    pub record: Record,
    /// The bytes its fields hold, as they were counted when it was queued.
    pub queued_bytes: u64,
}

/// How full one partition may get before writes to it are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Entries (`max_backlog` over the partitions).
    pub entries: u64,
    /// Bytes of entries ([`Record::queued_bytes`]; `max_backlog_bytes`
    /// over the partitions). A write is admitted while the partition holds
    /// less, so it may go over by one entry.
    pub bytes: u64,
}

impl Caps {
    /// No cap, for tools and tests that queue directly.
    pub const UNLIMITED: Caps = Caps {
        entries: u64::MAX,
        bytes: i64::MAX as u64,
    };
}

/// The entity tags a precondition names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagList {
    /// `*`: any current value.
    Any,
    /// These versions (`ms-seq`); an empty list matches nothing.
    Versions(Vec<Vec<u8>>),
}

impl TagList {
    /// As the conditional script takes it: `*`, or the versions separated
    /// by spaces (`-`, which no version is, for none).
    fn argument(&self) -> Vec<u8> {
        match self {
            TagList::Any => b"*".to_vec(),
            TagList::Versions(versions) if versions.is_empty() => b"-".to_vec(),
            TagList::Versions(versions) => versions.join(&b' '),
        }
    }
}

/// What a conditional write requires of the key's current state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`: the key must have a value, with one of these versions.
    pub if_match: Option<TagList>,
    /// `If-None-Match`: the key must have no value (`*`), or not one of
    /// these versions.
    pub if_none_match: Option<TagList>,
}

impl Preconditions {
    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }
}

/// A script call: its arguments with the numbers rendered, the rest
/// borrowed from the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptCall<'a> {
    args: Vec<Cow<'a, [u8]>>,
}

impl<'a> ScriptCall<'a> {
    /// `EVAL script numkeys keys... args...`.
    fn new(script: &'static str, keys: &[&'a [u8]], args: Vec<Cow<'a, [u8]>>) -> ScriptCall<'a> {
        let mut all: Vec<Cow<'a, [u8]>> = Vec::with_capacity(3 + keys.len() + args.len());
        all.push(Cow::Borrowed(b"EVAL"));
        all.push(Cow::Borrowed(script.as_bytes()));
        all.push(Cow::Owned(keys.len().to_string().into_bytes()));
        all.extend(keys.iter().map(|k| Cow::Borrowed(*k)));
        all.extend(args);
        ScriptCall { args: all }
    }

    /// The arguments, `EVAL` first, for another client to send the same.
    pub fn args(&self) -> Vec<&[u8]> {
        self.args.iter().map(|a| a.as_ref()).collect()
    }

    /// The command, routed by its first key.
    pub fn command(&self) -> Command {
        Command::new(&self.args, Some(3))
    }
}

fn number<'a>(n: u64) -> Cow<'a, [u8]> {
    Cow::Owned(n.to_string().into_bytes())
}

/// The partitions and how keys map to them.
#[derive(Clone, Debug)]
pub struct Queue {
    partitions: u16,
    /// Per partition: the stream, then its counters' names.
    names: Vec<PartitionKeys>,
}

#[derive(Clone, Debug)]
struct PartitionKeys {
    stream: Vec<u8>,
    accepted: Vec<u8>,
    bytes: Vec<u8>,
    released: Vec<u8>,
}

impl Queue {
    /// `partitions` streams (at least 1), named `{millrace:wb:N}`: the hash
    /// tag puts each partition wholly in one slot, and different N spread
    /// the partitions over the masters.
    pub fn new(partitions: u16) -> Queue {
        let partitions = partitions.max(1);
        Queue {
            partitions,
            names: (0..partitions)
                .map(|p| {
                    let stream = format!("{{millrace:wb:{p}}}");
                    PartitionKeys {
                        accepted: format!("{stream}accepted").into_bytes(),
                        bytes: format!("{stream}bytes").into_bytes(),
                        released: format!("{stream}released").into_bytes(),
                        stream: stream.into_bytes(),
                    }
                })
                .collect(),
        }
    }

    /// How many partitions.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The stream of partition `p`.
    pub fn stream(&self, partition: u16) -> &[u8] {
        &self.names[usize::from(partition)].stream
    }

    /// The counter of rows accepted onto partition `p` (an event batch
    /// counts its events).
    pub fn accepted_counter(&self, partition: u16) -> &[u8] {
        &self.names[usize::from(partition)].accepted
    }

    /// The counter of bytes queued on partition `p` and not yet acknowledged.
    pub fn bytes_counter(&self, partition: u16) -> &[u8] {
        &self.names[usize::from(partition)].bytes
    }

    /// The partition `key` belongs to, always the same for the same key.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        crc16(key) % self.partitions
    }

    /// Where `key`'s value in cached table `table` is: in its partition's
    /// slot, so that one script writes both the cache and the queue.
    pub fn cache_key(&self, table: &str, key: &[u8]) -> Vec<u8> {
        let stream = self.stream(self.partition_of(key));
        [stream, table.as_bytes(), b":", key].concat()
    }

    /// `key`'s release bucket, as decimal text (FNV-1a, independent of the
    /// CRC16 that picks the partition).
    fn bucket(key: &[u8]) -> String {
        let hash = key.iter().fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        (hash % RELEASE_BUCKETS).to_string()
    }

    /// The command that puts `value` in `table`'s cache and queues it,
    /// unless the partition is at its caps (then Redis answers an error
    /// starting with `BACKLOG` and nothing changed). Answers the entry id.
    pub fn put<'a>(
        &'a self,
        table: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cache: &'a [u8],
        caps: Caps,
    ) -> ScriptCall<'a> {
        let p = &self.names[usize::from(self.partition_of(key))];
        ScriptCall::new(
            PUT,
            &[&p.stream, cache, &p.accepted, &p.bytes],
            vec![
                number(caps.entries),
                number(caps.bytes),
                number(queued_bytes(table.len(), key.len(), Some(value.len()), 1)),
                Cow::Borrowed(key),
                Cow::Borrowed(value),
                Cow::Borrowed(table.as_bytes()),
            ],
        )
    }

    /// [`Queue::put`] for a delete: a tombstone in the cache and on the queue.
    pub fn delete<'a>(
        &'a self,
        table: &'a str,
        key: &'a [u8],
        cache: &'a [u8],
        caps: Caps,
    ) -> ScriptCall<'a> {
        let p = &self.names[usize::from(self.partition_of(key))];
        ScriptCall::new(
            DELETE,
            &[&p.stream, cache, &p.accepted, &p.bytes],
            vec![
                number(caps.entries),
                number(caps.bytes),
                number(queued_bytes(table.len(), key.len(), None, 1)),
                Cow::Borrowed(key),
                Cow::Borrowed(table.as_bytes()),
            ],
        )
    }

    /// A PUT (`value` given) or DELETE under `preconditions`, checked
    /// against the cache, or against `known` (the entry the database gave,
    /// with the release counter read before it) when nothing is cached.
    /// Redis answers the entry id, a `PRECONDITION` error with the current
    /// version, a `MISS` error (look the key up, then call again with
    /// `known`), or a `BACKLOG` error.
    #[allow(clippy::too_many_arguments)]
    pub fn write_if<'a>(
        &'a self,
        table: &'a str,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        preconditions: &Preconditions,
        known: Option<(&'a [u8], &'a [u8])>,
        cache: &'a [u8],
        caps: Caps,
    ) -> ScriptCall<'a> {
        let p = &self.names[usize::from(self.partition_of(key))];
        let bytes = queued_bytes(table.len(), key.len(), value.map(<[u8]>::len), 1);
        let tags = |list: &Option<TagList>| -> Cow<'a, [u8]> {
            list.as_ref()
                .map_or(Cow::Borrowed(b""), |l| Cow::Owned(l.argument()))
        };
        let (entry, counter) = known.unwrap_or((b"", b""));
        ScriptCall::new(
            WRITE_IF,
            &[&p.stream, cache, &p.accepted, &p.bytes, &p.released],
            vec![
                number(caps.entries),
                number(caps.bytes),
                number(bytes),
                Cow::Borrowed(key),
                Cow::Borrowed(value.unwrap_or_default()),
                Cow::Borrowed(if value.is_some() { b"put" } else { b"del" }),
                tags(&preconditions.if_match),
                tags(&preconditions.if_none_match),
                Cow::Borrowed(entry),
                Cow::Owned(Self::bucket(key).into_bytes()),
                Cow::Borrowed(counter),
                Cow::Borrowed(table.as_bytes()),
            ],
        )
    }

    /// The cache entry of `key` in `table` (read it with [`Cached::from_entry`]).
    pub fn cached(&self, table: &str, key: &[u8]) -> Command {
        Command::get(&self.cache_key(table, key))
    }

    /// The release counter of `key`'s bucket (nil when none yet): read it
    /// before looking the key up in the database, and hand it to
    /// [`Queue::fill`] or [`Queue::write_if`].
    pub fn release_counter(&self, key: &[u8]) -> Command {
        let p = &self.names[usize::from(self.partition_of(key))];
        Command::new(
            &[b"HGET", p.released.as_slice(), Self::bucket(key).as_bytes()],
            Some(1),
        )
    }

    /// Put `entry`, read from the database, into `table`'s cache with a
    /// TTL of `ttl_ms`, unless something is cached or `key`'s bucket
    /// `counter` (as [`Queue::release_counter`] read it) has moved.
    pub fn fill(
        &self,
        table: &str,
        key: &[u8],
        entry: &[u8],
        ttl_ms: u64,
        counter: &[u8],
    ) -> Command {
        let p = &self.names[usize::from(self.partition_of(key))];
        ScriptCall::new(
            FILL,
            &[&self.cache_key(table, key), &p.released],
            vec![
                Cow::Borrowed(entry),
                number(ttl_ms),
                Cow::Owned(Self::bucket(key).into_bytes()),
                Cow::Borrowed(counter),
            ],
        )
        .command()
    }

    /// Once the database holds write `id` of `key` in `table` (a delete
    /// when `deleted`): let its cache entry expire in `ttl_ms`, if it still
    /// holds that write.
    pub fn release(
        &self,
        table: &str,
        key: &[u8],
        id: &[u8],
        deleted: bool,
        ttl_ms: u64,
    ) -> Command {
        let p = &self.names[usize::from(self.partition_of(key))];
        let head = if deleted {
            [b"t", id].concat()
        } else {
            [b"v", id, b" "].concat()
        };
        debug_assert!(head.len() <= ENTRY_HEAD_BYTES);
        ScriptCall::new(
            RELEASE,
            &[&self.cache_key(table, key), &p.released],
            vec![
                Cow::Owned(head),
                number(ttl_ms),
                Cow::Owned(Self::bucket(key).into_bytes()),
            ],
        )
        .command()
    }

    /// The command that queues `record` on its partition unless it is at
    /// `caps`, atomically: Redis answers the new entry's id, or an error
    /// starting with `BACKLOG`, and then nothing was queued. A record of a
    /// cached table (`cached`) goes through the cache as [`Queue::put`] and
    /// [`Queue::delete`] do.
    pub fn append(&self, record: &Record, cached: bool, caps: Caps) -> Command {
        let (table, key) = (record.table.as_str(), record.key.as_slice());
        match (&record.payload, cached) {
            (Some(value), true) => self
                .put(table, key, value, &self.cache_key(table, key), caps)
                .command(),
            (None, _) => self
                .delete(table, key, &self.cache_key(table, key), caps)
                .command(),
            (Some(payload), false) => self
                .append_record(table, key, payload, record.rows, caps)
                .command(),
        }
    }

    /// [`Queue::append`] for a record of an uncached table still in the
    /// caller's buffers: nothing copied but into the command.
    pub fn append_record<'a>(
        &'a self,
        table: &'a str,
        key: &'a [u8],
        payload: &'a [u8],
        rows: u32,
        caps: Caps,
    ) -> ScriptCall<'a> {
        let p = &self.names[usize::from(self.partition_of(key))];
        let mut args = vec![
            number(caps.entries),
            number(caps.bytes),
            number(queued_bytes(
                table.len(),
                key.len(),
                Some(payload.len()),
                rows,
            )),
            number(u64::from(rows)),
            Cow::Borrowed(b"t".as_slice()),
            Cow::Borrowed(table.as_bytes()),
            Cow::Borrowed(b"k".as_slice()),
            Cow::Borrowed(key),
        ];
        if rows != 1 {
            args.push(Cow::Borrowed(b"n".as_slice()));
            args.push(number(u64::from(rows)));
        }
        args.push(Cow::Borrowed(b"v".as_slice()));
        args.push(Cow::Borrowed(payload));
        ScriptCall::new(APPEND, &[&p.stream, &p.stream, &p.accepted, &p.bytes], args)
    }

    /// Acknowledge `entries` of `partition` (id and queued bytes each) and
    /// take their bytes off its count. Answers the bytes freed.
    pub fn acknowledge(&self, partition: u16, entries: &[(&[u8], u64)]) -> Command {
        let p = &self.names[usize::from(partition)];
        let mut args = Vec::with_capacity(1 + 2 * entries.len());
        args.push(Cow::Borrowed(GROUP));
        for &(id, bytes) in entries {
            args.push(Cow::Borrowed(id));
            args.push(number(bytes));
        }
        ScriptCall::new(ACKNOWLEDGE, &[&p.stream, &p.bytes], args).command()
    }

    /// Record this queue's partition count in the cluster, unless one is
    /// recorded already; Redis answers the recorded count, which
    /// [`Queue::check_layout`] reads.
    pub fn record_layout(&self) -> Command {
        let count = self.partitions.to_string();
        ScriptCall::new(
            RECORD_LAYOUT,
            &[LAYOUT_KEY],
            vec![Cow::Owned(count.into_bytes())],
        )
        .command()
    }

    /// Compare [`Queue::record_layout`]'s reply with this queue: an error
    /// that says both numbers if they differ.
    pub fn check_layout(&self, recorded: &[u8]) -> Result<(), String> {
        let recorded = String::from_utf8_lossy(recorded);
        if recorded == self.partitions.to_string() {
            return Ok(());
        }
        Err(format!(
            "the Redis Cluster's write-back queue has {recorded} partitions (recorded in {}), \
             but this process was started with {}: writes queued on partitions that a database \
             core does not read would never be written back. Start every server and database \
             core with writeback_partitions = {recorded}, or drain the queue and delete {} to \
             change it",
            String::from_utf8_lossy(LAYOUT_KEY),
            self.partitions,
            String::from_utf8_lossy(LAYOUT_KEY),
        ))
    }

    /// Trim `partition`'s stream below `min_id` (everything acknowledged);
    /// an empty stream's byte count is set to 0.
    pub fn trim(&self, partition: u16, min_id: &[u8]) -> Command {
        let p = &self.names[usize::from(partition)];
        ScriptCall::new(TRIM, &[&p.stream, &p.bytes], vec![Cow::Borrowed(min_id)]).command()
    }
}

/// The entries of an `XREADGROUP` or `XAUTOCLAIM` reply's message list
/// (`[[id, [field, value, ...]], ...]`). An entry that cannot be read is
/// returned as an error with its id, so that it can be set aside rather
/// than block the queue.
pub fn entries(messages: &Reply<'_>) -> Vec<Result<Entry, (Vec<u8>, String)>> {
    let Reply::Array(messages) = messages else {
        return Vec::new();
    };
    messages
        .iter()
        .filter_map(|message| {
            let Reply::Array(parts) = message else {
                return None;
            };
            let id = parts.first()?.bytes()?.to_vec();
            // A deleted entry still pending comes back with a nil body.
            let fields = match parts.get(1) {
                Some(Reply::Array(fields)) => fields,
                _ => return Some(Err((id, "the entry was deleted".into()))),
            };
            Some(parse_entry(&id, fields).map_err(|why| (id, why)))
        })
        .collect()
}

fn parse_entry(id: &[u8], fields: &[Reply<'_>]) -> Result<Entry, String> {
    let version = Version::parse(id).ok_or("a bad stream id")?;
    let mut queued_bytes = 0u64;
    let field = |name: &[u8]| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0].bytes() == Some(name))
            .and_then(|pair| pair[1].bytes())
    };
    for pair in fields.chunks_exact(2) {
        queued_bytes += pair
            .iter()
            .filter_map(Reply::bytes)
            .map(|b| b.len() as u64)
            .sum::<u64>();
    }
    fn need<'a>(value: Option<&'a [u8]>, name: &str) -> Result<&'a [u8], String> {
        value.ok_or(format!("no field {name}"))
    }
    let key = need(field(b"k"), "k")?.to_vec();
    let rows = match field(b"n") {
        None => 1,
        Some(n) => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or("a row count that is not a number")?,
    };
    // Entries written before tables had names: `put` and `del` of kv,
    // `evb` (its batch in `b`) of events.
    let (table, payload) = match need(field(b"t"), "t")? {
        b"put" => ("kv".to_string(), Some(need(field(b"v"), "v")?.to_vec())),
        b"del" => ("kv".to_string(), None),
        b"evb" => ("events".to_string(), Some(need(field(b"b"), "b")?.to_vec())),
        name => (
            String::from_utf8(name.to_vec()).map_err(|_| "a table name that is not UTF-8")?,
            field(b"v").map(<[u8]>::to_vec),
        ),
    };
    Ok(Entry {
        id: id.to_vec(),
        version,
        record: Record {
            table,
            key,
            payload,
            rows,
        },
        queued_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::slot::Slot;

    #[test]
    fn keys_keep_their_partition_and_a_partition_its_slot() {
        let queue = Queue::new(16);
        assert_eq!(queue.partition_of(b"k1"), queue.partition_of(b"k1"));
        let slots: std::collections::HashSet<u16> =
            (0..16).map(|p| Slot::of(queue.stream(p)).get()).collect();
        assert_eq!(slots.len(), 16, "every partition in a slot of its own");
        for p in 0..16 {
            let slot = Slot::of(queue.stream(p));
            for key in [
                queue.accepted_counter(p),
                queue.bytes_counter(p),
                &queue.names[usize::from(p)].released,
            ] {
                assert_eq!(Slot::of(key), slot);
            }
        }
        let key = b"user:7";
        assert_eq!(
            Slot::of(&queue.cache_key("kv", key)),
            Slot::of(queue.stream(queue.partition_of(key)))
        );
        let used: std::collections::HashSet<u16> = (0..1000)
            .map(|i| queue.partition_of(format!("key{i}").as_bytes()))
            .collect();
        assert_eq!(used.len(), 16);
    }

    #[test]
    fn both_appends_of_a_record_send_the_same_command() {
        let queue = Queue::new(16);
        let record = Record::new("events", b"user:1", Some(b"batch"), 2);
        assert_eq!(
            queue.append(&record, false, Caps::UNLIMITED),
            queue
                .append_record("events", b"user:1", b"batch", 2, Caps::UNLIMITED)
                .command()
        );
        let put = Record::new("kv", b"a", Some(b"1"), 1);
        let cache = queue.cache_key("kv", b"a");
        assert_eq!(
            queue.append(&put, true, Caps::UNLIMITED),
            queue
                .put("kv", b"a", b"1", &cache, Caps::UNLIMITED)
                .command()
        );
    }

    #[test]
    fn queued_bytes_are_the_fields_the_entry_holds() {
        let put = Record::new("kv", b"ab", Some(b"xyz"), 1);
        // t kv k ab v xyz
        assert_eq!(put.queued_bytes(), 1 + 2 + 1 + 2 + 1 + 3);
        // t kv k ab
        assert_eq!(Record::new("kv", b"ab", None, 1).queued_bytes(), 6);
        for (count, digits) in [(2, 1), (9, 1), (10, 2), (10_000, 5)] {
            let events = Record::new("events", b"k", Some(&[0; 100]), count);
            // t events k k n COUNT v BATCH
            assert_eq!(events.queued_bytes(), 1 + 6 + 1 + 1 + 1 + digits + 1 + 100);
        }
        // What the script is told is what the database core takes off.
        let queue = Queue::new(4);
        let cache = queue.cache_key("kv", b"ab");
        let call = queue.put("kv", b"ab", b"xyz", &cache, Caps::UNLIMITED);
        assert_eq!(call.args()[9], put.queued_bytes().to_string().as_bytes());
        // And what an entry read back counts.
        let reply = Reply::Array(vec![Reply::Array(vec![
            Reply::Bulk(b"1-0"),
            Reply::Array(
                [&b"t"[..], b"kv", b"k", b"ab", b"v", b"xyz"]
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ),
        ])]);
        assert_eq!(
            entries(&reply)[0].as_ref().unwrap().queued_bytes,
            put.queued_bytes()
        );
    }

    #[test]
    fn versions_parse_print_and_order_as_pairs() {
        let v = Version::parse(b"1700000000000-5").unwrap();
        assert_eq!(
            v,
            Version {
                ms: 1_700_000_000_000,
                seq: 5
            }
        );
        assert_eq!(v.to_string(), "1700000000000-5");
        let mut buf = [0; Version::MAX_TEXT_BYTES];
        assert_eq!(v.text(&mut buf), "1700000000000-5");
        let largest = Version {
            ms: i64::MAX,
            seq: i64::MAX,
        };
        assert_eq!(largest.text(&mut buf), largest.to_string());
        // Numerically, not as text: 9-0 < 10-0, 1-9 < 1-10.
        assert!(Version::parse(b"9-0") < Version::parse(b"10-0"));
        assert!(Version::parse(b"1-9") < Version::parse(b"1-10"));
        for bad in [
            &b""[..],
            b"1",
            b"-1",
            b"1-",
            b"a-1",
            b"1-2-3",
            b" 1-2",
            b"99999999999999999999-0",
            b"9223372036854775808-0",
            b"1-9223372036854775808",
            b"+1-2",
            b"1-\xff",
        ] {
            assert_eq!(
                Version::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cache_entries_read_back_what_was_written() {
        let version = Version { ms: 17, seq: 2 };
        let value = Cached::entry(Some((version, Some(b"a b\0"))));
        assert_eq!(value, b"v17-2 a b\0");
        assert_eq!(
            Cached::from_entry(Some(&value)),
            Ok(Cached::Value {
                version: b"17-2",
                value: b"a b\0"
            })
        );
        assert_eq!(
            Cached::from_entry(Some(b"v17-2 ")),
            Ok(Cached::Value {
                version: b"17-2",
                value: b""
            })
        );
        let deleted = Cached::entry(Some((version, None)));
        assert_eq!(
            Cached::from_entry(Some(&deleted)),
            Ok(Cached::Absent {
                version: Some(b"17-2")
            })
        );
        assert_eq!(
            Cached::from_entry(Some(&Cached::entry(None))),
            Ok(Cached::Absent { version: None })
        );
        assert_eq!(Cached::from_entry(None), Ok(Cached::Missing));
        for bad in [&b"x"[..], b"v17-2", b"t", b""] {
            assert!(Cached::from_entry(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn preconditions_reach_the_script_as_its_arguments() {
        let queue = Queue::new(16);
        let cache = queue.cache_key("kv", b"k");
        let preconditions = Preconditions {
            if_match: Some(TagList::Versions(vec![b"1-0".to_vec(), b"2-0".to_vec()])),
            if_none_match: None,
        };
        let call = queue.write_if(
            "kv",
            b"k",
            Some(b"v"),
            &preconditions,
            Some((b"v1-0 old", b"7")),
            &cache,
            Caps::UNLIMITED,
        );
        let args = call.args();
        // EVAL script 5 keys... then the 12 arguments.
        assert_eq!(args[2], b"5");
        assert_eq!(
            &args[8..],
            &[
                &b"18446744073709551615"[..],
                b"9223372036854775807",
                b"7",
                b"k",
                b"v",
                b"put",
                b"1-0 2-0",
                b"",
                b"v1-0 old",
                Queue::bucket(b"k").as_bytes(),
                b"7",
                b"kv",
            ]
        );
        let any = Preconditions {
            if_match: Some(TagList::Any),
            if_none_match: Some(TagList::Versions(Vec::new())),
        };
        let args = queue.write_if("kv", b"k", None, &any, None, &cache, Caps::UNLIMITED);
        assert_eq!(&args.args()[13..16], &[&b"del"[..], b"*", b"-"]);
    }

    #[test]
    fn release_buckets_spread_keys() {
        let buckets: std::collections::HashSet<String> = (0..10_000)
            .map(|i| Queue::bucket(format!("key{i}").as_bytes()))
            .collect();
        assert!(buckets.len() > 1000 * 9 / 10, "{}", buckets.len());
        assert!(
            buckets
                .iter()
                .all(|b| b.parse::<u32>().unwrap() < RELEASE_BUCKETS)
        );
    }

    #[test]
    fn entries_read_back_what_was_appended() {
        fn entries_of(fields: Vec<&'static [u8]>) -> Vec<Result<Entry, (Vec<u8>, String)>> {
            let reply = Reply::Array(vec![Reply::Array(vec![
                Reply::Bulk(b"1700000000000-5"),
                Reply::Array(fields.into_iter().map(Reply::Bulk).collect()),
            ])]);
            entries(&reply)
        }
        let put = entries_of(vec![b"t", b"kv", b"k", b"a", b"v", b"1"]);
        assert_eq!(
            put,
            [Ok(Entry {
                id: b"1700000000000-5".to_vec(),
                version: Version {
                    ms: 1_700_000_000_000,
                    seq: 5
                },
                record: Record::new("kv", b"a", Some(b"1"), 1),
                queued_bytes: 7,
            })]
        );
        let delete = entries_of(vec![b"t", b"kv", b"k", b"a"]);
        assert_eq!(
            delete[0].as_ref().unwrap().record,
            Record::new("kv", b"a", None, 1)
        );
        let events = entries_of(vec![
            b"t", b"events", b"k", b"a", b"n", b"2", b"v", b"batch",
        ]);
        assert_eq!(
            events[0].as_ref().unwrap().record,
            Record::new("events", b"a", Some(b"batch"), 2)
        );
        // Entries queued before tables had names read as the same records.
        let old_put = entries_of(vec![b"t", b"put", b"k", b"a", b"v", b"1"]);
        assert_eq!(
            old_put[0].as_ref().unwrap().record,
            Record::new("kv", b"a", Some(b"1"), 1)
        );
        let old_delete = entries_of(vec![b"t", b"del", b"k", b"a"]);
        assert_eq!(
            old_delete[0].as_ref().unwrap().record,
            Record::new("kv", b"a", None, 1)
        );
        let old_events = entries_of(vec![b"t", b"evb", b"k", b"a", b"n", b"2", b"b", b"batch"]);
        assert_eq!(
            old_events[0].as_ref().unwrap().record,
            Record::new("events", b"a", Some(b"batch"), 2)
        );
        for bad in [
            vec![&b"t"[..], b"zap"],
            vec![b"t", b"put", b"k", b"a"],
            vec![b"t", b"evb", b"k", b"a"],
            vec![b"t", b"kv", b"k", b"a", b"n", b"x"],
            vec![b"t", b"\xff", b"k", b"a"],
        ] {
            assert!(entries_of(bad)[0].is_err());
        }
    }
}
