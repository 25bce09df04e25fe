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
    /// `V[k]ᵀ` pair-interleaved along the tiles, one position at a time (`[summed/2 × in]`).
    v_t: Aligned<u32>,
}

impl Operands {
    /// For groups of at most `tiles` tiles (none: empty buffers, for the `f32` products).
    pub(super) fn new(s: &ConvShape, tiles: usize) -> Self {
        let (o_n, c_n, n) = (s.out_channels, s.in_channels, stride(tiles));
        Operands {
            v_pairs: Aligned::zeroed(POS * c_n / 2 * n),
            dm_pairs: Aligned::zeroed(POS * o_n / 2 * n),
            dm_rows: Aligned::zeroed(POS * o_n * summed(tiles)),
            v_t: Aligned::zeroed(summed(tiles) / 2 * c_n),
        }
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

/// `dU[k] += dM[k] · V[k]ᵀ` (`du` is `[16 × out × in]`), the sum over the group's tiles: `dM`
/// from [`Operands::dm`], `V` in `f32` (rows of [`stride`] tiles).
pub(super) fn weight_gradient(
    s: &ConvShape,
    v: &[f32],
    du: &mut [f32],
    tiles: usize,
    ops: &mut Operands,
) {
    let (o_n, c_n, n, summed) = (s.out_channels, s.in_channels, stride(tiles), summed(tiles));
    // The padding of the summed dimension must be zeros (a larger group may have left values).
    ops.v_t[tiles.div_ceil(2) * c_n..summed / 2 * c_n].fill(0);
    for row in ops.dm_rows.chunks_exact_mut(summed).take(POS * o_n) {
        row[tiles..].fill(0);
    }
    for k in 0..POS {
        amx::interleave_transposed(&v[k * c_n * n..], c_n, tiles, n, &mut ops.v_t, c_n);
        let (dm, du) = (&ops.dm_rows[k * o_n * summed..], &mut du[k * o_n * c_n..]);
        amx::gemm(o_n, c_n, summed, dm, summed, &ops.v_t, c_n, du, c_n, true);
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
