//! Many in-order sums at once in AVX-512: lane `i` of a vector carries run `i`'s sum.
//!
//! `Iterator::sum` adds a run's values one after the other from `-0.0`, a chain of dependent
//! additions that keeps one adder waiting on the last (four cycles each), and that no compiler
//! may reorder. Sixteen runs side by side keep the order of each: sixteen terms of each of sixteen
//! runs are computed as vectors, transposed so that vector `k` holds term `t + k` of every run,
//! and added in order. Each run's sum is the scalar one, bit for bit; past a run's end a lane adds
//! `-0.0`, which changes no sum.

use std::arch::x86_64::*;

/// Whether the CPU has AVX-512 F, which this module's and the other AVX-512 kernels need (asked
/// of the CPU once by the standard library, then a cached flag).
#[inline]
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `out[r] = rows[r * stride..][..len].iter().sum::<f32>()` for `count` rows, bit for bit.
///
/// # Safety
/// The CPU must have AVX-512 F ([`available`]).
#[target_feature(enable = "avx512f")]
pub fn row_sums(rows: &[f32], count: usize, len: usize, stride: usize, out: &mut [f32]) {
    assert!(
        count == 0 || rows.len() >= (count - 1) * stride + len,
        "lanes: rows too short"
    );
    sums(
        count,
        len,
        |r| r * stride,
        out,
        |at, mask| {
            // SAFETY: the lanes in `mask` lie inside a row, inside `rows` (asserted above).
            [unsafe { _mm512_maskz_loadu_ps(mask, rows.as_ptr().add(at)) }]
        },
    );
}

/// `S` sums of each of `count` runs of `len` terms, run `r` starting at offset `start(r)`:
/// `terms(at, mask)` gives `S` vectors of the sixteen terms from offset `at` of one run (`mask`:
/// the lanes inside the run; the others are ignored); run `r`'s sums go to `sums[j * count + r]`.
///
/// # Safety
/// The CPU must have AVX-512 F ([`available`]).
#[inline]
#[target_feature(enable = "avx512f")]
pub fn sums<const S: usize>(
    count: usize,
    len: usize,
    start: impl Fn(usize) -> usize,
    sums: &mut [f32],
    terms: impl Fn(usize, __mmask16) -> [__m512; S],
) {
    assert!(sums.len() >= S * count, "lanes: sums too short");
    let negative_zero = _mm512_set1_ps(-0.0);
    for r0 in (0..count).step_by(16) {
        let runs = (count - r0).min(16);
        // Lanes past the last run repeat it; their sums are dropped.
        let start = |lane: usize| start(r0 + lane.min(runs - 1));
        let mut acc = [negative_zero; S];
        for t in (0..len).step_by(16) {
            let mask = (u32::MAX >> (32 - (len - t).min(16))) as u16;
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
            sums[j * count + r0..][..runs].copy_from_slice(&lanes[..runs]);
        }
    }
}

/// Transposes the 16 × 16 matrix whose rows are `rows`.
///
/// # Safety
/// The CPU must have AVX-512 F ([`available`]).
#[inline]
#[target_feature(enable = "avx512f")]
pub fn transpose(rows: &mut [__m512; 16]) {
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

    #[test]
    fn row_sums_are_the_scalar_sums_bit_for_bit() {
        if !available() {
            return;
        }
        for (count, len, stride) in [(37, 49, 53), (16, 16, 16), (3, 1, 4), (1, 200, 200)] {
            let mut rows: Vec<f32> = (0..count * stride)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0173)
                .collect();
            rows[..len].fill(-0.0);
            let want: Vec<u32> = (0..count)
                .map(|r| rows[r * stride..][..len].iter().sum::<f32>().to_bits())
                .collect();
            let mut got = vec![1f32; count];
            // SAFETY: the CPU has AVX-512 F.
            unsafe { row_sums(&rows, count, len, stride, &mut got) };
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{count} rows of {len}");
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
