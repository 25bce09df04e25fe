//! Adam as one pass over each parameter on the CPU.
//!
//! Burn's `Adam` spends about a dozen tensor operations (each a pass over memory and an
//! allocation) per parameter and step. This optimiser computes the same values, in the same order
//! and precision, in one loop on the flex backend (bit-identical to Burn's, checked in the tests),
//! and hands every other case (other backends, AMSGrad) to Burn's. It keeps Burn's state type, so
//! checkpoints stay interchangeable.
//!
//! Measured (docs/performance.md, W3 CNN): Burn's element-wise operations fell from 5.2% to 3.6%
//! of the CPU samples of a training epoch; the epoch time moved within the machine's noise.

use burn::optim::{AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::prelude::*;
use rayon::prelude::*;

use super::sgd::updates_on_host;
use crate::ops::into_host_values;

/// Parameters at least this long are updated on every worker thread.
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// Matching pieces of the parameter, its two moments and its gradient.
type Slices<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), &'a [f32]);

/// `m = β1 m + (1 - β1) g`, `v = β2 v + (1 - β2) g²` (the first step starts from zero), then
/// `p -= lr · m · c / (√v + ε √(1 - β2ᵗ))` with `c = √(1 - β2ᵗ) / (1 - β1ᵗ)`, as Burn writes it.
#[derive(Clone)]
pub struct Adam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// L2 penalty added to the gradient (0 for none).
    weight_decay: f32,
    /// Burn's optimiser with the same settings, for the cases not fused here.
    burn: burn::optim::Adam,
}

impl Adam {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let decay =
            (weight_decay > 0.0).then(|| burn::optim::decay::WeightDecayConfig::new(weight_decay));
        let burn = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(decay)
            .build();
        Adam {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn,
        }
    }
}

/// One step's constants: `p -= lr · m · factor / (√v + epsilon)`.
struct Step {
    beta_1: f32,
    beta_2: f32,
    factor: f32,
    epsilon: f32,
    lr: f32,
    /// L2 penalty added to the gradient (0 for none).
    decay: f32,
    /// The first step: the moments start from zero.
    first: bool,
}

impl Step {
    /// Updates matching pieces of a parameter, its moments and its gradient: 16 values at a time
    /// where the CPU has AVX-512 (the baseline build's loop ran one at a time, `sqrtss` and
    /// `divss`), with the same operations in the same order, so the same bits.
    fn apply(&self, slices: Slices) {
        crate::ops::amx::vectorised!(self.dispatch(slices))
    }

    /// The loop without branches inside, one copy per case.
    #[inline(always)]
    fn dispatch(&self, slices: Slices) {
        match (self.first, self.decay > 0.0) {
            (true, true) => self.update::<true, true>(slices),
            (true, false) => self.update::<true, false>(slices),
            (false, true) => self.update::<false, true>(slices),
            (false, false) => self.update::<false, false>(slices),
        }
    }

    #[inline(always)]
    fn update<const FIRST: bool, const DECAY: bool>(&self, (((p, m), v), g): Slices) {
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (keep_1, keep_2) = (1.0 - b1, 1.0 - b2);
        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
            let g = if DECAY { *p * self.decay + g } else { g };
            if FIRST {
                *m = g * keep_1;
                *v = (g * g) * keep_2;
            } else {
                *m = *m * b1 + g * keep_1;
                *v = *v * b2 + (g * g) * keep_2;
            }
            let step = (*m * self.factor) / (v.sqrt() + self.epsilon);
            *p -= step * self.lr;
        }
    }
}

impl Optimizer for Adam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let fused = updates_on_host(&[&tensor, &grad])
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && updates_on_host(&[&s.momentum.moment_1, &s.momentum.moment_2])
            });
        if !fused {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (device, shape) = (tensor.device(), tensor.shape());
        let mut params = into_host_values(tensor);
        let grads = into_host_values(grad);
        let (time, mut m, mut v) = match state {
            Some(state) => (
                state.momentum.time + 1,
                into_host_values(state.momentum.moment_1),
                into_host_values(state.momentum.moment_2),
            ),
            None => (1, vec![0.0; params.len()], vec![0.0; params.len()]),
        };
        let t = time as i32;
        let correction_2 = (1.0 - self.beta_2.powi(t)).sqrt();
        let step = Step {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            factor: correction_2 / (1.0 - self.beta_1.powi(t)),
            epsilon: self.epsilon * correction_2,
            lr: lr as f32,
            decay: self.weight_decay,
            first: time == 1,
        };
        if params.len() >= PARALLEL_MIN_LEN {
            // Element-wise: the result does not depend on the split.
            let chunk = params.len().div_ceil(rayon::current_num_threads());
            params
                .par_chunks_mut(chunk)
                .zip(m.par_chunks_mut(chunk))
                .zip(v.par_chunks_mut(chunk))
                .zip(grads.par_chunks(chunk))
                .for_each(|slices| step.apply(slices));
        } else {
            step.apply((((&mut params, &mut m), &mut v), &grads));
        }
        let tensor =
            |values: Vec<f32>| Tensor::from_data(TensorData::new(values, shape.clone()), &device);
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: tensor(m),
            moment_2: tensor(v),
            max_moment_2: None,
        };
        (tensor(params), Some(AdamState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        burn::optim::Adam::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::ModuleOptimizer;
    use burn::optim::decay::WeightDecayConfig;

    use super::*;
    use crate::training::sgd::tests::weights_after_steps;

    #[test]
    fn one_pass_update_is_bit_identical_to_burns_adam() {
        for (beta_1, beta_2, epsilon, decay) in [(0.9, 0.999, 1e-7, 0.0), (0.8, 0.99, 1e-5, 1e-3)] {
            let ours = ModuleOptimizer::from(Adam::new(beta_1, beta_2, epsilon, decay));
            let burns = AdamConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .with_weight_decay((decay > 0.0).then(|| WeightDecayConfig::new(decay)))
                .init();
            let (ours, burns) = (weights_after_steps(ours), weights_after_steps(burns));
            assert!(!ours[2].is_empty());
            assert_eq!(
                ours, burns,
                "betas {beta_1} {beta_2}, epsilon {epsilon}, decay {decay}"
            );
        }
    }
}
