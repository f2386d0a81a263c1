//! `PUT`, `GET` and `DELETE /v1/kv/{key}`.
//!
//! A write is one script in the key's partition slot: the value (or a
//! tombstone) into the cache and the record onto the write-back queue,
//! both or neither; 202 with the entry id as the version (also the
//! `ETag`) once Redis has it, 503 if the backlog is at its cap or Redis
//! cannot take it. A read answers from the cache, with the version as its
//! `ETag`; a miss goes to the database core as a read-through when one
//! runs in this process, else it is a 404.
//!
//! Conditional requests (RFC 9110 §13): `If-None-Match` on a GET gives 304
//! when it names the current version (`*`: when the key has a value).
//! `If-Match` (`*`, or versions) and `If-None-Match` (`*`, or versions) on
//! a PUT or DELETE are checked by the same script that writes, so two
//! writers that both name the current version cannot both win: the second
//! gets 412 with the new version. A key that is not cached is read from
//! the database first and the script told what it read, with a release
//! counter that tells whether the cache changed meanwhile.
//!
//! Each request is a small state machine: [`Read::next`] and
//! [`WriteIf::next`] take what came back (a Redis reply, a database row)
//! and say what to do next; [`Read::respond`] and [`WriteIf::respond`]
//! write the answer.

use crate::http::{Method, Rejection, Request, ResponseWriter, Sent, Status};
use crate::writeback::queue::{Cached, Preconditions, TagList, Version};

use super::{Answer, Next, Outcome, Outgoing, WritePath};

/// The path prefix; the key follows it, percent-encoded.
pub const PREFIX: &[u8] = b"/v1/kv/";

/// Times a conditional write reads the database and tries again when
/// the key's cache keeps changing under it, before it gets 503.
const WRITE_IF_TRIES: u8 = 3;

/// Queue the write or look the key up; refuse a bad key or value.
pub fn handle(
    request: &Request<'_>,
    response: ResponseWriter<'_>,
    writes: Option<&WritePath>,
    outgoing: &mut Vec<Outgoing>,
) -> Sent {
    let Some(writes) = writes else {
        return response.reject_with_headers(
            Rejection::new(Status::ServiceUnavailable, "no Redis Cluster is configured"),
            &[("Retry-After", "1")],
        );
    };
    let key = match decode_key(&request.path[PREFIX.len()..], writes.max_key_bytes) {
        Ok(key) => key,
        Err(rejection) => return response.reject(rejection),
    };
    let (command, answer) = match request.method {
        method @ (Method::Put | Method::Delete) => {
            let value = (method == Method::Put).then_some(request.body);
            if value.is_some_and(|v| v.len() > writes.max_value_bytes) {
                return response.reject(Rejection::new(
                    Status::PayloadTooLarge,
                    "value larger than max_value_bytes",
                ));
            }
            let preconditions = match preconditions(request) {
                Ok(preconditions) => preconditions,
                Err(rejection) => return response.reject(rejection),
            };
            let partition = writes.queue.partition_of(&key);
            let cache = writes.queue.cache_key(&key);
            if preconditions.is_empty() {
                match value {
                    Some(value) => (
                        writes.queue.put(&key, value, &cache, writes.caps).command(),
                        Answer::KvWritten { partition },
                    ),
                    None => (
                        writes.queue.delete(&key, &cache, writes.caps).command(),
                        Answer::KvDeleted { partition },
                    ),
                }
            } else {
                let write = WriteIf {
                    value: value.map(<[u8]>::to_vec),
                    preconditions,
                    partition,
                    stage: WriteStage::Script,
                    tries: 1,
                    key,
                };
                (
                    write.command(writes, None),
                    Answer::KvWriteIf(Box::new(write)),
                )
            }
        }
        // GET and HEAD: the routing table allows no other.
        _ => (
            writes.queue.cached(&key),
            Answer::KvRead(Read {
                if_none_match: request.header("if-none-match").map(Box::from),
                key,
                stage: ReadStage::Cache,
            }),
        ),
    };
    outgoing.push(Outgoing { command, answer });
    response.defer()
}

/// A GET (or HEAD) on its way: the cache, then, on a miss, the bucket's
/// release counter, then the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    key: Vec<u8>,
    /// The `If-None-Match` field, if sent.
    if_none_match: Option<Box<[u8]>>,
    stage: ReadStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadStage {
    /// The cache entry was asked for.
    Cache,
    /// It missed; the release counter was asked for.
    Counter,
    /// The database was asked, after the counter read.
    Database { counter: Option<u64> },
}

impl Read {
    /// Go on from what came back.
    pub fn next(
        mut self,
        outcome: Outcome,
        bytes: &[u8],
        writes: &WritePath,
        read_through: bool,
    ) -> Next {
        match (self.stage, outcome) {
            (ReadStage::Cache, Outcome::Nil) if read_through => {
                self.stage = ReadStage::Counter;
                Next::Redis(
                    writes.queue.release_counter(&self.key),
                    Answer::KvRead(self),
                )
            }
            (ReadStage::Counter, Outcome::Failed(why)) => {
                Next::Respond(Answer::KvRead(self), Outcome::Failed(why))
            }
            (ReadStage::Counter, outcome) => {
                self.stage = ReadStage::Database {
                    counter: counter(&outcome, bytes),
                };
                let key = self.key.clone();
                Next::Lookup(key, Answer::KvRead(self))
            }
            (ReadStage::Database { counter }, Outcome::Row { entry, fill: true }) => {
                let row = &bytes[entry.clone()];
                let ttl_ms = match Cached::from_entry(Some(row)) {
                    Ok(Cached::Value { .. }) => writes.cache_ttl_ms,
                    _ => writes.miss_ttl_ms,
                };
                let fill =
                    writes
                        .queue
                        .fill(&self.key, row, ttl_ms, counter_text(counter).as_bytes());
                Next::RespondAndSend(
                    Answer::KvRead(self),
                    Outcome::Row { entry, fill: true },
                    fill,
                )
            }
            (_, outcome) => Next::Respond(Answer::KvRead(self), outcome),
        }
    }

    /// Answer from the cache entry or the database's row.
    pub fn respond(self, outcome: Outcome, bytes: &[u8], response: ResponseWriter<'_>) -> Sent {
        let entry = match &outcome {
            Outcome::Bulk(range) | Outcome::Row { entry: range, .. } => Some(&bytes[range.clone()]),
            Outcome::Nil => None,
            Outcome::Failed(why) => return super::unavailable("could not be read", why, response),
            other => {
                let why = format!("an unexpected reply {other:?}");
                return super::unavailable("could not be read", &why, response);
            }
        };
        match Cached::from_entry(entry) {
            Err(why) => response.reject(Rejection::new(Status::InternalServerError, why)),
            Ok(Cached::Value { version, value }) => {
                let mut tag = EntityTag::default();
                let etag = tag.of(version);
                if let (Some(condition), Some(etag)) = (&self.if_none_match, etag)
                    && none_match_holds(condition, version)
                {
                    return response.not_modified(&[("ETag", etag)]);
                }
                match etag {
                    Some(etag) => response.send_with_headers(
                        Status::Ok,
                        &[("ETag", etag)],
                        "application/octet-stream",
                        value,
                    ),
                    None => response.send(Status::Ok, "application/octet-stream", value),
                }
            }
            Ok(Cached::Absent { .. } | Cached::Missing) => {
                response.reject(Rejection::new(Status::NotFound, "no such key"))
            }
        }
    }
}

/// A conditional PUT or DELETE on its way: the script; when the key is
/// not cached, the release counter, the database, and the script again
/// with what the database holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteIf {
    key: Vec<u8>,
    /// The value of a PUT; `None` for a DELETE.
    value: Option<Vec<u8>>,
    preconditions: Preconditions,
    /// The partition it goes to.
    pub partition: u16,
    stage: WriteStage,
    /// Scripts sent so far.
    tries: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteStage {
    /// The script was sent.
    Script,
    /// The key was not cached; the release counter was asked for.
    Counter,
    /// The database was asked, after the counter read.
    Database { counter: Option<u64> },
}

impl WriteIf {
    /// Whether it is a DELETE.
    pub fn is_delete(&self) -> bool {
        self.value.is_none()
    }

    /// The script, with what the database holds once it is known.
    fn command(
        &self,
        writes: &WritePath,
        known: Option<(&[u8], Option<u64>)>,
    ) -> crate::redis::command::Command {
        let cache = writes.queue.cache_key(&self.key);
        let counter = known.map(|(_, counter)| counter_text(counter));
        let known = known
            .zip(counter.as_deref())
            .map(|((entry, _), counter)| (entry, counter.as_bytes()));
        writes
            .queue
            .write_if(
                &self.key,
                self.value.as_deref(),
                &self.preconditions,
                known,
                &cache,
                writes.caps,
            )
            .command()
    }

    /// Go on from what came back.
    pub fn next(
        mut self,
        outcome: Outcome,
        bytes: &[u8],
        writes: &WritePath,
        read_through: bool,
    ) -> Next {
        match (self.stage, outcome) {
            (WriteStage::Script, Outcome::Failed(why)) if why.starts_with("MISS") => {
                if !read_through {
                    let why = "the key is not cached, and a conditional write on it needs \
                               read-through from the database core (postgres_url)";
                    return Next::Respond(
                        Answer::KvWriteIf(Box::new(self)),
                        Outcome::Failed(why.into()),
                    );
                }
                if self.tries >= WRITE_IF_TRIES {
                    let why = "the key's cache kept changing while it was read from the \
                               database; retry";
                    return Next::Respond(
                        Answer::KvWriteIf(Box::new(self)),
                        Outcome::Failed(why.into()),
                    );
                }
                self.stage = WriteStage::Counter;
                Next::Redis(
                    writes.queue.release_counter(&self.key),
                    Answer::KvWriteIf(Box::new(self)),
                )
            }
            (WriteStage::Counter, Outcome::Failed(why)) => {
                Next::Respond(Answer::KvWriteIf(Box::new(self)), Outcome::Failed(why))
            }
            (WriteStage::Counter, outcome) => {
                self.stage = WriteStage::Database {
                    counter: counter(&outcome, bytes),
                };
                let key = self.key.clone();
                Next::Lookup(key, Answer::KvWriteIf(Box::new(self)))
            }
            (WriteStage::Database { counter }, Outcome::Row { entry, .. }) => {
                let command = self.command(writes, Some((&bytes[entry], counter)));
                self.stage = WriteStage::Script;
                self.tries += 1;
                Next::Redis(command, Answer::KvWriteIf(Box::new(self)))
            }
            (_, outcome) => Next::Respond(Answer::KvWriteIf(Box::new(self)), outcome),
        }
    }

    /// 202 with the version; 412 with the current one.
    pub fn respond(self, outcome: Outcome, bytes: &[u8], response: ResponseWriter<'_>) -> Sent {
        match outcome {
            Outcome::Failed(why) => match why.strip_prefix("PRECONDITION") {
                Some(current) => {
                    let current = current.trim();
                    let mut tag = EntityTag::default();
                    let body = if current.is_empty() {
                        "precondition failed: the key has no value\n".to_string()
                    } else {
                        format!("precondition failed: the current version is {current}\n")
                    };
                    let headers: &[(&str, &str)] = match tag.of(current.as_bytes()) {
                        Some(etag) => &[("ETag", etag)],
                        None => &[],
                    };
                    response.send_with_headers(
                        Status::PreconditionFailed,
                        headers,
                        "text/plain; charset=utf-8",
                        body.as_bytes(),
                    )
                }
                None => super::unavailable("the write could not be queued", &why, response),
            },
            outcome => accepted(&outcome, bytes, response),
        }
    }
}

/// 202 for a queued write, with its version in the body and as the `ETag`.
pub fn accepted(outcome: &Outcome, bytes: &[u8], response: ResponseWriter<'_>) -> Sent {
    let version = match outcome {
        Outcome::Bulk(range) => &bytes[range.clone()],
        _ => b"".as_slice(),
    };
    let body = [b"{\"version\":\"", version, b"\"}"].concat();
    let mut tag = EntityTag::default();
    match tag.of(version) {
        Some(etag) => response.send_with_headers(
            Status::Accepted,
            &[("ETag", etag)],
            "application/json",
            &body,
        ),
        None => response.send(Status::Accepted, "application/json", &body),
    }
}

/// The release counter from its `HGET` reply (nil: never released).
fn counter(outcome: &Outcome, bytes: &[u8]) -> Option<u64> {
    match outcome {
        Outcome::Bulk(range) => std::str::from_utf8(&bytes[range.clone()])
            .ok()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// The counter as the scripts compare it: as `HGET` gives it, empty for nil.
fn counter_text(counter: Option<u64>) -> String {
    counter.map_or_else(String::new, |c| c.to_string())
}

/// A quoted version for an `ETag` field, rendered on the stack.
struct EntityTag {
    buf: [u8; 44],
}

impl Default for EntityTag {
    fn default() -> Self {
        EntityTag { buf: [0; 44] }
    }
}

impl EntityTag {
    /// `"version"`, if `version` is one (Redis wrote it; check anyway).
    fn of(&mut self, version: &[u8]) -> Option<&str> {
        Version::parse(version)?;
        let len = version.len() + 2;
        self.buf[0] = b'"';
        self.buf[1..len - 1].copy_from_slice(version);
        self.buf[len - 1] = b'"';
        std::str::from_utf8(&self.buf[..len]).ok()
    }
}

/// The entity tags of an `If-Match` or `If-None-Match` field: `*`, or a
/// list of `"tag"` and `W/"tag"`. Only tags that are versions are kept
/// (no other can match); weak ones only when `weak` (the weak comparison
/// `If-None-Match` uses; `If-Match` compares strongly, and a weak tag
/// never matches there).
fn tag_list(field: &[u8], weak: bool) -> Option<TagList> {
    if field == b"*" {
        return Some(TagList::Any);
    }
    let mut versions = Vec::new();
    for item in field.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() {
            continue;
        }
        let (is_weak, quoted) = match item.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let tag = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if tag.contains(&b'"') {
            return None;
        }
        if (weak || !is_weak) && Version::parse(tag).is_some() {
            versions.push(tag.to_vec());
        }
    }
    Some(TagList::Versions(versions))
}

/// A write's preconditions from its `If-Match` and `If-None-Match` fields.
fn preconditions(request: &Request<'_>) -> Result<Preconditions, Rejection> {
    let parse = |name: &str, weak: bool| match request.header(name) {
        None => Ok(None),
        Some(field) => tag_list(field, weak).map(Some).ok_or(Rejection::new(
            Status::BadRequest,
            "a malformed entity tag: If-Match and If-None-Match take * or a list of \"version\"",
        )),
    };
    Ok(Preconditions {
        if_match: parse("if-match", false)?,
        if_none_match: parse("if-none-match", true)?,
    })
}

/// Whether a GET's `If-None-Match` names `version` (or is `*`): then 304.
/// A malformed field is ignored, as RFC 9110 allows.
fn none_match_holds(field: &[u8], version: &[u8]) -> bool {
    match tag_list(field, true) {
        Some(TagList::Any) => true,
        Some(TagList::Versions(versions)) => versions.iter().any(|v| v == version),
        None => false,
    }
}

/// The key from its percent-encoded path segment: not empty, at most
/// `max_bytes` once decoded, any bytes (`%00` included).
pub fn decode_key(encoded: &[u8], max_bytes: usize) -> Result<Vec<u8>, Rejection> {
    if encoded.is_empty() {
        return Err(Rejection::new(Status::BadRequest, "empty key"));
    }
    // Decoding never lengthens; a key too long encoded may still fit.
    let mut key = Vec::with_capacity(encoded.len().min(max_bytes + 1));
    let mut rest = encoded;
    while let Some((&byte, after)) = rest.split_first() {
        let decoded = match byte {
            b'%' => match after {
                [high, low, ..] => match (hex(*high), hex(*low)) {
                    (Some(h), Some(l)) => {
                        rest = &after[2..];
                        h << 4 | l
                    }
                    _ => return Err(BAD_ESCAPE),
                },
                _ => return Err(BAD_ESCAPE),
            },
            b'/' => {
                return Err(Rejection::new(
                    Status::BadRequest,
                    "a key is one path segment: encode / as %2F",
                ));
            }
            _ => {
                rest = after;
                byte
            }
        };
        if key.len() == max_bytes {
            return Err(Rejection::new(
                Status::UriTooLong,
                "key longer than max_key_bytes",
            ));
        }
        key.push(decoded);
    }
    Ok(key)
}

const BAD_ESCAPE: Rejection =
    Rejection::new(Status::BadRequest, "malformed percent-escape in the key");

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded_and_bounded() {
        assert_eq!(decode_key(b"user:1", 16).unwrap(), b"user:1");
        assert_eq!(decode_key(b"a%2Fb%00%ff", 16).unwrap(), b"a/b\0\xff");
        assert_eq!(decode_key(b"%41%4a", 16).unwrap(), b"AJ");
        assert_eq!(decode_key(&[b'k'; 16], 16).unwrap().len(), 16);
        assert_eq!(
            decode_key(&[b'k'; 17], 16).unwrap_err().status,
            Status::UriTooLong
        );
        assert_eq!(decode_key(&b"%6b".repeat(16), 16).unwrap().len(), 16);
        for bad in [&b""[..], b"%", b"%4", b"%zz", b"a/b", b"%4g"] {
            assert_eq!(
                decode_key(bad, 16).unwrap_err().status,
                Status::BadRequest,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn entity_tag_lists_keep_the_versions_that_can_match() {
        assert_eq!(tag_list(b"*", false), Some(TagList::Any));
        let versions =
            |v: &[&[u8]]| Some(TagList::Versions(v.iter().map(|t| t.to_vec()).collect()));
        assert_eq!(tag_list(br#""1-0""#, false), versions(&[b"1-0"]));
        assert_eq!(
            tag_list(br#" "1-0" , "2-3","#, false),
            versions(&[b"1-0", b"2-3"])
        );
        // A weak tag never matches If-Match; If-None-Match compares weakly.
        assert_eq!(tag_list(br#"W/"1-0", "2-0""#, false), versions(&[b"2-0"]));
        assert_eq!(
            tag_list(br#"W/"1-0", "2-0""#, true),
            versions(&[b"1-0", b"2-0"])
        );
        // Tags that are not versions cannot match anything here.
        assert_eq!(tag_list(br#""abc", "1 2""#, false), versions(&[]));
        for bad in [&b"1-0"[..], br#""1-0"#, br#"'1-0'"#, br#""1"0""#, b"**"] {
            assert_eq!(
                tag_list(bad, false),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn if_none_match_on_a_read() {
        assert!(none_match_holds(b"*", b"5-1"));
        assert!(none_match_holds(br#""4-0", W/"5-1""#, b"5-1"));
        assert!(!none_match_holds(br#""4-0""#, b"5-1"));
        assert!(!none_match_holds(b"garbage", b"5-1"));
    }

    #[test]
    fn entity_tags_are_quoted_versions() {
        let mut tag = EntityTag::default();
        assert_eq!(tag.of(b"1700000000000-12"), Some("\"1700000000000-12\""));
        assert_eq!(
            tag.of(b"9223372036854775807-9223372036854775807")
                .map(str::len),
            Some(41)
        );
        assert_eq!(tag.of(b"not a version"), None);
        assert_eq!(tag.of(b""), None);
    }
}
