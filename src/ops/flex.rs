//! The flex implementation of [`CpuKernels`]: each operation reads its tensors' values, runs the
//! kernel of its module and wraps the result, plus the forward passes that also return what the
//! backward pass (in `autodiff`) keeps.

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::prelude::*;

use super::conv::{self, ConvShape};
use super::dense::{self, DenseShape, Fused};
use super::norm::{self, NormShape};
use super::{CpuKernels, activation, amx, loss, pool, relu};

pub(super) fn norm_shape(x: &FlexTensor) -> NormShape {
    let [batch, channels, h, w] = dims4(x);
    NormShape {
        batch,
        channels,
        plane: h * w,
    }
}

/// Class indices of a flex integer tensor.
pub(super) fn indices(t: &FlexTensor) -> Vec<usize> {
    match t.as_slice::<i64>() {
        Some(slice) => slice.iter().map(|&v| v as usize).collect(),
        None => t
            .to_contiguous()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v as usize)
            .collect(),
    }
}

/// `(rows, classes)` of a logits tensor, checked against the targets.
pub(super) fn logits_shape(logits: &FlexTensor, targets: &[usize]) -> (usize, usize) {
    let shape = logits.shape();
    let (rows, classes) = (shape[0], shape[1]);
    assert_eq!(
        rows,
        targets.len(),
        "cross_entropy: {rows} rows of logits, {} targets",
        targets.len()
    );
    assert!(
        targets.iter().all(|&t| t < classes),
        "cross_entropy: a target is not below the {classes} classes"
    );
    (rows, classes)
}

/// The values of a flex tensor as a contiguous `f32` slice: borrowed when the tensor already is
/// one (the usual case), copied otherwise.
pub(super) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("flex float tensors hold f32"),
        ),
    }
}

pub(super) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

pub(super) fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

pub(super) fn conv_shape(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> ConvShape {
    let [batch, in_channels, height, width] = dims4(x);
    let [out_channels, w_in, kernel, kw] = dims4(weight);
    assert_eq!(
        w_in, in_channels,
        "conv2d: weight expects {w_in} input channels, got {in_channels}"
    );
    assert_eq!(kernel, kw, "conv2d: only square kernels are supported");
    ConvShape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel,
        padding,
    }
}

pub(super) fn dense_shape(x: &FlexTensor, weight: &FlexTensor) -> DenseShape {
    let (xs, ws) = (x.shape(), weight.shape());
    assert_eq!(
        xs[1], ws[0],
        "dense: weight expects {} inputs, got {}",
        ws[0], xs[1]
    );
    DenseShape {
        rows: xs[0],
        inputs: xs[1],
        outputs: ws[1],
    }
}

pub(super) fn fused(act: Option<crate::model::ActivationKind>) -> Fused {
    match act {
        None => Fused::Identity,
        Some(crate::model::ActivationKind::Relu) => Fused::Relu,
        Some(kind) => Fused::Activation(kind),
    }
}

impl CpuKernels for Flex {
    fn fast_batch_norm_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> FlexTensor {
        let s = norm_shape(&x);
        let stats: Vec<(f32, f32)> = values(&mean)
            .iter()
            .copied()
            .zip(values(&var).iter().copied())
            .collect();
        let y = norm::normalize(
            &s,
            &values(&x),
            &values(&gamma),
            &values(&beta),
            &stats,
            epsilon,
            relu,
        );
        tensor(y, x.shape())
    }

    fn fast_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let s = norm_shape(&x);
        let (y, mean, var) = norm::forward(
            &s,
            &values(&x),
            &values(&gamma),
            &values(&beta),
            epsilon,
            relu,
        );
        let shape = x.shape();
        (
            tensor(y, shape),
            tensor(mean, [s.channels]),
            tensor(var, [s.channels]),
        )
    }

    fn fast_cross_entropy(logits: FlexTensor, targets: FlexTensor, smoothing: f32) -> FlexTensor {
        cross_entropy_forward(&logits, &targets, smoothing).0
    }

    fn fast_relu(x: FlexTensor) -> FlexTensor {
        tensor(relu::forward(&values(&x)), x.shape())
    }

    fn fast_activation(x: FlexTensor, kind: crate::model::ActivationKind) -> FlexTensor {
        tensor(activation::forward(kind, &values(&x)), x.shape())
    }

    fn fast_add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        tensor(relu::add_forward(&values(&a), &values(&b)), a.shape())
    }

    fn fast_dense(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        act: Option<crate::model::ActivationKind>,
    ) -> FlexTensor {
        let s = dense_shape(&x, &weight);
        let y = dense::forward(
            &s,
            &values(&x),
            &values(&weight),
            &values(&bias),
            fused(act),
        );
        tensor(y, [s.rows, s.outputs])
    }

    fn fast_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: usize,
    ) -> FlexTensor {
        let s = conv_shape(&x, &weight, padding);
        let out = conv::forward(
            &s,
            &values(&x),
            &values(&weight),
            &values(&bias),
            amx::use_bf16(),
        );
        tensor(
            out,
            [s.batch, s.out_channels, s.out_height(), s.out_width()],
        )
    }

    fn fast_max_pool2x2(x: FlexTensor) -> FlexTensor {
        max_pool_forward(&x).0
    }

    fn fast_conv2d_pool(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: usize,
    ) -> FlexTensor {
        conv_pool_forward(&x, &weight, &bias, padding).0
    }
}

/// Cross-entropy forward: the loss `[1]`, with what its backward needs (softmax probabilities,
/// class indices, number of classes).
pub(super) fn cross_entropy_forward(
    logits: &FlexTensor,
    targets: &FlexTensor,
    smoothing: f32,
) -> (FlexTensor, Vec<f32>, Vec<usize>, usize) {
    let targets = indices(targets);
    let (_, classes) = logits_shape(logits, &targets);
    let (loss, probs) = loss::forward(&values(logits), classes, &targets, smoothing);
    (tensor(vec![loss as f32], [1]), probs, targets, classes)
}

/// 2x2 max pooling forward, with which input held each maximum.
pub(super) fn max_pool_forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [n, c, h, w] = dims4(x);
    let (out, arg) = pool::forward(&values(x), n * c, h, w);
    (tensor(out, [n, c, h / 2, w / 2]), arg)
}

/// Fused convolution and 2x2 max pooling forward, with which output held each maximum.
pub(super) fn conv_pool_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    padding: usize,
) -> (FlexTensor, Vec<u8>) {
    let s = conv_shape(x, weight, padding);
    let (out, arg) = conv::forward_pooled(
        &s,
        &values(x),
        &values(weight),
        &values(bias),
        amx::use_bf16(),
    );
    let shape = [
        s.batch,
        s.out_channels,
        s.out_height() / 2,
        s.out_width() / 2,
    ];
    (tensor(out, shape), arg)
}
