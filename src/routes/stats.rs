//! `GET /v1/stats`: the queue's figures, read with one O(1) command from
//! the hash the database core refreshes every 250 ms. Nothing is counted
//! per request.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::{Command, Cx, OwnedReply, Request, Responder, Response, Sent, Status};
use crate::writeback::drain::STATS_KEY;

/// The hash fields read, in this order.
pub const FIELDS: [&[u8]; 6] = [
    b"accepted",
    b"written",
    b"backlog",
    b"oldest_ms",
    b"updated_ms",
    b"queue_losses",
];

/// Ask Redis for the figures; answer them as JSON.
pub fn handle(cx: &Cx<'_, ()>, _: &Request<'_>, response: Responder<'_>) -> Sent {
    if !cx.io().has_redis() {
        return super::no_redis(response);
    }
    let mut args: Vec<&[u8]> = vec![b"HMGET", STATS_KEY];
    args.extend_from_slice(&FIELDS);
    let figures = cx.io().redis(Command::new(&args, Some(1)));
    response.later(async move {
        let items = match figures.await {
            Ok(OwnedReply::Array(items)) => items,
            Ok(OwnedReply::Error(e)) => {
                return super::unavailable(&format!(
                    "could not be read: {}",
                    String::from_utf8_lossy(&e)
                ));
            }
            Ok(other) => {
                return super::unavailable(&format!(
                    "could not be read: an unexpected reply {other:?}"
                ));
            }
            Err(failure) => return super::unavailable(&format!("could not be read: {failure}")),
        };
        let mut values = [0i64; FIELDS.len()];
        for (value, item) in values.iter_mut().zip(&items) {
            *value = item
                .bytes()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
        }
        Response::json(Status::Ok, body(values))
    })
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
