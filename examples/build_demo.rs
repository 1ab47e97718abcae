//! Code generation for the demo: the tonic backend (`proto/demo/inventory.proto`)
//! and the Connect frontend (`proto/demo/shop.proto`), with the vendored protoc.

use std::path::PathBuf;
use std::process::Command;

pub fn run() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc.clone());
    tonic_prost_build::configure()
        .compile_with_config(config, &["proto/demo/inventory.proto"], &["proto/demo"])
        .expect("compiling proto/demo/inventory.proto");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let descriptor = out_dir.join("shop_descriptor.bin");
    let status = Command::new(&protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", descriptor.display()))
        .arg("--proto_path=proto/demo")
        .arg("proto/demo/shop.proto")
        .status()
        .expect("run vendored protoc");
    assert!(status.success(), "protoc failed on shop.proto");
    connectrpc_build::Config::new()
        .descriptor_set(&descriptor)
        .files(&["shop.proto"])
        .include_file("_connectrpc_shop.rs")
        .compile()
        .expect("connectrpc codegen for shop.proto");
    println!("cargo:rerun-if-changed=proto/demo");
}
