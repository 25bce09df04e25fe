//! The multi-layer perceptron; with no hidden layer it is the linear softmax model.

use burn::module::Param;
use burn::nn::{self, BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::layers::Layer;
use super::summary::{LayerRow, Summary};
use crate::data::{NUM_CLASSES, PIXELS};

/// Activation functions for hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationKind {
    Relu,
    Elu,
    Selu,
    Tanh,
    Sigmoid,
    Gelu,
    /// Leaky ReLU with negative slope 0.01 (PyTorch's default).
    LeakyRelu,
}

impl ActivationKind {
    /// Every activation, in the order the study compares them.
    pub const ALL: [ActivationKind; 7] = [
        ActivationKind::Elu,
        ActivationKind::Relu,
        ActivationKind::Selu,
        ActivationKind::Tanh,
        ActivationKind::Sigmoid,
        ActivationKind::Gelu,
        ActivationKind::LeakyRelu,
    ];

    /// The name used in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ActivationKind::Relu => "relu",
            ActivationKind::Elu => "elu",
            ActivationKind::Selu => "selu",
            ActivationKind::Tanh => "tanh",
            ActivationKind::Sigmoid => "sigmoid",
            ActivationKind::Gelu => "gelu",
            ActivationKind::LeakyRelu => "leaky-relu",
        }
    }
}

/// A dense layer as Keras initialises it: Glorot-uniform kernel, zero bias.
pub fn dense(d_input: usize, d_output: usize, device: &Device) -> Linear {
    let weight = nn::Initializer::XavierUniform { gain: 1.0 }.init_with(
        [d_input, d_output],
        Some(d_input),
        Some(d_output),
        device,
    );
    Linear {
        weight,
        bias: Some(Param::from_tensor(Tensor::zeros([d_output], device))),
    }
}

/// `layer` applied to `x` (then the activation `act`, if any) by the fused dense kernel.
///
/// # Shapes
///   - x: `[batch, inputs]`
///   - output: `[batch, outputs]`
pub fn dense_forward(layer: &Linear, x: Tensor<2>, act: Option<ActivationKind>) -> Tensor<2> {
    match &layer.bias {
        Some(bias) => crate::ops::dense(x, layer.weight.val(), bias.val(), act),
        None => {
            let y = layer.forward(x);
            match act {
                Some(kind) => crate::ops::activation(y, kind),
                None => y,
            }
        }
    }
}

/// Flatten -> (Dense -> [batch norm] -> activation -> dropout) per hidden layer -> Dense(10).
#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Vec<Linear>,
    /// One per hidden layer when batch normalisation is on, else empty.
    norms: Vec<BatchNorm>,
    output: Linear,
    /// Applied by [`crate::ops::activation`] (fmnist's kernel on flex, Burn's functions elsewhere).
    #[module(skip)]
    activation: ActivationKind,
    dropout: Dropout,
}

impl Mlp {
    /// An MLP with the given hidden widths; `hidden = []` gives the linear model.
    pub fn new(
        hidden: &[usize],
        activation: ActivationKind,
        dropout: f64,
        batch_norm: bool,
        device: &Device,
    ) -> Self {
        let mut width = PIXELS;
        let mut layers = Vec::with_capacity(hidden.len());
        let mut norms = Vec::new();
        for &h in hidden {
            layers.push(dense(width, h, device));
            if batch_norm {
                norms.push(BatchNormConfig::new(h).init(device));
            }
            width = h;
        }
        Mlp {
            hidden: layers,
            norms,
            output: dense(width, NUM_CLASSES, device),
            activation,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// # Shapes
    ///   - images: `[batch, 1, 28, 28]`
    ///   - output: `[batch, 10]` logits
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x: Tensor<2> = images.flatten(1, 3); // [batch, 784]
        // Without batch normalisation between them, the activation runs inside the dense kernel.
        let fused = self.norms.is_empty();
        for (i, layer) in self.hidden.iter().enumerate() {
            if fused {
                x = dense_forward(layer, x, Some(self.activation)); // [batch, hidden], activated
            } else {
                x = dense_forward(layer, x, None); // [batch, hidden]
                if let Some(norm) = self.norms.get(i) {
                    x = norm.forward(x);
                }
                x = crate::ops::activation(x, self.activation);
            }
            x = self.dropout.forward(x);
        }
        dense_forward(&self.output, x, None) // [batch, 10]
    }
}

impl Mlp {
    /// The layers at inference (see [`super::layers`]).
    pub fn layers(&self) -> Vec<Layer> {
        let mut layers = vec![Layer::Flatten];
        for (i, dense) in self.hidden.iter().enumerate() {
            layers.push(Layer::dense(format!("hidden.{i}"), dense));
            if let Some(norm) = self.norms.get(i) {
                layers.push(Layer::batch_norm(format!("norms.{i}"), norm));
            }
            layers.push(Layer::Activation(self.activation));
        }
        layers.push(Layer::dense("output", &self.output));
        layers
    }
}

/// The Keras-style summary of an MLP with these settings.
pub fn summary(
    hidden: &[usize],
    activation: ActivationKind,
    dropout: f64,
    batch_norm: bool,
) -> Summary {
    let mut summary = Summary::new("sequential");
    summary.push(LayerRow::new("Flatten", vec![PIXELS], 0));
    let mut width = PIXELS;
    for &h in hidden {
        if batch_norm {
            summary.push(LayerRow::new("Dense", vec![h], width * h + h));
            summary.push(
                LayerRow::new("BatchNormalization", vec![h], 2 * h)
                    .with_non_trainable(2 * h)
                    .with_note(activation.name()),
            );
        } else {
            summary
                .push(LayerRow::new("Dense", vec![h], width * h + h).with_note(activation.name()));
        }
        if dropout > 0.0 {
            summary
                .push(LayerRow::new("Dropout", vec![h], 0).with_note(&format!("rate {dropout}")));
        }
        width = h;
    }
    summary.push(
        LayerRow::new(
            "Dense",
            vec![NUM_CLASSES],
            width * NUM_CLASSES + NUM_CLASSES,
        )
        .with_note("softmax"),
    );
    summary
}
