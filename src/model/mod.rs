//! Models built from configuration: the study's linear softmax model and the MLP ([`mlp`]), the
//! convolutional networks `cnn`, `cnn-bn` and `resnet` ([`cnn`]), and their Keras-style
//! [`summary`].
//!
//! Every model maps `[batch, 1, 28, 28]` images to `[batch, 10]` logits; the softmax lives in the
//! loss (cross-entropy on logits), which is the same function as Keras's softmax output layer with
//! categorical cross-entropy.

pub mod cnn;
pub mod layers;
pub mod mlp;
pub mod summary;
pub mod whiten;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use cnn::{ConvNet, ResNet};
pub use mlp::{ActivationKind, Mlp};
pub use summary::{LayerRow, Summary};

/// Which family of network to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Flatten -> Dense(10): multinomial logistic regression.
    Linear,
    /// Flatten -> (Dense -> activation -> dropout)* -> Dense(10).
    Mlp,
    /// (Conv 3x3 valid -> [BatchNorm] -> MaxPool 2x2 -> ReLU) per entry of `channels` -> Dense(`dense`) -> dropout -> Dense(10).
    Cnn,
    /// (2 x [Conv 3x3 same -> BatchNorm -> ReLU] -> MaxPool 2x2) per entry of `channels` -> dense head.
    CnnBn,
    /// Stem conv, `blocks[i]` residual blocks of `channels[i]` channels per stage, global average
    /// pooling, dropout, Dense(10).
    Resnet,
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
    /// Batch normalisation between each hidden Dense layer and its activation (MLP), or after
    /// each convolution (`cnn`; `cnn-bn` always has it).
    pub batch_norm: bool,
    /// Convolution channels per stage (CNN, ResNet).
    pub channels: Vec<usize>,
    /// Width of the dense layer before the classifier (CNN); 0 for none.
    pub dense: usize,
    /// Residual blocks per stage (ResNet).
    pub blocks: Vec<usize>,
    /// The first convolution's first 18 kernels set to whiten the training images' 3x3
    /// patches before training (CNN, ResNet; see [`whiten`]).
    pub whiten: bool,
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
            channels: vec![32, 64],
            dense: 128,
            blocks: vec![2, 2, 2],
            whiten: false,
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
        let bad = |key: &str, why: String| Err(Error::Config(format!("model.{key}: {why}")));
        match self.arch {
            Arch::Linear if !self.hidden.is_empty() => bad(
                "hidden",
                format!(
                    "{:?}: the linear model has no hidden layers (use arch = \"mlp\")",
                    self.hidden
                ),
            ),
            Arch::Mlp if self.hidden.contains(&0) => bad(
                "hidden",
                format!(
                    "{:?}: every hidden layer needs at least one unit",
                    self.hidden
                ),
            ),
            Arch::Cnn | Arch::CnnBn | Arch::Resnet
                if self.channels.is_empty() || self.channels.contains(&0) =>
            {
                bad(
                    "channels",
                    format!(
                        "{:?}: give at least one stage, each with at least one channel",
                        self.channels
                    ),
                )
            }
            Arch::Cnn if self.channels.len() > 3 => bad(
                "channels",
                format!(
                    "{:?}: at most 3 stages fit a 28x28 image with unpadded convolutions",
                    self.channels
                ),
            ),
            Arch::CnnBn if self.channels.len() > 4 => bad(
                "channels",
                format!(
                    "{:?}: at most 4 pooled stages fit a 28x28 image",
                    self.channels
                ),
            ),
            Arch::Resnet if self.channels.len() != self.blocks.len() || self.channels.len() > 4 => {
                bad(
                    "blocks",
                    format!(
                        "{:?}: give one block count per entry of channels {:?} (at most 4 stages)",
                        self.blocks, self.channels
                    ),
                )
            }
            _ if self.whiten && self.arch.is_dense() => bad(
                "whiten",
                "only a convolutional network (cnn, cnn-bn, resnet) has a first convolution to whiten".into(),
            ),
            _ if self.whiten && self.channels[0] < whiten::FILTERS => bad(
                "whiten",
                format!(
                    "the first convolution has {} channels; whitening sets {} of them (channels[0] >= {})",
                    self.channels[0],
                    whiten::FILTERS,
                    whiten::FILTERS
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Builds the model with freshly initialised weights (Glorot-uniform kernels, zero biases).
    pub fn init(&self, device: &Device) -> Model {
        match self.arch {
            Arch::Linear | Arch::Mlp => Model::Mlp(Mlp::new(
                self.mlp_hidden(),
                self.activation,
                self.dropout,
                self.batch_norm,
                device,
            )),
            Arch::Cnn | Arch::CnnBn => Model::Cnn(ConvNet::new(
                &self.channels,
                self.dense,
                self.dropout,
                self.arch == Arch::CnnBn,
                self.arch == Arch::CnnBn || self.batch_norm,
                device,
            )),
            Arch::Resnet => Model::Resnet(ResNet::new(
                &self.channels,
                &self.blocks,
                self.dropout,
                device,
            )),
        }
    }

    fn mlp_hidden(&self) -> &[usize] {
        match self.arch {
            Arch::Mlp => &self.hidden,
            _ => &[],
        }
    }

    /// The Keras-style layer table of the model this configuration builds.
    pub fn summary(&self) -> Summary {
        match self.arch {
            Arch::Linear | Arch::Mlp => mlp::summary(
                self.mlp_hidden(),
                self.activation,
                self.dropout,
                self.batch_norm,
            ),
            Arch::Cnn | Arch::CnnBn => cnn::convnet_summary(
                &self.channels,
                self.dense,
                self.dropout,
                self.arch == Arch::CnnBn,
                self.arch == Arch::CnnBn || self.batch_norm,
            ),
            Arch::Resnet => cnn::resnet_summary(&self.channels, &self.blocks, self.dropout),
        }
    }
}

impl Arch {
    /// The linear model and the MLP, which have no convolutions.
    pub fn is_dense(self) -> bool {
        matches!(self, Arch::Linear | Arch::Mlp)
    }
}

/// Any model fmnist trains.
#[derive(Module, Debug)]
// One model lives per run (a few, with the weight average): boxing the ResNet saves nothing.
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Mlp(Mlp),
    Cnn(ConvNet),
    Resnet(ResNet),
}

impl Model {
    /// The model with its first convolution's leading kernels replaced by `filters` (see
    /// [`whiten`]); a model without convolutions as it is.
    pub fn with_first_filters(self, filters: &[f32]) -> Self {
        match self {
            Model::Mlp(m) => Model::Mlp(m),
            Model::Cnn(m) => Model::Cnn(m.with_first_filters(filters)),
            Model::Resnet(m) => Model::Resnet(m.with_first_filters(filters)),
        }
    }

    /// The layers at inference, with their weights (see [`layers`]).
    pub fn layers(&self) -> Vec<layers::Layer> {
        match self {
            Model::Mlp(m) => m.layers(),
            Model::Cnn(m) => m.layers(),
            Model::Resnet(m) => m.layers(),
        }
    }

    /// # Shapes
    ///   - images: `[batch, 1, 28, 28]`
    ///   - output: `[batch, 10]` logits
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(images),
            Model::Cnn(m) => m.forward(images),
            Model::Resnet(m) => m.forward(images),
        }
    }
}
