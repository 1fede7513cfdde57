//! Quaver's shared vocabulary: the generated protocol code, the identities every part speaks in
//! (`ContentId`, `PeerId`, `NodeKey`), the node's QUIC identity (`tls`), the gRPC endpoint for a
//! directory URL (`directory_endpoint`, plain or TLS), the share-list digest,
//! and the protocol's limits.
//!
//! This crate owns no I/O beyond reading and writing a node key file and the QUIC endpoints
//! `tls` binds and dials when asked (and watching for the stop signals, `signal`), and no policy: it must never depend on the directory or the
//! peer crates.

pub mod announce_proof;
pub mod data_dir_lock;
pub mod digest;
pub mod directory_endpoint;
pub mod grpc_codec;
pub mod limits;
pub mod node_key;
pub mod report;
pub mod signal;
pub mod tls;
pub mod turn;
mod udp;

pub use digest::ShareDigest;
pub use node_key::{NodeKey, NodeKeyError};
/// The identities live in the sans-IO core (`quaver-core`), which the peer wire codec needs
/// without this crate's tokio and TLS; they are re-exported here for everyone else.
pub use quaver_core::ids::{self, ContentId, IdError, PeerId};

/// Generated code for `proto/directory.proto` (package `quaver.directory.v1`).
pub mod directory {
    pub mod v1 {
        tonic::include_proto!("quaver.directory.v1");
    }
}

/// Generated code for `proto/admin.proto` (package `quaver.admin.v1`): the directory's
/// loopback-only operator API (backup).
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("quaver.admin.v1");
    }
}

/// The encoded `FileDescriptorSet` of the directory and admin APIs, for gRPC reflection.
pub const DIRECTORY_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/directory_descriptor.bin"));
