//! tinyfast-core: the pure-Rust half of tinyfast.
//!
//! Nothing here knows about Python; `rust/python` only converts types, and `rust/cli` only parses
//! flags. Every algorithm is testable with `cargo test` alone.

pub mod cpu;

/// The version of this build, shared by the Python extension and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
