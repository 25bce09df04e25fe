//! The bfloat16 product on AVX512-BF16 (`vdpbf16ps`): for CPUs with bfloat16 dot products but no
//! AMX tiles (AMD Zen 4 and Zen 5). Same operands and layouts as the tiles ([`super::gemm`]): each
//! pair-interleaved element of `b` holds the two bfloat16 values that one `vdpbf16ps` lane
//! multiplies by a broadcast pair of `a`'s row and adds into an `f32` sum.

use super::Product;

/// Rows of `c` per register block: 8 rows by 2 vectors of 16 columns is 16 accumulators, which
/// leaves registers for the two `b` vectors and the broadcast pair.
const ROWS: usize = 8;

/// `c[m×n] (+)= a · b` for padded sizes (`m` a multiple of 16, `n` of 16, `k` of 32).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16, and `p`'s pointers must cover the padded sizes at their
/// strides (checked by [`super::gemm`]).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn product(m: usize, n: usize, p: &Product) {
    let mut i = 0;
    while i < m {
        let mut j = 0;
        while j < n {
            // SAFETY: `i + ROWS <= m` (m is a multiple of 16) and `j + 16 * V <= n`.
            unsafe {
                if n - j >= 32 {
                    block::<2>(p, i, j);
                    j += 32;
                } else {
                    block::<1>(p, i, j);
                    j += 16;
                }
            }
        }
        i += ROWS;
    }
}

/// `c[i..i+8][j..j+16V]` (+)= `a[i..i+8] · b[..][j..j+16V]`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn block<const V: usize>(p: &Product, i: usize, j: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller keeps the block inside the padded operands.
    unsafe {
        let c = p.c.add(i * p.ldc + j);
        let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
        if p.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, lane) in row.iter_mut().enumerate() {
                    *lane = _mm512_loadu_ps(c.add(r * p.ldc + 16 * v));
                }
            }
        }
        let a = p.a.add(i * p.lda);
        for pair in 0..p.k / 2 {
            let b = p.b.add(pair * p.ldb + j);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, vector) in bv.iter_mut().enumerate() {
                *vector = _mm512_castsi512_ps(_mm512_loadu_si512(b.add(16 * v).cast()));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let two = a.add(r * p.lda + 2 * pair).cast::<u32>().read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(two as i32));
                for (lane, vector) in row.iter_mut().zip(&bv) {
                    let bh: __m512bh = std::mem::transmute(*vector);
                    *lane = _mm512_dpbf16_ps(*lane, av, bh);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, lane) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * p.ldc + 16 * v), *lane);
            }
        }
    }
}
