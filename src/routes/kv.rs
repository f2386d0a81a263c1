//! `PUT`, `GET` and `DELETE /v1/kv/{key}`, and the `kv` table.
//!
//! A write is one script in the key's partition slot: the value (or a
//! tombstone) into the cache and the record onto the write-back queue,
//! both or neither ([`Store::write`](crate::app::Store::write)); 202 with
//! the entry id as the version (also the `ETag`) once Redis has it, 503 if
//! the backlog is at its cap or Redis cannot take it. A read answers from
//! the cache, with the version as its `ETag`; a miss is read through from
//! the database when this process runs the database core, else it is a 404.
//!
//! Conditional requests (RFC 9110 §13): `If-None-Match` on a GET gives 304
//! when it names the current version (`*`: when the key has a value).
//! `If-Match` (`*`, or versions) and `If-None-Match` (`*`, or versions) on
//! a PUT or DELETE are checked by the same script that writes, so two
//! writers that both name the current version cannot both win: the second
//! gets 412 with the new version.

use crate::app::{
    ColumnType, Cx, Found, Merge, Method, Preconditions, Rejection, Request, Responder, Response,
    Routes, Sent, Status, Table, TagList, Version, WriteError, buffer, percent_decode,
};
use crate::writeback::table::RecordRef;
use std::borrow::Cow;

/// The table's name.
pub const TABLE: &str = "kv";

/// The `kv` table: the newest value of each key (a delete keeps its row,
/// the value null), cached in Redis. A record's payload and the cached
/// value are the value's bytes as they are.
pub fn table() -> Table {
    Table::new(
        TABLE,
        &[("key", ColumnType::Bytea), ("value", ColumnType::Bytea)],
        Merge::LastWriterWins {
            key: "key".into(),
            touched: Some("updated_at".into()),
        },
        include_str!("../../schemas/sql/kv.sql"),
    )
    .and_then(|t| t.with_rows(rows).cached(Some(cache_value)))
    .expect("the kv table's declaration is valid")
}

/// A record is a row: its key, its value (none for a delete).
fn rows(
    _: &Table,
    record: RecordRef<'_>,
    out: &mut crate::writeback::table::RowWriter,
) -> Result<(), String> {
    out.row(&[Some(record.key), record.payload]);
    Ok(())
}

/// A row read through is cached as its value's bytes.
fn cache_value(fields: &[Option<&[u8]>], out: &mut Vec<u8>) {
    if let Some(Some(value)) = fields.first() {
        out.extend_from_slice(value);
    }
}

/// `GET`, `PUT` and `DELETE` on `/v1/kv/{key}`: keys up to
/// `max_key_bytes` once decoded, values up to `max_value_bytes`.
pub fn routes(max_key_bytes: usize, max_value_bytes: usize) -> Routes<()> {
    Routes::new()
        .get(
            "/v1/kv/{*key}",
            move |cx: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>| {
                get(cx, request, response, max_key_bytes)
            },
        )
        .named("kv_get")
        .protected()
        .put(
            "/v1/kv/{*key}",
            move |cx: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>| {
                write(cx, request, response, max_key_bytes, max_value_bytes)
            },
        )
        .named("kv_put")
        .protected()
        .delete(
            "/v1/kv/{*key}",
            move |cx: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>| {
                write(cx, request, response, max_key_bytes, max_value_bytes)
            },
        )
        .named("kv_delete")
        .protected()
}

/// Answer from the cache, or from the database through it.
fn get(
    cx: &Cx<'_, ()>,
    request: &Request<'_>,
    response: Responder<'_>,
    max_key_bytes: usize,
) -> Sent {
    if !cx.io().has_redis() {
        return super::no_redis(response);
    }
    let key = match key_of(request, max_key_bytes) {
        Ok(key) => key,
        Err(rejection) => return response.reject(rejection),
    };
    let read = cx.store().read(TABLE, &key);
    let if_none_match = request.header("if-none-match").map(Box::<[u8]>::from);
    response.later(async move {
        match read.await {
            Ok(found) => answer_found(found, if_none_match.as_deref()),
            Err(e) => super::unavailable(&e.to_string()),
        }
    })
}

/// 200 with the value and its version as the `ETag` (304 when
/// `If-None-Match` names it), or 404.
fn answer_found(found: Found, if_none_match: Option<&[u8]>) -> Response {
    // The version, kept on the stack while the value leaves the entry.
    let mut version = [0; Version::MAX_TEXT_BYTES];
    let len = match found.cached() {
        Err(why) => return Response::rejection(Rejection::new(Status::InternalServerError, why)),
        Ok(cached) => match cached.version() {
            Some(v) if v.len() <= version.len() => {
                version[..v.len()].copy_from_slice(v);
                v.len()
            }
            Some(_) => {
                let why = "a cache entry with a version too long to be one";
                return Response::rejection(Rejection::new(Status::InternalServerError, why));
            }
            None => return Response::rejection(Rejection::new(Status::NotFound, "no such key")),
        },
    };
    let version = &version[..len];
    let mut tag = EntityTag::default();
    let etag = tag.of(version);
    if let (Some(condition), Some(etag)) = (if_none_match, etag)
        && none_match_holds(condition, version)
    {
        return Response::new(Status::NotModified).header("ETag", etag);
    }
    let value = found.into_value().unwrap_or_default();
    let response = Response::new(Status::Ok).body("application/octet-stream", value);
    match etag {
        Some(etag) => response.header("ETag", etag),
        None => response,
    }
}

/// Queue a PUT or DELETE, under its preconditions.
fn write(
    cx: &Cx<'_, ()>,
    request: &Request<'_>,
    response: Responder<'_>,
    max_key_bytes: usize,
    max_value_bytes: usize,
) -> Sent {
    if !cx.io().has_redis() {
        return super::no_redis(response);
    }
    let key = match key_of(request, max_key_bytes) {
        Ok(key) => key,
        Err(rejection) => return response.reject(rejection),
    };
    let value = (request.method() == Method::Put).then_some(request.body());
    if value.is_some_and(|v| v.len() > max_value_bytes) {
        return response.reject(Rejection::new(
            Status::PayloadTooLarge,
            "value larger than max_value_bytes",
        ));
    }
    let preconditions = match preconditions(request) {
        Ok(preconditions) => preconditions,
        Err(rejection) => return response.reject(rejection),
    };
    let written = cx.store().write(TABLE, &key, value, &preconditions);
    response.later(async move {
        match written.await {
            Ok(version) => accepted(version),
            Err(e) => refused(&e),
        }
    })
}

/// 202 for a queued write, with its version in the body and as the `ETag`.
fn accepted(version: Version) -> Response {
    let mut text = [0; Version::MAX_TEXT_BYTES];
    let version = version.text(&mut text);
    let mut body = buffer();
    body.extend_from_slice(b"{\"version\":\"");
    body.extend_from_slice(version.as_bytes());
    body.extend_from_slice(b"\"}");
    let mut tag = EntityTag::default();
    let response = Response::new(Status::Accepted).body("application/json", body);
    match tag.of(version.as_bytes()) {
        Some(etag) => response.header("ETag", etag),
        None => response,
    }
}

/// What a refused write is answered with.
fn refused(error: &WriteError) -> Response {
    match error {
        WriteError::PreconditionFailed(current) => {
            let response = Response::text(Status::PreconditionFailed, format!("{error}\n"));
            let mut tag = EntityTag::default();
            match current.as_deref().and_then(|v| tag.of(v.as_bytes())) {
                Some(etag) => response.header("ETag", etag),
                None => response,
            }
        }
        WriteError::Unavailable(_) | WriteError::Unconfirmed { .. } => {
            super::unavailable(&error.to_string())
        }
        WriteError::BadInput(why) => Response::text(Status::BadRequest, format!("{why}\n")),
        WriteError::Invalid(why) => Response::text(Status::InternalServerError, format!("{why}\n")),
    }
}

/// The key from the path: one segment, percent-decoded, not empty.
fn key_of<'a>(request: &Request<'a>, max_key_bytes: usize) -> Result<Cow<'a, [u8]>, Rejection> {
    decode_key(request.param("key").unwrap_or_default(), max_key_bytes)
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
/// `max_bytes` once decoded, any bytes (`%00` included); a `/` must be
/// sent as `%2F`.
pub fn decode_key(encoded: &[u8], max_bytes: usize) -> Result<Cow<'_, [u8]>, Rejection> {
    if encoded.is_empty() {
        return Err(Rejection::new(Status::BadRequest, "empty key"));
    }
    if encoded.contains(&b'/') {
        return Err(Rejection::new(
            Status::BadRequest,
            "a key is one path segment: encode / as %2F",
        ));
    }
    percent_decode(encoded, max_bytes).map_err(|rejection| match rejection.status {
        Status::UriTooLong => Rejection::new(Status::UriTooLong, "key longer than max_key_bytes"),
        _ => Rejection::new(Status::BadRequest, "malformed percent-escape in the key"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded_and_bounded() {
        assert_eq!(&*decode_key(b"user:1", 16).unwrap(), b"user:1");
        assert_eq!(&*decode_key(b"a%2Fb%00%ff", 16).unwrap(), b"a/b\0\xff");
        assert_eq!(&*decode_key(b"%41%4a", 16).unwrap(), b"AJ");
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
