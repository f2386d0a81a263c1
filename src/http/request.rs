//! Request heads: the request line and header section, parsed in one pass
//! over the received bytes and held to the framing rules that keep requests from being smuggled
//! (RFC 9112 §6): one body length or chunked, never both, never ambiguous.

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
    /// The method's token, as a request line carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
        }
    }

    fn parse(token: &[u8]) -> Option<Method> {
        Some(match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
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
    /// Which field names the head may hold.
    pub names: FieldNames,
}

/// A filter over a head's field names (one bit per name's length and first
/// and last letters, any case), so that looking up a field the head does
/// not have, the common case for optional ones, reads none of its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldNames(u64);

impl FieldNames {
    fn bit(name: &[u8]) -> u64 {
        let (Some(first), Some(last)) = (name.first(), name.last()) else {
            return 0;
        };
        let mix = name.len() * 5
            + usize::from(first.to_ascii_lowercase()) * 3
            + usize::from(last.to_ascii_lowercase());
        1 << (mix % 64)
    }

    fn add(&mut self, name: &[u8]) {
        self.0 |= FieldNames::bit(name);
    }

    /// False only if no field called `name` (any case) is in the head.
    pub fn may_hold(self, name: &[u8]) -> bool {
        self.0 & FieldNames::bit(name) != 0
    }
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
///
/// One pass over the bytes. Each part is parsed inside the window its size
/// limit allows, so a limit is reported only when the bytes inside it were
/// valid so far, and a syntax error only when it comes before the limit: the
/// answer depends on the bytes, never on how they were split into reads.
/// Errors about what valid fields say (an unknown method, conflicting
/// lengths) wait for the complete head, so a syntax error anywhere in it
/// decides first.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, Rejection> {
    let line_window = &buf[..buf.len().min(limits.max_request_line_bytes)];
    let Some(line) = request_line(line_window)? else {
        return if buf.len() > line_window.len() {
            Err(URI_TOO_LONG)
        } else {
            Ok(None)
        };
    };
    let fields_end = buf
        .len()
        .min(line.end.saturating_add(limits.max_header_bytes));
    let fields_window = &buf[line.end..fields_end];
    let max_headers = limits.max_headers.min(MAX_HEADERS_LIMIT);
    let Some((fields, fields_len)) = header_section(fields_window, max_headers, line.version)?
    else {
        return if buf.len() > fields_end {
            Err(HEADERS_TOO_LARGE)
        } else {
            Ok(None)
        };
    };
    let method = line
        .method
        .ok_or(Rejection::new(Status::NotImplemented, "unknown method"))?;
    let fields = fields.finish()?;
    let target = line.target.clone();
    let (path, query) = match (buf[target.start], line.query_mark) {
        (b'/', Some(q)) => (target.start..q, Some(q + 1..target.end)),
        (b'/', None) => (target, None),
        _ => split_other_target(&buf[target.clone()], target.start, method)?,
    };
    Ok(Some(RequestHead {
        method,
        version: line.version,
        path,
        query,
        len: line.end + fields_len,
        framing: fields.framing,
        keep_alive: fields.keep_alive,
        expect_continue: fields.expect_continue,
        names: fields.names,
    }))
}

const URI_TOO_LONG: Rejection = Rejection::new(Status::UriTooLong, "request line too long");
const HEADERS_TOO_LARGE: Rejection =
    Rejection::new(Status::HeaderFieldsTooLarge, "header section too large");
const TOO_MANY_HEADERS: Rejection =
    Rejection::new(Status::HeaderFieldsTooLarge, "too many header fields");
const MALFORMED_REQUEST_LINE: Rejection =
    Rejection::new(Status::BadRequest, "malformed request line");
const VERSION_NOT_SUPPORTED: Rejection = Rejection::new(
    Status::VersionNotSupported,
    "only HTTP/1.0 and HTTP/1.1 are supported",
);
const MALFORMED_HEADER_NAME: Rejection = Rejection::new(
    Status::BadRequest,
    "malformed header name (obs-fold is not accepted)",
);
const MALFORMED_HEADER_VALUE: Rejection =
    Rejection::new(Status::BadRequest, "malformed header value");
/// RFC 9112 §2.2 lets a server accept a lone LF as a line ending; millrace
/// does not, because a proxy that disagrees about line ends can be used to
/// smuggle requests.
const BARE_LF: Rejection = Rejection::new(Status::BadRequest, "line ends in a bare LF, not CRLF");
const BARE_CR: Rejection = Rejection::new(Status::BadRequest, "malformed line ending");

/// What a byte may be, by position in a head.
const TCHAR: u8 = 1;
const TARGET: u8 = 2;
const FIELD_VALUE: u8 = 4;
const PATH: u8 = 8;

/// [`TCHAR`]: a token byte (RFC 9110 §5.6.2), as methods and field names
/// are. [`TARGET`]: a visible ASCII byte, as a request target is.
/// [`PATH`]: a target byte other than `?`, so one scan finds the query.
/// [`FIELD_VALUE`]: a field value byte (RFC 9110 §5.5): tab, space, visible
/// ASCII and obs-text.
const BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        let visible = byte >= 0x21 && byte <= 0x7e;
        let delimiter = matches!(
            byte,
            b'"' | b'('
                | b')'
                | b','
                | b'/'
                | b':'
                | b';'
                | b'<'
                | b'='
                | b'>'
                | b'?'
                | b'@'
                | b'['
                | b'\\'
                | b']'
                | b'{'
                | b'}'
        );
        let mut class = 0;
        if visible && !delimiter {
            class |= TCHAR;
        }
        // `#` starts a fragment, which a request target never carries
        // (RFC 9112 §3.2): it ends the target's scan, and the request line.
        if visible && byte != b'#' {
            class |= TARGET;
        }
        if visible && byte != b'?' && byte != b'#' {
            class |= PATH;
        }
        if visible || byte == b' ' || byte == b'\t' || byte >= 0x80 {
            class |= FIELD_VALUE;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// A token byte (RFC 9110 §5.6.2), as field names are made of.
pub(super) fn is_token_byte(b: u8) -> bool {
    BYTE_CLASS[usize::from(b)] & TCHAR != 0
}

/// A field value byte (RFC 9110 §5.5): tab, space, visible ASCII, obs-text.
pub(super) fn is_field_value_byte(b: u8) -> bool {
    BYTE_CLASS[usize::from(b)] & FIELD_VALUE != 0
}

/// The first position at or after `from` whose byte is not of `class`
/// (`buf.len()` if there is none).
fn skip(buf: &[u8], from: usize, class: u8) -> usize {
    let mut at = from;
    if class == TCHAR {
        // Tokens are short (methods, field names), so a loop that tests a
        // byte at a time exits at a different count each time and the exit
        // is mispredicted: classify eight bytes with one branch.
        while let Some(chunk) = buf.get(at..at + 8) {
            let outside = chunk.iter().enumerate().fold(0u32, |mask, (i, &b)| {
                mask | u32::from(BYTE_CLASS[usize::from(b)] & TCHAR == 0) << i
            });
            if outside != 0 {
                return at + outside.trailing_zeros() as usize;
            }
            at += 8;
        }
    } else {
        // Targets and values run long (paths, user agents, cookies): look at
        // eight bytes at a time and jump to the first that may end the run.
        while let Some(chunk) = buf.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let stops = may_stop(word, class);
            if stops == 0 {
                at += 8;
                continue;
            }
            // The lowest flagged byte is exact: it ends the run, unless it
            // is a tab inside a value.
            at += (stops.trailing_zeros() / 8) as usize;
            if buf[at] != b'\t' || class != FIELD_VALUE {
                return at;
            }
            at += 1;
        }
    }
    // Fewer than eight bytes left: one at a time.
    while let Some(&b) = buf.get(at) {
        if BYTE_CLASS[usize::from(b)] & class == 0 {
            return at;
        }
        at += 1;
    }
    at
}

/// A mask with the high bit set in each byte of `word` that may end a run
/// of `class` ([`TARGET`] or [`FIELD_VALUE`]); the lowest set byte is exact,
/// those above it may be false (the byte-wise tricks of "Bit Twiddling
/// Hacks", which borrow and carry only upwards). A value's tab is flagged
/// too, for the caller to look at.
fn may_stop(word: u64, class: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |n: u64| word.wrapping_sub(ONES * n) & !word;
    if class == TARGET || class == PATH {
        // Not in 0x21..=0x7e, nor `#`; for a path also `?`.
        let above_0x7e = word.wrapping_add(ONES) | word;
        let is = |b: u8| {
            let x = word ^ (ONES * u64::from(b));
            x.wrapping_sub(ONES) & !x
        };
        let question = if class == PATH { is(b'?') } else { 0 };
        (below(0x21) | above_0x7e | is(b'#') | question) & HIGHS
    } else {
        // A control byte: below 0x20, or 0x7f.
        let del = word ^ (ONES * 0x7f);
        let is_del = del.wrapping_sub(ONES) & !del;
        (below(0x20) | is_del) & HIGHS
    }
}

/// A CRLF at `at`: `Ok(Some(())` if it is there, `Ok(None)` if the bytes
/// end first, the rejection for a bare LF or a CR not followed by LF.
fn crlf(buf: &[u8], at: usize) -> Result<Option<()>, Rejection> {
    match (buf.get(at), buf.get(at + 1)) {
        (Some(b'\r'), Some(b'\n')) => Ok(Some(())),
        (Some(b'\r'), None) | (None, _) => Ok(None),
        (Some(b'\n'), _) => Err(BARE_LF),
        _ => Err(BARE_CR),
    }
}

/// The versions as the eight bytes of a request line, read as one word.
const HTTP_11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
const HTTP_10: u64 = u64::from_le_bytes(*b"HTTP/1.0");

/// A parsed request line.
struct RequestLine {
    /// `None` for a well-formed method millrace does not know.
    method: Option<Method>,
    target: Range<usize>,
    /// Where the first `?` in the target is, if any.
    query_mark: Option<usize>,
    version: Version,
    /// Where the line (and the empty lines before it) ends.
    end: usize,
}

/// The request line at the start of `buf`, after any empty lines (RFC 9112
/// §2.2), or `None` while it is incomplete.
fn request_line(buf: &[u8]) -> Result<Option<RequestLine>, Rejection> {
    let mut start = 0;
    while matches!(buf.get(start), Some(b'\r' | b'\n')) {
        if crlf(buf, start)?.is_none() {
            return Ok(None);
        }
        start += 2;
    }
    // The common methods without a scan and a name match.
    let (method, method_end) = match buf.get(start..start + 5) {
        Some([b'G', b'E', b'T', b' ', _]) => (Some(Method::Get), start + 3),
        Some([b'P', b'U', b'T', b' ', _]) => (Some(Method::Put), start + 3),
        Some([b'P', b'O', b'S', b'T', b' ']) => (Some(Method::Post), start + 4),
        _ => {
            let end = skip(buf, start, TCHAR);
            match buf.get(end) {
                None => return Ok(None),
                Some(b' ') if end > start => {}
                Some(_) => return Err(MALFORMED_REQUEST_LINE),
            }
            (Method::parse(&buf[start..end]), end)
        }
    };
    let target_start = method_end + 1;
    let path_end = skip(buf, target_start, PATH);
    let (query_mark, target_end) = match buf.get(path_end) {
        Some(b'?') => (Some(path_end), skip(buf, path_end + 1, TARGET)),
        _ => (None, path_end),
    };
    match buf.get(target_end) {
        None => return Ok(None),
        Some(b' ') if target_end > target_start => {}
        Some(b'#') => {
            return Err(Rejection::new(
                Status::BadRequest,
                "a fragment (#) in the request target",
            ));
        }
        Some(_) => return Err(MALFORMED_REQUEST_LINE),
    }
    let version_start = target_end + 1;
    let version = match buf.get(version_start..version_start + 8) {
        Some(seen) => match u64::from_le_bytes(seen.try_into().expect("eight bytes")) {
            HTTP_11 => Version::Http11,
            HTTP_10 => Version::Http10,
            _ => return Err(VERSION_NOT_SUPPORTED),
        },
        None => {
            let seen = &buf[version_start..];
            return if b"HTTP/1.1".starts_with(seen) || b"HTTP/1.0".starts_with(seen) {
                Ok(None)
            } else {
                Err(VERSION_NOT_SUPPORTED)
            };
        }
    };
    let line_end = version_start + 8;
    match buf.get(line_end) {
        None => return Ok(None),
        Some(b'\r' | b'\n') => {}
        Some(_) => return Err(MALFORMED_REQUEST_LINE),
    }
    if crlf(buf, line_end)?.is_none() {
        return Ok(None);
    }
    Ok(Some(RequestLine {
        method,
        target: target_start..target_end,
        query_mark,
        version,
        end: line_end + 2,
    }))
}

/// The header fields at the start of `buf`, up to and including the empty
/// line that ends them: what they say and the section's length, or `None`
/// while incomplete.
fn header_section(
    buf: &[u8],
    max_headers: usize,
    version: Version,
) -> Result<Option<(FieldSummary, usize)>, Rejection> {
    let mut fields = FieldSummary::new(version);
    let mut at = 0;
    let mut count = 0;
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => {
                return Ok(crlf(buf, at)?.map(|()| (fields, at + 2)));
            }
            Some(_) => {}
        }
        // A line that starts with whitespace (obs-fold, RFC 9112 §5.2) has
        // an empty name here, and is rejected with the malformed ones.
        let name_end = skip(buf, at, TCHAR);
        match buf.get(name_end) {
            None => return Ok(None),
            Some(b':') if name_end > at => {}
            Some(_) => return Err(MALFORMED_HEADER_NAME),
        }
        let value_end = skip(buf, name_end + 1, FIELD_VALUE);
        match buf.get(value_end) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => {}
            Some(_) => return Err(MALFORMED_HEADER_VALUE),
        }
        if crlf(buf, value_end)?.is_none() {
            return Ok(None);
        }
        count += 1;
        if count > max_headers {
            return Err(TOO_MANY_HEADERS);
        }
        fields.add(
            &buf[at..name_end],
            buf[name_end + 1..value_end].trim_ascii(),
        );
        at = value_end + 2;
    }
}

/// A request target's path and query. Targets come in origin form
/// (`/path?query`), absolute form (`http://host/path`), which a server must
/// accept, and `*` for OPTIONS.
type Target = (Range<usize>, Option<Range<usize>>);

/// A target not in origin form (`/path?query`, split as the request line is
/// read): `*` for OPTIONS, or absolute form. Rare, so out of the hot path.
#[cold]
fn split_other_target(target: &[u8], start: usize, method: Method) -> Result<Target, Rejection> {
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
    if after_scheme[..authority].contains(&b'@') {
        // RFC 9110 §4.2.4: user-info in an http(s) URI is not to be sent.
        return Err(Rejection::new(
            Status::BadRequest,
            "user-info in the request target",
        ));
    }
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
    Authorization,
}

impl Field {
    /// The field `name` is, if one of these. Their lengths differ, so one
    /// comparison decides. A header name is a token (the parser checked), and
    /// for token bytes `b | 0x20` equals a lowercase letter or `-` only if `b`
    /// is that letter in either case or `-` itself: a case-insensitive match
    /// without case-folding both sides.
    fn named(name: &[u8]) -> Option<Field> {
        let (field, lower): (Field, &[u8]) = match name.len() {
            4 => (Field::Host, b"host"),
            6 => (Field::Expect, b"expect"),
            10 => (Field::Connection, b"connection"),
            13 => (Field::Authorization, b"authorization"),
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

/// What the header fields say about framing and the connection, gathered
/// one field at a time as the head is parsed.
struct FieldSummary {
    version: Version,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    hosts: u32,
    authorizations: u32,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    names: FieldNames,
    /// The first field that breaks the framing rules, reported once the
    /// head is complete.
    error: Option<Rejection>,
}

/// The framing and connection facts a complete, valid head states.
struct Fields {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    names: FieldNames,
}

impl FieldSummary {
    fn new(version: Version) -> Self {
        FieldSummary {
            version,
            content_length: None,
            chunked: false,
            transfer_encoding: false,
            hosts: 0,
            authorizations: 0,
            close: false,
            keep_alive: false,
            expect_continue: false,
            names: FieldNames::default(),
            error: None,
        }
    }

    /// Take one field; `value` is already trimmed.
    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.names.add(name);
        if self.error.is_none()
            && let Some(field) = Field::named(name)
            && let Err(rejection) = self.add_field(field, value)
        {
            self.error = Some(rejection);
        }
    }

    fn add_field(&mut self, field: Field, value: &[u8]) -> Result<(), Rejection> {
        match field {
            Field::ContentLength => {
                let length = parse_content_length(value)?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(Rejection::new(
                        Status::BadRequest,
                        "conflicting Content-Length values",
                    ));
                }
                self.content_length = Some(length);
            }
            Field::TransferEncoding => {
                self.transfer_encoding = true;
                for coding in tokens(value) {
                    // Chunked must be the last coding, and millrace decodes no other.
                    if self.chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(Rejection::new(
                            Status::NotImplemented,
                            "only Transfer-Encoding: chunked is supported",
                        ));
                    }
                    self.chunked = true;
                }
            }
            Field::Host => {
                // RFC 9110 §7.2, 4.2.3: a host and an optional port; a space,
                // a path or user-info is no authority a server should route by.
                if value
                    .iter()
                    .any(|&b| matches!(b, b' ' | b'\t' | b'/' | b'@'))
                {
                    return Err(Rejection::new(Status::BadRequest, "malformed Host"));
                }
                self.hosts += 1;
            }
            Field::Authorization => self.authorizations += 1,
            Field::Connection => {
                for option in tokens(value) {
                    self.close |= option.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
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
                self.expect_continue = self.version == Version::Http11;
            }
        }
        Ok(())
    }

    /// The head is complete: what its fields say, or why they are refused.
    fn finish(self) -> Result<Fields, Rejection> {
        if let Some(rejection) = self.error {
            return Err(rejection);
        }
        if self.transfer_encoding && !self.chunked {
            // Empty or commas only: no coding named. Read as no body, the
            // body would be read as the next request.
            return Err(Rejection::new(
                Status::BadRequest,
                "Transfer-Encoding names no coding",
            ));
        }
        if self.authorizations > 1 {
            return Err(Rejection::new(
                Status::BadRequest,
                "more than one Authorization field",
            ));
        }
        if self.transfer_encoding && self.content_length.is_some() {
            return Err(Rejection::new(
                Status::BadRequest,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if self.transfer_encoding && self.version == Version::Http10 {
            return Err(Rejection::new(
                Status::BadRequest,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if self.hosts > 1 || (self.hosts == 0 && self.version == Version::Http11) {
            return Err(Rejection::new(
                Status::BadRequest,
                "an HTTP/1.1 request needs exactly one Host",
            ));
        }
        let framing = match (self.chunked, self.content_length) {
            (true, _) => BodyFraming::Chunked,
            (false, Some(0) | None) => BodyFraming::None,
            (false, Some(n)) => BodyFraming::Length(n),
        };
        let keep_alive = match self.version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        };
        Ok(Fields {
            framing,
            keep_alive,
            expect_continue: self.expect_continue,
            names: self.names,
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
    fn the_field_name_filter_holds_every_name_the_head_has() {
        let head = parse(b"GET / HTTP/1.1\r\nHost: h\r\ncontent-TYPE: t\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        for name in ["host", "HOST", "Content-Type", "content-type", "x-a", "X-A"] {
            assert!(head.names.may_hold(name.as_bytes()), "{name}");
        }
        // Absent names the request path looks up, told apart without a scan.
        for name in ["if-none-match", "if-match", "authorization", ""] {
            assert!(!head.names.may_hold(name.as_bytes()), "{name}");
        }
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
    fn word_at_a_time_scans_agree_with_byte_scans() {
        for class in [TARGET, FIELD_VALUE] {
            for byte in 0..=255u8 {
                for position in 0..8 {
                    let mut bytes = *b"abcdefgh";
                    bytes[position] = byte;
                    let stops = may_stop(u64::from_le_bytes(bytes), class);
                    let stop = BYTE_CLASS[usize::from(byte)] & class == 0 || byte == b'\t';
                    let first = (stops != 0).then(|| stops.trailing_zeros() as usize / 8);
                    assert_eq!(first, stop.then_some(position), "{byte:#04x} at {position}");
                }
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            let buf: Vec<u8> = (0..40)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly printable, sometimes anything.
                    if seed % 8 == 0 {
                        seed as u8
                    } else {
                        0x20 + (seed % 0x60) as u8
                    }
                })
                .collect();
            for class in [TCHAR, TARGET, FIELD_VALUE] {
                let from = (seed % 8) as usize;
                let expected = buf[from..]
                    .iter()
                    .position(|&b| BYTE_CLASS[usize::from(b)] & class == 0)
                    .map_or(buf.len(), |n| from + n);
                assert_eq!(skip(&buf, from, class), expected, "{buf:?} from {from}");
            }
        }
    }

    #[test]
    fn byte_classes_follow_the_rfc() {
        for b in 0..=255u8 {
            let class = BYTE_CLASS[usize::from(b)];
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(class & TCHAR != 0, tchar, "{b:#04x}");
            // `#` (a fragment) ends a target.
            assert_eq!(
                class & TARGET != 0,
                b.is_ascii_graphic() && b != b'#',
                "{b:#04x}"
            );
            let value = b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80;
            assert_eq!(class & FIELD_VALUE != 0, value, "{b:#04x}");
        }
    }

    #[test]
    fn options_star() {
        let bytes = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = parse(bytes).unwrap().unwrap();
        assert_eq!(&bytes[head.path], b"*");
    }

    /// `skip`'s word-at-a-time paths agree with the plain definition, for
    /// every class, start and length, on bytes drawn to hit every stop.
    #[test]
    fn skip_matches_a_byte_at_a_time_scan() {
        let alphabet = b"aZ09-/?:\t \r\n\x00\x7f\x80\xff\"=~.";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    // Mostly run bytes, so runs cross word boundaries.
                    let pick = next() as usize;
                    alphabet[if pick % 4 == 0 {
                        pick / 4 % alphabet.len()
                    } else {
                        0
                    }]
                })
                .collect();
            let from = if len == 0 { 0 } else { next() as usize % len };
            for class in [TCHAR, TARGET, PATH, FIELD_VALUE] {
                let expected = (from..len)
                    .find(|&at| BYTE_CLASS[usize::from(buf[at])] & class == 0)
                    .unwrap_or(len);
                assert_eq!(
                    skip(&buf, from, class),
                    expected,
                    "{buf:?} from {from} class {class}"
                );
            }
        }
    }
}
