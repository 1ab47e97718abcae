//! Code generation for the integration tests, with cargo alone (no system
//! protoc, no download). Each framework's generator lives in its own file.

#[path = "build_tonic.rs"]
mod build_tonic;

// The same generator as the examples', run on this package's protos.
#[path = "../examples/build_connect.rs"]
mod build_connect;

fn main() {
    build_tonic::run();
    build_connect::run();
}
