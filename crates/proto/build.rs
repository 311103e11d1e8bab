//! Generates the Rust types and tonic services for `proto/` and a file descriptor set for gRPC
//! reflection. protoc comes vendored, so a fresh machine needs nothing installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not compiled in: one build script binary serves every checkout that shares
    // a target folder.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        root.join("globalbrain/ingest/v1/ingest.proto"),
        root.join("globalbrain/query/v1/query.proto"),
        root.join("globalbrain/coordinator/v1/coordinator.proto"),
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Upload chunks and export data are large byte fields: share them, don't copy them.
    config.bytes([
        ".globalbrain.ingest.v1.UploadChunk.data",
        ".globalbrain.ingest.v1.ExportRecordingResponse.data",
    ]);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("globalbrain_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&root))?;
    // Inference nodes get their own descriptor set: reflection on a node lists only what it
    // serves.
    let kserve = [
        root.join("inference/grpc_service.proto"),
        root.join("globalbrain/models/v1/models.proto"),
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes([
        ".inference.ModelInferRequest.raw_input_contents",
        ".inference.ModelInferResponse.raw_output_contents",
        ".globalbrain.models.v1.PushModelRequest",
    ]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_with_config(config, &kserve, std::slice::from_ref(&root))?;
    for p in protos.iter().chain(&kserve) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
