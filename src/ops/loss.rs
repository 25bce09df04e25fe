//! Softmax cross-entropy on the CPU in one pass, with its own backward: the loss of each row is
//! `logsumexp(z) - sum_j q_j z_j` with the target distribution `q = (1 - a) onehot + a / classes`
//! (label smoothing `a`, as Burn's and Keras's), and the gradient is `(softmax(z) - q) / rows`.

/// Mean loss over the rows of `logits` (`[rows, classes]`), and the softmax probabilities the
/// backward pass needs.
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
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
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
