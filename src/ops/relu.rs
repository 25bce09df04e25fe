//! ReLU on the CPU, spread over rayon's threads, alone or fused with the residual addition before
//! it (`relu(a + b)`), and its backward. Burn's flex ReLU runs on one thread, and a residual network
//! applies one to every activation map. Same arithmetic as Burn's: NaN passes through (as in
//! PyTorch), and the gradient flows where the output is positive or NaN.

use rayon::prelude::*;

/// Values per task, so that small tensors are not split into needless tasks.
const MIN_TASK: usize = 1 << 14;

/// `x` where it is positive (or NaN), 0 elsewhere.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x.is_nan() || x > 0.0 { x } else { 0.0 }
}

/// The gradient `dy` through a ReLU whose output was `y`.
#[inline(always)]
pub fn gate(y: f32, dy: f32) -> f32 {
    if y.is_nan() || y > 0.0 { dy } else { 0.0 }
}

/// `relu(x)` element-wise.
pub fn forward(x: &[f32]) -> Vec<f32> {
    x.par_iter()
        .with_min_len(MIN_TASK)
        .map(|&v| relu(v))
        .collect()
}

/// `relu(a + b)` element-wise.
pub fn add_forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add_relu: operands of different sizes");
    a.par_iter()
        .zip(b)
        .with_min_len(MIN_TASK)
        .map(|(&a, &b)| relu(a + b))
        .collect()
}

/// Backward of [`forward`] and [`add_forward`] (the gradient of each addend): `dy` gated by the
/// output `y`.
pub fn backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(y.len(), dy.len(), "relu backward: gradient of another size");
    y.par_iter()
        .zip(dy)
        .with_min_len(MIN_TASK)
        .map(|(&y, &g)| gate(y, g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_matches_burns_arithmetic() {
        let x = [-2.0, -0.0, 0.0, 0.5, f32::NAN, f32::NEG_INFINITY];
        let y = forward(&x);
        assert_eq!(&y[..4], &[0.0, 0.0, 0.0, 0.5]);
        assert!(y[4].is_nan());
        assert_eq!(y[5], 0.0);
        assert!(y[1].is_sign_positive(), "-0 maps to +0");
        let dy = [1.0; 6];
        assert_eq!(backward(&y, &dy), vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn fused_addition_equals_add_then_relu_on_a_large_tensor() {
        let n = 3 * MIN_TASK + 7;
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 0.5).collect();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        assert_eq!(add_forward(&a, &b), forward(&sum));
        let y = forward(&sum);
        let gated: Vec<f32> = y
            .iter()
            .zip(&a)
            .map(|(&y, &g)| if y > 0.0 { g } else { 0.0 })
            .collect();
        assert_eq!(backward(&y, &a), gated);
    }
}
