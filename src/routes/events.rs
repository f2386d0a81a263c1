//! `POST /v1/events`: an `EventBatch` (FlatBuffers, or the same in JSON)
//! verified, then queued in Redis as one write-back record of the `events`
//! table; 202 with the count once Redis has it, 503 if Redis cannot take
//! it. Nothing is queued for a refused request.

use crate::app::{
    ColumnType, Cx, Merge, Rejection, Request, Responder, Response, Routes, Sent, Status, Table,
    WriteError,
};
use crate::payload::{
    BatchLimits, CONTENT_TYPE as FLATBUFFERS_CONTENT_TYPE, Invalid, encode_accepted,
    event_batch_from_json, verify_event_batch,
};
use crate::writeback::table::{RecordRef, RowWriter};

/// The table's name.
pub const TABLE: &str = "events";

/// The `events` table: each event once, by the client's 16-byte id, its
/// deliveries counted. A record is a whole batch: a row per event.
pub fn table() -> Table {
    Table::new(
        TABLE,
        &[
            ("client_id", ColumnType::Bytea),
            ("key", ColumnType::Bytea),
            ("kind", ColumnType::Int4),
            ("timestamp_us", ColumnType::Int8),
            ("payload", ColumnType::Bytea),
        ],
        Merge::InsertOnce {
            id: "client_id".into(),
            deliveries: Some("deliveries".into()),
        },
        include_str!("../../schemas/sql/events.sql"),
    )
    .map(|t| t.with_rows(rows))
    .expect("the events table's declaration is valid")
}

/// A row per event of the batch. Batches are verified at the door; one
/// that does not verify here (a corrupted entry) makes no row.
fn rows(_: &Table, record: RecordRef<'_>, out: &mut RowWriter) -> Result<(), String> {
    let Some(batch) = record.payload else {
        return Err("an event record has no batch".into());
    };
    let batch = verify_event_batch(batch, &BatchLimits::unlimited())
        .map_err(|why| format!("an unreadable event batch: {why}"))?;
    for event in batch.events() {
        let client_id: &[u8] = &event.client_id().0;
        let kind = event.kind().to_be_bytes();
        let timestamp_us = event.timestamp_us().to_be_bytes();
        let payload: &[u8] = event.payload().map_or(&[], |p| p.bytes());
        out.row(&[
            Some(client_id),
            Some(event.key().as_bytes()),
            Some(&kind),
            Some(&timestamp_us),
            Some(payload),
        ]);
    }
    Ok(())
}

/// The queue record of an `EventBatch` buffer, verified here (for tools
/// and tests that queue batches themselves).
pub fn record(batch: Vec<u8>) -> Result<crate::writeback::queue::Record, Invalid> {
    let parsed = verify_event_batch(&batch, &BatchLimits::unlimited())?;
    let key = parsed.events().get(0).key().as_bytes();
    let count = parsed.events().len() as u32;
    Ok(crate::writeback::queue::Record::new(
        TABLE,
        key,
        Some(&batch),
        count,
    ))
}

/// `POST /v1/events`, batches held to `limits`.
pub fn routes(limits: BatchLimits) -> Routes<()> {
    Routes::new()
        .post(
            "/v1/events",
            move |cx: &Cx<'_, ()>, request: &Request<'_>, response: Responder<'_>| {
                post(cx, request, response, &limits)
            },
        )
        .named("events")
        .protected()
}

/// Verify and queue, or refuse.
fn post(
    cx: &Cx<'_, ()>,
    request: &Request<'_>,
    response: Responder<'_>,
    limits: &BatchLimits,
) -> Sent {
    let content_type = request
        .header("content-type")
        .map(|v| {
            v.split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
        .unwrap_or_default();
    let json = content_type.eq_ignore_ascii_case(b"application/json");
    if !json && !content_type.eq_ignore_ascii_case(FLATBUFFERS_CONTENT_TYPE.as_bytes()) {
        return response.reject(Rejection::new(
            Status::UnsupportedMediaType,
            "Content-Type must be application/x-flatbuffers or application/json",
        ));
    }
    if !cx.io().has_redis() {
        return super::no_redis(response);
    }
    // Verified once; the record carries the first key (its partition) and
    // the count, read here.
    let converted;
    let bytes: &[u8] = if json {
        match event_batch_from_json(request.body(), limits) {
            Ok(bytes) => {
                converted = bytes;
                &converted
            }
            Err(why) => return bad_request(response, &why),
        }
    } else {
        request.body()
    };
    let queued = match verify_event_batch(bytes, limits) {
        Ok(batch) => {
            let count = batch.events().len() as u32;
            let key = batch.events().get(0).key().as_bytes();
            let queued = cx.store().append(TABLE, key, bytes, count);
            (queued, count)
        }
        Err(why) => return bad_request(response, &why),
    };
    let (queued, count) = queued;
    response.later(async move {
        match queued.await {
            Ok(_) if json => Response::json(Status::Accepted, format!("{{\"count\":{count}}}")),
            Ok(_) => Response::new(Status::Accepted)
                .body(FLATBUFFERS_CONTENT_TYPE, encode_accepted(count)),
            Err(e @ (WriteError::Unavailable(_) | WriteError::Unconfirmed { .. })) => {
                super::unavailable(&e.to_string())
            }
            Err(e) => Response::text(Status::InternalServerError, format!("{e}\n")),
        }
    })
}

fn bad_request(response: Responder<'_>, why: &Invalid) -> Sent {
    let body = format!("{why}\n");
    response.send(
        Status::BadRequest,
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
}
