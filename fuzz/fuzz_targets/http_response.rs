//! Arbitrary bytes into the load generator's response reader, whole and split
//! at a point the input chooses.
//!
//! Properties: nothing panics; both ways read the same responses (status and
//! close), in the same order, and agree on whether the bytes are malformed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::http::client::{Response, ResponseReader, Step};

/// Read `pieces` in turn as a connection would: a partial head is kept and
/// read again with the next piece. HEAD answers when `bodiless`.
fn read(pieces: &[&[u8]], bodiless: bool) -> (Vec<Response>, bool) {
    let mut reader = ResponseReader::new(1024);
    let mut pending = Vec::new();
    let mut responses = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            match reader.read(&pending[pos..], bodiless) {
                Err(_) => return (responses, true),
                Ok(Step::Complete { consumed, response }) => {
                    pos += consumed;
                    responses.push(response);
                }
                Ok(Step::Partial { consumed }) => {
                    pos += consumed;
                    break;
                }
            }
        }
        pending.drain(..pos);
    }
    (responses, false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, bytes)) = input.split_first() else {
        return;
    };
    let bodiless = control & 1 == 1;
    let split = usize::from(control >> 1) % (bytes.len() + 1);
    let whole = read(&[bytes], bodiless);
    let halves = read(&[&bytes[..split], &bytes[split..]], bodiless);
    assert_eq!(whole, halves);
});
