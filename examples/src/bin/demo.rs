//! The demo: a Connect frontend calling a tonic backend, traced end to end.
//!
//! Coming soon (tracked in the demo issue); for now it says so and exits 0.

fn main() {
    println!("otel-tower demo: coming soon.");
    println!(
        "Meanwhile: `cargo test --workspace` runs the suite against real servers on 127.0.0.1."
    );
}
