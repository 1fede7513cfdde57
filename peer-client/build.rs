//! Generates the peer wire messages from `proto/peer.proto` with protox (pure Rust, no `protoc`).
//!
//! Messages only: the peer protocol is not gRPC (see `src/wire/mod.rs`), so no client or server
//! code is generated.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [proto_dir.join("peer.proto")];
    // compile_fds emits no rerun-if-changed lines of its own.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_dir])?;
    tonic_prost_build::configure().build_client(false).build_server(false).compile_fds(fds)?;
    Ok(())
}
