//! The client side of HTTP/1.1, sans-IO: reading responses as they arrive,
//! for the load generator. Bodies are framed (RFC 9112 §6.3) and skipped,
//! never stored; only a head split across reads has to be kept by the caller.

use super::chunked::{ChunkedDecoder, ChunkedLimits};

/// Header fields read from one response head at most.
const MAX_RESPONSE_HEADERS: usize = 64;

/// A response the reader could not frame: the connection cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedResponse(pub &'static str);

impl std::fmt::Display for MalformedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A whole response, read to the end of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The server will close the connection after it.
    pub close: bool,
}

/// What one call to [`ResponseReader::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A response ended after `consumed` bytes of the input.
    Complete {
        /// Input bytes that belonged to it.
        consumed: usize,
        /// The response.
        response: Response,
    },
    /// `consumed` bytes were used and more are needed. In [`ResponseReader::in_head`]
    /// state nothing is consumed: the caller keeps the partial head and
    /// calls again with it and the bytes that follow.
    Partial {
        /// Input bytes used.
        consumed: usize,
    },
}

#[derive(Clone, Debug)]
enum Body {
    /// Reading a head.
    Head,
    /// A body of known length.
    Fixed { remaining: u64, response: Response },
    /// A chunked body.
    Chunked {
        decoder: ChunkedDecoder,
        response: Response,
    },
    /// A body that ends when the server closes the connection.
    UntilClose { response: Response },
}

/// One connection's response framing state.
#[derive(Clone, Debug)]
pub struct ResponseReader {
    body: Body,
    /// Largest head accepted; a longer one is malformed.
    max_head_bytes: usize,
}

/// Chunked response bodies are skipped, so only the trailer is bounded.
const SKIPPED_CHUNKED: ChunkedLimits = ChunkedLimits {
    max_body_bytes: usize::MAX,
    max_trailer_bytes: 64 * 1024,
};

impl ResponseReader {
    /// A reader expecting a response head of at most `max_head_bytes`.
    pub fn new(max_head_bytes: usize) -> Self {
        ResponseReader {
            body: Body::Head,
            max_head_bytes,
        }
    }

    /// Waiting for (the rest of) a head, which must arrive in one slice.
    pub fn in_head(&self) -> bool {
        matches!(self.body, Body::Head)
    }

    /// Read from `input`, the bytes after the last call's `consumed`.
    /// `bodiless` says the request was HEAD, so the response has no body
    /// whatever its headers say.
    pub fn read(&mut self, input: &[u8], bodiless: bool) -> Result<Step, MalformedResponse> {
        let mut consumed = 0;
        loop {
            match &mut self.body {
                Body::Head => {
                    let Some((len, head)) = self.parse_head(&input[consumed..])? else {
                        return Ok(Step::Partial { consumed });
                    };
                    consumed += len;
                    if (100..200).contains(&head.status) {
                        if head.status == 101 {
                            return Err(MalformedResponse("101 Switching Protocols is not HTTP"));
                        }
                        continue; // An interim response: the final one follows.
                    }
                    let response = Response {
                        status: head.status,
                        close: head.close,
                    };
                    self.body = if bodiless || head.status == 204 || head.status == 304 {
                        return Ok(Step::Complete { consumed, response });
                    } else if head.chunked {
                        Body::Chunked {
                            decoder: ChunkedDecoder::new(),
                            response,
                        }
                    } else if let Some(length) = head.content_length {
                        if length == 0 {
                            return Ok(Step::Complete { consumed, response });
                        }
                        Body::Fixed {
                            remaining: length,
                            response,
                        }
                    } else {
                        Body::UntilClose {
                            response: Response {
                                close: true,
                                ..response
                            },
                        }
                    };
                }
                Body::Fixed {
                    remaining,
                    response,
                } => {
                    let take = (*remaining).min((input.len() - consumed) as u64);
                    consumed += take as usize;
                    *remaining -= take;
                    if *remaining > 0 {
                        return Ok(Step::Partial { consumed });
                    }
                    let response = *response;
                    self.body = Body::Head;
                    return Ok(Step::Complete { consumed, response });
                }
                Body::Chunked { decoder, response } => {
                    let progress = decoder
                        .decode_into(&input[consumed..], &SKIPPED_CHUNKED, |_| {})
                        .map_err(|_| MalformedResponse("malformed chunked body"))?;
                    consumed += progress.consumed;
                    if !progress.done {
                        return Ok(Step::Partial { consumed });
                    }
                    let response = *response;
                    self.body = Body::Head;
                    return Ok(Step::Complete { consumed, response });
                }
                Body::UntilClose { .. } => {
                    return Ok(Step::Partial {
                        consumed: input.len(),
                    });
                }
            }
        }
    }

    /// The server closed the connection: a body that runs to the close ends
    /// here. Anything else in progress was cut short and is `None`.
    pub fn at_close(&mut self) -> Option<Response> {
        match std::mem::replace(&mut self.body, Body::Head) {
            Body::UntilClose { response } => Some(response),
            _ => None,
        }
    }

    /// Parse a head at the start of `input`; `None` if it is not all there.
    fn parse_head(&self, input: &[u8]) -> Result<Option<(usize, Head)>, MalformedResponse> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let len = match parsed.parse(input) {
            Ok(httparse::Status::Complete(len)) if len <= self.max_head_bytes => len,
            Ok(httparse::Status::Partial) if input.len() <= self.max_head_bytes => {
                return Ok(None);
            }
            Ok(_) => return Err(MalformedResponse("response head too large")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(MalformedResponse("too many response header fields"));
            }
            Err(_) => return Err(MalformedResponse("malformed response head")),
        };
        let status = parsed.code.unwrap_or(0);
        let http10 = parsed.version == Some(0);
        let mut head = Head {
            status,
            close: http10,
            chunked: false,
            content_length: None,
        };
        for field in parsed.headers.iter() {
            if field.name.eq_ignore_ascii_case("content-length") {
                let length =
                    parse_length(field.value).ok_or(MalformedResponse("invalid Content-Length"))?;
                if head.content_length.is_some_and(|seen| seen != length) {
                    return Err(MalformedResponse("conflicting Content-Length fields"));
                }
                head.content_length = Some(length);
            } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only a final `chunked` frames the body; anything else runs to the close.
                head.chunked = last_token(field.value).eq_ignore_ascii_case(b"chunked");
            } else if field.name.eq_ignore_ascii_case("connection") {
                for token in field.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        head.close = false;
                    }
                }
            }
        }
        Ok(Some((len, head)))
    }
}

/// What framing needs from a head.
struct Head {
    status: u16,
    close: bool,
    chunked: bool,
    content_length: Option<u64>,
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read every response from `input` in one call each, as the engine does.
    fn read_all(input: &[u8], bodiless: bool) -> Result<(Vec<Response>, usize), MalformedResponse> {
        let mut reader = ResponseReader::new(8192);
        let mut responses = Vec::new();
        let mut pos = 0;
        loop {
            match reader.read(&input[pos..], bodiless)? {
                Step::Complete { consumed, response } => {
                    pos += consumed;
                    responses.push(response);
                }
                Step::Partial { consumed } => return Ok((responses, pos + consumed)),
            }
        }
    }

    fn ok(status: u16) -> Response {
        Response {
            status,
            close: false,
        }
    }

    #[test]
    fn reads_pipelined_responses_of_every_framing() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        let (responses, consumed) = read_all(input, false).unwrap();
        assert_eq!(responses, [ok(200), ok(404), ok(204), ok(202)]);
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn every_split_gives_the_same_responses() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for split in 0..input.len() {
            let mut reader = ResponseReader::new(8192);
            let mut pending = Vec::new();
            let mut responses = Vec::new();
            for piece in [&input[..split], &input[split..]] {
                pending.extend_from_slice(piece);
                let mut pos = 0;
                loop {
                    match reader.read(&pending[pos..], false).unwrap() {
                        Step::Complete { consumed, response } => {
                            pos += consumed;
                            responses.push(response);
                        }
                        Step::Partial { consumed } => {
                            pos += consumed;
                            break;
                        }
                    }
                }
                pending.drain(..pos);
            }
            assert_eq!(
                responses,
                [
                    ok(200),
                    Response {
                        status: 500,
                        close: true
                    }
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn head_responses_have_no_body() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let (responses, consumed) = read_all(input, true).unwrap();
        assert_eq!(responses, [ok(200)]);
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn a_body_without_length_runs_to_the_close() {
        let mut reader = ResponseReader::new(8192);
        let step = reader
            .read(b"HTTP/1.0 200 OK\r\n\r\nsome body", false)
            .unwrap();
        assert!(matches!(step, Step::Partial { consumed: 28 }));
        assert_eq!(
            reader.at_close(),
            Some(Response {
                status: 200,
                close: true
            })
        );
        // A fixed body cut short is not a response.
        let mut reader = ResponseReader::new(8192);
        reader
            .read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false)
            .unwrap();
        assert_eq!(reader.at_close(), None);
    }

    #[test]
    fn http10_closes_unless_kept_alive() {
        let (responses, _) = read_all(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n\
HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            responses,
            [
                Response {
                    status: 200,
                    close: true
                },
                ok(200)
            ]
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        for input in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                read_all(input, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            read_all(long.as_bytes(), false),
            Err(MalformedResponse("response head too large"))
        );
    }
}
