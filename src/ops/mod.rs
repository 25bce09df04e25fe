//! Faster CPU kernels for the `flex` backend, written as a Burn backend extension with their own
//! backward passes: convolution (im2col + AVX-512 GEMM, or bfloat16 AMX tiles at the `medium`
//! [`amx::MatmulPrecision`]), 2x2 max pooling, dense layers, softmax cross-entropy, batch
//! normalisation and ReLU (alone, after batch normalisation, or after a residual addition).
//! Other backends (CUDA, wgpu) keep Burn's own operations; [`conv2d`], [`max_pool2x2`],
//! [`dense`], [`cross_entropy`], [`batch_norm`], [`relu`] and [`add_relu`] pick the path by
//! device. The flex implementation lives in `flex`, the autodiff one (with the backward passes) in
//! `autodiff`; each kernel in its own module.

pub mod activation;
pub mod amx;
mod autodiff;
pub mod conv;
pub mod dense;
mod flex;
#[cfg(target_arch = "x86_64")]
pub mod lanes;
pub mod loss;
pub mod math;
mod matmul;
pub mod norm;
pub mod pool;
pub mod relu;

use std::mem::MaybeUninit;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::module::{conv2d as burn_conv2d, max_pool2d as burn_max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

/// The operations fmnist implements itself on the CPU.
#[backend_extension(Autodiff, Flex)]
pub trait CpuKernels: burn::backend::Backend {
    /// Stride-1 convolution with square `weight` `[out, in, k, k]`, bias `[out]` and zero padding.
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;
    /// 2x2 max pooling with stride 2.
    fn fast_max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`fast_conv2d`](CpuKernels::fast_conv2d) then [`fast_max_pool2x2`](CpuKernels::fast_max_pool2x2),
    /// fused so that the full-size convolution output is never stored.
    fn fast_conv2d_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;
    /// Dense layer `x · weight + bias` (`weight` is `[inputs, outputs]`), then the activation
    /// `act` if any (not GELU, whose gradient needs the input: see
    /// [`activation::backward_needs_input`]).
    fn fast_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        act: Option<crate::model::ActivationKind>,
    ) -> FloatTensor<Self>;
    /// Mean softmax cross-entropy of `logits` `[rows, classes]` against class indices `targets`
    /// `[rows]`, with label smoothing; `[1]`.
    fn fast_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        smoothing: f32,
    ) -> FloatTensor<Self>;
    /// Batch normalisation of `x` `[batch, channels, h, w]` with the batch's statistics, then
    /// ReLU when `relu`: `(output, mean, biased variance)`, the last two `[channels]` and not
    /// differentiated.
    fn fast_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Batch normalisation of `x` `[batch, channels, h, w]` with given statistics (inference),
    /// then ReLU when `relu`.
    fn fast_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self>;
    /// ReLU, on all threads.
    fn fast_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// One of the MLP's activations, on all threads.
    fn fast_activation(
        x: FloatTensor<Self>,
        kind: crate::model::ActivationKind,
    ) -> FloatTensor<Self>;
    /// `relu(a + b)` for tensors of one shape (the end of a residual block).
    fn fast_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Rows each worker thread takes when `rows` are split into one contiguous block per worker:
/// the batcher and the dense kernels split a batch alike, so that each thread finds the rows it
/// wrote (or read) last in its own cache.
pub fn rows_per_worker(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads()).max(1)
}

/// The element-wise sum of per-task partial results of `len` values each, added in task order
/// (so that the result does not depend on which thread finished first).
fn add_partials(partials: impl IntoIterator<Item = Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = partials.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0.0; len]);
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    total
}

/// `values` as memory to write (every `f32` is a valid value, so what is written stays one).
pub(crate) fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the slice is only written with
    // initialised values through it.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A vector of `len` values that `fill` writes in place, without zeroing the memory first (a
/// `memset` of every activation map and gradient cost 9% of a ResNet training step).
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
pub(crate) unsafe fn written<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` initialised all `len` elements.
    unsafe { values.set_len(len) };
    values
}

/// The values of an `f32` tensor on the host, without a copy when nothing else holds its buffer.
pub fn into_host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    match tensor.into_data().try_into_vec::<f32>() {
        Ok(values) => values,
        Err(error) => unreachable!("an f32 tensor's data is a Vec<f32>: {error:?}"),
    }
}

/// Whether `device` runs on the flex CPU backend (with or without autodiff).
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Convolution with stride 1: the fast kernel on flex, Burn's elsewhere.
///
/// # Shapes
///   - x: `[batch, in, height, width]`, weight: `[out, in, k, k]`, bias: `[out]`
///   - output: `[batch, out, height + 2 padding - k + 1, width + 2 padding - k + 1]`
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    if is_flex(&x.device()) {
        let out = <Dispatch as CpuKernels>::fast_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            padding,
        );
        return Tensor::from_dispatch(out);
    }
    burn_conv2d(
        x,
        weight,
        Some(bias),
        ConvOptions::new([1, 1], [padding, padding], [1, 1], 1),
    )
}

/// 2x2 max pooling, stride 2: the fast kernel on flex, Burn's elsewhere.
///
/// # Shapes
///   - x: `[batch, channels, height, width]`
///   - output: `[batch, channels, height / 2, width / 2]`
pub fn max_pool2x2(x: Tensor<4>) -> Tensor<4> {
    if is_flex(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::fast_max_pool2x2(
            x.into_dispatch(),
        ));
    }
    burn_max_pool2d(x, MaxPoolOptions::new([2, 2]))
}

/// Convolution (stride 1) then 2x2 max pooling: one fused kernel on flex, Burn's two operations
/// elsewhere.
///
/// # Shapes
///   - x: `[batch, in, height, width]`, weight: `[out, in, k, k]`, bias: `[out]`
///   - output: `[batch, out, conv_height / 2, conv_width / 2]`
pub fn conv2d_pool(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    if is_flex(&x.device()) {
        let out = <Dispatch as CpuKernels>::fast_conv2d_pool(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            padding,
        );
        return Tensor::from_dispatch(out);
    }
    max_pool2x2(conv2d(x, weight, bias, padding))
}

/// Dense layer `x · weight + bias`, then the activation `act` if any: one fused kernel on flex
/// (GELU, whose gradient needs its input, as a pass of its own after it), Burn's operations
/// elsewhere.
///
/// # Shapes
///   - x: `[batch, inputs]`, weight: `[inputs, outputs]`, bias: `[outputs]`
///   - output: `[batch, outputs]`
pub fn dense(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    act: Option<crate::model::ActivationKind>,
) -> Tensor<2> {
    if is_flex(&x.device()) {
        let (fused, after) = match act {
            Some(kind) if activation::backward_needs_input(kind) => (None, Some(kind)),
            act => (act, None),
        };
        let out = Tensor::from_dispatch(<Dispatch as CpuKernels>::fast_dense(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            fused,
        ));
        return match after {
            Some(kind) => self::activation(out, kind),
            None => out,
        };
    }
    let y = x.matmul(weight) + bias.unsqueeze();
    match act {
        Some(kind) => self::activation(y, kind),
        None => y,
    }
}

/// Mean softmax cross-entropy with label smoothing `smoothing` (0 for none): one fused kernel on
/// flex, Burn's `CrossEntropyLoss` elsewhere.
///
/// # Shapes
///   - logits: `[batch, classes]`, targets: `[batch]`
///   - output: `[1]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, smoothing: f32) -> Tensor<1> {
    if is_flex(&logits.device()) {
        let out = <Dispatch as CpuKernels>::fast_cross_entropy(
            logits.into_dispatch(),
            targets.into_dispatch(),
            smoothing,
        );
        return Tensor::from_dispatch(out);
    }
    burn::nn::loss::CrossEntropyLossConfig::new()
        .with_smoothing((smoothing > 0.0).then_some(smoothing))
        .init(&logits.device())
        .forward(logits, targets)
}

/// The cross-entropy of a mixed batch (mixup, cutmix): `own` of each row's loss against its own
/// label and `1 - own` against its partner's, row `n - 1 - i` (see [`crate::data::mixing`]).
pub fn mixed_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    own: f32,
    smoothing: f32,
) -> Tensor<1> {
    let partners = targets.clone().flip([0]);
    cross_entropy(logits.clone(), targets, smoothing).mul_scalar(own)
        + cross_entropy(logits, partners, smoothing).mul_scalar(1.0 - own)
}

/// ReLU: on flex a kernel on all threads (Burn's runs on one), Burn's elsewhere.
///
/// # Shapes
///   - x: any; output: same as x
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if is_flex(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::fast_relu(x.into_dispatch()));
    }
    burn::tensor::activation::relu(x)
}

/// The activation `kind`: on flex one pass on all threads, forward and backward; Burn's
/// functions elsewhere.
///
/// # Shapes
///   - x: any; output: same as x
pub fn activation<const D: usize>(x: Tensor<D>, kind: crate::model::ActivationKind) -> Tensor<D> {
    if is_flex(&x.device()) {
        let y = <Dispatch as CpuKernels>::fast_activation(x.into_dispatch(), kind);
        return Tensor::from_dispatch(y);
    }
    burn_activation(x, kind)
}

/// The activation `kind` by Burn's own functions (the reference the kernels are tested against).
pub fn burn_activation<const D: usize>(
    x: Tensor<D>,
    kind: crate::model::ActivationKind,
) -> Tensor<D> {
    use crate::model::ActivationKind as A;
    use burn::tensor::activation as burn_activation;
    match kind {
        A::Relu => burn_activation::relu(x),
        A::Elu => burn_activation::elu(x, 1.0),
        A::Selu => burn_activation::selu(x),
        A::Tanh => burn_activation::tanh(x),
        A::Sigmoid => burn_activation::sigmoid(x),
        A::Gelu => burn_activation::gelu(x),
        A::LeakyRelu => burn_activation::leaky_relu(x, 0.01),
    }
}

/// `relu(a + b)`, the end of a residual block: one fused kernel on flex, Burn's two operations
/// elsewhere.
///
/// # Shapes
///   - a, b: the same shape; output: that shape
pub fn add_relu<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    assert_eq!(a.dims(), b.dims(), "add_relu: operands of different shapes");
    if is_flex(&a.device()) {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::fast_add_relu(
            a.into_dispatch(),
            b.into_dispatch(),
        ));
    }
    burn::tensor::activation::relu(a + b)
}

/// Burn's `BatchNorm` layer applied to `x`, then ReLU when `relu` (fused into the same pass): on
/// flex, its training path (batch statistics, running statistics updated as Burn does) and its
/// inference path (running statistics, on a device without autodiff) on the fast kernels; Burn's
/// own layer otherwise.
///
/// # Shapes
///   - x: `[batch, channels, height, width]`
///   - output: same as x
pub fn batch_norm(norm: &burn::nn::BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    let device = x.device();
    let burns = |x: Tensor<4>| {
        let y = norm.forward(x);
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    };
    if !is_flex(&device) {
        return burns(x);
    }
    if !device.is_autodiff() {
        return Tensor::from_dispatch(<Dispatch as CpuKernels>::fast_batch_norm_eval(
            x.into_dispatch(),
            norm.gamma.val().into_dispatch(),
            norm.beta.val().into_dispatch(),
            norm.running_mean.value().into_dispatch(),
            norm.running_var.value().into_dispatch(),
            norm.epsilon,
            relu,
        ));
    }
    if !norm.training.is_enabled() {
        return burns(x);
    }
    let (out, mean, var) = <Dispatch as CpuKernels>::fast_batch_norm_train(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.epsilon,
        relu,
    );
    let (mean, var) = (
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(var),
    );
    let update = |running: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let value = running
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - norm.momentum)
            .add(batch.detach().mul_scalar(norm.momentum));
        running.update(value.detach());
    };
    update(&norm.running_mean, mean);
    update(&norm.running_var, var);
    Tensor::from_dispatch(out)
}
