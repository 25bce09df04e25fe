//! 3x3 convolutions in `f32` by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016):
//! each 2x2 block of output pixels comes from a 4x4 block of input pixels with 16
//! multiplications per channel pair instead of 36, 2.25x fewer.
//!
//! With `V = Bᵀ d B` (an input tile `d`), `U = G g Gᵀ` (a kernel `g`) and `M = Σ_c U ⊙ V`, the
//! output tile is `Y = Aᵀ M A`. The sum over input channels is, for each of the 16 positions of
//! a tile, one matrix product over all the tiles of a group of images: `M[k] = U[k] · V[k]`
//! (`[out × in] · [in × tiles]`), on the `gemm` crate's kernels. The backward pass is the exact
//! adjoint of those same steps: `dM = A dY Aᵀ`, `dU[k] = dM[k] · V[k]ᵀ` then `dg = Gᵀ dU G`, and
//! `dV[k] = U[k]ᵀ · dM[k]` then `dx += B dV Bᵀ` over the overlapping tiles. The values agree with
//! the direct sums to rounding (the transforms add and subtract inputs before multiplying), not to
//! the bit. At the `medium` precision the products take bfloat16 operands ([`bf16`]).

mod bf16;
mod scratch;

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::direct::lanes_mask as mask;
use super::{ConvShape, OutputGradient, add_row_sums, per_task};
use crate::ops::matmul::matmul;
use crate::ops::{as_uninit, written};
use scratch::{Scratch, Work};

/// Positions of a transformed tile.
const POS: usize = 16;

/// The precision of the 16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Precision {
    /// `f32` on the `gemm` crate's kernels.
    F32,
    /// bfloat16 operands, `f32` sums ([`bf16`]).
    Bf16,
}

/// Whether the convolution is computed here at `precision`: 3x3 kernels over enough input
/// channels that the 16 products are not too thin (with 32, W3's second convolution, they ran no
/// faster than im2col in `f32`), images at most 30 pixels wide, AVX-512; in bfloat16 only on
/// `vdpbf16ps` (where it was measured faster than im2col; on the AMX tiles it made a ResNet step
/// 40-60% slower, so they keep im2col) and for channel counts that are multiples of 32.
/// `FMNIST_NO_WINOGRAD` set turns it off.
pub(super) fn supports(s: &ConvShape, precision: Precision) -> bool {
    let bf16_fits = || {
        bf16::fits(s) && crate::ops::amx::kernel() == Some(crate::ops::amx::Bf16Kernel::DotProduct)
    };
    s.kernel == 3
        && s.in_channels >= 64
        && s.out_width() <= 30
        && crate::ops::lanes::available()
        && !turned_off()
        && (precision == Precision::F32 || bf16_fits())
}

/// Whether `FMNIST_NO_WINOGRAD` is set (read once).
fn turned_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("FMNIST_NO_WINOGRAD").is_some())
}

/// Tiles of one image: `(rows, columns)` of 2x2 output blocks.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.out_height().div_ceil(2), s.out_width().div_ceil(2))
}

/// Images per group, so that a group's products have about 256 tile columns (larger groups
/// measured slower: the transforms fall out of the cache).
fn group_size(s: &ConvShape) -> usize {
    let (th, tw) = tiles(s);
    (256 / (th * tw)).clamp(1, s.batch.max(1))
}

/// `U[k][o][c]` (`[16 × out × in]`) from the kernels `weight[o][c][3][3]`: `G g Gᵀ`.
fn transform_weights(s: &ConvShape, weight: &[f32]) -> Vec<f32> {
    let (o_n, c_n) = (s.out_channels, s.in_channels);
    let mut u = vec![0f32; POS * o_n * c_n];
    for (oc, g) in weight.chunks_exact(9).enumerate() {
        let mut rows = [[0f32; 3]; 4];
        for j in 0..3 {
            let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
            rows[0][j] = a;
            rows[1][j] = 0.5 * (a + b + c);
            rows[2][j] = 0.5 * (a - b + c);
            rows[3][j] = c;
        }
        for (i, r) in rows.iter().enumerate() {
            let t = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (j, v) in t.into_iter().enumerate() {
                u[(i * 4 + j) * o_n * c_n + oc] = v;
            }
        }
    }
    u
}

/// `dweight[o][c][3][3]` from `dU[k][o][c]` (or from `dU[k][c][o]`, `transposed`): `Gᵀ dU G`.
fn untransform_weight_gradient(s: &ConvShape, du: &[f32], transposed: bool) -> Vec<f32> {
    let (o_n, c_n) = (s.out_channels, s.in_channels);
    let oc_n = o_n * c_n;
    let mut dw = vec![0f32; oc_n * 9];
    for (oc, dg) in dw.chunks_exact_mut(9).enumerate() {
        let at = if transposed {
            (oc % c_n) * o_n + oc / c_n
        } else {
            oc
        };
        let m = |i: usize, j: usize| du[(i * 4 + j) * oc_n + at];
        // Gᵀ along the rows: [m0 + ½(m1 + m2), ½(m1 - m2), ½(m1 + m2) + m3].
        let rows: [[f32; 4]; 3] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let (a, b, c, d) = (m(0, j), m(1, j), m(2, j), m(3, j));
                [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d][i]
            })
        });
        for (i, r) in rows.iter().enumerate() {
            dg[i * 3] = r[0] + 0.5 * (r[1] + r[2]);
            dg[i * 3 + 1] = 0.5 * (r[1] - r[2]);
            dg[i * 3 + 2] = 0.5 * (r[1] + r[2]) + r[3];
        }
    }
    dw
}

/// The transformed kernels, in the precision of the products.
enum Products {
    F32 { u: Vec<f32> },
    Bf16 { u: bf16::Weights },
}

impl Products {
    fn new(s: &ConvShape, weight: &[f32], precision: Precision) -> Self {
        let u = transform_weights(s, weight);
        match precision {
            Precision::F32 => Products::F32 { u },
            Precision::Bf16 => Products::Bf16 {
                u: bf16::Weights::new(s, &u),
            },
        }
    }

    /// The row stride of `V`, `M`, `dM` and `dV` for a group of `tiles` tiles.
    fn stride(&self, tiles: usize) -> usize {
        match self {
            Products::F32 { .. } => tiles,
            Products::Bf16 { .. } => bf16::stride(tiles),
        }
    }

    /// The input transforms `V` of the images `x_g` (`tiles` tiles), then `M[k] = U[k] · V[k]`
    /// for the 16 positions: `[out × in] · [in × tiles]` into `scratch.m`.
    fn forward(&self, s: &ConvShape, x_g: &[f32], scratch: &mut Work, tiles: usize) {
        let stride = self.stride(tiles);
        match self {
            Products::F32 { u } => {
                // SAFETY: `supports` checked that the CPU has AVX-512 F.
                unsafe { transform_input(s, x_g, &mut scratch.plane, &mut scratch.v, stride) };
                f32_forward(s, u, &scratch.v, &mut scratch.m, tiles)
            }
            Products::Bf16 { u } => {
                let ops = &mut scratch.bf16;
                // SAFETY: `supports` checked AVX-512 F and the `vdpbf16ps` kernel (AVX512-BF16),
                // `bf16::fits` an even channel count.
                unsafe { transform_input_pairs(s, x_g, &mut scratch.plane, ops.v_pairs(), stride) };
                bf16::forward(s, u, &mut scratch.m, tiles, ops)
            }
        }
    }

    /// The output-gradient transforms `dM` of the group's gradient `dconv` (`tiles` tiles):
    /// `scratch.m` in `f32`, the bfloat16 operands otherwise.
    fn output_gradient(&self, s: &ConvShape, dconv: &[f32], scratch: &mut Work, tiles: usize) {
        match self {
            // SAFETY: `supports` checked that the CPU has AVX-512 F.
            Products::F32 { .. } => unsafe {
                transform_output_gradient(s, dconv, &mut scratch.m, tiles)
            },
            Products::Bf16 { .. } => {
                let ops = &mut scratch.bf16;
                // SAFETY: `supports` checked AVX-512 (F, BW, VL) and the `vdpbf16ps` kernel
                // (AVX512-BF16), `bf16::fits` an even channel count.
                unsafe { transform_output_gradient_bf16(s, dconv, ops.dm(tiles)) }
            }
        }
    }

    /// The input transforms `V` of the images `x_g` (`tiles` tiles) for [`Self::weight_gradient`]:
    /// `scratch.v` in `f32`, bfloat16 rows along the tiles otherwise.
    fn gradient_input(&self, s: &ConvShape, x_g: &[f32], scratch: &mut Work, tiles: usize) {
        match self {
            Products::F32 { .. } => {
                let stride = self.stride(tiles);
                // SAFETY: `supports` checked that the CPU has AVX-512 F.
                unsafe { transform_input(s, x_g, &mut scratch.plane, &mut scratch.v, stride) };
            }
            Products::Bf16 { .. } => {
                let (rows, stride) = scratch.bf16.v_rows(s, tiles);
                // SAFETY: `supports` checked AVX-512 (F, BW, VL) and the `vdpbf16ps` kernel.
                unsafe { transform_input_rows(s, x_g, &mut scratch.plane, rows, stride) };
            }
        }
    }

    /// `dU[k] += dM[k] · V[k]ᵀ`, `V` from [`Self::gradient_input`]; `dU[k]ᵀ` where
    /// [`Self::transposed_gradient`].
    fn weight_gradient(&self, s: &ConvShape, scratch: &mut Work, du: &mut [f32], tiles: usize) {
        match self {
            Products::F32 { .. } => f32_weight_gradient(s, &scratch.m, &scratch.v, du, tiles),
            Products::Bf16 { .. } => bf16::weight_gradient(s, du, tiles, &mut scratch.bf16),
        }
    }

    /// Whether [`Self::weight_gradient`] sums `dU[k]ᵀ` (`[16 × in × out]`) instead of `dU[k]`.
    fn transposed_gradient(&self) -> bool {
        matches!(self, Products::Bf16 { .. })
    }

    /// `dV[k] = U[k]ᵀ · dM[k]` into `scratch.v`.
    fn input_gradient(&self, s: &ConvShape, scratch: &mut Work, tiles: usize) {
        match self {
            Products::F32 { u } => f32_input_gradient(s, u, &scratch.m, &mut scratch.v, tiles),
            Products::Bf16 { u } => {
                let ops = &scratch.bf16;
                bf16::input_gradient(s, u, &mut scratch.v, tiles, ops)
            }
        }
    }
}

/// `V = Bᵀ d B` for every tile of images `x` (a group, `in_image` values each) into `v`, whose
/// rows hold `stride` tiles.
///
/// # Safety
/// The CPU must have AVX-512 F ([`supports`]).
#[target_feature(enable = "avx512f")]
unsafe fn transform_input(
    s: &ConvShape,
    x: &[f32],
    plane: &mut [f32],
    v: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::_mm512_mask_storeu_ps;
    let (tw, c_n) = (tiles(s).1, s.in_channels);
    let store = |c: usize, first: usize, values: [_; POS]| {
        for (k, value) in values.into_iter().enumerate() {
            let at = (k * c_n + c) * stride + first;
            assert!(at + tw <= v.len());
            // SAFETY: `tw` values from `at`, within `v` (checked above).
            unsafe { _mm512_mask_storeu_ps(v.as_mut_ptr().add(at), mask(tw), value) };
        }
    };
    // SAFETY: the CPU has AVX-512 F (this function's contract).
    unsafe { for_each_tile_row(s, x, plane, store) }
}

/// `store(c, first, values)` for every row of tiles of the images `x` (a group, `in_image`
/// values each): channel `c`'s `V = Bᵀ d B` of the row whose first tile is tile `first` of the
/// group, position `k`'s values of its `tw` tiles in `values[k]`, one tile per lane. Each channel
/// is first copied into the zero-padded `plane` (whose border is never written).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn for_each_tile_row(
    s: &ConvShape,
    x: &[f32],
    plane: &mut [f32],
    mut store: impl FnMut(usize, usize, [std::arch::x86_64::__m512; POS]),
) {
    let (th, tw) = tiles(s);
    let (c_n, hw, p, pw) = (s.in_channels, s.height * s.width, s.padding, 2 * tw + 2);
    assert!(pw <= 32 && tw < 16 && plane.len() >= (2 * th + 2) * pw);
    for (i, image) in x.chunks_exact(c_n * hw).enumerate() {
        for (c, src) in image.chunks_exact(hw).enumerate() {
            for (y, row) in src.chunks_exact(s.width).enumerate() {
                plane[(y + p) * pw + p..][..s.width].copy_from_slice(row);
            }
            for ty in 0..th {
                // SAFETY: the CPU has AVX-512 F (the caller's contract).
                let values = unsafe { transform_tile_row(&plane[2 * ty * pw..][..4 * pw], pw) };
                store(c, i * th * tw + ty * tw, values);
            }
        }
    }
}

/// One row of tiles: `Bᵀ d` down the four padded rows `rows` (`pw <= 32` values each), then
/// along them: position `k`'s values of the row's tiles, one tile per lane.
#[target_feature(enable = "avx512f")]
fn transform_tile_row(rows: &[f32], pw: usize) -> [std::arch::x86_64::__m512; POS] {
    use std::arch::x86_64::*;
    assert!(pw <= 32 && rows.len() >= 4 * pw);
    let (lo_mask, hi_mask) = (mask(pw.min(16)), mask(pw.saturating_sub(16)));
    let (even, odd, even_next, odd_next) = (pick(0), pick(1), pick(2), pick(3));
    let load = |r: usize| {
        // SAFETY: masked loads of the `pw` values of row `r`, within `rows` (checked above).
        unsafe {
            let at = rows.as_ptr().add(r * pw);
            (
                _mm512_maskz_loadu_ps(lo_mask, at),
                _mm512_maskz_loadu_ps(hi_mask, at.add(16)),
            )
        }
    };
    let (d0, d1, d2, d3) = (load(0), load(1), load(2), load(3));
    let sub = |a: (__m512, __m512), b: (__m512, __m512)| {
        (_mm512_sub_ps(a.0, b.0), _mm512_sub_ps(a.1, b.1))
    };
    let add = |a: (__m512, __m512), b: (__m512, __m512)| {
        (_mm512_add_ps(a.0, b.0), _mm512_add_ps(a.1, b.1))
    };
    let columns = [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)];
    let mut out = [_mm512_setzero_ps(); POS];
    for (a, (lo, hi)) in columns.into_iter().enumerate() {
        let e = _mm512_permutex2var_ps(lo, even, hi);
        let o = _mm512_permutex2var_ps(lo, odd, hi);
        let e1 = _mm512_permutex2var_ps(lo, even_next, hi);
        let o1 = _mm512_permutex2var_ps(lo, odd_next, hi);
        out[a * 4] = _mm512_sub_ps(e, e1);
        out[a * 4 + 1] = _mm512_add_ps(o, e1);
        out[a * 4 + 2] = _mm512_sub_ps(e1, o);
        out[a * 4 + 3] = _mm512_sub_ps(o, o1);
    }
    out
}

/// `V = Bᵀ d B` as [`transform_input`] computes it, rounded to bfloat16 and written
/// pair-interleaved along the channels (the right operand of `U[k] · V[k]`): the tiles of
/// channels `2q` and `2q + 1` at `pairs[(k * in / 2 + q) * stride..]`. `planes` holds two
/// zero-padded planes.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16, and an even number of input channels.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn transform_input_pairs(
    s: &ConvShape,
    x: &[f32],
    planes: &mut [f32],
    pairs: &mut [u32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let (th, tw) = tiles(s);
    let (c_n, hw, p, pw) = (s.in_channels, s.height * s.width, s.padding, 2 * tw + 2);
    let size = (2 * th + 2) * pw;
    assert!(pw <= 32 && tw < 16 && planes.len() >= 2 * size && c_n.is_multiple_of(2));
    let (even_plane, odd_plane) = planes.split_at_mut(size);
    let bf16_lanes = |v: __m512| _mm512_cvtepu16_epi32(to_bf16(v));
    for (i, image) in x.chunks_exact(c_n * hw).enumerate() {
        for (q, two) in image.chunks_exact(2 * hw).enumerate() {
            for (plane, src) in [&mut *even_plane, &mut *odd_plane]
                .into_iter()
                .zip(two.chunks_exact(hw))
            {
                for (y, row) in src.chunks_exact(s.width).enumerate() {
                    plane[(y + p) * pw + p..][..s.width].copy_from_slice(row);
                }
            }
            for ty in 0..th {
                let first = i * th * tw + ty * tw;
                let even = transform_tile_row(&even_plane[2 * ty * pw..][..4 * pw], pw);
                let odd = transform_tile_row(&odd_plane[2 * ty * pw..][..4 * pw], pw);
                for k in 0..POS {
                    let two = _mm512_or_si512(
                        bf16_lanes(even[k]),
                        _mm512_slli_epi32::<16>(bf16_lanes(odd[k])),
                    );
                    let at = (k * c_n / 2 + q) * stride + first;
                    assert!(at + tw <= pairs.len());
                    // SAFETY: `tw` values from `at`, within `pairs` (checked above).
                    unsafe {
                        _mm512_mask_storeu_epi32(pairs.as_mut_ptr().add(at).cast(), mask(tw), two)
                    };
                }
            }
        }
    }
}

/// `V = Bᵀ d B` as [`transform_input`] computes it, rounded to bfloat16 as
/// [`transform_input_pairs`] rounds it for the forward products (`vcvtneps2bf16`), and written as
/// rows along the tiles (the left operand of `V[k] · dM[k]ᵀ`): channel `c`'s tiles at
/// `rows[(k * in + c) * stride..]`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn transform_input_rows(
    s: &ConvShape,
    x: &[f32],
    plane: &mut [f32],
    rows: &mut [u16],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let (tw, c_n) = (tiles(s).1, s.in_channels);
    let store = |c: usize, first: usize, values: [__m512; POS]| {
        for (k, value) in values.into_iter().enumerate() {
            let at = (k * c_n + c) * stride + first;
            assert!(at + tw <= rows.len());
            // SAFETY: `tw` values from `at`, within `rows` (checked above).
            unsafe {
                _mm256_mask_storeu_epi16(rows.as_mut_ptr().add(at).cast(), mask(tw), to_bf16(value))
            };
        }
    };
    // SAFETY: the CPU has AVX-512 F (this function's contract).
    unsafe { for_each_tile_row(s, x, plane, store) }
}

/// `out = Aᵀ M A` (plus `bias`) for images of the group whose tiles `m` holds (rows of `stride`
/// tiles), cropped to the output size: `out` holds the images one after the other. The sums run
/// along all tiles of a plane at once, and only the last step interleaves them into rows.
fn transform_output(
    s: &ConvShape,
    m: &[f32],
    stride: usize,
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    sums: &mut [f32],
) {
    let (th, tw) = tiles(s);
    let (oh, ow, o_n, n_t) = (s.out_height(), s.out_width(), s.out_channels, th * tw);
    for (i, image) in out.chunks_exact_mut(o_n * oh * ow).enumerate() {
        for (o, plane) in image.chunks_exact_mut(oh * ow).enumerate() {
            let at = |k: usize| &m[(k * o_n + o) * stride + i * n_t..][..n_t];
            // Aᵀ m down the rows: r[a][j] = sums[(a * 4 + j) * n_t + t].
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                let (r0, r1) = sums[j * n_t..].split_at_mut(4 * n_t);
                for t in 0..n_t {
                    r0[t] = m0[t] + m1[t] + m2[t];
                    r1[t] = m1[t] - m2[t] - m3[t];
                }
            }
            // Then along the columns, into the output rows.
            for a in 0..2 {
                let r = |j: usize| &sums[(a * 4 + j) * n_t..][..n_t];
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                for ty in 0..th {
                    let y = 2 * ty + a;
                    if y >= oh {
                        break;
                    }
                    let row = &mut plane[y * ow..][..ow];
                    for tx in 0..tw {
                        let t = ty * tw + tx;
                        row[2 * tx].write(r0[t] + r1[t] + r2[t] + bias[o]);
                        if 2 * tx + 1 < ow {
                            row[2 * tx + 1].write(r1[t] - r2[t] - r3[t] + bias[o]);
                        }
                    }
                }
            }
        }
    }
}

/// `M[k] = U[k] · V[k]` in `f32` for the 16 positions: `[out × in] · [in × tiles]`.
fn f32_forward(s: &ConvShape, u: &[f32], v: &[f32], m: &mut [f32], tiles: usize) {
    let (o_n, c_n) = (s.out_channels, s.in_channels);
    for k in 0..POS {
        matmul(
            o_n,
            tiles,
            c_n,
            &mut m[k * o_n * tiles..],
            false,
            &u[k * o_n * c_n..],
            (c_n as isize, 1),
            &v[k * c_n * tiles..],
            (tiles as isize, 1),
            false,
        );
    }
}

/// `dU[k] += dM[k] · V[k]ᵀ` in `f32`: `[out × tiles] · [tiles × in]`.
fn f32_weight_gradient(s: &ConvShape, dm: &[f32], v: &[f32], du: &mut [f32], tiles: usize) {
    let (o_n, c_n) = (s.out_channels, s.in_channels);
    for k in 0..POS {
        let (dm, v) = (&dm[k * o_n * tiles..], &v[k * c_n * tiles..]);
        let du = &mut du[k * o_n * c_n..];
        matmul(
            o_n,
            c_n,
            tiles,
            du,
            true,
            dm,
            (tiles as isize, 1),
            v,
            (1, tiles as isize),
            false,
        );
    }
}

/// `dV[k] = U[k]ᵀ · dM[k]` in `f32`: `[in × out] · [out × tiles]`.
fn f32_input_gradient(s: &ConvShape, u: &[f32], dm: &[f32], dv: &mut [f32], tiles: usize) {
    let (o_n, c_n) = (s.out_channels, s.in_channels);
    for k in 0..POS {
        let dv = &mut dv[k * c_n * tiles..];
        let (u, dm) = (&u[k * o_n * c_n..], &dm[k * o_n * tiles..]);
        matmul(
            c_n,
            tiles,
            o_n,
            dv,
            false,
            u,
            (1, c_n as isize),
            dm,
            (tiles as isize, 1),
            false,
        );
    }
}

/// The convolution of a group of images `x_g` into `out_g`.
fn forward_group(
    s: &ConvShape,
    products: &Products,
    bias: &[f32],
    scratch: &mut Work,
    x_g: &[f32],
    out_g: &mut [MaybeUninit<f32>],
) {
    let (th, tw) = tiles(s);
    let tiles = x_g.len() / s.in_image() * th * tw;
    let stride = products.stride(tiles);
    products.forward(s, x_g, scratch, tiles);
    transform_output(s, &scratch.m, stride, bias, out_g, &mut scratch.sums);
}

/// Forward: the convolution of every image (`[batch, out, oh, ow]`), groups of images spread over
/// rayon's threads.
pub(super) fn forward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    precision: Precision,
) -> Vec<f32> {
    let products = Products::new(s, weight, precision);
    let group = group_size(s);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(group * s.out_image())
            .zip(x.par_chunks(group * s.in_image()))
            .for_each_init(
                || Scratch::lend(s, &products),
                |scratch, (out_g, x_g)| {
                    forward_group(s, &products, bias, &mut scratch.work, x_g, out_g)
                },
            )
    };
    // SAFETY: the chunks cover `out`, and `transform_output` writes every value of its images.
    unsafe { written(s.batch * s.out_image(), fill) }
}

/// [`forward`] followed by 2x2 max pooling: `(pooled values, argmax codes)` as
/// [`super::forward_pooled`] returns them.
pub(super) fn forward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    precision: Precision,
) -> (Vec<f32>, Vec<u8>) {
    let products = Products::new(s, weight, precision);
    let group = group_size(s);
    let per_image = s.out_channels * s.pooled_pixels();
    let mut out = vec![0f32; s.batch * per_image];
    let mut arg = vec![0u8; s.batch * per_image];
    out.par_chunks_mut(group * per_image)
        .zip(arg.par_chunks_mut(group * per_image))
        .zip(x.par_chunks(group * s.in_image()))
        .for_each_init(
            || Scratch::lend(s, &products),
            |scratch, ((out_g, arg_g), x_g)| {
                let Scratch { work, images } = &mut **scratch;
                let images = &mut images[..x_g.len() / s.in_image() * s.out_image()];
                forward_group(s, &products, bias, work, x_g, as_uninit(images));
                for ((conv_i, out_i), arg_i) in images
                    .chunks_exact(s.out_image())
                    .zip(out_g.chunks_exact_mut(per_image))
                    .zip(arg_g.chunks_exact_mut(per_image))
                {
                    super::pool_image(s, conv_i, (s.out_pixels(), s.out_width()), out_i, arg_i);
                }
            },
        );
    (out, arg)
}

/// `dM = A dY Aᵀ` for one row of tiles of an output-gradient plane (`oh × ow`; the cropped
/// pixels of odd sizes count as zero): position `r * 4 + j`'s values, one tile per lane.
#[target_feature(enable = "avx512f")]
fn output_gradient_tile_row(
    s: &ConvShape,
    plane: &[f32],
    ty: usize,
) -> [std::arch::x86_64::__m512; POS] {
    use std::arch::x86_64::*;
    let (oh, ow) = (s.out_height(), s.out_width());
    assert!(ow <= 30 && plane.len() >= oh * ow);
    let (lo_mask, hi_mask) = (mask(ow.min(16)), mask(ow.saturating_sub(16)));
    let (even, odd) = (pick(0), pick(1));
    // The even and odd columns of output rows 2ty and 2ty + 1 (zero below the image).
    let row = |y: usize| {
        if y >= oh {
            return (_mm512_setzero_ps(), _mm512_setzero_ps());
        }
        let at = plane[y * ow..][..ow].as_ptr();
        // SAFETY: masked loads of the row's `ow` values.
        let (lo, hi) = unsafe {
            (
                _mm512_maskz_loadu_ps(lo_mask, at),
                _mm512_maskz_loadu_ps(hi_mask, at.add(16)),
            )
        };
        (
            _mm512_permutex2var_ps(lo, even, hi),
            _mm512_permutex2var_ps(lo, odd, hi),
        )
    };
    // A along the rows, then the columns: (1, 0), (1, 1), (1, -1), (0, -1).
    let expand = |a: __m512, b: __m512| {
        [
            a,
            _mm512_add_ps(a, b),
            _mm512_sub_ps(a, b),
            _mm512_sub_ps(_mm512_setzero_ps(), b),
        ]
    };
    let (top, bottom) = (row(2 * ty), row(2 * ty + 1));
    let (left, right) = (expand(top.0, bottom.0), expand(top.1, bottom.1));
    let mut out = [_mm512_setzero_ps(); POS];
    for r in 0..4 {
        out[r * 4..][..4].copy_from_slice(&expand(left[r], right[r]));
    }
    out
}

/// `dM = A dY Aᵀ` for every tile of a group's output gradient `dy` (`out_image` values per
/// image) into `dm`, rows of `stride` tiles.
///
/// # Safety
/// The CPU must have AVX-512 F ([`supports`]).
#[target_feature(enable = "avx512f")]
unsafe fn transform_output_gradient(s: &ConvShape, dy: &[f32], dm: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    let (th, tw) = tiles(s);
    let (o_n, n_t) = (s.out_channels, th * tw);
    assert!(tw < 16);
    for (i, image) in dy.chunks_exact(s.out_image()).enumerate() {
        for (o, plane) in image.chunks_exact(s.out_pixels()).enumerate() {
            for ty in 0..th {
                let first = i * n_t + ty * tw;
                for (k, value) in output_gradient_tile_row(s, plane, ty)
                    .into_iter()
                    .enumerate()
                {
                    let at = (k * o_n + o) * stride + first;
                    assert!(at + tw <= dm.len());
                    // SAFETY: `tw` values from `at`, within `dm` (checked above).
                    unsafe { _mm512_mask_storeu_ps(dm.as_mut_ptr().add(at), mask(tw), value) };
                }
            }
        }
    }
}

/// `dM` as [`transform_output_gradient`] computes it, rounded to bfloat16 and written in the two
/// layouts of its products: rows along the tiles (`rows[(k * out + o) * rows_stride..]`, the
/// weight gradient's left operand) and pair-interleaved along the channels
/// (`pairs[(k * out / 2 + q) * stride..]` for channels `2q`, `2q + 1`, the input gradient's right
/// operand).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and BF16, and an even number of output channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn transform_output_gradient_bf16(
    s: &ConvShape,
    dy: &[f32],
    out: bf16::GradientLayouts<'_>,
) {
    use std::arch::x86_64::*;
    let (rows, rows_stride, pairs, stride) =
        (out.rows, out.rows_stride, out.pairs, out.pairs_stride);
    let (th, tw) = tiles(s);
    let (o_n, n_t) = (s.out_channels, th * tw);
    assert!(tw < 16 && o_n.is_multiple_of(2));
    for (i, image) in dy.chunks_exact(s.out_image()).enumerate() {
        for (q, two) in image.chunks_exact(2 * s.out_pixels()).enumerate() {
            let (even_plane, odd_plane) = two.split_at(s.out_pixels());
            for ty in 0..th {
                let first = i * n_t + ty * tw;
                let even = output_gradient_tile_row(s, even_plane, ty);
                let odd = output_gradient_tile_row(s, odd_plane, ty);
                for k in 0..POS {
                    let (e, d) = (to_bf16(even[k]), to_bf16(odd[k]));
                    for (o, half) in [(2 * q, e), (2 * q + 1, d)] {
                        let at = (k * o_n + o) * rows_stride + first;
                        assert!(at + tw <= rows.len());
                        // SAFETY: `tw` values from `at`, within `rows` (checked above).
                        unsafe {
                            _mm256_mask_storeu_epi16(
                                rows.as_mut_ptr().add(at).cast(),
                                mask(tw),
                                half,
                            )
                        };
                    }
                    let two = _mm512_or_si512(
                        _mm512_cvtepu16_epi32(e),
                        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(d)),
                    );
                    let at = (k * o_n / 2 + q) * stride + first;
                    assert!(at + tw <= pairs.len());
                    // SAFETY: `tw` values from `at`, within `pairs` (checked above).
                    unsafe {
                        _mm512_mask_storeu_epi32(pairs.as_mut_ptr().add(at).cast(), mask(tw), two)
                    };
                }
            }
        }
    }
}

/// `dx = Σ_tiles B dV Bᵀ` for the images of a group (`in_image` values each), from `dv`
/// (`[16 × in × tiles]`, rows of `stride` tiles). Each row of tiles adds into four rows of the
/// zero-padded plane, the last two shared with the next row of tiles: those two are carried in
/// registers to it, and each row, once complete, is written straight into `dx`, cropped by
/// masks (no padded plane in memory). Every row is summed as `(0 + first) + second`, the order
/// of a plane cleared and then added into.
///
/// # Safety
/// The CPU must have AVX-512 F ([`supports`]).
#[target_feature(enable = "avx512f")]
unsafe fn transform_input_gradient(
    s: &ConvShape,
    dv: &[f32],
    stride: usize,
    dx: &mut [std::mem::MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (th, tw) = tiles(s);
    let (c_n, h, w, p, n_t) = (s.in_channels, s.height, s.width, s.padding, th * tw);
    assert!(p + w <= 32 && tw < 16);
    // Lanes `p..p + w` of a padded row of 32 are the image row's values.
    let (lo_mask, hi_mask) = (
        mask((p + w).min(16)) & !mask(p),
        mask((p + w).saturating_sub(16)),
    );
    // Lanes 0-15 of the even values, then of the odd ones, interleaved into a row of 32.
    let interleave = |first: i32| {
        let at: [i32; 16] = std::array::from_fn(|l| {
            let column = first + l as i32;
            (column / 2) + if column % 2 == 1 { 16 } else { 0 }
        });
        // SAFETY: 16 values from an array of 16.
        unsafe { _mm512_loadu_si512(at.as_ptr().cast()) }
    };
    let (low_half, high_half) = (interleave(0), interleave(16));
    // One lane up (lane 0 zero): the tile to the left's contribution.
    let up = _mm512_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14);
    // Bᵀ's columns as rows: [v0, v1 - v2 + v3, v1 + v2 - v0, -v3].
    let spread = |v: [__m512; 4]| {
        [
            v[0],
            _mm512_add_ps(_mm512_sub_ps(v[1], v[2]), v[3]),
            _mm512_sub_ps(_mm512_add_ps(v[1], v[2]), v[0]),
            _mm512_sub_ps(_mm512_setzero_ps(), v[3]),
        ]
    };
    let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let add = |a: (__m512, __m512), b: (__m512, __m512)| {
        (_mm512_add_ps(a.0, b.0), _mm512_add_ps(a.1, b.1))
    };
    for (i, image) in dx.chunks_exact_mut(c_n * h * w).enumerate() {
        for (c, dst) in image.chunks_exact_mut(h * w).enumerate() {
            // Padded row `r` is image row `r - p`, if there is one: its lanes `p..p + w`.
            let mut write = |r: usize, (lo, hi): (__m512, __m512)| {
                let Some(y) = r.checked_sub(p).filter(|&y| y < h) else {
                    return;
                };
                let at = dst[y * w..][..w].as_mut_ptr().cast::<f32>().wrapping_sub(p);
                // SAFETY: the lanes the masks keep write the row's `w` values, within `dst`.
                unsafe {
                    _mm512_mask_storeu_ps(at, lo_mask, lo);
                    _mm512_mask_storeu_ps(at.wrapping_add(16), hi_mask, hi);
                }
            };
            let mut carried = [zero, zero];
            for ty in 0..th {
                let first = i * n_t + ty * tw;
                let load = |k: usize| {
                    let at = (k * c_n + c) * stride + first;
                    assert!(at + tw <= dv.len());
                    // SAFETY: `tw` values from `at`, within `dv` (checked above).
                    unsafe { _mm512_maskz_loadu_ps(mask(tw), dv.as_ptr().add(at)) }
                };
                let columns: [[__m512; 4]; 4] = std::array::from_fn(|j| {
                    spread([load(j), load(4 + j), load(8 + j), load(12 + j)])
                });
                for r in 0..4 {
                    let d = spread([columns[0][r], columns[1][r], columns[2][r], columns[3][r]]);
                    // Column 2tx + s of the padded row gets d[s][tx]: evens d0 + d2 of the tile
                    // to the left, odds d1 + d3 of the tile to the left.
                    let shifted = |v: __m512| _mm512_maskz_permutexvar_ps(0xfffe, up, v);
                    let e = _mm512_add_ps(d[0], shifted(d[2]));
                    let o = _mm512_add_ps(d[1], shifted(d[3]));
                    let row = (
                        _mm512_permutex2var_ps(e, low_half, o),
                        _mm512_permutex2var_ps(e, high_half, o),
                    );
                    if r < 2 {
                        write(2 * ty + r, add(carried[r], row));
                    } else {
                        carried[r - 2] = add(zero, row);
                    }
                }
            }
            write(2 * th, carried[0]);
            write(2 * th + 1, carried[1]);
        }
    }
}

/// Each lane of `v` rounded to bfloat16 (`vcvtneps2bf16`), as 16 `u16` lanes.
#[target_feature(enable = "avx512f,avx512bf16")]
fn to_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: a bfloat16 vector is 16 `u16` lanes.
    unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
}

/// The permutation that picks lanes `first, first + 2, ...` of a pair of vectors (32 values).
#[target_feature(enable = "avx512f")]
fn pick(first: i32) -> std::arch::x86_64::__m512i {
    let at: [i32; 16] = std::array::from_fn(|l| (first + 2 * l as i32) & 31);
    // SAFETY: 16 values from an array of 16.
    unsafe { std::arch::x86_64::_mm512_loadu_si512(at.as_ptr().cast()) }
}

/// The backward pass, as [`super::backward_with`] defines it, from the output gradient
/// `gradient`. Each worker's images go through in groups: the output gradient and the
/// recomputed input transforms feed the weight-gradient products `dU[k] += dM[k] · V[k]ᵀ`, and
/// (when `need_dx`) `dV[k] = U[k]ᵀ · dM[k]` goes back to the images.
pub(super) fn backward_with(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    need_dx: bool,
    precision: Precision,
    gradient: &impl OutputGradient,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let products = Products::new(s, weight, precision);
    let (o_n, c_n, group) = (s.out_channels, s.in_channels, group_size(s));
    let (th, tw) = tiles(s);
    let (dw, db, dx) = per_task(s, need_dx, POS * o_n * c_n, |images, mut dx_chunk| {
        let mut du = vec![0f32; POS * o_n * c_n];
        let mut db = vec![0f32; o_n];
        let mut scratch = Scratch::lend(s, &products);
        let Scratch {
            work,
            images: buffer,
        } = &mut *scratch;
        for first in images.clone().step_by(group) {
            let count = group.min(images.end - first);
            let tiles = count * th * tw;
            let stride = products.stride(tiles);
            let dconv = gradient.images(first, count, buffer);
            for dy_i in dconv.chunks_exact(s.out_image()) {
                add_row_sums(&mut db, dy_i, s.out_pixels());
            }
            products.output_gradient(s, dconv, work, tiles);
            let x_g = &x[first * s.in_image()..(first + count) * s.in_image()];
            products.gradient_input(s, x_g, work, tiles);
            products.weight_gradient(s, work, &mut du, tiles);
            let Some(dx_chunk) = dx_chunk.as_deref_mut() else {
                continue;
            };
            products.input_gradient(s, work, tiles);
            let local = (first - images.start) * s.in_image();
            let dx_g = &mut dx_chunk[local..local + count * s.in_image()];
            // SAFETY: as above.
            unsafe { transform_input_gradient(s, &work.v, stride, dx_g) };
        }
        (du, db)
    });
    let dw = untransform_weight_gradient(s, &dw, products.transposed_gradient());
    (dw, db, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain sums in `f64`: `(out, dweight, dbias, dx)` for output gradient `dy`.
    fn reference(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Vec<f64>; 4] {
        let (oh, ow, p) = (s.out_height(), s.out_width(), s.padding as isize);
        let (c_n, o_n, h, wd) = (s.in_channels, s.out_channels, s.height, s.width);
        let mut out = vec![0f64; s.batch * o_n * oh * ow];
        let (mut dw, mut db, mut dx) = (vec![0f64; w.len()], vec![0f64; o_n], vec![0f64; x.len()]);
        for n in 0..s.batch {
            for o in 0..o_n {
                for y in 0..oh {
                    for xx in 0..ow {
                        let at = ((n * o_n + o) * oh + y) * ow + xx;
                        let g = dy[at] as f64;
                        db[o] += g;
                        let mut sum = b[o] as f64;
                        for c in 0..c_n {
                            for t in 0..9 {
                                let iy = y as isize + (t / 3) as isize - p;
                                let ix = xx as isize + (t % 3) as isize - p;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((n * c_n + c) * h + iy as usize) * wd + ix as usize;
                                let wi = (o * c_n + c) * 9 + t;
                                sum += w[wi] as f64 * x[xi] as f64;
                                dw[wi] += g * x[xi] as f64;
                                dx[xi] += g * w[wi] as f64;
                            }
                        }
                        out[at] = sum;
                    }
                }
            }
        }
        [out, dw, db, dx]
    }

    fn assert_close(name: &str, got: &[f32], want: &[f64]) {
        assert_within(name, got, want, 1e-5);
    }

    /// Every value within `tolerance` times the largest reference value (at least 1).
    fn assert_within(name: &str, got: &[f32], want: &[f64], tolerance: f64) {
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tolerance * scale,
                "{name}[{i}]: {g} against {w}"
            );
        }
        assert_eq!(got.len(), want.len(), "{name}");
    }

    /// Forward, weight, bias and input gradients in bfloat16 on each kernel this CPU has, against
    /// the `f64` reference within `tolerance`, for inputs made by `values(len, seed)`.
    fn check_bf16(values: impl Fn(usize, usize) -> Vec<f32>, tolerance: f64) {
        use crate::ops::amx;
        for kernel in amx::tests::kernels_here() {
            // 23 images of 9x9 come in groups of 10 and a smaller last one, whose operands' padding
            // must be cleared of the larger group's values.
            let shapes = [(3, 9, 1), (2, 13, 0), (9, 7, 1), (2, 28, 1), (23, 9, 1)];
            for (batch, height, padding) in shapes {
                let s = ConvShape {
                    batch,
                    in_channels: 64,
                    out_channels: 32,
                    height,
                    width: height,
                    kernel: 3,
                    padding,
                };
                let x = values(s.batch * s.in_image(), 1);
                let w = values(s.out_channels * s.patch(), 2);
                let b = values(s.out_channels, 3);
                let dy = values(s.batch * s.out_image(), 4);
                let [out, dw, db, dx] = reference(&s, &x, &w, &b, &dy);
                let dy_of = &crate::ops::conv::Given::new(&s, &dy);
                let bf16 = Precision::Bf16;
                let (got, (got_dw, got_db, got_dx)) = amx::with_kernel(kernel, || {
                    (
                        forward(&s, &x, &w, &b, bf16),
                        backward_with(&s, &x, &w, true, bf16, dy_of),
                    )
                });
                let at = format!("{kernel:?}, {height}x{height}, padding {padding}");
                assert_within(&format!("out ({at})"), &got, &out, tolerance);
                assert_within(&format!("dweight ({at})"), &got_dw, &dw, tolerance);
                assert_within(&format!("dbias ({at})"), &got_db, &db, tolerance);
                assert_within(&format!("dx ({at})"), &got_dx.unwrap(), &dx, tolerance);
            }
        }
    }

    #[test]
    fn bfloat16_winograd_is_exact_where_bfloat16_holds_every_operand() {
        if !crate::ops::lanes::available() {
            return;
        }
        // Integers in -2..=2: the transformed inputs and gradients are small integers and the
        // transformed kernels small multiples of 1/4, all exact in bfloat16, and every sum of
        // their products exact in `f32`: the results must equal the reference to the bit.
        let integers = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104_729) % 5) as f32 - 2.0)
                .collect()
        };
        check_bf16(integers, 0.0);
    }

    #[test]
    fn bfloat16_winograd_rounds_only_the_operands_of_its_products() {
        if !crate::ops::lanes::available() {
            return;
        }
        // General values: each product's operands carry bfloat16's relative error of 2^-9, and
        // the Winograd transforms add and subtract them before rounding, so the error grows
        // with the transformed magnitudes. Measured: at most 1.0% of the largest value (the
        // 7x7 forward), against 0.47% for the bfloat16 im2col path on the same values.
        let wave = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * (7919 + seed * 613)) % 997) as f32 / 997.0 - 0.5)
                .collect()
        };
        check_bf16(wave, 2e-2);
    }

    #[test]
    fn winograd_matches_the_plain_sums_forward_and_backward() {
        if !crate::ops::lanes::available() {
            return;
        }
        // Odd and even sizes, with and without padding, batches over one and several groups.
        for (batch, height, padding) in [(3, 9, 1), (2, 13, 0), (9, 7, 1), (2, 28, 1)] {
            let s = ConvShape {
                batch,
                in_channels: 64,
                out_channels: 12,
                height,
                width: height,
                kernel: 3,
                padding,
            };
            assert!(supports(&s, Precision::F32));
            let wave = |n: usize, k: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * k) % 997) as f32 / 997.0 - 0.5)
                    .collect()
            };
            let x = wave(s.batch * s.in_image(), 7919);
            let w = wave(s.out_channels * s.patch(), 104_729);
            let b = wave(s.out_channels, 31);
            let dy = wave(s.batch * s.out_image(), 613);
            let [out, dw, db, dx] = reference(&s, &x, &w, &b, &dy);
            let f32 = Precision::F32;
            assert_close("out", &forward(&s, &x, &w, &b, f32), &out);
            let dy_of = &crate::ops::conv::Given::new(&s, &dy);
            let (got_dw, got_db, got_dx) = backward_with(&s, &x, &w, true, f32, dy_of);
            assert_close("dweight", &got_dw, &dw);
            assert_close("dbias", &got_db, &db);
            assert_close("dx", &got_dx.unwrap(), &dx);
            let (pooled, _) = forward_pooled(&s, &x, &w, &b, f32);
            let planes = s.batch * s.out_channels;
            let conv = forward(&s, &x, &w, &b, f32);
            let (plain, _) =
                crate::ops::pool::forward(&conv, planes, s.out_height(), s.out_width());
            assert_eq!(pooled, plain, "pooling after the Winograd forward");
        }
    }
}
