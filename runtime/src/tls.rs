//! HTTPS: TLS termination in the server (`--ssl-certfile`/`--ssl-keyfile`), with rustls.
//!
//! What it owns: loading a PEM certificate chain and private key into one rustls `ServerConfig` shared by
//! every loop, with errors that say which file is wrong and how; and the handshake of each accepted
//! connection, bounded by the header timeout so that a client that connects and says nothing holds
//! nothing.
//!
//! Invariants: only HTTP/1.1 is offered in ALPN (the server speaks nothing else); a failed or timed-out
//! handshake closes that connection only; encrypted private keys are refused with a hint, never prompted
//! for (a server has no terminal).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot serve, said so that the user can fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The TLS settings every loop's connections use.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the certificate chain (`certfile`: the server's certificate first, then intermediates) and
    /// its private key (`keyfile`: PKCS#8, PKCS#1 or SEC1 PEM; may be the same file).
    pub fn load(certfile: &Path, keyfile: &Path) -> Result<Self, TlsError> {
        let certificates = load_certificates(certfile)?;
        let key = load_key(keyfile)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(|e| {
                TlsError(format!(
                    "--ssl-keyfile {} does not go with --ssl-certfile {}: {e}",
                    keyfile.display(),
                    certfile.display()
                ))
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server side of the handshake on `stream`; None when it fails or takes longer than `timeout`.
    pub async fn accept<IO>(
        &self,
        stream: IO,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            _ => None,
        }
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "--ssl-certfile")?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("--ssl-certfile {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(TlsError(format!(
            "--ssl-certfile {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certificates)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "--ssl-keyfile")?;
    let shown = path.display();
    // Checked before parsing: a traditional OpenSSL-encrypted key (`Proc-Type: 4,ENCRYPTED` headers) does
    // not parse as "no key" but as a base64 error, which would say nothing useful.
    if contains(&pem, b"ENCRYPTED PRIVATE KEY") || contains(&pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError(format!(
            "--ssl-keyfile {shown} is encrypted, which is not supported: decrypt it once \
             (openssl pkey -in KEY -out PLAIN.key) and keep the plain file readable only by the server"
        )));
    }
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError(format!(
            "--ssl-keyfile {shown}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----)"
        ))),
        Err(e) => Err(TlsError(format!("--ssl-keyfile {shown}: {e}"))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn certs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/certs")
    }

    #[test]
    fn a_matching_certificate_and_key_load() {
        Tls::load(
            &certs().join("localhost.crt"),
            &certs().join("localhost.key"),
        )
        .unwrap();
    }

    #[test]
    fn each_wrong_file_is_named_with_what_is_wrong() {
        let crt = certs().join("localhost.crt");
        let key = certs().join("localhost.key");
        let error = |certfile: &Path, keyfile: &Path| Tls::load(certfile, keyfile).unwrap_err().0;

        let missing = error(&certs().join("missing.crt"), &key);
        assert!(
            missing.starts_with("--ssl-certfile ") && missing.contains("missing.crt"),
            "{missing}"
        );
        let key_as_cert = error(&key, &key);
        assert!(key_as_cert.contains("no PEM certificate"), "{key_as_cert}");
        let cert_as_key = error(&crt, &crt);
        assert!(cert_as_key.contains("no PEM private key"), "{cert_as_key}");
        for encrypted in ["encrypted.key", "encrypted-traditional.key"] {
            let refused = error(&crt, &certs().join(encrypted));
            assert!(refused.contains("is encrypted"), "{refused}");
        }
        let mismatch = error(&crt, &certs().join("other.key"));
        assert!(mismatch.contains("does not go with"), "{mismatch}");
    }
}
