//! Compiles `sphere/v1/*.proto` with protox (pure Rust), so building needs no system `protoc`.

const PROTO_FILES: &[&str] = &["sphere/v1/node.proto", "sphere/v1/plugin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let file_descriptors = protox::compile(PROTO_FILES, ["."])?;
    // `bytes` fields become `bytes::Bytes`, so chunks pass through the node without copies.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(file_descriptors)?;
    Ok(())
}
