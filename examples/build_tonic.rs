//! tonic code generation for the examples: `proto/tonic/helloworld.proto`
//! through `tonic-prost-build`, with the `protoc` that `protoc-bin-vendored`
//! ships (no system protoc, no download).

pub fn run() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .compile_with_config(config, &["proto/tonic/helloworld.proto"], &["proto/tonic"])
        .expect("compiling proto/tonic/helloworld.proto");
}
