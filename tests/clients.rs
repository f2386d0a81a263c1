//! Real clients against the running binary: curl and Python's http.client.
//! Both are installed by the test script (scripts/test.sh).

mod common;

use std::process::Command;

use common::{Server, sample};

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn curl_keep_alive_http10_and_expect_continue() {
    let server = Server::start(&[]);
    let base = format!("http://{}", server.addr);

    let (ok, body, err) = run(
        "curl",
        &[
            "-sS",
            &format!("{base}/plaintext"),
            &format!("{base}/livez"),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(body, "Hello, World!live\n");

    let (ok, out, err) = run(
        "curl",
        &["-sS", "-i", "--http1.0", &format!("{base}/plaintext")],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");

    // Older curls send Expect: 100-continue on their own for bodies over
    // 1 KiB, newer ones only over 1 MiB; ask for it so every version waits.
    let body = "x".repeat(2048);
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "-v",
            "-X",
            "PUT",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            &format!("{base}/livez"),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("Expect: 100-continue"), "{err}");
    assert!(err.contains("< HTTP/1.1 100 Continue"), "{err}");
    assert!(err.contains("< HTTP/1.1 405 Method Not Allowed"), "{err}");
    assert_eq!(out, "method not allowed on this route\n");

    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/missing"),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "404");

    let metrics = server.metrics();
    assert_eq!(
        sample(&metrics, "millrace_connections_accepted_total{core=\"0\"}"),
        4,
        "{metrics}"
    );
}

#[test]
fn python_http_client_reuses_its_connection() {
    let server = Server::start(&[]);
    let script = format!(
        r#"
import http.client
conn = http.client.HTTPConnection("{host}", {port}, timeout=10)
for path, status, body in [("/plaintext", 200, b"Hello, World!"), ("/readyz", 200, b"ready\n"),
                           ("/nope", 404, b"no such route\n")]:
    conn.request("GET", path)
    r = conn.getresponse()
    assert (r.status, r.read()) == (status, body), path
    assert r.getheader("Server") == "millrace"
conn.request("POST", "/plaintext", body=b"hello", headers={{"Content-Type": "text/plain"}})
r = conn.getresponse()
assert r.status == 405 and r.getheader("Allow") == "GET, HEAD", r.status
r.read()
conn.request("POST", "/plaintext", body=iter([b"chunk", b"ed"]), encode_chunked=True)
r = conn.getresponse()
assert r.status == 405, r.status
r.read()
conn.request("HEAD", "/plaintext")
r = conn.getresponse()
assert r.status == 200 and r.read() == b"" and r.getheader("Content-Length") == "13"
print("ok")
"#,
        host = server.addr.ip(),
        port = server.addr.port()
    );
    let (ok, out, err) = run("python3", &["-c", &script]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ok");
    let metrics = server.metrics();
    assert_eq!(
        sample(&metrics, "millrace_connections_accepted_total{core=\"0\"}"),
        1,
        "{metrics}"
    );
}
