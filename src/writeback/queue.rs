//! The write-back queue: Redis Streams, one per partition, read by the
//! database core's consumer group. A key always maps to the same partition,
//! so the writes to one key are read in the order they were accepted, and
//! each stream's entry id is the version that orders them.

use crate::payload::{BatchLimits, Invalid, verify_event_batch};
use crate::redis::command::Command;
use crate::redis::resp::Reply;
use crate::redis::slot::crc16;

/// The consumer group every database core reads with.
pub const GROUP: &[u8] = b"millrace-db";

/// XADD unless the stream is at its cap: O(1) (`XLEN` is), and atomic, so
/// a refused write leaves nothing. KEYS: stream, accepted counter; ARGV:
/// cap, rows, then the entry's fields and values.
const APPEND_CAPPED: &str = "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then \
return redis.error_reply('BACKLOG the write-back backlog is at its cap') end \
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) \
redis.call('INCRBY', KEYS[2], ARGV[2]) return id";

/// PUT: the value into the cache and the write onto the queue, or neither
/// if the stream is at its cap. KEYS: stream, cache key; ARGV: cap, key,
/// value; KEYS[3] counts the writes accepted. The cache holds `v` + value.
const PUT_CAPPED: &str = "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then \
return redis.error_reply('BACKLOG the write-back backlog is at its cap') end \
local id = redis.call('XADD', KEYS[1], '*', 't', 'put', 'k', ARGV[2], 'v', ARGV[3]) \
redis.call('SET', KEYS[2], 'v' .. ARGV[3]) redis.call('INCR', KEYS[3]) return id";

/// DELETE: a tombstone into the cache and onto the queue, or neither. The
/// cache holds `t` + the entry id until the database core has written the
/// delete (so that a read-through cannot bring back the old row meanwhile).
const DELETE_CAPPED: &str = "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then \
return redis.error_reply('BACKLOG the write-back backlog is at its cap') end \
local id = redis.call('XADD', KEYS[1], '*', 't', 'del', 'k', ARGV[2]) \
redis.call('SET', KEYS[2], 't' .. id) redis.call('INCR', KEYS[3]) return id";

/// After the delete is written: drop its tombstone, unless a newer write
/// replaced it. KEYS: cache key; ARGV: `t` + entry id.
const DROP_TOMBSTONE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// What the cache holds for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Its value.
    Value(&'a [u8]),
    /// Deleted; the delete is not yet in the database.
    Deleted,
    /// Nothing: the database decides.
    Missing,
}

impl<'a> Cached<'a> {
    /// Read a cache entry as [`Queue::cache_key`]'s commands wrote it.
    pub fn from_entry(entry: Option<&'a [u8]>) -> Result<Cached<'a>, &'static str> {
        match entry {
            None => Ok(Cached::Missing),
            Some([b'v', value @ ..]) => Ok(Cached::Value(value)),
            Some([b't', ..]) => Ok(Cached::Deleted),
            Some(_) => Err("a cache entry millrace did not write"),
        }
    }
}

/// A queued write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A key's new value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// A key's removal.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// A batch of events: a verified FlatBuffers `EventBatch`, as posted
    /// (or converted from JSON), in one stream entry.
    Events {
        /// The first event's key, which picks the partition.
        key: Vec<u8>,
        /// Events in the batch.
        count: u32,
        /// The `EventBatch` buffer.
        batch: Vec<u8>,
    },
}

impl Record {
    /// The key that picks its partition.
    pub fn key(&self) -> &[u8] {
        match self {
            Record::Put { key, .. } | Record::Delete { key } | Record::Events { key, .. } => key,
        }
    }

    /// The record for an `EventBatch` buffer, verified here.
    pub fn events(batch: Vec<u8>) -> Result<Record, Invalid> {
        let parsed = verify_event_batch(&batch, &BatchLimits::unlimited())?;
        let key = parsed.events().get(0).key().as_bytes().to_vec();
        let count = parsed.events().len() as u32;
        Ok(Record::Events { key, count, batch })
    }

    /// Rows it becomes in the database.
    pub fn rows(&self) -> usize {
        match self {
            Record::Put { .. } | Record::Delete { .. } => 1,
            Record::Events { count, .. } => *count as usize,
        }
    }
}

/// An entry read back from a stream: its id (the version) and the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id as Redis printed it, for XACK.
    pub id: Vec<u8>,
    /// The id's milliseconds part.
    pub version_ms: i64,
    /// The id's sequence part.
    pub version_seq: i64,
    /// The write.
    pub record: Record,
}

/// The partitions and how keys map to them.
#[derive(Clone, Debug)]
pub struct Queue {
    partitions: u16,
    names: Vec<Vec<u8>>,
    /// Each partition's count of rows accepted, in its slot.
    accepted: Vec<Vec<u8>>,
}

impl Queue {
    /// `partitions` streams (at least 1), named `{millrace:wb:N}`: the hash
    /// tag puts each stream wholly in one slot, and different N spread the
    /// streams over the masters.
    pub fn new(partitions: u16) -> Queue {
        let partitions = partitions.max(1);
        Queue {
            partitions,
            names: (0..partitions)
                .map(|p| format!("{{millrace:wb:{p}}}").into_bytes())
                .collect(),
            accepted: (0..partitions)
                .map(|p| format!("{{millrace:wb:{p}}}accepted").into_bytes())
                .collect(),
        }
    }

    /// How many partitions.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The stream of partition `p`.
    pub fn stream(&self, partition: u16) -> &[u8] {
        &self.names[usize::from(partition)]
    }

    /// The counter of rows accepted onto partition `p` (an event batch
    /// counts its events).
    pub fn accepted_counter(&self, partition: u16) -> &[u8] {
        &self.accepted[usize::from(partition)]
    }

    /// Where `key`'s value is cached: in its partition's slot, so that one
    /// script writes both the cache and the queue.
    pub fn cache_key(&self, key: &[u8]) -> Vec<u8> {
        let stream = self.stream(self.partition_of(key));
        [stream, b"kv:", key].concat()
    }

    /// The command that puts `value` in the cache and queues it, unless the
    /// partition holds `cap` entries (then Redis answers an error starting
    /// with `BACKLOG` and nothing changed). Answers the entry id.
    pub fn put_capped(&self, key: &[u8], value: &[u8], cap: u64) -> Command {
        let cache = self.cache_key(key);
        let cap = cap.to_string();
        Command::new(&self.put_capped_args(key, value, &cap, &cache), Some(3))
    }

    /// The arguments of [`Queue::put_capped`]'s command (`EVAL script 3
    /// stream cache counter cap key value`), for another client to send the
    /// same; `cache` is [`Queue::cache_key`] of `key`, `cap` decimal text.
    pub fn put_capped_args<'a>(
        &'a self,
        key: &'a [u8],
        value: &'a [u8],
        cap: &'a str,
        cache: &'a [u8],
    ) -> [&'a [u8]; 9] {
        let partition = self.partition_of(key);
        [
            b"EVAL",
            PUT_CAPPED.as_bytes(),
            b"3",
            self.stream(partition),
            cache,
            self.accepted_counter(partition),
            cap.as_bytes(),
            key,
            value,
        ]
    }

    /// [`Queue::put_capped`] for a delete: a tombstone in the cache and on the queue.
    pub fn delete_capped(&self, key: &[u8], cap: u64) -> Command {
        let stream = self.stream(self.partition_of(key));
        let cache = self.cache_key(key);
        let cap = cap.to_string();
        let accepted = self.accepted_counter(self.partition_of(key));
        Command::new(
            &[
                &b"EVAL"[..],
                DELETE_CAPPED.as_bytes(),
                b"3",
                stream,
                &cache,
                accepted,
                cap.as_bytes(),
                key,
            ],
            Some(3),
        )
    }

    /// The cache entry of `key` (read it with [`Cached::from_entry`]).
    pub fn cached(&self, key: &[u8]) -> Command {
        Command::get(&self.cache_key(key))
    }

    /// Once the delete with entry `id` is in the database: drop its
    /// tombstone if no newer write replaced it.
    pub fn drop_tombstone(&self, key: &[u8], id: &[u8]) -> Command {
        let cache = self.cache_key(key);
        let tombstone = [b"t", id].concat();
        Command::new(
            &[
                &b"EVAL"[..],
                DROP_TOMBSTONE.as_bytes(),
                b"1",
                &cache,
                &tombstone,
            ],
            Some(3),
        )
    }

    /// Put a value read from the database into the cache, unless the cache
    /// already holds something: a write accepted meanwhile (or its
    /// tombstone) is newer than what the database held.
    pub fn fill(&self, key: &[u8], value: &[u8]) -> Command {
        let cache = self.cache_key(key);
        let entry = [b"v", value].concat();
        Command::new(&[&b"SET"[..], &cache, &entry, b"NX"], Some(1))
    }

    /// The partition `key` belongs to, always the same for the same key.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        crc16(key) % self.partitions
    }

    /// The command that queues `record` on its partition unless that
    /// stream already holds `cap` entries, atomically (a script): Redis
    /// answers the new entry's id, or an error starting with `BACKLOG`, and
    /// then nothing was queued.
    pub fn append_capped(&self, record: &Record, cap: u64) -> Command {
        let cap = cap.to_string();
        let count = match record {
            Record::Events { count, .. } => count.to_string(),
            _ => String::new(),
        };
        Command::new(&self.append_capped_args(record, &cap, &count), Some(3))
    }

    /// [`Queue::append_capped`] for an event batch still in the request's
    /// buffer, verified, whose first event's key is `key`: nothing copied
    /// but into the command.
    pub fn append_capped_batch(&self, key: &[u8], count: u32, batch: &[u8], cap: u64) -> Command {
        let partition = self.partition_of(key);
        let (cap, count) = (cap.to_string(), count.to_string());
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            APPEND_CAPPED.as_bytes(),
            b"2",
            self.stream(partition),
            &self.accepted[usize::from(partition)],
            cap.as_bytes(),
            count.as_bytes(),
        ];
        args.extend_from_slice(&batch_fields(key, &count, batch));
        Command::new(&args, Some(3))
    }

    /// The arguments of [`Queue::append_capped`]'s command (`EVAL script 1
    /// stream cap field value ...`), for another client to send the same;
    /// `cap` and `count` (an event batch's count) are decimal text.
    pub fn append_capped_args<'a>(
        &'a self,
        record: &'a Record,
        cap: &'a str,
        count: &'a str,
    ) -> Vec<&'a [u8]> {
        let partition = self.partition_of(record.key());
        let rows: &[u8] = match record {
            Record::Events { .. } => count.as_bytes(),
            Record::Put { .. } | Record::Delete { .. } => b"1",
        };
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            APPEND_CAPPED.as_bytes(),
            b"2",
            self.stream(partition),
            &self.accepted[usize::from(partition)],
            cap.as_bytes(),
            rows,
        ];
        match record {
            Record::Put { key, value } => {
                args.extend_from_slice(&[b"t", b"put", b"k", key, b"v", value])
            }
            Record::Delete { key } => args.extend_from_slice(&[b"t", b"del", b"k", key]),
            Record::Events { key, batch, .. } => {
                args.extend_from_slice(&batch_fields(key, count, batch))
            }
        }
        args
    }

    /// The `XADD` that queues `record` on its partition.
    pub fn append(&self, record: &Record) -> Command {
        let stream = self.stream(self.partition_of(record.key()));
        match record {
            Record::Put { key, value } => {
                Command::xadd(stream, &[(b"t", b"put"), (b"k", key), (b"v", value)])
            }
            Record::Delete { key } => Command::xadd(stream, &[(b"t", b"del"), (b"k", key)]),
            Record::Events { key, count, batch } => {
                let count = count.to_string();
                Command::xadd(
                    stream,
                    &[
                        (b"t", b"evb"),
                        (b"k", key),
                        (b"n", count.as_bytes()),
                        (b"b", batch),
                    ],
                )
            }
        }
    }
}

/// An event batch entry's fields and values.
fn batch_fields<'a>(key: &'a [u8], count: &'a str, batch: &'a [u8]) -> [&'a [u8]; 8] {
    [b"t", b"evb", b"k", key, b"n", count.as_bytes(), b"b", batch]
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
    let text = std::str::from_utf8(id).map_err(|_| "a stream id that is not text")?;
    let (ms, seq) = text
        .split_once('-')
        .ok_or("a stream id without a sequence")?;
    let version_ms = ms.parse().map_err(|_| "a bad stream id")?;
    let version_seq = seq.parse().map_err(|_| "a bad stream id")?;
    let field = |name: &[u8]| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0].bytes() == Some(name))
            .and_then(|pair| pair[1].bytes())
    };
    let need = |name: &'static str| field(name.as_bytes()).ok_or(format!("no field {name}"));
    let record = match need("t")? {
        b"put" => Record::Put {
            key: need("k")?.to_vec(),
            value: need("v")?.to_vec(),
        },
        b"del" => Record::Delete {
            key: need("k")?.to_vec(),
        },
        b"evb" => Record::Events {
            key: need("k")?.to_vec(),
            count: std::str::from_utf8(need("n")?)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or("an event count that is not a number")?,
            batch: need("b")?.to_vec(),
        },
        other => {
            return Err(format!(
                "unknown record type {:?}",
                String::from_utf8_lossy(other)
            ));
        }
    };
    Ok(Entry {
        id: id.to_vec(),
        version_ms,
        version_seq,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::slot::Slot;

    #[test]
    fn keys_keep_their_partition_and_streams_their_slot() {
        let queue = Queue::new(16);
        assert_eq!(queue.partition_of(b"k1"), queue.partition_of(b"k1"));
        let slots: std::collections::HashSet<u16> =
            (0..16).map(|p| Slot::of(queue.stream(p)).get()).collect();
        assert_eq!(slots.len(), 16, "every partition in a slot of its own");
        let used: std::collections::HashSet<u16> = (0..1000)
            .map(|i| queue.partition_of(format!("key{i}").as_bytes()))
            .collect();
        assert_eq!(used.len(), 16);
    }

    #[test]
    fn both_capped_appends_send_the_same_command() {
        let queue = Queue::new(16);
        let record = Record::Events {
            key: b"user:1".to_vec(),
            count: 2,
            batch: b"batch".to_vec(),
        };
        assert_eq!(
            queue.append_capped(&record, 10),
            queue.append_capped_batch(b"user:1", 2, b"batch", 10)
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
        let put = entries_of(vec![b"t", b"put", b"k", b"a", b"v", b"1"]);
        assert_eq!(
            put,
            [Ok(Entry {
                id: b"1700000000000-5".to_vec(),
                version_ms: 1_700_000_000_000,
                version_seq: 5,
                record: Record::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                }
            })]
        );
        let events = entries_of(vec![
            b"t",
            b"evb",
            b"k",
            b"a",
            b"n",
            b"2",
            b"b",
            b"batch bytes",
        ]);
        assert!(matches!(
            &events[0],
            Ok(Entry {
                record: Record::Events { .. },
                ..
            })
        ));
        for bad in [
            vec![&b"t"[..], b"zap"],
            vec![b"t", b"put", b"k", b"a"],
            vec![b"t", b"evb", b"k", b"a"],
        ] {
            assert!(entries_of(bad)[0].is_err());
        }
    }
}
