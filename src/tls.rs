//! Server TLS for the gRPC listener and the proxy's: the rustls acceptor built from the
//! configured PEM files, with client certificates verified when a client CA is set (and
//! optional: an API key also serves).
//!
//! The broker runs the TLS handshake itself rather than through tonic's `tls_config`, so
//! that one deadline covers a connection's TLS handshake and its first bytes (see
//! `incoming`), and a handshake in progress holds a connection's place like any other.

use std::sync::Arc;

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

use crate::config::TlsFiles;

/// The acceptor for `files` (configured at `key`, e.g. `server.tls`, which errors name),
/// offering the ALPN protocols `alpn` in order of preference.
pub fn acceptor(files: &TlsFiles, key: &str, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(ca, key, "client CA")?);
            if added == 0 {
                return Err(format!("{key}.client_ca_file: no usable CA certificate"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{key}.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let private_key = PrivateKeyDer::from_pem_slice(files.key_pem.expose().as_bytes())
        .map_err(|e| format!("{key}.key_file: {e}"))?;
    let mut config = builder
        .with_single_cert(
            certificates(&files.cert_pem, key, "certificate")?,
            private_key,
        )
        .map_err(|e| format!("{key}: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(pem: &str, key: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: the {what} PEM does not parse: {e}"))
}
