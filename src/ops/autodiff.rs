//! The autodiff implementation of [`CpuKernels`] on flex: each operation runs the flex forward
//! pass, keeps what its backward pass needs when the graph tracks it, and registers the gradients
//! of its inputs in that backward pass.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Flex, TensorMetadata};
use burn::prelude::*;

use super::flex::{
    conv_pool_forward, conv_shape, cross_entropy_forward, dense_shape, dims4, fused,
    max_pool_forward, norm_shape, tensor, values,
};
use super::{CpuKernels, activation, amx, conv, dense, loss, norm, pool, relu};

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
    /// The input, the weight, the output and the fused activation.
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        Option<crate::model::ActivationKind>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, y, act) = ops.state;
        let s = dense_shape(&x, &weight);
        let (dw, db, dx) = dense::backward(
            &s,
            &values(&x),
            &values(&weight),
            &values(&y),
            &values(&dy),
            fused(act),
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
struct ActivationBackward;

impl Backward<Flex, 1> for ActivationBackward {
    /// The output (the input for GELU) and the activation.
    type State = (FlexTensor, crate::model::ActivationKind);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let (x, kind) = &ops.state;
            let dx = activation::backward(*kind, &values(x), &values(&dy));
            grads.register::<Flex>(node.id, tensor(dx, x.shape()));
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

    fn fast_activation(
        x: FloatTensor<Self>,
        kind: crate::model::ActivationKind,
    ) -> FloatTensor<Self> {
        match ActivationBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                if activation::backward_needs_input(kind) {
                    let y = Flex::fast_activation(input.clone(), kind);
                    prep.finish((input, kind), y)
                } else {
                    let y = Flex::fast_activation(input, kind);
                    prep.finish((y.clone(), kind), y)
                }
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::fast_activation(x.into_primitive(), kind))
            }
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
        act: Option<crate::model::ActivationKind>,
    ) -> FloatTensor<Self> {
        match DenseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let y = Flex::fast_dense(x.clone(), weight.clone(), bias.into_primitive(), act);
                prep.finish((x, weight, y.clone(), act), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fast_dense(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                act,
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
