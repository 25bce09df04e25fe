//! Models built from configuration: the study's linear softmax model and the MLP.
//!
//! Every model maps `[batch, 1, 28, 28]` images to `[batch, 10]` logits; the softmax lives in the
//! loss (cross-entropy on logits), which is the same function as Keras's softmax output layer with
//! categorical cross-entropy.

pub mod mlp;
pub mod summary;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use mlp::{ActivationKind, Mlp};
pub use summary::{LayerRow, Summary};

/// Which family of network to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Flatten -> Dense(10): multinomial logistic regression.
    Linear,
    /// Flatten -> (Dense -> activation -> dropout)* -> Dense(10).
    Mlp,
}

/// Model configuration, as it appears under `[model]` in a TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Network family.
    pub arch: Arch,
    /// Hidden layer widths (MLP only).
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer.
    pub activation: ActivationKind,
    /// Dropout rate after each hidden layer's activation; 0 disables it.
    pub dropout: f64,
    /// Batch normalisation between each hidden Dense layer and its activation.
    pub batch_norm: bool,
}

impl Default for ModelConfig {
    /// The study's MLP: 784-60-60-10 with ReLU, no dropout.
    fn default() -> Self {
        ModelConfig {
            arch: Arch::Mlp,
            hidden: vec![60, 60],
            activation: ActivationKind::Relu,
            dropout: 0.0,
            batch_norm: false,
        }
    }
}

impl ModelConfig {
    /// The linear softmax model.
    pub fn linear() -> Self {
        ModelConfig {
            arch: Arch::Linear,
            hidden: vec![],
            ..Default::default()
        }
    }

    /// Checks value ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "model.dropout = {}: must be at least 0 and below 1",
                self.dropout
            )));
        }
        match self.arch {
            Arch::Linear if !self.hidden.is_empty() => Err(Error::Config(format!(
                "model.hidden = {:?}: the linear model has no hidden layers (use arch = \"mlp\")",
                self.hidden
            ))),
            Arch::Mlp if self.hidden.contains(&0) => Err(Error::Config(format!(
                "model.hidden = {:?}: every hidden layer needs at least one unit",
                self.hidden
            ))),
            _ => Ok(()),
        }
    }

    /// Builds the model with freshly initialised weights (Glorot-uniform kernels, zero biases).
    pub fn init(&self, device: &Device) -> Model {
        let hidden = match self.arch {
            Arch::Linear => &[][..],
            Arch::Mlp => &self.hidden[..],
        };
        Model::Mlp(Mlp::new(
            hidden,
            self.activation,
            self.dropout,
            self.batch_norm,
            device,
        ))
    }

    /// The Keras-style layer table of the model this configuration builds.
    pub fn summary(&self) -> Summary {
        let hidden = match self.arch {
            Arch::Linear => &[][..],
            Arch::Mlp => &self.hidden[..],
        };
        mlp::summary(hidden, self.activation, self.dropout, self.batch_norm)
    }
}

/// Any model fmnist trains.
#[derive(Module, Debug)]
pub enum Model {
    Mlp(Mlp),
}

impl Model {
    /// # Shapes
    ///   - images: `[batch, 1, 28, 28]`
    ///   - output: `[batch, 10]` logits
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(images),
        }
    }
}
