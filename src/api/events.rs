//! `POST /v1/events`: an `EventBatch` (FlatBuffers, or the same in JSON)
//! verified, then queued in Redis as one write-back entry; 202 with the
//! count once Redis has it, 503 if Redis cannot take it. Nothing is queued
//! for a refused request.

use crate::http::{Rejection, Request, ResponseWriter, Sent, Status};
use crate::load::workload::FLATBUFFERS_CONTENT_TYPE;
use crate::payload::{event_batch_from_json, verify_event_batch};
use crate::writeback::queue::Record;

use super::{Answer, Outgoing, WritePath};

/// Verify and queue, or refuse.
pub fn handle(
    request: &Request<'_>,
    response: ResponseWriter<'_>,
    writes: Option<&WritePath>,
    outgoing: &mut Option<Outgoing>,
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
    let batch = if json {
        event_batch_from_json(request.body, &writes.limits)
    } else {
        verify_event_batch(request.body, &writes.limits).map(|_| request.body.to_vec())
    };
    let record = match batch.and_then(Record::events) {
        Ok(record) => record,
        Err(why) => {
            let body = format!("{why}\n");
            return response.send(
                Status::BadRequest,
                "text/plain; charset=utf-8",
                body.as_bytes(),
            );
        }
    };
    let count = record.rows() as u32;
    *outgoing = Some(Outgoing {
        command: writes
            .queue
            .append_capped(&record, writes.backlog_cap_per_partition),
        answer: Answer::Events { count, json },
    });
    response.defer()
}
