//! `PUT`, `GET` and `DELETE /v1/kv/{key}`.
//!
//! A write is one script in the key's partition slot: the value (or a
//! tombstone) into the cache and the record onto the write-back queue,
//! both or neither; 202 with the entry id as the version once Redis has it,
//! 503 if the backlog is at its cap or Redis cannot take it. A read answers
//! from the cache; a miss goes to the database core as a read-through when
//! one runs in this process, else it is a 404.

use crate::http::{Method, Rejection, Request, ResponseWriter, Sent, Status};

use super::{Answer, Outgoing, WritePath};

/// The path prefix; the key follows it, percent-encoded.
pub const PREFIX: &[u8] = b"/v1/kv/";

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
        Method::Put => {
            if request.body.len() > writes.max_value_bytes {
                return response.reject(Rejection::new(
                    Status::PayloadTooLarge,
                    "value larger than max_value_bytes",
                ));
            }
            let command =
                writes
                    .queue
                    .put_capped(&key, request.body, writes.backlog_cap_per_partition);
            let partition = writes.queue.partition_of(&key);
            (command, Answer::KvWritten { partition })
        }
        Method::Delete => {
            let command = writes
                .queue
                .delete_capped(&key, writes.backlog_cap_per_partition);
            let partition = writes.queue.partition_of(&key);
            (command, Answer::KvDeleted { partition })
        }
        // GET and HEAD: the routing table allows no other.
        _ => (
            writes.queue.cached(&key),
            Answer::KvRead {
                key,
                looked_up: false,
            },
        ),
    };
    outgoing.push(Outgoing { command, answer });
    response.defer()
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
}
