//! A URL shortener, built only on millrace's public API, as a service of
//! one's own would be:
//!
//! - `POST /links`: a URL (`text/plain`), or `{"url": "...", "code": "..."}`
//!   (`application/json`; the code is optional): a new link, answered 201
//!   with its code and short URL. A code is taken only if free (the write
//!   is create-only, `If-None-Match: *`): a code of one's own that is taken
//!   gets 409, a generated one is drawn again.
//! - `GET /{code}`: 301 to the link's URL, from the Redis cache, read
//!   through from PostgreSQL on a miss; each click is queued for the
//!   `clicks` table, and the answer does not wait for it.
//! - `DELETE /links/{code}`: 202; the code answers 404 from then on.
//! - `GET /livez`, `GET /readyz`: millrace's health routes.
//!
//! Two write-back tables: `links` (last writer wins by code, cached) and
//! `clicks` (append, each click once). Run with a Redis Cluster and
//! PostgreSQL (`postgres_url`: creating a link reads through, to know a
//! code is free):
//!
//! ```sh
//! cargo run --release --example shortener -- serve --listen 127.0.0.1:8080 \
//!   --redis-seeds 127.0.0.1:7000 --postgres-url postgres://millrace:millrace@127.0.0.1:5440/millrace \
//!   --base-url http://127.0.0.1:8080
//! ```

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use millrace::App;
use millrace::app::{
    ColumnType, Cx, Fields, Merge, Preconditions, Rejection, Request, Responder, Response, Routes,
    Row, Sent, Status, Table, TagList, WriteError,
};
use millrace::rng::Rng;

/// The shortener's own options, beside millrace's.
#[derive(clap::Args, Debug)]
struct Options {
    /// Where short URLs point: the start of each `short_url` answered
    #[arg(
        long,
        env = "SHORTENER_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    base_url: String,
    /// Characters in a generated code, from 4 to 32
    #[arg(long, env = "SHORTENER_CODE_LENGTH", default_value_t = 7)]
    code_length: usize,
}

/// Longest URL a link may hold, in bytes.
const MAX_URL_BYTES: usize = 2048;

/// Longest code, in bytes.
const MAX_CODE_BYTES: usize = 64;

/// Codes drawn for one link before giving up on finding a free one.
const CODE_TRIES: usize = 3;

/// What each core keeps for itself: no locks, no atomics.
struct State {
    /// Draws codes.
    rng: RefCell<Rng>,
    /// Clicks whose queueing failed, since start.
    clicks_lost: Cell<u64>,
    base_url: Rc<str>,
    code_length: usize,
}

fn main() -> ExitCode {
    millrace::server::program::run::<Options, State>(
        "shortener",
        "A URL shortener on millrace",
        |options| {
            let base_url: Rc<str> = options.base_url.trim_end_matches('/').into();
            let code_length = options.code_length.clamp(4, 32);
            let base_url = base_url.to_string();
            App::new(move |core| State {
                rng: RefCell::new(Rng::new(seed(core.index))),
                clicks_lost: Cell::new(0),
                base_url: base_url.as_str().into(),
                code_length,
            })
            .routes(routes())
            .table(links())
            .table(clicks())
        },
    )
}

/// A different seed per core and per start.
fn seed(core: usize) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (core as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn routes() -> Routes<State> {
    millrace::routes::health()
        .post("/links", create)
        .named("create")
        .delete("/links/{code}", delete)
        .named("delete")
        .get("/{code}", follow)
        .named("follow")
}

/// `links`: each code's URL, the newest write winning; cached in Redis.
fn links() -> Table {
    Table::new(
        "links",
        &[("code", ColumnType::Text), ("url", ColumnType::Text)],
        Merge::LastWriterWins {
            key: "code".into(),
            touched: Some("updated_at".into()),
        },
        "create table if not exists links (
            code text primary key,
            url text,
            version_ms bigint not null,
            version_seq bigint not null,
            updated_at timestamptz not null default now()
        )",
    )
    .and_then(|table| table.cached(None))
    .expect("the links table's declaration is valid")
}

/// `clicks`: one row per click, each exactly once.
fn clicks() -> Table {
    Table::new(
        "clicks",
        &[
            ("code", ColumnType::Text),
            ("clicked_at", ColumnType::Timestamptz),
            ("referrer", ColumnType::Text),
        ],
        Merge::Append,
        "create table if not exists clicks (
            code text not null,
            clicked_at timestamptz not null,
            referrer text,
            wb_partition integer not null,
            wb_version_ms bigint not null,
            wb_version_seq bigint not null,
            wb_row integer not null,
            primary key (wb_partition, wb_version_ms, wb_version_seq, wb_row)
        )",
    )
    .expect("the clicks table's declaration is valid")
}

/// `POST /links`.
fn create(cx: &Cx<'_, State>, request: &Request<'_>, response: Responder<'_>) -> Sent {
    let (url, own_code) = match link_of(request) {
        Ok(link) => link,
        Err(why) => return response.reject(Rejection::new(Status::BadRequest, why)),
    };
    let state = Rc::clone(cx.state());
    let store = cx.store().clone();
    let value = Row::new().text(&url).into_bytes();
    let create_only = Preconditions {
        if_match: None,
        if_none_match: Some(TagList::Any),
    };
    response.later(async move {
        for _ in 0..CODE_TRIES {
            let code = match &own_code {
                Some(code) => code.clone(),
                None => draw_code(&state),
            };
            match store
                .write("links", code.as_bytes(), Some(&value), &create_only)
                .await
            {
                Ok(_) => {
                    let short_url = format!("{}/{code}", state.base_url);
                    let body = format!(
                        "{{\"code\":{},\"url\":{},\"short_url\":{}}}",
                        json_string(&code),
                        json_string(&url),
                        json_string(&short_url)
                    );
                    return Response::json(Status::Created, body).header("Location", &short_url);
                }
                Err(WriteError::PreconditionFailed(_)) if own_code.is_some() => {
                    return Response::text(Status::Conflict, "that code is taken\n");
                }
                // A drawn code that is taken: draw another.
                Err(WriteError::PreconditionFailed(_)) => {}
                Err(e) => return refused(&e),
            }
        }
        Response::text(
            Status::ServiceUnavailable,
            "no free code was found; retry\n",
        )
        .header("Retry-After", "1")
    })
}

/// `DELETE /links/{code}`.
fn delete(cx: &Cx<'_, State>, request: &Request<'_>, response: Responder<'_>) -> Sent {
    let Some(code) = request.param("code").filter(|c| is_code(c)) else {
        return response.reject(Rejection::new(Status::NotFound, "no such link"));
    };
    let deleted = cx
        .store()
        .write("links", code, None, &Preconditions::default());
    response.later(async move {
        match deleted.await {
            Ok(_) => Response::new(Status::Accepted),
            Err(e) => refused(&e),
        }
    })
}

/// `GET /{code}`: the redirect, and the click queued beside it.
fn follow(cx: &Cx<'_, State>, request: &Request<'_>, response: Responder<'_>) -> Sent {
    let Some(code) = request.param("code").filter(|c| is_code(c)) else {
        return response.reject(Rejection::new(Status::NotFound, "no such link"));
    };
    let read = cx.store().read("links", code);
    let (store, state) = (cx.store().clone(), Rc::clone(cx.state()));
    let code = String::from_utf8_lossy(code).into_owned();
    let referrer = request
        .header("referer")
        .and_then(|r| std::str::from_utf8(r).ok())
        .map(str::to_string);
    response.later(async move {
        let found = match read.await {
            Ok(found) => found,
            Err(e) => {
                return Response::text(Status::ServiceUnavailable, format!("{e}\n"))
                    .header("Retry-After", "1");
            }
        };
        let url = match found.cached() {
            Ok(millrace::app::Cached::Value { value, .. }) => {
                Fields::new(value).text().map(str::to_string)
            }
            _ => None,
        };
        let Some(url) = url else {
            return Response::text(Status::NotFound, "no such link\n");
        };
        let mut click = Row::new().text(&code).timestamp_us(now_us());
        click = match &referrer {
            Some(referrer) => click.text(referrer),
            None => click.null(),
        };
        let queued = store.append("clicks", code.as_bytes(), &click.into_bytes(), 1);
        // The redirect does not wait for the click.
        store.io().spawn(async move {
            if let Err(e) = queued.await {
                state.clicks_lost.set(state.clicks_lost.get() + 1);
                tracing::warn!(
                    lost = state.clicks_lost.get(),
                    "a click was not queued: {e}"
                );
            }
        });
        Response::new(Status::MovedPermanently).header("Location", &url)
    })
}

/// The URL and the code asked for, from a request's body.
fn link_of(request: &Request<'_>) -> Result<(String, Option<String>), &'static str> {
    let json = request
        .header("content-type")
        .is_some_and(|t| t.starts_with(b"application/json"));
    let (url, code) = if json {
        let value: serde_json::Value =
            serde_json::from_slice(request.body()).map_err(|_| "the body is not JSON")?;
        let url = value
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or("the JSON has no \"url\" string")?;
        let code = match value.get("code") {
            None | Some(serde_json::Value::Null) => None,
            Some(code) => Some(
                code.as_str()
                    .ok_or("\"code\" must be a string")?
                    .to_string(),
            ),
        };
        (url.to_string(), code)
    } else {
        let url = std::str::from_utf8(request.body()).map_err(|_| "the URL is not UTF-8")?;
        (url.trim().to_string(), None)
    };
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    // Visible ASCII only: it goes back out in a Location field.
    if !scheme_ok || url.len() > MAX_URL_BYTES || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the URL must be http:// or https://, at most 2048 visible ASCII characters");
    }
    if code.as_ref().is_some_and(|c| !is_code(c.as_bytes())) {
        return Err("a code is 1 to 64 letters, digits, - or _");
    }
    Ok((url, code))
}

fn is_code(code: &[u8]) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE_BYTES
        && code
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// A new code from this core's generator.
fn draw_code(state: &State) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = state.rng.borrow_mut();
    (0..state.code_length)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// What a refused write is answered with.
fn refused(error: &WriteError) -> Response {
    match error {
        WriteError::BadInput(why) => Response::text(Status::BadRequest, format!("{why}\n")),
        WriteError::Invalid(why) => Response::text(Status::InternalServerError, format!("{why}\n")),
        _ => Response::text(Status::ServiceUnavailable, format!("{error}\n"))
            .header("Retry-After", "1"),
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
