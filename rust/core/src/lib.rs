//! tinyfast-core: the pure-Rust half of tinyfast.
//!
//! Nothing here knows about Python; `rust/python` only converts types, and `rust/cli` only parses
//! flags. Every algorithm is testable with `cargo test` alone.
//!
//! The early-exit int8 runtime: [`bundle`] loads and validates a bundle (docs/bundle.md),
//! [`tokenize`] turns texts into ids (with a fast path for ASCII BERT texts in `wordpiece`), [`model`] is the encoder with its branches and head, and
//! [`runtime`] ties them together behind [`Runtime`].

pub mod bundle;
pub mod config;
pub mod cpu;
pub mod error;
pub mod files;
pub mod gemm;
pub mod model;
pub mod quant;
pub mod rng;
pub mod runtime;
/// Helpers for tests (the `testing` feature): see the module docs.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenize;
mod wordpiece;

pub use bundle::Bundle;
pub use error::{Error, Result};
pub use runtime::{Predictions, Runtime, RuntimeOptions};
pub use tokenize::{Encoded, Input, TokenBatch};

/// The version of this build, shared by the Python extension and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
