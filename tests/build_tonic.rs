//! tonic code generation for the integration tests: `proto/tonic/*.proto`
//! through `tonic-prost-build`, with the `protoc` that `protoc-bin-vendored`
//! ships (no system protoc, no download). Also writes the descriptor set the
//! reflection test serves (`$OUT_DIR/helloworld_descriptor.bin`).

use std::path::PathBuf;

pub fn run() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("helloworld_descriptor.bin"))
        .compile_with_config(config, &["proto/tonic/helloworld.proto"], &["proto/tonic"])
        .expect("compiling proto/tonic/helloworld.proto");
}
