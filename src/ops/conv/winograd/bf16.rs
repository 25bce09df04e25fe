//! The 16 products of a group of tiles in bfloat16 with `f32` sums ([`crate::ops::amx::gemm`]:
//! `vdpbf16ps`, or the AMX tiles), for the `medium` matmul precision. The transforms stay in
//! `f32`; the transformed operands are rounded to bfloat16 just before each product, as the
//! im2col path rounds its patches. Sizes: channel counts multiples of 32 ([`fits`]), the tile
//! columns padded to 16 (or 32 where they are the summed dimension) with zeros.

use super::{ConvShape, POS};
use crate::ops::amx::{self, Aligned, pad};

/// Whether the channel counts fit the products' padding without any (multiples of 32).
pub(super) fn fits(s: &ConvShape) -> bool {
    s.in_channels.is_multiple_of(32) && s.out_channels.is_multiple_of(32)
}

/// The transformed kernels in bfloat16: `U[k]` (`[out × in]`) and `U[k]ᵀ` (`[in × out]`) rows.
pub(super) struct Weights {
    u: Aligned<u16>,
    u_t: Aligned<u16>,
}

impl Weights {
    /// From the `f32` transforms `u` (`[16 × out × in]`).
    pub(super) fn new(s: &ConvShape, u: &[f32]) -> Self {
        let (o_n, c_n) = (s.out_channels, s.in_channels);
        let mut rows = Aligned::zeroed(POS * o_n * c_n);
        amx::convert_rows(u, POS * o_n, c_n, c_n, &mut rows, c_n);
        let mut u_t = Aligned::zeroed(POS * c_n * o_n);
        for k in 0..POS {
            let (from, to) = (&u[k * o_n * c_n..], &mut u_t[k * c_n * o_n..]);
            for o in 0..o_n {
                for c in 0..c_n {
                    to[c * o_n + o] = amx::to_bf16(from[o * c_n + c]);
                }
            }
        }
        Weights { u: rows, u_t }
    }
}

/// A worker's bfloat16 operands, reused for each group.
pub(super) struct Operands {
    /// The input transforms `V[k]`, pair-interleaved along the channels (`[16 × in/2 × stride]`).
    v_pairs: Aligned<u32>,
    /// The output-gradient transforms `dM[k]`, pair-interleaved along the channels
    /// (`[16 × out/2 × stride]`).
    dm_pairs: Aligned<u32>,
    /// `dM[k]` as bfloat16 rows along the tiles (`[16 × out × summed]`).
    dm_rows: Aligned<u16>,
    /// `V[k]` as bfloat16 rows along the tiles (`[16 × in × summed]`): the weight gradient's
    /// left operand.
    v_rows: Aligned<u16>,
    /// `dM[k]ᵀ` pair-interleaved along the tiles, one position at a time (`[summed/2 × out]`).
    dm_t: Aligned<u32>,
    /// The tiles of the group whose rows `v_rows` and `dm_rows` hold: their padding past that
    /// many tiles is zero (the transforms write only the tiles), so it is cleared only when a
    /// group of another size comes.
    zero_past: Option<usize>,
}

impl Operands {
    /// For groups of at most `tiles` tiles (none: empty buffers, for the `f32` products).
    pub(super) fn new(s: &ConvShape, tiles: usize) -> Self {
        let (o_n, c_n, n) = (s.out_channels, s.in_channels, stride(tiles));
        Operands {
            v_pairs: Aligned::zeroed(POS * c_n / 2 * n),
            dm_pairs: Aligned::zeroed(POS * o_n / 2 * n),
            dm_rows: Aligned::zeroed(POS * o_n * summed(tiles)),
            v_rows: Aligned::zeroed(POS * c_n * summed(tiles)),
            dm_t: Aligned::zeroed(summed(tiles) / 2 * o_n),
            zero_past: None,
        }
    }

    /// The bytes the buffers hold.
    pub(super) fn bytes(&self) -> usize {
        let words = self.v_pairs.len() + self.dm_pairs.len() + self.dm_t.len();
        4 * words + 2 * (self.dm_rows.len() + self.v_rows.len())
    }

    /// Clears the padding of the rows of `V` and `dM` past `tiles` (the summed dimension of the
    /// weight gradient), unless the group before had as many tiles.
    fn clear_padding(&mut self, s: &ConvShape, tiles: usize) {
        if self.zero_past == Some(tiles) {
            return;
        }
        let summed = summed(tiles);
        let (v_rows, dm_rows) = (POS * s.in_channels, POS * s.out_channels);
        for row in self.v_rows.chunks_exact_mut(summed).take(v_rows) {
            row[tiles..].fill(0);
        }
        for row in self.dm_rows.chunks_exact_mut(summed).take(dm_rows) {
            row[tiles..].fill(0);
        }
        self.zero_past = Some(tiles);
    }

    /// Where the input transform writes `V` for [`weight_gradient`]: bfloat16 rows of
    /// `(rows, stride)`, zero past `tiles`.
    pub(super) fn v_rows(&mut self, s: &ConvShape, tiles: usize) -> (&mut [u16], usize) {
        self.clear_padding(s, tiles);
        (&mut self.v_rows, summed(tiles))
    }

    /// Where the input transform writes `V` for [`forward`].
    pub(super) fn v_pairs(&mut self) -> &mut [u32] {
        &mut self.v_pairs
    }

    /// Where the output-gradient transform writes `dM` for [`weight_gradient`] and
    /// [`input_gradient`].
    pub(super) fn dm(&mut self, tiles: usize) -> GradientLayouts<'_> {
        GradientLayouts {
            rows: &mut self.dm_rows,
            rows_stride: summed(tiles),
            pairs: &mut self.dm_pairs,
            pairs_stride: stride(tiles),
        }
    }
}

/// `dM` in the two layouts of its products.
pub(super) struct GradientLayouts<'a> {
    /// bfloat16 rows along the tiles, `rows_stride` apart: the weight gradient's left operand.
    pub(super) rows: &'a mut [u16],
    pub(super) rows_stride: usize,
    /// Channel pairs interleaved, `pairs_stride` apart: the input gradient's right operand.
    pub(super) pairs: &'a mut [u32],
    pub(super) pairs_stride: usize,
}

/// The row stride of `V`, `M`, `dM` and `dV` for a group of `tiles` tiles.
pub(super) fn stride(tiles: usize) -> usize {
    pad(tiles, 16)
}

/// The tiles padded as the summed dimension of the weight gradient's products.
fn summed(tiles: usize) -> usize {
    pad(tiles, 32)
}

/// `M[k] = U[k] · V[k]` for the 16 positions (rows of [`stride`] tiles), `V` in
/// [`Operands::v_pairs`].
pub(super) fn forward(s: &ConvShape, w: &Weights, m: &mut [f32], tiles: usize, ops: &Operands) {
    let (o_n, c_n, n) = (s.out_channels, s.in_channels, stride(tiles));
    for k in 0..POS {
        let (u, v) = (&w.u[k * o_n * c_n..], &ops.v_pairs[k * c_n / 2 * n..]);
        amx::gemm(o_n, n, c_n, u, c_n, v, n, &mut m[k * o_n * n..], n, false);
    }
}

/// `dU[k]ᵀ += V[k] · dM[k]ᵀ` (`du_t` is `[16 × in × out]`, the transpose of the `f32` path's
/// `dU`), the sum over the group's tiles: `V` from [`Operands::v_rows`], `dM` from
/// [`Operands::dm`]. The same pairs of tiles summed in the same order as `dM[k] · V[k]ᵀ`, each
/// pair's two products exact in `f32`: the same values as that product, bit for bit.
pub(super) fn weight_gradient(s: &ConvShape, du_t: &mut [f32], tiles: usize, ops: &mut Operands) {
    let (o_n, c_n, summed) = (s.out_channels, s.in_channels, summed(tiles));
    // The padding of the summed dimension must be zeros (a larger group may have left values).
    ops.clear_padding(s, tiles);
    for k in 0..POS {
        // A `dM[k]` row's bfloat16 pairs, read as `u32`, are the pair-interleaved `dM[k]ᵀ`'s
        // column: the transpose of `[out × summed/2]` pairs.
        let dm = &ops.dm_rows[k * o_n * summed..][..o_n * summed];
        // SAFETY: `supports` checked AVX-512 F (the `vdpbf16ps` kernel needs it too).
        unsafe { transpose_pairs(pairs_of(dm), o_n, summed / 2, &mut ops.dm_t) };
        let (v, du_t) = (&ops.v_rows[k * c_n * summed..], &mut du_t[k * c_n * o_n..]);
        amx::gemm(c_n, o_n, summed, v, summed, &ops.dm_t, o_n, du_t, o_n, true);
    }
}

/// Adjacent bfloat16 values as the pairs that one `u32` holds (the first in the low half).
fn pairs_of(values: &[u16]) -> &[u32] {
    // SAFETY: `Aligned` starts every buffer on a 64-byte boundary and the rows have even
    // lengths, so the slice is 4-byte aligned (checked); every bit pattern is a valid `u32`.
    assert!(values.as_ptr().cast::<u32>().is_aligned() && values.len().is_multiple_of(2));
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len() / 2) }
}

/// `dst[j][i] = src[i][j]` for `src` of `rows × cols` (row-major, both multiples of 16), `dst`
/// of `cols × rows`: blocks of 16 x 16 transposed in registers, by four exchanges of the blocks'
/// halves, quarters, eighths and sixteenths (each swaps one bit of the row and column index).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(src: &[u32], rows: usize, cols: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(rows.is_multiple_of(16) && cols.is_multiple_of(16));
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    // For the exchange at distance `d`: lanes of the upper row pair (`low`) and lower (`high`).
    let exchange = |d: usize| {
        let low: [i32; 16] =
            std::array::from_fn(|j| if j & d == 0 { j } else { 16 + j - d } as i32);
        let high: [i32; 16] =
            std::array::from_fn(|j| if j & d == 0 { j + d } else { 16 + j } as i32);
        // SAFETY: 16 values from arrays of 16.
        unsafe {
            (
                _mm512_loadu_si512(low.as_ptr().cast()),
                _mm512_loadu_si512(high.as_ptr().cast()),
            )
        }
    };
    let steps = [exchange(8), exchange(4), exchange(2), exchange(1)];
    for i0 in (0..rows).step_by(16) {
        for j0 in (0..cols).step_by(16) {
            // SAFETY: 16 rows of 16 values from `(i0, j0)`, within `src` (checked above).
            let mut r: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(src.as_ptr().add((i0 + i) * cols + j0).cast())
            });
            for (d, (low, high)) in [8, 4, 2, 1].into_iter().zip(steps) {
                for i in (0..16).filter(|i| i & d == 0) {
                    let (a, b) = (r[i], r[i + d]);
                    r[i] = _mm512_permutex2var_epi32(a, low, b);
                    r[i + d] = _mm512_permutex2var_epi32(a, high, b);
                }
            }
            for (j, row) in r.iter().enumerate() {
                // SAFETY: 16 values of row `j0 + j` from column `i0`, within `dst` (above).
                unsafe {
                    _mm512_storeu_si512(dst.as_mut_ptr().add((j0 + j) * rows + i0).cast(), *row)
                };
            }
        }
    }
}

/// `dV[k] = U[k]ᵀ · dM[k]` into `dv` (rows of [`stride`] tiles), `dM` from [`Operands::dm`].
pub(super) fn input_gradient(
    s: &ConvShape,
    w: &Weights,
    dv: &mut [f32],
    tiles: usize,
    ops: &Operands,
) {
    let (o_n, c_n, n) = (s.out_channels, s.in_channels, stride(tiles));
    for k in 0..POS {
        let (u_t, dm) = (&w.u_t[k * c_n * o_n..], &ops.dm_pairs[k * o_n / 2 * n..]);
        amx::gemm(
            c_n,
            n,
            o_n,
            u_t,
            o_n,
            dm,
            n,
            &mut dv[k * c_n * n..],
            n,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_pairs_is_the_transpose() {
        if !amx::avx512_available() {
            return;
        }
        let (rows, cols) = (48, 32);
        let src: Vec<u32> = (0..rows * cols).map(|i| i as u32 * 2_654_435_761).collect();
        let mut got = vec![0u32; rows * cols];
        // SAFETY: the CPU has AVX-512 F (checked above).
        unsafe { transpose_pairs(&src, rows, cols, &mut got) };
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(got[j * rows + i], src[i * cols + j], "element ({i}, {j})");
            }
        }
    }
}
