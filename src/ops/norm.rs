//! Batch normalisation of `[batch, channels, height, width]` tensors with the batch's own
//! statistics (training), on the CPU, with its own backward. Burn's generic version swaps the batch
//! and channel axes (a full copy) for every reduction; here each channel's planes are read in
//! place, channels spread over rayon's threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::amx::vectorised;
use super::written;

#[cfg(target_arch = "x86_64")]
mod sums;

/// Shapes of one batch normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    /// Values per channel plane (`height × width`).
    pub plane: usize,
}

impl NormShape {
    /// Values per channel over the whole batch.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// The planes of channel `c`, one per image.
    fn planes<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        (0..self.batch).map(move |n| &x[(n * self.channels + c) * self.plane..][..self.plane])
    }
}

/// Per-channel `(mean, biased variance)` of `x`, in two passes (mean, then squared deviations)
/// with sums in `f64` across planes.
fn statistics(s: &NormShape, x: &[f32]) -> Vec<(f32, f32)> {
    (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let count = s.count().max(1) as f64;
            let mut sums = vec![0f32; s.batch];
            plane_moments(s, x, c, None, &mut sums);
            let sum: f64 = sums.iter().map(|&v| v as f64).sum();
            let mean = (sum / count) as f32;
            plane_moments(s, x, c, Some(mean), &mut sums);
            let squares: f64 = sums.iter().map(|&v| v as f64).sum();
            (mean, (squares / count) as f32)
        })
        .collect()
}

/// Each plane's `f32` sum of channel `c` (image order) into `sums`: of its values, or with a
/// mean of their squared deviations; sixteen planes at a time in AVX-512 where the CPU has it
/// (the same sums, see [`sums`]).
fn plane_moments(s: &NormShape, x: &[f32], c: usize, mean: Option<f32>, sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::lanes::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { sums::moments(s, x, c, mean, sums) };
    }
    scalar_moments(s, x, c, mean, sums);
}

/// [`plane_moments`] on any CPU.
fn scalar_moments(s: &NormShape, x: &[f32], c: usize, mean: Option<f32>, sums: &mut [f32]) {
    for (sum, p) in sums.iter_mut().zip(s.planes(x, c)) {
        *sum = match mean {
            None => p.iter().sum(),
            Some(mean) => p.iter().map(|&v| (v - mean) * (v - mean)).sum(),
        };
    }
}

/// `y = (x - mean) / sqrt(var + epsilon) · gamma + beta` with the given per-channel statistics,
/// then ReLU when `relu`.
pub fn normalize(
    s: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f32, f32)],
    epsilon: f64,
    relu: bool,
) -> Vec<f32> {
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(s.plane)
            .zip(x.par_chunks(s.plane))
            .enumerate()
            .for_each(|(p, (y, x))| {
                let c = p % s.channels;
                let (mean, var) = stats[c];
                let scale = gamma[c] / (var as f64 + epsilon).sqrt() as f32;
                let shift = beta[c] - mean * scale;
                vectorised! {
                    for (y, &x) in y.iter_mut().zip(x) {
                        let v = x * scale + shift;
                        y.write(if relu { super::relu::relu(v) } else { v });
                    }
                }
            })
    };
    // SAFETY: the planes of `x` and `y` match one for one, and each value of each plane is written.
    unsafe { written(x.len(), fill) }
}

/// Forward: [`normalize`] (then ReLU when `relu`) with the batch's per-channel mean and biased
/// variance, which are returned too.
pub fn forward(
    s: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let stats = statistics(s, x);
    let y = normalize(s, x, gamma, beta, &stats, epsilon, relu);
    let (mean, var) = stats.into_iter().unzip();
    (y, mean, var)
}

/// What the backward pass needs besides the input: `gamma`, and the batch statistics and epsilon
/// of the forward pass.
pub struct Saved<'a> {
    pub gamma: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub epsilon: f64,
}

/// Backward of [`forward`]: `(dx, dgamma, dbeta)` from the output gradient `dy`, the input and
/// what the forward pass saved; `relu_out` is the forward's output when ReLU was fused (the
/// gradient flows where it is positive).
pub fn backward(
    s: &NormShape,
    x: &[f32],
    saved: &Saved,
    dy: &[f32],
    relu_out: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match relu_out {
        Some(y) => gradients::<true>(s, x, saved, dy, y),
        None => gradients::<false>(s, x, saved, dy, dy),
    }
}

/// [`backward`] with the gradient gated by the ReLU output `y` when `RELU` (`y` is ignored
/// otherwise).
fn gradients<const RELU: bool>(
    s: &NormShape,
    x: &[f32],
    saved: &Saved,
    dy: &[f32],
    y: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let &Saved {
        gamma,
        mean,
        var,
        epsilon,
    } = saved;
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect();
    // Per channel: sum of dy (dbeta) and of dy · x_hat (dgamma).
    let sums: Vec<(f32, f32)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mut planes = vec![0f32; 2 * s.batch];
            let (betas, gammas) = planes.split_at_mut(s.batch);
            plane_gradients::<RELU>(s, (x, dy, y), c, (mean[c], inv_std[c]), betas, gammas);
            let (mut dbeta, mut dgamma) = (0f64, 0f64);
            for (&b, &g) in betas.iter().zip(gammas.iter()) {
                dbeta += b as f64;
                dgamma += g as f64;
            }
            (dgamma as f32, dbeta as f32)
        })
        .collect();
    let count = s.count().max(1) as f32;
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(s.plane)
            .zip(x.par_chunks(s.plane).zip(dy.par_chunks(s.plane)))
            .zip(y.par_chunks(s.plane))
            .enumerate()
            .for_each(|(p, ((dx, (x, dy)), y))| {
                let c = p % s.channels;
                let (m, r) = (mean[c], inv_std[c]);
                let (dgamma, dbeta) = sums[c];
                let scale = gamma[c] * r;
                let (mean_dy, mean_dy_xhat) = (dbeta / count, dgamma / count);
                vectorised! {
                    for (((d, &x), &g), &y) in dx.iter_mut().zip(x).zip(dy).zip(y) {
                        let x_hat = (x - m) * r;
                        d.write(scale * (gate::<RELU>(y, g) - mean_dy - x_hat * mean_dy_xhat));
                    }
                }
            })
    };
    // SAFETY: the planes of `dx`, `x`, `dy` and `y` match one for one (the lengths are equal), and
    // each value of each plane is written.
    assert!(
        dy.len() == x.len() && y.len() == x.len(),
        "batch norm backward: sizes differ"
    );
    let dx = unsafe { written(x.len(), fill) };
    let (dgamma, dbeta) = sums.into_iter().unzip();
    (dx, dgamma, dbeta)
}

/// `dy`, or with `RELU` `dy` where the ReLU output `y` lets the gradient through.
fn gate<const RELU: bool>(y: f32, dy: f32) -> f32 {
    if RELU { super::relu::gate(y, dy) } else { dy }
}

/// Each plane's `f32` sums of channel `c` (image order): of the gated `dy` into `dbeta`, and of
/// the gated `dy · (x - mean) · inv_std` into `dgamma`; sixteen planes at a time in AVX-512 where
/// the CPU has it (the same sums, see [`sums`]).
fn plane_gradients<const RELU: bool>(
    s: &NormShape,
    (x, dy, y): (&[f32], &[f32], &[f32]),
    c: usize,
    (m, r): (f32, f32),
    dbeta: &mut [f32],
    dgamma: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::lanes::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { sums::gradients::<RELU>(s, (x, dy, y), c, (m, r), dbeta, dgamma) };
    }
    scalar_gradients::<RELU>(s, (x, dy, y), c, (m, r), dbeta, dgamma);
}

/// [`plane_gradients`] on any CPU.
fn scalar_gradients<const RELU: bool>(
    s: &NormShape,
    (x, dy, y): (&[f32], &[f32], &[f32]),
    c: usize,
    (m, r): (f32, f32),
    dbeta: &mut [f32],
    dgamma: &mut [f32],
) {
    let planes = s.planes(x, c).zip(s.planes(dy, c)).zip(s.planes(y, c));
    for ((b, g), ((xp, gp), yp)) in dbeta.iter_mut().zip(dgamma).zip(planes) {
        *b = gp.iter().zip(yp).map(|(&g, &y)| gate::<RELU>(y, g)).sum();
        *g = xp
            .iter()
            .zip(gp.iter().zip(yp))
            .map(|(&x, (&g, &y))| gate::<RELU>(y, g) * (x - m) * r)
            .sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_channel_over_the_batch() {
        // 2 images, 2 channels, planes of 2: channel 0 holds 1, 2, 3, 4; channel 1 holds 10 x 4.
        let s = NormShape {
            batch: 2,
            channels: 2,
            plane: 2,
        };
        let x = [1.0, 2.0, 10.0, 10.0, 3.0, 4.0, 10.0, 10.0];
        let (y, mean, var) = forward(&s, &x, &[2.0, 1.0], &[0.5, -1.0], 0.0, false);
        assert_eq!(mean, vec![2.5, 10.0]);
        assert_eq!(var, vec![1.25, 0.0]);
        let r = 1.0 / 1.25f32.sqrt();
        let want = [-1.5 * r * 2.0 + 0.5, -0.5 * r * 2.0 + 0.5];
        assert!(
            (y[0] - want[0]).abs() < 1e-6 && (y[1] - want[1]).abs() < 1e-6,
            "{y:?}"
        );
        // A constant channel with epsilon 0 would divide by zero; with epsilon it maps to beta.
        let (y, _, _) = forward(&s, &x, &[2.0, 1.0], &[0.5, -1.0], 1e-5, false);
        assert_eq!(y[2], -1.0);
        // The normalised output sums to zero per channel, so dbeta = sum(dy), and dx sums to zero.
        let dy = [1.0, -2.0, 0.5, 0.25, 3.0, 1.0, -1.0, 2.0];
        let saved = Saved {
            gamma: &[2.0, 1.0],
            mean: &mean,
            var: &var,
            epsilon: 1e-5,
        };
        let (dx, _, dbeta) = backward(&s, &x, &saved, &dy, None);
        assert_eq!(dbeta, vec![3.0, 1.75]);
        let channel0: f32 = [dx[0], dx[1], dx[4], dx[5]].iter().sum();
        assert!(channel0.abs() < 1e-5, "{dx:?}");
    }

    #[test]
    fn fused_relu_equals_relu_after_normalisation() {
        let s = NormShape {
            batch: 3,
            channels: 2,
            plane: 5,
        };
        let x: Vec<f32> = (0..30).map(|i| (i as f32 * 0.7).sin()).collect();
        let (gamma, beta) = ([1.5, 0.5], [0.1, -0.2]);
        let (plain, mean, var) = forward(&s, &x, &gamma, &beta, 1e-5, false);
        let (fused, _, _) = forward(&s, &x, &gamma, &beta, 1e-5, true);
        let relu: Vec<f32> = plain.iter().map(|&v| v.max(0.0)).collect();
        assert_eq!(fused, relu);
        assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
        let dy: Vec<f32> = (0..30).map(|i| (i as f32 * 1.3).cos()).collect();
        let gated: Vec<f32> = dy
            .iter()
            .zip(&fused)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        let saved = Saved {
            gamma: &gamma,
            mean: &mean,
            var: &var,
            epsilon: 1e-5,
        };
        let want = backward(&s, &x, &saved, &gated, None);
        let got = backward(&s, &x, &saved, &dy, Some(&fused));
        assert_eq!(got, want);
    }
}
