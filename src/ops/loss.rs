//! Softmax cross-entropy on the CPU in one pass, with its own backward: the loss of each row is
//! `logsumexp(z) - sum_j q_j z_j` with the target distribution `q = (1 - a) onehot + a / classes`
//! (label smoothing `a`, as Burn's and Keras's), and the gradient is `(softmax(z) - q) / rows`.

/// Mean loss over the rows of `logits` (`[rows, classes]`), and the softmax probabilities the
/// backward pass needs. On one thread: a batch's rows are too few to be worth splitting.
pub fn forward(
    logits: &[f32],
    classes: usize,
    targets: &[usize],
    smoothing: f32,
) -> (f64, Vec<f32>) {
    let mut probs = vec![0f32; logits.len()];
    let (on, off) = target_weights(classes, smoothing);
    let mut total = 0f64;
    for ((z, p), &t) in logits
        .chunks(classes)
        .zip(probs.chunks_mut(classes))
        .zip(targets)
    {
        #[cfg(target_arch = "x86_64")]
        if classes <= 16 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the row has at most 16 classes.
            total += unsafe { avx512::row(z, t, on, off, p) } as f64;
            continue;
        }
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for (p, &v) in p.iter_mut().zip(z) {
            *p = exp_nonpositive(v - max);
        }
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|p| *p /= sum);
        let log_sum = max + sum.ln();
        let expected: f32 = z
            .iter()
            .enumerate()
            .map(|(j, &v)| if j == t { on * v } else { off * v })
            .sum();
        total += (log_sum - expected) as f64;
    }
    (total / targets.len().max(1) as f64, probs)
}

/// `d loss / d logits` for an upstream gradient `upstream` of the mean loss.
pub fn backward(
    probs: &[f32],
    classes: usize,
    targets: &[usize],
    smoothing: f32,
    upstream: f32,
) -> Vec<f32> {
    let (on, off) = target_weights(classes, smoothing);
    let scale = upstream / targets.len().max(1) as f32;
    let mut grad = probs.to_vec();
    for (g, &t) in grad.chunks_mut(classes).zip(targets) {
        for (j, g) in g.iter_mut().enumerate() {
            *g = (*g - if j == t { on } else { off }) * scale;
        }
    }
    grad
}

/// `e^x` for `x <= 0` to about 2 ulp (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial in
/// `r`, and `2^n` built in the exponent bits), branch-free so that loops over it vectorise, unlike
/// calls to libm's `expf` (10,240 of them per batch of 1,024).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    /// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `ln 2` split in two for an exact range reduction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' coefficients of `(e^r - 1 - r) / r^2`, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The loss of one row of at most 16 logits, its softmax written to `p`: the scalar path's
    /// arithmetic on all classes at once.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(z: &[f32], target: usize, on: f32, off: f32, p: &mut [f32]) -> f32 {
        let mask = ((1u32 << z.len()) - 1) as __mmask16;
        // SAFETY (whole body): masked loads and stores cover the row's `z.len()` values.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, z.as_ptr());
            let max = _mm512_mask_reduce_max_ps(mask, v);
            let e = _mm512_maskz_mov_ps(mask, exp(_mm512_sub_ps(v, _mm512_set1_ps(max))));
            let sum = _mm512_reduce_add_ps(e);
            _mm512_mask_storeu_ps(p.as_mut_ptr(), mask, _mm512_div_ps(e, _mm512_set1_ps(sum)));
            let q = _mm512_mask_mov_ps(_mm512_set1_ps(off), 1 << target, _mm512_set1_ps(on));
            let expected = _mm512_reduce_add_ps(_mm512_maskz_mul_ps(mask, v, q));
            max + sum.ln() - expected
        }
    }

    /// [`super::exp_nonpositive`] on 16 values.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let mut p = _mm512_set1_ps(super::EXP_POLY[0]);
        for &c in &super::EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(
            _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
            _mm512_set1_ps(1.0),
        );
        _mm512_scalef_ps(e, n)
    }
}

/// The target distribution's value at the true class and at every other class.
fn target_weights(classes: usize, smoothing: f32) -> (f32, f32) {
    let off = smoothing / classes as f32;
    (1.0 - smoothing + off, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_is_accurate() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (fast, exact) = (exp_nonpositive(x) as f64, (x as f64).exp());
            assert!(
                (fast - exact).abs() <= 3e-7 * exact + 1e-37,
                "exp({x}) = {fast}, expected {exact}"
            );
        }
    }

    #[test]
    fn matches_double_precision() {
        let logits: Vec<f32> = (0..10 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let targets: Vec<usize> = (0..64).map(|i| i * 3 % 10).collect();
        let (loss, probs) = forward(&logits, 10, &targets, 0.1);
        let (on, off) = target_weights(10, 0.1);
        for (z, p) in logits.chunks(10).zip(probs.chunks(10)) {
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let e: Vec<f64> = z.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (pj, ej) in p.iter().zip(&e) {
                assert!((*pj as f64 - ej / sum).abs() < 1e-6);
            }
        }
        let exact: f64 = logits
            .chunks(10)
            .zip(&targets)
            .map(|(z, &t)| {
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                z.iter()
                    .enumerate()
                    .map(|(j, &v)| (if j == t { on } else { off }) as f64 * (lse - v as f64))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 64.0;
        assert!((loss - exact).abs() < 1e-5, "{loss} vs {exact}");
    }

    #[test]
    fn matches_hand_computed_values() {
        // Row 0: logits (0, ln 3): softmax (1/4, 3/4), target 1 -> loss ln(4/3).
        // Row 1: logits (0, 0): softmax (1/2, 1/2), target 0 -> loss ln 2.
        let logits = [0.0, 3f32.ln(), 0.0, 0.0];
        let (loss, probs) = forward(&logits, 2, &[1, 0], 0.0);
        let expected = ((4.0f64 / 3.0).ln() + 2f64.ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        let grad = backward(&probs, 2, &[1, 0], 0.0, 1.0);
        let want = [0.125, -0.125, -0.25, 0.25];
        for (g, w) in grad.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{grad:?}");
        }
        // Smoothing 0.2 over 2 classes: q = (0.1, 0.9) for target 1.
        let (loss, _) = forward(&logits[..2], 2, &[1], 0.2);
        let expected = -(0.1 * (0.25f64).ln() + 0.9 * (0.75f64).ln());
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }
}
