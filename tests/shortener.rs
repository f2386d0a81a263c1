//! `examples/shortener`, a service built only on millrace's public API,
//! against a real Redis Cluster and PostgreSQL: its routes, its two
//! write-back tables (last writer wins, cached; append), read-through, its
//! own options, and exactly-once through a database core killed between
//! its commit and its acknowledgement.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::postgres::Postgres;
use common::{Response, Server, read_response, sample};
use millrace::redis::cluster::ClusterConfig;
use millrace::redis::command::Command as RedisCommand;
use millrace::redis::driver::Client;
use millrace::redis::resp::OwnedReply;
use millrace::writeback::queue::Queue;

fn request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    read_response(stream)
}

fn create(stream: &mut TcpStream, json: &str) -> Response {
    request(
        stream,
        "POST",
        "/links",
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    )
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The code in a 201's JSON body.
fn code_of(response: &Response) -> String {
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    body["code"].as_str().unwrap().to_string()
}

#[test]
fn links_are_created_followed_counted_and_written_back() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let shortener = common::example("shortener");
    let server = Server::start_program(
        &shortener,
        &[
            "--redis-seeds",
            &cluster.seed_list(),
            "--postgres-url",
            &postgres.url,
        ],
        // Its own option, from the environment.
        &[("SHORTENER_BASE_URL", "http://sho.rt/")],
    );
    let mut s = server.connect();

    // A generated code, and one of one's own.
    let made = request(
        &mut s,
        "POST",
        "/links",
        &[("Content-Type", "text/plain")],
        b"https://example.com/a?b=c",
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let code = code_of(&made);
    assert_eq!(code.len(), 7);
    assert_eq!(
        made.header("location"),
        Some(&*format!("http://sho.rt/{code}"))
    );
    let docs = create(&mut s, r#"{"url": "https://docs.rs", "code": "docs"}"#);
    assert_eq!(docs.status, 201, "{}", docs.text());
    // A code is taken once: the second creator gets 409, and the link is
    // the first one's.
    let taken = create(&mut s, r#"{"url": "https://evil.example", "code": "docs"}"#);
    assert_eq!(taken.status, 409, "{}", taken.text());
    for bad in [
        r#"{"url": "ftp://example.com"}"#,
        r#"{"url": "https://a b"}"#,
        r#"{"url": "https://x", "code": "no/slash"}"#,
        r#"{"link": "https://x"}"#,
        "not json",
    ] {
        assert_eq!(create(&mut s, bad).status, 400, "{bad}");
    }

    // Follow: 301 to the URL, each click counted.
    for _ in 0..5 {
        let followed = request(&mut s, "GET", &format!("/{code}"), &[], b"");
        assert_eq!(followed.status, 301);
        assert_eq!(
            followed.header("location"),
            Some("https://example.com/a?b=c")
        );
    }
    for _ in 0..3 {
        let followed = request(&mut s, "GET", "/docs", &[("Referer", "https://blog")], b"");
        assert_eq!(followed.header("location"), Some("https://docs.rs"));
    }
    assert_eq!(
        request(&mut s, "GET", "/nothing-here", &[], b"").status,
        404
    );
    assert_eq!(request(&mut s, "GET", "/bad%20code", &[], b"").status, 404);
    // Its health routes are millrace's.
    assert_eq!(request(&mut s, "GET", "/readyz", &[], b"").status, 200);

    // Deleted: gone at once, and in the database as a tombstone.
    assert_eq!(
        request(&mut s, "DELETE", "/links/docs", &[], b"").status,
        202
    );
    assert_eq!(request(&mut s, "GET", "/docs", &[], b"").status, 404);

    wait_until(
        "the links and clicks to be written back",
        Duration::from_secs(30),
        || {
            postgres.try_query("select count(*) from clicks").as_deref() == Some("8")
                && postgres
                    .try_query("select count(*) from links where code = 'docs' and url is null")
                    .as_deref()
                    == Some("1")
        },
    );
    assert_eq!(
        postgres.query(&format!("select url from links where code = '{code}'")),
        "https://example.com/a?b=c"
    );
    // Clicks by code, and how many had a referrer.
    let by_code = postgres.query(
        "select code || ' ' || count(*) || ' ' || count(referrer) from clicks group by code",
    );
    assert_eq!(
        sorted_lines(&by_code),
        sorted_lines(&format!("docs 3 3\n{code} 5 0"))
    );

    // Read-through: the cache entry gone (evicted, say), the link is read
    // from PostgreSQL, and put back into the cache.
    let mut client = Client::connect(ClusterConfig::new(cluster.seeds())).unwrap();
    let cache_key = Queue::new(16).cache_key("links", code.as_bytes());
    client.call(RedisCommand::del(&cache_key)).unwrap();
    let followed = request(&mut s, "GET", &format!("/{code}"), &[], b"");
    assert_eq!(followed.status, 301);
    assert_eq!(
        followed.header("location"),
        Some("https://example.com/a?b=c")
    );
    wait_until(
        "the cache to be filled again",
        Duration::from_secs(10),
        || {
            matches!(
                client.call(RedisCommand::get(&cache_key)),
                Ok(OwnedReply::Bulk(_))
            )
        },
    );

    // Metrics per route, under the names the service gave them.
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            r#"millrace_http_requests_total{core="0",route="follow",status="301"}"#
        ),
        9
    );
    assert_eq!(
        sample(
            &metrics,
            r#"millrace_http_requests_total{core="0",route="create",status="201"}"#
        ),
        2
    );
    assert_eq!(
        sample(
            &metrics,
            r#"millrace_http_requests_total{core="0",route="create",status="409"}"#
        ),
        1
    );
}

/// `text`'s lines, sorted.
fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// `shortener writeback` on its own, with `env`.
fn writeback(
    program: &std::path::Path,
    cluster: &RedisCluster,
    postgres: &Postgres,
    env: &[(&str, &str)],
) -> Child {
    Command::new(program)
        .arg("writeback")
        .env("MILLRACE_REDIS_SEEDS", cluster.seed_list())
        .env("MILLRACE_POSTGRES_URL", &postgres.url)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start shortener writeback")
}

#[test]
fn clicks_land_once_through_a_crash_between_commit_and_acknowledgement() {
    let cluster = RedisCluster::start(3, 0);
    let postgres = Postgres::start();
    let shortener = common::example("shortener");
    let redis = cluster.seed_list();
    // Links are made with the database core in the server (creating one
    // reads through), then the server runs without it, so that the clicks
    // wait in Redis for a database core of their own.
    let codes: Vec<String> = {
        let server = Server::start_program(
            &shortener,
            &["--redis-seeds", &redis, "--postgres-url", &postgres.url],
            &[],
        );
        let mut s = server.connect();
        let codes = (0..4)
            .map(|i| {
                let made = create(&mut s, &format!(r#"{{"url": "https://example.com/{i}"}}"#));
                assert_eq!(made.status, 201, "{}", made.text());
                code_of(&made)
            })
            .collect();
        wait_until(
            "the links to be written back",
            Duration::from_secs(30),
            || postgres.try_query("select count(*) from links").as_deref() == Some("4"),
        );
        let mut server = server;
        server.signal(libc::SIGTERM);
        assert!(server.wait().success());
        codes
    };
    let server = Server::start_program(&shortener, &["--redis-seeds", &redis], &[]);
    let mut s = server.connect();
    let clicks = 400;
    for i in 0..clicks {
        let followed = request(
            &mut s,
            "GET",
            &format!("/{}", codes[i % codes.len()]),
            &[],
            b"",
        );
        assert_eq!(followed.status, 301);
    }
    // The first database core dies after its first commit, before it
    // acknowledges: that batch is delivered again to the next one.
    let mut crashing = writeback(
        &shortener,
        &cluster,
        &postgres,
        &[("MILLRACE_FAULT", "kill-after-commit")],
    );
    let status = crashing.wait().unwrap();
    assert!(!status.success(), "the fault kills it");
    let committed: u64 = postgres
        .query("select count(*) from clicks")
        .parse()
        .unwrap();
    assert!(committed > 0, "it committed a batch before it died");
    let core = writeback(&shortener, &cluster, &postgres, &[]);
    wait_until("every click to be written", Duration::from_secs(60), || {
        postgres.try_query("select count(*) from clicks").as_deref() == Some(&*clicks.to_string())
    });
    // And stays so: nothing more comes.
    thread::sleep(Duration::from_millis(500));
    common::stop_writeback(core);
    assert_eq!(
        postgres.query("select count(*) from clicks"),
        clicks.to_string()
    );
    assert_eq!(
        postgres.query("select count(distinct (wb_partition, wb_version_ms, wb_version_seq, wb_row)) from clicks"),
        clicks.to_string()
    );
    for code in &codes {
        assert_eq!(
            postgres.query(&format!(
                "select count(*) from clicks where code = '{code}'"
            )),
            (clicks / codes.len()).to_string()
        );
    }
}
