//! The MLP's activations other than ReLU (ELU, SELU, tanh, sigmoid, GELU, leaky ReLU), forward and
//! backward, each in one pass over the values on all of rayon's threads. Burn's flex backend runs
//! each elementary operation as a pass of its own on one thread (ELU alone is an exponential, a
//! subtraction, a multiplication and a masked select, and its backward as many again), which made
//! these MLPs twice as slow as the ReLU one. The formulas are Burn's (the same constants, the same
//! branches at 0), written without branches over [`super::math`]'s exponential, tanh and erf so
//! that each pass runs 16 values at a time under AVX-512.

use rayon::prelude::*;

use super::math;
use crate::model::ActivationKind;

/// Values per task, so that small tensors are not split into needless tasks.
const MIN_TASK: usize = 1 << 14;

const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_GAMMA: f32 = 1.050_701;
const LEAKY_SLOPE: f32 = 0.01;
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    // e^-|x| never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below.
    let e = math::exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else { e * s }
}

/// `f(x)` for `kind`; ReLU as [`super::relu::relu`].
#[inline(always)]
pub fn apply(kind: ActivationKind, x: f32) -> f32 {
    match kind {
        ActivationKind::Relu => super::relu::relu(x),
        ActivationKind::Elu => {
            let negative = math::exp(x.min(0.0)) - 1.0;
            if x <= 0.0 { negative } else { x }
        }
        ActivationKind::Selu => {
            let negative = (math::exp(x.min(0.0)) - 1.0) * (SELU_ALPHA * SELU_GAMMA);
            if x >= 0.0 { x * SELU_GAMMA } else { negative }
        }
        ActivationKind::Tanh => math::tanh(x),
        ActivationKind::Sigmoid => sigmoid(x),
        ActivationKind::Gelu => 0.5 * x * (1.0 + math::erf(x / std::f32::consts::SQRT_2)),
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
            let cdf = 0.5 * (1.0 + math::erf(x / std::f32::consts::SQRT_2));
            let pdf = INV_SQRT_2PI * math::exp(-0.5 * x * x);
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
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(MIN_TASK)
        .zip(x.par_chunks(MIN_TASK))
        .for_each(|(y, x)| each(kind, y, x, |kind, _, x| apply(kind, x)));
    y
}

/// `x = f(x)` element-wise, in place (after a dense layer's product).
pub fn forward_in_place(kind: ActivationKind, x: &mut [f32]) {
    x.par_chunks_mut(MIN_TASK)
        .for_each(|x| each_in_place(kind, x, apply));
}

/// The gradient through `f`: `dy * f'(x)` element-wise, from what the forward pass saved (the
/// outputs, or the inputs for GELU).
pub fn backward(kind: ActivationKind, saved: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(
        saved.len(),
        dy.len(),
        "activation backward: gradient of another size"
    );
    let mut dx = dy.to_vec();
    dx.par_chunks_mut(MIN_TASK)
        .zip(saved.par_chunks(MIN_TASK))
        .for_each(|(dx, saved)| each(kind, dx, saved, |kind, dy, s| gradient(kind, s, dy)));
    dx
}

/// `out[i] = f(kind, out[i], input[i])`, with one loop per kind (the kind a constant in it, so
/// that its formula has no branch left to stop the loop from vectorising).
#[inline(always)]
fn each(
    kind: ActivationKind,
    out: &mut [f32],
    input: &[f32],
    f: impl Fn(ActivationKind, f32, f32) -> f32 + Copy,
) {
    use ActivationKind as A;
    match kind {
        A::Relu => lanes(out, input, move |o, i| f(A::Relu, o, i)),
        A::Elu => lanes(out, input, move |o, i| f(A::Elu, o, i)),
        A::Selu => lanes(out, input, move |o, i| f(A::Selu, o, i)),
        A::Tanh => lanes(out, input, move |o, i| f(A::Tanh, o, i)),
        A::Sigmoid => lanes(out, input, move |o, i| f(A::Sigmoid, o, i)),
        A::Gelu => lanes(out, input, move |o, i| f(A::Gelu, o, i)),
        A::LeakyRelu => lanes(out, input, move |o, i| f(A::LeakyRelu, o, i)),
    }
}

/// `x[i] = f(kind, x[i])`, one loop per kind as in [`each`].
#[inline(always)]
fn each_in_place(
    kind: ActivationKind,
    x: &mut [f32],
    f: impl Fn(ActivationKind, f32) -> f32 + Copy,
) {
    use ActivationKind as A;
    match kind {
        A::Relu => lanes_in_place(x, move |v| f(A::Relu, v)),
        A::Elu => lanes_in_place(x, move |v| f(A::Elu, v)),
        A::Selu => lanes_in_place(x, move |v| f(A::Selu, v)),
        A::Tanh => lanes_in_place(x, move |v| f(A::Tanh, v)),
        A::Sigmoid => lanes_in_place(x, move |v| f(A::Sigmoid, v)),
        A::Gelu => lanes_in_place(x, move |v| f(A::Gelu, v)),
        A::LeakyRelu => lanes_in_place(x, move |v| f(A::LeakyRelu, v)),
    }
}

/// `out[i] = g(out[i], input[i])`, compiled for AVX-512 where the CPU has it.
#[inline(always)]
fn lanes(out: &mut [f32], input: &[f32], g: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if super::amx::avx512_available() {
        // SAFETY: the CPU has AVX-512 F, BW and VL.
        return unsafe { lanes_avx512(out, input, g) };
    }
    for (o, &i) in out.iter_mut().zip(input) {
        *o = g(*o, i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn lanes_avx512(out: &mut [f32], input: &[f32], g: impl Fn(f32, f32) -> f32) {
    for (o, &i) in out.iter_mut().zip(input) {
        *o = g(*o, i);
    }
}

/// `x[i] = g(x[i])`, compiled for AVX-512 where the CPU has it.
#[inline(always)]
fn lanes_in_place(x: &mut [f32], g: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if super::amx::avx512_available() {
        // SAFETY: the CPU has AVX-512 F, BW and VL.
        return unsafe { lanes_in_place_avx512(x, g) };
    }
    x.iter_mut().for_each(|v| *v = g(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn lanes_in_place_avx512(x: &mut [f32], g: impl Fn(f32) -> f32) {
    x.iter_mut().for_each(|v| *v = g(*v));
}
