//! connectrpc code generation for the examples.

pub fn run() {}
