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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot serve: what is wrong with which file (`kind`) and the error behind
/// it (reading the file, parsing PEM, rustls), said so that the user can fix it.
#[derive(Debug)]
pub struct TlsError {
    kind: TlsErrorKind,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// What is wrong, and with which file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsErrorKind {
    /// rustls refused its own default protocol versions.
    Protocols,
    /// The file given to `flag` cannot be read, or is not PEM.
    File { flag: &'static str, path: PathBuf },
    /// The certificate file holds no certificate.
    NoCertificate { path: PathBuf },
    /// The key file is encrypted.
    EncryptedKey { path: PathBuf },
    /// The key file holds no private key.
    NoKey { path: PathBuf },
    /// The key does not belong to the certificate (or rustls refuses the pair).
    Mismatch { certfile: PathBuf, keyfile: PathBuf },
}

impl TlsError {
    fn new(kind: TlsErrorKind, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        TlsError {
            kind,
            cause: Some(cause.into()),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> &TlsErrorKind {
        &self.kind
    }
}

impl From<TlsErrorKind> for TlsError {
    fn from(kind: TlsErrorKind) -> Self {
        TlsError { kind, cause: None }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TlsErrorKind::Protocols => f.write_str("TLS"),
            TlsErrorKind::File { flag, path } => write!(f, "{flag} {}", path.display()),
            TlsErrorKind::NoCertificate { path } => write!(
                f,
                "--ssl-certfile {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ),
            TlsErrorKind::EncryptedKey { path } => write!(
                f,
                "--ssl-keyfile {} is encrypted, which is not supported: decrypt it once \
                 (openssl pkey -in KEY -out PLAIN.key) and keep the plain file readable only by the server",
                path.display()
            ),
            TlsErrorKind::NoKey { path } => write!(
                f,
                "--ssl-keyfile {}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----)",
                path.display()
            ),
            TlsErrorKind::Mismatch { certfile, keyfile } => write!(
                f,
                "--ssl-keyfile {} does not go with --ssl-certfile {}",
                keyfile.display(),
                certfile.display()
            ),
        }?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as _)
    }
}

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
            .map_err(|e| TlsError::new(TlsErrorKind::Protocols, e))?
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(|e| {
                let kind = TlsErrorKind::Mismatch {
                    certfile: certfile.into(),
                    keyfile: keyfile.into(),
                };
                TlsError::new(kind, e)
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

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(flag, path, e))
}

fn file_error(
    flag: &'static str,
    path: &Path,
    cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> TlsError {
    let path = path.into();
    TlsError::new(TlsErrorKind::File { flag, path }, cause)
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "--ssl-certfile")?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("--ssl-certfile", path, e))?;
    if certificates.is_empty() {
        return Err(TlsErrorKind::NoCertificate { path: path.into() }.into());
    }
    Ok(certificates)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "--ssl-keyfile")?;
    // Checked before parsing: a traditional OpenSSL-encrypted key (`Proc-Type: 4,ENCRYPTED` headers) does
    // not parse as "no key" but as a base64 error, which would say nothing useful.
    if contains(&pem, b"ENCRYPTED PRIVATE KEY") || contains(&pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(TlsErrorKind::EncryptedKey { path: path.into() }.into());
    }
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsErrorKind::NoKey { path: path.into() }.into()),
        Err(e) => Err(file_error("--ssl-keyfile", path, e)),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let error =
            |certfile: &Path, keyfile: &Path| Tls::load(certfile, keyfile).unwrap_err().to_string();

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
