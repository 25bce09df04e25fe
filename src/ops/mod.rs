//! Faster CPU kernels for the `flex` backend, written as a Burn backend extension with their own
//! backward passes: convolution (im2col + AVX-512 GEMM, or bfloat16 AMX tiles at the `medium`
//! [`amx::MatmulPrecision`]), 2x2 max pooling, dense layers, softmax cross-entropy, batch
//! normalisation and ReLU (alone, after batch normalisation, or after a residual addition).
//! Other backends (CUDA, wgpu) keep Burn's own operations; [`conv2d`], [`max_pool2x2`],
//! [`dense`], [`cross_entropy`], [`batch_norm`], [`relu`] and [`add_relu`] pick the path by
//! device.

pub mod amx;
pub mod conv;
pub mod dense;
#[cfg(target_arch = "x86_64")]
pub mod lanes;
pub mod loss;
mod matmul;
pub mod norm;
pub mod pool;
pub mod relu;

use std::mem::MaybeUninit;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::module::{conv2d as burn_conv2d, max_pool2d as burn_max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

use conv::ConvShape;
use dense::{DenseShape, Fused};
use norm::NormShape;

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
    /// Dense layer `x · weight + bias` (`weight` is `[inputs, outputs]`), then ReLU when `relu`.
    fn fast_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
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

/// Dense layer `x · weight + bias`, then ReLU when `relu`: one fused kernel on flex, Burn's
/// operations elsewhere.
///
/// # Shapes
///   - x: `[batch, inputs]`, weight: `[inputs, outputs]`, bias: `[outputs]`
///   - output: `[batch, outputs]`
pub fn dense(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, relu: bool) -> Tensor<2> {
    if is_flex(&x.device()) {
        let out = <Dispatch as CpuKernels>::fast_dense(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            relu,
        );
        return Tensor::from_dispatch(out);
    }
    let y = x.matmul(weight) + bias.unsqueeze();
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
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

fn norm_shape(x: &FlexTensor) -> NormShape {
    let [batch, channels, h, w] = dims4(x);
    NormShape {
        batch,
        channels,
        plane: h * w,
    }
}

/// Class indices of a flex integer tensor.
fn indices(t: &FlexTensor) -> Vec<usize> {
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
fn logits_shape(logits: &FlexTensor, targets: &[usize]) -> (usize, usize) {
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
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
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

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

fn conv_shape(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> ConvShape {
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

fn dense_shape(x: &FlexTensor, weight: &FlexTensor) -> DenseShape {
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

fn fused(relu: bool) -> Fused {
    if relu { Fused::Relu } else { Fused::Identity }
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

    fn fast_add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        tensor(relu::add_forward(&values(&a), &values(&b)), a.shape())
    }

    fn fast_dense(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, relu: bool) -> FlexTensor {
        let s = dense_shape(&x, &weight);
        let y = dense::forward(
            &s,
            &values(&x),
            &values(&weight),
            &values(&bias),
            fused(relu),
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
fn cross_entropy_forward(
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
fn max_pool_forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [n, c, h, w] = dims4(x);
    let (out, arg) = pool::forward(&values(x), n * c, h, w);
    (tensor(out, [n, c, h / 2, w / 2]), arg)
}

/// Fused convolution and 2x2 max pooling forward, with which output held each maximum.
fn conv_pool_forward(
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

/// Registers `grad` (of `shape`) as the gradient of `node`, when the node is tracked and the
/// gradient was computed.
fn register(
    grads: &mut Gradients,
    node: Option<NodeId>,
    grad: Option<Vec<f32>>,
    shape: impl Into<Shape>,
) {
    if let (Some(node), Some(grad)) = (node, grad) {
        grads.register::<Flex>(node, tensor(grad, shape));
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// The input, the weight, the padding and, when pooling is fused in, the argmax codes.
    type State = (FlexTensor, FlexTensor, usize, Option<Vec<u8>>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, padding, pooled) = ops.state;
        let s = conv_shape(&x, &weight, padding);
        let (x, weight, dy) = (values(&x), values(&weight), values(&dy));
        let (need_dx, bf16) = (node_x.is_some(), amx::use_bf16());
        let (dw, db, dx) = match &pooled {
            Some(arg) => conv::backward_pooled(&s, &x, &weight, &dy, arg, need_dx, bf16),
            None => conv::backward(&s, &x, &weight, &dy, need_dx, bf16),
        };
        let [x_id, w_id, b_id] = [node_x, node_w, node_b].map(|node| node.map(|n| n.id));
        register(grads, x_id, dx, [s.batch, s.in_channels, s.height, s.width]);
        let kernel = [s.out_channels, s.in_channels, s.kernel, s.kernel];
        register(grads, w_id, Some(dw), kernel);
        register(grads, b_id, Some(db), [s.out_channels]);
    }
}

#[derive(Debug)]
struct DenseBackward;

impl Backward<Flex, 3> for DenseBackward {
    /// The input, the weight, the output and whether ReLU is fused.
    type State = (FlexTensor, FlexTensor, FlexTensor, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, y, relu) = ops.state;
        let s = dense_shape(&x, &weight);
        let (dw, db, dx) = dense::backward(
            &s,
            &values(&x),
            &values(&weight),
            &values(&y),
            &values(&dy),
            fused(relu),
            node_x.is_some(),
        );
        let [x_id, w_id, b_id] = [node_x, node_w, node_b].map(|node| node.map(|n| n.id));
        register(grads, x_id, dx, [s.rows, s.inputs]);
        register(grads, w_id, Some(dw), [s.inputs, s.outputs]);
        register(grads, b_id, Some(db), [s.outputs]);
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    /// Softmax probabilities, targets, classes and smoothing.
    type State = (Vec<f32>, Vec<usize>, usize, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_logits] = ops.parents;
        let upstream = grads.consume::<Flex>(&ops.node);
        let (probs, targets, classes, smoothing) = ops.state;
        if let Some(node) = node_logits {
            let upstream = values(&upstream)[0];
            let grad = loss::backward(&probs, classes, &targets, smoothing, upstream);
            grads.register::<Flex>(node.id, tensor(grad, [targets.len(), classes]));
        }
    }
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    /// The input, gamma, the batch mean and variance, epsilon, and the output when ReLU is fused.
    type State = (
        FlexTensor,
        FlexTensor,
        Vec<f32>,
        Vec<f32>,
        f64,
        Option<FlexTensor>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, mean, var, epsilon, relu_out) = ops.state;
        let s = norm_shape(&x);
        let relu_out = relu_out.as_ref().map(values);
        let gamma_values = values(&gamma);
        let saved = norm::Saved {
            gamma: &gamma_values,
            mean: &mean,
            var: &var,
            epsilon,
        };
        let (dx, dgamma, dbeta) =
            norm::backward(&s, &values(&x), &saved, &values(&dy), relu_out.as_deref());
        let [x_id, g_id, b_id] = [node_x, node_gamma, node_beta].map(|node| node.map(|n| n.id));
        register(grads, x_id, Some(dx), x.shape());
        register(grads, g_id, Some(dgamma), [s.channels]);
        register(grads, b_id, Some(dbeta), [s.channels]);
    }
}

#[derive(Debug)]
struct ReluBackward;

impl Backward<Flex, 1> for ReluBackward {
    /// The output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let dx = relu::backward(&values(&ops.state), &values(&dy));
            grads.register::<Flex>(node.id, tensor(dx, ops.state.shape()));
        }
    }
}

#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    /// The output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if node_a.is_none() && node_b.is_none() {
            return;
        }
        let grad = relu::backward(&values(&ops.state), &values(&dy));
        // One buffer for both addends: a flex tensor's clone shares it.
        let grad = tensor(grad, ops.state.shape());
        for node in [node_a, node_b].into_iter().flatten() {
            grads.register::<Flex>(node.id, grad.clone());
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// Which input held each maximum, and the input shape.
    type State = (Vec<u8>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (arg, [n, c, h, w]) = ops.state;
        if let Some(node) = node_x {
            let dx = pool::backward(&values(&dy), &arg, n * c, h, w);
            grads.register::<Flex>(node.id, tensor(dx, [n, c, h, w]));
        }
    }
}

impl<C: CheckpointStrategy> CpuKernels for Autodiff<Flex, C> {
    /// Inference only: never tracked (the wrapper calls it on devices without autodiff).
    fn fast_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(Flex::fast_batch_norm_eval(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            var.into_primitive(),
            epsilon,
            relu,
        ))
    }

    fn fast_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = NormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
        let (y, mean, var) = Flex::fast_batch_norm_train(
            x.clone(),
            gamma.clone(),
            beta.into_primitive(),
            epsilon,
            relu,
        );
        let state = |stats: &FlexTensor| values(stats).into_owned();
        let (mean_values, var_values) = (state(&mean), state(&var));
        let out = match prepared {
            OpsKind::Tracked(prep) => {
                let relu_out = relu.then(|| y.clone());
                let state = (x, gamma, mean_values, var_values, epsilon, relu_out);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (out, Self::from_inner(mean), Self::from_inner(var))
    }

    fn fast_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        smoothing: f32,
    ) -> FloatTensor<Self> {
        match CrossEntropyBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, probs, targets, classes) =
                    cross_entropy_forward(&logits.into_primitive(), &targets, smoothing);
                prep.finish((probs, targets, classes, smoothing), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_cross_entropy(
                logits.into_primitive(),
                targets,
                smoothing,
            )),
        }
    }

    fn fast_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::fast_relu(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_relu(x.into_primitive())),
        }
    }

    fn fast_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match AddReluBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::fast_add_relu(a.into_primitive(), b.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::fast_add_relu(a.into_primitive(), b.into_primitive()))
            }
        }
    }

    fn fast_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        match DenseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let y = Flex::fast_dense(x.clone(), weight.clone(), bias.into_primitive(), relu);
                prep.finish((x, weight, y.clone(), relu), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_dense(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                relu,
            )),
        }
    }

    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let out =
                    Flex::fast_conv2d(x.clone(), weight.clone(), bias.into_primitive(), padding);
                prep.finish((x, weight, padding, None), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                padding,
            )),
        }
    }

    fn fast_max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, arg) = max_pool_forward(x.primitive());
                prep.finish((arg, dims4(x.primitive())), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_max_pool2x2(x.into_primitive())),
        }
    }

    fn fast_conv2d_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let (out, arg) = conv_pool_forward(&x, &weight, &bias.into_primitive(), padding);
                prep.finish((x, weight, padding, Some(arg)), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_conv2d_pool(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                padding,
            )),
        }
    }
}
