//! Quaver peer node: shares a music library and downloads files from other peers.
//!
//! The sans-IO cores come first and own no sockets, files, clocks or runtimes:
//! - [`wire`]: the peer protocol codec (length-prefixed `peer.proto` frames, validated messages);
//! - [`fetch`]: the download scheduler (events in, block requests out).
//!
//! The tokio code around them (QUIC serving and fetching, the store, the directory session,
//! the control API and the CLI) only moves bytes and time.

pub mod control;
pub mod fetch;
pub mod library;
pub mod node;
pub mod sanitize;
pub mod serve;
pub mod session;
pub mod store;
pub mod tls;
pub mod wire;
