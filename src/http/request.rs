//! Request heads: the request line and header section, parsed by `httparse`
//! and then held to the framing rules that keep requests from being smuggled
//! (RFC 9112 §6): one body length or chunked, never both, never ambiguous.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::response::{Rejection, Status};

/// The most header fields any configuration may allow; `max_headers` is
/// checked against it. The parser's scratch space lives on the stack.
pub const MAX_HEADERS_LIMIT: usize = 256;

/// Request methods millrace knows. Anything else is answered 501.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: GET without the body.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
}

impl Method {
    fn parse(token: &str) -> Option<Method> {
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }
}

/// The HTTP versions millrace speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: closes after each response unless it asks for keep-alive.
    Http10,
    /// HTTP/1.1: keep-alive unless it asks to close.
    Http11,
}

/// How the body that follows a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A validated request head. Ranges index the head's own bytes, so the head
/// can stay where it was received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The version.
    pub version: Version,
    /// The path, from its leading `/` up to `?` or the end of the target.
    pub path: Range<usize>,
    /// The query after `?`, if any.
    pub query: Option<Range<usize>>,
    /// Bytes of the request line and header section, final CRLF included.
    pub len: usize,
    /// Where the body ends.
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

/// The size limits a head is held to.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Longest request line, CRLF included.
    pub max_request_line_bytes: usize,
    /// Largest header section after the request line, final CRLF included.
    pub max_header_bytes: usize,
    /// Most header fields; at most [`MAX_HEADERS_LIMIT`].
    pub max_headers: usize,
}

/// Parse a head from the start of `buf`: `Ok(None)` while incomplete (and
/// still within the limits), the head once its final empty line is in.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, Rejection> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_LIMIT)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => match first_limit_violation(buf, limits) {
            Some((_, rejection)) => return Err(rejection),
            None => return Ok(None),
        },
        // The answer must not depend on how the bytes arrived: if a size
        // limit is also exceeded, whichever came first in the bytes decides,
        // as it would have had they come one at a time.
        Err(e) => match first_limit_violation(buf, limits) {
            Some((prefix, rejection)) if parses_as_valid_prefix(&buf[..prefix], limits) => {
                return Err(rejection);
            }
            _ => return Err(rejection_for(e)),
        },
    };
    let head = &buf[..len];
    let line_end = req
        .headers
        .first()
        .map_or(len - 2, |h| offset_in(buf, h.name.as_bytes()));
    if line_end > limits.max_request_line_bytes {
        return Err(URI_TOO_LONG);
    }
    if len - line_end > limits.max_header_bytes {
        return Err(HEADERS_TOO_LARGE);
    }
    let request_start = req.method.map_or(0, |m| offset_in(buf, m.as_bytes()));
    if !lines_end_in_crlf(head, request_start, req.headers) {
        return Err(Rejection::new(
            Status::BadRequest,
            "line ends in a bare LF, not CRLF",
        ));
    }

    let method = req
        .method
        .and_then(Method::parse)
        .ok_or(Rejection::new(Status::NotImplemented, "unknown method"))?;
    let version = match req.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let target = req.path.unwrap_or("");
    let target_start = offset_in(buf, target.as_bytes());
    let (path, query) = split_target(target.as_bytes(), target_start, method)?;

    let fields = FieldSummary::from_headers(req.headers, version)?;
    Ok(Some(RequestHead {
        method,
        version,
        path,
        query,
        len,
        framing: fields.framing,
        keep_alive: fields.keep_alive,
        expect_continue: fields.expect_continue,
    }))
}

const URI_TOO_LONG: Rejection = Rejection::new(Status::UriTooLong, "request line too long");
const HEADERS_TOO_LARGE: Rejection =
    Rejection::new(Status::HeaderFieldsTooLarge, "header section too large");

/// For bytes that do not yet hold a complete head: the shortest prefix that
/// breaks a size limit, and the rejection it earns, if `buf` is that long.
/// The request line is measured from the start of `buf`, so the empty lines a
/// client may send before it count against its limit (as in [`parse_head`]).
fn first_limit_violation(buf: &[u8], limits: &HeadLimits) -> Option<(usize, Rejection)> {
    let line_limit = limits.max_request_line_bytes;
    let line_start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line_end = buf[line_start..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| line_start + i + 1);
    match line_end {
        None if buf.len() > line_limit => Some((line_limit + 1, URI_TOO_LONG)),
        Some(end) if end > line_limit => Some((line_limit + 1, URI_TOO_LONG)),
        Some(end) if buf.len() - end > limits.max_header_bytes => {
            Some((end + limits.max_header_bytes + 1, HEADERS_TOO_LARGE))
        }
        _ => None,
    }
}

/// Whether httparse finds nothing wrong in `prefix` (complete or not yet).
fn parses_as_valid_prefix(prefix: &[u8], limits: &HeadLimits) -> bool {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_LIMIT)];
    httparse::Request::new(&mut [])
        .parse_with_uninit_headers(prefix, headers)
        .is_ok()
}

fn rejection_for(error: httparse::Error) -> Rejection {
    let reason = match error {
        httparse::Error::TooManyHeaders => {
            return Rejection::new(Status::HeaderFieldsTooLarge, "too many header fields");
        }
        httparse::Error::Version => {
            return Rejection::new(
                Status::VersionNotSupported,
                "only HTTP/1.0 and HTTP/1.1 are supported",
            );
        }
        httparse::Error::HeaderName => "malformed header name (obs-fold is not accepted)",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Status => "malformed status",
        httparse::Error::Token => "malformed request line",
    };
    Rejection::new(Status::BadRequest, reason)
}

/// httparse accepts a lone LF as a line ending; RFC 9112 §2.2 lets a server
/// reject it, and a proxy that disagrees about line ends can be used to
/// smuggle requests. httparse allows no LF inside a line, so every LF in a
/// head ends a line: the empty lines before the request line, the line before
/// each header field, and the last two. Checking those places is enough.
fn lines_end_in_crlf(head: &[u8], request_start: usize, headers: &[httparse::Header<'_>]) -> bool {
    head[..request_start].chunks(2).all(|pair| pair == b"\r\n")
        && head.ends_with(b"\r\n\r\n")
        && headers.iter().all(|h| {
            let start = offset_in(head, h.name.as_bytes());
            start >= 2 && &head[start - 2..start] == b"\r\n"
        })
}

fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// Origin form (`/path?query`), absolute form (`http://host/path`), which a
/// server must accept, and `*` for OPTIONS.
type Target = (Range<usize>, Option<Range<usize>>);

fn split_target(target: &[u8], start: usize, method: Method) -> Result<Target, Rejection> {
    if target.first() == Some(&b'/') {
        return Ok(split_query(target, start));
    }
    if target == b"*" && method == Method::Options {
        return Ok((start..start + 1, None));
    }
    let Some(after_scheme) = strip_scheme(target) else {
        return Err(Rejection::new(
            Status::BadRequest,
            "request target must start with /",
        ));
    };
    let authority = after_scheme
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after_scheme.len());
    let skip = target.len() - after_scheme.len() + authority;
    Ok(split_query(&target[skip..], start + skip))
}

/// `/path?query` at `start` into its path and query ranges.
fn split_query(target: &[u8], start: usize) -> Target {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (start..start + q, Some(start + q + 1..start + target.len())),
        None => (start..start + target.len(), None),
    }
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let n = scheme.len();
        (target.len() >= n && target[..n].eq_ignore_ascii_case(scheme.as_bytes()))
            .then(|| &target[n..])
    })
}

/// The header fields the HTTP layer acts on.
#[derive(Clone, Copy)]
enum Field {
    Host,
    Expect,
    Connection,
    ContentLength,
    TransferEncoding,
}

impl Field {
    /// The field `name` is, if one of these. Their lengths differ, so one
    /// comparison decides. A header name is a token (httparse checked), and
    /// for token bytes `b | 0x20` equals a lowercase letter or `-` only if `b`
    /// is that letter in either case or `-` itself: a case-insensitive match
    /// without case-folding both sides.
    fn named(name: &[u8]) -> Option<Field> {
        let (field, lower): (Field, &[u8]) = match name.len() {
            4 => (Field::Host, b"host"),
            6 => (Field::Expect, b"expect"),
            10 => (Field::Connection, b"connection"),
            14 => (Field::ContentLength, b"content-length"),
            17 => (Field::TransferEncoding, b"transfer-encoding"),
            _ => return None,
        };
        name.iter()
            .zip(lower)
            .all(|(&b, &l)| b | 0x20 == l)
            .then_some(field)
    }
}

/// What the header fields say about framing and the connection.
struct FieldSummary {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

impl FieldSummary {
    fn from_headers(headers: &[httparse::Header<'_>], version: Version) -> Result<Self, Rejection> {
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut hosts = 0;
        let mut close = false;
        let mut keep_alive = false;
        let mut expect_continue = false;
        for header in headers {
            let Some(field) = Field::named(header.name.as_bytes()) else {
                continue;
            };
            let value = header.value.trim_ascii();
            match field {
                Field::ContentLength => {
                    let length = parse_content_length(value)?;
                    if content_length.is_some_and(|seen| seen != length) {
                        return Err(Rejection::new(
                            Status::BadRequest,
                            "conflicting Content-Length values",
                        ));
                    }
                    content_length = Some(length);
                }
                Field::TransferEncoding => {
                    transfer_encoding = true;
                    for coding in tokens(value) {
                        // Chunked must be the last coding, and millrace decodes no other.
                        if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                            return Err(Rejection::new(
                                Status::NotImplemented,
                                "only Transfer-Encoding: chunked is supported",
                            ));
                        }
                        chunked = true;
                    }
                }
                Field::Host => hosts += 1,
                Field::Connection => {
                    for option in tokens(value) {
                        close |= option.eq_ignore_ascii_case(b"close");
                        keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
                Field::Expect => {
                    if !value.eq_ignore_ascii_case(b"100-continue") {
                        return Err(Rejection::new(
                            Status::ExpectationFailed,
                            "only Expect: 100-continue is supported",
                        ));
                    }
                    // RFC 9110 §10.1.1: ignore it from an HTTP/1.0 client.
                    expect_continue = version == Version::Http11;
                }
            }
        }
        if transfer_encoding && content_length.is_some() {
            return Err(Rejection::new(
                Status::BadRequest,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if transfer_encoding && version == Version::Http10 {
            return Err(Rejection::new(
                Status::BadRequest,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if hosts > 1 || (hosts == 0 && version == Version::Http11) {
            return Err(Rejection::new(
                Status::BadRequest,
                "an HTTP/1.1 request needs exactly one Host",
            ));
        }
        let framing = match (chunked, content_length) {
            (true, _) => BodyFraming::Chunked,
            (false, Some(0) | None) => BodyFraming::None,
            (false, Some(n)) => BodyFraming::Length(n),
        };
        let keep_alive = match version {
            Version::Http11 => !close,
            Version::Http10 => keep_alive && !close,
        };
        Ok(FieldSummary {
            framing,
            keep_alive,
            expect_continue,
        })
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, Rejection> {
    const BAD: Rejection = Rejection::new(Status::BadRequest, "malformed Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    // At most 19 digits: fits in a u64.
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The comma-separated elements of a list-valued field, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line_bytes: 64,
        max_header_bytes: 128,
        max_headers: 4,
    };

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, Rejection> {
        parse_head(bytes, &LIMITS)
    }

    fn status(bytes: &[u8]) -> Status {
        parse(bytes).expect_err("should be rejected").status
    }

    #[test]
    fn valid_requests() {
        struct Case {
            bytes: &'static [u8],
            method: Method,
            path: &'static [u8],
            query: Option<&'static [u8]>,
            framing: BodyFraming,
            keep_alive: bool,
            expect_continue: bool,
        }
        let cases = [
            Case {
                bytes: b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
                method: Method::Get,
                path: b"/plaintext",
                query: None,
                framing: BodyFraming::None,
                keep_alive: true,
                expect_continue: false,
            },
            Case {
                bytes: b"GET /a?b=1&c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                method: Method::Get,
                path: b"/a",
                query: Some(b"b=1&c"),
                framing: BodyFraming::None,
                keep_alive: false,
                expect_continue: false,
            },
            Case {
                bytes: b"GET / HTTP/1.0\r\n\r\n",
                method: Method::Get,
                path: b"/",
                query: None,
                framing: BodyFraming::None,
                keep_alive: false,
                expect_continue: false,
            },
            Case {
                bytes: b"HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                method: Method::Head,
                path: b"/",
                query: None,
                framing: BodyFraming::None,
                keep_alive: true,
                expect_continue: false,
            },
            Case {
                bytes: b"PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                method: Method::Put,
                path: b"/k",
                query: None,
                framing: BodyFraming::Length(5),
                keep_alive: true,
                expect_continue: false,
            },
            Case {
                bytes: b"POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n",
                method: Method::Post,
                path: b"/e",
                query: None,
                framing: BodyFraming::Chunked,
                keep_alive: true,
                expect_continue: true,
            },
            Case {
                bytes: b"\r\nGET /after-empty-line HTTP/1.1\r\nHost: a\r\n\r\n",
                method: Method::Get,
                path: b"/after-empty-line",
                query: None,
                framing: BodyFraming::None,
                keep_alive: true,
                expect_continue: false,
            },
            Case {
                bytes: b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n",
                method: Method::Get,
                path: b"/x",
                query: Some(b"y"),
                framing: BodyFraming::None,
                keep_alive: true,
                expect_continue: false,
            },
            Case {
                bytes: b"DELETE /k HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: keep-alive, TE\r\n\r\n",
                method: Method::Delete,
                path: b"/k",
                query: None,
                framing: BodyFraming::None,
                keep_alive: true,
                expect_continue: false,
            },
        ];
        for case in cases {
            let head = parse(case.bytes).unwrap().expect("complete");
            let text = String::from_utf8_lossy(case.bytes);
            assert_eq!(head.method, case.method, "{text}");
            assert_eq!(&case.bytes[head.path.clone()], case.path, "{text}");
            assert_eq!(
                head.query.clone().map(|q| &case.bytes[q]),
                case.query,
                "{text}"
            );
            assert_eq!(head.framing, case.framing, "{text}");
            assert_eq!(head.keep_alive, case.keep_alive, "{text}");
            assert_eq!(head.expect_continue, case.expect_continue, "{text}");
            assert_eq!(head.len, case.bytes.len(), "{text}");
        }
    }

    #[test]
    fn incomplete_heads_wait() {
        let full = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn invalid_requests() {
        use Status::{
            BadRequest, ExpectationFailed, HeaderFieldsTooLarge, NotImplemented,
            VersionNotSupported,
        };
        let cases: &[(&[u8], Status)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\n\r\n", BadRequest),
            (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n folded\r\n\r\n", BadRequest),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", BadRequest),
            (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", NotImplemented),
            (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", NotImplemented),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", VersionNotSupported),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", ExpectationFailed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", HeaderFieldsTooLarge),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                status(bytes),
                *expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn size_limits_apply_before_the_head_completes() {
        let long_line = [b"GET /".as_slice(), &[b'a'; 80]].concat();
        assert_eq!(status(&long_line), Status::UriTooLong);
        let complete_long_line = [long_line.as_slice(), b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        assert_eq!(status(&complete_long_line), Status::UriTooLong);

        let big_header = [b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'v'; 130]].concat();
        assert_eq!(status(&big_header), Status::HeaderFieldsTooLarge);
        let complete_big_header = [big_header.as_slice(), b"\r\n\r\n"].concat();
        assert_eq!(status(&complete_big_header), Status::HeaderFieldsTooLarge);
    }

    #[test]
    fn options_star() {
        let bytes = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = parse(bytes).unwrap().unwrap();
        assert_eq!(&bytes[head.path], b"*");
    }
}
