//! Generates the gRPC and message code from `proto/` with protox (pure Rust, no `protoc`).
use protox::prost::Message as _;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    // admin.proto (the directory's operator API) shares the descriptor set, so reflection lists it.
    let files = [proto_dir.join("directory.proto"), proto_dir.join("admin.proto")];
    // compile_fds emits no rerun-if-changed lines of its own.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_dir])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("directory_descriptor.bin"), fds.encode_to_vec())?;
    // Our codec: a request that does not decode is INVALID_ARGUMENT, not INTERNAL (see
    // src/grpc_codec.rs).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::grpc_codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
