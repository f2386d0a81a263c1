//! Arbitrary bytes into the FlatBuffers ingress path (and the JSON one).
//!
//! Properties: nothing panics; whatever the verifier accepts can be read in
//! full within the limits; JSON the converter accepts becomes FlatBuffers
//! the verifier accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::payload::{BatchLimits, event_batch_from_json, verify_event_batch};

const LIMITS: BatchLimits = BatchLimits {
    max_events: 64,
    max_bytes: 8192,
};

fuzz_target!(|input: &[u8]| {
    if let Ok(batch) = verify_event_batch(input, &LIMITS) {
        let events = batch.events();
        assert!(!events.is_empty() && events.len() <= LIMITS.max_events);
        for event in events {
            let _ = (event.client_id().0, event.key().len(), event.kind(), event.timestamp_us());
            if let Some(payload) = event.payload() {
                assert!(payload.bytes().len() <= LIMITS.max_bytes);
            }
        }
    }
    if let Ok(bytes) = event_batch_from_json(input, &LIMITS) {
        verify_event_batch(&bytes, &BatchLimits::unlimited()).expect("converted JSON verifies");
    }
});
