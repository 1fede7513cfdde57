//! A node's long-lived Ed25519 key, kept in its data directory.
//!
//! The file holds the PKCS#8 document and is created with mode 0600 on first start. The public
//! half is the node's `PeerId`; the QUIC certificate is signed with the same key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::PeerId;

#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("cannot read or write the node key at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the node key at {path} is not a valid Ed25519 PKCS#8 key")]
    Invalid { path: PathBuf },
    #[error("the system random generator failed")]
    Random,
}

/// A node's signing key and its PeerId.
pub struct NodeKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, NodeKeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| NodeKeyError::Random)?;
        Self::from_pkcs8(doc.as_ref()).ok_or(NodeKeyError::Random)
    }

    /// Parses a PKCS#8 Ed25519 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).ok()?;
        Some(Self { pkcs8: pkcs8.to_vec(), pair })
    }

    /// Loads the key at `path`, or creates it (mode 0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, NodeKeyError> {
        let io = |source| NodeKeyError::Io { path: path.to_owned(), source };
        match fs::read(path) {
            Ok(bytes) => {
                Self::from_pkcs8(&bytes).ok_or_else(|| NodeKeyError::Invalid { path: path.to_owned() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                }
                // Write to a temporary name and rename, so a crash never leaves half a key.
                let tmp = path.with_extension("tmp");
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut file = opts.open(&tmp).map_err(io)?;
                file.write_all(&key.pkcs8).map_err(io)?;
                file.sync_all().map_err(io)?;
                fs::rename(&tmp, path).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        let public = self.pair.public_key().as_ref();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(public);
        PeerId::from_array(bytes)
    }

    /// The PKCS#8 document, for building the node's TLS certificate.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Checks an Ed25519 signature by `peer` over `message`.
pub fn verify(peer: &PeerId, message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, peer.as_bytes())
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let first = NodeKey::load_or_create(&path).unwrap();
        let again = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(first.peer_id(), again.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sig = first.sign(b"hi");
        assert!(verify(&first.peer_id(), b"hi", &sig));
        assert!(!verify(&first.peer_id(), b"ho", &sig));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, b"not a key").unwrap();
        assert!(matches!(NodeKey::load_or_create(&path), Err(NodeKeyError::Invalid { .. })));
    }
}
