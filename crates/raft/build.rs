//! Generates the Raft peer protocol from `proto/tollgate/raft/v1/raft.proto` at the workspace root.
//!
//! The protocol is generated inside this crate (not in `tollgate-proto`) so that conversions
//! between its messages and openraft's types live next to the openraft type configuration.
//! `protox` parses the file in-process (no system `protoc`); `tonic-prost-build` writes the prost
//! messages and the tonic client and server into `OUT_DIR`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("../../proto");
    let proto = include.join("tollgate/raft/v1/raft.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto.display());

    let mut compiler = protox::Compiler::new([&include])?;
    compiler.include_imports(true);
    compiler.open_file(proto.strip_prefix(&include)?)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
