//! Quaver peer node: shares a music library and downloads files from other peers.
//!
//! Every decision of the peer protocol and of a download is in the sans-IO crate `quaver-core`
//! (the wire codec, the scheduler, the download's `Transfer` policy); [`wire`] re-exports its
//! codec. The tokio code here (QUIC serving and fetching, the store, the directory session, the
//! control API and the CLI) only moves bytes and time around it.

pub mod control;
pub mod fetch;
pub mod library;
pub mod node;
pub mod sanitize;
pub mod serve;
pub mod session;
pub mod store;
pub mod tls;
pub use quaver_core::wire;
