//! `millrace plan`: the hardware a target load needs, from measured costs.
//!
//! The arithmetic is plain: executor cores from the requests one core
//! serves per second, Redis masters from the operations one master serves,
//! NIC bandwidth from the bytes each exchange puts on the wire, database
//! cores from the rows one core writes back, Redis memory from the bytes a
//! cached key and a queued write take (the hot set, and the backlog an
//! outage of PostgreSQL builds), and the load generator's concurrency from
//! Little's law at the measured p99. Each figure names the measurement it
//! came from.

use std::fmt::Write as _;

use serde::Deserialize;

/// One measured figure and where it came from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Measured {
    /// The figure.
    pub value: f64,
    /// The run that produced it (a command, a results file).
    pub source: String,
}

/// The measurements a plan rests on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    /// `GET /v1/kv` cache hits one executor core answers per CPU-second.
    pub reads_per_core_second: Measured,
    /// `PUT /v1/kv` writes one executor core answers per CPU-second.
    pub writes_per_core_second: Measured,
    /// Commands one Redis master (one core) executes per second.
    pub redis_ops_per_master_second: Measured,
    /// Rows one database core writes back per second.
    pub writeback_rows_per_core_second: Measured,
    /// p99 latency of an API request under load, in milliseconds.
    pub p99_ms: Measured,
    /// Redis bytes a cached key takes beyond its key and value.
    #[serde(default = "default_cached_key_overhead")]
    pub redis_cached_key_overhead_bytes: Measured,
    /// Redis bytes a queued PUT takes beyond twice its key and value (its
    /// stream entry and its cache entry).
    #[serde(default = "default_queued_write_overhead")]
    pub redis_queued_write_overhead_bytes: Measured,
}

/// What scripts/bench-memory.sh measured on the development VM, for
/// results files written before it ran.
fn default_cached_key_overhead() -> Measured {
    Costs::defaults().redis_cached_key_overhead_bytes
}

fn default_queued_write_overhead() -> Measured {
    Costs::defaults().redis_queued_write_overhead_bytes
}

impl Costs {
    /// This repository's measurements on its 2-vCPU development VM
    /// (benches/results/2026-11-28-vm-*.md), for when no results file is
    /// given.
    pub fn defaults() -> Costs {
        let measured = |value: f64, source: &str| Measured {
            value,
            source: source.to_string(),
        };
        Costs {
            reads_per_core_second: measured(
                118_943.0,
                "GET /v1/kv hits, 64 connections, depth 1: scripts/bench-api.sh (benches/results/2026-11-28-vm-api.md)",
            ),
            writes_per_core_second: measured(
                105_382.0,
                "PUT /v1/kv, 64 connections, depth 1: scripts/bench-api.sh (benches/results/2026-11-28-vm-api.md)",
            ),
            redis_ops_per_master_second: measured(
                678_008.0,
                "SET/GET pipelined, 3 masters sharing one CPU: scripts/bench-redis.sh (benches/results/2026-11-28-vm-redis.md)",
            ),
            writeback_rows_per_core_second: measured(
                268_286.0,
                "database core, COPY batches of 5,000 rows: scripts/bench-writeback.sh (benches/results/2026-11-28-vm-writeback.md)",
            ),
            p99_ms: measured(
                0.403,
                "PUT /v1/kv open loop at 2,000/s, p99: scripts/bench-api.sh (benches/results/2026-11-28-vm-api.md)",
            ),
            redis_cached_key_overhead_bytes: measured(
                CACHED_KEY_OVERHEAD_MEASURED,
                "used_memory per cached key less its key and value: scripts/bench-memory.sh (benches/results/2026-12-03-vm-memory.md)",
            ),
            redis_queued_write_overhead_bytes: measured(
                QUEUED_WRITE_OVERHEAD_MEASURED,
                "used_memory per queued PUT less twice its key and value: scripts/bench-memory.sh (benches/results/2026-12-03-vm-memory.md)",
            ),
        }
    }

    /// Read the `plan_inputs` object of a results file.
    pub fn from_json(text: &str) -> Result<Costs, String> {
        #[derive(Deserialize)]
        struct File {
            plan_inputs: Costs,
        }
        let file: File = serde_json::from_str(text).map_err(|e| {
            format!("not a results file with plan_inputs (each a {{\"value\", \"source\"}}): {e}")
        })?;
        let costs = file.plan_inputs;
        for (name, figure) in costs.figures() {
            if !(figure.value.is_finite() && figure.value > 0.0) {
                return Err(format!(
                    "plan_inputs.{name} must be a positive number, not {}",
                    figure.value
                ));
            }
        }
        Ok(costs)
    }

    /// Take the reads one executor core serves from a `millrace load --slo`
    /// result for `GET /v1/kv` (scripts/bench-slo.sh writes one): the
    /// highest rate at which its latency objective held becomes the reads
    /// per core, and that step's p99 the latency, so that the plan is sized
    /// for the objective rather than for a core run flat out.
    pub fn with_slo(mut self, text: &str, source: &str) -> Result<Costs, String> {
        let result: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("not a millrace load --slo result: {e}"))?;
        let rate = result["best_rate_per_s"].as_f64().ok_or(
            "no best_rate_per_s: no rate met the objective, so there is no capacity to plan with",
        )?;
        let objectives: Vec<String> = result["objectives"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|o| {
                        format!(
                            "{}<{}ms",
                            o["percentile"].as_str().unwrap_or("?"),
                            o["below_ms"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shape = &result["best"]["shape"];
        if shape["workload"] != "kv" {
            return Err(format!(
                "a --slo result of the {} workload: the reads per core come from GET /v1/kv (--workload kv --read-ratio 1)",
                shape["workload"]
            ));
        }
        let p99 = result["best"]["latency_ms"]["p99"].as_f64();
        let objective = objectives.join(",");
        self.reads_per_core_second = Measured {
            value: rate,
            source: format!(
                "GET /v1/kv, the highest rate with {objective}: millrace load --slo ({source})"
            ),
        };
        if let Some(p99) = p99.filter(|p| *p > 0.0) {
            self.p99_ms = Measured {
                value: p99,
                source: format!("GET /v1/kv p99 at that rate ({source})"),
            };
        }
        Ok(self)
    }

    fn figures(&self) -> [(&'static str, &Measured); 7] {
        [
            ("reads_per_core_second", &self.reads_per_core_second),
            ("writes_per_core_second", &self.writes_per_core_second),
            (
                "redis_ops_per_master_second",
                &self.redis_ops_per_master_second,
            ),
            (
                "writeback_rows_per_core_second",
                &self.writeback_rows_per_core_second,
            ),
            ("p99_ms", &self.p99_ms),
            (
                "redis_cached_key_overhead_bytes",
                &self.redis_cached_key_overhead_bytes,
            ),
            (
                "redis_queued_write_overhead_bytes",
                &self.redis_queued_write_overhead_bytes,
            ),
        ]
    }
}

/// The load to plan for and the hardware it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// Requests per second.
    pub rps: f64,
    /// Share of requests that are reads (GET); the rest are writes (PUT).
    pub read_ratio: f64,
    /// Bytes in each value read or written.
    pub value_bytes: u64,
    /// Bytes in each key.
    pub key_bytes: u64,
    /// CPUs in one server box.
    pub cores_per_box: u32,
    /// NIC speed of one box, in Gbit/s.
    pub nic_gbit: f64,
    /// Share of each measured capacity kept free (0.3: plan for 70%).
    pub headroom: f64,
    /// Requests each load-generator connection keeps in flight.
    pub pipeline: u32,
    /// Keys kept in the cache (the hot set).
    pub hot_keys: u64,
    /// Seconds of PostgreSQL outage the queue must absorb.
    pub outage_s: f64,
    /// Replicas per Redis master.
    pub replicas: u32,
    /// Memory one Redis master may use, in GiB.
    pub redis_memory_gib: f64,
}

impl Demand {
    fn check(&self) -> Result<(), String> {
        if !(self.rps.is_finite() && self.rps > 0.0) {
            return Err(format!("--rps must be above 0, not {}", self.rps));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio must be from 0 to 1, not {}",
                self.read_ratio
            ));
        }
        if !(0.0..1.0).contains(&self.headroom) {
            return Err(format!(
                "--headroom must be from 0 to below 1, not {}",
                self.headroom
            ));
        }
        if self.cores_per_box < 3 {
            return Err(
                "--cores-per-box must be at least 3 (executors, the database core, the kernel)"
                    .into(),
            );
        }
        if !(self.nic_gbit.is_finite() && self.nic_gbit > 0.0) {
            return Err(format!("--nic-gbit must be above 0, not {}", self.nic_gbit));
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        if !(self.outage_s.is_finite() && self.outage_s >= 0.0) {
            return Err(format!(
                "--outage-s must be 0 or more, not {}",
                self.outage_s
            ));
        }
        if !(self.redis_memory_gib.is_finite() && self.redis_memory_gib > 0.0) {
            return Err(format!(
                "--redis-memory-gib must be above 0, not {}",
                self.redis_memory_gib
            ));
        }
        Ok(())
    }
}

/// Ethernet, IP and TCP framing per packet on the wire: preamble and gap
/// 20, Ethernet header and FCS 18, IPv4 20, TCP with timestamps 32.
pub const WIRE_OVERHEAD_BYTES: u64 = 90;

/// Request bytes besides the key and the value: `GET /v1/kv/` and the
/// version, a Host and a Content-Length header, the blank line.
pub const REQUEST_HEAD_BYTES: u64 = 64;

/// Response bytes besides the value: status line, Server, Date,
/// Content-Type, Content-Length, ETag, the blank line (a 202's version included).
pub const RESPONSE_HEAD_BYTES: u64 = 170;

/// What scripts/bench-memory.sh measured (benches/results/2026-12-03-vm-memory.md).
const CACHED_KEY_OVERHEAD_MEASURED: f64 = 210.0;
const QUEUED_WRITE_OVERHEAD_MEASURED: f64 = 322.0;

/// The plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Executor cores, at the headroom.
    pub executor_cores: u64,
    /// Executors in one box: its cores less one for the database core and
    /// one for the kernel's network work.
    pub executors_per_box: u64,
    /// Boxes.
    pub boxes: u64,
    /// Redis commands per second: one per read, one script per write, and
    /// about three per written row for the database core (read, ack, trim,
    /// amortised over a batch: counted as one).
    pub redis_ops: f64,
    /// Redis masters, at the headroom: for the commands or for the memory,
    /// whichever needs more.
    pub redis_masters: u64,
    /// Redis masters the commands alone need.
    pub redis_masters_for_ops: u64,
    /// Bytes the hot set takes in Redis.
    pub hot_set_bytes: f64,
    /// Bytes the queue takes after `outage_s` of PostgreSQL outage.
    pub backlog_bytes: f64,
    /// Queued bytes as `max_backlog_bytes` counts them (entries' fields).
    pub backlog_payload_bytes: f64,
    /// `maxmemory` for each master.
    pub maxmemory_per_master_bytes: f64,
    /// Redis memory over all masters and replicas.
    pub redis_memory_bytes: f64,
    /// Bytes into a box's NIC per request, framing included.
    pub bytes_in: f64,
    /// Bytes out per request.
    pub bytes_out: f64,
    /// Gbit/s in and out over all boxes.
    pub gbit_in: f64,
    /// Gbit/s out over all boxes.
    pub gbit_out: f64,
    /// Requests per second one box's NIC carries at most (the busier direction).
    pub nic_ceiling_rps: f64,
    /// Boxes the NIC alone would need.
    pub boxes_for_nic: u64,
    /// Rows per second into PostgreSQL.
    pub rows: f64,
    /// Database cores, at the headroom.
    pub database_cores: u64,
    /// Rows a batch gathers in 5 ms on one database core, at most 5,000.
    pub batch_rows: u64,
    /// Requests in flight to sustain the rate at the p99 (Little's law).
    pub in_flight: u64,
    /// Load-generator connections at the pipeline depth.
    pub connections: u64,
}

/// Work out the plan; bad demand is an error naming the flag.
pub fn plan(demand: &Demand, costs: &Costs) -> Result<Plan, String> {
    demand.check()?;
    let usable = 1.0 - demand.headroom;
    let reads = demand.rps * demand.read_ratio;
    let writes = demand.rps - reads;
    let core_seconds =
        reads / costs.reads_per_core_second.value + writes / costs.writes_per_core_second.value;
    let executor_cores = (core_seconds / usable).ceil().max(1.0) as u64;
    let executors_per_box = u64::from(demand.cores_per_box) - 2;
    let boxes = executor_cores.div_ceil(executors_per_box);

    let redis_ops = reads + 2.0 * writes;
    let redis_masters_for_ops = (redis_ops / (costs.redis_ops_per_master_second.value * usable))
        .ceil()
        .max(1.0) as u64;
    // Memory: the hot set, each key once; the backlog of an outage, each
    // write twice (its stream entry, its pinned cache entry), counted as if
    // every write were to a new key.
    let payload = (demand.key_bytes + demand.value_bytes) as f64;
    let hot_set_bytes =
        demand.hot_keys as f64 * (costs.redis_cached_key_overhead_bytes.value + payload);
    let backlog_writes = writes * demand.outage_s;
    let backlog_bytes =
        backlog_writes * (costs.redis_queued_write_overhead_bytes.value + 2.0 * payload);
    let backlog_payload_bytes = backlog_writes * (6.0 + payload);
    let gib = (1u64 << 30) as f64;
    let redis_masters_for_memory = ((hot_set_bytes + backlog_bytes)
        / (demand.redis_memory_gib * gib * usable))
        .ceil()
        .max(1.0) as u64;
    let redis_masters = redis_masters_for_ops.max(redis_masters_for_memory);
    let maxmemory_per_master_bytes =
        (hot_set_bytes + backlog_bytes) / redis_masters as f64 / usable;
    let redis_memory_bytes =
        maxmemory_per_master_bytes * redis_masters as f64 * f64::from(1 + demand.replicas);

    // A read: a small request in, the value out. A write: the value in, a
    // small response out. One packet each way per request (values up to a
    // segment); more for larger values.
    let packets = |payload: u64| payload.div_ceil(1448).max(1);
    let read_in = REQUEST_HEAD_BYTES + demand.key_bytes;
    let read_out = RESPONSE_HEAD_BYTES + demand.value_bytes;
    let write_in = REQUEST_HEAD_BYTES + demand.key_bytes + demand.value_bytes;
    let write_out = RESPONSE_HEAD_BYTES;
    let on_wire = |payload: u64| (payload + packets(payload) * WIRE_OVERHEAD_BYTES) as f64;
    let bytes_in =
        demand.read_ratio * on_wire(read_in) + (1.0 - demand.read_ratio) * on_wire(write_in);
    let bytes_out =
        demand.read_ratio * on_wire(read_out) + (1.0 - demand.read_ratio) * on_wire(write_out);
    let gbit = |bytes: f64| demand.rps * bytes * 8.0 / 1e9;
    let nic_ceiling_rps = demand.nic_gbit * 1e9 / 8.0 / bytes_in.max(bytes_out);
    let boxes_for_nic = (demand.rps / (nic_ceiling_rps * usable)).ceil().max(1.0) as u64;

    let rows = writes;
    let database_cores = if rows == 0.0 {
        0
    } else {
        (rows / (costs.writeback_rows_per_core_second.value * usable))
            .ceil()
            .max(1.0) as u64
    };
    let rows_per_database_core = if database_cores == 0 {
        0.0
    } else {
        rows / database_cores as f64
    };
    let batch_rows = ((rows_per_database_core * 0.005).ceil() as u64).clamp(1, 5000);

    let in_flight = (demand.rps * costs.p99_ms.value / 1000.0).ceil().max(1.0) as u64;
    let connections = in_flight.div_ceil(u64::from(demand.pipeline));
    Ok(Plan {
        executor_cores,
        executors_per_box,
        boxes,
        redis_ops,
        redis_masters,
        redis_masters_for_ops,
        hot_set_bytes,
        backlog_bytes,
        backlog_payload_bytes,
        maxmemory_per_master_bytes,
        redis_memory_bytes,
        bytes_in,
        bytes_out,
        gbit_in: gbit(bytes_in),
        gbit_out: gbit(bytes_out),
        nic_ceiling_rps,
        boxes_for_nic,
        rows,
        database_cores,
        batch_rows,
        in_flight,
        connections,
    })
}

/// The plan as printed.
pub fn render(demand: &Demand, costs: &Costs, plan: &Plan) -> String {
    fn line(out: &mut String, what: &str, from: &[&Measured]) {
        let _ = writeln!(out, "  {what}");
        for measured in from {
            let value = if measured.value < 100.0 {
                format!("{}", measured.value)
            } else {
                group(measured.value)
            };
            let _ = writeln!(out, "      from: {} = {value}", measured.source);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "millrace plan: {} requests/s, {:.0}% reads, {}-byte values, {}-byte keys; \
         boxes of {} cores with {} Gbit/s NICs; each measured capacity used to {:.0}%",
        group(demand.rps),
        demand.read_ratio * 100.0,
        demand.value_bytes,
        demand.key_bytes,
        demand.cores_per_box,
        demand.nic_gbit,
        (1.0 - demand.headroom) * 100.0,
    );
    line(
        &mut out,
        &format!(
            "executor cores: {} ({} per box: its cores less the database core and one for the kernel)",
            plan.executor_cores, plan.executors_per_box
        ),
        &[&costs.reads_per_core_second, &costs.writes_per_core_second],
    );
    line(
        &mut out,
        &format!(
            "boxes: {} for the CPU work, {} for the NIC: {} in all",
            plan.boxes,
            plan.boxes_for_nic,
            plan.boxes.max(plan.boxes_for_nic)
        ),
        &[],
    );
    line(
        &mut out,
        &format!(
            "Redis masters: {} ({} for {} commands/s: a read is one; a write is its script plus \
             its share of the database core's reads, acks and trims, counted as one)",
            plan.redis_masters,
            plan.redis_masters_for_ops,
            group(plan.redis_ops)
        ),
        &[&costs.redis_ops_per_master_second],
    );
    line(
        &mut out,
        &format!(
            "Redis memory: {} for the hot set ({} keys) + {} for {} s of PostgreSQL outage \
             ({} writes queued); maxmemory {} per master (volatile-lru), {} in all with {} \
             replica(s) each; max_backlog_bytes {} holds that outage",
            bytes(plan.hot_set_bytes),
            group(demand.hot_keys as f64),
            bytes(plan.backlog_bytes),
            demand.outage_s,
            group(plan.rows * demand.outage_s),
            bytes(plan.maxmemory_per_master_bytes),
            bytes(plan.redis_memory_bytes),
            demand.replicas,
            bytes(plan.backlog_payload_bytes),
        ),
        &[
            &costs.redis_cached_key_overhead_bytes,
            &costs.redis_queued_write_overhead_bytes,
        ],
    );
    line(
        &mut out,
        &format!(
            "NIC: {:.1} Gbit/s in and {:.1} Gbit/s out over all boxes ({:.0} and {:.0} bytes per \
             request on the wire); one {} Gbit/s NIC carries at most {} requests/s of this mix \
             (from the API's request and response sizes and {WIRE_OVERHEAD_BYTES} bytes of \
             Ethernet, IP and TCP framing per packet)",
            plan.gbit_in,
            plan.gbit_out,
            plan.bytes_in,
            plan.bytes_out,
            demand.nic_gbit,
            group(plan.nic_ceiling_rps),
        ),
        &[],
    );
    line(
        &mut out,
        &format!(
            "PostgreSQL: {} rows/s; {} database core(s); batches of about {} rows (5 ms of a core's share)",
            group(plan.rows),
            plan.database_cores,
            plan.batch_rows
        ),
        &[&costs.writeback_rows_per_core_second],
    );
    line(
        &mut out,
        &format!(
            "load generator: {} requests in flight (rate x p99), {} connections at depth {}",
            group(plan.in_flight as f64),
            group(plan.connections as f64),
            demand.pipeline
        ),
        &[&costs.p99_ms],
    );
    out
}

/// Bytes in the largest binary unit that keeps the figure at 1 or more.
fn bytes(value: f64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// `1234567.8` as `1,234,568`.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.round());
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest.to_string()),
        None => ("", digits),
    };
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand() -> Demand {
        Demand {
            rps: 1_000_000.0,
            read_ratio: 0.9,
            value_bytes: 512,
            key_bytes: 16,
            cores_per_box: 32,
            nic_gbit: 25.0,
            headroom: 0.3,
            pipeline: 16,
            hot_keys: 10_000_000,
            outage_s: 60.0,
            replicas: 1,
            redis_memory_gib: 32.0,
        }
    }

    fn costs() -> Costs {
        let measured = |value: f64| Measured {
            value,
            source: "test".into(),
        };
        Costs {
            reads_per_core_second: measured(100_000.0),
            writes_per_core_second: measured(50_000.0),
            redis_ops_per_master_second: measured(500_000.0),
            writeback_rows_per_core_second: measured(200_000.0),
            p99_ms: measured(0.5),
            redis_cached_key_overhead_bytes: measured(100.0),
            redis_queued_write_overhead_bytes: measured(300.0),
        }
    }

    #[test]
    fn the_arithmetic() {
        let plan = plan(&demand(), &costs()).unwrap();
        // 900,000 / 100,000 + 100,000 / 50,000 = 11 core-seconds, at 70%: 15.7.
        assert_eq!(plan.executor_cores, 16);
        assert_eq!(plan.executors_per_box, 30);
        assert_eq!(plan.boxes, 1);
        // 900,000 + 2 x 100,000 = 1,100,000 commands, 350,000 per master.
        assert_eq!(plan.redis_ops, 1_100_000.0);
        assert_eq!(plan.redis_masters, 4);
        // A read: 64 + 16 in, 170 + 512 out; a write: 64 + 16 + 512 in, 170 out; 90 per packet.
        let bytes_in = 0.9 * (80.0 + 90.0) + 0.1 * (592.0 + 90.0);
        let bytes_out = 0.9 * (682.0 + 90.0) + 0.1 * (170.0 + 90.0);
        assert!((plan.bytes_in - bytes_in).abs() < 1e-9);
        assert!((plan.bytes_out - bytes_out).abs() < 1e-9);
        assert!((plan.gbit_out - 1e6 * bytes_out * 8.0 / 1e9).abs() < 1e-9);
        assert!((plan.nic_ceiling_rps - 25e9 / 8.0 / bytes_out).abs() < 1e-6);
        // 100,000 rows at 140,000 per core: 1 core, 500 rows per 5 ms.
        assert_eq!(plan.rows, 100_000.0);
        assert_eq!(plan.database_cores, 1);
        assert_eq!(plan.batch_rows, 500);
        // 1,000,000/s x 0.5 ms = 500 in flight, 32 connections of 16.
        assert_eq!(plan.in_flight, 500);
        assert_eq!(plan.connections, 32);
        // 10M keys x (100 + 16 + 512) bytes; 100,000 writes/s x 60 s x
        // (300 + 2 x 528) bytes; over 4 masters (the commands need 4, the
        // 6.7 GiB fit one) at 70%, and twice that with a replica each.
        assert!((plan.hot_set_bytes - 10e6 * 628.0).abs() < 1.0);
        assert!((plan.backlog_bytes - 6e6 * 1356.0).abs() < 1.0);
        assert!((plan.backlog_payload_bytes - 6e6 * 534.0).abs() < 1.0);
        assert_eq!((plan.redis_masters_for_ops, plan.redis_masters), (4, 4));
        let total = 10e6 * 628.0 + 6e6 * 1356.0;
        assert!((plan.maxmemory_per_master_bytes - total / 4.0 / 0.7).abs() < 1.0);
        assert!((plan.redis_memory_bytes - total / 0.7 * 2.0).abs() < 1.0);
    }

    #[test]
    fn memory_can_need_more_masters_than_the_commands() {
        let big = Demand {
            hot_keys: 1_000_000_000,
            redis_memory_gib: 16.0,
            ..demand()
        };
        let plan = plan(&big, &costs()).unwrap();
        // 628 GB of hot set at 70% of 16 GiB per master.
        let expected =
            ((1e9 * 628.0 + 6e6 * 1356.0) / (16.0 * (1u64 << 30) as f64 * 0.7)).ceil() as u64;
        assert_eq!(plan.redis_masters, expected);
        assert!(plan.redis_masters > plan.redis_masters_for_ops);
    }

    #[test]
    fn large_values_take_several_packets_and_fill_the_nic() {
        let big = Demand {
            value_bytes: 100_000,
            read_ratio: 1.0,
            nic_gbit: 10.0,
            ..demand()
        };
        let plan = plan(&big, &costs()).unwrap();
        let out = (170 + 100_000 + 70 * 90) as f64;
        assert!((plan.bytes_out - out).abs() < 1e-9, "{}", plan.bytes_out);
        assert_eq!(plan.database_cores, 0, "no writes, no rows");
        assert!(plan.boxes_for_nic > plan.boxes, "{plan:?}");
    }

    #[test]
    fn bad_demand_names_the_flag() {
        for (bad, flag) in [
            (
                Demand {
                    rps: 0.0,
                    ..demand()
                },
                "--rps",
            ),
            (
                Demand {
                    rps: -5.0,
                    ..demand()
                },
                "--rps",
            ),
            (
                Demand {
                    rps: f64::NAN,
                    ..demand()
                },
                "--rps",
            ),
            (
                Demand {
                    read_ratio: 1.5,
                    ..demand()
                },
                "--read-ratio",
            ),
            (
                Demand {
                    read_ratio: -0.1,
                    ..demand()
                },
                "--read-ratio",
            ),
            (
                Demand {
                    headroom: 1.0,
                    ..demand()
                },
                "--headroom",
            ),
            (
                Demand {
                    cores_per_box: 2,
                    ..demand()
                },
                "--cores-per-box",
            ),
            (
                Demand {
                    nic_gbit: 0.0,
                    ..demand()
                },
                "--nic-gbit",
            ),
            (
                Demand {
                    pipeline: 0,
                    ..demand()
                },
                "--pipeline",
            ),
            (
                Demand {
                    outage_s: -1.0,
                    ..demand()
                },
                "--outage-s",
            ),
            (
                Demand {
                    redis_memory_gib: 0.0,
                    ..demand()
                },
                "--redis-memory-gib",
            ),
        ] {
            let error = plan(&bad, &costs()).unwrap_err();
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn results_files_of_the_wrong_shape_are_refused() {
        let good = serde_json::json!({"plan_inputs": {
            "reads_per_core_second": {"value": 1.0, "source": "a"},
            "writes_per_core_second": {"value": 1.0, "source": "a"},
            "redis_ops_per_master_second": {"value": 1.0, "source": "a"},
            "writeback_rows_per_core_second": {"value": 1.0, "source": "a"},
            "p99_ms": {"value": 1.0, "source": "a"},
        }});
        assert!(Costs::from_json(&good.to_string()).is_ok());
        let mut missing = good.clone();
        missing["plan_inputs"]
            .as_object_mut()
            .unwrap()
            .remove("p99_ms");
        assert!(
            Costs::from_json(&missing.to_string())
                .unwrap_err()
                .contains("p99_ms")
        );
        let mut negative = good.clone();
        negative["plan_inputs"]["p99_ms"]["value"] = serde_json::json!(-1.0);
        assert!(
            Costs::from_json(&negative.to_string())
                .unwrap_err()
                .contains("plan_inputs.p99_ms must be a positive number")
        );
        assert!(Costs::from_json("[1, 2]").is_err());
        assert!(Costs::from_json("not json").is_err());
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(1_234_567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(-1000.0), "-1,000");
    }

    #[test]
    fn an_slo_result_sets_the_reads_per_core_and_the_p99() {
        let result = serde_json::json!({
            "objectives": [{"percentile": "p99", "quantile": 0.99, "below_ms": 1.0}],
            "best_rate_per_s": 28750.0,
            "best": {"shape": {"workload": "kv"}, "latency_ms": {"p99": 0.56}},
        });
        let costs = Costs::defaults()
            .with_slo(&result.to_string(), "r.json")
            .unwrap();
        assert_eq!(costs.reads_per_core_second.value, 28750.0);
        assert!(
            costs.reads_per_core_second.source.contains("p99<1"),
            "{}",
            costs.reads_per_core_second.source
        );
        assert_eq!(costs.p99_ms.value, 0.56);
        // Writes keep their own measurement.
        assert_eq!(
            costs.writes_per_core_second.value,
            Costs::defaults().writes_per_core_second.value
        );
        let none_met = serde_json::json!({"best_rate_per_s": null, "best": null});
        assert!(
            Costs::defaults()
                .with_slo(&none_met.to_string(), "r")
                .unwrap_err()
                .contains("no rate met")
        );
        let plaintext =
            serde_json::json!({"best_rate_per_s": 1.0, "best": {"shape": {"workload": "url"}}});
        assert!(
            Costs::defaults()
                .with_slo(&plaintext.to_string(), "r")
                .unwrap_err()
                .contains("GET /v1/kv")
        );
        assert!(Costs::defaults().with_slo("nope", "r").is_err());
    }
}
