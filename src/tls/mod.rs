//! TLS in user space with rustls: the public listener ([`server`]), the
//! load generator and the Redis links ([`client`]), all through one
//! [`record::RecordLayer`] that never touches a socket.
//!
//! This kernel has no kTLS, so records are sealed and opened on the
//! executor's thread, between the ring's receive and send; handshakes run
//! there too, a step per receive, so one client's handshake never stalls
//! another connection.

pub mod client;
pub mod record;
pub mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use record::{RecordLayer, Session, TlsError};

/// The cryptography every configuration uses: ring's, with its default
/// cipher suites (TLS 1.3: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305;
/// TLS 1.2: ECDHE with the same AEADs), and X25519 first among the key
/// exchanges, then P-256 and P-384. (ring's own order puts P-384 first,
/// whose arithmetic costs a handshake several times X25519's; clients and
/// servers that offer X25519, as curl, OpenSSL and browsers do, get it.)
/// rustls marks ring's provider deprecated because it has no post-quantum
/// key exchange (X25519MLKEM768 needs aws-lc-rs, a much larger C build);
/// docs/tls.md says so.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}
