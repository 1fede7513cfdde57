//! Generates, with protox (pure Rust, no `protoc`), the node's local control API from
//! `proto/control.proto`: gRPC client and server. Its references to `quaver.directory.v1` point
//! at `quaver_shared`'s generated types. (The peer wire messages are `quaver-core`'s.)

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [proto_dir.join("control.proto"), proto_dir.join("directory.proto")];
    // compile_fds emits no rerun-if-changed lines of its own.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // The set holds directory.proto too (an import; prost needs it to analyse the types), but
    // extern_path makes every reference to it point at quaver_shared's generated code.
    let control = protox::compile([proto_dir.join("control.proto")], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".quaver.directory.v1", "::quaver_shared::directory::v1")
        .compile_fds(control)?;
    Ok(())
}
