//! A whitened first layer, as the CIFAR-10 speedruns (airbench) start theirs: the first
//! convolution's filters are the eigenvectors of the training images' patch second-moment
//! matrix, each scaled by `1 / sqrt(eigenvalue + eps)`, and their negatives. Its outputs are then
//! decorrelated, each of unit mean square over the training patches, from the first step.
//!
//! A 3x3 kernel on one channel gives 9 directions, 18 filters; a wider first layer keeps its
//! Glorot-uniform draws for the others.

use crate::data::batcher::Batcher;
use crate::data::{SIDE, Split};

/// The side of the patches whitened: the first convolution's kernel.
pub const KERNEL: usize = 3;

/// Filters set: each direction and its negative.
pub const FILTERS: usize = 2 * KERNEL * KERNEL;

/// Added to each eigenvalue before its square root is taken, so that the directions of least
/// variance (pixel noise) are not magnified without bound: airbench's value, for inputs of about
/// unit scale.
pub const EPS: f64 = 5e-4;

/// Images whose patches are counted (airbench takes 5,000 too): 3.4 million patches, about
/// 0.1 s of one core (0.12 s measured on the 2-core AMD EPYC while it trained beside it).
const SAMPLE_IMAGES: usize = 5_000;

/// The whitening filters of `kernel x kernel` patches of the first [`SAMPLE_IMAGES`] images of
/// `split`, as the network sees them (scaled by `batcher`): `2 * kernel²` filters of `kernel²`
/// weights each, row-major, largest eigenvalue first, then the same negated.
pub fn whitening_filters(split: &Split, batcher: &Batcher, kernel: usize, eps: f64) -> Vec<f32> {
    let n = kernel * kernel;
    let moments = patch_moments(split, batcher, kernel);
    let (values, vectors) = symmetric_eigen(moments, n);
    let vectors = &vectors;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let scaled: Vec<f32> = order
        .iter()
        .flat_map(|&i| {
            let scale = 1.0 / (values[i].max(0.0) + eps).sqrt();
            (0..n).map(move |k| (vectors[k * n + i] * scale) as f32)
        })
        .collect();
    scaled
        .iter()
        .copied()
        .chain(scaled.iter().map(|v| -v))
        .collect()
}

/// `E[p pᵀ]` over every valid `kernel x kernel` patch `p` of the sampled images (`n × n`,
/// row-major, `n = kernel²`), summed in `f64`.
fn patch_moments(split: &Split, batcher: &Batcher, kernel: usize) -> Vec<f64> {
    let n = kernel * kernel;
    let side = SIDE + 1 - kernel;
    let mut sums = vec![0f64; n * n];
    let mut patch = vec![0f64; n];
    let images = split.len().min(SAMPLE_IMAGES);
    for image in 0..images {
        let pixels = batcher.scaled(&split.images[image * SIDE * SIDE..(image + 1) * SIDE * SIDE]);
        for y in 0..side {
            for x in 0..side {
                for (k, v) in patch.iter_mut().enumerate() {
                    *v = pixels[(y + k / kernel) * SIDE + x + k % kernel] as f64;
                }
                for (row, &a) in sums.chunks_exact_mut(n).zip(&patch) {
                    row.iter_mut().zip(&patch).for_each(|(s, &b)| *s += a * b);
                }
            }
        }
    }
    let count = (images * side * side).max(1) as f64;
    sums.iter_mut().for_each(|s| *s /= count);
    sums
}

/// Eigenvalues and eigenvectors (the columns of the returned `n × n` row-major matrix) of the
/// symmetric matrix `a` (`n × n`, row-major), by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    let scale: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..64 {
        let off: f64 = (0..n * n)
            .filter(|i| i / n != i % n)
            .map(|i| a[i] * a[i])
            .sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// One Jacobi rotation in the `(p, q)` plane that zeroes `a[p][q]`: `a = Jᵀ a J`, `v = v J`.
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    let turn = |x: f64, y: f64| (c * x - s * y, s * x + c * y);
    for k in 0..n {
        (a[k * n + p], a[k * n + q]) = turn(a[k * n + p], a[k * n + q]);
        (v[k * n + p], v[k * n + q]) = turn(v[k * n + p], v[k * n + q]);
    }
    for k in 0..n {
        (a[p * n + k], a[q * n + k]) = turn(a[p * n + k], a[q * n + k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_rotations_diagonalise_a_symmetric_matrix() {
        let n = 5;
        // A random-looking symmetric matrix: b bᵀ + diagonal.
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let a: Vec<f64> = (0..n * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..n).map(|k| b[r * n + k] * b[c * n + k]).sum::<f64>()
                    + if r == c { 0.5 } else { 0.0 }
            })
            .collect();
        let (values, vectors) = symmetric_eigen(a.clone(), n);
        for i in 0..n {
            for r in 0..n {
                let av: f64 = (0..n).map(|k| a[r * n + k] * vectors[k * n + i]).sum();
                assert!(
                    (av - values[i] * vectors[r * n + i]).abs() < 1e-9,
                    "A v != λ v"
                );
            }
            let norm: f64 = (0..n).map(|k| vectors[k * n + i].powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn whitened_patches_have_unit_moments_and_no_correlation() {
        // Smooth random images: neighbouring pixels correlate, as in real ones.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        };
        let images: Vec<u8> = (0..50 * SIDE * SIDE)
            .map(|i| if i % 3 == 0 { next() } else { (i % 200) as u8 })
            .collect();
        let split = Split {
            labels: vec![0; 50],
            images,
        };
        let batcher = Batcher::new(crate::data::batcher::Normalization::Scale, (0.0, 1.0));
        let filters = whitening_filters(&split, &batcher, 3, 0.0);
        assert_eq!(filters.len(), 18 * 9);
        let m = patch_moments(&split, &batcher, 3);
        // E[(f_i · p)(f_j · p)] = f_i M f_jᵀ = δ_ij for the first nine filters.
        for i in 0..9 {
            for j in 0..9 {
                let fi = &filters[i * 9..(i + 1) * 9];
                let fj = &filters[j * 9..(j + 1) * 9];
                let mut e = 0.0;
                for r in 0..9 {
                    for c in 0..9 {
                        e += fi[r] as f64 * m[r * 9 + c] * fj[c] as f64;
                    }
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((e - want).abs() < 1e-3, "filters {i}, {j}: {e}");
            }
        }
        assert_eq!(filters[9 * 9], -filters[0]);
    }
}
