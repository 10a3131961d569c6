//! Generates the public API from `proto/tollgate/v1/*.proto` at the workspace root.
//!
//! `protox` parses the files in-process (no system `protoc`); `tonic-prost-build` turns the
//! resulting descriptor set into prost messages plus tonic clients and servers in `OUT_DIR`. The
//! encoded descriptor set is written next to them for gRPC reflection. Cargo reruns this script
//! only when a file under `proto/tollgate/v1/` (or this script) changes.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("../../proto");
    let api_dir = include.join("tollgate/v1");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // The directory itself is watched too, so that adding a file reruns the script.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", api_dir.display());
    let protos = proto_files(&api_dir)?;
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let mut compiler = protox::Compiler::new([&include])?;
    compiler.include_source_info(true).include_imports(true);
    for proto in &protos {
        let relative = proto.strip_prefix(&include)?;
        compiler.open_file(relative)?;
    }
    std::fs::write(
        out_dir.join("tollgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Every `.proto` file directly in `dir`, sorted so that generation is deterministic.
fn proto_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
