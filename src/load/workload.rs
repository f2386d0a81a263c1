//! What the load generator sends: one fixed request, a key-value mix, event
//! batches, or a scenario's templates. Each is encoded once up front where it can be; what varies
//! per request (a key, a value, event ids) is written straight into the
//! connection's output buffer.

use std::io::Write as _;

use super::ledger::EventIds;
use super::scenario::Scenario;
use crate::payload::{CONTENT_TYPE as FLATBUFFERS_CONTENT_TYPE, Event, encode_event_batch};
use crate::rng::Rng;

/// How keys are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with this exponent: key `k` (from 0) drawn in proportion to `1 / (k + 1)^s`.
    Zipf(f64),
}

impl std::str::FromStr for KeyDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(KeyDistribution::Uniform);
        }
        let exponent = s.strip_prefix("zipf:").and_then(|e| e.parse::<f64>().ok());
        match exponent {
            Some(e) if e.is_finite() && e > 0.0 && e <= 10.0 => Ok(KeyDistribution::Zipf(e)),
            _ => Err(format!(
                "invalid key distribution {s:?}: expected uniform or zipf:S with 0 < S <= 10 (such as zipf:0.99)"
            )),
        }
    }
}

/// Zipf sampling over ranks `1..=n` by rejection-inversion (Hörmann and
/// Derflinger, 1996): constant time and memory per draw whatever `n` is.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    threshold: f64,
}

impl Zipf {
    /// Ranks `1..=n` (`n >= 1`) with exponent `s > 0`.
    pub fn new(n: u64, s: f64) -> Self {
        let n = n as f64;
        let mut zipf = Zipf {
            n,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            threshold: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(n + 0.5);
        zipf.threshold = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// A rank in `1..=n`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.unit() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// `x^-s`, the unnormalised probability of rank `x`.
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// An antiderivative of `h`: `(x^(1-s) - 1) / (1-s)`, or `ln x` at `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        exp_m1_over((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (ln_1p_over(t) * x).exp()
    }
}

/// `(e^x - 1) / x`, continuous at 0.
fn exp_m1_over(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// `ln(1 + x) / x`, continuous at 0.
fn ln_1p_over(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// What the engine needs to know about a request it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Index into [`Workload::operations`].
    pub operation: u8,
    /// A HEAD request: its response has no body.
    pub bodiless: bool,
    /// 404 is an answer, not an error (a read of a key never written).
    pub absent_ok: bool,
    /// The event ids it carries (events workload), for the ledger.
    pub events: Option<EventIds>,
}

/// One fixed request, sent again and again.
#[derive(Clone, Debug)]
pub struct FixedRequest {
    bytes: Vec<u8>,
    bodiless: bool,
}

impl FixedRequest {
    /// `method target` to `host` with extra header lines and a body.
    pub fn new(method: &str, target: &str, host: &str, headers: &[String], body: &[u8]) -> Self {
        let mut bytes = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
        for header in headers {
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let has_length = headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        });
        if !has_length && (!body.is_empty() || method_sends_body(method)) {
            bytes.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        FixedRequest {
            bytes,
            bodiless: method == "HEAD",
        }
    }

    /// The request's bytes on the wire.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn method_sends_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// Reads and writes of `/v1/kv/{key}`.
#[derive(Clone, Debug)]
pub struct KvMix {
    read_ratio: f64,
    delete_ratio: f64,
    keys: u64,
    zipf: Option<Zipf>,
    /// `GET {prefix}` and `PUT {prefix}`: the part before the key.
    get_prefix: Vec<u8>,
    put_prefix: Vec<u8>,
    delete_prefix: Vec<u8>,
    /// ` HTTP/1.1\r\nHost: ...\r\n\r\n` after a GET's key.
    get_suffix: Vec<u8>,
    /// The same with the value's headers, and the value, after a PUT's key.
    put_suffix: Vec<u8>,
}

/// Reads, writes and what each is called in the results.
const KV_OPERATIONS: [&str; 3] = ["GET", "PUT", "DELETE"];

impl KvMix {
    /// A mix against `{base}/v1/kv/{key}` on `host`.
    pub fn new(
        base: &str,
        host: &str,
        read_ratio: f64,
        delete_ratio: f64,
        keys: u64,
        distribution: KeyDistribution,
        value_bytes: usize,
    ) -> Self {
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipf(s) => Some(Zipf::new(keys, s)),
        };
        let value: Vec<u8> = (0..value_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        let mut put_suffix = format!(
            " HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {value_bytes}\r\n\r\n"
        )
        .into_bytes();
        put_suffix.extend_from_slice(&value);
        KvMix {
            read_ratio,
            delete_ratio,
            keys,
            zipf,
            get_prefix: format!("GET {base}/v1/kv/").into_bytes(),
            put_prefix: format!("PUT {base}/v1/kv/").into_bytes(),
            delete_prefix: format!("DELETE {base}/v1/kv/").into_bytes(),
            get_suffix: format!(" HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            put_suffix,
        }
    }

    fn key(&self, rng: &mut Rng) -> u64 {
        match &self.zipf {
            Some(zipf) => zipf.sample(rng) - 1,
            None => rng.below(self.keys),
        }
    }
}

/// How event batches are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// FlatBuffers `EventBatch` (schemas/millrace.fbs), `application/x-flatbuffers`
    Flatbuffers,
    /// The JSON form of the same batch, `application/json`
    Json,
}

/// Batches of events posted to `/v1/events`, each event with an id unique
/// to this run.
#[derive(Clone, Debug)]
pub struct EventBatches {
    batch: usize,
    format: EventsFormat,
    head: Vec<u8>,
    /// Random bits that make this run's event ids its own.
    run_id: u64,
    /// This generator's thread, in the ids.
    thread: u16,
    /// Events encoded so far by this thread.
    counter: u64,
    payload: Vec<u8>,
    keys: u64,
    events: Vec<Event>,
    body: Vec<u8>,
}

impl EventBatches {
    /// `batch` events per request against `{base}/v1/events` on `host`.
    pub fn new(
        base: &str,
        host: &str,
        batch: usize,
        keys: u64,
        payload_bytes: usize,
        format: EventsFormat,
    ) -> Self {
        let content_type = match format {
            EventsFormat::Flatbuffers => FLATBUFFERS_CONTENT_TYPE,
            EventsFormat::Json => "application/json",
        };
        EventBatches {
            batch,
            format,
            head: format!(
                "POST {base}/v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: "
            )
            .into_bytes(),
            run_id: 0,
            thread: 0,
            counter: 0,
            payload: (0..payload_bytes).map(|i| b'a' + (i % 26) as u8).collect(),
            keys,
            events: Vec::with_capacity(batch),
            body: Vec::new(),
        }
    }

    fn encode(&mut self, rng: &mut Rng, out: &mut Vec<u8>) -> EventIds {
        let ids = EventIds {
            first: (u128::from(self.run_id) << 64)
                | (u128::from(self.thread) << 48)
                | u128::from((self.counter + 1) & 0xffff_ffff_ffff),
            count: self.batch as u32,
        };
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.events.clear();
        for _ in 0..self.batch {
            self.counter += 1;
            // A 16-byte id: the run, this thread, this thread's count.
            let mut client_id = [0u8; 16];
            client_id[..8].copy_from_slice(&self.run_id.to_be_bytes());
            client_id[8..10].copy_from_slice(&self.thread.to_be_bytes());
            client_id[10..].copy_from_slice(&self.counter.to_be_bytes()[2..]);
            self.events.push(Event {
                client_id,
                key: format!("k{}", rng.below(self.keys)),
                kind: 1,
                timestamp_us: micros,
                payload: self.payload.clone(),
            });
        }
        self.body.clear();
        match self.format {
            EventsFormat::Flatbuffers => self.body = encode_event_batch(&self.events),
            EventsFormat::Json => {
                self.body.extend_from_slice(b"{\"events\":[");
                for (i, event) in self.events.iter().enumerate() {
                    if i > 0 {
                        self.body.push(b',');
                    }
                    let id: String = event.client_id.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = write!(
                        self.body,
                        "{{\"client_id\":\"{id}\",\"key\":\"{}\",\"kind\":{},\"timestamp_us\":{},\"payload\":\"{}\"}}",
                        event.key,
                        event.kind,
                        event.timestamp_us,
                        String::from_utf8_lossy(&event.payload)
                    );
                }
                self.body.extend_from_slice(b"]}");
            }
        }
        out.extend_from_slice(&self.head);
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        ids
    }
}

/// What every request of a run looks like.
#[derive(Clone, Debug)]
pub enum Workload {
    /// One request, as given on the command line.
    Fixed(FixedRequest),
    /// `GET` and `PUT /v1/kv/{key}`.
    Kv(KvMix),
    /// `POST /v1/events`.
    Events(EventBatches),
    /// A scenario's weighted templates.
    Scenario(Scenario),
}

impl Workload {
    /// Names of the operations results are split by, indexed by [`Encoded::operation`].
    pub fn operations(&self) -> Vec<String> {
        match self {
            Workload::Fixed(fixed) => {
                let method = fixed.bytes.split(|&b| b == b' ').next().unwrap_or_default();
                vec![String::from_utf8_lossy(method).into_owned()]
            }
            Workload::Kv(kv) => {
                let kinds = if kv.delete_ratio > 0.0 { 3 } else { 2 };
                KV_OPERATIONS[..kinds]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
            Workload::Events(_) => vec!["POST".into()],
            Workload::Scenario(scenario) => scenario.operations(),
        }
    }

    /// This workload for generator thread `thread` of a run identified by `run_id`.
    pub fn for_thread(&self, thread: u16, run_id: u64) -> Workload {
        let mut workload = self.clone();
        if let Workload::Events(events) = &mut workload {
            events.thread = thread;
            events.run_id = run_id;
        }
        workload
    }

    /// Append the next request to `out`.
    pub fn encode(&mut self, rng: &mut Rng, out: &mut Vec<u8>) -> Encoded {
        match self {
            Workload::Fixed(fixed) => {
                out.extend_from_slice(&fixed.bytes);
                Encoded {
                    operation: 0,
                    bodiless: fixed.bodiless,
                    absent_ok: false,
                    events: None,
                }
            }
            Workload::Kv(kv) => {
                // 0: GET, 1: PUT, 2: DELETE, as KV_OPERATIONS names them.
                let operation = if kv.read_ratio >= 1.0 {
                    0
                } else {
                    let u = rng.unit();
                    if u < kv.read_ratio {
                        0
                    } else if u < kv.read_ratio + kv.delete_ratio {
                        2
                    } else {
                        1
                    }
                };
                let key = kv.key(rng);
                let (prefix, suffix) = match operation {
                    0 => (&kv.get_prefix, &kv.get_suffix),
                    1 => (&kv.put_prefix, &kv.put_suffix),
                    _ => (&kv.delete_prefix, &kv.get_suffix),
                };
                out.extend_from_slice(prefix);
                out.push(b'k');
                out.extend_from_slice(itoa::Buffer::new().format(key).as_bytes());
                out.extend_from_slice(suffix);
                Encoded {
                    operation,
                    bodiless: false,
                    // A read or delete of a key never written is an answer.
                    absent_ok: operation != 1,
                    events: None,
                }
            }
            Workload::Scenario(scenario) => scenario.encode(rng, out),
            Workload::Events(events) => {
                let ids = events.encode(rng, out);
                Encoded {
                    operation: 0,
                    bodiless: false,
                    absent_ok: false,
                    events: Some(ids),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_follows_its_law() {
        for s in [0.5, 0.99, 1.0, 1.5] {
            let zipf = Zipf::new(1000, s);
            let mut rng = Rng::new(7);
            let mut counts = [0u64; 4];
            let draws = 400_000;
            for _ in 0..draws {
                let rank = zipf.sample(&mut rng);
                assert!((1..=1000).contains(&rank));
                if rank <= 4 {
                    counts[rank as usize - 1] += 1;
                }
            }
            // P(1) / P(k) = k^s.
            for k in 2..=4u32 {
                let ratio = counts[0] as f64 / counts[k as usize - 1] as f64;
                let expected = f64::from(k).powf(s);
                assert!(
                    (ratio / expected - 1.0).abs() < 0.08,
                    "s={s} k={k} ratio={ratio} expected={expected}"
                );
            }
        }
    }

    #[test]
    fn uniform_keys_cover_the_range() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn key_distributions_parse() {
        assert_eq!("uniform".parse(), Ok(KeyDistribution::Uniform));
        assert_eq!("zipf:0.99".parse(), Ok(KeyDistribution::Zipf(0.99)));
        for bad in ["zipf", "zipf:0", "zipf:-1", "zipf:x", "normal"] {
            assert!(bad.parse::<KeyDistribution>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_requests_carry_their_body_length() {
        let get = FixedRequest::new("GET", "/a", "h:1", &["X-A: b".into()], b"");
        assert_eq!(
            get.bytes(),
            b"GET /a HTTP/1.1\r\nHost: h:1\r\nX-A: b\r\n\r\n"
        );
        let post = FixedRequest::new("POST", "/a", "h:1", &[], b"xyz");
        assert_eq!(
            post.bytes(),
            b"POST /a HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\n\r\nxyz"
        );
    }

    #[test]
    fn kv_requests_parse_as_http() {
        let mut workload = Workload::Kv(KvMix::new(
            "",
            "h:1",
            0.5,
            0.2,
            100,
            KeyDistribution::Uniform,
            5,
        ));
        assert_eq!(workload.operations(), ["GET", "PUT", "DELETE"]);
        let mut rng = Rng::new(3);
        let mut kinds = [0; 3];
        for _ in 0..1000 {
            let mut out = Vec::new();
            let encoded = workload.encode(&mut rng, &mut out);
            kinds[usize::from(encoded.operation)] += 1;
            let mut fields = [httparse::EMPTY_HEADER; 8];
            let mut request = httparse::Request::new(&mut fields);
            let len = match request.parse(&out).unwrap() {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => panic!("partial"),
            };
            assert!(request.path.unwrap().starts_with("/v1/kv/k"));
            let method = ["GET", "PUT", "DELETE"][usize::from(encoded.operation)];
            assert_eq!(request.method, Some(method));
            assert_eq!(encoded.absent_ok, method != "PUT");
            let body = &out[len..];
            assert_eq!(body.len(), if encoded.operation == 1 { 5 } else { 0 });
        }
        // 50% reads, 20% deletes, 30% puts.
        assert!((450..550).contains(&kinds[0]), "{kinds:?}");
        assert!((150..250).contains(&kinds[2]), "{kinds:?}");
        assert!((250..350).contains(&kinds[1]), "{kinds:?}");
        let no_deletes = KvMix::new("", "h", 0.5, 0.0, 10, KeyDistribution::Uniform, 1);
        assert_eq!(Workload::Kv(no_deletes).operations(), ["GET", "PUT"]);
    }

    #[test]
    fn event_batches_are_valid_flatbuffers() {
        let mut workload = Workload::Events(EventBatches::new(
            "",
            "h:1",
            5,
            10,
            4,
            EventsFormat::Flatbuffers,
        ))
        .for_thread(1, 7);
        let mut out = Vec::new();
        workload.encode(&mut Rng::new(1), &mut out);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..split]);
        assert!(
            head.contains("Content-Type: application/x-flatbuffers"),
            "{head}"
        );
        let batch = crate::payload::verify_event_batch(&out[split..], &Default::default()).unwrap();
        assert_eq!(batch.events().len(), 5);
    }

    #[test]
    fn event_batches_are_json_with_unique_ids_that_the_ledger_names() {
        let mut workload =
            Workload::Events(EventBatches::new("", "h:1", 3, 10, 4, EventsFormat::Json))
                .for_thread(2, 0xabc);
        let mut rng = Rng::new(3);
        let mut ids = std::collections::HashSet::new();
        for _ in 0..10 {
            let mut out = Vec::new();
            let named = workload.encode(&mut rng, &mut out).events.unwrap();
            let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let body: serde_json::Value = serde_json::from_slice(&out[split..]).unwrap();
            let sent: Vec<String> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["client_id"].as_str().unwrap().to_string())
                .collect();
            let ledger: Vec<String> = named.ids().map(|id| format!("{id:032x}")).collect();
            assert_eq!(sent, ledger, "the ledger names the ids sent");
            for id in sent {
                assert!(ids.insert(id));
            }
        }
        assert_eq!(ids.len(), 30);
    }
}
