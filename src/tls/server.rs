//! The public listener's TLS: its certificate and key from PEM files,
//! reloaded without a restart, and one session per accepted connection.
//!
//! One [`Certificates`] is shared by the executors; it changes only when an
//! operator reloads. Each executor keeps its own [`Acceptor`], which looks
//! at the shared generation number on each accept (one atomic load) and
//! takes the new configuration only when it changed: nothing is locked per
//! connection, let alone per request. Session tickets are the one thing
//! the cores share on a handshake: their keys must be the same everywhere,
//! so that a client resumes on whichever core its next connection reaches;
//! they are rotated every 6 hours and honoured for 12, and they survive a
//! certificate reload. There is no server-side session cache (it would be
//! a lock shared by every core).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::{NoServerSessionStorage, ProducesTickets, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::record::Session;

/// The only application protocol offered in ALPN.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Where the listener's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first, PEM.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key: PathBuf,
    /// Client certificates are required and checked against these CAs
    /// (PEM), when set.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// What each file looks like now, to tell when one changed.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// Read the chain in `path`: at least one certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(chain)
}

/// Read the CA certificates in `path` as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A server configuration from `files`, with `ticketer`'s session tickets.
fn build(files: &TlsFiles, ticketer: &Arc<dyn ProducesTickets>) -> Result<ServerConfig, String> {
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(read_roots(path)?),
                super::provider(),
            )
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.ticketer = Arc::clone(ticketer);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // Two tickets per handshake (rustls's and OpenSSL's default): a ticket
    // resumes one connection, and a client opening several at once (a
    // browser, a pool) keeps one for each.
    config.send_tls13_tickets = 2;
    Ok(config)
}

/// The listener's TLS configuration, shared by the executors and replaced
/// whole on a reload.
pub struct Certificates {
    files: TlsFiles,
    ticketer: Arc<dyn ProducesTickets>,
    current: Mutex<Arc<ServerConfig>>,
    /// Bumped by each reload that took.
    generation: AtomicU64,
    /// The files as they were at the last reload tried.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Certificates {
    /// Load `files`; an unreadable or mismatched file is an error naming it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot make session ticket keys: {e}"))?;
        let config = build(&files, &ticketer)?;
        let stamps = files.stamps();
        Ok(Arc::new(Certificates {
            files,
            ticketer,
            current: Mutex::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Read the files again. On an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = self.files.stamps();
        let config = build(&self.files, &self.ticketer)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Reload if a file changed since the last reload tried: `None` if none
    /// did.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = self.files.stamps();
        if *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return None;
        }
        Some(self.reload())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> (u64, Arc<ServerConfig>) {
        let generation = self.generation.load(Ordering::Acquire);
        let config = Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()));
        (generation, config)
    }
}

/// One executor's view of [`Certificates`].
pub struct Acceptor {
    source: Arc<Certificates>,
    generation: u64,
    config: Arc<ServerConfig>,
}

impl Acceptor {
    /// An acceptor on `source`'s configuration.
    pub fn new(source: Arc<Certificates>) -> Self {
        let (generation, config) = source.current();
        Acceptor {
            source,
            generation,
            config,
        }
    }

    /// A session for a connection just accepted, under the configuration
    /// of the latest reload.
    pub fn accept(&mut self) -> Result<Session, rustls::Error> {
        if self.source.generation.load(Ordering::Relaxed) != self.generation {
            (self.generation, self.config) = self.source.current();
        }
        let conn = ServerConnection::new(Arc::clone(&self.config))?;
        Ok(Session::new(conn.into()))
    }
}
