//! connectrpc code generation, with cargo alone: the protoc bundled by
//! `protoc-bin-vendored` writes a descriptor set
//! (`$OUT_DIR/ping_descriptor.bin`), and `connectrpc-build` turns it into
//! buffa messages, service traits and clients
//! (`$OUT_DIR/_connectrpc_ping.rs`). It reads `proto/connect` of the package
//! being built: the examples' own, and the integration tests' (whose build
//! script includes this file; their interop peers also read the descriptor
//! set at run time).

use std::path::PathBuf;
use std::process::Command;

const PROTO_ROOT: &str = "proto/connect";
const PROTO: &str = "observability/ping/v1/ping.proto";

pub fn run() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let descriptor = out_dir.join("ping_descriptor.bin");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let status = Command::new(&protoc)
        .arg("--include_imports")
        .arg("--include_source_info")
        .arg(format!("--descriptor_set_out={}", descriptor.display()))
        .arg(format!("--proto_path={PROTO_ROOT}"))
        .arg(format!("{PROTO_ROOT}/{PROTO}"))
        .status()
        .expect("run vendored protoc");
    assert!(status.success(), "protoc failed on {PROTO}");
    connectrpc_build::Config::new()
        .descriptor_set(&descriptor)
        .files(&[PROTO])
        .include_file("_connectrpc_ping.rs")
        .compile()
        .expect("connectrpc codegen");
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
}
