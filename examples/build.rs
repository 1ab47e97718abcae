//! Code generation for the examples, with cargo alone (no system protoc).
//! Each framework's generator lives in its own file.

#[path = "build_tonic.rs"]
mod build_tonic;

#[path = "build_connect.rs"]
mod build_connect;

#[path = "build_demo.rs"]
mod build_demo;

fn main() {
    build_tonic::run();
    build_connect::run();
    build_demo::run();
}
