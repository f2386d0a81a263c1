//! Responses: status codes, the cached `Date` header, and the encoder that
//! writes a whole response into a connection's output buffer.

use std::borrow::Cow;
use std::io::Write as _;
use std::time::SystemTime;

/// The statuses millrace answers with. A closed set, so that metrics can
/// count by status in a fixed array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200
    Ok,
    /// 201: a resource was made; `Location` says where.
    Created,
    /// 202: the write is queued.
    Accepted,
    /// 204
    NoContent,
    /// 301, with a `Location` header.
    MovedPermanently,
    /// 302, with a `Location` header.
    Found,
    /// 303, with a `Location` header.
    SeeOther,
    /// 304: `If-None-Match` named the current version.
    NotModified,
    /// 307, with a `Location` header.
    TemporaryRedirect,
    /// 308, with a `Location` header.
    PermanentRedirect,
    /// 400: malformed request; the connection closes.
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405, with an `Allow` header.
    MethodNotAllowed,
    /// 408: the request head did not arrive within `header_timeout_ms`.
    RequestTimeout,
    /// 409
    Conflict,
    /// 410
    Gone,
    /// 412: a conditional write's `If-Match` or `If-None-Match` did not hold.
    PreconditionFailed,
    /// 413: body over `max_body_bytes`.
    PayloadTooLarge,
    /// 414: request line over `max_request_line_bytes`.
    UriTooLong,
    /// 415
    UnsupportedMediaType,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 422
    UnprocessableContent,
    /// 429
    TooManyRequests,
    /// 431: header section over `max_header_bytes` or more than `max_headers` fields.
    HeaderFieldsTooLarge,
    /// 500
    InternalServerError,
    /// 501: unknown method or transfer coding.
    NotImplemented,
    /// 502
    BadGateway,
    /// 503: not ready, draining, or shedding load.
    ServiceUnavailable,
    /// 504
    GatewayTimeout,
    /// 505: neither HTTP/1.0 nor HTTP/1.1.
    VersionNotSupported,
}

impl Status {
    /// Every status, in the order of [`Status::index`].
    pub const ALL: [Status; 32] = [
        Status::Ok,
        Status::Created,
        Status::Accepted,
        Status::NoContent,
        Status::MovedPermanently,
        Status::Found,
        Status::SeeOther,
        Status::NotModified,
        Status::TemporaryRedirect,
        Status::PermanentRedirect,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::Conflict,
        Status::Gone,
        Status::PreconditionFailed,
        Status::PayloadTooLarge,
        Status::UriTooLong,
        Status::UnsupportedMediaType,
        Status::ExpectationFailed,
        Status::UnprocessableContent,
        Status::TooManyRequests,
        Status::HeaderFieldsTooLarge,
        Status::InternalServerError,
        Status::NotImplemented,
        Status::BadGateway,
        Status::ServiceUnavailable,
        Status::GatewayTimeout,
        Status::VersionNotSupported,
    ];

    /// A dense index in `0..Status::ALL.len()`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Created => 201,
            Status::Accepted => 202,
            Status::NoContent => 204,
            Status::MovedPermanently => 301,
            Status::Found => 302,
            Status::SeeOther => 303,
            Status::NotModified => 304,
            Status::TemporaryRedirect => 307,
            Status::PermanentRedirect => 308,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::Conflict => 409,
            Status::Gone => 410,
            Status::PreconditionFailed => 412,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::UnsupportedMediaType => 415,
            Status::ExpectationFailed => 417,
            Status::UnprocessableContent => 422,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::VersionNotSupported => 505,
        }
    }

    /// The status line, CRLF included.
    pub fn status_line(self) -> &'static [u8] {
        let prefix = self.head_prefix();
        &prefix[..prefix.len() - HEAD_PREFIX_TAIL.len()]
    }

    /// What every response head starts with: the status line, `Server`, and
    /// the `Date` field's name. One copy per response instead of three.
    fn head_prefix(self) -> &'static [u8] {
        macro_rules! prefix {
            ($status:literal) => {
                concat!("HTTP/1.1 ", $status, "\r\nServer: millrace\r\nDate: ").as_bytes()
            };
        }
        match self {
            Status::Ok => prefix!("200 OK"),
            Status::Created => prefix!("201 Created"),
            Status::Accepted => prefix!("202 Accepted"),
            Status::NoContent => prefix!("204 No Content"),
            Status::MovedPermanently => prefix!("301 Moved Permanently"),
            Status::Found => prefix!("302 Found"),
            Status::SeeOther => prefix!("303 See Other"),
            Status::NotModified => prefix!("304 Not Modified"),
            Status::TemporaryRedirect => prefix!("307 Temporary Redirect"),
            Status::PermanentRedirect => prefix!("308 Permanent Redirect"),
            Status::BadRequest => prefix!("400 Bad Request"),
            Status::Unauthorized => prefix!("401 Unauthorized"),
            Status::Forbidden => prefix!("403 Forbidden"),
            Status::NotFound => prefix!("404 Not Found"),
            Status::MethodNotAllowed => prefix!("405 Method Not Allowed"),
            Status::RequestTimeout => prefix!("408 Request Timeout"),
            Status::Conflict => prefix!("409 Conflict"),
            Status::Gone => prefix!("410 Gone"),
            Status::PreconditionFailed => prefix!("412 Precondition Failed"),
            Status::PayloadTooLarge => prefix!("413 Content Too Large"),
            Status::UriTooLong => prefix!("414 URI Too Long"),
            Status::UnsupportedMediaType => prefix!("415 Unsupported Media Type"),
            Status::ExpectationFailed => prefix!("417 Expectation Failed"),
            Status::UnprocessableContent => prefix!("422 Unprocessable Content"),
            Status::TooManyRequests => prefix!("429 Too Many Requests"),
            Status::HeaderFieldsTooLarge => prefix!("431 Request Header Fields Too Large"),
            Status::InternalServerError => prefix!("500 Internal Server Error"),
            Status::NotImplemented => prefix!("501 Not Implemented"),
            Status::BadGateway => prefix!("502 Bad Gateway"),
            Status::ServiceUnavailable => prefix!("503 Service Unavailable"),
            Status::GatewayTimeout => prefix!("504 Gateway Timeout"),
            Status::VersionNotSupported => prefix!("505 HTTP Version Not Supported"),
        }
    }
}

/// The part of [`Status::head_prefix`] after the status line.
const HEAD_PREFIX_TAIL: &[u8] = b"Server: millrace\r\nDate: ";

/// A response known when the program is built: its header fields after
/// `Date` are rendered once, at compile time, so answering it is a few
/// copies. The declared `Content-Length` is checked against the body when
/// the constant is built.
pub struct FixedResponse {
    status: Status,
    /// `Content-Type: ...\r\nContent-Length: N\r\n`, and any other field.
    fields: &'static [u8],
    body: &'static [u8],
}

impl FixedResponse {
    /// `fields` must end with `Content-Length: N\r\n`, N the body's length.
    pub const fn new(status: Status, fields: &'static [u8], body: &'static [u8]) -> Self {
        assert!(
            declared_length(fields) == body.len(),
            "Content-Length must end the fields and match the body"
        );
        FixedResponse {
            status,
            fields,
            body,
        }
    }
}

/// The number in a trailing `Content-Length: N\r\n`, or `usize::MAX`.
const fn declared_length(fields: &[u8]) -> usize {
    const NAME: &[u8] = b"Content-Length: ";
    let len = fields.len();
    if len < NAME.len() + 3 || fields[len - 2] != b'\r' || fields[len - 1] != b'\n' {
        return usize::MAX;
    }
    let mut start = len - 2;
    while start > 0 && fields[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start == len - 2 || start < NAME.len() {
        return usize::MAX;
    }
    let mut i = 0;
    while i < NAME.len() {
        if fields[start - NAME.len() + i] != NAME[i] {
            return usize::MAX;
        }
        i += 1;
    }
    let mut value = 0;
    let mut i = start;
    while i < len - 2 {
        value = value * 10 + (fields[i] - b'0') as usize;
        i += 1;
    }
    value
}

/// A request refused by the HTTP layer or a handler: the status and a short
/// reason that becomes the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The status to answer with.
    pub status: Status,
    /// One line, no trailing newline, safe to show a client.
    pub reason: &'static str,
}

impl Rejection {
    /// A rejection with its status and reason.
    pub const fn new(status: Status, reason: &'static str) -> Self {
        Rejection { status, reason }
    }
}

/// A response built as a value, for an answer written later than its
/// request was read (an asynchronous handler returns one): the status,
/// extra header fields, the content type and the body. Building one
/// allocates nothing unless a body is made at run time or the fields
/// outgrow [`INLINE_FIELD_BYTES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: Status,
    /// Extra fields, rendered: `Name: value\r\n` each.
    fields: FieldBuf,
    content_type: Cow<'static, str>,
    body: Cow<'static, [u8]>,
    /// Write a newline after the body (a rejection's reason).
    newline: bool,
    close: bool,
    /// A field given was not a valid field: written as a 500 instead.
    invalid: bool,
}

/// Bytes of header fields a [`Response`] holds without allocating: an
/// `ETag` field with any version fits.
pub const INLINE_FIELD_BYTES: usize = 54;

// A deferred answer is moved from its task to its connection several
// times; up to 128 bytes a move is a few register copies, past it a call
// to memcpy.
const _: () = assert!(std::mem::size_of::<Response>() <= 128);

/// Rendered header fields: inline while they fit, on the heap after.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldBuf {
    Inline {
        len: u8,
        bytes: [u8; INLINE_FIELD_BYTES],
    },
    Heap(Vec<u8>),
}

impl FieldBuf {
    const fn new() -> FieldBuf {
        FieldBuf::Inline {
            len: 0,
            bytes: [0; INLINE_FIELD_BYTES],
        }
    }

    fn extend(&mut self, parts: &[&[u8]]) {
        let more: usize = parts.iter().map(|p| p.len()).sum();
        match self {
            FieldBuf::Inline { len, bytes } if usize::from(*len) + more <= INLINE_FIELD_BYTES => {
                let mut at = usize::from(*len);
                for part in parts {
                    bytes[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                // At most INLINE_FIELD_BYTES, checked above.
                *len = at as u8;
            }
            FieldBuf::Inline { len, bytes } => {
                let mut heap = Vec::with_capacity(usize::from(*len) + more);
                heap.extend_from_slice(&bytes[..usize::from(*len)]);
                for part in parts {
                    heap.extend_from_slice(part);
                }
                *self = FieldBuf::Heap(heap);
            }
            FieldBuf::Heap(heap) => {
                for part in parts {
                    heap.extend_from_slice(part);
                }
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            FieldBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            FieldBuf::Heap(heap) => heap,
        }
    }
}

impl Response {
    /// `status`, no body.
    #[inline]
    pub fn new(status: Status) -> Response {
        Response {
            status,
            fields: FieldBuf::new(),
            content_type: Cow::Borrowed("text/plain; charset=utf-8"),
            body: Cow::Borrowed(b""),
            newline: false,
            close: false,
            invalid: false,
        }
    }

    /// `status` with `text` as a plain-text body (a `&'static str` is not
    /// copied).
    #[inline]
    pub fn text(status: Status, text: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status).body("text/plain; charset=utf-8", bytes_of(text.into()))
    }

    /// `status` with `json` as an `application/json` body.
    pub fn json(status: Status, json: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status).body("application/json", bytes_of(json.into()))
    }

    /// A rejection: its status, its reason and a newline as the body.
    pub fn rejection(rejection: Rejection) -> Response {
        let mut response = Response::text(rejection.status, rejection.reason);
        response.newline = true;
        response
    }

    /// Add a header field. A name that is not a token, or a value with a
    /// control character (CR and LF would split the response), makes the
    /// whole response a 500 when it is written: a handler's mistake must
    /// not reach the wire.
    #[inline]
    pub fn header(mut self, name: &str, value: &str) -> Response {
        let name_ok = !name.is_empty() && name.bytes().all(is_token_byte);
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !(name_ok && value_ok) {
            self.invalid = true;
            return self;
        }
        self.fields
            .extend(&[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
        self
    }

    /// Set the body and its content type (a `Vec<u8>` is moved, a
    /// `&'static [u8]` borrowed).
    #[inline]
    pub fn body(
        mut self,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Cow<'static, [u8]>>,
    ) -> Response {
        let content_type = content_type.into();
        if !content_type
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        {
            self.invalid = true;
        }
        self.content_type = content_type;
        self.body = body.into();
        self.newline = false;
        self
    }

    /// Close the connection after this response.
    #[inline]
    pub fn close(mut self) -> Response {
        self.close = true;
        self
    }

    /// The status it will be written with.
    pub fn status(&self) -> Status {
        if self.invalid {
            Status::InternalServerError
        } else {
            self.status
        }
    }

    /// The body's buffer, if it owns one (to keep its capacity once the
    /// response is written).
    pub fn into_owned_body(self) -> Option<Vec<u8>> {
        match self.body {
            Cow::Owned(body) => Some(body),
            Cow::Borrowed(_) => None,
        }
    }

    /// The body, as it will be written.
    pub fn body_bytes(&self) -> Cow<'_, [u8]> {
        if self.newline {
            Cow::Owned([&self.body[..], b"\n"].concat())
        } else {
            Cow::Borrowed(&self.body)
        }
    }
}

/// Text as bytes, borrowed or owned as it was.
fn bytes_of(text: Cow<'static, str>) -> Cow<'static, [u8]> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// `tchar` of RFC 9110: the bytes a field name may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `Date` header value, formatted once per second rather than per response.
pub struct DateHeader {
    value: [u8; 29],
    second: u64,
}

impl DateHeader {
    /// A header holding the current time.
    pub fn new() -> Self {
        let mut date = DateHeader {
            value: [b' '; 29],
            second: u64::MAX,
        };
        date.refresh(SystemTime::now());
        date
    }

    /// Reformat if `now` is in a later second than the cached value.
    pub fn refresh(&mut self, now: SystemTime) {
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second == self.second {
            return;
        }
        self.second = second;
        let mut cursor = &mut self.value[..];
        // An IMF-fixdate is always 29 bytes, so this never runs out of room.
        let _ = write!(cursor, "{}", httpdate::HttpDate::from(now));
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT`
    pub fn as_bytes(&self) -> &[u8; 29] {
        &self.value
    }
}

impl Default for DateHeader {
    fn default() -> Self {
        Self::new()
    }
}

/// Proof that exactly one response was written for a request, or that the
/// handler deferred it ([`ResponseWriter::defer`]). Only [`ResponseWriter`]
/// makes one.
#[must_use]
#[derive(Debug)]
pub struct Sent {
    pub(crate) status: Status,
    pub(crate) close: bool,
    /// The body's length as written (0 for HEAD and deferred answers).
    pub(crate) body_bytes: usize,
    /// Nothing was written: the answer comes later.
    pub(crate) deferred: Option<Deferred>,
}

/// How a deferred response must be written when it comes: what the request
/// decided about the connection and the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deferred {
    pub(crate) connection: ConnectionHeader,
    pub(crate) head_only: bool,
}

impl Sent {
    /// The answer was deferred: nothing is written yet.
    pub fn is_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// The status that was written.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The body's length as written.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }
}

/// Writes one response into a connection's output buffer. Consumed by the
/// write, so a handler cannot answer twice or not at all.
pub struct ResponseWriter<'a> {
    out: &'a mut Vec<u8>,
    date: &'a DateHeader,
    /// How the `Connection` header reads: `None` on an HTTP/1.1 keep-alive
    /// exchange, where it is left out.
    connection: ConnectionHeader,
    /// HEAD: headers as for GET, no body.
    head_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionHeader {
    None,
    KeepAlive,
    Close,
}

impl<'a> ResponseWriter<'a> {
    /// A writer for an HTTP/1.1 keep-alive exchange into `out`, for code
    /// that answers outside an [`HttpConnection`](super::HttpConnection)
    /// (benchmarks, tests).
    pub fn keep_alive(out: &'a mut Vec<u8>, date: &'a DateHeader) -> Self {
        Self::new(out, date, ConnectionHeader::None, false)
    }

    pub(crate) fn new(
        out: &'a mut Vec<u8>,
        date: &'a DateHeader,
        connection: ConnectionHeader,
        head_only: bool,
    ) -> Self {
        ResponseWriter {
            out,
            date,
            connection,
            head_only,
        }
    }

    /// Ask for the connection to close after this response.
    pub fn close(mut self) -> Self {
        self.connection = ConnectionHeader::Close;
        self
    }

    /// Write a complete response.
    pub fn send(self, status: Status, content_type: &str, body: &[u8]) -> Sent {
        self.send_with_headers(status, &[], content_type, body)
    }

    /// Write a complete response with extra header fields (`Allow`, `Retry-After`).
    pub fn send_with_headers(
        self,
        status: Status,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Sent {
        let out = &mut *self.out;
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        out.reserve(160 + content_type.len() + header_bytes + body.len());
        out.extend_from_slice(status.head_prefix());
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.finish(status, body)
    }

    /// Write a `304 Not Modified`: `headers` (the `ETag`), no content
    /// fields and no body.
    pub fn not_modified(self, headers: &[(&str, &str)]) -> Sent {
        let out = &mut *self.out;
        out.extend_from_slice(Status::NotModified.head_prefix());
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.finish(Status::NotModified, b"")
    }

    /// Write `response`, built as a value. 204 and 304 carry no content
    /// fields and no body; an invalid one is written as a 500.
    pub fn send_response(mut self, response: &Response) -> Sent {
        if response.invalid {
            return self.reject(Rejection::new(
                Status::InternalServerError,
                "the handler built an invalid header field",
            ));
        }
        if response.close {
            self = self.close();
        }
        let status = response.status;
        let fields = response.fields.as_bytes();
        let out = &mut *self.out;
        if matches!(status, Status::NoContent | Status::NotModified) {
            out.extend_from_slice(status.head_prefix());
            out.extend_from_slice(self.date.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(fields);
            return self.finish(status, b"");
        }
        let length = response.body.len() + usize::from(response.newline);
        out.reserve(160 + response.content_type.len() + fields.len() + length);
        out.extend_from_slice(status.head_prefix());
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(response.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(fields);
        let newline: &[u8] = if response.newline { b"\n" } else { b"" };
        self.finish_parts(status, &[&response.body, newline])
    }

    /// Write a response rendered at compile time.
    pub fn send_fixed(self, response: &FixedResponse) -> Sent {
        let out = &mut *self.out;
        out.reserve(96 + response.fields.len() + response.body.len());
        out.extend_from_slice(response.status.head_prefix());
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(response.fields);
        self.finish(response.status, response.body)
    }

    /// The `Connection` field, the end of the head, and the body.
    fn finish(self, status: Status, body: &[u8]) -> Sent {
        self.finish_parts(status, &[body])
    }

    /// [`ResponseWriter::finish`] with a body in parts.
    fn finish_parts(self, status: Status, body: &[&[u8]]) -> Sent {
        let out = self.out;
        out.extend_from_slice(match self.connection {
            ConnectionHeader::None => b"\r\n".as_slice(),
            ConnectionHeader::KeepAlive => b"Connection: keep-alive\r\n\r\n",
            ConnectionHeader::Close => b"Connection: close\r\n\r\n",
        });
        let mut body_bytes = 0;
        if !self.head_only {
            for part in body {
                out.extend_from_slice(part);
                body_bytes += part.len();
            }
        }
        Sent {
            status,
            close: self.connection == ConnectionHeader::Close,
            body_bytes,
            deferred: None,
        }
    }

    /// Answer later, when what the request waits for (a Redis reply) has
    /// come: the connection reads no further request until
    /// [`HttpConnection::complete`] writes this one's response, so answers
    /// stay in request order.
    ///
    /// [`HttpConnection::complete`]: super::HttpConnection::complete
    pub fn defer(self) -> Sent {
        Sent {
            status: Status::Accepted,
            close: false,
            body_bytes: 0,
            deferred: Some(Deferred {
                connection: self.connection,
                head_only: self.head_only,
            }),
        }
    }

    /// Write a rejection: its status, its reason as a plain-text body.
    pub fn reject(self, rejection: Rejection) -> Sent {
        self.reject_with_headers(rejection, &[])
    }

    /// Write a rejection with extra header fields.
    pub fn reject_with_headers(self, rejection: Rejection, headers: &[(&str, &str)]) -> Sent {
        let mut body = [0u8; 256];
        let len = rejection.reason.len().min(body.len() - 1);
        body[..len].copy_from_slice(&rejection.reason.as_bytes()[..len]);
        body[len] = b'\n';
        self.send_with_headers(
            rejection.status,
            headers,
            "text/plain; charset=utf-8",
            &body[..=len],
        )
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `response` as written on a keep-alive exchange, `Date` blanked.
    fn written(response: &Response) -> (Sent, String) {
        let date = DateHeader::new();
        let mut out = Vec::new();
        let sent = ResponseWriter::keep_alive(&mut out, &date).send_response(response);
        let text = String::from_utf8(out).unwrap();
        let date = std::str::from_utf8(date.as_bytes()).unwrap();
        (sent, text.replace(date, "DATE"))
    }

    #[test]
    fn responses_built_as_values_are_written_whole() {
        let (sent, text) = written(
            &Response::new(Status::Found)
                .header("Location", "https://example.com/")
                .body("text/html", b"<a>moved</a>".as_slice()),
        );
        assert_eq!(sent.status(), Status::Found);
        assert_eq!(
            text,
            "HTTP/1.1 302 Found\r\nServer: millrace\r\nDate: DATE\r\nContent-Type: text/html\r\n\
             Content-Length: 12\r\nLocation: https://example.com/\r\n\r\n<a>moved</a>"
        );
        // A rejection's reason ends with a newline, counted in the length.
        let (_, text) = written(&Response::rejection(Rejection::new(
            Status::NotFound,
            "no such key",
        )));
        assert!(
            text.ends_with("Content-Length: 12\r\n\r\nno such key\n"),
            "{text}"
        );
        // 304 and 204: no content fields, no body.
        let (_, text) = written(&Response::new(Status::NotModified).header("ETag", "\"1-0\""));
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\nServer: millrace\r\nDate: DATE\r\nETag: \"1-0\"\r\n\r\n"
        );
    }

    #[test]
    fn header_fields_outgrow_their_inline_room_and_bad_ones_become_a_500() {
        // The longest version's ETag stays inline; so does a field that
        // fills the room exactly, and one byte more spills.
        let etag = format!(
            "\"{}\"",
            "9".repeat(crate::writeback::queue::Version::MAX_TEXT_BYTES)
        );
        let inline = |r: &Response| matches!(r.fields, FieldBuf::Inline { .. });
        assert!(inline(&Response::new(Status::Ok).header("ETag", &etag)));
        let fill = "v".repeat(INLINE_FIELD_BYTES - "N: \r\n".len());
        assert!(inline(&Response::new(Status::Ok).header("N", &fill)));
        let over = Response::new(Status::Ok).header("N", &fill).header("M", "");
        assert!(!inline(&over));
        assert_eq!(written(&over).1.matches("N: v").count(), 1);

        let long = "x".repeat(INLINE_FIELD_BYTES);
        let response = Response::new(Status::Ok)
            .header("A", "1")
            .header("Long", &long)
            .header("B", "2");
        let (_, text) = written(&response);
        assert!(
            text.contains(&format!("A: 1\r\nLong: {long}\r\nB: 2\r\n")),
            "{text}"
        );
        for bad in [
            Response::new(Status::Ok).header("Location", "a\r\nSet-Cookie: x"),
            Response::new(Status::Ok).header("Bad Name", "v"),
            Response::new(Status::Ok).body("text/plain\r\nX: y", b"".as_slice()),
        ] {
            assert_eq!(bad.status(), Status::InternalServerError);
            let (sent, text) = written(&bad);
            assert_eq!(sent.status(), Status::InternalServerError);
            assert!(
                !text.contains("Set-Cookie") && !text.contains("X: y"),
                "{text}"
            );
        }
    }

    #[test]
    fn status_index_matches_all() {
        for (i, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status.index(), i);
            let line = std::str::from_utf8(status.status_line()).unwrap();
            assert!(line.starts_with(&format!("HTTP/1.1 {} ", status.code())));
            assert!(line.ends_with("\r\n"));
        }
    }

    #[test]
    fn date_is_imf_fixdate_and_cached_per_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut date = DateHeader::new();
        date.refresh(t);
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        date.refresh(t + Duration::from_millis(500));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        date.refresh(t + Duration::from_secs(1));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }

    #[test]
    fn writes_a_complete_response() {
        let mut date = DateHeader::new();
        date.refresh(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777));
        let mut out = Vec::new();
        let sent = ResponseWriter::new(&mut out, &date, ConnectionHeader::None, false).send(
            Status::Ok,
            "text/plain",
            b"Hello, World!",
        );
        assert!(!sent.close);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: millrace\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
        );
    }

    #[test]
    fn fixed_responses_match_the_general_path() {
        const HELLO: FixedResponse = FixedResponse::new(
            Status::Ok,
            b"Content-Type: text/plain\r\nContent-Length: 5\r\n",
            b"hello",
        );
        let date = DateHeader::new();
        for connection in [
            ConnectionHeader::None,
            ConnectionHeader::KeepAlive,
            ConnectionHeader::Close,
        ] {
            for head_only in [false, true] {
                let (mut fixed, mut general) = (Vec::new(), Vec::new());
                let a = ResponseWriter::new(&mut fixed, &date, connection, head_only)
                    .send_fixed(&HELLO);
                let b = ResponseWriter::new(&mut general, &date, connection, head_only).send(
                    Status::Ok,
                    "text/plain",
                    b"hello",
                );
                assert_eq!(fixed, general);
                assert_eq!((a.status, a.close), (b.status, b.close));
            }
        }
    }

    #[test]
    fn declared_length_reads_a_trailing_content_length() {
        assert_eq!(
            declared_length(b"Content-Type: x\r\nContent-Length: 13\r\n"),
            13
        );
        assert_eq!(declared_length(b"Content-Length: 0\r\n"), 0);
        assert_eq!(declared_length(b"Content-Length: 13"), usize::MAX);
        assert_eq!(declared_length(b"Content-Length: \r\n"), usize::MAX);
        assert_eq!(declared_length(b"X-Length: 13\r\n"), usize::MAX);
    }

    #[test]
    fn head_only_keeps_length_drops_body() {
        let date = DateHeader::new();
        let mut out = Vec::new();
        let sent = ResponseWriter::new(&mut out, &date, ConnectionHeader::Close, true)
            .send_with_headers(Status::Ok, &[("Allow", "GET")], "text/plain", b"abc");
        assert!(sent.close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Allow: GET\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
