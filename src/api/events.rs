//! `POST /v1/events`: an `EventBatch` (FlatBuffers, or the same in JSON)
//! verified, then queued in Redis as one write-back entry; 202 with the
//! count once Redis has it, 503 if Redis cannot take it. Nothing is queued
//! for a refused request.

use crate::http::{Rejection, Request, ResponseWriter, Sent, Status};
use crate::load::workload::FLATBUFFERS_CONTENT_TYPE;
use crate::payload::{Invalid, event_batch_from_json, verify_event_batch};

use super::{Answer, Outgoing, WritePath};

/// Verify and queue, or refuse.
pub fn handle(
    request: &Request<'_>,
    response: ResponseWriter<'_>,
    writes: Option<&WritePath>,
    outgoing: &mut Vec<Outgoing>,
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
    let Some(writes) = writes else {
        return response.reject_with_headers(
            Rejection::new(Status::ServiceUnavailable, "no Redis Cluster is configured"),
            &[("Retry-After", "1")],
        );
    };
    // Verified once; the queue entry carries the first key (its partition)
    // and the count, read here.
    let converted;
    let bytes: &[u8] = if json {
        match event_batch_from_json(request.body, &writes.limits) {
            Ok(bytes) => {
                converted = bytes;
                &converted
            }
            Err(why) => return bad_request(response, &why),
        }
    } else {
        request.body
    };
    let command = match verify_event_batch(bytes, &writes.limits) {
        Ok(batch) => {
            let count = batch.events().len() as u32;
            let key = batch.events().get(0).key().as_bytes();
            let command = writes
                .queue
                .append_batch(key, count, bytes, writes.caps)
                .command();
            (command, count, writes.queue.partition_of(key))
        }
        Err(why) => return bad_request(response, &why),
    };
    outgoing.push(Outgoing {
        command: command.0,
        answer: Answer::Events {
            count: command.1,
            json,
            partition: command.2,
        },
    });
    response.defer()
}

fn bad_request(response: ResponseWriter<'_>, why: &Invalid) -> Sent {
    let body = format!("{why}\n");
    response.send(
        Status::BadRequest,
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
}
