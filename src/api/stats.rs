//! `GET /v1/stats`: the queue's figures, read with one O(1) command from
//! the hash the database core refreshes every 250 ms. Nothing is counted
//! per request.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::http::{Rejection, ResponseWriter, Sent, Status};
use crate::redis::command::Command;
use crate::writeback::core::STATS_KEY;

use super::{Answer, Outgoing, WritePath};

/// The hash fields read, in this order.
pub const FIELDS: [&[u8]; 6] = [
    b"accepted",
    b"written",
    b"backlog",
    b"oldest_ms",
    b"updated_ms",
    b"queue_losses",
];

/// Ask Redis for the figures.
pub fn handle(
    response: ResponseWriter<'_>,
    writes: Option<&WritePath>,
    outgoing: &mut Vec<Outgoing>,
) -> Sent {
    if writes.is_none() {
        return response.reject_with_headers(
            Rejection::new(Status::ServiceUnavailable, "no Redis Cluster is configured"),
            &[("Retry-After", "1")],
        );
    }
    let mut args: Vec<&[u8]> = vec![b"HMGET", STATS_KEY];
    args.extend_from_slice(&FIELDS);
    outgoing.push(Outgoing {
        command: Command::new(&args, Some(1)),
        answer: Answer::Stats,
    });
    response.defer()
}

/// The JSON body from the fields' values (absent ones read as 0).
pub fn body(values: [i64; FIELDS.len()]) -> String {
    let [
        accepted,
        written,
        backlog,
        oldest_ms,
        updated_ms,
        queue_losses,
    ] = values;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let oldest_age_ms = if backlog > 0 && oldest_ms > 0 {
        (now_ms - oldest_ms).max(0)
    } else {
        0
    };
    // null until a database core has published anything.
    let as_of = if updated_ms > 0 {
        (now_ms - updated_ms).max(0).to_string()
    } else {
        "null".to_string()
    };
    format!(
        "{{\"accepted\":{accepted},\"written\":{written},\"backlog\":{backlog},\
         \"oldest_pending_age_ms\":{oldest_age_ms},\"figures_age_ms\":{as_of},\
         \"queue_losses\":{queue_losses}}}"
    )
}
