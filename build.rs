//! Generates the gRPC code from `proto/geosync.proto`, with a vendored
//! `protoc` so that a fresh machine builds without system packages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/geosync.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/geosync.proto");
    Ok(())
}
