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
/// cipher suites (TLS 1.3: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305;
/// TLS 1.2: ECDHE with the same AEADs) and key exchanges (X25519,
/// P-256, P-384). rustls marks it deprecated because ring has no
/// post-quantum key exchange (X25519MLKEM768 needs aws-lc-rs, a much
/// larger C build); docs/tls.md says so.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
