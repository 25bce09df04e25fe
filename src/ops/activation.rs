//! The MLP's activations other than ReLU (ELU, SELU, tanh, sigmoid, GELU, leaky ReLU), forward and
//! backward, each in one pass over the values on all of rayon's threads. Burn's flex backend runs
//! each elementary operation as a pass of its own on one thread (ELU alone is an exponential, a
//! subtraction, a multiplication and a masked select, and its backward as many again), which made
//! these MLPs twice as slow as the ReLU one. The formulas are Burn's (the same constants, the same
//! branches at 0); GELU's `erf` is libm's, within a few units in the last place of Burn's.

use rayon::prelude::*;

use crate::model::ActivationKind;

/// Values per task, so that small tensors are not split into needless tasks.
const MIN_TASK: usize = 1 << 14;

const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_GAMMA: f32 = 1.050_701;
const LEAKY_SLOPE: f32 = 0.01;
const INV_SQRT_2PI: f32 = 0.398_942_3;

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `f(x)` for `kind`; ReLU as [`super::relu::relu`].
#[inline(always)]
pub fn apply(kind: ActivationKind, x: f32) -> f32 {
    match kind {
        ActivationKind::Relu => super::relu::relu(x),
        ActivationKind::Elu => {
            if x <= 0.0 {
                x.exp() - 1.0
            } else {
                x
            }
        }
        ActivationKind::Selu => {
            if x >= 0.0 {
                x * SELU_GAMMA
            } else {
                (x.exp() - 1.0) * (SELU_ALPHA * SELU_GAMMA)
            }
        }
        ActivationKind::Tanh => x.tanh(),
        ActivationKind::Sigmoid => sigmoid(x),
        ActivationKind::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
        ActivationKind::LeakyRelu => {
            if x >= 0.0 {
                x
            } else {
                LEAKY_SLOPE * x
            }
        }
    }
}

/// Whether the backward of `kind` needs the input (GELU); the others use the output.
pub fn backward_needs_input(kind: ActivationKind) -> bool {
    kind == ActivationKind::Gelu
}

/// `dy * f'(x)` for `kind`, from the output `y = f(x)` (the input `x` for GELU, see
/// [`backward_needs_input`]): no exponential or tanh is computed again.
#[inline(always)]
pub fn gradient(kind: ActivationKind, saved: f32, dy: f32) -> f32 {
    let y = saved;
    match kind {
        ActivationKind::Relu => super::relu::gate(y, dy),
        // y = exp(x) - 1 where x <= 0, so exp(x) = y + 1; y <= 0 exactly there.
        ActivationKind::Elu => {
            if y <= 0.0 {
                dy * (y + 1.0)
            } else {
                dy
            }
        }
        // y = gamma alpha (exp(x) - 1) where x < 0: gamma alpha exp(x) = y + gamma alpha.
        ActivationKind::Selu => {
            if y >= 0.0 {
                dy * SELU_GAMMA
            } else {
                dy * (y + SELU_ALPHA * SELU_GAMMA)
            }
        }
        ActivationKind::Tanh => dy * (1.0 - y * y),
        ActivationKind::Sigmoid => dy * y * (1.0 - y),
        ActivationKind::Gelu => {
            let x = saved;
            let cdf = 0.5 * (1.0 + libm::erff(x / std::f32::consts::SQRT_2));
            let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
            dy * (cdf + x * pdf)
        }
        ActivationKind::LeakyRelu => {
            if y >= 0.0 {
                dy
            } else {
                dy * LEAKY_SLOPE
            }
        }
    }
}

/// `f(x)` element-wise.
pub fn forward(kind: ActivationKind, x: &[f32]) -> Vec<f32> {
    x.par_iter()
        .with_min_len(MIN_TASK)
        .map(|&v| apply(kind, v))
        .collect()
}

/// The gradient through `f`: `dy * f'(x)` element-wise, from what the forward pass saved (the
/// outputs, or the inputs for GELU).
pub fn backward(kind: ActivationKind, saved: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(
        saved.len(),
        dy.len(),
        "activation backward: gradient of another size"
    );
    saved
        .par_iter()
        .zip(dy)
        .with_min_len(MIN_TASK)
        .map(|(&s, &g)| gradient(kind, s, g))
        .collect()
}
