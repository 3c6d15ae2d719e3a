//! Compiles the AGS wire protos with a vendored `protoc` (no system install
//! needed) and writes the descriptor set that gRPC reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/accelbyte/iam/account/v1/account.proto",
        "proto/accelbyte/social/statistic/v1/statistic.proto",
    ];
    println!("cargo:rerun-if-changed=migrations");
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let descriptor = PathBuf::from(env::var("OUT_DIR")?).join("ags_descriptor.bin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Malformed request bodies get INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::StrictCodec")
        .file_descriptor_set_path(&descriptor)
        .compile_with_config(
            config,
            &protos.map(PathBuf::from),
            &[PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
