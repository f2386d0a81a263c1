//! The test certificates (`scripts/tls-certs.sh`) and the real TLS
//! clients the tests drive: curl, `openssl s_client`, Python's ssl.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The directory of test certificates, made once (under a lock, since
/// test binaries run side by side).
pub fn certs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("var/tls-test");
    std::fs::create_dir_all(root.join("var")).unwrap();
    let status = Command::new("flock")
        .arg(root.join("var/tls-test.lock"))
        .arg(root.join("scripts/tls-certs.sh"))
        .arg(&dir)
        .status()
        .expect("run scripts/tls-certs.sh (needs flock and openssl)");
    assert!(status.success(), "scripts/tls-certs.sh failed");
    dir
}

/// A file in the certificate directory, as a string for a command line.
pub fn cert(name: &str) -> String {
    certs().join(name).to_str().unwrap().to_owned()
}

/// curl with `args`, failing after a few seconds.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("run curl")
}

/// Python 3 running `script` with `args`.
pub fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

/// `openssl s_client` with `args`, its input closed at once.
pub fn s_client(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["5", "openssl", "s_client"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client")
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
