//! TLS for the gRPC port: a certificate chain and key read from PEM files, served through a
//! resolver that can swap them while the server runs (`reload`, on SIGHUP). Connections that
//! are open keep the certificate they were made with; new handshakes get the new one. A reload
//! that fails (missing file, bad PEM, key not matching the certificate) changes nothing and
//! says why, so a botched renewal never takes the service down.
//!
//! Only the ring provider is used, passed explicitly (STACK.md pitfall 7). ALPN offers `h2`
//! alone: tonic's client refuses a TLS connection that did not negotiate it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read TLS certificate {}: {source}", path.display())]
    Cert { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("no certificate in {}", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot read TLS private key {}: {source}", path.display())]
    Key { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("TLS key {} does not fit certificate {}: {source}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Cert { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCert { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsSetupError::Key { path: key.to_owned(), source })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsSetupError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// The certificate in force, and where to read the next one from.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads `cert` and `key`; fails if they are unusable (the server must not start then).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsSetupError> {
        let loaded = load(cert, key)?;
        Ok(Arc::new(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Reads the files again and serves the new certificate to new connections. On error the
    /// old certificate stays in force.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let loaded = Arc::new(load(&self.cert_path, &self.key_path)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// `reload`, with the outcome logged: what SIGHUP does.
    pub fn reload_logged(&self) -> bool {
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one");
                false
            }
        }
    }

    /// Reloads on every SIGHUP until `stop`, telling `on_reload` whether it worked.
    pub async fn reload_on_sighup(
        self: Arc<Self>,
        on_reload: impl Fn(bool) + Send + 'static,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch for SIGHUP; the TLS certificate will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    on_reload(self.reload_logged());
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The rustls server configuration that serves whatever certificate is current.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
