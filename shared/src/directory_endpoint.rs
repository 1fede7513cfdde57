//! The one place a gRPC endpoint for the directory is built: for a peer's session and lookups,
//! and for the directory's own operator commands (`backup`, `health`).
//!
//! `https://` URLs are verified with TLS: against the CA certificates in `ca` (a PEM file,
//! `--directory-ca`) when given, otherwise against the system's root certificates. `http://`
//! stays plain, for loopback and tests; a CA file with it is a mistake and refused, so an
//! operator never believes a connection is verified when it is not.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("directory URL {url:?} is invalid: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("directory URL {url:?} must start with http:// or https://")]
    Scheme { url: String },
    #[error("--directory-ca is only used with an https:// directory URL, not {url:?}")]
    CaWithoutTls { url: String },
    #[error("cannot read the directory CA file {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in the directory CA file {}", path.display())]
    NoCa { path: PathBuf },
    #[error("TLS setup for {url:?}: {source}")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// An endpoint for the directory at `url`, verified against `ca` or the system roots when the
/// URL is `https://`. Reads `ca` (so a renewed CA file is picked up on the next connect).
pub fn directory_endpoint(url: &str, ca: Option<&Path>) -> Result<Endpoint, EndpointError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| EndpointError::Url { url: url.to_owned(), source })?;
    match endpoint.uri().scheme_str() {
        Some("http") if ca.is_some() => Err(EndpointError::CaWithoutTls { url: url.to_owned() }),
        Some("http") => Ok(endpoint),
        Some("https") => {
            let tls = match ca {
                Some(path) => ClientTlsConfig::new().ca_certificate(read_ca(path)?),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint.tls_config(tls).map_err(|source| EndpointError::Tls { url: url.to_owned(), source })
        }
        _ => Err(EndpointError::Scheme { url: url.to_owned() }),
    }
}

/// The CA file, checked to hold at least one certificate (tonic would only find out at the
/// first handshake, as an obscure error).
fn read_ca(path: &Path) -> Result<Certificate, EndpointError> {
    let bytes = std::fs::read(path).map_err(|e| EndpointError::Ca {
        path: path.to_owned(),
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| EndpointError::Ca { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(EndpointError::NoCa { path: path.to_owned() });
    }
    Ok(Certificate::from_pem(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_ca_files_are_checked() {
        assert!(directory_endpoint("http://127.0.0.1:7700", None).is_ok());
        assert!(directory_endpoint("https://directory.example:7700", None).is_ok());
        assert!(matches!(directory_endpoint("ftp://x", None), Err(EndpointError::Scheme { .. })));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        assert!(matches!(directory_endpoint("https://x:1", Some(&ca)), Err(EndpointError::Ca { .. })));
        std::fs::write(&ca, "not a certificate\n").unwrap();
        assert!(matches!(directory_endpoint("https://x:1", Some(&ca)), Err(EndpointError::NoCa { .. })));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert!(directory_endpoint("https://localhost:1", Some(&ca)).is_ok());
        let e = directory_endpoint("http://localhost:1", Some(&ca)).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
