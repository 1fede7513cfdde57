//! Generates the peer wire messages from `proto/peer.proto` with protox (pure Rust, no
//! `protoc`): messages only, the peer protocol is not gRPC (see `src/wire/mod.rs`).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let peer_proto = proto_dir.join("peer.proto");
    // compile_fds emits no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed={}", peer_proto.display());
    let peer = protox::compile([peer_proto], [&proto_dir])?;
    tonic_prost_build::configure().build_client(false).build_server(false).compile_fds(peer)?;
    Ok(())
}
