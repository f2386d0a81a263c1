//! The HTTPS listener against real clients: curl, `openssl s_client` and
//! Python's ssl module, with certificates from `scripts/tls-certs.sh`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{RedisCluster, TLS_OFFSET};
use common::postgres::Postgres;
use common::tls::{cert, certs, curl, python, s_client, text};
use common::{PATIENCE, Server, closed_by_server, kv, sample};

/// A server with HTTPS on a free port, the test certificate, and `args`.
fn https_server(args: &[&str]) -> Server {
    https_server_with("server", args)
}

/// The flags of an HTTPS listener on a free port serving `pem` and `key`.
fn tls_flags<'a>(pem: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        pem,
        "--tls-key-file",
        key,
    ]
}

/// [`https_server`] serving the certificate `name`.pem.
fn https_server_with(name: &str, args: &[&str]) -> Server {
    let (pem, key) = (cert(&format!("{name}.pem")), cert(&format!("{name}.key")));
    let mut full = tls_flags(&pem, &key);
    full.extend_from_slice(args);
    let server = Server::start(&full);
    assert!(server.tls_addr.is_some(), "{}", server.log());
    server
}

/// `https://localhost:port/path` on `server`'s HTTPS listener.
fn url(server: &Server, path: &str) -> String {
    format!(
        "https://localhost:{}{path}",
        server.tls_addr.unwrap().port()
    )
}

/// `--resolve` so that localhost is 127.0.0.1 whatever /etc/hosts says.
fn resolve(server: &Server) -> String {
    format!("localhost:{}:127.0.0.1", server.tls_addr.unwrap().port())
}

/// curl to `path` on `server`'s HTTPS listener as `localhost`, trusting the
/// test CA, with `extra` flags.
fn curl_https(server: &Server, path: &str, extra: &[&str]) -> std::process::Output {
    let (ca, resolve, url) = (cert("ca.pem"), resolve(server), url(server, path));
    let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn port(server: &Server) -> String {
    server.tls_addr.unwrap().port().to_string()
}

/// Python: connect with TLS (verifying against the test CA unless told
/// otherwise), send requests, print what came back.
const PY_CLIENT: &str = r#"
import socket, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=sys.argv[3])
def connect(session=None, max_version=None):
    if max_version:
        ctx.maximum_version = max_version
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(s, server_hostname="localhost", session=session)
def answers(t, n):
    data = b""
    while data.count(b"HTTP/1.1 200 OK") < n or not data.endswith(b"Hello, World!"):
        chunk = t.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.count(b"HTTP/1.1 200 OK")
if mode == "pipeline":
    t = connect()
    t.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
    print("answers", answers(t, 200), t.version(), t.selected_alpn_protocol())
elif mode == "resume":
    ctx.set_alpn_protocols(["http/1.1"])
    for version in [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]:
        first = connect(max_version=version)
        first.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        answers(first, 1)
        session = first.session
        first.close()
        second = connect(session=session, max_version=version)
        second.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        print(second.version(), "reused", second.session_reused, "answers", answers(second, 1),
              second.selected_alpn_protocol())
        second.close()
"#;

#[test]
fn https_beside_http_serves_curl_openssl_and_python() {
    let server = https_server(&[]);
    let ca = cert("ca.pem");

    let out = curl_https(&server, "/plaintext", &["-v"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Hello, World!"), "{said}");
    assert!(said.contains("TLSv1.3"), "{said}");
    assert!(said.contains("ALPN: server accepted http/1.1"), "{said}");
    // The plain listener goes on beside it.
    assert_eq!(server.get("/plaintext").status, 200);

    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(&[
            flag,
            "-connect",
            &format!("127.0.0.1:{}", port(&server)),
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-alpn",
            "http/1.1",
        ]);
        let said = text(&out);
        assert!(
            said.contains(&format!("New, {protocol}, Cipher is")),
            "{said}"
        );
        assert!(said.contains("Verify return code: 0 (ok)"), "{said}");
        assert!(said.contains("ALPN protocol: http/1.1"), "{said}");
    }

    // 200 requests in one write, answered in order over one session.
    let out = python(PY_CLIENT, &[&port(&server), "pipeline", &ca]);
    assert_eq!(
        text(&out).trim(),
        "answers 200 TLSv1.3 None",
        "{}",
        text(&out)
    );

    // Tickets resume both versions, and ALPN is agreed again.
    let out = python(PY_CLIENT, &[&port(&server), "resume", &ca]);
    assert_eq!(
        text(&out).trim(),
        "TLSv1.3 reused True answers 1 http/1.1\nTLSv1.2 reused True answers 1 http/1.1",
        "{}",
        text(&out)
    );

    let metrics = server.metrics();
    let full = "millrace_tls_handshakes_total{core=\"0\",kind=\"full\"}";
    let resumed = "millrace_tls_handshakes_total{core=\"0\",kind=\"resumed\"}";
    // curl, two s_clients, the pipelining client, the first of each pair.
    assert_eq!(sample(&metrics, full), 6, "{metrics}");
    assert_eq!(sample(&metrics, resumed), 2, "{metrics}");
    assert_eq!(
        sample(&metrics, "millrace_tls_errors_total{core=\"0\"}"),
        0,
        "{metrics}"
    );
}

#[test]
fn a_client_refuses_what_it_should_and_the_server_refuses_old_versions() {
    // Expired, for another host, from a CA nobody trusts: curl says the
    // peer failed verification (exit 60).
    for name in ["expired", "other-host", "stranger"] {
        let server = https_server_with(name, &[]);
        let out = curl_https(&server, "/plaintext", &[]);
        assert_eq!(out.status.code(), Some(60), "{name}: {}", text(&out));
        let said = text(&out);
        let why = match name {
            "expired" => "expired",
            "other-host" => "localhost",
            _ => "issuer",
        };
        assert!(said.contains(why), "{name}: {said}");
    }

    // TLS 1.0 and 1.1: the server answers with an alert and nothing else.
    let server = https_server(&[]);
    for flag in ["-tls1", "-tls1_1"] {
        let out = s_client(&[
            flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
            &format!("127.0.0.1:{}", port(&server)),
        ]);
        let said = text(&out);
        assert!(!out.status.success(), "{flag}: {said}");
        assert!(said.contains("alert"), "{flag}: {said}");
        assert!(said.contains("Cipher is (NONE)"), "{flag}: {said}");
    }
    // A client that offers ALPN without http/1.1 is refused with the alert
    // that says so.
    let out = s_client(&[
        "-alpn",
        "h2",
        "-connect",
        &format!("127.0.0.1:{}", port(&server)),
    ]);
    assert!(
        text(&out).contains("no application protocol"),
        "{}",
        text(&out)
    );
    let metrics = server.metrics();
    assert_eq!(
        sample(&metrics, "millrace_tls_errors_total{core=\"0\"}"),
        3,
        "{metrics}"
    );
    // Nothing was served before those handshakes failed.
    assert_eq!(
        sample(
            &metrics,
            "millrace_tls_handshakes_total{core=\"0\",kind=\"full\"}"
        ),
        0
    );
}

#[test]
fn client_certificates_are_required_when_a_client_ca_is_set() {
    let client_ca = cert("client-ca.pem");
    let server = https_server(&["--tls-client-ca-file", &client_ca]);
    let (client, client_key) = (cert("client.pem"), cert("client.key"));
    let out = curl_https(
        &server,
        "/plaintext",
        &["--cert", &client, "--key", &client_key],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Hello, World!"));

    // None, and one from a CA the server does not trust: refused.
    let (stranger, stranger_key) = (cert("stranger-client.pem"), cert("stranger-client.key"));
    let strange = ["--cert", stranger.as_str(), "--key", stranger_key.as_str()];
    for (what, extra) in [
        ("no certificate", &[][..]),
        ("an untrusted one", &strange[..]),
    ] {
        let out = curl_https(&server, "/plaintext", extra);
        assert!(!out.status.success(), "{what}: {}", text(&out));
        assert!(!text(&out).contains("Hello"), "{what}: {}", text(&out));
    }
    let metrics = server.metrics();
    assert_eq!(
        sample(&metrics, "millrace_tls_errors_total{core=\"0\"}"),
        2,
        "{metrics}"
    );
}

/// Python: handshake over memory BIOs, one request, then `how` breaks the
/// stream: a record that does not decrypt, or a close_notify. Prints what
/// the server did.
const PY_BREAK: &str = r#"
import socket, ssl, sys
port, how, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = socket.create_connection(("127.0.0.1", port), timeout=5)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inc, out, server_hostname="localhost")
def pump():
    data = out.read()
    if data:
        s.sendall(data)
while True:
    try:
        t.do_handshake()
        break
    except ssl.SSLWantReadError:
        pump()
        inc.write(s.recv(65536))
pump()
t.write(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
pump()
got = b""
while b"Hello, World!" not in got:
    try:
        got += t.read(65536)
    except ssl.SSLWantReadError:
        inc.write(s.recv(65536))
if how == "garbage":
    # An application-data record whose tag cannot check out.
    s.sendall(bytes([23, 3, 3, 0, 32]) + bytes(32))
else:
    try:
        t.unwrap()
    except ssl.SSLWantReadError:
        pass
    pump()
rest = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    rest += chunk
print("answered", b"200 OK" in got, "closed after", len(rest), "bytes")
"#;

#[test]
fn garbage_alerts_and_stalled_handshakes_end_only_their_own_connection() {
    let server = https_server(&["--tls-handshake-timeout-ms", "1000"]);
    let ca = cert("ca.pem");
    let tls = server.tls_addr.unwrap();

    // A connection that never speaks, one that stops inside its
    // ClientHello: neither keeps anyone else waiting, both are closed when
    // the handshake timeout passes.
    let started = Instant::now();
    let mut silent = TcpStream::connect(tls).unwrap();
    let mut partial = TcpStream::connect(tls).unwrap();
    partial.write_all(&[22, 3, 1, 0x02, 0x00, 1, 0]).unwrap();
    for stream in [&silent, &partial] {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    let out = curl_https(&server, "/plaintext", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(closed_by_server(&mut silent));
    assert!(closed_by_server(&mut partial));
    assert!(started.elapsed() >= Duration::from_millis(950));

    // Plain HTTP on the TLS port: an alert record, then the close.
    let mut plain = TcpStream::connect(tls).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&21), "{answer:?}");

    // Mid-stream: a record that does not decrypt ends the connection; a
    // close_notify ends it cleanly.
    for (how, expect) in [
        ("garbage", "answered True closed after"),
        ("close", "answered True closed after 0 bytes"),
    ] {
        let out = python(PY_BREAK, &[&tls.port().to_string(), how, &ca]);
        assert!(out.status.success(), "{how}: {}", text(&out));
        assert!(text(&out).starts_with(expect), "{how}: {}", text(&out));
    }

    // The server is none the worse.
    let out = curl_https(&server, "/plaintext", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_connection_timeouts_total{core=\"0\",kind=\"handshake\"}"
        ),
        2,
        "{metrics}"
    );
    // The plaintext request and the bad record.
    assert_eq!(
        sample(&metrics, "millrace_tls_errors_total{core=\"0\"}"),
        2,
        "{metrics}"
    );
}

/// The certificate the server presents now, as PEM, unverified.
fn presented(server: &Server) -> String {
    let out = python(
        "import ssl, sys; print(ssl.get_server_certificate(('127.0.0.1', int(sys.argv[1]))))",
        &[&port(server)],
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The PEM certificate in `path`, as Python prints it.
fn pem_of(path: &std::path::Path) -> String {
    let out = python(
        "import ssl, sys; print(ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())))",
        &[path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_certificate_reloads_on_sighup_and_on_change_and_a_bad_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("millrace-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pem, key) = (dir.join("cert.pem"), dir.join("cert.key"));
    let install = |name: &str| {
        let source = certs();
        std::fs::copy(source.join(format!("{name}.key")), &key).unwrap();
        std::fs::copy(source.join(format!("{name}.pem")), &pem).unwrap();
    };
    install("server");
    let server = Server::start(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        pem.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ]);
    let source = certs();
    assert_eq!(presented(&server), pem_of(&source.join("server.pem")));

    // SIGHUP: new connections get the new certificate.
    install("stranger");
    server.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", || {
        server.log().contains("TLS certificate reloaded")
    });
    assert_eq!(presented(&server), pem_of(&source.join("stranger.pem")));

    // A file that is not a certificate: an error, and the old one stays.
    std::fs::write(&pem, "not a certificate\n").unwrap();
    server.signal(libc::SIGHUP);
    wait_for("the refused reload", || {
        server.log().contains("TLS certificate not reloaded")
    });
    assert!(server.log().contains("cert.pem"), "{}", server.log());
    assert_eq!(presented(&server), pem_of(&source.join("stranger.pem")));

    // A change alone is noticed, no signal needed.
    install("other-host");
    wait_for("the reload on change", || {
        presented(&server) == pem_of(&source.join("other-host.pem"))
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_options_are_checked() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap()
    };
    let missing = cert("server.pem").replace("server.pem", "absent.pem");
    let (pem, key, other_key) = (cert("server.pem"), cert("server.key"), cert("client.key"));
    for (args, says) in [
        (
            vec!["--tls-listen", "127.0.0.1:0"],
            "tls_listen needs tls_cert_file and tls_key_file",
        ),
        (vec!["--tls-cert-file", &pem], "need tls_listen"),
        (tls_flags(&missing, &key), "absent.pem"),
        (tls_flags(&pem, &other_key), "server.pem and"),
        (
            [
                tls_flags(&pem, &key),
                vec!["--tls-handshake-timeout-ms", "0"],
            ]
            .concat(),
            "tls_handshake_timeout_ms must be at least 1",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

/// `millrace load` with `args`; its JSON report and output.
fn load(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = std::env::temp_dir().join(format!(
        "millrace-tls-load-{}-{run}.json",
        std::process::id()
    ));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&output.stderr)));
    std::fs::remove_file(&json).unwrap();
    (serde_json::from_str(&text).unwrap(), output)
}

fn number(report: &serde_json::Value, path: &str) -> u64 {
    report
        .pointer(path)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing from {report}"))
}

#[test]
fn the_load_generator_measures_https_with_handshakes_apart() {
    let server = https_server(&[]);
    let ca = cert("ca.pem");
    let target = url(&server, "/plaintext");
    let target = target.replace("localhost", "127.0.0.1");

    // Keep-alive: one full handshake per connection, verified, and every
    // request answered.
    let (report, output) = load(&[&target, "--ca-file", &ca, "-c", "2", "-p", "8", "-d", "1s"]);
    assert!(output.status.success(), "{report}");
    assert_eq!(number(&report, "/tls/full_handshakes"), 2, "{report}");
    assert_eq!(number(&report, "/tls/resumed_handshakes"), 0, "{report}");
    assert_eq!(number(&report, "/errors/connect"), 0, "{report}");
    let answered = number(&report, "/requests/answered");
    assert!(answered > 100, "{report}");
    assert_eq!(number(&report, "/statuses/2xx"), answered, "{report}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("2 full + 0 resumed handshakes"), "{table}");

    // A connection per request: after each connection's first, every
    // handshake resumes; without resumption none does.
    let per_request = [
        &target,
        "--ca-file",
        &ca,
        "-c",
        "2",
        "-n",
        "40",
        "-H",
        "Connection: close",
    ];
    let (report, output) = load(&per_request);
    assert!(output.status.success(), "{report}");
    assert_eq!(number(&report, "/requests/answered"), 40, "{report}");
    assert_eq!(number(&report, "/errors/connect"), 0, "{report}");
    // Two tickets come with each handshake, and each reconnect takes one.
    // (A connection may reconnect as the last request goes out on the
    // other: one handshake more than requests, at most, per connection.)
    assert_eq!(number(&report, "/tls/full_handshakes"), 2, "{report}");
    let resumed = number(&report, "/tls/resumed_handshakes");
    assert!((38..=40).contains(&resumed), "{report}");
    let mut fresh = per_request.to_vec();
    fresh.push("--no-resumption");
    let (report, _) = load(&fresh);
    let full = number(&report, "/tls/full_handshakes");
    assert!((40..=42).contains(&full), "{report}");
    assert_eq!(number(&report, "/tls/resumed_handshakes"), 0, "{report}");
    // Handshakes are timed on their own.
    assert!(report["tls"]["handshake_ms"]["max"].as_f64().unwrap() > 0.0);
    let metrics = server.metrics();
    assert_eq!(
        sample(
            &metrics,
            "millrace_tls_handshakes_total{core=\"0\",kind=\"resumed\"}"
        ),
        resumed,
        "{metrics}"
    );

    // The test CA is in no system store: verification fails, and says why.
    let (report, output) = load(&[&target, "-c", "1", "-d", "300ms"]);
    assert!(!output.status.success());
    assert!(number(&report, "/errors/connect") >= 1, "{report}");
    assert_eq!(number(&report, "/requests/answered"), 0, "{report}");
    let error = report["tls"]["first_error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer"), "{report}");
    // --insecure takes any certificate.
    let (report, output) = load(&[&target, "--insecure", "-c", "1", "-n", "5"]);
    assert!(output.status.success(), "{report}");
    assert_eq!(number(&report, "/requests/answered"), 5, "{report}");

    // TLS flags on a plain URL are a mistake.
    let plain = format!("http://{}/plaintext", server.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["load", &plain, "--ca-file", &ca])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file is for https URLs"));
}

#[test]
fn redis_links_speak_tls_verify_the_nodes_and_follow_redirects_to_tls_ports() {
    let dir = certs();
    let dir_text = dir.to_str().unwrap().to_owned();
    let cluster = RedisCluster::start_configured(3, 0, None, 2000, &["--tls", &dir_text]);
    let postgres = Postgres::start();
    let ca = cert("ca.pem");
    // One TLS seed is enough: the layout names the others' TLS ports.
    let seed = cluster
        .tls_seed_list()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let server = Server::start(&[
        "--redis-seeds",
        &seed,
        "--redis-tls",
        "true",
        "--redis-ca-file",
        &ca,
        "--postgres-url",
        &postgres.url,
    ]);

    let mut stream = server.connect();
    for i in 0..20 {
        let response = kv(&mut stream, "PUT", &format!("key{i}"), b"before");
        assert_eq!(response.status, 202, "{}", response.text());
    }
    // Every slot of the first master moves to the second, keys and all,
    // after the server learned the layout: the first answers MOVED with the
    // second's TLS port, which is taken.
    let table = cluster.nodes_table();
    let id = |port: u16| table.iter().find(|n| n.1 == port).unwrap().0.clone();
    let reshard = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca, "--cluster", "reshard"])
        .arg(format!("127.0.0.1:{}", cluster.port + TLS_OFFSET))
        .args([
            "--cluster-from",
            &id(cluster.port),
            "--cluster-to",
            &id(cluster.port + 1),
        ])
        .args(["--cluster-slots", "16384", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(reshard.status.success(), "{}", text(&reshard));
    for i in 0..20 {
        let key = format!("key{i}");
        assert_eq!(kv(&mut stream, "GET", &key, b"").text(), "before", "{key}");
        let response = kv(&mut stream, "PUT", &key, b"after");
        assert_eq!(response.status, 202, "{}", response.text());
        assert_eq!(kv(&mut stream, "GET", &key, b"").text(), "after", "{key}");
    }

    // Every write lands in PostgreSQL through the database core's TLS links.
    let deadline = Instant::now() + PATIENCE * 3;
    let landed = "select count(*) from kv where value = 'after'";
    while postgres.try_query(landed).as_deref() != Some("20") {
        assert!(Instant::now() < deadline, "the writes did not land");
        thread::sleep(Duration::from_millis(100));
    }
    let metrics = server.metrics();
    assert!(
        sample_sum(&metrics, "millrace_redis_moved_total") >= 1,
        "{metrics}"
    );
    // Only TLS ports were ever connected to.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("millrace_redis_connects_total{"))
    {
        let port: u16 = line
            .split("node=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|node| node.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert!(port >= cluster.port + TLS_OFFSET, "{line}");
    }

    // A name the certificates do not hold, a CA that did not sign them:
    // refused at start, saying why.
    let stranger = cert("stranger-ca.pem");
    for (extra, says) in [
        (
            vec![
                "--redis-ca-file",
                &ca,
                "--redis-tls-server-name",
                "other.example",
            ],
            "not valid for name \"other.example\"",
        ),
        (vec!["--redis-ca-file", &stranger], "UnknownIssuer"),
    ] {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-seeds",
            &seed,
            "--redis-tls",
            "true",
            "--admin-listen",
            "",
        ];
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

/// The sum of every sample of the family `name`.
fn sample_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Python: pipeline N requests on one TLS connection without reading an
/// answer, say so, wait for a line on stdin, then read every answer.
const PY_FLOOD: &str = r#"
import select, socket, ssl, sys
port, n, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
data = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n" * n
t.setblocking(False)
sent = 0
while sent < len(data):
    try:
        sent += t.send(data[sent:sent + 65536])
    except (ssl.SSLWantWriteError, BlockingIOError):
        if not select.select([], [t], [], 2)[1]:
            break
print("stalled", sent == len(data), flush=True)
sys.stdin.readline()
got = 0
tail = b""
marker = b"HTTP/1.1 200 OK"
while got < n:
    want_write = [t] if sent < len(data) else []
    readable, writable, _ = select.select([t], want_write, [], 10)
    if not readable and not writable:
        break
    if writable:
        try:
            sent += t.send(data[sent:sent + 65536])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
    while True:
        try:
            chunk = t.recv(1 << 20)
        except (ssl.SSLWantReadError, BlockingIOError):
            break
        if not chunk:
            got = -got
            break
        text = tail + chunk
        got += text.count(marker)
        tail = text[-(len(marker) - 1):]
    if got < 0:
        break
print("answered", got, flush=True)
"#;

/// With a client that writes and never reads, a connection stops being
/// read once `tls_max_unsent_records` records wait to be sent, however
/// deep the pipeline may go; once the client reads, all is answered.
#[test]
fn a_client_that_does_not_read_stops_being_read_at_the_record_limit() {
    let requests = 100_000;
    let mut in_flight_at = Vec::new();
    for records in ["2", "100000"] {
        let server = https_server(&[
            "--max-pipeline-depth",
            "32768",
            "--tls-max-unsent-records",
            records,
        ]);
        let mut client = std::process::Command::new("python3")
            .arg("-c")
            .arg(PY_FLOOD)
            .args([&port(&server), &requests.to_string(), &cert("ca.pem")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with("stalled"), "{line}");
        let metrics = server.metrics();
        in_flight_at.push(sample(
            &metrics,
            "millrace_http_requests_in_flight{core=\"0\"}",
        ));
        writeln!(client.stdin.as_mut().unwrap()).unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(
            line.trim(),
            format!("answered {requests}"),
            "{records} records"
        );
        assert!(client.wait().unwrap().success());
    }
    // Two records hold a few hundred answers; the pipeline alone lets
    // tens of thousands wait.
    assert!(in_flight_at[0] < 2_000, "{in_flight_at:?}");
    assert!(in_flight_at[1] > 10_000, "{in_flight_at:?}");
}

/// Behind a load balancer the PROXY header comes first, in the clear, and
/// the TLS handshake after it.
#[test]
fn a_proxy_header_comes_before_the_handshake() {
    let server = https_server(&["--proxy-protocol", "true", "--access-log-sample", "1"]);
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40123 443\r\n")
t = ssl.create_default_context(cafile=sys.argv[2]).wrap_socket(s, server_hostname="localhost")
t.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
print(t.recv(4096).split(b"\r\n")[0].decode())
"#;
    let out = python(script, &[&port(&server), &cert("ca.pem")]);
    assert_eq!(text(&out).trim(), "HTTP/1.1 200 OK", "{}", text(&out));
    wait_for("the access log line", || {
        server.log().contains("client=192.0.2.7:40123")
    });
    // Without the header the connection is closed, TLS or not.
    let mut bare = TcpStream::connect(server.tls_addr.unwrap()).unwrap();
    bare.set_read_timeout(Some(PATIENCE)).unwrap();
    bare.write_all(&[22, 3, 1, 0, 5, 1, 0, 0, 1, 0]).unwrap();
    assert!(closed_by_server(&mut bare));
}
