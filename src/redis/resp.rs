//! RESP on the wire: commands encoded straight into a connection's output
//! buffer, replies decoded with `redis-protocol`'s range decoders, which
//! point into the receive buffer instead of copying values out of it.

use redis_protocol::resp2::decode::decode_range as decode_resp2;
use redis_protocol::resp2::types::RangeFrame as Frame2;
use redis_protocol::resp3::decode::complete::decode_range as decode_resp3;
use redis_protocol::resp3::types::RangeFrame as Frame3;

/// Which RESP version a connection speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]

pub enum Protocol {
    /// RESP2, what every Redis speaks on connect.
    #[default]
    Resp2,
    /// RESP3, negotiated with `HELLO 3`.
    Resp3,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "resp2" | "2" => Ok(Protocol::Resp2),
            "resp3" | "3" => Ok(Protocol::Resp3),
            _ => Err(format!("invalid protocol {s:?}: expected resp2 or resp3")),
        }
    }
}

/// Bytes that are not RESP: the connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed reply: {}", self.0)
    }
}

/// A reply, borrowing its bytes from the buffer it was decoded from.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<'a> {
    /// A simple string, such as `OK`.
    Status(&'a [u8]),
    /// An error, such as `MOVED 3999 127.0.0.1:6381`.
    Error(&'a [u8]),
    /// An integer.
    Integer(i64),
    /// A bulk (blob) string.
    Bulk(&'a [u8]),
    /// Nothing (a missing key).
    Nil,
    /// An array (RESP2 and RESP3), set or push (RESP3).
    Array(Vec<Reply<'a>>),
    /// A map (RESP3), as key-value pairs.
    Map(Vec<(Reply<'a>, Reply<'a>)>),
    /// A double (RESP3).
    Double(f64),
    /// A boolean (RESP3).
    Boolean(bool),
}

impl<'a> Reply<'a> {
    /// The bytes of a string reply (status, bulk or error).
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Reply::Status(b) | Reply::Bulk(b) | Reply::Error(b) => Some(b),
            _ => None,
        }
    }

    /// An integer reply, or a string that holds one.
    pub fn integer(&self) -> Option<i64> {
        match *self {
            Reply::Integer(n) => Some(n),
            Reply::Status(b) | Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A copy that owns its bytes.
    pub fn to_owned(&self) -> OwnedReply {
        match self {
            Reply::Status(b) => OwnedReply::Status(b.to_vec()),
            Reply::Error(b) => OwnedReply::Error(b.to_vec()),
            Reply::Integer(n) => OwnedReply::Integer(*n),
            Reply::Bulk(b) => OwnedReply::Bulk(b.to_vec()),
            Reply::Nil => OwnedReply::Nil,
            Reply::Array(items) => OwnedReply::Array(items.iter().map(Reply::to_owned).collect()),
            Reply::Map(pairs) => OwnedReply::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            Reply::Double(d) => OwnedReply::Double(*d),
            Reply::Boolean(b) => OwnedReply::Boolean(*b),
        }
    }

    /// A map's entries whether it came as a RESP3 map or a RESP2 flat
    /// array of alternating keys and values.
    pub fn entries(&self) -> Option<Vec<(&Reply<'a>, &Reply<'a>)>> {
        match self {
            Reply::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
            Reply::Array(items) if items.len() % 2 == 0 => Some(
                items
                    .chunks_exact(2)
                    .map(|pair| (&pair[0], &pair[1]))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// A reply that owns its bytes, for callers that keep it.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedReply {
    /// See [`Reply::Status`].
    Status(Vec<u8>),
    /// See [`Reply::Error`].
    Error(Vec<u8>),
    /// See [`Reply::Integer`].
    Integer(i64),
    /// See [`Reply::Bulk`].
    Bulk(Vec<u8>),
    /// See [`Reply::Nil`].
    Nil,
    /// See [`Reply::Array`].
    Array(Vec<OwnedReply>),
    /// See [`Reply::Map`].
    Map(Vec<(OwnedReply, OwnedReply)>),
    /// See [`Reply::Double`].
    Double(f64),
    /// See [`Reply::Boolean`].
    Boolean(bool),
}

impl OwnedReply {
    /// The bytes of a string reply.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            OwnedReply::Status(b) | OwnedReply::Bulk(b) | OwnedReply::Error(b) => Some(b),
            _ => None,
        }
    }
}

/// Decode one reply from the start of `buf`: `None` if it is not all
/// there, else the reply and the bytes it took.
pub fn decode(protocol: Protocol, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
    let error = |e: redis_protocol::error::RedisProtocolError| ProtocolError(e.to_string());
    match protocol {
        Protocol::Resp2 => match decode_resp2(buf).map_err(error)? {
            None => Ok(None),
            Some((frame, len)) => Ok(Some((from_resp2(buf, frame), len))),
        },
        Protocol::Resp3 => match decode_resp3(buf).map_err(error)? {
            None => Ok(None),
            Some((frame, len)) => Ok(Some((from_resp3(buf, frame)?, len))),
        },
    }
}

fn from_resp2(buf: &[u8], frame: Frame2) -> Reply<'_> {
    match frame {
        Frame2::SimpleString(r) => Reply::Status(&buf[r.0..r.1]),
        Frame2::Error(r) => Reply::Error(&buf[r.0..r.1]),
        Frame2::Integer(n) => Reply::Integer(n),
        Frame2::BulkString(r) => Reply::Bulk(&buf[r.0..r.1]),
        Frame2::Array(items) => {
            Reply::Array(items.into_iter().map(|f| from_resp2(buf, f)).collect())
        }
        Frame2::Null => Reply::Nil,
    }
}

fn from_resp3(buf: &[u8], frame: Frame3) -> Result<Reply<'_>, ProtocolError> {
    let slice = |r: (usize, usize)| &buf[r.0..r.1];
    let list = |items: Vec<Frame3>| -> Result<Reply<'_>, ProtocolError> {
        Ok(Reply::Array(
            items
                .into_iter()
                .map(|f| from_resp3(buf, f))
                .collect::<Result<_, _>>()?,
        ))
    };
    Ok(match frame {
        Frame3::BlobString { data, .. } => Reply::Bulk(slice(data)),
        Frame3::VerbatimString { data, .. } => Reply::Bulk(slice(data)),
        Frame3::BigNumber { data, .. } => Reply::Bulk(slice(data)),
        Frame3::SimpleString { data, .. } => Reply::Status(slice(data)),
        Frame3::BlobError { data, .. } | Frame3::SimpleError { data, .. } => {
            Reply::Error(slice(data))
        }
        Frame3::Boolean { data, .. } => Reply::Boolean(data),
        Frame3::Null => Reply::Nil,
        Frame3::Number { data, .. } => Reply::Integer(data),
        Frame3::Double { data, .. } => Reply::Double(data),
        Frame3::Array { data, .. } | Frame3::Push { data, .. } => list(data)?,
        Frame3::Set { data, .. } => list(data.into_iter().collect())?,
        Frame3::Map { data, .. } => Reply::Map(
            data.into_iter()
                .map(|(k, v)| Ok((from_resp3(buf, k)?, from_resp3(buf, v)?)))
                .collect::<Result<_, ProtocolError>>()?,
        ),
        Frame3::Hello { .. } | Frame3::ChunkedString(_) => {
            return Err(ProtocolError("unexpected frame type".into()));
        }
    })
}

/// Append `args` to `out` as a RESP command (an array of bulk strings).
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        out.extend_from_slice(digits.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[&b"SET"[..], b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn decodes_resp2_without_copying() {
        let buf = b"+OK\r\n$5\r\nhello\r\n*3\r\n:1\r\n$-1\r\n-ERR no\r\n$2\r\nab";
        let (reply, len) = decode(Protocol::Resp2, buf).unwrap().unwrap();
        assert_eq!((reply, len), (Reply::Status(b"OK"), 5));
        let (reply, len2) = decode(Protocol::Resp2, &buf[len..]).unwrap().unwrap();
        assert_eq!(reply, Reply::Bulk(b"hello"));
        // The value points into the buffer.
        let Reply::Bulk(value) = reply else {
            unreachable!()
        };
        assert!(std::ptr::eq(value.as_ptr(), buf[len + 4..].as_ptr()));
        let rest = &buf[len + len2..];
        let (reply, len3) = decode(Protocol::Resp2, rest).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![Reply::Integer(1), Reply::Nil, Reply::Error(b"ERR no")])
        );
        // A bulk string cut short is not a reply yet.
        assert_eq!(decode(Protocol::Resp2, &rest[len3..]).unwrap(), None);
        assert!(decode(Protocol::Resp2, b"?what\r\n").is_err());
    }

    #[test]
    fn decodes_resp3() {
        let buf = b"%1\r\n+role\r\n+master\r\n";
        let (reply, len) = decode(Protocol::Resp3, buf).unwrap().unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(
            reply,
            Reply::Map(vec![(Reply::Status(b"role"), Reply::Status(b"master"))])
        );
        let (reply, _) = decode(Protocol::Resp3, b"_\r\n").unwrap().unwrap();
        assert_eq!(reply, Reply::Nil);
        let (reply, _) = decode(Protocol::Resp3, b"#t\r\n").unwrap().unwrap();
        assert_eq!(reply, Reply::Boolean(true));
    }

    #[test]
    fn flat_arrays_read_as_maps() {
        let reply = Reply::Array(vec![Reply::Bulk(b"a"), Reply::Integer(1)]);
        let entries = reply.entries().unwrap();
        assert_eq!(entries, [(&Reply::Bulk(b"a"), &Reply::Integer(1))]);
        assert!(Reply::Array(vec![Reply::Nil]).entries().is_none());
    }
}
