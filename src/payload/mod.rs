//! API payloads: FlatBuffers from `schemas/millrace.fbs`, and the JSON
//! accepted for the same bodies (slower, and converted to FlatBuffers at
//! the door, so the queue and the database core see one format).
//!
//! Incoming bytes are untrusted: a buffer is verified, with limits on depth,
//! table count and size, before any field is read.

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    mismatched_lifetime_syntaxes
)]
#[rustfmt::skip]
mod millrace_generated;

use flatbuffers::{FlatBufferBuilder, VerifierOptions};

pub use millrace_generated::millrace::v_1 as schema;

/// The `Content-Type` of a FlatBuffers body.
pub const CONTENT_TYPE: &str = "application/x-flatbuffers";

/// What an `EventBatch` may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Events in one batch at most.
    pub max_events: usize,
    /// Bytes in one body at most.
    pub max_bytes: usize,
}

impl BatchLimits {
    /// No limit worth the name: for buffers already verified at the door
    /// and read back from the queue.
    pub fn unlimited() -> Self {
        BatchLimits {
            max_events: 1 << 24,
            max_bytes: 1 << 30,
        }
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_events: 10_000,
            max_bytes: 1024 * 1024,
        }
    }
}

/// One event, owned: what JSON decodes to and tests build batches from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The client's 16-byte id.
    pub client_id: [u8; 16],
    /// The key it is about.
    pub key: String,
    /// What kind of event.
    pub kind: i32,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// Opaque bytes.
    pub payload: Vec<u8>,
}

/// Why a body was refused: a sentence for the 400 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Verify `bytes` as an `EventBatch` within `limits`, and check what the
/// schema cannot say: 1 to `max_events` events.
pub fn verify_event_batch<'a>(
    bytes: &'a [u8],
    limits: &BatchLimits,
) -> Result<schema::EventBatch<'a>, Invalid> {
    if bytes.len() > limits.max_bytes {
        return Err(Invalid(format!(
            "the batch is {} bytes; at most {} are accepted",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let options = VerifierOptions {
        max_depth: 8,
        // The batch, its vector of events and each event table.
        max_tables: limits.max_events.saturating_mul(2) + 8,
        max_apparent_size: limits.max_bytes,
        ignore_missing_null_terminator: false,
    };
    let batch = flatbuffers::root_with_opts::<schema::EventBatch>(&options, bytes)
        .map_err(|e| Invalid(format!("not a valid EventBatch: {e}")))?;
    let count = batch.events().len();
    if count == 0 || count > limits.max_events {
        return Err(Invalid(format!(
            "a batch holds 1 to {} events; this one holds {count}",
            limits.max_events
        )));
    }
    Ok(batch)
}

/// The JSON form of a batch, `{"events": [{"client_id": "<32 hex digits>",
/// "key": "...", "kind": 1, "timestamp_us": 0, "payload": "..."}]}`
/// (`payload` is text; its UTF-8 bytes are the payload), as FlatBuffers.
pub fn event_batch_from_json(bytes: &[u8], limits: &BatchLimits) -> Result<Vec<u8>, Invalid> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        events: Vec<JsonEvent>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JsonEvent {
        client_id: String,
        key: String,
        #[serde(default)]
        kind: i32,
        #[serde(default)]
        timestamp_us: i64,
        #[serde(default)]
        payload: String,
    }
    if bytes.len() > limits.max_bytes {
        return Err(Invalid(format!(
            "the batch is {} bytes; at most {} are accepted",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|e| Invalid(format!("not a valid JSON event batch: {e}")))?;
    if body.events.is_empty() || body.events.len() > limits.max_events {
        return Err(Invalid(format!(
            "a batch holds 1 to {} events; this one holds {}",
            limits.max_events,
            body.events.len()
        )));
    }
    let events = body
        .events
        .into_iter()
        .map(|e| {
            Ok(Event {
                client_id: parse_client_id(&e.client_id)?,
                key: e.key,
                kind: e.kind,
                timestamp_us: e.timestamp_us,
                payload: e.payload.into_bytes(),
            })
        })
        .collect::<Result<Vec<_>, Invalid>>()?;
    Ok(encode_event_batch(&events))
}

fn parse_client_id(hex: &str) -> Result<[u8; 16], Invalid> {
    let invalid = || Invalid(format!("client_id {hex:?} is not 32 hex digits"));
    if hex.len() != 32 {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(invalid)?, 16)
            .map_err(|_| invalid())?;
    }
    Ok(id)
}

/// `events` as an `EventBatch` buffer.
pub fn encode_event_batch(events: &[Event]) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(64 + events.len() * 96);
    let offsets: Vec<_> = events
        .iter()
        .map(|e| {
            let key = builder.create_string(&e.key);
            let payload = builder.create_vector(&e.payload);
            schema::Event::create(
                &mut builder,
                &schema::EventArgs {
                    client_id: Some(&schema::ClientId(e.client_id)),
                    key: Some(key),
                    kind: e.kind,
                    timestamp_us: e.timestamp_us,
                    payload: Some(payload),
                },
            )
        })
        .collect();
    let events = builder.create_vector(&offsets);
    let batch = schema::EventBatch::create(
        &mut builder,
        &schema::EventBatchArgs {
            events: Some(events),
        },
    );
    builder.finish(batch, None);
    builder.finished_data().to_vec()
}

/// The body of a 202 to a batch of `count` events.
pub fn encode_accepted(count: u32) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(32);
    let accepted = schema::Accepted::create(&mut builder, &schema::AcceptedArgs { count });
    builder.finish(accepted, None);
    builder.finished_data().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8) -> Event {
        Event {
            client_id: [n; 16],
            key: format!("user:{n}"),
            kind: i32::from(n),
            timestamp_us: 1_700_000_000_000_000,
            payload: vec![n; 3],
        }
    }

    #[test]
    fn batches_round_trip() {
        let bytes = encode_event_batch(&[event(1), event(2)]);
        let batch = verify_event_batch(&bytes, &BatchLimits::default()).unwrap();
        let events: Vec<_> = batch.events().iter().collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].client_id().0, [2; 16]);
        assert_eq!(events[1].key(), "user:2");
        assert_eq!(events[1].payload().unwrap().bytes(), [2, 2, 2]);
    }

    #[test]
    fn untrusted_buffers_are_refused_with_a_reason() {
        let limits = BatchLimits {
            max_events: 2,
            max_bytes: 4096,
        };
        let good = encode_event_batch(&[event(1)]);
        for (bytes, why) in [
            (vec![], "not a valid EventBatch"),
            (vec![0xff; 64], "not a valid EventBatch"),
            (good[..good.len() - 4].to_vec(), "not a valid EventBatch"),
            (encode_event_batch(&[]), "1 to 2 events"),
            (
                encode_event_batch(&[event(1), event(2), event(3)]),
                "1 to 2 events",
            ),
            (vec![0; 5000], "at most 4096"),
        ] {
            let error = verify_event_batch(&bytes, &limits).map(|_| ()).unwrap_err();
            assert!(error.0.contains(why), "{why}: {error}");
        }
        // Every truncation and every single corrupted byte is refused or read safely.
        for cut in 0..good.len() {
            let _ = verify_event_batch(&good[..cut], &limits);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xa5;
            if let Ok(batch) = verify_event_batch(&bad, &limits) {
                for e in batch.events() {
                    let _ = (e.key(), e.payload(), e.client_id());
                }
            }
        }
    }

    #[test]
    fn json_becomes_the_same_flatbuffers() {
        let json = br#"{"events":[{"client_id":"01010101010101010101010101010101","key":"user:1","kind":1,"timestamp_us":1700000000000000,"payload":"\u0001\u0001\u0001"}]}"#;
        let bytes = event_batch_from_json(json, &BatchLimits::default()).unwrap();
        assert_eq!(bytes, encode_event_batch(&[event(1)]));
        for (json, why) in [
            (&br#"{"events":[]}"#[..], "1 to"),
            (br#"{"events":[{"client_id":"zz","key":"k"}]}"#, "32 hex digits"),
            (br#"{"events":[{"key":"k"}]}"#, "client_id"),
            (br#"{"events":[{"client_id":"01010101010101010101010101010101","key":"k","extra":1}]}"#, "unknown field"),
            (b"[1,2", "not a valid JSON"),
        ] {
            let error = event_batch_from_json(json, &BatchLimits::default()).unwrap_err();
            assert!(error.0.contains(why), "{why}: {error}");
        }
    }

    #[test]
    fn the_generated_code_matches_the_schema() {
        let schema = include_bytes!("../../schemas/millrace.fbs");
        let generated = include_str!("millrace_generated.rs");
        let recorded = generated
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// schema-fnv1a64: "))
            .expect("the generated file records its schema's hash");
        assert_eq!(
            recorded,
            fnv1a64_hex(schema),
            "schemas/millrace.fbs changed: run scripts/flatc.sh and commit the result"
        );
    }

    /// FNV-1a, 64 bits, as scripts/flatc.sh computes it: a drift check, not a seal.
    fn fnv1a64_hex(data: &[u8]) -> String {
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}
