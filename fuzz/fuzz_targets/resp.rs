//! Arbitrary bytes into the RESP decoder, as a Redis connection's receive
//! buffer holds them, in both protocols.
//!
//! Properties: nothing panics; a reply decoded from the whole input decodes
//! the same from exactly its own bytes; every shorter prefix of it is
//! incomplete or an error, never a different reply; replies decode one after
//! another to the end or to the first incomplete or bad one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::redis::resp::{Protocol, decode};

/// The characters of a reply's debug text, sorted: equal for the same
/// entries in any order (a weak but order-free comparison).
fn canonical(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars
}

fuzz_target!(|input: &[u8]| {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let mut rest = input;
        // At most a few replies per input: each step is checked against its prefixes.
        for _ in 0..8 {
            let Ok(Some((reply, len))) = decode(protocol, rest) else {
                break;
            };
            assert!(len > 0 && len <= rest.len(), "{len} of {}", rest.len());
            let again = decode(protocol, &rest[..len]).expect("its own bytes decode");
            let (again, again_len) = again.expect("its own bytes are a whole reply");
            assert_eq!(again_len, len);
            // RESP3 maps and sets come through redis-protocol's hash maps, in
            // no fixed order; compare their entries as a sorted list.
            assert_eq!(canonical(&format!("{again:?}")), canonical(&format!("{reply:?}")));
            for cut in (0..len).step_by((len / 16).max(1)) {
                if let Ok(Some((_, shorter))) = decode(protocol, &rest[..cut]) {
                    panic!("a prefix of {cut} bytes decoded as a reply of {shorter} bytes; the whole took {len}");
                }
            }
            rest = &rest[len..];
        }
    }
});
