//! Arbitrary bytes into a TLS server session, as the executor feeds it:
//! whole, and cut in two where the first byte says.
//!
//! Properties: nothing panics; the plaintext never outgrows the bytes that
//! carried it; the bytes give the same outcome (an error or none, the same
//! plaintext, the same peer close) however the receives cut them, so the
//! ring's way of splitting a stream cannot change what a connection reads.
//! The certificate is the test one (`scripts/tls-certs.sh`, made by
//! scripts/fuzz.sh), from `MILLRACE_FUZZ_TLS_DIR` or var/tls-test.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use millrace::tls::RecordLayer;
use millrace::tls::server::{Acceptor, Certificates, TlsFiles};

fn certificates() -> &'static Arc<Certificates> {
    static CERTIFICATES: OnceLock<Arc<Certificates>> = OnceLock::new();
    CERTIFICATES.get_or_init(|| {
        let dir = PathBuf::from(
            std::env::var("MILLRACE_FUZZ_TLS_DIR").unwrap_or_else(|_| "var/tls-test".into()),
        );
        Certificates::load(TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
        })
        .expect("the test certificate (scripts/tls-certs.sh var/tls-test)")
    })
}

/// Feed `pieces` in order, as receives; the error state, plaintext and
/// close the session ends with.
fn feed(pieces: &[&[u8]]) -> (bool, Vec<u8>, bool) {
    let mut session = Acceptor::new(Arc::clone(certificates()))
        .accept()
        .expect("a server session");
    let mut plain = Vec::new();
    let mut failed = false;
    for piece in pieces {
        let before = plain.len();
        if session.open(piece, &mut plain).is_err() {
            failed = true;
        }
        assert!(plain.len() - before <= piece.len());
        // What would be sent back (flights, alerts) seals whole records.
        let mut wire = Vec::new();
        session.seal(&mut Vec::new(), &mut wire);
        if failed {
            break;
        }
    }
    (failed, plain, session.peer_closed())
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let whole = feed(&[data]);
    let split = feed(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, split, "cut at {cut}");
});
