//! The per-plane sums of batch normalisation in AVX-512, sixteen planes (images) at a time.
//!
//! Each plane's sum is `Iterator::sum` of its terms: from `-0.0`, one value after the other. That
//! chain of dependent additions, one plane at a time, made the statistics and the gradient sums
//! most of batch normalisation's time. Here lane `i` of a vector carries plane `i`'s sum: sixteen
//! terms of each of sixteen planes are computed side by side, transposed so that vector `k` holds
//! term `t + k` of every plane, and added in order. Every plane's sum is the scalar one, bit for
//! bit; past a plane's end a lane adds `-0.0`, which changes no sum.

use std::arch::x86_64::*;

use super::NormShape;

/// Whether the CPU has AVX-512 F (asked of the CPU once by the standard library, then a cached
/// flag).
#[inline]
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

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
    planes(s, c, sums, |at, mask| [values(at, mask)]);
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
    planes(s, c, &mut both, |at, mask| {
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
    });
    let (b, gm) = both.split_at(s.batch);
    dbeta.copy_from_slice(b);
    dgamma.copy_from_slice(gm);
}

/// For the planes of channel `c` sixteen images at a time: `terms(at, mask)` gives `S` vectors of
/// the sixteen terms from offset `at` of one plane (`mask`: the lanes inside the plane); plane
/// `n`'s `S` sums go to `sums[j * batch + n]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn planes<const S: usize>(
    s: &NormShape,
    c: usize,
    sums: &mut [f32],
    terms: impl Fn(usize, __mmask16) -> [__m512; S],
) {
    assert!(sums.len() >= S * s.batch, "batch norm: sums too short");
    let negative_zero = _mm512_set1_ps(-0.0);
    for n0 in (0..s.batch).step_by(16) {
        let images = (s.batch - n0).min(16);
        // Lanes past the last image repeat its first plane; their sums are dropped.
        let start = |lane: usize| ((n0 + lane.min(images - 1)) * s.channels + c) * s.plane;
        let mut acc = [negative_zero; S];
        for t in (0..s.plane).step_by(16) {
            let mask = (u32::MAX >> (32 - (s.plane - t).min(16))) as u16;
            let mut rows = [[negative_zero; 16]; S];
            for lane in 0..16 {
                let vectors = terms(start(lane) + t, mask);
                for (row, v) in rows.iter_mut().zip(vectors) {
                    row[lane] = _mm512_mask_blend_ps(mask, negative_zero, v);
                }
            }
            for (sum, row) in acc.iter_mut().zip(&mut rows) {
                transpose(row);
                for &v in row.iter() {
                    *sum = _mm512_add_ps(*sum, v);
                }
            }
        }
        for (j, sum) in acc.iter().enumerate() {
            let mut lanes = [0f32; 16];
            // SAFETY: 16 values into a 16-value array.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *sum) };
            sums[j * s.batch + n0..][..images].copy_from_slice(&lanes[..images]);
        }
    }
}

/// Transposes the 16 × 16 matrix whose rows are `rows`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(rows: &mut [__m512; 16]) {
    let r = *rows;
    // Pairs of 32-bit values, then of 64-bit values, then 128-bit quarters in two steps.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let lo = |a: __m512, b: __m512| {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    };
    let hi = |a: __m512, b: __m512| {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    };
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        u[4 * i] = lo(a, c);
        u[4 * i + 1] = hi(a, c);
        u[4 * i + 2] = lo(b, d);
        u[4 * i + 3] = hi(b, d);
    }
    // Rows 4i..4i+4 of `u` hold columns 0..4 of rows 4i..4i+4, one 128-bit quarter per column
    // group: gather quarters across the four row groups.
    let mut v = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        v[j] = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        v[4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        v[8 + j] = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        v[12 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
    }
    for j in 0..4 {
        rows[j] = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
        rows[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v[j], v[8 + j]);
        rows[4 + j] = _mm512_shuffle_f32x4::<0x88>(v[4 + j], v[12 + j]);
        rows[12 + j] = _mm512_shuffle_f32x4::<0xdd>(v[4 + j], v[12 + j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planes of 49, 16 and 3 values, batches that are not multiples of 16, NaN and -0.0 among
    /// the values (a plane of -0.0 only sums to -0.0), ReLU outputs at 0, below and NaN.
    #[test]
    fn the_sums_are_the_scalar_sums_bit_for_bit() {
        if !available() {
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
                    // SAFETY: `available` said the CPU has AVX-512 F.
                    unsafe { moments(&s, &x, c, mean, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "{s:?} channel {c} mean {mean:?}");
                }
                let (mut want_b, mut want_g) = (vec![1f32; batch], vec![1f32; batch]);
                let (mut got_b, mut got_g) = (vec![2f32; batch], vec![2f32; batch]);
                let tensors = (&x[..], &dy[..], &y[..]);
                super::super::scalar_gradients::<true>(
                    &s,
                    tensors,
                    c,
                    (0.25, 1.5),
                    &mut want_b,
                    &mut want_g,
                );
                // SAFETY: as above.
                unsafe { gradients::<true>(&s, tensors, c, (0.25, 1.5), &mut got_b, &mut got_g) };
                assert_eq!(bits(&got_b), bits(&want_b), "{s:?} channel {c}: dbeta");
                assert_eq!(bits(&got_g), bits(&want_g), "{s:?} channel {c}: dgamma");
                let plain = (&x[..], &dy[..], &dy[..]);
                super::super::scalar_gradients::<false>(
                    &s,
                    plain,
                    c,
                    (0.25, 1.5),
                    &mut want_b,
                    &mut want_g,
                );
                // SAFETY: as above.
                unsafe { gradients::<false>(&s, plain, c, (0.25, 1.5), &mut got_b, &mut got_g) };
                assert_eq!(
                    bits(&got_b),
                    bits(&want_b),
                    "{s:?} channel {c}: dbeta, no ReLU"
                );
                assert_eq!(
                    bits(&got_g),
                    bits(&want_g),
                    "{s:?} channel {c}: dgamma, no ReLU"
                );
            }
        }
    }

    #[test]
    fn transposes_sixteen_by_sixteen() {
        if !available() {
            return;
        }
        // SAFETY: the CPU has AVX-512 F.
        unsafe {
            let mut rows = [_mm512_setzero_ps(); 16];
            for (i, row) in rows.iter_mut().enumerate() {
                let values: Vec<f32> = (0..16).map(|j| (i * 16 + j) as f32).collect();
                *row = _mm512_loadu_ps(values.as_ptr());
            }
            transpose(&mut rows);
            for (j, row) in rows.iter().enumerate() {
                let mut got = [0f32; 16];
                _mm512_storeu_ps(got.as_mut_ptr(), *row);
                let want: Vec<f32> = (0..16).map(|i| (i * 16 + j) as f32).collect();
                assert_eq!(got.to_vec(), want, "row {j}");
            }
        }
    }
}
