//! TLS as a client: the load generator's connections and the Redis links.
//! Servers are verified by default, against the system's trust store or
//! a CA file; skipping verification is an explicit choice.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, Resumption};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::record::Session;
use super::server::{read_certificates, read_roots};

/// How a client checks the servers it connects to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust these CAs (PEM) instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate and host name. For measuring a server with a
    /// certificate made for the occasion, never for carrying secrets.
    pub insecure: bool,
    /// Present this certificate chain and key (PEM), for servers that
    /// require client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Offer these protocols in ALPN (none: no ALPN).
    pub alpn: Vec<Vec<u8>>,
    /// Sessions kept for resumption (0: no resumption).
    pub resumption_sessions: usize,
}

impl ClientTls {
    /// A client configuration; an unreadable file is an error naming it.
    pub fn build(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = super::provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let roots = match &self.ca_file {
                Some(path) => read_roots(path)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = if self.resumption_sessions == 0 {
            Resumption::disabled()
        } else {
            Resumption::in_memory_sessions(self.resumption_sessions)
        };
        Ok(Arc::new(config))
    }
}

/// A session to `server` (a DNS name or an IP address, checked against
/// the certificate unless the configuration is insecure).
pub fn connect(config: &Arc<ClientConfig>, server: &str) -> Result<Session, String> {
    let name = ServerName::try_from(server.to_owned())
        .map_err(|_| format!("{server:?} is not a host name or an IP address"))?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    Ok(Session::new(conn.into()))
}

/// The system's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
/// honoured).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(format!(
            "no trusted CA certificates on this system ({why}); name a CA file"
        ));
    }
    Ok(roots)
}

/// Accepts any certificate for any name; signatures are still checked, so
/// the handshake costs what a verified one costs, less the chain.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
