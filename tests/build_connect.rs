//! connectrpc code generation for the integration tests.

pub fn run() {}
