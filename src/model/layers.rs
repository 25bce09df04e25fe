//! What a trained model computes at inference, as a list of layers with their weights copied to
//! the host: the form that [`crate::export`] writes as ONNX or safetensors. Dropout is left out
//! (it is the identity at inference) and batch normalisation carries its running statistics.

use burn::module::Param;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

use super::ActivationKind;

/// A tensor's shape and values, row-major, as the model holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl Array {
    pub fn of<const D: usize>(tensor: Tensor<D>) -> Self {
        Array {
            shape: tensor.dims().to_vec(),
            values: tensor.into_data().iter::<f32>().collect(),
        }
    }

    fn param<const D: usize>(param: &Param<Tensor<D>>) -> Self {
        Array::of(param.val())
    }

    /// A 2-D array transposed (`[a, b]` -> `[b, a]`).
    pub fn transposed(&self) -> Array {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut values = vec![0.0; self.values.len()];
        for r in 0..rows {
            for c in 0..cols {
                values[c * rows + r] = self.values[r * cols + c];
            }
        }
        Array {
            shape: vec![cols, rows],
            values,
        }
    }
}

/// One layer. `name` is the layer's name in PyTorch's `state_dict` of the equivalent module.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// `[batch, c, h, w]` -> `[batch, c * h * w]`.
    Flatten,
    /// `x W + b`, with `weight` as Burn holds it: `[inputs, outputs]`.
    Dense {
        name: String,
        weight: Array,
        bias: Array,
    },
    /// A stride-1 convolution, `weight` `[out, in, k, k]`, zero padding on every side.
    Conv {
        name: String,
        weight: Array,
        bias: Array,
        padding: usize,
    },
    /// Batch normalisation at inference: `(x - mean) / sqrt(var + epsilon) * gamma + beta`.
    BatchNorm {
        name: String,
        gamma: Array,
        beta: Array,
        mean: Array,
        var: Array,
        epsilon: f64,
    },
    Activation(ActivationKind),
    /// 2x2 max pooling, stride 2.
    MaxPool2,
    /// The mean over height and width: `[batch, c, h, w]` -> `[batch, c]`.
    GlobalAveragePool,
    /// `relu(body(x) + shortcut)`, the shortcut being `x` or its 1x1 `projection`.
    Residual {
        body: Vec<Layer>,
        projection: Option<Box<Layer>>,
    },
}

impl Layer {
    pub fn dense(name: impl Into<String>, linear: &Linear) -> Self {
        let outputs = linear.weight.val().dims()[1];
        Layer::Dense {
            name: name.into(),
            weight: Array::param(&linear.weight),
            bias: linear.bias.as_ref().map(Array::param).unwrap_or(Array {
                shape: vec![outputs],
                values: vec![0.0; outputs],
            }),
        }
    }

    pub fn conv(
        name: impl Into<String>,
        weight: &Param<Tensor<4>>,
        bias: &Param<Tensor<1>>,
        padding: usize,
    ) -> Self {
        Layer::Conv {
            name: name.into(),
            weight: Array::param(weight),
            bias: Array::param(bias),
            padding,
        }
    }

    pub fn batch_norm(name: impl Into<String>, norm: &BatchNorm) -> Self {
        Layer::BatchNorm {
            name: name.into(),
            gamma: Array::param(&norm.gamma),
            beta: Array::param(&norm.beta),
            mean: Array::of(norm.running_mean.value()),
            var: Array::of(norm.running_var.value()),
            epsilon: norm.epsilon,
        }
    }
}
