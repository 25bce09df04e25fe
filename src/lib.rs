//! fmnist: train, compare and explain deep-learning models on Fashion-MNIST, on Burn.
//!
//! One module per concern, as in Burn's `examples/guide`: [`data`] finds, verifies and batches the
//! dataset, [`model`] builds networks from configuration, [`training`] runs the loop and writes run
//! directories, [`evaluation`] scores saved weights, and [`cli`] is the command-line front end.

pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod evaluation;
pub mod fsio;
pub mod inference;
pub mod model;
pub mod ops;
pub mod report;
pub mod study;
pub mod training;

pub use error::{Error, Result};
