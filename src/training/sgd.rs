//! SGD with momentum as one pass over each parameter on the CPU.
//!
//! Burn's `Sgd` updates a parameter with five tensor operations (each a pass over memory and an
//! allocation); for the MLP that was about 6% of an epoch. This optimiser computes the same
//! values, in the same order and precision, in one loop on the flex backend (bit-identical to
//! Burn's, checked in the tests), and falls back to the same tensor operations elsewhere. Its
//! state records under Burn's names (`momentum.velocity`), so checkpoints stay interchangeable.

use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource, join_path};
use burn::prelude::*;
use burn::tensor::DType;

use crate::ops::{into_host_values, is_flex};

/// The update rule: `v = (1 - dampening) g + momentum v` (`v = g` at the first step), then
/// `p -= lr (nesterov ? g + momentum v : v)`, with `g` the gradient plus `weight_decay p`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    /// 0 for plain SGD (no velocity is kept).
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// L2 penalty added to the gradient (0 for none).
    pub weight_decay: f32,
}

/// Velocity of one parameter; `None` without momentum.
#[derive(Clone)]
pub struct SgdState<const D: usize> {
    pub velocity: Option<Tensor<D>>,
}

/// Burn's `SgdState` records its velocity as `momentum.velocity`.
const MOMENTUM: &str = "momentum";
const VELOCITY: &str = "velocity";

impl<const D: usize> RecordState for SgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(velocity) = &self.velocity {
            let path = join_path(prefix, MOMENTUM);
            out.push_tensor(&path, VELOCITY, velocity.clone().into_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let path = join_path(prefix, MOMENTUM);
        let velocity = if src.has_under(&path) {
            Some(Tensor::from_data(src.take_tensor(&path, VELOCITY)?, device))
        } else {
            None
        };
        Some(SgdState { velocity })
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let velocity = state.and_then(|state| state.velocity);
        let fused =
            updates_on_host(&[&tensor, &grad]) && velocity.iter().all(|v| updates_on_host(&[v]));
        let (tensor, velocity) = if fused {
            self.step_in_place(lr, tensor, grad, velocity)
        } else {
            self.step_with_tensors(lr, tensor, grad, velocity)
        };
        (tensor, Some(SgdState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SgdState {
            velocity: state.velocity.map(|v| v.to_device(device)),
        }
    }
}

impl Sgd {
    /// The update with Burn's tensor operations, as Burn's `Sgd` orders them.
    fn step_with_tensors<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        mut grad: Tensor<D>,
        velocity: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        if self.weight_decay > 0.0 {
            grad = tensor.clone().mul_scalar(self.weight_decay).add(grad);
        }
        let mut kept = None;
        if self.momentum > 0.0 {
            let v = match velocity {
                Some(v) => grad
                    .clone()
                    .mul_scalar(1.0 - self.dampening)
                    .add(v.mul_scalar(self.momentum)),
                None => grad.clone(),
            };
            grad = if self.nesterov {
                v.clone().mul_scalar(self.momentum).add(grad)
            } else {
                v.clone()
            };
            kept = Some(v);
        }
        (tensor - grad.mul_scalar(lr), kept)
    }

    /// The same arithmetic, element by element, on the parameter's own buffer.
    fn step_in_place<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        velocity: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let (device, shape) = (tensor.device(), tensor.shape());
        let mut params = into_host_values(tensor);
        let grads = into_host_values(grad);
        // Burn converts each scalar factor to the element type before multiplying.
        let (lr, decay) = (lr as f32, self.weight_decay);
        let (momentum, keep) = (self.momentum as f32, (1.0 - self.dampening) as f32);
        let tensor =
            |values: Vec<f32>| Tensor::from_data(TensorData::new(values, shape.clone()), &device);
        if self.momentum <= 0.0 {
            for (p, &g) in params.iter_mut().zip(&grads) {
                let g = if decay > 0.0 { *p * decay + g } else { g };
                *p -= g * lr;
            }
            return (tensor(params), None);
        }
        let first = velocity.is_none();
        let mut velocity = velocity.map_or_else(|| vec![0.0; params.len()], into_host_values);
        for ((p, v), &g) in params.iter_mut().zip(velocity.iter_mut()).zip(&grads) {
            let g = if decay > 0.0 { *p * decay + g } else { g };
            *v = if first { g } else { g * keep + *v * momentum };
            let step = if self.nesterov { *v * momentum + g } else { *v };
            *p -= step * lr;
        }
        (tensor(params), Some(tensor(velocity)))
    }
}

/// Whether the one-pass updates apply: `f32` tensors on the flex backend.
pub(super) fn updates_on_host<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && is_flex(&t.device()))
}

#[cfg(test)]
pub(super) mod tests {
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};

    use super::*;

    /// Deterministic values in [-1, 1) (tests run in parallel, so Burn's global seed is not used).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// Three steps of an optimiser on the same layer and inputs; the weights after each step.
    pub(in crate::training) fn weights_after_steps(
        mut optimizer: ModuleOptimizer,
    ) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let mut layer: Linear = LinearConfig::new(37, 5).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(values(37 * 5, 1), [37, 5]),
            &device,
        ));
        let bias = Tensor::from_data(TensorData::new(values(5, 2), [5]), &device);
        layer.bias = Some(Param::from_tensor(bias));
        let mut weights = Vec::new();
        for step in 0..3 {
            let x = TensorData::new(values(8 * 37, 10 + step), [8, 37]);
            let loss = layer
                .forward(Tensor::<2>::from_data(x, &device))
                .powi_scalar(2)
                .mean();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optimizer.step(0.05, layer, grads);
            let values = layer.weight.val().into_data().try_to_vec::<f32>();
            weights.push(values.unwrap_or_default());
        }
        weights
    }

    #[test]
    fn one_pass_update_is_bit_identical_to_burns_sgd() {
        for (momentum, nesterov, decay) in [
            (0.95, false, 0.0),
            (0.9, true, 0.0),
            (0.9, false, 1e-3),
            (0.0, false, 0.0),
            (0.0, false, 1e-2),
        ] {
            let ours = ModuleOptimizer::from(Sgd {
                momentum,
                dampening: 0.0,
                nesterov,
                weight_decay: decay,
            });
            let burns = SgdConfig::new()
                .with_momentum((momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(0.0)
                        .with_nesterov(nesterov)
                }))
                .with_weight_decay((decay > 0.0).then(|| WeightDecayConfig::new(decay)))
                .init();
            let (ours, burns) = (weights_after_steps(ours), weights_after_steps(burns));
            assert!(!ours[2].is_empty());
            assert_eq!(
                ours, burns,
                "momentum {momentum}, nesterov {nesterov}, decay {decay}"
            );
        }
    }

    #[test]
    fn velocity_is_recorded_under_burns_names_and_restored() {
        let velocity = Tensor::<2>::from_data([[1.0f32, -2.0], [0.5, 3.0]], &Device::flex());
        let state = SgdState {
            velocity: Some(velocity),
        };
        let mut sink = StateSink::default();
        state.state_flatten("p0", &mut sink);
        assert_eq!(sink.tensors.len(), 1);
        assert_eq!(sink.tensors[0].0, "p0.momentum.velocity");
        let mut source = StateSource::default();
        for (name, data) in sink.tensors {
            source.insert_tensor(name, data);
        }
        let restored = SgdState::<2>::state_unflatten("p0", &mut source, &Device::flex());
        let restored = restored.and_then(|s| s.velocity).map(|v| v.into_data());
        assert_eq!(
            restored.map(|d| d.try_to_vec::<f32>().unwrap_or_default()),
            Some(vec![1.0, -2.0, 0.5, 3.0])
        );
        let empty =
            SgdState::<2>::state_unflatten("p1", &mut StateSource::default(), &Device::flex());
        assert!(empty.is_some_and(|s| s.velocity.is_none()));
    }
}
