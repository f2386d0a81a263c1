//! Arbitrary bytes into the chunked decoder, whole and byte by byte.
//!
//! Properties: nothing panics; both ways give the same body, the same bytes
//! consumed and the same verdict; the body never exceeds its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::http::chunked::{ChunkedDecoder, ChunkedLimits};

const LIMITS: ChunkedLimits = ChunkedLimits {
    max_body_bytes: 4096,
    max_trailer_bytes: 256,
};

fuzz_target!(|input: &[u8]| {
    let mut whole_body = Vec::new();
    let whole = ChunkedDecoder::new().decode(input, &mut whole_body, &LIMITS);

    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut verdict = Ok(false);
    for byte in input {
        match decoder.decode(std::slice::from_ref(byte), &mut body, &LIMITS) {
            Err(rejection) => {
                verdict = Err(rejection);
                break;
            }
            Ok(progress) => {
                consumed += progress.consumed;
                if progress.done {
                    verdict = Ok(true);
                    break;
                }
            }
        }
    }
    match whole {
        Ok(progress) => {
            assert_eq!(verdict, Ok(progress.done));
            assert_eq!(consumed, progress.consumed);
            assert_eq!(body, whole_body);
        }
        Err(rejection) => assert_eq!(verdict, Err(rejection)),
    }
    assert!(whole_body.len() <= LIMITS.max_body_bytes);
});
