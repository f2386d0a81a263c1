//! Arbitrary bytes into the PROXY protocol header reader.
//!
//! Properties: nothing panics; a complete header is no longer than the
//! bound, reads the same from exactly its own bytes, and every shorter
//! prefix of it is incomplete (so a header arriving in pieces is read the
//! same as one arriving whole); a refusal stays a refusal whatever follows;
//! an incomplete start is shorter than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::http::proxy::{Header, MAX_HEADER_BYTES, parse};

fuzz_target!(|input: &[u8]| {
    match parse(input) {
        Ok(Header::Complete { len, client }) => {
            assert!(len <= input.len() && len <= MAX_HEADER_BYTES);
            assert_eq!(parse(&input[..len]), Ok(Header::Complete { len, client }));
            for cut in 0..len {
                assert_eq!(parse(&input[..cut]), Ok(Header::Incomplete));
            }
        }
        Ok(Header::Incomplete) => assert!(input.len() < MAX_HEADER_BYTES),
        Err(_) => {
            let mut longer = input.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert!(parse(&longer).is_err());
        }
    }
});
