//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally: feed
//! it whatever bytes arrived, it appends the data to the body and says how much
//! it consumed. Strict where leniency lets requests be smuggled: sizes are hex
//! digits only, limited by their value (leading zeros are legal), every line
//! ends in CRLF, trailer fields are checked as header fields are.

use super::request::{is_field_value_byte, is_token_byte};
use super::response::{Rejection, Status};

/// Longest chunk size, leading zeros included, in digits.
const MAX_SIZE_DIGITS: u16 = 1024;

/// Longest chunk extension (`;name=value...`) accepted on one size line.
pub const MAX_CHUNK_EXTENSION_BYTES: usize = 4096;

/// Limits a chunked body is held to.
#[derive(Clone, Copy, Debug)]
pub struct ChunkedLimits {
    /// Largest decoded body.
    pub max_body_bytes: usize,
    /// Largest trailer section, final CRLF included.
    pub max_trailer_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex size of the next chunk.
    Size {
        size: u64,
        digits: u16,
    },
    /// After the size: whitespace, then `;` and an extension, up to CR.
    Extension {
        size: u64,
        len: usize,
        semicolon: bool,
    },
    /// After the CR that ends a size line.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart {
        total: usize,
    },
    /// Inside a trailer field's name.
    TrailerName {
        total: usize,
    },
    /// Inside a trailer field's value.
    TrailerLine {
        total: usize,
    },
    TrailerLineLf {
        total: usize,
    },
    /// After the CR of the final empty line.
    EndLf,
    Done,
}

/// Incremental decoder state for one body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    decoded: usize,
}

/// What one call to [`ChunkedDecoder::decode`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes used; the rest belongs to the next request when `done`.
    pub consumed: usize,
    /// The last chunk and the trailers have been read.
    pub done: bool,
}

const MALFORMED: Rejection = Rejection::new(Status::BadRequest, "malformed chunked body");
const MALFORMED_TRAILER: Rejection = Rejection::new(Status::BadRequest, "malformed trailer field");

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            decoded: 0,
        }
    }

    /// Decode from `input`, appending chunk data to `body`.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &ChunkedLimits,
    ) -> Result<Progress, Rejection> {
        self.decode_into(input, limits, |data| body.extend_from_slice(data))
    }

    /// Decode from `input`, handing each run of chunk data to `sink`: the
    /// load generator counts response bodies without keeping them.
    pub fn decode_into(
        &mut self,
        input: &[u8],
        limits: &ChunkedLimits,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Progress, Rejection> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                let take = remaining.min((input.len() - pos) as u64) as usize;
                sink(&input[pos..pos + take]);
                pos += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            self.state = self.step(input[pos], limits)?;
            pos += 1;
        }
        Ok(Progress {
            consumed: pos,
            done: self.state == State::Done,
        })
    }

    /// One byte of framing: sizes, CRLFs, extensions and trailers.
    fn step(&mut self, byte: u8, limits: &ChunkedLimits) -> Result<State, Rejection> {
        Ok(match self.state {
            State::Size { size, digits } => match hex_value(byte) {
                Some(value) => {
                    if size >> 60 != 0 {
                        // One more digit would not fit in 64 bits.
                        return Err(too_large());
                    }
                    if digits == MAX_SIZE_DIGITS {
                        return Err(Rejection::new(Status::BadRequest, "chunk size too long"));
                    }
                    State::Size {
                        size: size << 4 | u64::from(value),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(MALFORMED),
                None => self.end_of_size(size, byte, 0, false, limits)?,
            },
            State::Extension {
                size,
                len,
                semicolon,
            } => self.end_of_size(size, byte, len, semicolon, limits)?,
            State::SizeLf { size } => {
                if byte != b'\n' {
                    return Err(MALFORMED);
                }
                if size == 0 {
                    State::TrailerStart { total: 0 }
                } else {
                    State::Data { remaining: size }
                }
            }
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size { size: 0, digits: 0 },
            // Trailer fields as header fields: a token name, a colon, a
            // value of field bytes; no obs-fold (a line starting with
            // whitespace), no control bytes.
            State::TrailerStart { total } => {
                let total = trailer_byte(total, limits)?;
                match byte {
                    b'\r' => State::EndLf,
                    _ if is_token_byte(byte) => State::TrailerName { total },
                    _ => return Err(MALFORMED_TRAILER),
                }
            }
            State::TrailerName { total } => {
                let total = trailer_byte(total, limits)?;
                match byte {
                    b':' => State::TrailerLine { total },
                    _ if is_token_byte(byte) => State::TrailerName { total },
                    _ => return Err(MALFORMED_TRAILER),
                }
            }
            State::TrailerLine { total } => {
                let total = trailer_byte(total, limits)?;
                match byte {
                    b'\r' => State::TrailerLineLf { total },
                    _ if is_field_value_byte(byte) => State::TrailerLine { total },
                    _ => return Err(MALFORMED_TRAILER),
                }
            }
            State::TrailerLineLf { total } if byte == b'\n' => State::TrailerStart {
                total: trailer_byte(total, limits)?,
            },
            State::EndLf if byte == b'\n' => State::Done,
            _ => return Err(MALFORMED),
        })
    }

    /// After the size digits: optional whitespace, then `;` and an
    /// extension, then CR. Nothing else may follow the size, so a line such as
    /// `5 6` is refused rather than read one way here and another upstream.
    fn end_of_size(
        &mut self,
        size: u64,
        byte: u8,
        len: usize,
        semicolon: bool,
        limits: &ChunkedLimits,
    ) -> Result<State, Rejection> {
        let semicolon = match byte {
            b'\r' => {
                self.decoded = usize::try_from(size)
                    .ok()
                    .and_then(|size| self.decoded.checked_add(size))
                    .filter(|&n| n <= limits.max_body_bytes)
                    .ok_or_else(too_large)?;
                return Ok(State::SizeLf { size });
            }
            b';' => true,
            b' ' | b'\t' => semicolon,
            // Extensions are ignored; any visible byte may stand in one.
            0x21..=0x7e | 0x80..=0xff if semicolon => true,
            _ => return Err(MALFORMED),
        };
        if len >= MAX_CHUNK_EXTENSION_BYTES {
            return Err(Rejection::new(
                Status::BadRequest,
                "chunk extension too long",
            ));
        }
        Ok(State::Extension {
            size,
            len: len + 1,
            semicolon,
        })
    }
}

fn too_large() -> Rejection {
    Rejection::new(Status::PayloadTooLarge, "body larger than max_body_bytes")
}

fn trailer_byte(total: usize, limits: &ChunkedLimits) -> Result<usize, Rejection> {
    if total >= limits.max_trailer_bytes {
        return Err(Rejection::new(
            Status::HeaderFieldsTooLarge,
            "trailer section too large",
        ));
    }
    Ok(total + 1)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ChunkedLimits = ChunkedLimits {
        max_body_bytes: 64,
        max_trailer_bytes: 32,
    };

    /// Decode all of `input` in one call.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Progress), Rejection> {
        let mut body = Vec::new();
        let progress = ChunkedDecoder::new().decode(input, &mut body, &LIMITS)?;
        Ok((body, progress))
    }

    #[test]
    fn decodes_valid_bodies_whole_and_byte_by_byte() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5 ;x\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"0005\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", b"hello"),
            // Leading zeros past sixteen digits: the value decides.
            (b"000000000000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"0\r\nA:\r\nB: x\ty\r\n\r\n", b""),
        ];
        for (input, expected) in cases {
            let text = String::from_utf8_lossy(input);
            let (body, progress) = decode_all(input).unwrap();
            assert_eq!(body, *expected, "{text}");
            assert_eq!(
                progress,
                Progress {
                    consumed: input.len(),
                    done: true
                },
                "{text}"
            );

            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            for (i, byte) in input.iter().enumerate() {
                let progress = decoder
                    .decode(std::slice::from_ref(byte), &mut body, &LIMITS)
                    .unwrap();
                assert_eq!(progress.consumed, 1, "{text} at {i}");
                assert_eq!(progress.done, i + 1 == input.len(), "{text} at {i}");
            }
            assert_eq!(body, *expected, "{text} byte by byte");
        }
    }

    #[test]
    fn sizes_are_limited_by_value_and_trailers_checked_as_fields() {
        // 2^64 and above, however written: too large, not wrapped.
        assert_eq!(
            decode_all(b"10000000000000000\r\n").unwrap_err().status,
            Status::PayloadTooLarge
        );
        assert_eq!(
            decode_all(b"000010000000000000000\r\n").unwrap_err().status,
            Status::PayloadTooLarge
        );
        for bad in [
            &b"0\r\nX: a\0b\r\n\r\n"[..],
            b"0\r\nXa\r\n\r\n",
            b"0\r\n: a\r\n\r\n",
            b"0\r\nX: a\r\n b\r\n\r\n",
            b"0\r\n\tX: a\r\n\r\n",
            b"0\r\nX y: a\r\n\r\n",
            b"0\r\nX: a\x7f\r\n\r\n",
        ] {
            assert_eq!(
                decode_all(bad).unwrap_err(),
                MALFORMED_TRAILER,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (body, progress) = decode_all(input).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(
            progress,
            Progress {
                consumed: 13,
                done: true
            }
        );
    }

    #[test]
    fn rejects_malformed_and_oversized_bodies() {
        use Status::{BadRequest, HeaderFieldsTooLarge, PayloadTooLarge};
        let cases: &[(&[u8], Status)] = &[
            (b"\r\n", BadRequest),
            (b"x\r\n", BadRequest),
            (b"0x5\r\nhello\r\n0\r\n\r\n", BadRequest),
            (b"+5\r\nhello\r\n0\r\n\r\n", BadRequest),
            (b"5\nhello\r\n0\r\n\r\n", BadRequest),
            (b"5\r\nhelloXX0\r\n\r\n", BadRequest),
            (b"5\r\nhello\n0\r\n\r\n", BadRequest),
            (b"0\r\n\n", BadRequest),
            (b"0\r\nX: 1\n\r\n", BadRequest),
            (b"5\x01\r\nhello\r\n0\r\n\r\n", BadRequest),
            (b"5 6\r\nhello\r\n0\r\n\r\n", BadRequest),
            (b"41\r\n", PayloadTooLarge),
            (b"11111111111111111\r\n", PayloadTooLarge),
            (b"ffffffffffffffff\r\n", PayloadTooLarge),
            (
                b"0\r\nX-Long-Trailer: 0123456789012345678901234\r\n\r\n",
                HeaderFieldsTooLarge,
            ),
        ];
        for (input, expected) in cases {
            let text = String::from_utf8_lossy(input);
            match decode_all(input) {
                Err(rejection) => assert_eq!(rejection.status, *expected, "{text}"),
                Ok((_, progress)) => {
                    // Only a prefix of a valid body: must not claim to be done.
                    assert!(!progress.done, "{text} should not complete");
                    assert_eq!(*expected, BadRequest, "{text}");
                }
            }
        }
    }

    #[test]
    fn total_size_is_limited_across_chunks() {
        let mut input = Vec::new();
        for _ in 0..5 {
            input.extend_from_slice(b"10\r\n0123456789abcdef\r\n");
        }
        let rejection = decode_all(&input).unwrap_err();
        assert_eq!(rejection.status, Status::PayloadTooLarge);
    }

    #[test]
    fn long_extensions_are_rejected() {
        let mut input = b"1;".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXTENSION_BYTES));
        input.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&input).unwrap_err().status, Status::BadRequest);
    }
}
