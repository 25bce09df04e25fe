//! The per-plane sums of batch normalisation in AVX-512, sixteen planes (images) at a time
//! ([`lanes`]): the same sums as `Iterator::sum` over each plane, bit for bit. One plane at a time,
//! their chains of dependent additions made most of batch normalisation's time.

use std::arch::x86_64::*;

use super::NormShape;
use crate::ops::lanes;

/// Each plane's `Σ v` of channel `c` (image order) into `sums`, or `Σ (v - mean)²` with a mean.
#[target_feature(enable = "avx512f")]
pub(super) fn moments(s: &NormShape, x: &[f32], c: usize, mean: Option<f32>, sums: &mut [f32]) {
    assert_eq!(
        x.len(),
        s.batch * s.channels * s.plane,
        "batch norm: input size"
    );
    let centre = _mm512_set1_ps(mean.unwrap_or(0.0));
    let values = |at: usize, mask: __mmask16| {
        // SAFETY: `planes` passes offsets whose masked lanes lie inside `x`.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(at)) };
        match mean {
            None => v,
            Some(_) => {
                let d = _mm512_sub_ps(v, centre);
                _mm512_mul_ps(d, d)
            }
        }
    };
    lanes::sums(s.batch, s.plane, plane_start(s, c), sums, |at, mask| {
        [values(at, mask)]
    });
}

/// Each plane's `Σ g` (into `dbeta`) and `Σ g · (x - mean) · inv_std` (into `dgamma`) of channel
/// `c`, where `g` is `dy`, or with `RELU` `dy` where the ReLU output `y` is positive or NaN and
/// zero elsewhere.
#[target_feature(enable = "avx512f")]
pub(super) fn gradients<const RELU: bool>(
    s: &NormShape,
    (x, dy, y): (&[f32], &[f32], &[f32]),
    c: usize,
    (mean, inv_std): (f32, f32),
    dbeta: &mut [f32],
    dgamma: &mut [f32],
) {
    let len = s.batch * s.channels * s.plane;
    assert!(
        x.len() == len && dy.len() == len && (!RELU || y.len() == len),
        "batch norm backward: sizes differ"
    );
    let (m, r) = (_mm512_set1_ps(mean), _mm512_set1_ps(inv_std));
    let mut both = vec![0f32; 2 * s.batch];
    lanes::sums(
        s.batch,
        s.plane,
        plane_start(s, c),
        &mut both,
        |at, mask| {
            // SAFETY: as in `moments`, for each of the three tensors of the same size.
            let (xv, mut g) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask, x.as_ptr().add(at)),
                    _mm512_maskz_loadu_ps(mask, dy.as_ptr().add(at)),
                )
            };
            if RELU {
                // SAFETY: as above.
                let yv = unsafe { _mm512_maskz_loadu_ps(mask, y.as_ptr().add(at)) };
                // Not (y <= 0), unordered: y > 0 or NaN.
                let open = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(yv, _mm512_setzero_ps());
                g = _mm512_maskz_mov_ps(open, g);
            }
            [g, _mm512_mul_ps(_mm512_mul_ps(g, _mm512_sub_ps(xv, m)), r)]
        },
    );
    let (b, gm) = both.split_at(s.batch);
    dbeta.copy_from_slice(b);
    dgamma.copy_from_slice(gm);
}

/// Where image `n`'s plane of channel `c` starts.
fn plane_start(s: &NormShape, c: usize) -> impl Fn(usize) -> usize {
    move |n| (n * s.channels + c) * s.plane
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient sums of channel `c` in AVX-512 against the scalar ones, bit for bit.
    fn compare<const RELU: bool>(s: &NormShape, tensors: (&[f32], &[f32], &[f32]), c: usize) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (mut want_b, mut want_g) = (vec![1f32; s.batch], vec![1f32; s.batch]);
        let (mut got_b, mut got_g) = (vec![2f32; s.batch], vec![2f32; s.batch]);
        let stats = (0.25, 1.5);
        super::super::scalar_gradients::<RELU>(s, tensors, c, stats, &mut want_b, &mut want_g);
        // SAFETY: the caller checked that the CPU has AVX-512 F.
        unsafe { gradients::<RELU>(s, tensors, c, stats, &mut got_b, &mut got_g) };
        assert_eq!(
            bits(&got_b),
            bits(&want_b),
            "{s:?} channel {c}: dbeta, ReLU {RELU}"
        );
        assert_eq!(
            bits(&got_g),
            bits(&want_g),
            "{s:?} channel {c}: dgamma, ReLU {RELU}"
        );
    }

    /// Planes of 49, 16 and 3 values, batches that are not multiples of 16, NaN and -0.0 among
    /// the values (a plane of -0.0 only sums to -0.0), ReLU outputs at 0, below and NaN.
    #[test]
    fn the_sums_are_the_scalar_sums_bit_for_bit() {
        if !lanes::available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (batch, channels, plane) in [(37, 3, 49), (16, 2, 16), (5, 4, 3), (1, 1, 1)] {
            let s = NormShape {
                batch,
                channels,
                plane,
            };
            let len = batch * channels * plane;
            let wave = |seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * seed % 1013) as f32 - 506.0) * 0.0173)
                    .collect()
            };
            let (mut x, dy, mut y) = (wave(7919), wave(104_729), wave(15_485_863));
            x[5 % len] = f32::NAN;
            // Channel 0 of image 0 holds only -0.0.
            x[..plane].fill(-0.0);
            y[1 % len] = f32::NAN;
            y[2 % len] = 0.0;
            for c in 0..channels {
                for mean in [None, Some(0.25)] {
                    let (mut want, mut got) = (vec![1f32; batch], vec![2f32; batch]);
                    super::super::scalar_moments(&s, &x, c, mean, &mut want);
                    // SAFETY: `lanes::available` said the CPU has AVX-512 F.
                    unsafe { moments(&s, &x, c, mean, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "{s:?} channel {c} mean {mean:?}");
                }
                compare::<true>(&s, (&x, &dy, &y), c);
                compare::<false>(&s, (&x, &dy, &dy), c);
            }
        }
    }
}
