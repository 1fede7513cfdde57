//! A node's identity on the wire: QUIC + TLS 1.3 where the certificate *is* the `PeerId`.
//!
//! The code moved to the shared crate, [`quaver_shared::tls`], because the directory needs it
//! too (it dials peers back to check their addresses). This module re-exports it so that
//! `crate::tls::...` paths keep working: the node certificate from the Ed25519 node key, the
//! client verifier that pins one `PeerId`, ALPN `quaver/1`, the ring provider passed explicitly.

pub use quaver_shared::tls::*;
