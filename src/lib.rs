//! fmnist: train, compare and explain deep-learning models on Fashion-MNIST, on Burn.
//!
//! One module per concern, as in Burn's `examples/guide`: [`data`] finds, verifies and batches the
//! dataset, [`model`] builds networks from configuration, [`ops`] holds the CPU kernels,
//! [`training`] runs the loop and writes run directories, [`evaluation`] scores saved weights,
//! [`inference`] classifies pictures, [`export`] writes models as ONNX and safetensors, [`study`] expands and runs study files, [`report`] analyses
//! and plots them, [`bench`] times the benchmark workloads, [`fsio`] writes files atomically,
//! [`error`] holds the one-line errors, and [`cli`] is the command-line front end.

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod evaluation;
pub mod export;
pub mod fsio;
pub mod inference;
pub mod model;
pub mod ops;
pub mod report;
pub mod study;
pub mod training;

pub use error::{Error, Result};
